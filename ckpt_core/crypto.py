"""Encryption at rest: the keys and the segment cipher (AES-256-GCM from ``cryptography``).

A configured key is a secret string or bytes (a passphrase, or better a random token such as
``secrets.token_urlsafe(32)``). Each is stretched to an AES-256 key with HKDF-SHA256 (fixed salt
and info, so the same secret always gives the same key) and named by a *key id*: 16 hex digits of
a hash of the derived key, which is written in the record header so a reader picks the matching
key at once. The id is one-way; the secret and the derived key never appear in a repr, a log line
or an error message.

Several keys form a :class:`Keyring`: the first encrypts new records, every one of them decrypts,
so keys rotate by putting the new key first and keeping the old ones until their records are gone.

The payload (all of the codec's buffers back to back) is cut into segments of ``seg`` bytes and
each segment is sealed on its own, so a record is encrypted and written one segment at a time::

    segment i   ciphertext(len(plaintext_i)) + tag (16 bytes)
    nonce_i     base nonce (12 random bytes per record) XOR i in its last 8 bytes
    aad_i       b"ckpt-seg" + sha256(record prefix + header) + i (u64) + last (u8)

The associated data binds every segment to its record's header (codec, sizes, ids, the key id and
the nonce) and to its position, and marks the last one: swapping, dropping, duplicating or
truncating segments, or moving them to another record, fails authentication. An empty payload is
still one (empty) sealed segment.

``cryptography`` is imported only when a key is configured (the ``crypto`` extra).
"""

from __future__ import annotations

import hashlib
import os
import struct
from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, TypeAlias

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    from .serde.base import Buffer

#: Environment variable read when no key is passed; commas separate the keys of a rotation.
ENV_VAR = "CKPT_ENCRYPTION_KEY"
ALGORITHM = "AES-256-GCM"
INSTALL_HINT = "pip install 'ckpt[crypto]'"
NONCE_SIZE = 12
TAG_SIZE = 16
#: Segment sizes a reader accepts (writers use ``envelope.SLICE``).
MIN_SEGMENT = 1 << 10
MAX_SEGMENT = 1 << 26
_SALT = b"ckpt-encryption-v1"
_INFO = b"ckpt record key AES-256-GCM"
_KID_DOMAIN = b"ckpt-key-id-v1\0"
_AAD_DOMAIN = b"ckpt-seg"
_POSITION = struct.Struct(">QB")

#: What ``encryption_key=`` accepts: a ``str`` is a comma-separated list of keys (like the
#: environment variable), ``bytes`` is one key, a sequence holds one key per item.
KeyInput: TypeAlias = str | bytes | Sequence[str | bytes] | None


def _aesgcm() -> type[AESGCM]:
    try:
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM
    except ImportError:
        raise ImportError(
            f"encrypting or decrypting checkpoints needs the cryptography package: {INSTALL_HINT}"
        ) from None
    return AESGCM


def _derive(secret: bytes) -> bytes:
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    return HKDF(algorithm=hashes.SHA256(), length=32, salt=_SALT, info=_INFO).derive(secret)


class EncryptionKey:
    """One derived AES-256-GCM key and its id. The secret is not kept."""

    __slots__ = ("_aead", "kid")

    def __init__(self, secret: bytes) -> None:
        aesgcm = _aesgcm()
        derived = _derive(secret)
        self.kid = hashlib.sha256(_KID_DOMAIN + derived).hexdigest()[:16]
        self._aead = aesgcm(derived)

    def __repr__(self) -> str:
        return f"EncryptionKey(kid={self.kid!r})"

    def seal(self, nonce: bytes, plaintext: Buffer, aad: bytes) -> bytes:
        return self._aead.encrypt(nonce, plaintext, aad)

    def open_into(self, nonce: bytes, sealed: Buffer, aad: bytes, out: memoryview) -> bool:
        """Decrypt ``sealed`` into ``out`` (exactly its plaintext length); ``False`` when
        authentication fails (``out`` then holds garbage). ``decrypt_into`` (cryptography 45+)
        writes in place; older versions decrypt to a new ``bytes`` that is copied in."""
        from cryptography.exceptions import InvalidTag

        try:
            if hasattr(self._aead, "decrypt_into"):
                self._aead.decrypt_into(nonce, sealed, aad, out)
            else:  # cryptography < 45
                out[:] = self._aead.decrypt(nonce, sealed, aad)
        except InvalidTag:
            return False
        return True


class Keyring:
    """Encryption keys in order: the first encrypts, any of them decrypts."""

    __slots__ = ("keys",)

    def __init__(self, keys: Sequence[EncryptionKey]) -> None:
        if not keys:
            raise ValueError("a keyring needs at least one key")
        unique: dict[str, EncryptionKey] = {}
        for k in keys:
            unique.setdefault(k.kid, k)
        self.keys = tuple(unique.values())

    @property
    def primary(self) -> EncryptionKey:
        """The key new records are encrypted with."""
        return self.keys[0]

    @property
    def kids(self) -> tuple[str, ...]:
        return tuple(k.kid for k in self.keys)

    def get(self, kid: object) -> EncryptionKey | None:
        return next((k for k in self.keys if k.kid == kid), None)

    def __repr__(self) -> str:
        return f"Keyring(kids={list(self.kids)!r})"


def _split(text: str, where: str) -> list[bytes]:
    parts = [p.strip() for p in text.split(",")]
    for i, part in enumerate(parts, 1):
        if not part:
            raise ValueError(
                f"{where} holds an empty key (entry {i} of {len(parts)}, keys are separated by "
                "commas); pass None to disable encryption"
            )
    return [p.encode() for p in parts]


def keyring(value: KeyInput, *, where: str = "encryption_key") -> Keyring | None:
    """The keyring for ``encryption_key=``; ``None`` (and no ``CKPT_ENCRYPTION_KEY``) → ``None``.

    A ``str`` is split on commas (surrounding spaces dropped), ``bytes`` is one key, and each item
    of a list or tuple is one key. An empty key is a ``ValueError``, never "no encryption".
    """
    if value is None:
        value = os.environ.get(ENV_VAR) or None
        where = ENV_VAR
    if value is None:
        return None
    secrets: list[bytes] = []
    if isinstance(value, str):
        secrets = _split(value, where)
    elif isinstance(value, (bytes, bytearray, memoryview)):
        secrets = [bytes(value)]
    elif isinstance(value, Sequence):
        for i, item in enumerate(value, 1):
            if isinstance(item, str):
                secrets.append(item.encode())
            elif isinstance(item, (bytes, bytearray, memoryview)):
                secrets.append(bytes(item))
            else:
                raise TypeError(f"{where}[{i - 1}] must be str or bytes, got {type(item).__name__}")
        if not secrets:
            raise ValueError(f"{where} is an empty list; pass None to disable encryption")
    else:
        raise TypeError(f"{where} must be str, bytes or a list of them, got {type(value).__name__}")
    for i, secret in enumerate(secrets):
        if not secret:
            raise ValueError(
                f"{where} holds an empty key (entry {i + 1}); pass None to disable encryption"
            )
    return Keyring([EncryptionKey(s) for s in secrets])


# -- the segment cipher ----------------------------------------------------------------------
def new_nonce() -> bytes:
    return os.urandom(NONCE_SIZE)


def segment_count(size: int, seg: int) -> int:
    """How many sealed segments a ``size``-byte payload takes (at least one)."""
    return max(1, -(-size // seg))


def sealed_size(size: int, seg: int) -> int:
    """Stored length of a ``size``-byte payload: the plaintext plus one tag per segment."""
    return size + TAG_SIZE * segment_count(size, seg)


def segment_nonce(base: bytes, index: int) -> bytes:
    counter = int.from_bytes(base[4:], "big") ^ index
    return base[:4] + counter.to_bytes(8, "big")


def segment_aad(context: bytes, index: int, last: bool) -> bytes:
    return _AAD_DOMAIN + context + _POSITION.pack(index, last)


def context_of(head: Buffer) -> bytes:
    """What every segment's associated data carries of its record: sha256 of prefix + header."""
    return hashlib.sha256(head).digest()


def seal(
    key: EncryptionKey, nonce: bytes, context: bytes, segments: Iterable[Buffer], count: int
) -> Iterator[bytes]:
    """Seal ``count`` plaintext segments in order; yields each ciphertext with its tag."""
    for index, segment in enumerate(segments):
        yield key.seal(
            segment_nonce(nonce, index), segment, segment_aad(context, index, index == count - 1)
        )


def unseal(
    key: EncryptionKey, nonce: bytes, context: bytes, sealed: memoryview, size: int, seg: int
) -> bytearray | None:
    """Decrypt a whole sealed payload into one buffer of ``size`` bytes; ``None`` when any
    segment fails authentication. ``sealed`` must be :func:`sealed_size` bytes long."""
    out = bytearray(size)
    view = memoryview(out)
    count = segment_count(size, seg)
    position = 0
    for index in range(count):
        start = index * seg
        length = min(seg, size - start)
        if not key.open_into(
            segment_nonce(nonce, index),
            sealed[position : position + length + TAG_SIZE],
            segment_aad(context, index, index == count - 1),
            view[start : start + length],
        ):
            return None
        position += length + TAG_SIZE
    return out

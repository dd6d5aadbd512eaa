"""The one record format every store holds.

::

    offset 0   magic      b"CKPT"
           4   version    u8: 2 (blake3 trailer); 1 (sha256 trailer) is still read
           5   flags      u8 (bit 0: signed, bit 1: encrypted)
           6   header_len u32 big-endian, at most 1 MiB
          10   header     UTF-8 JSON: codec, schema, size, parts, hash, created_at, ids, meta
               payload    ``size`` bytes (the codec's buffers, back to back); if encrypted, those
                          bytes sealed in AES-256-GCM segments, 16 tag bytes more per segment
               trailer    digest = BLAKE3(prefix + header + payload) (32 bytes; sha256 in
                          version 1), then, if signed, HMAC-SHA256(key, prefix + header + digest)
                          (32 bytes)

The digest covers the prefix and the header as well as the payload: the header says how to decode
the payload (codec, numpy dtype and shape, part sizes), so a flipped bit there would otherwise turn
into wrong data rather than an error. It sits in a trailer so a record is written in one pass: each
payload slice is hashed while it is still in cache and then handed to the store, and large payloads
are never joined into one ``bytes``. A reader checks the total length, the digest and (when a
signing key is configured) the signature before anything is decoded; any mismatch is
:class:`CheckpointCorrupted`, never data.

Why BLAKE3: the digest is on the path of every load, and a large load is otherwise a page-cache
copy. sha256 (1.2 GiB/s here, with SHA-NI) made a 1 GiB load cost read plus hash; BLAKE3 (5 GiB/s
on one core) hashes slice by slice behind the reads and disappears into them. It is a
cryptographic hash like sha256, so a checksum stays as hard to forge by accident or by a
collision; the version byte (not the header, which is only trusted after the digest) says which
one a record uses, so version-1 records written by earlier releases still load.

Encryption (optional, :mod:`ckpt_core.crypto`) covers the payload only. The header stays readable
(codec, sizes, ids, node names) and gains ``"enc": {"alg", "kid", "nonce", "seg"}``; ``size`` and
``parts`` still describe the plaintext the codec gets back. The trailer covers the stored
(encrypted) bytes, so ``ckpt verify`` checks an encrypted record without its key. A reader then
refuses a plaintext record when it has a key, asks for the key when it has none, and only then
decrypts the payload into one buffer.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import io
import json
import mmap
import queue
import struct
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

import blake3

from . import crypto
from .crypto import EncryptionKey, Keyring
from .errors import CheckpointCorrupted, EncryptionKeyError
from .serde.base import Buffer
from .serde.json import loads_compact

if TYPE_CHECKING:
    from .stores.base import ReadStream

MAGIC = b"CKPT"
#: The version written. Readable versions and the digest each one uses are in ``HASHES``.
VERSION = 2
FLAG_SIGNED = 0x01
FLAG_ENCRYPTED = 0x02
#: Flags this version understands; a record with any other bit set was written by a newer ckpt
#: and must not be decoded as if it were plain.
KNOWN_FLAGS = FLAG_SIGNED | FLAG_ENCRYPTED
_PREFIX = struct.Struct(">4sBBI")
PREFIX_SIZE = _PREFIX.size
MAX_HEADER = 1 << 20
DIGEST_SIZE = 32


class _Hash(Protocol):
    def update(self, data: Buffer, /) -> object: ...
    def digest(self) -> bytes: ...


#: Format version -> (digest name, constructor taking optional first data). Both are 32 bytes.
HASHES: dict[int, tuple[str, Callable[..., _Hash]]] = {
    1: ("sha256", hashlib.sha256),
    2: ("blake3", blake3.blake3),
}
HASH_NAME = HASHES[VERSION][0]


def record_digest(data: Buffer, version: int = VERSION) -> bytes:
    """The trailer digest of ``data`` (everything before the trailer) for a format version."""
    return HASHES[version][1](data).digest()


def _checksum(version: int, digest: bytes) -> str:
    """A record's checksum as shown to people: ``"<digest name>:<hex>"``."""
    return f"{HASHES[version][0]}:{digest.hex()}"


#: Encrypted payloads are sealed in segments of this many plaintext bytes.
SLICE = 1 << 20
#: Plain payloads are handed to the store (and hashed) in views of this many bytes: large enough
#: that a store chunking by the same size (Redis's default 4 MiB chunks) sends each view as it
#: is instead of joining smaller ones into a copy.
PLAIN_SLICE = 4 << 20
#: Records at least this large are hashed in a background thread while they are written.
BACKGROUND_HASH = 8 << 20


#: Headers are compact ASCII JSON (ids may hold any str, lone surrogates included, and still
#: encode). One encoder for all: ``json.dumps`` with options builds a new one per call.
_HEADER_JSON = json.JSONEncoder(separators=(",", ":"), ensure_ascii=True).encode


def _as_bytes_view(buf: Buffer) -> memoryview:
    view = buf if isinstance(buf, memoryview) else memoryview(buf)
    return view if view.format == "B" and view.ndim == 1 else view.cast("B")


def _segments(views: Sequence[memoryview], seg: int) -> Iterator[Buffer]:
    """The buffers back to back, in pieces of exactly ``seg`` bytes (the last one shorter, and one
    empty piece for an empty payload). A piece inside one buffer is a view of it; only a piece
    that spans buffers is joined, so at most ``seg`` bytes are copied at a time."""
    pending: list[memoryview] = []
    filled = 0
    emitted = False
    for view in views:
        start, end = 0, view.nbytes
        while start < end:
            if not pending and end - start >= seg:
                yield view[start : start + seg]
                start += seg
                emitted = True
                continue
            take = min(seg - filled, end - start)
            pending.append(view[start : start + take])
            filled += take
            start += take
            if filled == seg:
                yield b"".join(pending)
                pending, filled, emitted = [], 0, True
    if pending or not emitted:
        yield b"".join(pending)


class _Digest:
    """The record digest fed piece by piece. For large records the hashing runs in a background
    thread, one piece behind the caller, so it overlaps with the write (or read) of the next piece
    (blake3, hashlib, file I/O and socket sends all release the GIL): a large save or load costs
    about its I/O, not I/O plus hashing. Pieces are views of buffers nobody changes while they are
    queued, so queueing them copies nothing.
    """

    __slots__ = ("_queue", "_sha", "_thread")

    def __init__(self, head: bytes, *, background: bool, version: int = VERSION) -> None:
        self._sha = HASHES[version][1](head)
        self._queue: queue.SimpleQueue[Buffer | threading.Event | None] | None = None
        self._thread: threading.Thread | None = None
        if background:
            self._queue = queue.SimpleQueue()
            self._thread = threading.Thread(target=self._drain, name="ckpt-hash", daemon=True)
            self._thread.start()

    def _drain(self) -> None:
        assert self._queue is not None
        while (piece := self._queue.get()) is not None:
            if isinstance(piece, threading.Event):
                piece.set()
            else:
                self._sha.update(piece)
            del piece  # hold no view between pieces: the caller may be about to release it

    def update(self, piece: Buffer) -> None:
        if self._queue is None:
            self._sha.update(piece)
        else:
            self._queue.put(piece)

    def flush(self) -> None:
        """Wait until every queued piece is hashed (the thread keeps running)."""
        if self._queue is not None:
            done = threading.Event()
            self._queue.put(done)
            done.wait()

    def digest(self) -> bytes:
        if self._queue is not None and self._thread is not None:
            self._queue.put(None)
            self._thread.join()
            self._queue = self._thread = None
        return self._sha.digest()


class Record:
    """A record ready to be written: iterate it to get its bytes, in order, once per write.

    ``size`` is the exact total length. Iterating hashes the head and then the payload slice by
    slice and yields the trailer last, so a store can stream it (file writes, multipart uploads,
    Redis chunks) without holding a second copy. After a complete iteration ``checksum`` is
    ``"blake3:<hex>"`` of everything before the trailer.

    With ``encryption_key`` the payload is sealed segment by segment as it is yielded (see
    :mod:`ckpt_core.crypto`); the nonce is drawn once per record, so iterating again (a retried
    write) yields the same bytes.
    """

    __slots__ = (
        "_buffers",
        "_encryption_key",
        "_head",
        "_nonce",
        "_signing_key",
        "checksum",
        "encrypted",
        "header",
        "size",
    )

    def __init__(
        self,
        header: dict[str, Any],
        buffers: Sequence[Buffer],
        signing_key: bytes | None,
        encryption_key: EncryptionKey | None = None,
    ) -> None:
        views = [_as_bytes_view(b) for b in buffers]
        header = dict(header)
        header["size"] = sum(v.nbytes for v in views)
        if len(views) != 1:
            header["parts"] = [v.nbytes for v in views]
        header["hash"] = HASH_NAME
        self._nonce = b""
        stored = header["size"]
        if encryption_key is not None:
            self._nonce = crypto.new_nonce()
            header["enc"] = {
                "alg": crypto.ALGORITHM,
                "kid": encryption_key.kid,
                "nonce": base64.b64encode(self._nonce).decode("ascii"),
                "seg": SLICE,
            }
            stored = crypto.sealed_size(header["size"], SLICE)
        header_bytes = _HEADER_JSON(header).encode()
        if len(header_bytes) > MAX_HEADER:
            raise ValueError(f"record header is {len(header_bytes)} bytes, over {MAX_HEADER}")
        flags = (FLAG_SIGNED if signing_key else 0) | (FLAG_ENCRYPTED if encryption_key else 0)
        self._head = _PREFIX.pack(MAGIC, VERSION, flags, len(header_bytes)) + header_bytes
        self._buffers = views
        self._signing_key = signing_key
        self._encryption_key = encryption_key
        self.encrypted = encryption_key is not None
        self.header = header
        trailer = DIGEST_SIZE * (2 if signing_key else 1)
        self.size = len(self._head) + stored + trailer
        self.checksum: str | None = None

    def _payload(self) -> Iterator[Buffer]:
        """The payload as stored, slice by slice: the codec's buffers, or their sealed segments."""
        if self._encryption_key is None:
            for view in self._buffers:
                for start in range(0, view.nbytes, PLAIN_SLICE):
                    yield view[start : start + PLAIN_SLICE]
            return
        yield from crypto.seal(
            self._encryption_key,
            self._nonce,
            crypto.context_of(self._head),
            _segments(self._buffers, SLICE),
            crypto.segment_count(self.header["size"], SLICE),
        )

    def __iter__(self) -> Iterator[Buffer]:
        if self._encryption_key is None and self.size <= PLAIN_SLICE and len(self._buffers) == 1:
            yield from self._small()
            return
        digest = _Digest(self._head, background=self.size >= BACKGROUND_HASH)
        try:
            yield self._head
            for piece in self._payload():
                digest.update(piece)
                yield piece
        finally:
            raw = digest.digest()  # also stops the hashing thread when a write is abandoned
        yield self._trailer(raw)

    def _small(self) -> Iterator[Buffer]:
        """:meth:`__iter__` for the common small record, a plain payload in one buffer: the same
        bytes, without the slicing generator and the digest wrapper (a 1 KiB save is a few
        microseconds of CPU, and those were a quarter of them)."""
        (payload,) = self._buffers
        sha = HASHES[VERSION][1](self._head)
        sha.update(payload)
        raw = sha.digest()
        yield self._head
        if payload.nbytes:
            yield payload
        yield self._trailer(raw)

    def _trailer(self, raw: bytes) -> bytes:
        """The trailer for digest ``raw`` (and its HMAC when signing); sets ``checksum``."""
        self.checksum = _checksum(VERSION, raw)
        if self._signing_key:
            return raw + hmac.new(self._signing_key, self._head + raw, hashlib.sha256).digest()
        return raw

    def to_bytes(self) -> bytes:
        """The whole record as one ``bytes`` (for small records and tests)."""
        return b"".join(self)


class OpenedRecord(NamedTuple):
    """A verified record: its header and its payload parts, as views over the loaded bytes (or,
    for an encrypted record, over its decrypted payload; empty when opened with
    ``decrypt=False``). A named tuple: every load builds one, and a frozen dataclass costs a
    microsecond of a 25 us local 1 KiB load."""

    header: dict[str, Any]
    parts: list[memoryview]
    checksum: str
    signed: bool
    encrypted: bool = False


def _corrupt(key: str, why: str) -> CheckpointCorrupted:
    return CheckpointCorrupted(
        f"checkpoint {key} is corrupted: {why}. It was not loaded; delete it "
        f"(ckpt rm) or let the step recompute by removing the record",
        key=key,
    )


def parse_prefix(data: Buffer, key: str) -> tuple[int, int]:
    """Check magic and version; return ``(flags, header_len)``."""
    _version, flags, header_len = _parse_prefix(data, key)
    return flags, header_len


def _parse_prefix(data: Buffer, key: str) -> tuple[int, int, int]:
    """Check magic and version; return ``(version, flags, header_len)``."""
    if len(data) < PREFIX_SIZE:
        raise _corrupt(key, f"only {len(data)} bytes, shorter than the record prefix")
    magic, version, flags, header_len = _PREFIX.unpack_from(data, 0)
    magic = bytes(magic)
    if magic != MAGIC:
        raise _corrupt(key, f"bad magic {magic!r}, not a ckpt record")
    if version not in HASHES:
        readable = ", ".join(map(str, HASHES))
        raise _corrupt(
            key,
            f"record format version {version}, this ckpt reads versions {readable}; "
            "a newer ckpt wrote it: upgrade ckpt",
        )
    if flags & ~KNOWN_FLAGS:
        raise _corrupt(
            key, f"unknown record flags 0x{flags:02x} (written by a newer ckpt?); upgrade ckpt"
        )
    if header_len > MAX_HEADER:
        raise _corrupt(key, f"header length {header_len} exceeds {MAX_HEADER}")
    return version, flags, header_len


_NO_PARTS: Any = object()


def _parse_header(raw: memoryview, key: str) -> dict[str, Any]:
    try:
        header = loads_compact(str(raw, "utf-8"))  # str(): no bytes copy, no encoding sniffing
    except (ValueError, RecursionError) as exc:
        # ValueError covers JSONDecodeError, UnicodeDecodeError and int-digit limits;
        # RecursionError a header of nested brackets.
        raise _corrupt(key, f"unreadable header ({type(exc).__name__}: {str(exc)[:200]})") from None
    if not isinstance(header, dict):
        raise _corrupt(key, "header is not an object")
    size, codec = header.get("size"), header.get("codec")
    if type(size) is not int or size < 0 or not isinstance(codec, str):
        raise _corrupt(key, "header lacks a valid size or codec")
    parts = header.get("parts", _NO_PARTS)
    if parts is _NO_PARTS:
        return header  # one part: the whole payload
    if (
        not isinstance(parts, list)
        or not all(type(p) is int and p >= 0 for p in parts)
        or sum(parts) != size
    ):
        raise _corrupt(key, "header part sizes do not add up")
    return header


def read_header(data: Buffer, key: str) -> dict[str, Any]:
    """Parse the header from the first bytes of a record, without verifying the payload."""
    _flags, header_len = parse_prefix(data, key)
    if len(data) < PREFIX_SIZE + header_len:
        raise _corrupt(key, "truncated inside the header")
    return _parse_header(memoryview(data)[PREFIX_SIZE : PREFIX_SIZE + header_len], key)


def open_record(
    data: Buffer,
    key: str,
    signing_key: bytes | None,
    keyring: Keyring | None = None,
    *,
    decrypt: bool = True,
) -> OpenedRecord:
    """Verify a whole record and split its payload; raise :class:`CheckpointCorrupted` otherwise.

    Order: length and prefix, digest of prefix + header + payload, signature (when a key is
    configured: unsigned records are refused), then the header and the payload length it implies,
    then encryption: with a ``keyring`` a plaintext record is refused, without one an encrypted
    record is (both :class:`~ckpt_core.errors.EncryptionKeyError`), and an encrypted payload is
    decrypted with the key its header names. Nothing is decoded before all of it passed.

    ``decrypt=False`` only verifies (``ckpt verify``): encrypted payloads stay sealed, no key is
    needed or checked, and ``parts`` is empty for them.
    """
    view = memoryview(data).cast("B") if not isinstance(data, memoryview) else data.cast("B")
    version, flags, header_len = _parse_prefix(view, key)
    signed = bool(flags & FLAG_SIGNED)
    trailer = DIGEST_SIZE * (2 if signed else 1)
    payload_start = PREFIX_SIZE + header_len
    payload_end = len(view) - trailer
    if payload_end < payload_start:
        raise _corrupt(key, f"truncated: {len(view)} bytes cannot hold its header and trailer")
    payload = view[payload_start:payload_end]
    digest = record_digest(view[:payload_end], version)
    checksum = _checksum(version, digest)
    _check_trailer(key, digest, view[payload_end:], view[:payload_start], signed, signing_key)
    header = _parse_header(view[PREFIX_SIZE:payload_start], key)
    encrypted = bool(flags & FLAG_ENCRYPTED)
    if encrypted:
        kid, nonce, seg = _parse_enc(header, key)
        sealed = crypto.sealed_size(header["size"], seg)
        if sealed != len(payload):
            raise _corrupt(
                key,
                f"header says {header['size']} payload bytes ({sealed} encrypted), "
                f"found {len(payload)}",
            )
        if not decrypt:
            return OpenedRecord(header, [], checksum, signed, True)
        payload = _decrypt(key, keyring, kid, nonce, seg, view[:payload_start], payload, header)
    else:
        if "enc" in header:
            raise _corrupt(key, "header describes encryption, but the record is flagged plain")
        if header["size"] != len(payload):
            raise _corrupt(key, f"header says {header['size']} payload bytes, found {len(payload)}")
        if decrypt and keyring is not None:
            raise EncryptionKeyError(
                f"checkpoint {key} is refused: the record is not encrypted but an encryption key "
                f"is configured (key ids {', '.join(keyring.kids)}). It was written without "
                "encryption_key, or by someone without the key; it was not loaded. Delete it "
                "(ckpt rm) so the step recomputes it encrypted",
                key=key,
                configured_kids=keyring.kids,
            )
    if "parts" not in header:
        return OpenedRecord(header, [payload], checksum, signed, encrypted)
    parts: list[memoryview] = []
    offset = 0
    for length in header["parts"]:
        parts.append(payload[offset : offset + length])
        offset += length
    return OpenedRecord(header, parts, checksum, signed, encrypted)


def _check_trailer(
    key: str,
    digest: bytes,
    trailer: Buffer,
    head: Buffer,
    signed: bool,
    signing_key: bytes | None,
) -> None:
    """Compare the stored digest, and the signature when a signing key is configured."""
    trailer = memoryview(trailer)
    if not hmac.compare_digest(digest, trailer[:DIGEST_SIZE]):
        raise _corrupt(key, "checksum mismatch (truncated or altered)")
    if signing_key:
        if not signed:
            raise _corrupt(key, "record is not signed, but a signing key is configured")
        expected = hmac.new(signing_key, bytes(head) + digest, hashlib.sha256)
        if not hmac.compare_digest(expected.digest(), trailer[DIGEST_SIZE:]):
            raise _corrupt(key, "signature mismatch (wrong signing key, or the record was altered)")


#: Large payload parts are read (and hashed, one slice behind) this many bytes at a time.
READ_SLICE = 8 << 20


def read_record(
    key: str,
    stream: ReadStream,
    signing_key: bytes | None,
    keyring: Keyring | None = None,
) -> OpenedRecord:
    """:func:`open_record` for a record behind a :class:`~ckpt_core.stores.base.ReadStream`.

    A large plain record is read part by part, slice by slice, straight into the buffers the
    codec decodes, while a background thread hashes each slice behind the reads (so a load costs
    about its read): a raw ``bytes`` payload into the ``bytes`` object that is returned (the codec
    hands it back without a copy), any other part into fresh writable memory. Lengths come from
    the header and must add up to the stored size before anything is allocated; nothing is
    decoded before the digest and the signature passed. Small and encrypted records, and plain
    records when an encryption key is configured (refused by :func:`open_record`), take the
    whole-buffer path, and so does a record the store already holds in memory (its parts stay
    views of it, never copies).
    """
    if stream.in_memory or stream.size <= READ_SLICE or keyring is not None:
        return open_record(stream.whole(), key, signing_key, keyring)
    head = bytes(stream.pread(PREFIX_SIZE, 0))
    version, flags, header_len = _parse_prefix(head, key)
    if flags & FLAG_ENCRYPTED:
        return open_record(stream.whole(), key, signing_key, keyring)
    head += bytes(stream.pread(header_len, PREFIX_SIZE))
    if len(head) != PREFIX_SIZE + header_len:
        raise _corrupt(key, "truncated inside the header")
    header = _parse_header(memoryview(head)[PREFIX_SIZE:], key)
    if "enc" in header:
        raise _corrupt(key, "header describes encryption, but the record is flagged plain")
    signed = bool(flags & FLAG_SIGNED)
    trailer_size = DIGEST_SIZE * (2 if signed else 1)
    expected = len(head) + header["size"] + trailer_size
    if stream.size != expected:
        found = stream.size - expected + header["size"]
        raise _corrupt(key, f"header says {header['size']} payload bytes, found {found}")
    digest = _Digest(head, background=True, version=version)
    try:
        parts: list[memoryview] = []
        offset = len(head)
        whole_bytes = header["codec"] == "raw" and header.get("schema") in (None, "bytes")
        for length in header.get("parts", [header["size"]]):
            target = _FreshBytes(length) if whole_bytes else _FreshMemory(length)
            with target.view() as view:
                _read_into(stream, key, offset, view, digest)
            parts.append(target.result())
            offset += length
    finally:
        raw = digest.digest()
    _check_trailer(key, raw, stream.pread(trailer_size, offset), head, signed, signing_key)
    return OpenedRecord(header, parts, _checksum(version, raw), signed, False)


def _read_into(
    stream: ReadStream, key: str, offset: int, view: memoryview, digest: _Digest
) -> None:
    """Fill ``view`` from ``offset``, slice by slice, queueing each filled slice for hashing."""
    for start in range(0, view.nbytes, READ_SLICE):
        piece = view[start : start + READ_SLICE]
        if stream.preadinto(piece, offset + start) != piece.nbytes:
            raise _corrupt(key, "truncated while it was read")
        digest.update(piece)
    digest.flush()  # the hashing thread lets go of the slices before the view is released


class _FreshBytes:
    """A new ``bytes`` object of ``length`` bytes that is filled in place, before anyone sees it.

    ``bytes(n)`` is lazily zeroed memory (calloc), and ``io.BytesIO`` over it exposes that very
    buffer as writable while it holds the only reference; once the view is released,
    ``getvalue()`` returns the same object. Neither step copies on CPython (elsewhere they may,
    which is slower but still correct), so a raw payload is read straight into the value
    returned, with no second copy and no zero-fill pass over it.
    """

    __slots__ = ("_io",)

    def __init__(self, length: int) -> None:
        self._io = io.BytesIO(bytes(length))

    def view(self) -> memoryview:
        return self._io.getbuffer()

    def result(self) -> memoryview:
        return memoryview(self._io.getvalue())


class _FreshMemory:
    """Fresh writable memory for a decoded part (a numpy array keeps viewing it): for a large
    part, memory the way ``np.empty`` takes it (private anonymous pages, which the kernel zeroes
    one by one as the read first touches them, with transparent huge pages asked for), instead
    of a ``bytearray`` that writes every byte once before the read writes it again.

    Private, not :mod:`mmap`'s default ``MAP_SHARED``: shared anonymous memory is shmem, slower
    to fault in (0.45 s against 0.39 s per GiB here) and never given huge pages.
    """

    __slots__ = ("_buffer",)

    def __init__(self, length: int) -> None:
        if length < READ_SLICE:
            self._buffer: mmap.mmap | bytearray = bytearray(length)
            return
        if hasattr(mmap, "MAP_PRIVATE"):  # POSIX
            flags = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS
            self._buffer = mmap.mmap(-1, length, flags=flags)
            if hasattr(mmap, "MADV_HUGEPAGE"):  # Linux; numpy asks the same for its arrays
                self._buffer.madvise(mmap.MADV_HUGEPAGE)
        else:  # Windows: an anonymous mapping is private already
            self._buffer = mmap.mmap(-1, length)

    def view(self) -> memoryview:
        return memoryview(self._buffer)

    def result(self) -> memoryview:
        return memoryview(self._buffer)


def _parse_enc(header: dict[str, Any], key: str) -> tuple[str, bytes, int]:
    """``(kid, base nonce, segment size)`` from an encrypted record's header."""
    enc = header.get("enc")
    if not isinstance(enc, dict):
        raise _corrupt(key, "the record is flagged encrypted, but its header has no valid 'enc'")
    alg, kid, nonce_text, seg = enc.get("alg"), enc.get("kid"), enc.get("nonce"), enc.get("seg")
    if alg != crypto.ALGORITHM:
        raise _corrupt(
            key, f"encrypted with {str(alg)[:40]!r}, this ckpt decrypts {crypto.ALGORITHM} only"
        )
    try:
        nonce = base64.b64decode(str(nonce_text), validate=True)
    except (binascii.Error, ValueError):
        nonce = b""
    if (
        not isinstance(kid, str)
        or len(nonce) != crypto.NONCE_SIZE
        or type(seg) is not int
        or not crypto.MIN_SEGMENT <= seg <= crypto.MAX_SEGMENT
    ):
        raise _corrupt(key, "the header's encryption parameters (kid, nonce, seg) are invalid")
    return kid, nonce, seg


def _decrypt(
    key: str,
    keyring: Keyring | None,
    kid: str,
    nonce: bytes,
    seg: int,
    head: memoryview,
    payload: memoryview,
    header: dict[str, Any],
) -> memoryview:
    if keyring is None:
        raise EncryptionKeyError(
            f"checkpoint {key} is encrypted (key id {kid}) and no encryption key is configured: "
            "set encryption_key= (on the manager, ckpt.run, the Prefect block or the Dagster IO "
            f"manager) or the {crypto.ENV_VAR} environment variable to the key it was written "
            "with. It was not loaded",
            key=key,
            record_kid=kid,
        )
    found = keyring.get(kid)
    if found is None:
        raise EncryptionKeyError(
            f"checkpoint {key} is encrypted with key id {kid}, which is not among the configured "
            f"key ids ({', '.join(keyring.kids)}). Add the key it was written with to "
            f"encryption_key= or {crypto.ENV_VAR} (after the current key: every listed key "
            "decrypts, the first encrypts), or delete the record to recompute it. It was not "
            "loaded",
            key=key,
            record_kid=kid,
            configured_kids=keyring.kids,
        )
    plain = crypto.unseal(found, nonce, crypto.context_of(head), payload, header["size"], seg)
    if plain is None:
        raise _corrupt(
            key,
            f"decryption with key id {kid} failed: the encrypted payload or its header was altered",
        )
    return memoryview(plain)

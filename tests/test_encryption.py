"""Encryption at rest (``encryption_key=``): AES-256-GCM segments inside the ckpt envelope.

Round trips on every backend and codec with the plaintext absent from the stored bytes; key
rotation; the typed refusals (no key, unknown key, plaintext record while a key is set); every bit
flip and truncation, also with the checksum recomputed so only the cipher can catch it; segment
swaps, drops and transplants in multi-segment records; signing and encryption together; the CLI;
and the secret never showing in a repr or a message.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import random
import struct
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

import ckpt_core as ckpt
from ckpt_core import EncryptionKeyError, crypto, envelope
from ckpt_core.cli.app import app
from ckpt_core.crypto import TAG_SIZE
from ckpt_core.envelope import (
    DIGEST_SIZE,
    FLAG_ENCRYPTED,
    FLAG_SIGNED,
    PREFIX_SIZE,
    SLICE,
    Record,
    _segments,
    open_record,
    read_header,
)

SECRET_1 = "correct horse battery staple 1"
SECRET_2 = "correct horse battery staple 2"
MARKER = "PLAINTEXT-MARKER-7f3a"
KEY = "ns/corr/c/n"
CTX = ckpt.RunContext("run-1", "corr-1")


@pytest.fixture(autouse=True)
def _no_env_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(crypto.ENV_VAR, raising=False)
    monkeypatch.delenv("CKPT_SIGNING_KEY", raising=False)


def kid_of(secret: str | bytes) -> str:
    ring = crypto.keyring([secret])
    assert ring is not None
    return ring.primary.kid


def ring(*secrets: str | bytes) -> crypto.Keyring:
    made = crypto.keyring(list(secrets))
    assert made is not None
    return made


def raw_bytes(store: ckpt.Store, key: str) -> bytes:
    data = store.get(key)
    assert data is not None, key
    return bytes(data)


def with_trailer(data: bytes | bytearray, signed: bool = False) -> bytes:
    """``data`` with its digest trailer recomputed (to get past the checksum on purpose)."""
    trailer = DIGEST_SIZE * (2 if signed else 1)
    body = bytes(data[:-trailer])
    return body + envelope.record_digest(body)


class Opaque:
    """Only pickle can store this (not JSON, not a table, not bytes)."""

    def __init__(self, text: str) -> None:
        self.text = text

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Opaque) and other.text == self.text

    __hash__ = None  # type: ignore[assignment]


def values() -> dict[str, tuple[str, Any]]:
    """node -> (expected codec, value); each value holds MARKER (or the marker array)."""
    return {
        "raw": ("raw", (MARKER * 50).encode()),
        "json": ("json", {"secret": MARKER * 20, "n": [1, 2, 3]}),
        "numpy": ("numpy", np.array([float(0x7F3A7F3A)] * 5000)),
        "frame": ("arrow", pd.DataFrame({"who": [MARKER * 10] * 20, "n": range(20)})),
        "pickle": ("pickle", Opaque(MARKER * 30)),
    }


def plaintext_probe(node: str, value: Any) -> bytes:
    """A run of bytes that a plaintext record of ``value`` would contain."""
    if node == "numpy":
        return bytes(value[:64].tobytes())
    return MARKER.encode()


def assert_equal(node: str, got: Any, want: Any) -> None:
    if node == "numpy":
        np.testing.assert_array_equal(got, want)
    elif node == "frame":
        pd.testing.assert_frame_equal(got, want)
    else:
        assert got == want


# -- round trips on every backend ------------------------------------------------------------
def test_every_codec_round_trips_encrypted_on_every_store(store: ckpt.Store) -> None:
    mgr = ckpt.CheckpointManager(store, "enc", encryption_key=SECRET_1)
    plain = ckpt.CheckpointManager(store, "plain")
    for node, (codec, value) in values().items():
        info = mgr.save(CTX, node, value)
        assert info.encrypted and info.codec == codec
        stored = raw_bytes(store, info.key)
        assert len(stored) == info.size
        assert plaintext_probe(node, value) not in stored, f"{node}: plaintext in the store"
        header = read_header(stored, info.key)
        assert header["codec"] == codec
        assert header["enc"]["alg"] == "AES-256-GCM" and header["enc"]["kid"] == kid_of(SECRET_1)
        assert stored[5] & FLAG_ENCRYPTED
        assert_equal(node, mgr.load(CTX, node), value)
        # The probe is meaningful: the same value saved without a key does show it.
        plain_info = plain.save(CTX, node, value)
        assert not plain_info.encrypted
        assert plaintext_probe(node, value) in raw_bytes(store, plain_info.key)


def test_multi_segment_payload_round_trips_on_every_store(store: ckpt.Store) -> None:
    payload = os.urandom(5 * SLICE + 3)
    mgr = ckpt.CheckpointManager(store, "big", encryption_key=SECRET_1)
    info = mgr.save(CTX, "big", payload)
    stored = raw_bytes(store, info.key)
    head_len = PREFIX_SIZE + struct.unpack_from(">I", stored, 6)[0]
    assert len(stored) == info.size == head_len + len(payload) + 6 * TAG_SIZE + DIGEST_SIZE
    assert payload[:4096] not in stored
    assert mgr.load(CTX, "big") == payload


def test_async_twins_encrypt_too(tmp_path: Path) -> None:
    mgr = ckpt.CheckpointManager(str(tmp_path / "s"), encryption_key=SECRET_1)

    async def go() -> Any:
        info = await mgr.asave(CTX, "n", {"a": MARKER})
        assert info.encrypted
        assert MARKER.encode() not in raw_bytes(mgr.store, info.key)
        return await mgr.aload(CTX, "n")

    assert asyncio.run(go()) == {"a": MARKER}


def test_pickle_buffers_spanning_segments_round_trip() -> None:
    # Protocol-5 out-of-band buffers make several parts; segments cut across them.
    value = [np.arange(300_001), b"x" * 5, np.ones(140_003), np.zeros(0), "tail"]
    mgr = ckpt.CheckpointManager("memory://enc-parts", encryption_key=SECRET_1)
    info = mgr.save(CTX, "n", value, codec="pickle")
    header = read_header(raw_bytes(mgr.store, info.key), info.key)
    assert len(header.get("parts", [])) > 2 and header["size"] > 3 * SLICE
    got = mgr.load(CTX, "n")
    np.testing.assert_array_equal(got[0], value[0])
    np.testing.assert_array_equal(got[2], value[2])
    assert got[1] == b"x" * 5 and got[3].size == 0 and got[4] == "tail"


def test_empty_payload_and_none_are_hits() -> None:
    mgr = ckpt.CheckpointManager("memory://enc-empty", encryption_key=SECRET_1)
    mgr.save(CTX, "empty", b"")
    mgr.save(CTX, "none", None)
    assert mgr.load(CTX, "empty") == b""
    assert mgr.load(CTX, "none") is None


@pytest.mark.parametrize("size", [0, 1, SLICE - 1, SLICE, SLICE + 1, 2 * SLICE])
def test_record_size_matches_the_stored_bytes_at_segment_edges(size: int) -> None:
    keys = ring(SECRET_1)
    payload = os.urandom(size)
    record = Record({"codec": "raw"}, [payload], None, keys.primary)
    data = record.to_bytes()
    assert len(data) == record.size
    segments = max(1, -(-size // SLICE))
    assert record.size - len(payload) - DIGEST_SIZE - segments * TAG_SIZE > PREFIX_SIZE
    opened = open_record(data, KEY, None, keys)
    assert opened.encrypted and b"".join(bytes(p) for p in opened.parts) == payload


def test_each_record_gets_its_own_nonce_and_a_retried_write_the_same_bytes() -> None:
    keys = ring(SECRET_1)
    first = Record({"codec": "raw"}, [b"same value"], None, keys.primary)
    second = Record({"codec": "raw"}, [b"same value"], None, keys.primary)
    assert first.header["enc"]["nonce"] != second.header["enc"]["nonce"]
    assert first.to_bytes() != second.to_bytes()
    assert first.to_bytes() == first.to_bytes()  # iterating again (a retry) is deterministic


# -- keys and rotation -----------------------------------------------------------------------
def test_rotation_reads_old_records_and_writes_with_the_first_key() -> None:
    store = ckpt.MemoryStore()
    old = ckpt.CheckpointManager(store, "rot", encryption_key=[SECRET_1])
    old.save(CTX, "before", {"v": 1})

    rotated = ckpt.CheckpointManager(store, "rot", encryption_key=[SECRET_2, SECRET_1])
    assert rotated.load(CTX, "before") == {"v": 1}
    info = rotated.save(CTX, "after", {"v": 2})
    header = read_header(raw_bytes(store, info.key), info.key)
    assert header["enc"]["kid"] == kid_of(SECRET_2) != kid_of(SECRET_1)

    # Only the old key: the new record names the key it needs and the keys we have.
    with pytest.raises(EncryptionKeyError) as caught:
        old.load(CTX, "after")
    err = caught.value
    assert err.record_kid == kid_of(SECRET_2)
    assert err.configured_kids == (kid_of(SECRET_1),)
    assert kid_of(SECRET_2) in str(err) and kid_of(SECRET_1) in str(err)
    assert isinstance(err, ckpt.CheckpointCorrupted) and err.key == info.key
    # Only the new key: the old record is refused the same way.
    with pytest.raises(EncryptionKeyError, match=kid_of(SECRET_1)):
        ckpt.CheckpointManager(store, "rot", encryption_key=SECRET_2).load(CTX, "before")


def test_env_var_holds_comma_separated_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    store = ckpt.MemoryStore()
    ckpt.CheckpointManager(store, "env", encryption_key=SECRET_1).save(CTX, "n", 7)
    monkeypatch.setenv(crypto.ENV_VAR, f"{SECRET_2} , {SECRET_1}")
    mgr = ckpt.CheckpointManager(store, "env")
    assert mgr.load(CTX, "n") == 7
    info = mgr.save(CTX, "m", 8)
    assert read_header(raw_bytes(store, info.key), info.key)["enc"]["kid"] == kid_of(SECRET_2)


def kids(value: crypto.KeyInput) -> tuple[str, ...]:
    made = crypto.keyring(value)
    assert made is not None
    return made.kids


def test_key_forms() -> None:
    # A str is a comma-separated list (like the environment variable), spaces around dropped.
    assert kids("a,b") == kids(["a", "b"]) == kids(" a , b ") == (kid_of("a"), kid_of("b"))
    # bytes, and each list item, are one key, commas included.
    assert kids(b"a,b") == kids(["a,b"]) == (kid_of(b"a,b"),)
    assert kid_of(b"a,b") not in (kid_of("a"), kid_of("b"))
    assert kids(["same", b"same"]) == kids("same")  # duplicates collapse
    assert kid_of("a") != kid_of("A")
    assert crypto.keyring(None) is None
    assert all(len(k) == 16 and int(k, 16) >= 0 for k in kids("a,b"))


@pytest.mark.parametrize(
    ("value", "error", "message"),
    [
        ("", ValueError, "empty key"),
        ("a,,b", ValueError, r"empty key \(entry 2 of 3"),
        ("a, ", ValueError, "empty key"),
        (b"", ValueError, "empty key"),
        ([], ValueError, "empty list"),
        (["ok", b""], ValueError, "entry 2"),
        (12345, TypeError, "must be str, bytes or a list of them, got int"),
        (["ok", 3], TypeError, r"encryption_key\[1\] must be str or bytes, got int"),
    ],
)
def test_bad_keys_are_refused(value: Any, error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message):
        ckpt.CheckpointManager("memory://enc-bad", encryption_key=value)


def test_empty_env_key_entry_is_refused_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(crypto.ENV_VAR, "k1,")
    with pytest.raises(ValueError, match=f"{crypto.ENV_VAR} holds an empty key"):
        ckpt.CheckpointManager("memory://enc-env-bad")


def test_missing_cryptography_gives_an_install_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "cryptography.hazmat.primitives.ciphers.aead", None)
    with pytest.raises(ImportError, match=r"pip install 'ckpt\[crypto\]'"):
        ckpt.CheckpointManager("memory://enc-noimport", encryption_key=SECRET_1)


# -- refusals --------------------------------------------------------------------------------
def test_plaintext_record_is_refused_when_a_key_is_configured() -> None:
    store = ckpt.MemoryStore()
    info = ckpt.CheckpointManager(store, "p").save(CTX, "n", {"forged": True})
    mgr = ckpt.CheckpointManager(store, "p", encryption_key=SECRET_1)
    with pytest.raises(EncryptionKeyError) as caught:
        mgr.load(CTX, "n")
    err = caught.value
    assert "record is not encrypted but an encryption key is configured" in str(err)
    assert err.key == info.key and info.key in str(err)
    assert err.record_kid is None and err.configured_kids == (kid_of(SECRET_1),)


def test_encrypted_record_without_a_key_says_how_to_set_one() -> None:
    store = ckpt.MemoryStore()
    info = ckpt.CheckpointManager(store, "k", encryption_key=SECRET_1).save(CTX, "n", 1)
    with pytest.raises(EncryptionKeyError) as caught:
        ckpt.CheckpointManager(store, "k").load(CTX, "n")
    text = str(caught.value)
    assert "encryption_key=" in text and crypto.ENV_VAR in text and info.key in text
    assert kid_of(SECRET_1) in text and caught.value.record_kid == kid_of(SECRET_1)
    assert isinstance(caught.value, ckpt.CheckpointCorrupted)


def test_open_record_without_decrypt_only_verifies() -> None:
    data = Record({"codec": "raw"}, [b"sealed"], None, ring(SECRET_1).primary).to_bytes()
    opened = open_record(data, KEY, None, decrypt=False)
    assert opened.encrypted and opened.parts == []
    with pytest.raises(ckpt.CheckpointCorrupted, match="checksum"):
        open_record(data[:-1] + bytes([data[-1] ^ 1]), KEY, None, decrypt=False)


# -- tampering -------------------------------------------------------------------------------
def small_encrypted(signing_key: bytes | None = None) -> bytes:
    header = {"codec": "raw", "node": "n", "run": "r"}
    return Record(
        header, [b"hello, encrypted world"], signing_key, ring(SECRET_1).primary
    ).to_bytes()


def test_every_bit_flip_is_detected() -> None:
    data = small_encrypted()
    keys = ring(SECRET_1)
    for bit in range(len(data) * 8):
        flipped = bytearray(data)
        flipped[bit // 8] ^= 1 << (bit % 8)
        with pytest.raises(ckpt.CheckpointCorrupted):
            open_record(bytes(flipped), KEY, None, keys)


def test_every_bit_flip_is_detected_by_the_cipher_when_the_checksum_is_recomputed() -> None:
    """An attacker who can write the store recomputes the sha256 trailer: then only AES-GCM (tag
    and associated data over the header) stands between a flipped bit and wrong data."""
    data = small_encrypted()
    keys = ring(SECRET_1)
    body = len(data) - DIGEST_SIZE
    for bit in range(body * 8):
        flipped = bytearray(data)
        flipped[bit // 8] ^= 1 << (bit % 8)
        with pytest.raises(ckpt.CheckpointCorrupted):
            open_record(with_trailer(flipped), KEY, None, keys)


def test_truncation_at_every_length_is_detected() -> None:
    data = small_encrypted()
    keys = ring(SECRET_1)
    for length in range(len(data)):
        with pytest.raises(ckpt.CheckpointCorrupted):
            open_record(data[:length], KEY, None, keys)
        # The same cut with a valid checksum (at len - 32 that is the intact record itself).
        if PREFIX_SIZE < length != len(data) - DIGEST_SIZE:
            with pytest.raises(ckpt.CheckpointCorrupted):
                open_record(with_trailer(data[:length] + bytes(DIGEST_SIZE)), KEY, None, keys)


def big_record() -> tuple[bytes, bytes, int]:
    """A 3.5-segment record: (record, payload, head length)."""
    payload = os.urandom(3 * SLICE + SLICE // 2)
    data = Record({"codec": "raw"}, [payload], None, ring(SECRET_1).primary).to_bytes()
    return data, payload, PREFIX_SIZE + struct.unpack_from(">I", data, 6)[0]


def test_swapped_segments_fail_decryption_even_with_a_valid_checksum() -> None:
    data, payload, head = big_record()
    keys = ring(SECRET_1)
    assert bytes(open_record(data, KEY, None, keys).parts[0]) == payload
    seg = SLICE + TAG_SIZE
    first, second = data[head : head + seg], data[head + seg : head + 2 * seg]
    swapped = data[:head] + second + first + data[head + 2 * seg :]
    assert len(swapped) == len(data)
    with pytest.raises(ckpt.CheckpointCorrupted, match="decryption with key id"):
        open_record(with_trailer(swapped), KEY, None, keys)
    # In the manager: the same refusal, and no value comes back.
    mgr = ckpt.CheckpointManager("memory://enc-swap", "ns", encryption_key=SECRET_1)
    info = mgr.save(CTX, "n", payload)
    stored = raw_bytes(mgr.store, info.key)
    h = PREFIX_SIZE + struct.unpack_from(">I", stored, 6)[0]
    stored = (
        stored[:h] + stored[h + seg : h + 2 * seg] + stored[h : h + seg] + stored[h + 2 * seg :]
    )
    mgr.store.put(info.key, with_trailer(stored))
    with pytest.raises(ckpt.CheckpointCorrupted, match="decryption"):
        mgr.load(CTX, "n")


def test_dropping_the_last_segment_with_a_matching_header_fails() -> None:
    """Cut at a segment boundary and rewrite the header's size to match: the lengths add up, but
    the header is bound into every segment and the new last segment is not marked last."""
    data, _payload, head = big_record()
    header = json.loads(data[PREFIX_SIZE:head])
    header["size"] = 3 * SLICE
    new_header = json.dumps(header, separators=(",", ":")).encode()
    prefix = data[:4] + data[4:6] + struct.pack(">I", len(new_header))
    sealed = data[head : head + 3 * (SLICE + TAG_SIZE)]
    forged = with_trailer(prefix + new_header + sealed + bytes(DIGEST_SIZE))
    with pytest.raises(ckpt.CheckpointCorrupted, match="decryption with key id"):
        open_record(forged, KEY, None, ring(SECRET_1))


def test_a_sealed_payload_moved_to_another_record_fails() -> None:
    keys = ring(SECRET_1)
    a = Record({"codec": "raw", "node": "a"}, [b"payload of a!"], None, keys.primary).to_bytes()
    b = Record({"codec": "raw", "node": "b"}, [b"payload of b!"], None, keys.primary).to_bytes()
    head_a = PREFIX_SIZE + struct.unpack_from(">I", a, 6)[0]
    head_b = PREFIX_SIZE + struct.unpack_from(">I", b, 6)[0]
    moved = b[:head_b] + a[head_a:]
    with pytest.raises(ckpt.CheckpointCorrupted, match="decryption"):
        open_record(with_trailer(moved), KEY, None, keys)


def test_clearing_the_encrypted_flag_is_detected() -> None:
    data = bytearray(small_encrypted())
    data[5] &= ~FLAG_ENCRYPTED
    with pytest.raises(ckpt.CheckpointCorrupted, match="flagged plain"):
        open_record(with_trailer(data), KEY, None, None)


@pytest.mark.parametrize(
    ("field", "bad", "message"),
    [
        ("alg", "ROT13", "decrypts AES-256-GCM only"),
        ("seg", 7, "encryption parameters"),
        ("nonce", "not base64!", "encryption parameters"),
        ("kid", None, "encryption parameters"),
    ],
)
def test_malformed_encryption_headers_are_corrupt(field: str, bad: Any, message: str) -> None:
    data = small_encrypted()
    head = PREFIX_SIZE + struct.unpack_from(">I", data, 6)[0]
    header = json.loads(data[PREFIX_SIZE:head])
    header["enc"][field] = bad
    new_header = json.dumps(header).encode()
    forged = data[:6] + struct.pack(">I", len(new_header)) + new_header + data[head:]
    with pytest.raises(ckpt.CheckpointCorrupted, match=message):
        open_record(with_trailer(forged), KEY, None, ring(SECRET_1))


# -- the segment cipher on its own -----------------------------------------------------------
@settings(max_examples=200, deadline=None)
@given(
    sizes=st.lists(st.integers(0, 40), max_size=6),
    seg=st.integers(1, 17),
)
def test_segments_cut_the_concatenated_buffers_exactly(sizes: list[int], seg: int) -> None:
    rng = random.Random(sum(sizes) * 31 + seg)
    buffers = [memoryview(bytes(rng.randrange(256) for _ in range(n))) for n in sizes]
    whole = b"".join(bytes(b) for b in buffers)
    pieces = [bytes(p) for p in _segments(buffers, seg)]
    assert b"".join(pieces) == whole
    assert len(pieces) == crypto.segment_count(len(whole), seg)
    if whole:
        assert all(len(p) == seg for p in pieces[:-1]) and 0 < len(pieces[-1]) <= seg
    else:
        assert pieces == [b""]


def test_unseal_refuses_reordered_dropped_and_duplicated_segments() -> None:
    key = ring(SECRET_1).primary
    nonce, context, seg = crypto.new_nonce(), b"c" * 32, 4
    plain = b"0123456789abcdef!"  # 5 segments of 4 (the last one 1 byte)
    pieces = [plain[i : i + seg] for i in range(0, len(plain), seg)]
    sealed = list(crypto.seal(key, nonce, context, pieces, len(pieces)))
    good = memoryview(b"".join(sealed))
    assert crypto.unseal(key, nonce, context, good, len(plain), seg) == plain
    assert crypto.unseal(key, nonce, b"d" * 32, good, len(plain), seg) is None
    other_nonce = crypto.new_nonce()
    assert crypto.unseal(key, other_nonce, context, good, len(plain), seg) is None
    reordered = sealed[1:2] + sealed[0:1] + sealed[2:]
    assert (
        crypto.unseal(key, nonce, context, memoryview(b"".join(reordered)), len(plain), seg) is None
    )
    # Drop the last (1-byte) segment and claim a 16-byte payload: segment 3 is not marked last.
    dropped = memoryview(b"".join(sealed[:4]))
    assert crypto.unseal(key, nonce, context, dropped, 16, seg) is None
    duplicated = memoryview(b"".join(sealed[:1] + sealed[:1] + sealed[2:]))
    assert crypto.unseal(key, nonce, context, duplicated, len(plain), seg) is None


class OldAESGCM:
    """An AESGCM as in cryptography < 45: no ``decrypt_into``."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def encrypt(self, nonce: bytes, data: Any, aad: bytes) -> bytes:
        return bytes(self.inner.encrypt(nonce, data, aad))

    def decrypt(self, nonce: bytes, data: Any, aad: bytes) -> bytes:
        return bytes(self.inner.decrypt(nonce, data, aad))


def test_older_cryptography_without_decrypt_into_reads_the_same_records() -> None:
    key = ring(SECRET_1).primary
    data = Record({"codec": "raw"}, [b"z" * (SLICE + 5)], None, key).to_bytes()
    old = ring(SECRET_1)
    old.primary._aead = OldAESGCM(old.primary._aead)  # type: ignore[assignment]
    assert not hasattr(old.primary._aead, "decrypt_into")
    assert bytes(open_record(data, KEY, None, old).parts[0]) == b"z" * (SLICE + 5)
    flipped = bytearray(data)
    flipped[-DIGEST_SIZE - 1] ^= 1
    with pytest.raises(ckpt.CheckpointCorrupted, match="decryption with key id"):
        open_record(with_trailer(flipped), KEY, None, old)


# -- signing and encryption together ---------------------------------------------------------
def test_signed_and_encrypted() -> None:
    store = ckpt.MemoryStore()
    mgr = ckpt.CheckpointManager(store, "se", signing_key="sign-me", encryption_key=SECRET_1)
    info = mgr.save(CTX, "n", {"both": MARKER})
    assert info.signed and info.encrypted
    stored = raw_bytes(store, info.key)
    assert stored[5] == FLAG_SIGNED | FLAG_ENCRYPTED and MARKER.encode() not in stored
    assert mgr.load(CTX, "n") == {"both": MARKER}
    opened = open_record(stored, info.key, b"sign-me", ring(SECRET_1))
    assert opened.signed and opened.encrypted
    with pytest.raises(ckpt.CheckpointCorrupted, match="signature mismatch"):
        ckpt.CheckpointManager(store, "se", signing_key="other", encryption_key=SECRET_1).load(
            CTX, "n"
        )
    # A signed reader without the encryption key still gets the typed "set the key" error.
    with pytest.raises(EncryptionKeyError, match="no encryption key is configured"):
        ckpt.CheckpointManager(store, "se", signing_key="sign-me").load(CTX, "n")
    # An encrypted, unsigned record is refused by a reader that requires signatures.
    ckpt.CheckpointManager(store, "se", encryption_key=SECRET_1).save(CTX, "u", 1)
    with pytest.raises(ckpt.CheckpointCorrupted, match="not signed"):
        mgr.load(CTX, "u")


# -- the plain-Python wrappers ---------------------------------------------------------------
def test_run_and_decorator_pass_the_key_through(tmp_path: Path) -> None:
    url = str(tmp_path / "store")
    calls: list[int] = []

    @ckpt.checkpointed
    def step(x: int) -> dict[str, Any]:
        calls.append(x)
        return {"x": x, "marker": MARKER}

    with pytest.raises(RuntimeError), ckpt.run("job-enc", store=url, encryption_key=SECRET_1):
        step(1)
        raise RuntimeError("crash after the step")
    stored = [raw_bytes(ckpt.open_store(url), o.key) for o in ckpt.open_store(url).list("")]
    assert len(stored) == 1 and MARKER.encode() not in stored[0]
    assert read_header(stored[0], "k")["enc"]["kid"] == kid_of(SECRET_1)
    with ckpt.run("job-enc", store=url, encryption_key=[SECRET_2, SECRET_1]):
        assert step(1) == {"x": 1, "marker": MARKER}
    assert calls == [1]  # resumed from the encrypted checkpoint
    with pytest.raises(RuntimeError), ckpt.run("job-enc-2", store=url, encryption_key=SECRET_1):
        step(2)
        raise RuntimeError("crash")
    with pytest.raises(EncryptionKeyError), ckpt.run("job-enc-2", store=url):
        step(2)


# -- secrets ---------------------------------------------------------------------------------
def test_the_secret_never_shows(tmp_path: Path) -> None:
    secret = "sekrit-passphrase-do-not-print"
    store = ckpt.MemoryStore()
    mgr = ckpt.CheckpointManager(store, "s", encryption_key=secret)
    info = mgr.save(CTX, "n", 1)
    shown = [repr(mgr), str(mgr), repr(mgr._keyring), repr(mgr._keyring.keys), repr(info)]  # type: ignore[union-attr]
    for make in (
        lambda: ckpt.CheckpointManager(store, "s").load(CTX, "n"),
        lambda: ckpt.CheckpointManager(store, "s", encryption_key="x" + secret).load(CTX, "n"),
        lambda: ckpt.CheckpointManager(store, "s", encryption_key=secret).load(CTX, "missing"),
    ):
        with pytest.raises(ckpt.CheckpointError) as caught:
            make()
        shown.append(str(caught.value))
    ckpt.CheckpointManager(store, "s").save(CTX, "p", 1)
    with pytest.raises(EncryptionKeyError) as refused:
        mgr.load(CTX, "p")
    shown.append(str(refused.value))
    stored = raw_bytes(store, info.key)
    derived = hashlib.sha256(secret.encode()).hexdigest()
    for text in shown:
        assert secret not in text and derived not in text, text
    assert secret.encode() not in stored


# -- the CLI ---------------------------------------------------------------------------------
CLI_ENV = {"COLUMNS": "160", "CKPT_SIGNING_KEY": "", "CKPT_URL": "", crypto.ENV_VAR: ""}


def cli(*args: str, env: dict[str, str] | None = None) -> Any:
    return CliRunner().invoke(app, list(args), env={**CLI_ENV, **(env or {})})


def test_cli_show_and_verify_encrypted_records(tmp_path: Path) -> None:
    url = str(tmp_path / "store")
    mgr = ckpt.CheckpointManager(url, "cli", encryption_key=SECRET_1)
    info = mgr.save(CTX, "n", {"value": MARKER})
    kid = kid_of(SECRET_1)

    ckpt.CheckpointManager(url, "cli").save(CTX, "plain", 1)
    listed = cli("ls", url, "--json")
    assert listed.exit_code == 0, listed.output
    by_node = {r["node"]: r for r in json.loads(listed.stdout)["records"]}
    assert by_node["n"]["key_id"] == kid and "key_id" not in by_node["plain"]

    ok = cli("verify", url, "--json")  # no key needed to verify
    assert ok.exit_code == 0, ok.output
    assert json.loads(ok.stdout)["bad"] == []

    sealed = cli("show", url, info.key, "--json")
    assert sealed.exit_code == 0, sealed.output
    shown = json.loads(sealed.stdout)
    assert shown["encrypted"] is True and MARKER not in shown["preview"]
    assert kid in shown["preview"] and crypto.ENV_VAR in shown["preview"]

    opened = cli("show", url, info.key, "--json", env={crypto.ENV_VAR: SECRET_1})
    assert opened.exit_code == 0, opened.output
    assert MARKER in json.loads(opened.stdout)["preview"]
    table = cli("show", url, info.key, "--encryption-key", SECRET_1)
    assert table.exit_code == 0 and MARKER in table.stdout and f"key id {kid}" in table.stdout

    wrong = cli("show", url, info.key, env={crypto.ENV_VAR: SECRET_2})
    assert wrong.exit_code == 1 and "refused" in wrong.output and kid in wrong.output
    assert SECRET_2 not in wrong.output and MARKER not in wrong.output

    # Damage the ciphertext: verify (no key) sees the checksum mismatch.
    stored = bytearray(raw_bytes(mgr.store, info.key))
    stored[-DIGEST_SIZE - 3] ^= 0x10
    mgr.store.put(info.key, bytes(stored))
    bad = cli("verify", url, "--json")
    assert bad.exit_code == 1
    assert [b["key"] for b in json.loads(bad.stdout)["bad"]] == [info.key]

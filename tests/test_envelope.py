"""The record envelope: every damaged record is CheckpointCorrupted, never data or another error.

Bit flips anywhere, truncation at every length, wrong magic/version/flags, lying headers (a
10 GB size, garbage JSON, nested brackets) and random mutations all end in ``CheckpointCorrupted``
naming the key, quickly and without allocating what the header claims.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import struct
import tracemalloc

import blake3
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import ckpt_core as ckpt
from ckpt_core import envelope
from ckpt_core.envelope import (
    DIGEST_SIZE,
    MAGIC,
    PREFIX_SIZE,
    Record,
    open_record,
    read_header,
)

KEY = "ns/corr/job/node"
SIGNING_KEY = b"s3cret-signing-key"


def small_record(signing_key: bytes | None = None, parts: list[bytes] | None = None) -> bytes:
    header = {"codec": "raw", "schema": "bytes", "node": "node"}
    return Record(header, parts or [b"hello, world"], signing_key).to_bytes()


def forge(header: bytes | dict[str, object], payload: bytes = b"xyz", flags: int = 0) -> bytes:
    """A record with a *valid* digest around an arbitrary header, to reach the header checks."""
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    head = struct.pack(">4sBBI", MAGIC, envelope.VERSION, flags, len(raw)) + raw
    return head + payload + envelope.record_digest(head + payload)


def corrupted(data: bytes, signing_key: bytes | None = None) -> ckpt.CheckpointCorrupted:
    with pytest.raises(ckpt.CheckpointCorrupted) as info:
        open_record(data, KEY, signing_key)
    assert info.value.key == KEY
    assert KEY in str(info.value)
    return info.value


def test_round_trip_and_layout() -> None:
    record = Record({"codec": "raw"}, [b"ab", memoryview(b"cde"), bytearray(b"")], None)
    data = record.to_bytes()
    assert len(data) == record.size
    assert data[:4] == b"CKPT"
    opened = open_record(data, KEY, None)
    assert [bytes(p) for p in opened.parts] == [b"ab", b"cde", b""]
    assert opened.header["size"] == 5 and opened.header["parts"] == [2, 3, 0]
    assert opened.checksum == record.checksum
    assert opened.checksum == "blake3:" + blake3.blake3(data[:-DIGEST_SIZE]).hexdigest()
    assert not opened.signed
    assert read_header(data, KEY)["codec"] == "raw"


def test_large_payload_is_streamed_in_slices() -> None:
    payload = bytes(range(256)) * (3 * envelope.PLAIN_SLICE // 256 + 7)
    record = Record({"codec": "raw"}, [payload], None)
    chunks = list(record)
    assert max(len(memoryview(c)) for c in chunks[1:-1]) <= envelope.PLAIN_SLICE
    assert len(chunks) >= 5  # head, >= 3 slices, trailer: never one joined copy
    data = b"".join(chunks)
    assert bytes(open_record(data, KEY, None).parts[0]) == payload


@pytest.mark.parametrize("signed", [False, True])
def test_every_bit_flip_is_detected(signed: bool) -> None:
    key = SIGNING_KEY if signed else None
    data = small_record(key)
    for i in range(len(data)):
        for bit in range(8):
            damaged = bytearray(data)
            damaged[i] ^= 1 << bit
            corrupted(bytes(damaged), key)


def test_header_bit_flips_are_caught_by_the_checksum() -> None:
    # The header says how to decode (numpy dtype and shape): flipping it must not yield data.
    mgr = ckpt.CheckpointManager(ckpt.MemoryStore())
    ctx = ckpt.RunContext("r")
    import numpy as np

    mgr.save(ctx, "arr", np.arange(4, dtype="<i8"))
    key = mgr.key_for(ctx, "arr")
    data = bytearray(mgr.store.get(key))  # type: ignore[arg-type]
    at = data.find(b"<i8")
    data[at + 1] = ord("u")  # <i8 -> <u8: same size, different values
    mgr.store.put(key, bytes(data))
    with pytest.raises(ckpt.CheckpointCorrupted, match="checksum"):
        mgr.load(ctx, "arr")


@pytest.mark.parametrize("signed", [False, True])
def test_truncation_at_every_length(signed: bool) -> None:
    key = SIGNING_KEY if signed else None
    data = small_record(key)
    for length in range(len(data)):
        corrupted(data[:length], key)
    corrupted(data + b"\x00", key)  # and one byte too many


def test_wrong_magic_version_and_flags() -> None:
    data = small_record()
    assert "bad magic" in str(corrupted(b"XKPT" + data[4:]))
    newer = str(corrupted(data[:4] + b"\x03" + data[5:]))
    assert "version 3" in newer and "reads versions 1, 2" in newer and "upgrade ckpt" in newer
    assert "unknown record flags 0x04" in str(corrupted(forge({"codec": "raw"}, flags=0x04)))
    assert "shorter than the record prefix" in str(corrupted(b"CKPT"))
    assert "not a ckpt record" in str(corrupted(b"PK\x03\x04" + bytes(100)))


def as_version_1(data: bytes, signing_key: bytes | None = None) -> bytes:
    """A record as ckpt 0.x wrote it: format version 1, sha256 trailer (and HMAC over it)."""
    trailer = DIGEST_SIZE * (2 if signing_key else 1)
    body = data[:4] + b"\x01" + data[5:-trailer]
    digest = hashlib.sha256(body).digest()
    if signing_key:
        head_len = PREFIX_SIZE + struct.unpack_from(">I", body, 6)[0]
        digest += hmac.new(signing_key, body[:head_len] + digest, hashlib.sha256).digest()
    return body + digest


@pytest.mark.parametrize("signing_key", [None, SIGNING_KEY])
def test_version_1_records_still_load(signing_key: bytes | None) -> None:
    old = as_version_1(small_record(signing_key, [b"from", b" before"]), signing_key)
    opened = open_record(old, KEY, signing_key)
    assert b"".join(bytes(p) for p in opened.parts) == b"from before"
    assert (
        opened.checksum
        == "sha256:" + hashlib.sha256(old[: -DIGEST_SIZE * (1 + bool(signing_key))]).hexdigest()
    )
    assert opened.signed is bool(signing_key)


def test_the_version_byte_not_the_header_picks_the_digest() -> None:
    data = small_record()
    # A version-1 record carrying a (valid) blake3 trailer, and a version-2 one carrying sha256:
    # each is checked with its own version's digest, so neither passes.
    v1_with_blake3 = data[:4] + b"\x01" + data[5:-DIGEST_SIZE]
    corrupted(v1_with_blake3 + envelope.record_digest(v1_with_blake3, 2))
    v2_with_sha256 = data[:-DIGEST_SIZE]
    corrupted(v2_with_sha256 + hashlib.sha256(v2_with_sha256).digest())


def test_huge_declared_lengths_allocate_nothing() -> None:
    tracemalloc.start()
    try:
        # header_len field at its u32 maximum (4 GiB).
        corrupted(struct.pack(">4sBBI", MAGIC, 1, 0, 0xFFFFFFFF) + bytes(64))
        # A header that declares a 10 GB payload (digest valid, so the header checks run).
        ten_gb = 10 * 1000**3
        corrupted(forge({"codec": "raw", "size": ten_gb}))
        corrupted(forge({"codec": "pickle", "size": ten_gb, "parts": [ten_gb, 0]}))
        # The same header in the unverified read_header path (used by head/CLI): no payload read.
        assert read_header(forge({"codec": "raw", "size": ten_gb}), KEY)["size"] == ten_gb
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20


@pytest.mark.parametrize(
    "header",
    [
        b"{",
        b"\xff\xfe not utf-8",
        b"[" * 200_000,  # RecursionError inside json
        b"1" * 5_000,  # int longer than Python's digit limit (ValueError, not JSONDecodeError)
        b"[]",
        b"null",
        b'"a string"',
        b"{}",
        b'{"codec": "raw"}',
        b'{"size": 3}',
        b'{"codec": 7, "size": 3}',
        b'{"codec": "raw", "size": -1}',
        b'{"codec": "raw", "size": true}',
        b'{"codec": "raw", "size": 3.0}',
        b'{"codec": "raw", "size": 4}',
        b'{"codec": "raw", "size": 3, "parts": [1, 1]}',
        b'{"codec": "raw", "size": 3, "parts": [4, -1]}',
        b'{"codec": "raw", "size": 3, "parts": "3"}',
        b'{"codec": "raw", "size": 3, "parts": [true, 2]}',
        b'{"codec": "raw", "size": NaN}',
    ],
)
def test_lying_or_garbage_headers(header: bytes) -> None:
    corrupted(forge(header))


def test_header_length_past_the_end() -> None:
    head = struct.pack(">4sBBI", MAGIC, 1, 0, 500) + b"{}"
    corrupted(head + envelope.record_digest(head))
    with pytest.raises(ckpt.CheckpointCorrupted, match="truncated inside the header"):
        read_header(head, KEY)


def test_header_too_large_is_refused_at_write() -> None:
    with pytest.raises(ValueError, match="header"):
        Record({"codec": "raw", "meta": "x" * (envelope.MAX_HEADER + 1)}, [b""], None)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_random_bytes(data: bytes) -> None:
    corrupted(data)
    corrupted(MAGIC + b"\x01\x00" + data)


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_random_mutations_of_a_valid_record(draw: st.DataObject) -> None:
    signed = draw.draw(st.booleans())
    key = SIGNING_KEY if signed else None
    original = small_record(key, parts=[b"abc", b"", b"defgh"])
    data = bytearray(original)
    for _ in range(draw.draw(st.integers(1, 4))):
        op = draw.draw(st.sampled_from(["set", "insert", "delete"]))
        at = draw.draw(st.integers(0, len(data) - 1))
        if op == "set":
            new = draw.draw(st.integers(0, 255).filter(lambda b, at=at: b != data[at]))
            data[at] = new
        elif op == "insert":
            data.insert(at, draw.draw(st.integers(0, 255)))
        else:
            del data[at]
    assume(bytes(data) != original)  # an insert and a delete can cancel out
    corrupted(bytes(data), key)


# -- signing ----------------------------------------------------------------------------------


def test_signed_record_verifies_with_the_right_key() -> None:
    data = small_record(SIGNING_KEY)
    opened = open_record(data, KEY, SIGNING_KEY)
    assert opened.signed and bytes(opened.parts[0]) == b"hello, world"


def test_wrong_key_is_a_signature_mismatch() -> None:
    err = corrupted(small_record(SIGNING_KEY), b"another key")
    assert "signature mismatch" in str(err)


def test_unsigned_record_is_refused_when_a_key_is_set() -> None:
    err = corrupted(small_record(None), SIGNING_KEY)
    assert "not signed" in str(err)


def test_stripping_the_signature_is_refused() -> None:
    data = bytearray(small_record(SIGNING_KEY))
    data[5] = 0  # clear the signed flag...
    stripped = bytes(data[:-DIGEST_SIZE])  # ...and drop the HMAC
    corrupted(stripped, SIGNING_KEY)


def test_signed_record_read_without_a_key_still_verifies_the_checksum() -> None:
    data = small_record(SIGNING_KEY)
    assert open_record(data, KEY, None).signed
    damaged = bytearray(data)
    damaged[PREFIX_SIZE + 30] ^= 0x40  # inside the header
    corrupted(bytes(damaged))
    damaged = bytearray(data)
    damaged[-DIGEST_SIZE - 3] ^= 1  # payload/digest area, before the HMAC
    corrupted(bytes(damaged))


def test_manager_signing_key_and_env(monkeypatch: pytest.MonkeyPatch) -> None:
    store = ckpt.MemoryStore()
    ctx = ckpt.RunContext("r")
    monkeypatch.setenv("CKPT_SIGNING_KEY", "from-the-env")
    writer = ckpt.CheckpointManager(store)
    info = writer.save(ctx, "n", {"a": 1})
    assert info.signed
    assert ckpt.CheckpointManager(store, signing_key="from-the-env").load(ctx, "n") == {"a": 1}
    assert ckpt.CheckpointManager(store, signing_key=b"from-the-env").load(ctx, "n") == {"a": 1}
    with pytest.raises(ckpt.CheckpointCorrupted, match="signature mismatch") as err:
        ckpt.CheckpointManager(store, signing_key="other").load(ctx, "n")
    assert err.value.key == writer.key_for(ctx, "n")

    monkeypatch.delenv("CKPT_SIGNING_KEY")
    keyless = ckpt.CheckpointManager(store)
    assert keyless.load(ctx, "n") == {"a": 1}  # checksum still verified
    keyless.save(ctx, "plain", 1)
    with pytest.raises(ckpt.CheckpointCorrupted, match="not signed"):
        ckpt.CheckpointManager(store, signing_key="from-the-env").load(ctx, "plain")


def test_tampered_pickle_is_refused_before_decoding() -> None:
    store = ckpt.MemoryStore()
    ctx = ckpt.RunContext("r")
    mgr = ckpt.CheckpointManager(store, signing_key="k")
    mgr.save(ctx, "n", {1, 2})  # a set: pickle
    key = mgr.key_for(ctx, "n")
    # An attacker who can write the store but lacks the key re-signs nothing: rewrite the record
    # with a payload of their own (an unsigned record with a valid checksum).
    evil = ckpt.CheckpointManager(store)
    evil.save(ctx, "n", {3, 4})
    with pytest.raises(ckpt.CheckpointCorrupted, match="not signed"):
        mgr.load(ctx, "n")
    forged = Record(
        {"codec": "pickle", "ns": "default", "node": "n"}, [b"cos\nsystem\n."], b"guess"
    )
    store.put(key, forged.to_bytes())
    with pytest.raises(ckpt.CheckpointCorrupted, match="signature mismatch"):
        mgr.load(ctx, "n")


def test_empty_signing_key_is_refused() -> None:
    with pytest.raises(ValueError, match="empty"):
        ckpt.CheckpointManager(ckpt.MemoryStore(), signing_key="")

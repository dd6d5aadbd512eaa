"""Large local loads read each payload part once, straight into the buffer it is decoded from
(``Store.read_first`` + ``envelope.read_record``), and still verify everything first."""

from __future__ import annotations

import os
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

import ckpt_core as ckpt
from ckpt_core.envelope import READ_SLICE

MiB = 1 << 20
SIZE = 3 * READ_SLICE + 12345  # several slices, not a multiple of one


@pytest.fixture
def mgr(tmp_path: Path) -> ckpt.CheckpointManager:
    return ckpt.CheckpointManager(str(tmp_path / "store"), namespace="big")


CTX = ckpt.RunContext(run_id="r1", correlation_id="c1", attempt=1)


_BLOCK = os.urandom(MiB)


def _payload() -> bytes:
    return (_BLOCK * (SIZE // MiB + 1))[:SIZE]


def _record_path(mgr: ckpt.CheckpointManager, node: str) -> str:
    return str(Path(mgr.store.url.replace("file://", "")) / mgr.key_for(CTX, node))


def test_a_large_bytes_payload_round_trips_without_a_second_copy(
    mgr: ckpt.CheckpointManager,
) -> None:
    payload = _payload()
    mgr.save(CTX, "blob", payload)
    del payload
    tracemalloc.start()
    try:
        value = mgr.load(CTX, "blob")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert type(value) is bytes and len(value) == SIZE
    assert value == _payload()
    # One payload-sized allocation (the bytes returned), not a record buffer plus a copy.
    assert peak < SIZE * 1.1, f"peak {peak / MiB:.1f} MiB for a {SIZE / MiB:.1f} MiB payload"


def test_large_payloads_of_every_codec_path_round_trip_exactly(
    mgr: ckpt.CheckpointManager,
) -> None:
    payload = _payload()
    array = np.frombuffer(payload[: SIZE - SIZE % 64], dtype=np.float64).reshape(-1, 8)
    mgr.save(CTX, "bytes", payload)
    mgr.save(CTX, "bytearray", bytearray(payload))
    mgr.save(CTX, "numpy", array)
    assert mgr.load(CTX, "bytes") == payload
    loaded = mgr.load(CTX, "bytearray")
    assert type(loaded) is bytearray and loaded == payload
    back = mgr.load(CTX, "numpy")
    assert back.dtype == array.dtype and back.shape == array.shape
    assert back.tobytes() == array.tobytes() and back.flags.writeable


@pytest.mark.parametrize("where", ["header", "payload start", "payload middle", "trailer"])
def test_a_flipped_bit_in_a_large_record_is_corruption(
    mgr: ckpt.CheckpointManager, where: str
) -> None:
    mgr.save(CTX, "blob", _payload())
    path = _record_path(mgr, "blob")
    size = os.path.getsize(path)
    offset = {"header": 20, "payload start": 300, "payload middle": size // 2, "trailer": size - 5}
    with open(path, "r+b") as f:
        f.seek(offset[where])
        byte = f.read(1)
        f.seek(offset[where])
        f.write(bytes([byte[0] ^ 0x10]))
    with pytest.raises(ckpt.CheckpointCorrupted) as err:
        mgr.load(CTX, "blob")
    assert mgr.key_for(CTX, "blob") in str(err.value)


@pytest.mark.parametrize("cut", [1, 32, 5000, READ_SLICE + 7])
def test_a_truncated_large_record_is_corruption_not_a_short_value(
    mgr: ckpt.CheckpointManager, cut: int
) -> None:
    mgr.save(CTX, "blob", _payload())
    path = _record_path(mgr, "blob")
    os.truncate(path, os.path.getsize(path) - cut)
    with pytest.raises(ckpt.CheckpointCorrupted, match="corrupted"):
        mgr.load(CTX, "blob")


def test_a_large_record_is_checked_against_the_signing_key(tmp_path: Path) -> None:
    root = str(tmp_path / "signed")
    writer = ckpt.CheckpointManager(root, namespace="big", signing_key="right")
    writer.save(CTX, "blob", _payload())
    assert (
        ckpt.CheckpointManager(root, namespace="big", signing_key="right").load(CTX, "blob")
        == _payload()
    )
    with pytest.raises(ckpt.CheckpointCorrupted, match="signature mismatch"):
        ckpt.CheckpointManager(root, namespace="big", signing_key="wrong").load(CTX, "blob")
    unsigned = ckpt.CheckpointManager(str(tmp_path / "plain"), namespace="big")
    unsigned.save(CTX, "blob", _payload())
    with pytest.raises(ckpt.CheckpointCorrupted, match="not signed"):
        ckpt.CheckpointManager(str(tmp_path / "plain"), namespace="big", signing_key="k").load(
            CTX, "blob"
        )


def test_async_loads_take_the_same_path(mgr: ckpt.CheckpointManager) -> None:
    import asyncio

    payload = _payload()
    mgr.save(CTX, "blob", payload)
    assert asyncio.run(mgr.aload(CTX, "blob")) == payload


def test_a_large_version_1_record_still_loads(mgr: ckpt.CheckpointManager) -> None:
    """Records written before the BLAKE3 trailer (format version 1, sha256) take the streamed
    path too and load byte for byte; with one flipped payload bit they are corruption."""
    import hashlib

    mgr.save(CTX, "blob", _payload())
    path = _record_path(mgr, "blob")
    with open(path, "rb") as f:
        data = f.read()
    body = data[:4] + b"\x01" + data[5:-32]
    with open(path, "wb") as f:
        f.write(body + hashlib.sha256(body).digest())
    assert mgr.load(CTX, "blob") == _payload()
    with open(path, "r+b") as f:
        f.seek(len(body) // 2)
        byte = f.read(1)
        f.seek(len(body) // 2)
        f.write(bytes([byte[0] ^ 1]))
    with pytest.raises(ckpt.CheckpointCorrupted, match="checksum mismatch"):
        mgr.load(CTX, "blob")


def test_a_large_numpy_load_is_writable_memory_of_its_own(mgr: ckpt.CheckpointManager) -> None:
    array = np.arange(SIZE // 8, dtype=np.float64)
    mgr.save(CTX, "numpy", array)
    first, second = mgr.load(CTX, "numpy"), mgr.load(CTX, "numpy")
    assert first.flags.writeable and np.array_equal(first, array)
    first[:] = -1.0  # each load is its own memory
    assert np.array_equal(second, array)
    del first
    assert np.array_equal(second, array)


@pytest.mark.parametrize(
    "size",
    [0, 1, (64 << 10) - 200, (64 << 10) - 1, 64 << 10, (64 << 10) + 1, MiB - 100, MiB + 1],
)
def test_records_around_the_local_read_thresholds_round_trip(
    mgr: ckpt.CheckpointManager, size: int
) -> None:
    """A local lookup reads 64 KiB before it knows the file's size (one read for most records),
    then falls back to the size: records on either side of each threshold load exactly."""
    payload = _payload()[:size]
    mgr.save(CTX, "edge", payload)
    assert mgr.load(CTX, "edge") == payload


def test_a_directory_where_a_record_would_be_is_a_miss(mgr: ckpt.CheckpointManager) -> None:
    mgr.save(CTX, "kept", b"data")
    os.makedirs(_record_path(mgr, "kept").rsplit("/", 1)[0] + "/a-directory")
    with pytest.raises(ckpt.CheckpointNotFound):
        mgr.load(CTX, "a-directory")

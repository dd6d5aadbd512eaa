"""A full store fails the save with a typed, clear error and loses nothing.

- On a real small filesystem (a tmpfs mounted for the test): a large record that runs out of
  space mid-write, and a small one that fails creating its file or its directory (no inodes
  left). The save raises ``StoreUnavailable`` naming the key and saying what to free; no temp or
  partial file is left anywhere below the store (the tree is walked and the free space
  measured); every earlier record loads byte for byte; ``ckpt verify`` passes; once records are
  deleted, the same save succeeds. Without the right to mount, these tests skip and the
  ``RLIMIT_FSIZE`` test below still covers a failing write.
- ``RLIMIT_FSIZE`` (always run): a child process whose file-size limit makes ``write`` fail with
  ``EFBIG`` halfway through a record.
- Redis with ``maxmemory`` and ``noeviction``: saving fails with an out-of-memory
  ``StoreUnavailable``; a chunked record refused halfway leaves no chunk on the server; lookups,
  loads and deletes keep working while the server is full.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

import ckpt_core as ckpt
from ckpt_core.cli.app import app
from ckpt_core.serde.base import Buffer
from ckpt_core.stores import redis as redis_store_module
from ckpt_core.stores.redis import RedisStore

from .servers import RedisServer

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="tmpfs and rlimits are Linux's")

KiB = 1 << 10
MiB = 1 << 20
REPO = Path(__file__).resolve().parent.parent
CTX = ckpt.RunContext(run_id="r-1", correlation_id="full-disk")


def value(seed: int, size: int) -> bytes:
    return random.Random(seed).randbytes(size)


def files_below(root: Path) -> list[str]:
    """Every file below ``root`` (relative paths, sorted): records, and anything left behind."""
    return sorted(str(Path(d, f).relative_to(root)) for d, _, names in os.walk(root) for f in names)


def free_bytes(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def verify(url: str) -> dict[str, Any]:
    """``ckpt verify URL --json``; exit code 0 means every record's checksum matched."""
    result = CliRunner().invoke(app, ["verify", url, "--json"], env={"CKPT_SIGNING_KEY": ""})
    assert result.exit_code == 0, result.output
    report: dict[str, Any] = json.loads(result.output)
    return report


def record_paths(mgr: ckpt.CheckpointManager, nodes: Any) -> list[str]:
    return sorted("store/" + mgr.key_for(CTX, node) for node in nodes)


@contextlib.contextmanager
def tmpfs(path: Path, size: str, nr_inodes: int | None = None) -> Iterator[Path]:
    """A fresh tmpfs of ``size`` mounted at ``path`` for the duration (always unmounted)."""
    if shutil.which("mount") is None or os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root; test_rlimit_fsize covers a failing write")
    path.mkdir()
    options = f"size={size}" + (f",nr_inodes={nr_inodes}" if nr_inodes else "")
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "ckpt-full-disk", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({mounted.stderr.strip()}); see test_rlimit_fsize")
    try:
        yield path
    finally:
        if subprocess.run(["umount", str(path)], check=False).returncode != 0:
            subprocess.run(["umount", "-l", str(path)], check=False)


class CountingPayload:
    """A record handed to the store in 256 KiB pieces, counting how many it took: a write that
    fails after taking some of them failed mid-write, not when creating its file."""

    def __init__(self, data: bytes, piece: int = 256 * KiB) -> None:
        self.data = data
        self.size = len(data)
        self.piece = piece
        self.taken = 0

    def __iter__(self) -> Iterator[Buffer]:
        for start in range(0, self.size, self.piece):
            self.taken += 1
            yield memoryview(self.data)[start : start + self.piece]


# -- local files on a full tmpfs -----------------------------------------------------------------


def test_a_large_record_running_out_of_space_mid_write_leaves_nothing(tmp_path: Path) -> None:
    with tmpfs(tmp_path / "mnt", "4m") as mnt:
        url = str(mnt / "store")
        mgr = ckpt.CheckpointManager(url, namespace="disk")
        saved: dict[str, bytes] = {}
        while free_bytes(mnt) > 1536 * KiB:
            node = f"n{len(saved)}"
            saved[node] = value(len(saved), 256 * KiB)
            mgr.save(CTX, node, saved[node])

        # A 3 MiB record through the manager: the envelope streams it into the temp file.
        big = value(99, 3 * MiB)
        before = free_bytes(mnt)
        with pytest.raises(ckpt.StoreUnavailable) as full:
            mgr.save(CTX, "big", big)
        message = str(full.value)
        assert type(full.value) is ckpt.StoreUnavailable
        assert repr(mgr.key_for(CTX, "big")) in message and url in message
        assert "No space left on device" in message and "Free space" in message
        assert "nothing partial was left" in message
        assert free_bytes(mnt) >= before - 16 * KiB, "the partial temp file still holds space"

        # The same through the store, fed piece by piece: it fails after taking some pieces.
        payload = CountingPayload(big)
        with pytest.raises(ckpt.StoreUnavailable, match="No space left on device"):
            mgr.store.put("disk/raw/big", payload)
        assert 1 < payload.taken < len(range(0, len(big), payload.piece)), payload.taken

        assert files_below(mnt) == record_paths(mgr, saved), "a temp or partial file was left"
        for node, data in saved.items():
            assert mgr.load(CTX, node) == data
        report = verify(url)
        assert report["checked"] == report["ok"] == len(saved) and report["bad"] == []

        while free_bytes(mnt) < len(big) + 256 * KiB:
            node = next(iter(saved))
            mgr.store.delete(mgr.key_for(CTX, node))
            del saved[node]
        mgr.save(CTX, "big", big)
        assert mgr.load(CTX, "big") == big
        assert files_below(mnt) == record_paths(mgr, [*saved, "big"])


def test_a_small_record_fails_creating_its_file_or_directory_without_inodes(
    tmp_path: Path,
) -> None:
    with tmpfs(tmp_path / "mnt", "4m", nr_inodes=40) as mnt:
        url = str(mnt / "store")
        mgr = ckpt.CheckpointManager(url, namespace="disk")
        saved: dict[str, bytes] = {}
        with pytest.raises(ckpt.StoreUnavailable) as at_create:
            for i in range(100):
                node = f"small-{i}"
                data = value(i, 100)
                mgr.save(CTX, node, data)
                saved[node] = data
        failed = f"small-{len(saved)}"
        message = str(at_create.value)
        assert repr(mgr.key_for(CTX, failed)) in message
        assert "No space left on device" in message and "no free inodes" in message
        assert mgr.lookup(CTX, failed) is None

        # A new correlation needs a new directory: that fails first, and creates nothing.
        other = ckpt.RunContext(run_id="r-2", correlation_id="another-job")
        with pytest.raises(ckpt.StoreUnavailable, match="No space left on device") as at_mkdir:
            mgr.save(other, "first", b"x")
        assert repr(mgr.key_for(other, "first")) in str(at_mkdir.value)
        assert not (mnt / "store" / "disk" / "corr" / "another-job").exists()

        assert files_below(mnt) == record_paths(mgr, saved), "a temp or partial file was left"
        for node, data in saved.items():
            assert mgr.load(CTX, node) == data
        assert verify(url)["ok"] == len(saved)

        for node in list(saved)[:3]:
            mgr.store.delete(mgr.key_for(CTX, node))
            del saved[node]
        mgr.save(CTX, failed, b"now it fits")
        mgr.save(other, "first", b"x")
        assert mgr.load(CTX, failed) == b"now it fits" and mgr.load(other, "first") == b"x"


# -- RLIMIT_FSIZE: a write refused with EFBIG, on any machine ------------------------------------

_RLIMIT_CHILD = textwrap.dedent(
    """
    import json, random, resource, signal, sys
    import ckpt_core as ckpt

    # Without this, exceeding the limit kills the process instead of failing the write.
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    limit = int(sys.argv[2])
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    mgr = ckpt.CheckpointManager(sys.argv[1], namespace="disk")
    ctx = ckpt.RunContext(run_id="r-1", correlation_id="full-disk")

    def value(seed, size):
        return random.Random(seed).randbytes(size)

    for i in range(3):
        mgr.save(ctx, f"n{i}", value(i, 300_000))
    try:
        mgr.save(ctx, "big", value(99, 3 << 20))
        error = None
    except Exception as exc:
        error = [type(exc).__name__, str(exc)]
    mgr.save(ctx, "after", value(7, 50_000))  # a record within the limit still saves
    print(json.dumps({"error": error}))
    """
)


def test_rlimit_fsize_fails_the_write_midway_and_leaves_nothing(tmp_path: Path) -> None:
    url = str(tmp_path / "store")
    child = subprocess.run(
        [sys.executable, "-c", _RLIMIT_CHILD, url, str(MiB)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert child.returncode == 0, child.stderr
    error = json.loads(child.stdout.strip().splitlines()[-1])["error"]
    mgr = ckpt.CheckpointManager(url, namespace="disk")
    assert error is not None, "a 3 MiB write under a 1 MiB file-size limit succeeded"
    kind, message = error
    assert kind == "StoreUnavailable", message
    assert repr(mgr.key_for(CTX, "big")) in message and "File too large" in message
    assert "ulimit -f" in message and "nothing partial was left" in message

    saved = {f"n{i}": value(i, 300_000) for i in range(3)} | {"after": value(7, 50_000)}
    assert files_below(tmp_path) == record_paths(mgr, saved), "a temp or partial file was left"
    for node, data in saved.items():
        assert mgr.load(CTX, node) == data
    assert verify(url)["ok"] == len(saved)
    big = value(99, 3 * MiB)
    mgr.save(CTX, "big", big)  # no limit here
    assert mgr.load(CTX, "big") == big


# -- Redis out of memory -------------------------------------------------------------------------


def chunk_keys(client: Any) -> list[bytes]:
    return [k for k in client.scan_iter(count=1000) if b"\x00" in k]


def test_redis_out_of_memory_refuses_the_save_and_keeps_everything_else(
    redis_server_factory: Callable[..., RedisServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Chunks go out one by one, so a chunked save can be refused after some were staged (Redis
    # counts a pipeline waiting in its input buffer as used memory).
    monkeypatch.setattr(redis_store_module, "PIPELINE_BYTES", 64 * KiB)
    server = redis_server_factory(maxmemory="4mb", maxmemory_policy="noeviction")
    client = server.client()
    store = RedisStore(server.url, chunk_size=64 * KiB)
    mgr = ckpt.CheckpointManager(store, namespace="oom")
    saved: dict[str, bytes] = {}
    with pytest.raises(ckpt.StoreUnavailable) as full:
        for i in range(500):
            node, data = f"n{i}", value(i, 50 * KiB)
            mgr.save(CTX, node, data)
            saved[node] = data
    message = str(full.value)
    assert type(full.value) is ckpt.StoreUnavailable
    assert repr(mgr.key_for(CTX, f"n{len(saved)}")) in message
    assert f"127.0.0.1:{server.port}" in message and "out of memory" in message
    assert "maxmemory" in message and "delete old checkpoints" in message
    assert len(saved) > 20

    # Room for a few chunks only: a 1 MiB record is refused after some of its chunks landed.
    for node in list(saved)[:8]:
        store.delete(mgr.key_for(CTX, node))  # works while the server is full
        del saved[node]
    sets_before = client.info("commandstats")["cmdstat_set"]["calls"]
    big = value(99, MiB)
    with pytest.raises(ckpt.StoreUnavailable, match="out of memory") as refused:
        mgr.save(CTX, "big", big)
    assert repr(mgr.key_for(CTX, "big")) in str(refused.value)
    staged = client.info("commandstats")["cmdstat_set"]["calls"] - sets_before
    assert 0 < staged < MiB // (64 * KiB), f"{staged} chunks were staged before the refusal"
    assert chunk_keys(client) == [], "the refused save left chunks behind"
    assert mgr.lookup(CTX, "big") is None

    # Everything saved before is there, byte for byte, while the server is still full.
    assert sorted(i.node for i in mgr.list(CTX)) == sorted(saved)
    for node, data in saved.items():
        assert mgr.lookup(CTX, node) is not None
        assert mgr.load(CTX, node) == data
    report = verify(server.url)
    assert report["checked"] == report["ok"] == len(saved)

    for node in list(saved)[: len(saved) // 2]:
        store.delete(mgr.key_for(CTX, node))
        del saved[node]
    mgr.save(CTX, "big", big)
    assert mgr.load(CTX, "big") == big
    assert sorted(i.node for i in mgr.list(CTX)) == sorted([*saved, "big"])
    store.close()

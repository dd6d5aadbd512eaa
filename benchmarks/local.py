"""Scenarios 1 and 2: the local store against raw file IO with the same fsync policy.

- 1 KiB JSON record: ``save``/``load`` vs ``json.dumps`` + temp file + fsync + rename + directory
  fsync, and a plain read + ``json.loads``.
- 1 GiB ``bytes`` and a 1 GiB numpy array (64 MiB with ``--quick``): throughput vs a raw streamed
  write (1 MiB slices, same fsync + rename) and read, each measured in a fresh child process that
  also reports its peak RSS growth (``ru_maxrss``) in multiples of the payload.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path
from typing import Any

from ._harness import Config, Row, clock, interleave, row_from_times, timed_each

RECORD: dict[str, Any] = {
    "rows": [{"id": k, "name": f"item-{k:04d}", "score": k * 0.5} for k in range(24)]
}  # ~1 KiB of JSON


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def raw_write(path: str, chunks: Any) -> None:
    """The reference writer: temp file in the same directory, fsync, rename, fsync directory."""
    directory = os.path.dirname(path)
    tmp = os.path.join(directory, f".{os.path.basename(path)}.{uuid.uuid4().hex[:8]}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        for chunk in chunks:
            view = memoryview(chunk)
            while view:
                view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    _fsync_dir(directory)


def small(cfg: Config, root: Path) -> list[Row]:
    import ckpt_core as ckpt

    n = cfg.pick(200, 30)
    mgr = ckpt.CheckpointManager(str(root / "ckpt"), namespace="bench")
    ctx = ckpt.RunContext(run_id="r1", correlation_id="c1", attempt=1)
    raw_dir = root / "raw" / "c1"
    raw_dir.mkdir(parents=True)
    nodes = [f"node-{i}" for i in range(n)]
    paths = [str(raw_dir / name) for name in nodes]

    ckpt_save = timed_each(lambda node: mgr.save(ctx, node, RECORD), nodes)

    raw_save = timed_each(lambda path: raw_write(path, [json.dumps(RECORD).encode()]), paths)

    ckpt_load = timed_each(lambda node: mgr.load(ctx, node), nodes)

    def read_json(path: str) -> object:
        with open(path, "rb") as f:
            return json.loads(f.read())

    raw_load = timed_each(read_json, paths)

    ckpt_save()
    if mgr.load(ctx, "node-0") != RECORD:  # measure the real thing, not a miss path
        raise RuntimeError("ckpt returned a different record than it saved")
    size = len(json.dumps(RECORD))
    rows = [
        row_from_times(
            f"local 1 KiB JSON save ({size} B, fsync)",
            *interleave(ckpt_save, raw_save, cfg.reps),
            "<= 1.3",
            per=n,
        )
    ]
    rows.append(
        row_from_times(
            "local 1 KiB JSON load", *interleave(ckpt_load, raw_load, cfg.reps), "<= 1.5", per=n
        )
    )
    return rows


# -- large payloads, one child process per measurement ----------------------------------------
def _maxrss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def _payload(kind: str, size: int) -> Any:
    if kind == "bytes":
        return b"\x5a" * size  # touches every page, unlike bytes(size)
    import numpy as np

    return np.full(size // 8, 1.5, dtype=np.float64)


def child(kind: str, op: str, impl: str, size: int, directory: str) -> dict[str, float]:
    """One measurement in a fresh process: seconds of the operation, and peak RSS growth from
    before the payload existed (so both a save and a load count the payload once)."""
    import ckpt_core as ckpt

    if kind == "numpy":
        import numpy as np
    mgr = ckpt.CheckpointManager(directory, namespace="bench")
    ctx = ckpt.RunContext(run_id="r1", correlation_id="big", attempt=1)
    path = os.path.join(directory, f"raw-{kind}")
    before = _maxrss()
    if op == "save":
        value = _payload(kind, size)
        t = clock()
        if impl == "ckpt":
            mgr.save(ctx, kind, value)
        else:
            view = memoryview(value).cast("B") if kind == "numpy" else memoryview(value)
            raw_write(path, (view[i : i + (1 << 20)] for i in range(0, len(view), 1 << 20)))
        seconds = clock() - t
    else:
        t = clock()
        if impl == "ckpt":
            value = mgr.load(ctx, kind)
        elif kind == "bytes":
            with open(path, "rb") as f:
                value = f.read()
        else:
            value = np.empty(size // 8, dtype=np.float64)
            view = memoryview(value).cast("B")
            with open(path, "rb", buffering=0) as f:
                filled = 0
                while filled < len(view):
                    filled += f.readinto(view[filled : filled + (1 << 20)])
        seconds = clock() - t
        assert len(value) == (size if kind == "bytes" else size // 8)
    return {"seconds": seconds, "rss_growth": (_maxrss() - before) / size}


def _run_child(kind: str, op: str, impl: str, size: int, directory: str) -> dict[str, float]:
    code = (
        "import json, sys; from benchmarks.local import child; "
        "print(json.dumps(child(*sys.argv[1:4], int(sys.argv[4]), sys.argv[5])))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, kind, op, impl, str(size), directory],
        check=True,
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parent.parent,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def large(cfg: Config, root: Path) -> list[Row]:
    size = cfg.pick(1 << 30, 64 << 20)
    label = "1 GiB" if size == 1 << 30 else f"{size >> 20} MiB"
    # Five at least: the reference numpy load swings 0.4-1.6 s between runs (np.empty asks for
    # huge pages, and the kernel compacts memory for them when it is fragmented).
    reps = max(5, cfg.reps) if not cfg.quick else 2
    rows: list[Row] = []
    for kind in ("bytes", "numpy"):
        dirs = {impl: str(root / f"big-{impl}") for impl in ("ckpt", "raw")}
        for d in dirs.values():
            os.makedirs(d, exist_ok=True)
        res: dict[tuple[str, str], list[dict[str, float]]] = {}
        for i in range(reps):
            order = ("ckpt", "raw") if i % 2 == 0 else ("raw", "ckpt")
            for op in ("save", "load"):
                for impl in order:
                    res.setdefault((op, impl), []).append(
                        _run_child(kind, op, impl, size, dirs[impl])
                    )
        for op in ("save", "load"):
            mine = [r["seconds"] for r in res[(op, "ckpt")]]
            theirs = [r["seconds"] for r in res[(op, "raw")]]
            rows.append(
                row_from_times(
                    f"local {label} {kind} {op} throughput",
                    mine,
                    theirs,
                    ">= 0.9",
                    throughput_bytes=size,
                )
            )
            rss_mine = sorted(r["rss_growth"] for r in res[(op, "ckpt")])
            rss_ref = sorted(r["rss_growth"] for r in res[(op, "raw")])
            med_m, med_r = rss_mine[len(rss_mine) // 2], rss_ref[len(rss_ref) // 2]
            rows.append(
                Row(
                    f"local {label} {kind} {op} peak RSS growth",
                    med_m,
                    med_r,
                    med_m / med_r if med_r else None,
                    "ckpt <= 1.1x",
                    med_m <= 1.1,
                    "x payload",
                    (rss_mine[0], rss_mine[-1]),
                    len(rss_mine),
                    note="target on ckpt's own growth; reference shown for scale",
                )
            )
        for d in dirs.values():
            shutil.rmtree(d, ignore_errors=True)
    return rows


def run(cfg: Config) -> list[Row]:
    root = Path(tempfile.mkdtemp(prefix="ckpt-bench-local-", dir=cfg.workdir))
    try:
        return small(cfg, root) + large(cfg, root)
    finally:
        shutil.rmtree(root, ignore_errors=True)

"""Scenario 8: scaling curves.

- Records per correlation, 1k / 10k / 100k (1k / 10k with ``--quick``), local and Redis: time to
  save them one by one, ``list`` the correlation and ``cleanup_correlation``, against raw files
  (``os.scandir``, ``shutil.rmtree``) and raw redis-py (``SET``, ``SCAN``, ``UNLINK``). The
  finding is the per-record cost at the largest count over the smallest, for ckpt and for the
  reference: a ratio of those growths near 1 means ckpt adds nothing worse than linear. Local runs
  use ``fsync=False`` on both sides (fsync is a constant per record and would only slow the run).
- Throughput of the local store (fsync on) from 1 KiB to 1 GiB payloads (64 MiB with ``--quick``)
  against the raw writer and reader of :mod:`benchmarks.local`.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ._harness import Config, Row, clock, interleave, row_from_times, value_row
from .local import raw_write
from .redis import URL as REDIS_URL

Ops = dict[str, Callable[[int, str], float]]


def _ckpt_ops(mgr: Any, payload: bytes) -> Ops:
    """The ckpt side of every curve: ``n`` saves into one correlation, one list, one cleanup."""
    import ckpt_core as ckpt

    def ctx(corr: str) -> Any:
        return ckpt.RunContext(run_id="r", correlation_id=corr, attempt=1)

    def save(n: int, corr: str) -> float:
        c = ctx(corr)
        t = clock()
        for i in range(n):
            mgr.save(c, f"n{i}", payload)
        return clock() - t

    def list_(n: int, corr: str) -> float:
        t = clock()
        found = mgr.list(ctx(corr))
        seconds = clock() - t
        assert len(found) == n, (len(found), n)
        return seconds

    def cleanup(n: int, corr: str) -> float:
        t = clock()
        mgr.cleanup_correlation(corr)
        return clock() - t

    return {"save": save, "list": list_, "cleanup": cleanup}


def _local_sides(root: Path) -> tuple[Ops, Ops, Callable[[], None]]:
    import ckpt_core as ckpt

    mgr = ckpt.CheckpointManager(ckpt.FsspecStore(str(root / "ckpt"), fsync=False), "bench")
    raw = root / "raw"
    raw.mkdir()
    payload = b'{"v": 1}'

    def r_save(n: int, corr: str) -> float:
        d = raw / corr
        t = clock()
        d.mkdir()
        for i in range(n):
            path = os.path.join(d, f"n{i}")
            tmp = path + ".tmp"
            with open(tmp, "wb") as f:
                f.write(payload)
            os.replace(tmp, path)
        return clock() - t

    def r_list(n: int, corr: str) -> float:
        t = clock()
        found = [(e.name, e.stat().st_size) for e in os.scandir(raw / corr)]
        seconds = clock() - t
        assert len(found) == n
        return seconds

    def r_clean(n: int, corr: str) -> float:
        t = clock()
        shutil.rmtree(raw / corr)
        return clock() - t

    return (
        _ckpt_ops(mgr, payload),
        {"save": r_save, "list": r_list, "cleanup": r_clean},
        lambda: None,
    )


def _redis_sides() -> tuple[Ops, Ops, Callable[[], None]]:
    import redis

    import ckpt_core as ckpt
    from ckpt_core.stores.redis import RedisStore

    prefix = f"ckptbench-{uuid.uuid4().hex[:8]}"
    store = RedisStore(REDIS_URL, prefix=prefix)
    client = redis.Redis(connection_pool=store._pool)
    client.ping()
    mgr = ckpt.CheckpointManager(store, "bench")
    payload = b'{"v": 1}'

    def r_save(n: int, corr: str) -> float:
        t = clock()
        for i in range(n):
            client.set(f"{prefix}-raw:{corr}:n{i}", payload)
        return clock() - t

    def r_list(n: int, corr: str) -> float:
        t = clock()
        found = list(client.scan_iter(match=f"{prefix}-raw:{corr}:*", count=1000))
        seconds = clock() - t
        assert len(found) == n
        return seconds

    def r_clean(n: int, corr: str) -> float:
        t = clock()
        batch: list[bytes] = []
        for key in client.scan_iter(match=f"{prefix}-raw:{corr}:*", count=1000):
            batch.append(key)
            if len(batch) == 1000:
                client.unlink(*batch)
                batch = []
        if batch:
            client.unlink(*batch)
        return clock() - t

    def close() -> None:
        for key in client.scan_iter(match=f"{prefix}*", count=1000):
            client.delete(key)
        store.close()

    return (
        _ckpt_ops(mgr, payload),
        {"save": r_save, "list": r_list, "cleanup": r_clean},
        close,
    )


def records(cfg: Config, backend: str, root: Path) -> list[Row]:
    counts = cfg.pick([1_000, 10_000, 100_000], [1_000, 10_000])
    mine_ops, ref_ops, close = _local_sides(root) if backend == "local" else _redis_sides()
    per: dict[str, dict[str, list[tuple[int, float, float]]]] = {}
    try:
        for n in counts:
            reps = 3 if n <= 1_000 else (2 if n <= 10_000 else 1)
            if cfg.quick:
                reps = 2 if n <= 1_000 else 1
            times: dict[tuple[str, str], list[float]] = {}
            for i in range(reps):
                for side in ("ckpt", "ref") if i % 2 == 0 else ("ref", "ckpt"):
                    ops = mine_ops if side == "ckpt" else ref_ops
                    corr = f"{side}-{n}-{i}"
                    for op in ("save", "list", "cleanup"):
                        times.setdefault((op, side), []).append(ops[op](n, corr))
            for op in ("save", "list", "cleanup"):
                mine = sorted(times[(op, "ckpt")])[len(times[(op, "ckpt")]) // 2] / n
                ref = sorted(times[(op, "ref")])[len(times[(op, "ref")]) // 2] / n
                per.setdefault(op, {}).setdefault("points", []).append((n, mine, ref))
    finally:
        close()
    rows = []
    lo, hi = counts[0], counts[-1]
    for op, data in per.items():
        points = data["points"]
        (_, m_lo, r_lo), (_, m_hi, r_hi) = points[0], points[-1]
        # The target is on ckpt's own growth (flat = no worse than linear); the reference's
        # growth is shown beside it, so a filesystem or server that slows down for everyone
        # is visible as such.
        growth = m_hi / m_lo
        row = value_row(
            f"scaling {backend} {op}: per-record cost growth {lo // 1000}k -> {hi // 1000}k",
            growth,
            r_hi / r_lo,
            "ckpt <= 1.5x",
            unit="x",
            reps=1,
            note=f"at {hi // 1000}k: ckpt {m_hi * 1e6:.1f} us/record, raw {r_hi * 1e6:.1f} us",
            curve=[{"n": n, "ckpt_s_per_record": m, "ref_s_per_record": r} for n, m, r in points],
            backend=backend,
            op=op,
        )
        row.met = growth <= 1.5
        rows.append(row)
    return rows


def _one_size(mgr: Any, ctx: Any, path: str, size: int) -> list[Row]:
    payload = b"\x5a" * size
    # enough operations per timing that each lasts tens of milliseconds at least
    k = max(1, min(50, (32 << 20) // size))

    def c_save() -> float:
        t = clock()
        for _ in range(k):
            mgr.save(ctx, "blob", payload)
        return clock() - t

    def r_save() -> float:
        t = clock()
        for _ in range(k):
            view = memoryview(payload)
            raw_write(path, (view[i : i + (1 << 20)] for i in range(0, size, 1 << 20)))
        return clock() - t

    def c_load() -> float:
        t = clock()
        for _ in range(k):
            mgr.load(ctx, "blob")
        return clock() - t

    def r_load() -> float:
        t = clock()
        for _ in range(k):
            with open(path, "rb") as f:
                f.read()
        return clock() - t

    reps = 3 if size < (256 << 20) else 2
    if size >= 1 << 30:
        label = f"{size >> 30} GiB"
    else:
        label = f"{size >> 20} MiB" if size >= 1 << 20 else f"{size >> 10} KiB"
    rows = []
    for op, pair in (("save", (c_save, r_save)), ("load", (c_load, r_load))):
        rows.append(
            row_from_times(
                f"throughput local {op} {label}",
                *interleave(*pair, reps, warmup=1),
                "report",
                throughput_bytes=size * k,
                size=size,
                op=op,
            )
        )
    return rows


def throughput(cfg: Config, root: Path) -> list[Row]:
    import ckpt_core as ckpt

    sizes = [1 << 10, 64 << 10, 1 << 20, 16 << 20, 256 << 20, 1 << 30]
    if cfg.quick:
        sizes = [1 << 10, 1 << 20, 64 << 20]
    mgr = ckpt.CheckpointManager(str(root / "tp-ckpt"), namespace="bench")
    ctx = ckpt.RunContext(run_id="r", correlation_id="tp", attempt=1)
    raw_dir = root / "tp-raw"
    raw_dir.mkdir()
    rows: list[Row] = []
    for size in sizes:
        rows += _one_size(mgr, ctx, str(raw_dir / "blob"), size)
    shutil.rmtree(root / "tp-ckpt", ignore_errors=True)
    return rows


def run(cfg: Config) -> list[Row]:
    root = Path(tempfile.mkdtemp(prefix="ckpt-bench-scaling-", dir=cfg.workdir))
    rows: list[Row] = []
    try:
        rows += records(cfg, "local", root)
        try:
            rows += records(cfg, "redis", root)
        except Exception as exc:  # Redis down: say so, keep the other rows
            from ._harness import not_run

            rows.append(not_run("scaling redis", "ckpt <= 1.5x", f"{type(exc).__name__}: {exc}"))
        rows += throughput(cfg, root)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return rows

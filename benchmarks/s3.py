"""Scenario 4: S3 (a local SeaweedFS, started with :mod:`tests.servers`) against raw s3fs.

- 1 KiB JSON record: ``save``/``load`` vs ``fs.pipe``/``fs.cat`` of ``json.dumps`` bytes.
- Resume check, "which of 1,000 nodes are done": one ``mgr.list`` (a prefix listing) vs 1,000
  raw ``fs.exists`` calls, which is what a per-task existence check costs.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import uuid
from pathlib import Path

from ._harness import Config, Row, clock, interleave, not_run, row_from_times, timed_each
from .local import RECORD


def run(cfg: Config) -> list[Row]:
    try:
        from tests.servers import start_seaweed
    except ImportError as exc:
        return [not_run("s3 (all scenarios)", "-", f"tests.servers not importable: {exc}")]
    import ckpt_core as ckpt

    directory = Path(tempfile.mkdtemp(prefix="ckpt-bench-s3-", dir=cfg.workdir))
    try:
        server = start_seaweed(directory / "weed")
    except BaseException as exc:  # tests.servers skips/fails through pytest outside CI
        shutil.rmtree(directory, ignore_errors=True)
        return [not_run("s3 (all scenarios)", "-", f"SeaweedFS did not start: {exc}")]
    try:
        prefix = f"bench-{uuid.uuid4().hex[:8]}"
        store = ckpt.open_store(f"s3://{server.bucket}/{prefix}/ckpt", **server.storage_options())
        fs = server.filesystem()
        raw_root = f"{server.bucket}/{prefix}/raw"
        mgr = ckpt.CheckpointManager(store, namespace="bench")
        ctx = ckpt.RunContext(run_id="r1", correlation_id="c1", attempt=1)
        n = cfg.pick(100, 20)
        nodes = [f"node-{i}" for i in range(n)]
        paths = [f"{raw_root}/c1/{name}" for name in nodes]

        ckpt_save = timed_each(lambda node: mgr.save(ctx, node, RECORD), nodes)

        raw_save = timed_each(lambda path: fs.pipe(path, json.dumps(RECORD).encode()), paths)

        ckpt_load = timed_each(lambda node: mgr.load(ctx, node), nodes)

        raw_load = timed_each(lambda path: json.loads(fs.cat(path)), paths)

        rows = [
            row_from_times(
                "s3 1 KiB JSON save", *interleave(ckpt_save, raw_save, cfg.reps), "<= 1.3", per=n
            ),
            row_from_times(
                "s3 1 KiB JSON load", *interleave(ckpt_load, raw_load, cfg.reps), "<= 1.3", per=n
            ),
        ]

        total = cfg.pick(1000, 100)
        done = total - 1  # the last node failed: the resume must find the others
        many = [f"step-{i}" for i in range(total)]
        rctx = ckpt.RunContext(run_id="r2", correlation_id="resume", attempt=2)
        for node in many[:done]:
            mgr.save(rctx, node, {"i": node})
            fs.pipe(f"{raw_root}/resume/{node}", b"{}")

        def ckpt_which() -> float:
            t = clock()
            found = {info.node for info in mgr.list(rctx)}
            seconds = clock() - t
            assert len(found) == done
            return seconds

        def raw_which() -> float:
            t = clock()
            found = [node for node in many if fs.exists(f"{raw_root}/resume/{node}")]
            seconds = clock() - t
            assert len(found) == done
            return seconds

        rows.append(
            row_from_times(
                f"s3 which of {total:,} nodes are done (list vs exists)",
                *interleave(ckpt_which, raw_which, max(3, cfg.reps - 2)),
                "report",
            )
        )
        return rows
    finally:
        server.stop()
        shutil.rmtree(directory, ignore_errors=True)

"""Concurrency, fast tier: worker processes mixing saves, loads, deletes, lookups and lists on
the same 16 nodes of one correlation, on local files, S3 (SeaweedFS) and Redis, with values from
32 bytes to 2 MiB (chunked on Redis above 256 KiB, multipart on S3 above 1 MiB).

The harness is :mod:`faults.concurrency` (``make faults`` runs 8 processes x 1,000 operations per
backend); here 4 x 150. Every load returns a whole value some worker wrote for that node, or
``CheckpointNotFound``; no operation raises anything else; afterwards the store lists only records
and holds no debris.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

import ckpt_core as ckpt
from faults.concurrency import (
    NODES,
    S3_MULTIPART_THRESHOLD,
    _adrive,
    _drive,
    _Tally,
    check_value,
    run_concurrency_scenario,
    tuned,
    value_for,
    worker_plan,
)
from faults.crash import Backend

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX select on pipes")

PROCESSES = 4
OPS = 150


@pytest.mark.parametrize("kind", ["local", "s3", "redis"])
def test_processes_mixing_saves_loads_and_deletes_never_see_a_torn_value(
    kind: str, fault_backend: Callable[[str], Backend], tmp_path: Path
) -> None:
    backend = fault_backend(kind)
    result = run_concurrency_scenario(
        backend, processes=PROCESSES, ops=OPS, seed=11, workdir=tmp_path / "work"
    )
    print(result.detail())

    assert result.failures == [], "\n".join(result.failures[:20])
    assert result.iterations == PROCESSES * OPS
    loads = result.records_checked - result.final_checked + result.misses
    done = result.saves + loads + result.deletes + result.lookups + result.lists + result.cleanups
    assert done == PROCESSES * OPS  # every operation succeeded (failures would be missing)
    # The mix really happened: loads were verified, deletes made misses, big values went by,
    # and whole-correlation deletes raced the saves (a save must land, not fail, when they do).
    assert result.records_checked > PROCESSES * OPS // 10
    assert result.deletes > 0 and result.misses > 0 and result.lookups > 0 and result.lists > 0
    assert result.cleanups > 0
    assert result.saves > PROCESSES * OPS // 4
    assert result.bytes_saved > 20 * S3_MULTIPART_THRESHOLD


def test_the_checker_catches_torn_mixed_and_misfiled_values() -> None:
    good = value_for(writer=2, sequence=5, node=3, size=300_000)
    other = value_for(writer=1, sequence=9, node=3, size=300_000)
    assert check_value(3, good, processes=4) is None
    assert check_value(3, bytearray(good), processes=4) is None
    spliced = good[: len(good) // 2] + other[len(good) // 2 :]
    assert "torn" in (check_value(3, spliced, processes=4) or "")
    assert "torn" in (check_value(3, good[:-1], processes=4) or "")
    assert f"holds a value of {NODES[3]}" in (check_value(4, good, processes=4) or "")
    assert "only 2 workers" in (check_value(3, good, processes=2) or "")
    assert "not bytes" in (check_value(3, {"a": 1}, processes=4) or "")


def test_the_scenario_sets_the_thresholds_that_exercise_chunks_and_multipart() -> None:
    s3 = tuned(Backend("s3", "s3://b/p", {"multipart_threshold": 6 << 20, "key": "k"}))
    assert s3.options == {"multipart_threshold": S3_MULTIPART_THRESHOLD, "key": "k"}
    assert tuned(Backend("redis", "redis://h", {"prefix": "x"})).options["chunk_size"] < 1 << 20
    assert tuned(Backend("local", "/tmp/x")).options == {}


@pytest.mark.parametrize("flavour", ["sync", "async"])
def test_one_worker_plan_runs_through_both_drivers_and_flags_a_misfiled_record(
    flavour: str,
) -> None:
    """The worker's checks are real: a record of one node stored under another node's key is
    reported (the envelope is valid, so only the self-checking value can tell)."""
    store = ckpt.MemoryStore()
    mgr = ckpt.CheckpointManager(store, "concurrency")
    tally = _Tally()
    plan = worker_plan(index=0, ops=300, seed=3, processes=1, tally=tally)
    if flavour == "async":
        asyncio.run(_adrive(mgr, plan))
    else:
        _drive(mgr, plan)
    assert tally.failures == [] and tally.failed == 0
    assert tally.counts["loads_verified"] > 0 and tally.counts["deletes"] > 0

    ctx = ckpt.RunContext(run_id="w", correlation_id="concurrency-job")
    for node in NODES:
        mgr.save(ctx, node, value_for(writer=0, sequence=1, node=0, size=64))  # all "node-00"
    tally = _Tally()
    _drive(mgr, worker_plan(index=0, ops=60, seed=4, processes=1, tally=tally))
    assert tally.failed > 0
    assert any(f"holds a value of {NODES[0]}" in message for message in tally.failures)

"""Crash consistency, fast tier: writer processes SIGKILLed at random moments while saving small
and multi-MiB records over the same nodes, on local files, S3 (SeaweedFS) and Redis.

The harness is :mod:`faults.crash` (``make faults`` runs it with 200+ kills per backend); here a
couple of dozen kills per backend. After every kill every node loads as the exact value of the
last acknowledged save or of the save the kill interrupted, or is missing because no save of it
was ever acknowledged; nothing else (no ``CheckpointCorrupted``, no wrong or stale bytes), and the
store lists only record keys. Debris of killed writes is then cleaned (local temp files by
``sweep_temp_files``; orphan Redis chunks must carry a TTL; S3 incomplete uploads are aborted).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from faults.crash import (
    NODES,
    Backend,
    run_crash_scenario,
    value_for,
    version_of,
)

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")

KILLS = 20


@pytest.mark.parametrize("kind", ["local", "s3", "redis"])
def test_sigkilled_writers_leave_only_exact_values_or_misses(
    kind: str, fault_backend: Callable[[str], Backend], tmp_path: Path
) -> None:
    backend = fault_backend(kind)
    result = run_crash_scenario(backend, KILLS, seed=7, workdir=tmp_path / "work")

    assert result.failures == [], "\n".join(result.failures[:20])
    assert result.kills == KILLS
    # Every node was checked after every kill; the final overwrite round-trips each node.
    assert result.records_checked + result.misses >= KILLS * len(NODES)
    assert result.records_checked >= len(NODES)
    if kind == "local":
        assert result.debris_cleaned == result.debris_found  # every temp file swept


def test_values_are_exact_per_version_and_a_mix_of_two_versions_is_caught() -> None:
    """The checker's premise: each (node, version) has its own bytes, recomputable anywhere,
    and a record spliced from two versions matches neither."""
    a, b = value_for("big", 11), value_for("big", 13)  # same size
    assert value_for("big", 11) == a and a != b
    assert version_of("big", a) == 11 and version_of("big", b) == 13
    assert len(a) == len(b)
    spliced = a[: len(a) // 2] + b[len(a) // 2 :]
    assert spliced not in (value_for("big", 11), value_for("big", 13))
    assert version_of("doc", value_for("doc", 5)) == 5
    assert version_of("tiny", b"garbage") is None

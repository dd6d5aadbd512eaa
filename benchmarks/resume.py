"""Scenario 7 (plain Python): a 50-step pipeline, each step ~20 ms of CPU, fails at the last step.

ckpt: the time of the retry (same correlation id), which loads 49 checkpoints and computes the
last step. Reference: a full recompute of the same 50 steps without ckpt. The Prefect and Dagster
versions of this scenario live in :mod:`benchmarks.prefect` and :mod:`benchmarks.dagster`.
"""

from __future__ import annotations

import shutil
import tempfile
import time
import uuid
from pathlib import Path

from ._harness import Config, Row, clock, interleave, row_from_times

STEPS = 50
STEP_SECONDS = 0.020


class InjectedFailure(RuntimeError):
    pass


def burn(seconds: float = STEP_SECONDS) -> None:
    """~``seconds`` of CPU (a busy loop, not a sleep: resuming must save real work)."""
    end = time.process_time() + seconds
    x = 0
    while time.process_time() < end:
        x += 1


def step_value(i: int, prev: int) -> int:
    burn()
    return prev + i


def run(cfg: Config) -> list[Row]:
    import ckpt_core as ckpt

    root = Path(tempfile.mkdtemp(prefix="ckpt-bench-resume-", dir=cfg.workdir))

    @ckpt.checkpointed
    def step(i: int, prev: int) -> int:
        return step_value(i, prev)

    fail = {"on": False}

    @ckpt.checkpointed
    def last(prev: int) -> int:
        if fail["on"]:
            raise InjectedFailure("the last step fails on purpose")
        return step_value(STEPS - 1, prev)

    def pipeline() -> int:
        x = 0
        for i in range(STEPS - 1):
            x = step(i, x)
        return last(x)

    def plain() -> int:
        x = 0
        for i in range(STEPS):
            x = step_value(i, x)
        return x

    expected = plain()

    def retry() -> float:
        corr = f"nightly-{uuid.uuid4().hex[:8]}"
        fail["on"] = True
        try:
            with ckpt.run(corr, store=str(root / "ckpt")):
                pipeline()
        except InjectedFailure:
            pass
        fail["on"] = False
        t = clock()
        with ckpt.run(corr, store=str(root / "ckpt"), attempt=2) as active:
            result = pipeline()
        seconds = clock() - t
        assert result == expected and len(active.loaded) == STEPS - 1, active.loaded
        return seconds

    def recompute() -> float:
        t = clock()
        plain()
        return clock() - t

    try:
        reps = cfg.pick(cfg.reps, 2)
        return [
            row_from_times(
                f"resume decorator: retry vs full recompute ({STEPS} x 20 ms)",
                *interleave(retry, recompute, reps),
                "report",
            )
        ]
    finally:
        shutil.rmtree(root, ignore_errors=True)

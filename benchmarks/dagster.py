"""Scenarios 6 and 7 (Dagster), in process, on a temporary local instance.

6. Per-op overhead of a job of 200 trivial ops in a chain (20 with ``--quick``):
   ``CheckpointIOManager`` on a local directory vs Dagster's ``FilesystemIOManager``, both run
   with ``execute_in_process`` on the same kind of instance.
7. Resume: 50 ops of ~20 ms CPU, the last fails; ``execute_job`` with
   ``ReexecutionOptions.from_failure`` (ckpt loads 49 outputs, runs one op) vs a full run of the
   same job through the same ``execute_job`` path.

The jobs live at module level so ``reconstructable`` can rebuild them; the in-process executor
keeps every op in this process, so the failure switch is a plain global.
"""

import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from ._harness import Config, Row, clock, interleave, not_run, row_from_times
from .resume import STEPS, InjectedFailure, step_value

try:
    from dagster import (
        EnvVar,
        FilesystemIOManager,
        In,
        OpExecutionContext,
        graph,
        in_process_executor,
        job,
        op,
    )

    from ckpt_dagster import CheckpointIOManager

    HAVE_DAGSTER = True
except ImportError:  # pragma: no cover - reported as "not run"
    HAVE_DAGSTER = False

URL_ENV = "CKPT_BENCH_DAGSTER_URL"
FAIL = {"on": False}

if HAVE_DAGSTER:

    @op
    def first() -> int:
        return 0

    @op(ins={"prev": In(int)})
    def trivial(prev: int) -> int:
        return prev + 1

    def chain_graph(n: int) -> Any:
        @graph(name=f"chain_{n}")
        def chain() -> None:
            x = first()
            for i in range(n - 1):
                x = trivial.alias(f"op_{i}")(x)

        return chain

    @op(ins={"prev": In(int)}, config_schema={"i": int})
    def step(context: OpExecutionContext, prev: int) -> int:
        i = context.op_config["i"]
        if FAIL["on"] and i == STEPS - 1:
            raise InjectedFailure("the last op fails on purpose")
        return step_value(i, prev)

    @op
    def start() -> int:
        return 0

    def _resume_config() -> dict[str, Any]:
        return {"ops": {f"step_{i}": {"config": {"i": i}} for i in range(STEPS)}}

    @job(
        executor_def=in_process_executor,
        resource_defs={"io_manager": CheckpointIOManager(url=EnvVar(URL_ENV))},
        config=_resume_config(),
    )
    def resume_job() -> None:
        x = start()
        for i in range(STEPS):
            x = step.alias(f"step_{i}")(x)


def run(cfg: Config) -> list[Row]:
    if not HAVE_DAGSTER:
        return [not_run("dagster (all scenarios)", "-", "dagster or ckpt_dagster not importable")]
    from dagster import DagsterInstance

    logging.getLogger("dagster").setLevel(logging.ERROR)
    scratch = Path(tempfile.mkdtemp(prefix="ckpt-bench-dagster-", dir=cfg.workdir))
    os.environ[URL_ENV] = str(scratch / "ckpt-resume")
    overrides = {"telemetry": {"enabled": False}}
    (scratch / "home").mkdir()
    try:
        with DagsterInstance.local_temp(str(scratch / "home"), overrides=overrides) as instance:
            return [*_overhead(cfg, scratch, instance), _resume(cfg, instance)]
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _overhead(cfg: Config, scratch: Path, instance: Any) -> list[Row]:
    n = cfg.pick(200, 20)
    chain = chain_graph(n)
    ckpt_job = chain.to_job(
        name="chain_ckpt",
        executor_def=in_process_executor,
        resource_defs={"io_manager": CheckpointIOManager(url=str(scratch / "ckpt"))},
    )
    fs_job = chain.to_job(
        name="chain_fs",
        executor_def=in_process_executor,
        resource_defs={"io_manager": FilesystemIOManager(base_dir=str(scratch / "fs"))},
    )

    def timed(j: Any) -> Any:
        def go() -> float:
            t = clock()
            result = j.execute_in_process(instance=instance)
            seconds = clock() - t
            assert result.success
            return seconds

        return go

    return [
        row_from_times(
            f"dagster {n} ops: per-op, CheckpointIOManager vs FilesystemIOManager",
            *interleave(timed(ckpt_job), timed(fs_job), cfg.pick(3, 2)),
            "<= 1.0",
            per=n,
        )
    ]


def _resume(cfg: Config, instance: Any) -> Row:
    from dagster import ReexecutionOptions, execute_job, reconstructable

    recon = reconstructable(resume_job)

    def retry() -> float:
        FAIL["on"] = True
        with execute_job(recon, instance=instance, raise_on_error=False) as failed:
            assert not failed.success
            parent = failed.run_id
        FAIL["on"] = False
        t = clock()
        options = ReexecutionOptions.from_failure(parent, instance)
        with execute_job(recon, instance=instance, reexecution_options=options) as result:
            seconds = clock() - t
            assert result.success
        return seconds

    def full() -> float:
        t = clock()
        with execute_job(recon, instance=instance) as result:
            seconds = clock() - t
            assert result.success
        return seconds

    return row_from_times(
        f"resume dagster: re-execution vs full recompute ({STEPS} x 20 ms)",
        *interleave(retry, full, cfg.pick(3, 2)),
        "report",
    )

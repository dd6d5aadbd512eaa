"""Scenarios 5 and 7 (Prefect), on Prefect's own test server (SQLite in a temp dir).

5. Per-task overhead of a flow of 200 trivial tasks (20 with ``--quick``), each persisting its
   result:

   - ckpt, recommended configuration (docs/prefect.md): ``@resumable`` + ``@flow(result_storage=
     <saved CheckpointStorage instance>)`` and ``@task(cache_policy=RESUME, persist_result=True)``;
   - reference: ``@flow(result_storage=<saved LocalFileSystem instance>)`` and
     ``@task(persist_result=True)`` with Prefect's default cache policy;
   - also reported against the same reference: ckpt by slug on ``@task`` (the configuration the
     docs advise against) and no persistence at all.

7. Resume: 50 tasks of ~20 ms CPU; the first flow run fails at the last task; a second flow run
   with the same correlation (``@resumable(correlation=...)``) resumes. Its time vs a flow run
   that recomputes all 50 tasks without persistence.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Any

from ._harness import Config, Row, clock, interleave, not_run, row_from_times
from .resume import STEPS, InjectedFailure, step_value


def _setup_env(scratch: Path) -> None:
    os.environ.setdefault("PREFECT_HOME", str(scratch / "home"))
    os.environ["PREFECT_LOGGING_LEVEL"] = "ERROR"
    os.environ["PREFECT_LOGGING_TO_API_ENABLED"] = "false"
    os.environ["PREFECT_RESULTS_LOCAL_STORAGE_PATH"] = str(scratch / "local-results")
    os.environ["PREFECT_MEMO_STORE_PATH"] = str(scratch / "memo_store.toml")
    # The test server shares the 2 cores with the flows. Services that only feed the UI (task
    # run history, event triggers, schedulers) would otherwise make every number mostly server
    # load; both sides run against the same trimmed server, so the ratios stay fair.
    for service in (
        "TASK_RUN_RECORDER",
        "TRIGGERS",
        "SCHEDULER",
        "LATE_RUNS",
        "FOREMAN",
        "PAUSE_EXPIRATIONS",
        "CANCELLATION_CLEANUP",
        "EVENT_PERSISTER",
        "REPOSSESSOR",
        "PROACTIVE_TRIGGERS",
        "ACTIONS",
        "EVENT_LOGGER",
    ):
        os.environ[f"PREFECT_SERVER_SERVICES_{service}_ENABLED"] = "false"
    os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"


def run(cfg: Config) -> list[Row]:
    scratch = Path(tempfile.mkdtemp(prefix="ckpt-bench-prefect-", dir=cfg.workdir))
    _setup_env(scratch)
    try:
        from prefect.testing.utilities import prefect_test_harness
    except ImportError as exc:
        return [not_run("prefect (all scenarios)", "-", f"prefect not installed: {exc}")]
    try:
        with prefect_test_harness(server_startup_timeout=180):
            logging.getLogger("prefect").setLevel(logging.ERROR)
            return _measure(cfg, scratch)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _measure(cfg: Config, scratch: Path) -> list[Row]:
    from prefect import flow, task
    from prefect.cache_policies import NO_CACHE
    from prefect.filesystems import LocalFileSystem

    from ckpt_prefect import RESUME, CheckpointStorage, resumable

    n = cfg.pick(200, 20)
    CheckpointStorage(url=str(scratch / "ckpt")).save("bench", overwrite=True)
    LocalFileSystem(basepath=str(scratch / "lfs")).save("bench", overwrite=True)
    ckpt_storage = CheckpointStorage.load("bench")
    lfs_storage = LocalFileSystem.load("bench")

    def trivial(i: int) -> int:
        return i + 1

    ckpt_task = task(trivial, name="t-ckpt", cache_policy=RESUME, persist_result=True)
    slug_task = task(
        trivial,
        name="t-slug",
        cache_policy=RESUME,
        persist_result=True,
        result_storage="ckpt-storage/bench",
    )
    lfs_task = task(trivial, name="t-lfs", persist_result=True)
    none_task = task(trivial, name="t-none", persist_result=False, cache_policy=NO_CACHE)

    def body(t: Any, count: int) -> int:
        total = 0
        for i in range(count):
            total += t(i)
        return total

    @resumable
    @flow(name="bench-ckpt", result_storage=ckpt_storage)
    def f_ckpt(count: int) -> int:
        return body(ckpt_task, count)

    @resumable(storage=ckpt_storage)
    @flow(name="bench-slug")
    def f_slug(count: int) -> int:
        return body(slug_task, count)

    @flow(name="bench-lfs", result_storage=lfs_storage)
    def f_lfs(count: int) -> int:
        return body(lfs_task, count)

    @flow(name="bench-none", persist_result=False)
    def f_none(count: int) -> int:
        return body(none_task, count)

    flows = {"ckpt": f_ckpt, "slug": f_slug, "lfs": f_lfs, "none": f_none}
    for fl in flows.values():  # warm-up: imports, block and task registration, first API calls
        fl(5)
    # A 200-task flow run takes seconds, so the four configurations run in rounds (the order
    # rotates each round) and each is compared with the LocalFileSystem run of the same round.
    times: dict[str, list[float]] = {name: [] for name in flows}
    order = list(flows)
    for r in range(cfg.pick(3, 2)):
        for name in order[r % 4 :] + order[: r % 4]:
            t = clock()
            flows[name](n)
            times[name].append(clock() - t)
    lfs = times["lfs"]
    rows = [
        row_from_times(
            f"prefect {n} tasks: per-task, ckpt recommended vs LocalFileSystem",
            times["ckpt"],
            lfs,
            "<= 1.1",
            per=n,
        )
    ]
    rows.append(
        row_from_times(
            f"prefect {n} tasks: per-task, ckpt slug on @task vs LocalFileSystem",
            times["slug"],
            lfs,
            "report",
            per=n,
        )
    )
    rows.append(
        row_from_times(
            f"prefect {n} tasks: per-task, no persistence vs LocalFileSystem",
            times["none"],
            lfs,
            "report",
            per=n,
        )
    )
    rows.append(_resume(cfg, ckpt_storage))
    return rows


def _resume(cfg: Config, storage: Any) -> Row:
    from prefect import flow, task
    from prefect.cache_policies import NO_CACHE

    from ckpt_prefect import RESUME, resumable

    def step_fn(i: int, prev: int, fail: bool) -> int:
        if fail:
            raise InjectedFailure("the last task fails on purpose")
        return step_value(i, prev)

    step_ckpt = task(step_fn, name="step", cache_policy=RESUME - "fail", persist_result=True)
    step_plain = task(step_fn, name="step-plain", cache_policy=NO_CACHE, persist_result=False)

    @resumable(correlation="{flow_name}-{parameters[day]}")
    @flow(name="bench-resume", result_storage=storage)
    def resumed(day: str, fail: bool) -> int:
        x = 0
        for i in range(STEPS):
            x = step_ckpt(i, x, fail and i == STEPS - 1)
        return x

    @flow(name="bench-recompute", persist_result=False)
    def recompute() -> int:
        x = 0
        for i in range(STEPS):
            x = step_plain(i, x, False)
        return x

    def retry() -> float:
        day = uuid.uuid4().hex[:8]
        state = resumed(day, True, return_state=True)
        assert state.is_failed(), state
        t = clock()
        resumed(day, False)
        return clock() - t

    def full() -> float:
        t = clock()
        recompute()
        return clock() - t

    return row_from_times(
        f"resume prefect: retry vs full recompute ({STEPS} x 20 ms)",
        *interleave(retry, full, 2),
        "report",
    )

"""Scenarios 5 and 7 (Prefect), on Prefect's own test server (SQLite in a temp dir).

5. Per-task overhead of a flow of 200 trivial tasks (20 with ``--quick``), each persisting its
   result; the figure is a whole flow run's wall time (lifecycle hooks included) over the number
   of tasks:

   - ckpt, recommended configuration (docs/prefect.md): ``@resumable`` + ``@flow(result_storage=
     <saved CheckpointStorage instance>)`` and ``@task(cache_policy=RESUME, persist_result=True)``,
     on a local directory with the store's default durability (temp file, fsync, rename, fsync of
     the directory);
   - reference: ``@flow(result_storage=<saved LocalFileSystem instance>)`` and
     ``@task(persist_result=True)`` with Prefect's default cache policy. ``LocalFileSystem`` writes
     the result file in place and never fsyncs;
   - also reported against the same reference: the same ckpt setup with ``fsync=False`` (the
     reference's durability; writes stay atomic), ckpt by slug on ``@task`` (the configuration
     the docs advise against) and no persistence at all.

   Fairness: the configurations run in rounds, their order rotating each round, and every ratio
   is the ratio of the medians. Prefect's flow-run heartbeat thread is switched off for every
   side: it sleeps in 1 s steps and the sync engine joins it at the end of each flow run, which
   rounds every flow run's wall time up to a whole second (5 ms per task at 200 tasks) and made
   the ratio jump between ~1.0 and ~1.4 from one run to the next. Each timing ends once the
   events the flow run emitted have been sent (Prefect's events worker thread), so no run pays
   for its predecessor's backlog. The task loop alone is recorded too (``extra`` in the JSON),
   to tell per-task costs from per-flow-run ones such as ckpt's lifecycle hooks.

   Interleaved rows: the machine is shared, and a neighbour's disk or CPU load moves a whole
   flow run's time by tens of percent (fsync latency on the virtio disk ranges from ~0.1 to
   several ms). So the per-task cost is also measured inside single flow runs that call a ckpt
   task, a LocalFileSystem task, an fsync=False ckpt task and an unpersisted task in turn: every
   kind sees the same conditions, and each figure is the median task run (median over rounds).

7. Resume: 50 tasks of ~20 ms CPU; the first flow run fails at the last task; a second flow run
   with the same correlation (``@resumable(correlation=...)``) resumes. Its time vs a flow run
   that recomputes all 50 tasks without persistence.
"""

from __future__ import annotations

import logging
import os
import shutil
import statistics
import tempfile
import threading
import uuid
from collections.abc import Callable
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
        from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

        with (
            prefect_test_harness(server_startup_timeout=180),
            temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}),
        ):
            logging.getLogger("prefect").setLevel(logging.ERROR)
            return _measure(cfg, scratch)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


#: ckpt's local store fsyncs each record and its directory; LocalFileSystem writes in place and
#: never fsyncs (a power cut can leave a torn result file, read back as an error).
DURABILITY_NOTE = "ckpt: temp file + fsync + rename + dir fsync; LocalFileSystem: no fsync"


def _drain_events() -> None:
    """Wait (at most 30 s) until Prefect's events worker has sent everything queued so far."""
    from prefect.events.worker import EventsWorker

    waiter = threading.Thread(target=EventsWorker.instance().wait_until_empty, daemon=True)
    waiter.start()
    waiter.join(timeout=30)


def _measure(cfg: Config, scratch: Path) -> list[Row]:
    from prefect import flow, task
    from prefect.cache_policies import NO_CACHE
    from prefect.filesystems import LocalFileSystem

    from ckpt_prefect import RESUME, CheckpointStorage, resumable

    n = cfg.pick(200, 20)
    CheckpointStorage(url=str(scratch / "ckpt")).save("bench", overwrite=True)
    CheckpointStorage(url=str(scratch / "ckpt-nofsync"), storage_options={"fsync": False}).save(
        "bench-nofsync", overwrite=True
    )
    LocalFileSystem(basepath=str(scratch / "lfs")).save("bench", overwrite=True)
    ckpt_storage = CheckpointStorage.load("bench")
    nofsync_storage = CheckpointStorage.load("bench-nofsync")
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

    loop_seconds: list[float] = []  # the task loop alone, without the flow run's own costs

    def body(t: Any, count: int) -> int:
        started = clock()
        total = 0
        for i in range(count):
            total += t(i)
        loop_seconds.append(clock() - started)
        return total

    @resumable
    @flow(name="bench-ckpt", result_storage=ckpt_storage)
    def f_ckpt(count: int) -> int:
        return body(ckpt_task, count)

    @resumable
    @flow(name="bench-nofsync", result_storage=nofsync_storage)
    def f_nofsync(count: int) -> int:
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

    flows: dict[str, Callable[[int], int]] = {
        "ckpt": f_ckpt,
        "lfs": f_lfs,
        "nofsync": f_nofsync,
        "slug": f_slug,
        "none": f_none,
    }
    for fl in flows.values():  # warm-up: imports, block and task registration, first API calls
        fl(5)
    _drain_events()
    # A 200-task flow run takes seconds, so the configurations run in rounds (the order rotates
    # each round); each figure is a median over the rounds.
    times: dict[str, list[float]] = {name: [] for name in flows}
    loops: dict[str, list[float]] = {name: [] for name in flows}
    order = list(flows)
    for r in range(cfg.pick(max(cfg.reps, 7), 2)):
        shift = r % len(order)
        for name in order[shift:] + order[:shift]:
            t = clock()
            flows[name](n)
            # Timed until the run's events are sent: the worker thread sends them while the
            # flow runs, whenever the main thread releases the GIL (any blocking call, fsync
            # included), so without this a run would leave a backlog of a size that depends on
            # its own syscalls for the next run to pay.
            _drain_events()
            times[name].append(clock() - t)
            loops[name].append(loop_seconds[-1])
    lfs = times["lfs"]

    def row(name: str, label: str, target: str, note: str = "") -> Row:
        return row_from_times(
            f"prefect {n} tasks: per-task, {label} vs LocalFileSystem",
            times[name],
            lfs,
            target,
            per=n,
            note=note,
            # The task loop alone: tells per-task costs from per-flow-run ones (hooks).
            task_loop_per_task=statistics.median(loops[name]) / n,
            task_loop_reference_per_task=statistics.median(loops["lfs"]) / n,
        )

    rows = [
        row("ckpt", "ckpt recommended", "<= 1.1", DURABILITY_NOTE),
        row(
            "nofsync", "ckpt recommended with fsync=False", "report", "LocalFileSystem's durability"
        ),
        row("slug", "ckpt slug on @task", "report"),
        row("none", "no persistence", "report"),
    ]

    # The same per-task comparison with the noise cancelled: one flow run calls the four kinds
    # of task in turn (order rotating), so a noisy neighbour or a slow disk hits every kind
    # alike. Per-task costs only (no hooks, no flow run). The LocalFileSystem and fsync=False
    # tasks name a saved instance on @task, which Prefect uses as is (no API call).
    lfs_inline = task(trivial, name="t-lfs-inline", persist_result=True, result_storage=lfs_storage)
    nofsync_inline = task(
        trivial,
        name="t-nofsync-inline",
        cache_policy=RESUME,
        persist_result=True,
        result_storage=nofsync_storage,
    )
    kinds = {"ckpt": ckpt_task, "lfs": lfs_inline, "nofsync": nofsync_inline, "none": none_task}
    calls: dict[str, list[float]] = {name: [] for name in kinds}
    names = list(kinds)

    @resumable
    @flow(name="bench-interleaved", result_storage=ckpt_storage)
    def f_mixed(count: int) -> None:
        for i in range(count):
            shift = i % len(names)
            for name in names[shift:] + names[:shift]:
                started = clock()
                kinds[name](i)
                calls[name].append(clock() - started)

    f_mixed(5)  # warm-up
    per_round: dict[str, list[float]] = {name: [] for name in kinds}
    for _ in range(cfg.pick(3, 2)):
        for name in names:
            calls[name].clear()
        f_mixed(n)
        _drain_events()
        for name in names:
            per_round[name].append(statistics.median(calls[name]))
    none_median = statistics.median(per_round["none"])
    for name, label, note in (
        ("ckpt", "ckpt recommended", DURABILITY_NOTE),
        ("nofsync", "ckpt with fsync=False", "LocalFileSystem's durability"),
    ):
        rows.append(
            row_from_times(
                f"prefect per task, interleaved in one flow run: {label} vs LocalFileSystem",
                per_round[name],
                per_round["lfs"],
                "report",
                note=note,
                # Median task run with no persistence at all, in the same flow runs: what a
                # persisted result adds is the figure above minus this one, on either side.
                no_persistence_per_task=none_median,
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

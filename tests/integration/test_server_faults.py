"""A store server that dies in the middle of a Prefect flow or a Dagster job, then comes back.

The same four steps as ``tests/test_server_faults.py`` (extract, clean, enrich, publish), with
step 3 killing the server while it runs (Redis: SIGKILL, append-only persistence fsynced on every
write; SeaweedFS: stopped). The server is restarted on the same port and data directory, the
checkpoints acknowledged before the fault are checked byte for byte, and the run is retried.

- Dagster: ``handle_output`` of step 3 raises ``StoreUnavailable``, a step failure naming the
  store; step 4 never runs. Re-execution from failure runs steps 3 and 4 only.
- Prefect commits a task's result after the task is ``Completed`` and only logs a failing write
  (the task stays ``Completed`` and the flow goes on). ``ckpt_prefect.resumable`` turns the lost
  checkpoint into a failure of the flow run with the store's ``StoreUnavailable`` (see
  :mod:`ckpt_prefect.failures`); the flow run is then retried as ``prefect flow-run retry``
  does it (state set to ``Scheduled``, the same flow run executed again), and the tasks whose
  checkpoints were written are skipped.
"""

from __future__ import annotations

import asyncio
import hashlib
import inspect
import random
import secrets
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from dagster import (
    DagsterEventType,
    DagsterInstance,
    OpExecutionContext,
    ReexecutionOptions,
    execute_job,
    in_process_executor,
    job,
    op,
    reconstructable,
)
from prefect import flow, task
from prefect.client.orchestration import get_client
from prefect.flow_engine import run_flow
from prefect.results import ResultRecord
from prefect.settings import (
    PREFECT_MEMO_STORE_PATH,
    PREFECT_RESULTS_LOCAL_STORAGE_PATH,
    temporary_settings,
)
from prefect.states import Scheduled, State
from prefect.testing.utilities import prefect_test_harness

import ckpt_core as ckpt
from ckpt_dagster import CheckpointIOManager
from ckpt_prefect import RESUME, CheckpointStorage, resumable

from ..servers import AOF_ALWAYS, RedisServer, SeaweedServer
from .dagster_jobs import calls, control_tags, count_call

KiB = 1 << 10
MiB = 1 << 20
#: A dead server must fail the step within this many seconds.
BOUND_SECONDS = 60.0


def value(seed: int, size: int) -> bytes:
    return random.Random(seed).randbytes(size)


EXTRACTED = value(1, 300 * KiB)
CLEANED = EXTRACTED[::-1] + value(2, MiB)
ENRICHED = hashlib.sha256(CLEANED).digest() * 4096
PUBLISHED = ENRICHED[:1000] + b"!"


@dataclass
class Target:
    """A private store server the test may crash and restart, and how ckpt reaches it."""

    kind: str
    url: str
    options: dict[str, Any]
    shown: str
    secrets: list[str]
    crash: Callable[[], None]
    restart: Callable[[], None]


@pytest.fixture(params=["redis", "s3"])
def target(
    request: pytest.FixtureRequest,
    redis_server_factory: Callable[..., RedisServer],
    seaweed_factory: Callable[[], SeaweedServer],
) -> Target:
    if request.param == "redis":
        password = "pw-" + secrets.token_hex(8)
        redis = redis_server_factory(password=password, **AOF_ALWAYS)
        return Target(
            "redis",
            redis.url,
            {"chunk_size": 64 * KiB},
            f"redis://:***@127.0.0.1:{redis.port}/0",
            [password],
            redis.kill,
            redis.restart,
        )
    s3 = seaweed_factory()
    url = f"s3://{s3.bucket}/faults-{uuid.uuid4().hex[:8]}"
    return Target(
        "s3", url, s3.storage_options(), url, [s3.access_key, s3.secret_key], s3.stop, s3.restart
    )


def assert_names_the_store(message: str, target: Target, key_part: str) -> None:
    assert target.shown in message, message
    assert key_part in message, message
    assert not any(secret in message for secret in target.secrets), message


# == Dagster ======================================================================================
CRASH_TAG = "ckpt_test/crash"
#: Crash callbacks by id (the job runs in this process with the in-process executor).
_CRASHES: dict[str, Callable[[], None]] = {}


@op
def extract() -> bytes:
    count_call("extract")
    return value(1, 300 * KiB)


@op
def clean(raw: bytes) -> bytes:
    count_call("clean")
    return raw[::-1] + value(2, MiB)


@op
def enrich(rows: bytes) -> bytes:
    if count_call("enrich") == 1:
        crash_id = OpExecutionContext.get().run.tags[CRASH_TAG]
        _CRASHES[crash_id]()  # the store goes away while this op runs
    return hashlib.sha256(rows).digest() * 4096


@op
def publish(rows: bytes) -> bytes:
    count_call("publish")
    return rows[:1000] + b"!"


@job(
    resource_defs={"io_manager": CheckpointIOManager.configure_at_launch()},
    executor_def=in_process_executor,
)
def nightly() -> None:
    publish(enrich(clean(extract())))


def steps_started(result: Any) -> set[str]:
    return {e.step_key for e in result.all_events if e.event_type == DagsterEventType.STEP_START}


def test_dagster_step_fails_with_store_unavailable_and_reexecution_resumes(
    target: Target, instance: DagsterInstance, tmp_path: Path
) -> None:
    calls_dir = tmp_path / "calls"
    calls_dir.mkdir()
    crash_id = uuid.uuid4().hex
    crashed_at: list[float] = []

    def crash() -> None:
        target.crash()
        crashed_at.append(time.monotonic())

    _CRASHES[crash_id] = crash
    tags = {**control_tags(calls_dir), CRASH_TAG: crash_id}
    run_config = {
        "resources": {
            "io_manager": {"config": {"url": target.url, "storage_options": target.options}}
        }
    }
    try:
        with execute_job(
            reconstructable(nightly), instance=instance, run_config=run_config, tags=tags
        ) as first:
            waited = time.monotonic() - crashed_at[0]
            assert not first.success
            assert steps_started(first) == {"extract", "clean", "enrich"}
            failure = first.failure_data_for_node("enrich")
            assert failure is not None
        assert failure.error is not None
        error = failure.error
        while error.cause is not None and error.cls_name != "StoreUnavailable":
            error = error.cause
        assert error.cls_name == "StoreUnavailable", failure.error.to_string()
        assert error.message.startswith("ckpt_core.errors.StoreUnavailable: writing 'nightly/")
        assert_names_the_store(error.message, target, "/enrich.result'")
        assert not any(s in failure.error.to_string() for s in target.secrets)
        assert waited < BOUND_SECONDS, f"the step failed {waited:.1f} s after the crash"
        assert [calls(calls_dir, n) for n in ("extract", "clean", "enrich", "publish")] == [
            1,
            1,
            1,
            0,
        ]

        target.restart()
        root = first.run_id
        inspector = ckpt.CheckpointManager(target.url, "nightly", **target.options)
        ctx = ckpt.RunContext(run_id="inspector", correlation_id=root)
        assert sorted(i.node for i in inspector.list(ctx)) == ["clean.result", "extract.result"]
        assert inspector.load(ctx, "extract.result") == EXTRACTED
        assert inspector.load(ctx, "clean.result") == CLEANED

        with execute_job(
            reconstructable(nightly),
            instance=instance,
            reexecution_options=ReexecutionOptions.from_failure(root, instance),
            tags=tags,
        ) as second:
            assert second.success
            assert steps_started(second) == {"enrich", "publish"}
            assert second.dagster_run.root_run_id == root
            assert second.output_for_node("publish") == PUBLISHED
        assert [calls(calls_dir, n) for n in ("extract", "clean", "enrich", "publish")] == [
            1,
            1,
            2,
            1,
        ]
        assert inspector.load(ctx, "enrich.result") == ENRICHED
        inspector.close()
    finally:
        _CRASHES.pop(crash_id, None)


# == Prefect ======================================================================================
@pytest.fixture(scope="module")
def prefect_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Prefect's own test server for this module (its results and memo file in a temp dir)."""
    scratch = tmp_path_factory.mktemp("prefect-faults")
    with (
        temporary_settings(
            updates={
                PREFECT_RESULTS_LOCAL_STORAGE_PATH: scratch / "local-results",
                PREFECT_MEMO_STORE_PATH: scratch / "memo_store.toml",
            }
        ),
        prefect_test_harness(server_startup_timeout=180),
    ):
        yield


def prefect_pipeline(
    storage: CheckpointStorage, target: Target, counter: Counter[str], is_async: bool
) -> Any:
    """The four steps as RESUME tasks of a resumable flow without in-process retries."""
    crashed: list[float] = []
    name = f"nightly-{uuid.uuid4().hex[:6]}"

    def crash() -> None:
        target.crash()
        crashed.append(time.monotonic())

    if is_async:

        @task(cache_policy=RESUME)
        async def extract() -> bytes:
            counter["extract"] += 1
            return value(1, 300 * KiB)

        @task(cache_policy=RESUME)
        async def clean(raw: bytes) -> bytes:
            counter["clean"] += 1
            return raw[::-1] + value(2, MiB)

        @task(cache_policy=RESUME)
        async def enrich(rows: bytes) -> bytes:
            counter["enrich"] += 1
            if counter["enrich"] == 1:
                crash()
            return hashlib.sha256(rows).digest() * 4096

        @task(cache_policy=RESUME)
        async def publish(rows: bytes) -> bytes:
            counter["publish"] += 1
            return rows[:1000] + b"!"

        @flow(name=name, result_storage=storage)
        async def pipeline() -> bytes:
            return await publish(await enrich(await clean(await extract())))

    else:

        @task(cache_policy=RESUME)
        def extract() -> bytes:
            counter["extract"] += 1
            return value(1, 300 * KiB)

        @task(cache_policy=RESUME)
        def clean(raw: bytes) -> bytes:
            counter["clean"] += 1
            return raw[::-1] + value(2, MiB)

        @task(cache_policy=RESUME)
        def enrich(rows: bytes) -> bytes:
            counter["enrich"] += 1
            if counter["enrich"] == 1:
                crash()
            return hashlib.sha256(rows).digest() * 4096

        @task(cache_policy=RESUME)
        def publish(rows: bytes) -> bytes:
            counter["publish"] += 1
            return rows[:1000] + b"!"

        @flow(name=name, result_storage=storage)
        def pipeline() -> bytes:
            return publish(enrich(clean(extract())))

    return resumable(pipeline), crashed


def settle(state: Any) -> State:
    if inspect.isawaitable(state):
        state = asyncio.run(state)
    assert isinstance(state, State)
    return state


def retry_flow_run(flow_obj: Any, failed: State) -> State:
    """What ``prefect flow-run retry`` does for a flow run without a deployment: back to
    ``Scheduled``, then the same flow run executed again in this process."""
    flow_run_id = failed.state_details.flow_run_id
    assert flow_run_id is not None
    with get_client(sync_client=True) as client:
        client.set_flow_run_state(flow_run_id, Scheduled(message="retried"), force=True)
        flow_run = client.read_flow_run(flow_run_id)
    return settle(run_flow(flow=flow_obj, flow_run=flow_run, return_type="state", parameters={}))


@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
def test_prefect_flow_fails_with_store_unavailable_and_a_retry_resumes(
    prefect_server: None, target: Target, is_async: bool
) -> None:
    storage = CheckpointStorage(url=target.url, storage_options=target.options)
    storage.save(f"faults-{uuid.uuid4().hex[:10]}", overwrite=True)
    counted: Counter[str] = Counter()
    pipeline, crashed = prefect_pipeline(storage, target, counted, is_async)

    first = settle(pipeline(return_state=True))
    waited = time.monotonic() - crashed[0]
    assert first.is_failed(), first
    error = first.result(raise_on_failure=False)
    assert type(error) is ckpt.StoreUnavailable, repr(error)
    assert str(error).startswith(f"writing '{pipeline.name}/corr/")
    assert_names_the_store(str(error), target, ".enrich%3A")
    assert not any(s in str(first.message) for s in target.secrets)
    assert waited < BOUND_SECONDS, f"the flow run failed {waited:.1f} s after the crash"
    # Prefect does not stop at the lost checkpoint: publish ran too (its save failed as well).
    assert dict(counted) == {"extract": 1, "clean": 1, "enrich": 1, "publish": 1}

    target.restart()
    flow_run_id = str(first.state_details.flow_run_id)
    inspector = ckpt.CheckpointManager(target.url, pipeline.name, **target.options)
    ctx = ckpt.RunContext(run_id="inspector", correlation_id=flow_run_id)
    kept = {i.node.split(":")[0].rsplit(".", 1)[-1]: i.node for i in inspector.list(ctx)}
    assert sorted(kept) == ["clean", "extract"]
    assert ResultRecord.deserialize(inspector.load(ctx, kept["extract"])).result == EXTRACTED
    assert ResultRecord.deserialize(inspector.load(ctx, kept["clean"])).result == CLEANED

    second = retry_flow_run(pipeline, first)
    assert second.is_completed(), second
    assert str(second.state_details.flow_run_id) == flow_run_id
    assert second.result() == PUBLISHED
    assert dict(counted) == {"extract": 1, "clean": 1, "enrich": 2, "publish": 2}
    assert inspector.list(ctx) == []  # the flow run succeeded: its checkpoints are removed
    inspector.close()


def test_a_lost_checkpoint_fails_the_watched_flow_body_but_the_body_error_wins() -> None:
    """:func:`ckpt_prefect.failures.watch_checkpoints` on its own (no Prefect server)."""
    from ckpt_prefect.failures import note_lost_checkpoint, watch_checkpoints

    lost = ckpt.StoreUnavailable("writing 'ns/corr/c/task': Redis at redis://h:6379/0 is down")

    def body(own_error: bool) -> int:
        note_lost_checkpoint(lost)
        if own_error:
            raise RuntimeError("the body failed by itself")
        return 1

    async def abody(own_error: bool) -> int:
        return body(own_error)

    watched, awatched = watch_checkpoints(body), watch_checkpoints(abody)
    assert watch_checkpoints(watched) is watched  # resumable on a flow copy: wrapped once
    assert inspect.iscoroutinefunction(awatched) and inspect.signature(watched).parameters
    with pytest.raises(ckpt.StoreUnavailable) as raised:
        watched(False)
    assert raised.value is lost
    with pytest.raises(ckpt.StoreUnavailable):
        asyncio.run(awatched(False))
    with pytest.raises(RuntimeError, match="by itself"):
        watched(True)
    assert body(False) == 1  # outside a watched body a lost checkpoint is only Prefect's log line
    assert watch_checkpoints(lambda: 2)() == 2

"""ckpt_prefect with real Prefect flows on Prefect's test server (``prefect_test_harness``).

Each resume test counts how often every task body ran: a retried flow run must skip the tasks that
finished (1/1/2), whatever way the block is configured (saved instance or slug on the flow, slug on
the task, default block from settings), for sync and async flows and per mapped element. The
lifecycle tests look at the store itself: records are ckpt records, gone after success, kept after a
final failure, and a new flow run with the same declared correlation resumes from them.

One harness (a Prefect server subprocess, ~20 s to start here) serves the whole module.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import os
import runpy
import subprocess
import sys
import textwrap
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import nullcontext
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import pytest
import yaml
from prefect import flow, task
from prefect.blocks.core import Block
from prefect.client.orchestration import get_client
from prefect.flows import load_flow_from_entrypoint
from prefect.futures import wait
from prefect.results import ResultRecord
from prefect.settings import (
    PREFECT_API_URL,
    PREFECT_MEMO_STORE_PATH,
    PREFECT_RESULTS_DEFAULT_STORAGE_BLOCK,
    PREFECT_RESULTS_LOCAL_STORAGE_PATH,
    temporary_settings,
)
from prefect.states import State
from prefect.testing.utilities import prefect_test_harness

import ckpt_core
import ckpt_prefect
from ckpt_core import CheckpointCorrupted, CheckpointManager, RunContext, Scope, open_store
from ckpt_core.envelope import open_record
from ckpt_prefect import (
    RESUME,
    RESUME_RUN,
    CheckpointStorage,
    OutsideFlowRun,
    resumable,
)

REPO = Path(__file__).resolve().parents[2]


# -- fixtures ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def prefect_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Prefect's own test server (SQLite in a temp dir), for this module. Results Prefect writes
    to its local default storage (a failed flow's exception) and the server's memo file go to a
    temp dir, not ~/.prefect."""
    scratch = tmp_path_factory.mktemp("prefect")
    with (
        temporary_settings(
            updates={
                PREFECT_RESULTS_LOCAL_STORAGE_PATH: scratch / "local-results",
                PREFECT_MEMO_STORE_PATH: scratch / "memo_store.toml",
            }
        ),
        prefect_test_harness(server_startup_timeout=180),
    ):
        yield str(PREFECT_API_URL.value())


@pytest.fixture
def store_url(tmp_path: Path) -> str:
    return str(tmp_path / "ckpt")


@pytest.fixture
def block(prefect_server: str, store_url: str) -> CheckpointStorage:
    """A saved block over a fresh local store (see :func:`slug`)."""
    saved = CheckpointStorage(url=store_url)
    saved.save(f"test-{uuid.uuid4().hex[:10]}", overwrite=True)
    return saved


def slug(block: CheckpointStorage) -> str:
    return f"ckpt-storage/{block._block_document_name}"


def records(store_url: str) -> list[str]:
    """Every record key in the store (an absent directory is an empty store)."""
    if not Path(store_url).exists():
        return []
    return sorted(obj.key for obj in open_store(store_url).list(""))


def run_sync_or_async(flow_obj: Any, **parameters: Any) -> State:
    result = flow_obj(return_state=True, **parameters)
    if inspect.isawaitable(result):
        result = asyncio.run(result)
    assert isinstance(result, State)
    return result


# -- the pipelines under test -----------------------------------------------------------------
def three_step_flow(
    *,
    flow_storage: Any,
    task_storage: Any,
    is_async: bool,
    hook_storage: Any = None,
    retries: int = 1,
) -> tuple[Any, Counter[str]]:
    """extract -> transform -> load, where load fails on its first call; returns (flow, calls)."""
    calls: Counter[str] = Counter()
    options: dict[str, Any] = {"cache_policy": RESUME}
    if task_storage is not None:
        options["result_storage"] = task_storage
    name = f"three-step-{uuid.uuid4().hex[:6]}"

    if is_async:

        @task(**options)
        async def extract() -> list[int]:
            calls["extract"] += 1
            return [1, 2, 3]

        @task(**options)
        async def transform(rows: list[int]) -> list[int]:
            calls["transform"] += 1
            return [r * 10 for r in rows]

        @task(**options)
        async def load(rows: list[int]) -> int:
            calls["load"] += 1
            if calls["load"] == 1:
                raise RuntimeError("load failed on its first call")
            return sum(rows)

        @flow(name=name, retries=retries, result_storage=flow_storage)
        async def pipeline() -> int:
            return await load(await transform(await extract()))

    else:

        @task(**options)
        def extract() -> list[int]:
            calls["extract"] += 1
            return [1, 2, 3]

        @task(**options)
        def transform(rows: list[int]) -> list[int]:
            calls["transform"] += 1
            return [r * 10 for r in rows]

        @task(**options)
        def load(rows: list[int]) -> int:
            calls["load"] += 1
            if calls["load"] == 1:
                raise RuntimeError("load failed on its first call")
            return sum(rows)

        @flow(name=name, retries=retries, result_storage=flow_storage)
        def pipeline() -> int:
            return load(transform(extract()))

    return resumable(storage=hook_storage)(pipeline), calls


# -- resume on flow retry ---------------------------------------------------------------------
CONFIGS = ["instance-on-flow", "slug-on-flow", "slug-on-task", "default-from-settings"]


@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
@pytest.mark.parametrize("config", CONFIGS)
def test_flow_retry_skips_finished_tasks(
    block: CheckpointStorage, store_url: str, config: str, is_async: bool
) -> None:
    flow_storage: Any = None
    task_storage: Any = None
    hook_storage: Any = None
    settings: Any = nullcontext()
    if config == "instance-on-flow":
        flow_storage = block
    elif config == "slug-on-flow":
        flow_storage = slug(block)
    elif config == "slug-on-task":
        task_storage = hook_storage = slug(block)
    else:
        settings = temporary_settings(updates={PREFECT_RESULTS_DEFAULT_STORAGE_BLOCK: slug(block)})

    pipeline, calls = three_step_flow(
        flow_storage=flow_storage,
        task_storage=task_storage,
        is_async=is_async,
        hook_storage=hook_storage,
    )
    with settings:
        state = run_sync_or_async(pipeline)

    assert state.is_completed(), state
    assert state.result() == 60
    assert dict(calls) == {"extract": 1, "transform": 1, "load": 2}
    # Default retention: the correlation's checkpoints are deleted once the flow run succeeds.
    assert records(store_url) == []


def test_mapped_tasks_resume_per_element(block: CheckpointStorage, store_url: str) -> None:
    calls: Counter[int] = Counter()

    @task(cache_policy=RESUME)
    def square(x: int) -> int:
        calls[x] += 1
        if x == 3 and calls[x] == 1:
            raise RuntimeError("element 3 failed on its first call")
        return x * x

    @resumable
    @flow(retries=1, result_storage=block)
    def mapped(xs: list[int]) -> list[int]:
        futures = square.map(xs)
        wait(futures)
        return [f.result() for f in futures]

    state = mapped(xs=[1, 2, 3, 4], return_state=True)

    assert state.is_completed(), state
    assert state.result() == [1, 4, 9, 16]
    assert dict(calls) == {1: 1, 2: 1, 3: 2, 4: 1}
    assert records(store_url) == []


def test_subflows_file_under_the_root_flow_run(block: CheckpointStorage, store_url: str) -> None:
    """A completed subflow is reused on the parent's retry (Prefect reads its result in the
    parent's context), a failed one re-runs and resumes its finished tasks, and the parent's
    hooks clean up after both."""
    calls: Counter[str] = Counter()

    @task(cache_policy=RESUME)
    def double(x: int) -> int:
        calls["double"] += 1
        return 2 * x

    @task(cache_policy=RESUME)
    def fetch(y: int) -> int:
        calls["fetch"] += 1
        return y + 1

    @task(cache_policy=RESUME)
    def upload(y: int) -> str:
        calls["upload"] += 1
        if calls["upload"] == 1:
            raise RuntimeError("upload failed on its first call")
        return f"uploaded {y}"

    @flow
    def prepare(x: int) -> int:
        calls["prepare"] += 1
        return double(x)

    @flow
    def publish(y: int) -> str:
        calls["publish"] += 1
        return upload(fetch(y))

    @resumable
    @flow(retries=1, result_storage=block)
    def parent() -> str:
        return publish(prepare(3))

    state = parent(return_state=True)

    assert state.is_completed(), state
    assert state.result() == "uploaded 7"
    assert dict(calls) == {"prepare": 1, "double": 1, "publish": 2, "fetch": 1, "upload": 2}
    assert records(store_url) == []


def test_run_scoped_policy_recomputes_on_retry_and_is_cleaned_per_attempt(
    block: CheckpointStorage, store_url: str
) -> None:
    calls: Counter[str] = Counter()
    run_records_seen: list[list[str]] = []

    @task(cache_policy=RESUME_RUN)
    def scratch() -> int:
        calls["scratch"] += 1
        return 7

    @task(cache_policy=RESUME)
    def durable() -> int:
        calls["durable"] += 1
        return 1

    @task(cache_policy=RESUME)
    def finish(a: int, b: int) -> int:
        calls["finish"] += 1
        run_records_seen.append([k for k in records(store_url) if "/run/" in k])
        if calls["finish"] == 1:
            raise RuntimeError("finish failed on its first call")
        return a + b

    @resumable
    @flow(retries=1, result_storage=block)
    def attempts() -> int:
        return finish(scratch(), durable())

    state = attempts(return_state=True)

    assert state.is_completed(), state
    assert state.result() == 8
    # RUN scope: not visible to the retry, so scratch ran again; CORRELATION scope: resumed.
    assert dict(calls) == {"scratch": 2, "durable": 1, "finish": 2}
    first, second = run_records_seen
    assert len(first) == 1 and "%231/" in first[0]  # attempt 1's RUN scope: "<flow run>#1"
    assert len(second) == 1 and "%232/" in second[0]  # attempt 1's was removed when 2 started
    assert records(store_url) == []


# -- records, lifecycle, declared correlation ---------------------------------------------------
def day_pipeline(block: CheckpointStorage) -> tuple[Any, Counter[str], dict[str, bool]]:
    """A flow correlated by its ``day`` parameter, with no in-process retries."""
    calls: Counter[str] = Counter()
    fail = {"load": True}

    @task(cache_policy=RESUME)
    def extract(day: str) -> list[int]:
        calls["extract"] += 1
        return [int(part) for part in day.split("-")]

    @task(cache_policy=RESUME)
    def transform(rows: list[int]) -> int:
        calls["transform"] += 1
        return sum(rows)

    @task(cache_policy=RESUME)
    def load(total: int) -> str:
        calls["load"] += 1
        if fail["load"]:
            raise RuntimeError("warehouse unavailable")
        return f"loaded {total}"

    @resumable(correlation="{flow_name}-{parameters[day]}")
    @flow(name=f"daily-{uuid.uuid4().hex[:6]}", result_storage=block)
    def daily(day: str) -> str:
        return load(transform(extract(day)))

    return daily, calls, fail


def test_new_flow_run_with_same_correlation_resumes_from_failed_one(
    block: CheckpointStorage, store_url: str
) -> None:
    daily, calls, fail = day_pipeline(block)

    failed = daily(day="2026-11-22", return_state=True)
    assert failed.is_failed(), failed
    assert dict(calls) == {"extract": 1, "transform": 1, "load": 1}
    kept = records(store_url)
    correlation = ckpt_core.keys.encode_component(f"{daily.name}-2026-11-22")
    assert kept and all(f"/corr/{correlation}/" in key for key in kept), kept

    fail["load"] = False
    second = daily(day="2026-11-22", return_state=True)
    assert second.is_completed(), second
    assert second.state_details.flow_run_id != failed.state_details.flow_run_id
    assert second.result() == "loaded 2059"
    assert dict(calls) == {"extract": 1, "transform": 1, "load": 2}
    assert records(store_url) == []

    # Another day is another correlation: nothing to resume from.
    third = daily(day="2026-11-23", return_state=True)
    assert third.result() == "loaded 2060"
    assert dict(calls) == {"extract": 2, "transform": 2, "load": 3}


def test_records_are_ckpt_records_kept_after_final_failure(
    block: CheckpointStorage, store_url: str
) -> None:
    daily, _calls, _fail = day_pipeline(block)
    failed = daily(day="2026-01-02", return_state=True)
    assert failed.is_failed(), failed

    correlation = f"{daily.name}-2026-01-02"
    ctx = RunContext(run_id="inspector", correlation_id=correlation)
    reader = CheckpointManager(store_url, namespace=daily.name, allow_pickle=False)
    infos = reader.list(ctx)
    assert {i.scope for i in infos} == {Scope.CORRELATION}
    by_task = {i.node.split(":")[0].rsplit(".", 1)[-1]: i for i in infos if ":" in i.node}
    assert set(by_task) == {"extract", "transform"}  # load failed: no result to resume from

    # Each is a checksummed ckpt record holding Prefect's serialized result record.
    store = open_store(store_url)
    raw = store.get(by_task["extract"].key)
    assert raw is not None
    opened = open_record(raw, by_task["extract"].key, None)
    assert opened.header["codec"] == "raw"
    assert opened.header["corr"] == correlation
    assert opened.checksum.startswith("blake3:")
    payload = reader.load(ctx, by_task["extract"].node)
    assert ResultRecord.deserialize(payload).result == [2026, 1, 2]
    assert ResultRecord.deserialize(reader.load(ctx, by_task["transform"].node)).result == 2029

    # A flipped payload byte is detected, never handed back as data.
    damaged = bytearray(bytes(raw))
    damaged[-40] ^= 0xFF
    store.put(by_task["extract"].key, bytes(damaged))
    with pytest.raises(CheckpointCorrupted, match="checksum"):
        reader.load(ctx, by_task["extract"].node)


def test_corrupted_record_is_recomputed_not_returned(
    block: CheckpointStorage, store_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    daily, calls, fail = day_pipeline(block)
    assert daily(day="2026-03-04", return_state=True).is_failed()
    store = open_store(store_url)
    extract_key = next(k for k in records(store_url) if ".extract%3A" in k)
    damaged = bytearray(bytes(store.get(extract_key) or b""))
    damaged[-40] ^= 0xFF
    store.put(extract_key, bytes(damaged))

    fail["load"] = False
    with caplog.at_level(logging.WARNING, logger="ckpt.prefect"):
        state = daily(day="2026-03-04", return_state=True)

    assert state.result() == "loaded 2033"
    assert dict(calls) == {"extract": 2, "transform": 1, "load": 2}
    assert any(
        "corrupted" in r.getMessage() and extract_key in r.getMessage() for r in caplog.records
    )


def test_keep_retention_leaves_records_after_success(
    block: CheckpointStorage, store_url: str
) -> None:
    @task(cache_policy=RESUME)
    def one() -> int:
        return 1

    @resumable(retention="keep")
    @flow(result_storage=block)
    def kept() -> int:
        return one()

    state = kept(return_state=True)
    assert state.result() == 1
    flow_run_id = str(state.state_details.flow_run_id)
    keys = records(store_url)
    assert keys and all(f"/corr/{flow_run_id}/" in k for k in keys), keys


# -- the block on its own ----------------------------------------------------------------------
def test_block_type_registers_with_secret_fields(prefect_server: str) -> None:
    # What `prefect block register -m ckpt_prefect` finds and registers.
    found = [cls for _, cls in inspect.getmembers(ckpt_prefect) if Block.is_block_class(cls)]
    assert found == [CheckpointStorage]
    CheckpointStorage.register_type_and_schema()
    with get_client(sync_client=True) as client:
        block_type = client.read_block_type_by_slug("ckpt-storage")
    assert block_type.name == "ckpt Storage"
    assert set(CheckpointStorage.get_block_capabilities()) >= {"read-path", "write-path"}
    schema = CheckpointStorage.model_json_schema()
    assert set(schema["secret_fields"]) == {"storage_options.*", "signing_key", "encryption_key"}


def test_loaded_block_signs_records_and_hides_secrets(prefect_server: str, store_url: str) -> None:
    CheckpointStorage(
        url="redis://user:hunter2@localhost:6379/0",
        storage_options={"password": "s3cr3t"},
        signing_key="k3y",
    ).save("secrets-check", overwrite=True)
    loaded = CheckpointStorage.load("secrets-check")
    text = repr(loaded) + str(loaded)
    assert "hunter2" not in text and "s3cr3t" not in text and "k3y" not in text
    assert loaded.storage_options.get_secret_value() == {"password": "s3cr3t"}

    signed = CheckpointStorage(url=store_url, signing_key="k3y")
    signed.save("signed", overwrite=True)

    @task(cache_policy=RESUME)
    def value() -> int:
        return 5

    @resumable(retention="keep")
    @flow(result_storage=signed)
    def signs() -> int:
        return value()

    state = signs(return_state=True)
    assert state.result() == 5
    key = records(store_url)[0]
    raw = open_store(store_url).get(key)
    assert raw is not None
    assert open_record(raw, key, b"k3y").signed
    with pytest.raises(CheckpointCorrupted, match="signature"):
        open_record(raw, key, b"another key")


def test_block_docstring_example_runs(prefect_server: str, store_url: str) -> None:
    doc = inspect.getdoc(CheckpointStorage) or ""
    code = textwrap.dedent(doc.split("```python\n", 1)[1].split("```", 1)[0])
    name = f"doc-{uuid.uuid4().hex[:8]}"
    code = code.replace("s3://my-bucket/ckpt", store_url).replace('"prod"', repr(name))
    namespace: dict[str, Any] = {}
    exec(compile(code, "block_docstring_example", "exec"), namespace)

    assert namespace["nightly"](day="2026-11-22") == 6
    assert CheckpointStorage.load(name).url == store_url
    assert records(store_url) == []


def test_published_as_a_prefect_collection() -> None:
    """Workers find the block class for `ckpt-storage/<name>` without importing ckpt_prefect
    (a flow using only PREFECT_RESULTS_DEFAULT_STORAGE_BLOCK never imports it)."""
    found = {ep.name: ep.value for ep in entry_points(group="prefect.collections")}
    assert found.get("ckpt_prefect") == "ckpt_prefect", found


def test_block_outside_a_run_says_why(store_url: str) -> None:
    unsaved = CheckpointStorage(url=store_url)
    with pytest.raises(OutsideFlowRun, match="no Prefect flow or task run is active"):
        unsaved.read_path("anything", _sync=True)
    with pytest.raises(OutsideFlowRun):
        asyncio.run(unsaved.awrite_path("anything", b"x"))
    with pytest.raises(TypeError, match="aread_path"):
        unsaved.read_path("anything", _sync=False)


def test_correlation_template_errors_name_the_parameter() -> None:
    @flow
    def by_day(day: str) -> None: ...

    with pytest.raises(ValueError, match=r"parameter 'date'.*its parameters: day"):
        resumable(correlation="{flow_name}-{parameters[date]}")(by_day)
    with pytest.raises(ValueError, match=r"\{flow_id\}"):
        resumable(correlation="{flow_id}")(by_day)
    with pytest.raises(TypeError, match="not a ckpt-storage block"):
        resumable(storage="local-file-system/x")(by_day)


# -- the example, run the documented way --------------------------------------------------------
def test_example_runs_with_default_block_from_environment(
    prefect_server: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """examples/prefect: the block created from env vars, PREFECT_RESULTS_DEFAULT_STORAGE_BLOCK
    from the environment (as prefect.yaml sets it), a failed run, then `prefect flow-run retry`."""
    store = tmp_path / "example-store"
    env = {
        **os.environ,
        "PREFECT_API_URL": prefect_server,
        "CKPT_URL": str(store),
        "CKPT_BLOCK_NAME": "example-test",
        "PREFECT_RESULTS_DEFAULT_STORAGE_BLOCK": "ckpt-storage/example-test",
        "PREFECT_LOGGING_LEVEL": "WARNING",
        "PREFECT_HOME": str(tmp_path / "prefect-home"),
    }
    example = REPO / "examples" / "prefect"

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            args, cwd=REPO, env=env, capture_output=True, text=True, timeout=240, check=False
        )

    # create_block.py in this process (it only saves a block): one interpreter start less.
    for name in ("CKPT_URL", "CKPT_BLOCK_NAME"):
        monkeypatch.setenv(name, env[name])
    with pytest.raises(SystemExit) as created:
        runpy.run_path(str(example / "create_block.py"), run_name="__main__")
    assert created.value.code == 0
    assert CheckpointStorage.load("example-test").url == str(store)

    first = run(
        sys.executable, str(example / "flow.py"), "--date", "2026-11-22", "--fail-at", "load"
    )
    assert first.returncode != 0, first.stdout
    # retries=1 in-process: the second attempt runs only `load` (which --fail-at breaks again).
    assert _steps(first.stdout) == ["extract", "transform", "load", "load"], first.stdout
    flow_run_id = json.loads(first.stdout.strip().splitlines()[-1])["flow_run_id"]

    retried = run(
        sys.executable,
        "-m",
        "prefect",
        "flow-run",
        "retry",
        flow_run_id,
        "--entrypoint",
        "examples/prefect/flow.py:nightly",
    )
    assert retried.returncode == 0, retried.stdout + retried.stderr
    assert _steps(retried.stdout) == ["load"], retried.stdout
    assert records(str(store)) == []


def _steps(stdout: str) -> list[str]:
    return [line.split()[-1] for line in stdout.splitlines() if line.startswith("running step")]


def test_example_deployment_sets_the_default_block() -> None:
    spec = yaml.safe_load((REPO / "examples" / "prefect" / "prefect.yaml").read_text())
    (deployment,) = spec["deployments"]
    env = deployment["work_pool"]["job_variables"]["env"]
    assert env["PREFECT_RESULTS_DEFAULT_STORAGE_BLOCK"] == "ckpt-storage/prod"
    path, _, name = deployment["entrypoint"].partition(":")
    loaded = load_flow_from_entrypoint(str(REPO / path) + ":" + name)
    assert loaded.name == "nightly"
    assert any(getattr(h, "__name__", "") == "ckpt_running" for h in loaded.on_running_hooks)

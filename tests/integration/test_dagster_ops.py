"""CheckpointIOManager with real Dagster runs: re-execution from failure, re-execution of a
re-execution, dynamic outputs, op retries, ALL_STEPS re-runs with ``@checkpointed`` in op
bodies, output metadata. Each run uses a real ``DagsterInstance`` in a temp dir and
``execute_job`` (``reconstructable`` jobs from :mod:`tests.integration.dagster_jobs`).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from dagster import (
    DagsterEventType,
    DagsterInstance,
    ReexecutionOptions,
    execute_job,
    reconstructable,
)

from ckpt_core import open_store
from ckpt_dagster import METADATA_KEYS

from . import dagster_jobs as jobs
from .dagster_fixtures import temp_instance


@dataclass
class Runner:
    """Executes the test jobs on one temp ``DagsterInstance``; ops count calls in ``calls_dir``
    and fail as ``fails`` says (both passed as run tags, see :mod:`.dagster_jobs`)."""

    instance: DagsterInstance
    calls_dir: Path
    fails: str = ""

    def __call__(
        self,
        job_fn: Any,
        url: str | None = None,
        parent: str | None = None,
        from_failure: bool = True,
        **fields: Any,
    ) -> Any:
        """A fresh run on ``url`` (IO manager ``fields`` in run config), or a re-execution of
        ``parent`` (which reuses the parent's run config). The result is returned unopened:
        ``with runner(...) as result`` loads outputs through the IO manager."""
        options = None
        if parent is not None:
            options = (
                ReexecutionOptions.from_failure(parent, self.instance)
                if from_failure
                else ReexecutionOptions(parent_run_id=parent)
            )
        return execute_job(
            reconstructable(job_fn),
            instance=self.instance,
            run_config=jobs.io_run_config(url, **fields) if url is not None else None,
            reexecution_options=options,
            tags=jobs.control_tags(self.calls_dir, self.fails),
        )

    def calls(self, *names: str) -> tuple[int, ...]:
        return tuple(jobs.calls(self.calls_dir, name) for name in names)


@pytest.fixture
def dagster(tmp_path: Path) -> Iterator[Runner]:
    calls_dir = tmp_path / "calls"
    calls_dir.mkdir()
    with temp_instance(tmp_path) as instance:
        yield Runner(instance, calls_dir)


def executed_steps(result: Any) -> set[str]:
    return {e.step_key for e in result.all_events if e.event_type == DagsterEventType.STEP_START}


def handled_metadata(result: Any, step_key: str, output: str = "result") -> dict[str, Any]:
    for event in result.all_events:
        if (
            event.event_type == DagsterEventType.HANDLED_OUTPUT
            and event.step_key == step_key
            and event.event_specific_data.output_name == output
        ):
            return {k: v.value for k, v in event.event_specific_data.metadata.items()}
    raise AssertionError(f"no HANDLED_OUTPUT event for {step_key}.{output}")


def family_keys(url: str, namespace: str, family: str) -> list[str]:
    store = open_store(url)
    try:
        return sorted(o.key for o in store.list(f"{namespace}/corr/{family}/"))
    finally:
        store.close()


# -- re-execution from failure ---------------------------------------------------------------
def test_reexecution_from_failure_runs_only_the_failed_op(dagster: Runner, store_url: str) -> None:
    dagster.fails = "c=2"  # c fails in the run and in the first re-execution

    with dagster(jobs.three_ops, store_url) as first:
        assert not first.success
        assert executed_steps(first) == {"a", "b", "c"}
        meta = handled_metadata(first, "b")
    root = first.run_id

    with dagster(jobs.three_ops, parent=root) as second:
        assert not second.success
        assert executed_steps(second) == {"c"}
        assert second.dagster_run.root_run_id == root

    # a re-execution of a re-execution: still the same family, still only c
    with dagster(jobs.three_ops, parent=second.run_id) as third:
        assert third.success
        assert executed_steps(third) == {"c"}
        assert third.dagster_run.root_run_id == root
        assert third.dagster_run.parent_run_id == second.run_id
        assert third.output_for_node("c") == (1 + 10) * 2

    assert dagster.calls("a", "b", "c") == (1, 1, 3)
    # every output of the family under one prefix, keyed by the root run id
    assert family_keys(store_url, "three_ops", root) == [
        f"three_ops/corr/{root}/a.result",
        f"three_ops/corr/{root}/b.result",
        f"three_ops/corr/{root}/c.result",
    ]

    # metadata on the output events: URI, size, codec, checksum, scope
    assert set(METADATA_KEYS) <= set(meta)
    assert meta["ckpt/uri"] == f"{store_url}/three_ops/corr/{root}/b.result"
    assert meta["ckpt/size"] == Path(meta["ckpt/uri"]).stat().st_size
    assert meta["ckpt/codec"] == "json"
    assert meta["ckpt/checksum"].startswith("blake3:")
    assert meta["ckpt/scope"] == "run family"


def test_a_fresh_run_does_not_reuse_another_familys_outputs(
    dagster: Runner, store_url: str
) -> None:
    with dagster(jobs.three_ops, store_url) as first:
        assert first.success
    with dagster(jobs.three_ops, store_url) as second:
        assert second.success
        assert executed_steps(second) == {"a", "b", "c"}
    assert dagster.calls("a") == (2,)


def test_missing_upstream_checkpoint_fails_naming_step_and_key(
    dagster: Runner, store_url: str
) -> None:
    dagster.fails = "c=1"
    with dagster(jobs.three_ops, store_url) as first:
        assert not first.success
    root = first.run_id
    # someone deleted b's record between the attempts
    store = open_store(store_url)
    store.delete(f"three_ops/corr/{root}/b.result")
    store.close()

    with dagster(jobs.three_ops, parent=root) as second:
        assert not second.success
        failure = second.failure_data_for_node("c")
        assert failure is not None
        message = failure.error.cause.message if failure.error.cause else failure.error.message
    assert "CheckpointNotFound" in message
    assert "step 'c' cannot load its input 'y'" in message
    assert "output 'result' of step 'b'" in message
    assert f"three_ops/corr/{root}/b.result" in message
    assert dagster.calls("c") == (1,)  # c never ran without its input


# -- multiprocess executor ---------------------------------------------------------------------
@pytest.fixture(params=["local", "s3", "redis"])
def shared_store(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[tuple[str, dict[str, Any]]]:
    """``(url, io manager fields)`` of a store every step process reaches."""
    kind = request.param
    if kind == "local":
        yield str(tmp_path / "store"), {}
        return
    unique = f"dagster-{uuid.uuid4().hex[:12]}"
    if kind == "s3":
        server = request.getfixturevalue("s3_server")
        yield f"s3://{server.bucket}/{unique}", {"storage_options": server.storage_options()}
        return
    url = request.getfixturevalue("redis_url")
    yield url, {"namespace": unique}
    store = open_store(url)
    try:
        store.delete_prefix(f"{unique}/")
    finally:
        store.close()


def test_multiprocess_executor_resumes_from_a_shared_store(
    dagster: Runner, shared_store: tuple[str, dict[str, Any]]
) -> None:
    url, fields = shared_store
    dagster.fails = "c=1"
    with dagster(jobs.three_ops_multiprocess, url, **fields) as first:
        assert not first.success
        step_pids = {e.pid for e in first.all_events if e.event_type == DagsterEventType.STEP_START}
        assert len(step_pids) == 3 and os.getpid() not in step_pids  # one process per step
    with dagster(jobs.three_ops_multiprocess, parent=first.run_id) as second:
        assert second.success
        assert executed_steps(second) == {"c"}
        assert second.output_for_node("c") == 22
        meta = handled_metadata(second, "c")
    assert dagster.calls("a", "b", "c") == (1, 1, 2)
    namespace = fields.get("namespace", "three_ops_multiprocess")
    assert meta["ckpt/uri"].endswith(f"{namespace}/corr/{first.run_id}/c.result")
    secret = fields.get("storage_options", {}).get("secret")
    assert secret is None or secret not in meta["ckpt/uri"]


# -- dynamic outputs ---------------------------------------------------------------------------
def test_dynamic_outputs_resume_per_mapping_key(dagster: Runner, store_url: str) -> None:
    dagster.fails = "process_k2=1"
    with dagster(jobs.dynamic_job, store_url) as first:
        assert not first.success
        assert executed_steps(first) == {"emit", "process[k1]", "process[k2]", "process[k3]"}
    root = first.run_id

    with dagster(jobs.dynamic_job, parent=root) as second:
        assert second.success
        assert executed_steps(second) == {"process[k2]", "collect"}
        assert second.output_for_node("collect") == (1 + 2 + 3) * 100

    assert dagster.calls("emit") == (1,)
    assert dagster.calls("process_k1", "process_k2", "process_k3") == (1, 2, 1)
    keys = family_keys(store_url, "dynamic_job", root)
    assert f"dynamic_job/corr/{root}/emit.result%5Bk2%5D" in keys  # emit.result[k2]
    assert f"dynamic_job/corr/{root}/process%5Bk2%5D.result" in keys  # process[k2].result


# -- op RetryPolicy and @checkpointed in op bodies -----------------------------------------------
def test_op_retry_policy_rewrites_outputs_and_resumes_inner_work(
    dagster: Runner, store_url: str
) -> None:
    dagster.fails = "flaky_two_outputs=1,enrich_all=1"
    with dagster(jobs.retry_job, store_url) as result:
        assert result.success
        assert result.output_for_node("enrich_all") == [15000, 16000, 17000, 18000]
        retries = [e for e in result.all_events if e.event_type == DagsterEventType.STEP_RESTARTED]
        assert len(retries) == 2
    root = result.run_id

    assert dagster.calls("flaky_two_outputs", "enrich_all") == (2, 2)
    # the retry of enrich_all loaded the two items its first attempt finished
    assert dagster.calls("enrich_15", "enrich_16", "enrich_17", "enrich_18") == (1, 1, 1, 1)
    keys = family_keys(store_url, "retry_job", root)
    # the retried op wrote "first" twice to one key: one record per output, no duplicates
    op_records = [k for k in keys if "%3A" not in k]  # @checkpointed nodes contain ':'
    assert op_records == [
        f"retry_job/corr/{root}/enrich_all.result",
        f"retry_job/corr/{root}/flaky_two_outputs.first",
        f"retry_job/corr/{root}/flaky_two_outputs.second",
    ]
    inner = [k for k in keys if "%3A" in k]
    assert len(inner) == 4 and all("dagster_jobs.enrich%3A" in k for k in inner)


def test_all_steps_reexecution_skips_finished_work_inside_ops(
    dagster: Runner, store_url: str
) -> None:
    dagster.fails = "score_all=1"
    rows = ("enrich_1", "enrich_2", "enrich_3", "enrich_4", "enrich_5")
    with dagster(jobs.batch_job, store_url) as first:
        assert not first.success
    assert dagster.calls(*rows) == (1, 1, 1, 0, 0)

    with dagster(jobs.batch_job, parent=first.run_id, from_failure=False) as second:
        assert second.success
        assert executed_steps(second) == {"load_rows", "score_all"}  # ALL_STEPS
        assert second.output_for_node("score_all") == [1000, 2000, 3000, 4000, 5000]
    assert dagster.calls("load_rows") == (2,)
    # rows 1-3 were loaded from the run family, 4-5 computed once
    assert dagster.calls(*rows) == (1, 1, 1, 1, 1)

    # a fresh run is a new family: nothing to resume
    with dagster(jobs.batch_job, store_url) as third:
        assert third.success
    assert dagster.calls(*rows) == (2, 2, 2, 2, 2)

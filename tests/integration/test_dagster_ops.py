"""CheckpointIOManager with real Dagster runs: re-execution from failure, re-execution of a
re-execution, dynamic outputs, op retries, ALL_STEPS re-runs with ``@checkpointed`` in op
bodies, output metadata. Each run uses a real ``DagsterInstance`` in a temp dir and
``execute_job`` (``reconstructable`` jobs from :mod:`tests.integration.dagster_jobs`).
"""

from __future__ import annotations

from collections.abc import Iterator
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


@pytest.fixture
def instance(tmp_path: Path) -> Iterator[DagsterInstance]:
    home = tmp_path / "dagster_home"
    home.mkdir()
    with DagsterInstance.local_temp(str(home)) as inst:
        yield inst


@pytest.fixture
def counts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Directory where test ops record their calls (shared with step processes via env)."""
    path = tmp_path / "calls"
    path.mkdir()
    monkeypatch.setenv(jobs.TEST_DIR_ENV, str(path))
    return path


@pytest.fixture
def store_url(tmp_path: Path) -> str:
    return str(tmp_path / "store")


def run(
    job_fn: Any,
    instance: DagsterInstance,
    url: str | None = None,
    parent: str | None = None,
    from_failure: bool = True,
    **fields: Any,
) -> Any:
    """Execute ``job_fn`` (a fresh run, or a re-execution of ``parent``); returns the result,
    still open so outputs can be loaded through the IO manager."""
    options = None
    if parent is not None:
        options = (
            ReexecutionOptions.from_failure(parent, instance)
            if from_failure
            else ReexecutionOptions(parent_run_id=parent)
        )
    run_config = jobs.io_run_config(url, **fields) if url is not None and parent is None else None
    return execute_job(
        reconstructable(job_fn),
        instance=instance,
        run_config=run_config,
        reexecution_options=options,
    )


def executed_steps(result: Any) -> set[str]:
    return {
        e.step_key for e in result.all_events if e.event_type == DagsterEventType.STEP_START
    }


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
def test_reexecution_from_failure_runs_only_the_failed_op(
    instance: DagsterInstance, counts: Path, store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(jobs.FAILS_ENV, "c=2")  # c fails in the run and in the first re-execution

    with run(jobs.three_ops, instance, store_url) as first:
        assert not first.success
        assert executed_steps(first) == {"a", "b", "c"}
    root = first.run_id

    with run(jobs.three_ops, instance, parent=root) as second:
        assert not second.success
        assert executed_steps(second) == {"c"}
        assert second.dagster_run.root_run_id == root

    # a re-execution of a re-execution: still the same family, still only c
    with run(jobs.three_ops, instance, parent=second.run_id) as third:
        assert third.success
        assert executed_steps(third) == {"c"}
        assert third.dagster_run.root_run_id == root
        assert third.dagster_run.parent_run_id == second.run_id
        assert third.output_for_node("c") == (1 + 10) * 2

    assert (jobs.calls(counts, "a"), jobs.calls(counts, "b"), jobs.calls(counts, "c")) == (1, 1, 3)
    # every output of the family under one prefix, keyed by the root run id
    assert family_keys(store_url, "three_ops", root) == [
        f"three_ops/corr/{root}/a.result",
        f"three_ops/corr/{root}/b.result",
        f"three_ops/corr/{root}/c.result",
    ]

    # metadata on the output events: redacted URI, size, codec, checksum, scope
    meta = handled_metadata(first, "b")
    assert set(METADATA_KEYS) <= set(meta)
    assert meta["ckpt/uri"] == f"{store_url}/three_ops/corr/{root}/b.result"
    assert meta["ckpt/size"] == Path(meta["ckpt/uri"]).stat().st_size
    assert meta["ckpt/codec"] == "json"
    assert meta["ckpt/checksum"].startswith("sha256:")
    assert meta["ckpt/scope"] == "run family"


def test_a_fresh_run_does_not_reuse_another_familys_outputs(
    instance: DagsterInstance, counts: Path, store_url: str
) -> None:
    with run(jobs.three_ops, instance, store_url) as first:
        assert first.success
    with run(jobs.three_ops, instance, store_url) as second:
        assert second.success
        assert executed_steps(second) == {"a", "b", "c"}
    assert jobs.calls(counts, "a") == 2


def test_missing_upstream_checkpoint_fails_naming_step_and_key(
    instance: DagsterInstance, counts: Path, store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(jobs.FAILS_ENV, "c=1")
    with run(jobs.three_ops, instance, store_url) as first:
        assert not first.success
    root = first.run_id
    # someone deleted b's record between the attempts
    store = open_store(store_url)
    store.delete(f"three_ops/corr/{root}/b.result")
    store.close()

    with run(jobs.three_ops, instance, parent=root) as second:
        assert not second.success
        failure = second.failure_data_for_node("c")
        assert failure is not None
        message = failure.error.cause.message if failure.error.cause else failure.error.message
    assert "CheckpointNotFound" in message
    assert "step 'c' cannot load its input 'y'" in message
    assert "output 'result' of step 'b'" in message
    assert f"three_ops/corr/{root}/b.result" in message
    assert jobs.calls(counts, "c") == 1  # c never ran without its input


# -- multiprocess executor ---------------------------------------------------------------------
def test_multiprocess_executor_resumes_from_a_shared_local_store(
    instance: DagsterInstance, counts: Path, store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(jobs.FAILS_ENV, "c=1")
    with run(jobs.three_ops_multiprocess, instance, store_url) as first:
        assert not first.success
    with run(jobs.three_ops_multiprocess, instance, parent=first.run_id) as second:
        assert second.success
        assert executed_steps(second) == {"c"}
        assert second.output_for_node("c") == 22
    assert (jobs.calls(counts, "a"), jobs.calls(counts, "b"), jobs.calls(counts, "c")) == (1, 1, 2)


# -- dynamic outputs ---------------------------------------------------------------------------
def test_dynamic_outputs_resume_per_mapping_key(
    instance: DagsterInstance, counts: Path, store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(jobs.FAILS_ENV, "process_k2=1")
    with run(jobs.dynamic_job, instance, store_url) as first:
        assert not first.success
        assert executed_steps(first) == {"emit", "process[k1]", "process[k2]", "process[k3]"}
    root = first.run_id

    with run(jobs.dynamic_job, instance, parent=root) as second:
        assert second.success
        assert executed_steps(second) == {"process[k2]", "collect"}
        assert second.output_for_node("collect") == (1 + 2 + 3) * 100

    assert jobs.calls(counts, "emit") == 1
    assert [jobs.calls(counts, f"process_{k}") for k in jobs.MAPPING_KEYS] == [1, 2, 1]
    keys = family_keys(store_url, "dynamic_job", root)
    assert f"dynamic_job/corr/{root}/emit.result%5Bk2%5D" in keys  # emit.result[k2]
    assert f"dynamic_job/corr/{root}/process%5Bk2%5D.result" in keys  # process[k2].result


# -- op RetryPolicy and @checkpointed in op bodies -----------------------------------------------
def test_op_retry_policy_rewrites_outputs_and_resumes_inner_work(
    instance: DagsterInstance, counts: Path, store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(jobs.FAILS_ENV, "flaky_two_outputs=1,enrich_all=1")
    with run(jobs.retry_job, instance, store_url) as result:
        assert result.success
        assert result.output_for_node("enrich_all") == [15000, 16000, 17000, 18000]
        retries = [e for e in result.all_events if e.event_type == DagsterEventType.STEP_RESTARTED]
        assert len(retries) == 2
    root = result.run_id

    assert jobs.calls(counts, "flaky_two_outputs") == 2
    assert jobs.calls(counts, "enrich_all") == 2
    # the retry of enrich_all loaded the two items its first attempt finished
    assert [jobs.calls(counts, f"enrich_{i}") for i in (15, 16, 17, 18)] == [1, 1, 1, 1]
    keys = family_keys(store_url, "retry_job", root)
    # the retried op wrote "first" twice to one key: one record per output, no duplicates
    op_records = [k for k in keys if ":" not in k.rsplit("/", 1)[1]]
    assert op_records == [
        f"retry_job/corr/{root}/enrich_all.result",
        f"retry_job/corr/{root}/flaky_two_outputs.first",
        f"retry_job/corr/{root}/flaky_two_outputs.second",
    ]
    inner = [k for k in keys if "enrich%3A" in k]
    assert len(inner) == 4 and all("dagster_jobs.enrich" in k for k in inner)


def test_all_steps_reexecution_skips_finished_work_inside_ops(
    instance: DagsterInstance, counts: Path, store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(jobs.FAILS_ENV, "score_all=1")
    with run(jobs.batch_job, instance, store_url) as first:
        assert not first.success
    assert [jobs.calls(counts, f"enrich_{r}") for r in (1, 2, 3, 4, 5)] == [1, 1, 1, 0, 0]

    with run(jobs.batch_job, instance, parent=first.run_id, from_failure=False) as second:
        assert second.success
        assert executed_steps(second) == {"load_rows", "score_all"}  # ALL_STEPS
        assert second.output_for_node("score_all") == [1000, 2000, 3000, 4000, 5000]
    assert jobs.calls(counts, "load_rows") == 2
    # rows 1-3 were loaded from the run family, 4-5 computed once
    assert [jobs.calls(counts, f"enrich_{r}") for r in (1, 2, 3, 4, 5)] == [1, 1, 1, 1, 1]

    # a fresh run is a new family: nothing to resume
    with run(jobs.batch_job, instance, store_url) as third:
        assert third.success
    assert [jobs.calls(counts, f"enrich_{r}") for r in (1, 2, 3, 4, 5)] == [2, 2, 2, 2, 2]

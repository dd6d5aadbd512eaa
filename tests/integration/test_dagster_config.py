"""CheckpointIOManager configuration and lifecycle: key mapping, no IO at construction, EnvVar
secrets (fields and storage options), redaction, signing, run-config YAML, the clean-up sensor
(run families go, assets stay), and the ``examples/dagster`` project."""

from __future__ import annotations

import gc
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from dagster import (
    DagsterEventType,
    DagsterInstance,
    Definitions,
    EnvVar,
    SkipReason,
    build_input_context,
    build_output_context,
    build_run_status_sensor_context,
    execute_job,
    materialize,
    reconstructable,
)

from ckpt_core import (
    CheckpointCorrupted,
    CheckpointNotFound,
    StoreConfigError,
    StoreUnavailable,
    open_store,
    register_store,
)
from ckpt_dagster import CheckpointIOManager, checkpoint_cleanup_sensor
from ckpt_dagster.keys import asset_node, asset_record_key, op_output_node

from . import dagster_jobs as jobs

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "dagster"


@pytest.fixture
def recording_store() -> Iterator[type[jobs.RecordingStore]]:
    register_store("ckptrec", "tests.integration.dagster_jobs:RecordingStore")
    jobs.RecordingStore.opened.clear()
    yield jobs.RecordingStore
    jobs.RecordingStore.opened.clear()


def keys_under(url: str, prefix: str) -> list[str]:
    store = open_store(url)
    try:
        return sorted(o.key for o in store.list(prefix))
    finally:
        store.close()


# -- key mapping -----------------------------------------------------------------------------
def test_node_names_keep_every_dagster_identity_apart() -> None:
    assert op_output_node("c", "result") == "c.result"
    assert op_output_node("emit", "result", "k2") == "emit.result[k2]"
    assert op_output_node("graph.inner", "out") == "graph.inner.out"
    assert op_output_node("process[k2]", "result") == "process[k2].result"
    # asset key components may contain "/": ["a/b"] and ["a", "b"] are different assets
    assert asset_node(["a/b"]) != asset_node(["a", "b"])
    assert asset_node(["a", "b"]) == "a%2Fb/value"
    assert asset_node(["a"], "2024-01-01") == "a/partitions/2024-01-01"
    # hostile partition keys stay one component and cannot climb out of the asset
    assert asset_node(["a"], "../../etc") == "a/partitions/%2E.%2F..%2Fetc"
    assert asset_node(["a"], "") == "a/partitions/~"  # an empty partition is not the asset
    assert asset_record_key("ns", ["x"], None) == "ns/assets/x/value"


def test_contexts_built_for_unit_tests_round_trip(tmp_path: Path) -> None:
    """Users test their ops with Dagster's context builders: no run, no step context."""
    iom = CheckpointIOManager(url=str(tmp_path / "store"), namespace="unit")
    upstream = build_output_context(step_key="extract", name="result", run_id="run-1")
    iom.handle_output(upstream, {"rows": 3})
    assert set(upstream.get_logged_metadata()) >= {"ckpt/uri", "ckpt/checksum"}
    loaded = iom.load_input(build_input_context(upstream_output=upstream, name="rows"))
    assert loaded == {"rows": 3}
    assert keys_under(str(tmp_path / "store"), "unit/") == ["unit/corr/run-1/extract.result"]

    missing = build_output_context(step_key="other", name="result", run_id="run-1")
    with pytest.raises(CheckpointNotFound, match="output 'result' of step 'other'") as caught:
        iom.load_input(build_input_context(upstream_output=missing, name="rows"))
    assert caught.value.key == "unit/corr/run-1/other.result"
    # Dagster's built contexts have finalizers; run them now rather than during a later
    # ast.parse (pytest's assertion rewriting), where CPython 3.11 reports a spurious
    # "AST constructor recursion depth mismatch" SystemError.
    del upstream, missing, caught
    gc.collect()


# -- construction, EnvVar, redaction ----------------------------------------------------------
def test_construction_does_no_io_and_secrets_resolve_at_run_time(
    recording_store: type[jobs.RecordingStore],
    instance: DagsterInstance,
    counts: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CKPT_TEST_STORE_TOKEN", "tok-hunter2")
    monkeypatch.setenv("CKPT_TEST_STORE_URL", "ckptrec://admin:pw-hunter2@store.example/ckpt")
    iom = CheckpointIOManager(
        url=EnvVar("CKPT_TEST_STORE_URL"),
        storage_options={"token": EnvVar("CKPT_TEST_STORE_TOKEN"), "region": "eu-west-1"},
    )
    Definitions(assets=[jobs.raw_orders], resources={"io_manager": iom})
    assert recording_store.opened == []  # nothing opened by building definitions

    result = materialize(
        [jobs.raw_orders],
        resources={"io_manager": iom},
        instance=instance,
        tags=jobs.control_tags(counts),
    )
    assert result.success
    assert recording_store.opened == [
        (
            "ckptrec://admin:pw-hunter2@store.example/ckpt",
            {"token": "tok-hunter2", "region": "eu-west-1"},
        )
    ]
    (materialization,) = result.asset_materializations_for_node("raw_orders")
    uri = materialization.metadata["ckpt/uri"].value
    assert uri == "ckptrec://admin:***@store.example/ckpt/dagster/assets/raw_orders/value"
    # the run's config, as Dagster stores it, names the env vars but holds no secret value
    run_config = str(instance.get_run_by_id(result.run_id).run_config)
    assert "hunter2" not in run_config


def test_missing_env_var_is_named_in_the_error(tmp_path: Path) -> None:
    iom = CheckpointIOManager(
        url=str(tmp_path / "store"),
        storage_options={"token": EnvVar("CKPT_TEST_NEVER_SET_TOKEN")},
    )
    with pytest.raises(StoreConfigError, match="CKPT_TEST_NEVER_SET_TOKEN") as caught:
        iom.delete_run_family("job", "root-run")
    assert "storage_options.token" in str(caught.value)


def test_repr_hides_credentials() -> None:
    iom = CheckpointIOManager(
        url="redis://user:pw-hunter2@127.0.0.1:1/0",
        signing_key="sk-hunter2",
        storage_options={"secret": "s3-hunter2", "client_kwargs": {"aws_session_token": "t-x"}},
    )
    text = repr(iom)
    assert "hunter2" not in text and "t-x" not in text
    assert "redis://user:***@127.0.0.1:1/0" in text


def test_unreachable_store_fails_at_first_use_naming_the_redacted_url(
    instance: DagsterInstance, counts: Path
) -> None:
    iom = CheckpointIOManager(url="redis://user:pw-hunter2@127.0.0.1:1/0")  # nothing listens
    result = materialize(
        [jobs.raw_orders],
        resources={"io_manager": iom},
        instance=instance,
        tags=jobs.control_tags(counts),
        raise_on_error=False,
    )
    assert not result.success
    failure = result.failure_data_for_node("raw_orders")
    assert failure is not None
    text = str(failure.error.to_string())
    assert StoreUnavailable.__name__ in text
    assert "127.0.0.1:1" in text and "hunter2" not in text


def test_signing_key_from_env_refuses_records_signed_with_another_key(
    tmp_path: Path, instance: DagsterInstance, counts: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = str(tmp_path / "store")
    monkeypatch.setenv("CKPT_TEST_SIGNING_KEY", "key-one")
    signed = CheckpointIOManager(url=url, signing_key=EnvVar("CKPT_TEST_SIGNING_KEY"))
    tags = jobs.control_tags(counts)
    assets = [jobs.raw_orders, jobs.clean_orders]
    assert materialize(assets, resources={"io_manager": signed}, instance=instance, tags=tags)

    monkeypatch.setenv("CKPT_TEST_SIGNING_KEY", "key-two")
    with pytest.raises(CheckpointCorrupted, match="raw_orders"):
        materialize(
            assets,
            selection=["clean_orders"],
            resources={"io_manager": signed},
            instance=instance,
            tags=tags,
        )
    monkeypatch.setenv("CKPT_TEST_SIGNING_KEY", "key-one")
    result = materialize(
        assets,
        selection=["clean_orders"],
        resources={"io_manager": signed},
        instance=instance,
        tags=tags,
    )
    assert result.output_for_node("clean_orders") == [3, 5]


# -- run-config YAML and the clean-up sensor -------------------------------------------------
RUN_CONFIG_YAML = """
resources:
  io_manager:
    config:
      url: {url}
      namespace: shared
      retention: {retention}
"""


def run_three_ops(instance: DagsterInstance, counts: Path, url: str, retention: str) -> Any:
    run_config = yaml.safe_load(RUN_CONFIG_YAML.format(url=url, retention=retention))
    with execute_job(
        reconstructable(jobs.three_ops),
        instance,
        run_config=run_config,
        tags=jobs.control_tags(counts),
    ) as result:
        assert result.success
        return instance.get_run_by_id(result.run_id)


def sensor_after(instance: DagsterInstance, run: Any, io_manager: CheckpointIOManager) -> Any:
    sensor = checkpoint_cleanup_sensor()
    (record,) = instance.get_records_for_run(
        run.run_id, of_type=DagsterEventType.RUN_SUCCESS
    ).records
    with build_run_status_sensor_context(
        sensor_name=sensor.name,
        dagster_event=record.event_log_entry.dagster_event,
        dagster_instance=instance,
        dagster_run=run,
        resources={"io_manager": io_manager},
    ) as context:
        return sensor(context)


def test_cleanup_sensor_deletes_the_run_family_but_never_assets(
    tmp_path: Path, instance: DagsterInstance, counts: Path
) -> None:
    url = str(tmp_path / "store")
    kept = CheckpointIOManager(url=url, namespace="shared", retention="keep")
    kept_run = run_three_ops(instance, counts, url, "keep")
    tags = jobs.control_tags(counts)
    materialized = materialize(
        [jobs.raw_orders], resources={"io_manager": kept}, instance=instance, tags=tags
    )
    assert materialized.success
    kept_family = f"shared/corr/{kept_run.run_id}/"
    assert len(keys_under(url, kept_family)) == 3

    # retention="keep": the sensor leaves the family alone
    skipped = sensor_after(instance, kept_run, kept)
    assert isinstance(skipped, SkipReason)
    assert len(keys_under(url, kept_family)) == 3

    # retention="delete": the family's op outputs go, the asset (same namespace) stays
    run = run_three_ops(instance, counts, url, "delete")
    deleting = CheckpointIOManager(url=url, namespace="shared")
    assert len(keys_under(url, f"shared/corr/{run.run_id}/")) == 3
    assert sensor_after(instance, run, deleting) is None
    assert keys_under(url, f"shared/corr/{run.run_id}/") == []
    assert len(keys_under(url, kept_family)) == 3  # other families untouched
    assert keys_under(url, "shared/assets/") == ["shared/assets/raw_orders/value"]

    # the explicit API does the same for any family
    assert deleting.delete_run_family("three_ops", kept_run.run_id) == 3
    assert keys_under(url, "shared/corr/") == []
    assert keys_under(url, "shared/assets/") == ["shared/assets/raw_orders/value"]


# -- the example project ---------------------------------------------------------------------
def test_example_project_validates_with_the_dagster_cli() -> None:
    completed = subprocess.run(
        [str(Path(sys.executable).with_name("dagster")), "definitions", "validate"],
        cwd=EXAMPLE,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "DAGSTER_DISABLE_TELEMETRY": "1"},
    )
    output = completed.stdout + completed.stderr
    assert completed.returncode == 0, output
    assert "All code locations passed validation" in output


def test_example_job_fails_once_then_resumes(
    tmp_path: Path, instance: DagsterInstance, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.syspath_prepend(str(EXAMPLE))
    monkeypatch.setenv("CKPT_URL", str(tmp_path / "example-store"))
    monkeypatch.setenv("CKPT_SIGNING_KEY", "test-key")
    monkeypatch.setenv("CKPT_EXAMPLE_STATE", str(tmp_path / "state"))
    from ckpt_example import definitions

    monkeypatch.setattr(definitions, "STATE_DIR", tmp_path / "state")
    etl = definitions.defs.resolve_job_def("etl")
    first = etl.execute_in_process(instance=instance, raise_on_error=False)
    assert not first.success
    assert first.failure_data_for_node("publish") is not None
    second = etl.execute_in_process(instance=instance)
    assert second.success
    assert second.output_for_node("publish") == len(definitions.CITIES)

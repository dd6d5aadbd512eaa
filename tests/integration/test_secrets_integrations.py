"""The orchestrator wrappers never leak credentials (issue #6, item 6), scanned like
``tests/test_secrets_in_logs.py``: every logger at DEBUG, the process's stdout/stderr, and what the
orchestrators themselves keep (Dagster's event log with its error info and run records; Prefect's
flow-run logs, states and block documents as the UI reads them).

Secrets travel the documented way (Dagster ``EnvVar``; Prefect ``storage_options``,
``signing_key`` and ``encryption_key``, all secret fields) through a successful run and a run whose
Redis is down. A password written into a plain URL is also never shown by ckpt (reprs, metadata,
errors), though the orchestrator then stores the config value itself, which is why the docs say
to use ``EnvVar`` / ``storage_options``.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from dagster import DagsterInstance, EnvVar, job, materialize, op

from ckpt_dagster import CheckpointIOManager

from ..servers import free_ports
from ..test_secrets_in_logs import (
    ENCRYPTION_KEY,
    LOGGERS,
    REDIS_PASSWORD,
    SIGNING_KEY,
    LeakScan,
    exception_text,
)
from . import dagster_jobs as jobs
from .test_prefect import prefect_server  # noqa: F401 - the module's Prefect test server

#: Loggers the orchestrators configure with their own handlers and no propagation: the capture
#: handler is attached to them directly.
OWN_HANDLERS = ["prefect", "prefect.flow_runs", "prefect.task_runs", "dagster", "ckpt"]


@pytest.fixture
def scan(caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]) -> Iterator[LeakScan]:
    for name in LOGGERS:
        caplog.set_level(logging.DEBUG, logger=name)
    attached = [logging.getLogger(name) for name in OWN_HANDLERS]
    for logger in attached:
        logger.addHandler(caplog.handler)
    try:
        result = LeakScan(caplog, capfd)
        result.secret(REDIS_PASSWORD)
        yield result
    finally:
        for logger in attached:
            logger.removeHandler(caplog.handler)


@pytest.fixture
def redis_server(redis_server_factory: Callable[..., Any]) -> Any:
    return redis_server_factory(password=REDIS_PASSWORD)


# -- Dagster -----------------------------------------------------------------------------------


@op
def make_rows() -> list[int]:
    return [1, 2, 3]


@op
def total(rows: list[int]) -> int:
    return sum(rows)


@job
def secrets_job() -> None:
    total(make_rows())


def dagster_says(scan: LeakScan, instance: DagsterInstance, run_id: str) -> None:
    """Everything the Dagster instance keeps about a run: events (messages, metadata, error
    info with causes) and the run record (its config and tags)."""
    entries = instance.all_logs(run_id)
    assert entries
    for entry in entries:
        scan.said("dagster event", repr(entry))
        scan.said("dagster message", entry.message)
        if entry.error_info is not None:
            scan.said("dagster error", entry.error_info.to_string())
        event = entry.dagster_event
        data = getattr(event, "event_specific_data", None) if event else None
        error = getattr(data, "error", None)
        if error is not None:
            scan.said("dagster step error", error.to_string())
    scan.said("dagster run", repr(instance.get_run_by_id(run_id)))


def step_errors(instance: DagsterInstance, run_id: str) -> str:
    return "\n".join(
        data.error.to_string()
        for entry in instance.all_logs(run_id)
        if entry.dagster_event is not None
        and (data := entry.dagster_event.event_specific_data) is not None
        and getattr(data, "error", None) is not None
    )


@pytest.mark.timeout(240)
def test_dagster_runs_never_leak(
    scan: LeakScan,
    redis_server: Any,
    instance: DagsterInstance,
    counts: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    down = f"redis://:{REDIS_PASSWORD}@127.0.0.1:{free_ports(1)[0]}/0"
    monkeypatch.setenv("CKPT_SECRETS_TEST_URL", redis_server.url)
    monkeypatch.setenv("CKPT_SECRETS_TEST_DOWN_URL", down)
    monkeypatch.setenv("CKPT_SECRETS_TEST_PASSWORD", REDIS_PASSWORD)
    monkeypatch.setenv("CKPT_SECRETS_TEST_SIGNING", SIGNING_KEY)
    monkeypatch.setenv("CKPT_SECRETS_TEST_ENCRYPTION", ENCRYPTION_KEY)
    keys = {
        "signing_key": EnvVar("CKPT_SECRETS_TEST_SIGNING"),
        "encryption_key": EnvVar("CKPT_SECRETS_TEST_ENCRYPTION"),
    }
    managers = {
        "url": CheckpointIOManager(url=EnvVar("CKPT_SECRETS_TEST_URL"), **keys),
        "option": CheckpointIOManager(
            url=f"redis://127.0.0.1:{redis_server.port}/0",
            storage_options={"password": EnvVar("CKPT_SECRETS_TEST_PASSWORD")},
            **keys,
        ),
    }
    for label, iom in managers.items():
        scan.said(f"iom {label} repr", repr(iom) + str(iom))
        result = secrets_job.execute_in_process(resources={"io_manager": iom}, instance=instance)
        assert result.success
        assert result.output_for_node("total") == 6
        dagster_says(scan, instance, result.run_id)
        asset_run = materialize(
            [jobs.raw_orders],
            resources={"io_manager": iom},
            instance=instance,
            tags=jobs.control_tags(counts),
        )
        assert asset_run.success
        dagster_says(scan, instance, asset_run.run_id)

    down_iom = CheckpointIOManager(url=EnvVar("CKPT_SECRETS_TEST_DOWN_URL"), **keys)
    failed = secrets_job.execute_in_process(
        resources={"io_manager": down_iom}, instance=instance, raise_on_error=False
    )
    assert not failed.success
    assert "StoreUnavailable" in step_errors(instance, failed.run_id)
    dagster_says(scan, instance, failed.run_id)

    # A password typed into a plain URL: Dagster keeps the config value, but nothing ckpt
    # says (repr, output metadata, errors) holds it.
    plain = CheckpointIOManager(url=down, signing_key=SIGNING_KEY)
    scan.said("iom plain repr", repr(plain) + str(plain))
    failed = secrets_job.execute_in_process(
        resources={"io_manager": plain}, instance=instance, raise_on_error=False
    )
    assert not failed.success
    errors = step_errors(instance, failed.run_id)
    assert "StoreUnavailable" in errors
    scan.said("plain url errors", errors)
    for entry in instance.all_logs(failed.run_id):
        scan.said("plain url message", entry.message)
    scan.check()


# -- Prefect -----------------------------------------------------------------------------------


@pytest.mark.timeout(300)
def test_prefect_block_and_flows_never_leak(
    scan: LeakScan,
    redis_server: Any,
    prefect_server: str,  # noqa: F811 - the fixture imported above
) -> None:
    from prefect import flow, task
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        LogFilter,
        LogFilterFlowRunId,
    )

    from ckpt_prefect import RESUME, CheckpointStorage, resumable

    def block_for(port: int) -> CheckpointStorage:
        return CheckpointStorage(
            url=f"redis://127.0.0.1:{port}/0",
            storage_options={"password": REDIS_PASSWORD, "socket_connect_timeout": 1},
            signing_key=SIGNING_KEY,
            encryption_key=ENCRYPTION_KEY,
            retention="keep",
        )

    up = block_for(redis_server.port)
    down = block_for(free_ports(1)[0])
    name = f"secrets-{uuid.uuid4().hex[:8]}"
    up.save(name, overwrite=True)
    down.save(name + "-down", overwrite=True)
    loaded = CheckpointStorage.load(name)
    for label, block in (("up", up), ("down", down), ("loaded", loaded)):
        scan.said(f"block {label}", repr(block) + str(block))
        scan.said(f"block {label} dump", repr(block.model_dump()))
        scan.said(f"block {label} dump json", block.model_dump_json())
        scan.said(f"block {label} dump mode json", repr(block.model_dump(mode="json")))
    with_url = CheckpointStorage(url=redis_server.url, signing_key=SIGNING_KEY)
    scan.said("block password url", repr(with_url) + str(with_url))
    assert "redis://:***@" in repr(with_url)

    def pipeline(block: CheckpointStorage) -> Any:
        @task(cache_policy=RESUME)
        def extract() -> list[int]:
            return [1, 2, 3]

        @resumable
        @flow(name=f"secrets-{uuid.uuid4().hex[:6]}", result_storage=block)
        def run() -> int:
            return sum(extract())

        return run

    runs = []
    state = pipeline(loaded)(return_state=True)
    assert state.is_completed(), state
    assert state.result() == 6
    runs.append(state)
    failed = pipeline(down)(return_state=True)
    assert failed.is_failed(), failed
    runs.append(failed)

    with get_client(sync_client=True) as client:
        document = client.read_block_document_by_name(name, "ckpt-storage", include_secrets=False)
        scan.said("block document (as the UI reads it)", repr(document))
        for run_state in runs:
            run_id = run_state.state_details.flow_run_id
            logs = client.read_logs(
                log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run_id])),
                limit=200,
                offset=0,
            )
            scan.said("flow run logs", "\n".join(log.message for log in logs))
            scan.said("flow run state", repr(run_state) + str(run_state.message))
            flow_run = client.read_flow_run(run_id)
            scan.said("flow run", repr(flow_run))
    try:
        failed.result()
    except Exception as exc:  # the flow's own failure, as Prefect hands it back
        scan.said("failed flow result", exception_text(exc))
    scan.check()

"""CheckpointIOManager with assets: persistent keys per asset and partition, loads of one or
several partitions, upstream assets outside the run, and asset-job re-execution from failure."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dagster import (
    AssetKey,
    DagsterEventType,
    DagsterInstance,
    ReexecutionOptions,
    execute_job,
    materialize,
    reconstructable,
)

from ckpt_core import CheckpointManager, open_store
from ckpt_dagster import CheckpointIOManager

from . import dagster_jobs as jobs


def materialize_one(
    assets: list[Any], store_url: str, instance: DagsterInstance, counts: Path, **kwargs: Any
) -> Any:
    return materialize(
        assets,
        resources={"io_manager": CheckpointIOManager(url=store_url)},
        instance=instance,
        raise_on_error=False,
        tags=jobs.control_tags(counts),
        **kwargs,
    )


def stored_keys(url: str, prefix: str) -> list[str]:
    store = open_store(url)
    try:
        return sorted(o.key for o in store.list(prefix))
    finally:
        store.close()


def test_partitioned_assets_are_keyed_by_asset_and_partition(
    instance: DagsterInstance, counts: Path, store_url: str
) -> None:
    all_assets = [
        jobs.daily,
        jobs.daily_enriched,
        jobs.orders_total,
        jobs.orders_total_lenient,
    ]
    for day in ("2024-01-01", "2024-01-02"):
        result = materialize_one([jobs.daily], store_url, instance, counts, partition_key=day)
        assert result.success
    assert stored_keys(store_url, "dagster/assets/") == [
        "dagster/assets/daily/partitions/2024-01-01",
        "dagster/assets/daily/partitions/2024-01-02",
    ]
    (materialization,) = result.asset_materializations_for_node("daily")
    meta = {k: v.value for k, v in materialization.metadata.items()}
    assert meta["ckpt/uri"] == f"{store_url}/dagster/assets/daily/partitions/2024-01-02"
    assert meta["ckpt/scope"] == "asset (persistent)"
    assert meta["ckpt/checksum"].startswith("blake3:")
    assert meta["ckpt/size"] > 0 and meta["ckpt/codec"] == "json"

    # same partitions downstream: daily is not in this run, so it loads from its key
    result = materialize_one(
        all_assets,
        store_url,
        instance,
        counts,
        partition_key="2024-01-02",
        selection=["daily_enriched"],
    )
    assert result.success
    assert result.output_for_node("daily_enriched") == {
        "day": "2024-01-02",
        "orders": 20,
        "enriched": True,
    }
    assert jobs.calls(counts, "daily_2024-01-02") == 1

    # an unpartitioned asset needs every partition: the missing one is named
    result = materialize_one(all_assets, store_url, instance, counts, selection=["orders_total"])
    assert not result.success
    failure = result.failure_data_for_node("orders_total")
    assert failure is not None
    message = str(failure.error.cause.message if failure.error.cause else failure.error.message)
    assert "cannot load asset daily partition '2024-01-03'" in message
    assert "dagster/assets/daily/partitions/2024-01-03" in message

    # ...unless the input allows missing partitions
    result = materialize_one(
        all_assets, store_url, instance, counts, selection=["orders_total_lenient"]
    )
    assert result.success
    assert result.output_for_node("orders_total_lenient") == ["2024-01-01", "2024-01-02"]

    assert materialize_one(
        [jobs.daily], store_url, instance, counts, partition_key="2024-01-03"
    ).success
    result = materialize_one(all_assets, store_url, instance, counts, selection=["orders_total"])
    assert result.success
    assert result.output_for_node("orders_total") == 10 + 20 + 30
    # each partition was computed exactly once; every later run loaded it
    assert [jobs.calls(counts, f"daily_2024-01-0{d}") for d in (1, 2, 3)] == [1, 1, 1]


def test_asset_values_are_records_readable_with_ckpt_core(
    instance: DagsterInstance, counts: Path, store_url: str
) -> None:
    assert materialize_one([jobs.raw_orders], store_url, instance, counts).success
    key = "dagster/assets/raw_orders/value"
    assert stored_keys(store_url, "dagster/assets/") == [key]
    store = open_store(store_url)
    try:
        raw = bytes(store.get(key) or b"")
    finally:
        store.close()
    assert raw.startswith(b"CKPT")  # a ckpt envelope, checksummed like every other record
    # a namespaced IO manager keeps assets under its own namespace
    iom = CheckpointIOManager(url=store_url, namespace="sales")
    result = materialize(
        [jobs.raw_orders],
        resources={"io_manager": iom},
        instance=instance,
        tags=jobs.control_tags(counts),
    )
    assert result.success
    assert "sales/assets/raw_orders/value" in stored_keys(store_url, "sales/")
    assert isinstance(iom.asset_manager(), CheckpointManager)
    assert AssetKey("raw_orders").path == ["raw_orders"]


def test_asset_job_reexecution_from_failure_loads_upstream_assets(
    instance: DagsterInstance, counts: Path, store_url: str
) -> None:
    job = reconstructable(jobs.asset_etl_job)
    tags = jobs.control_tags(counts, fails="orders_report=1")
    with execute_job(job, instance, run_config=jobs.io_run_config(store_url), tags=tags) as first:
        assert not first.success
    with execute_job(
        job,
        instance,
        reexecution_options=ReexecutionOptions.from_failure(first.run_id, instance),
        tags=tags,
    ) as second:
        assert second.success
        started = {
            e.step_key for e in second.all_events if e.event_type == DagsterEventType.STEP_START
        }
        assert started == {"orders_report"}
        assert second.output_for_node("orders_report") == "2 orders, total 8"
    assert (
        jobs.calls(counts, "raw_orders"),
        jobs.calls(counts, "clean_orders"),
        jobs.calls(counts, "orders_report"),
    ) == (1, 1, 2)
    assert stored_keys(store_url, "dagster/assets/") == [
        "dagster/assets/clean_orders/value",
        "dagster/assets/orders_report/value",
        "dagster/assets/raw_orders/value",
    ]

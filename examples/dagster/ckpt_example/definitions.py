"""ckpt + Dagster: a job that resumes after a failure, and partitioned assets on one store.

Run it (from ``examples/dagster``; ``.env`` sets ``CKPT_URL`` and ``CKPT_SIGNING_KEY``)::

    pip install -e '../..[dagster]' dagster-webserver
    dagster dev            # then open http://127.0.0.1:3000

1. Launch the ``etl`` job. ``publish`` fails on purpose the first time.
2. Click "Re-execute from failure": only ``publish`` runs; ``extract`` and ``enrich`` outputs load
   from ``.ckpt-dagster/etl/corr/<root run id>/``, each output event showing its ckpt metadata.
3. Launch ``etl`` again with "Re-execute all steps": ``enrich`` runs, but the ``geocode`` calls
   inside it (``@ckpt.checkpointed``) load from the run family instead of sleeping again.
4. Materialize ``regional_sales`` per region, then ``sales_summary`` (it loads every region).

The clean-up sensor deletes a run family's op outputs once one of its runs succeeds; asset
values under ``.ckpt-dagster/dagster/assets/`` stay.
"""

import os
import time
from pathlib import Path
from typing import Any

from dagster import (
    AssetExecutionContext,
    Definitions,
    EnvVar,
    StaticPartitionsDefinition,
    asset,
    job,
    op,
)

import ckpt_core as ckpt
from ckpt_dagster import CheckpointIOManager, checkpoint_cleanup_sensor

#: Where the example remembers that ``publish`` already failed once.
STATE_DIR = Path(os.environ.get("CKPT_EXAMPLE_STATE", ".ckpt-example-state"))

CITIES = ["Lisbon", "Osaka", "Quito", "Tallinn"]


@ckpt.checkpointed
def geocode(city: str) -> dict[str, Any]:
    """A slow external call per city: checkpointed inside the op, per argument."""
    time.sleep(0.2)
    return {"city": city, "lat_bucket": len(city) % 3}


@op
def extract() -> list[str]:
    return list(CITIES)


@op
def enrich(cities: list[str]) -> list[dict[str, Any]]:
    return [geocode(city) for city in cities]


@op
def publish(rows: list[dict[str, Any]]) -> int:
    marker = STATE_DIR / "publish-failed-once"
    if not marker.exists():
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.touch()
        raise RuntimeError(
            "publish fails on its first run on purpose: re-execute the run from failure"
        )
    return len(rows)


@job(
    # With `run_retries: {enabled: true}` in dagster.yaml, the daemon retries a failed run from
    # failure once by itself; the retry resumes from the same checkpoints.
    tags={"dagster/max_retries": "1", "dagster/retry_strategy": "FROM_FAILURE"},
)
def etl() -> None:
    publish(enrich(extract()))


REGIONS = StaticPartitionsDefinition(["eu", "us", "apac"])


@asset(partitions_def=REGIONS)
def regional_sales(context: AssetExecutionContext) -> list[int]:
    base = {"eu": 10, "us": 20, "apac": 30}[context.partition_key]
    return [base, base + 1, base + 2]


@asset
def sales_summary(regional_sales: dict[str, list[int]]) -> dict[str, int]:
    """Unpartitioned: receives every region as ``{region: value}``."""
    return {region: sum(values) for region, values in sorted(regional_sales.items())}


defs = Definitions(
    jobs=[etl],
    assets=[regional_sales, sales_summary],
    sensors=[checkpoint_cleanup_sensor()],
    resources={
        "io_manager": CheckpointIOManager(
            url=EnvVar("CKPT_URL"),
            signing_key=EnvVar("CKPT_SIGNING_KEY"),
        )
    },
)

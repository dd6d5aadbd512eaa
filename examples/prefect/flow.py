"""A nightly Prefect flow whose retries skip the tasks that already finished.

Results go to Prefect's default result storage, which the deployment (``prefect.yaml``) points
at the ``ckpt-storage/prod`` block with ``PREFECT_RESULTS_DEFAULT_STORAGE_BLOCK``. Locally::

    export PREFECT_RESULTS_DEFAULT_STORAGE_BLOCK=ckpt-storage/prod
    CKPT_URL=./.ckpt-prefect python examples/prefect/create_block.py     # once
    python examples/prefect/flow.py --date 2026-11-22 --fail-at load     # fails in `load`, twice
    prefect flow-run retry <flow run id> --entrypoint examples/prefect/flow.py:nightly

The first command runs ``extract``, ``transform`` and ``load``; ``load`` fails, Prefect retries the
flow run in-process (``retries=1``) and only ``load`` runs again (and fails again: ``--fail-at``
breaks it for the whole process). The retry from the CLI runs only ``load``. Running the flow
again for the same ``--date`` as a *new* flow run resumes too: the flow declares its correlation
from its parameters. After the successful run the checkpoints are deleted.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from prefect import flow, task

from ckpt_prefect import RESUME, resumable

#: Set by --fail-at for this process only, so a later retry (another process) succeeds.
FAIL_AT_ENV = "CKPT_EXAMPLE_FAIL_AT"


def _step(name: str) -> None:
    print(f"running step {name}", flush=True)
    if os.environ.get(FAIL_AT_ENV) == name:
        raise RuntimeError(f"simulated failure in {name} (the warehouse is down)")


@task(cache_policy=RESUME)
def extract(date: str) -> list[dict[str, Any]]:
    _step("extract")
    return [{"city": city, "amount": 10.0 * (i + 1)} for i, city in enumerate(["Oslo", "Lyon"])]


@task(cache_policy=RESUME)
def transform(rows: list[dict[str, Any]]) -> dict[str, float]:
    _step("transform")
    return {str(row["city"]): float(row["amount"]) * 1.25 for row in rows}


@task(cache_policy=RESUME)
def load(totals: dict[str, float], date: str) -> str:
    _step("load")
    return f"{date}: loaded {len(totals)} cities, {sum(totals.values()):.2f} in total"


@resumable(correlation="{flow_name}-{parameters[date]}")
@flow(name="nightly", retries=1)
def nightly(date: str) -> str:
    """One night's ETL; the correlation is the flow name plus the date."""
    return load(transform(extract(date)), date)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--date", default="2026-11-22")
    parser.add_argument("--fail-at", choices=["extract", "transform", "load"])
    args = parser.parse_args(argv)
    if args.fail_at:
        os.environ[FAIL_AT_ENV] = args.fail_at
    state = nightly(date=args.date, return_state=True)
    summary = {"flow_run_id": str(state.state_details.flow_run_id), "state": state.type.value}
    if state.is_completed():
        summary["result"] = state.result()
    print(json.dumps(summary), flush=True)
    return 0 if state.is_completed() else 1


if __name__ == "__main__":
    sys.exit(main())

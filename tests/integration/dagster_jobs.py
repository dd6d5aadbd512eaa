"""Jobs and assets for the Dagster integration tests.

Module-level so ``reconstructable`` can rebuild them in the multiprocess executor's step
processes. Test control travels in run tags, which every step process sees (environment
variables do not: forkserver children inherit the server's environment, not the test's):

- ``ckpt_test/calls_dir``: ops count their calls by appending a line to ``<dir>/<name>.calls``
  (files, not globals: step processes share no memory);
- ``ckpt_test/fails`` (``"c=1,process_k2=1"``): an op fails on purpose while its call count is
  at most the number given for it.
"""

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from dagster import (
    AssetExecutionContext,
    AssetIn,
    DynamicOut,
    DynamicOutput,
    OpExecutionContext,
    Out,
    Output,
    RetryPolicy,
    StaticPartitionsDefinition,
    asset,
    in_process_executor,
    job,
    multiprocess_executor,
    op,
)

from ckpt_core import MemoryStore, checkpointed
from ckpt_dagster import CheckpointIOManager

CALLS_DIR_TAG = "ckpt_test/calls_dir"
FAILS_TAG = "ckpt_test/fails"


class InjectedFailure(RuntimeError):
    """Raised on purpose by a test op."""


def control_tags(calls_dir: Path, fails: str = "") -> dict[str, str]:
    """Run tags that point the test ops at ``calls_dir`` and make them fail as ``fails`` says."""
    return {CALLS_DIR_TAG: str(calls_dir), FAILS_TAG: fails}


def _run_tags() -> Mapping[str, str]:
    return OpExecutionContext.get().run.tags


def count_call(name: str) -> int:
    """Record one call of ``name``; returns how many calls there have been, this one included."""
    path = Path(_run_tags()[CALLS_DIR_TAG]) / f"{name}.calls"
    with path.open("a") as f:
        f.write("call\n")
    return len(path.read_text().splitlines())


def calls(calls_dir: Path, name: str) -> int:
    path = calls_dir / f"{name}.calls"
    return len(path.read_text().splitlines()) if path.exists() else 0


def maybe_fail(name: str, call_number: int) -> None:
    """Fail while ``call_number`` is at most the count configured for ``name``."""
    spec = _run_tags().get(FAILS_TAG, "")
    fails = dict(item.split("=") for item in spec.split(",") if item)
    if call_number <= int(fails.get(name, "0")):
        raise InjectedFailure(f"{name} fails on purpose (call {call_number})")


# -- three ops: a -> b -> c ------------------------------------------------------------------
#: The store URL and options come from run config, so the same job runs on every store.
IO_MANAGER = CheckpointIOManager.configure_at_launch()


@op
def a() -> int:
    count_call("a")
    return 1


@op
def b(x: int) -> int:
    count_call("b")
    return x + 10


@op
def c(y: int) -> int:
    maybe_fail("c", count_call("c"))
    return y * 2


@job(resource_defs={"io_manager": IO_MANAGER}, executor_def=in_process_executor)
def three_ops() -> None:
    c(b(a()))


@job(
    resource_defs={"io_manager": IO_MANAGER},
    executor_def=multiprocess_executor.configured(
        {
            "max_concurrent": 2,
            # forkserver with dagster, this module and the store clients preloaded: each step
            # process starts in well under a second instead of importing everything again
            # (a module that is not installed is skipped by multiprocessing)
            "start_method": {
                "forkserver": {
                    "preload_modules": [__name__, "ckpt_core.stores.redis", "s3fs"],
                }
            },
        }
    ),
)
def three_ops_multiprocess() -> None:
    c(b(a()))


# -- dynamic outputs -------------------------------------------------------------------------
MAPPING_KEYS = ("k1", "k2", "k3")


@op(out=DynamicOut(int))
def emit() -> Any:
    count_call("emit")
    for i, key in enumerate(MAPPING_KEYS, start=1):
        yield DynamicOutput(i, mapping_key=key)


@op
def process(context: OpExecutionContext, x: int) -> int:
    key = context.get_mapping_key()
    maybe_fail(f"process_{key}", count_call(f"process_{key}"))
    return x * 100


@op
def collect(values: list[int]) -> int:
    count_call("collect")
    return sum(values)


@job(resource_defs={"io_manager": IO_MANAGER}, executor_def=in_process_executor)
def dynamic_job() -> None:
    collect(emit().map(process).collect())


# -- op RetryPolicy, and @checkpointed work inside op bodies ---------------------------------
@checkpointed
def enrich(item: int) -> int:
    """Expensive per-item work inside an op: checkpointed into the Dagster run family."""
    count_call(f"enrich_{item}")
    return item * 1000


@op(
    out={"first": Out(int), "second": Out(int)},
    retry_policy=RetryPolicy(max_retries=2),
)
def flaky_two_outputs() -> Any:
    """Yields ``first``, then fails on its first attempt: the retry rewrites ``first``."""
    number = count_call("flaky_two_outputs")
    yield Output(7, "first")
    maybe_fail("flaky_two_outputs", number)
    yield Output(8, "second")


@op(retry_policy=RetryPolicy(max_retries=1))
def enrich_all(first: int, second: int) -> list[int]:
    """Enriches four items and fails after the second on its first attempt."""
    number = count_call("enrich_all")
    out = []
    for item in range(4):
        out.append(enrich(item + first + second))
        if item == 1:
            maybe_fail("enrich_all", number)
    return out


@job(resource_defs={"io_manager": IO_MANAGER}, executor_def=in_process_executor)
def retry_job() -> None:
    first, second = flaky_two_outputs()
    enrich_all(first, second)


@op
def load_rows() -> list[int]:
    count_call("load_rows")
    return [1, 2, 3, 4, 5]


@op
def score_all(rows: list[int]) -> list[int]:
    """Scores every row through ``enrich``; fails once after three rows."""
    number = count_call("score_all")
    out = []
    for i, row in enumerate(rows):
        out.append(enrich(row))
        if i == 2:
            maybe_fail("score_all", number)
    return out


@job(resource_defs={"io_manager": IO_MANAGER}, executor_def=in_process_executor)
def batch_job() -> None:
    score_all(load_rows())


# -- assets ----------------------------------------------------------------------------------
DAYS = StaticPartitionsDefinition(["2024-01-01", "2024-01-02", "2024-01-03"])


@asset(partitions_def=DAYS)
def daily(context: AssetExecutionContext) -> dict[str, Any]:
    count_call(f"daily_{context.partition_key}")
    return {"day": context.partition_key, "orders": int(context.partition_key[-1]) * 10}


@asset(partitions_def=DAYS)
def daily_enriched(context: AssetExecutionContext, daily: dict[str, Any]) -> dict[str, Any]:
    """Same partitions as ``daily``: loads exactly one upstream partition."""
    count_call(f"daily_enriched_{context.partition_key}")
    return {**daily, "enriched": True}


@asset
def orders_total(daily: dict[str, dict[str, Any]]) -> int:
    """Unpartitioned: loads every partition of ``daily`` as ``{partition: value}``."""
    count_call("orders_total")
    return sum(v["orders"] for v in daily.values())


@asset(ins={"daily": AssetIn(metadata={"allow_missing_partitions": True})})
def orders_total_lenient(daily: dict[str, dict[str, Any]]) -> list[str]:
    return sorted(daily)


@asset
def raw_orders() -> list[int]:
    count_call("raw_orders")
    return [3, 4, 5]


@asset
def clean_orders(raw_orders: list[int]) -> list[int]:
    count_call("clean_orders")
    return [x for x in raw_orders if x != 4]


@asset
def orders_report(clean_orders: list[int]) -> str:
    maybe_fail("orders_report", count_call("orders_report"))
    return f"{len(clean_orders)} orders, total {sum(clean_orders)}"


# -- a store that records how it was opened --------------------------------------------------
class RecordingStore(MemoryStore):
    """A memory store that records every construction (URL and options), to prove the IO
    manager opens nothing until it is used and resolves ``EnvVar`` options at run time.

    Its ``url`` is the raw URL, credentials included, like a careless third-party store: the
    IO manager must still never show them.
    """

    opened: list[tuple[str, dict[str, Any]]] = []

    def __init__(self, url: str, **options: Any) -> None:
        super().__init__(url.split("://", 1)[1])
        self.url = url
        RecordingStore.opened.append((url, options))


# -- asset job (reconstructable: built by a module-level function) ---------------------------
def asset_etl_job() -> Any:
    """``raw_orders -> clean_orders -> orders_report`` as an asset job with the ckpt IO manager."""
    from dagster import Definitions, define_asset_job

    defs = Definitions(
        assets=[raw_orders, clean_orders, orders_report],
        jobs=[define_asset_job("asset_etl")],
        resources={"io_manager": IO_MANAGER},
        executor=in_process_executor,
    )
    return defs.resolve_job_def("asset_etl")


# -- helpers for the test modules ------------------------------------------------------------
def io_run_config(url: str, **fields: Any) -> dict[str, Any]:
    """Run config that points the launch-time IO manager at ``url``."""
    return {"resources": {"io_manager": {"config": {"url": url, **fields}}}}

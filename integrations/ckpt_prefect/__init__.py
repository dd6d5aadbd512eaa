"""ckpt for Prefect: a result-storage block, resume cache policies and lifecycle hooks.

::

    from prefect import flow, task
    from ckpt_prefect import RESUME, resumable

    @task(cache_policy=RESUME)
    def extract(day: str) -> list[int]: ...

    @resumable(correlation="{flow_name}-{parameters[day]}")
    @flow(retries=2, result_storage="ckpt-storage/prod")
    def nightly(day: str) -> int: ...

- :class:`CheckpointStorage` (block type ``ckpt-storage``) writes Prefect's results as ckpt records;
- :data:`RESUME` / :data:`RESUME_RUN` key task calls so a retried flow run skips finished tasks;
- :func:`resumable` adds the lifecycle hooks and an optional correlation across flow runs.

Register the block type for the UI with ``prefect block register -m ckpt_prefect``. The package is
also published through the ``prefect.collections`` entry point, so a worker that loads
``ckpt-storage/<name>`` finds the class without importing it first.
"""

from .block import CheckpointStorage, clear_cache
from .correlation import (
    CorrelationSpec,
    Identity,
    OutsideFlowRun,
    current_identity,
    flow_identity,
)
from .hooks import CheckpointHooks, resumable
from .policies import RESUME, RESUME_RUN, Resume

__all__ = [
    "RESUME",
    "RESUME_RUN",
    "CheckpointHooks",
    "CheckpointStorage",
    "CorrelationSpec",
    "Identity",
    "OutsideFlowRun",
    "Resume",
    "clear_cache",
    "current_identity",
    "flow_identity",
    "resumable",
]

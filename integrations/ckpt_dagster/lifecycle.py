"""Clean-up of run families after success, never of asset values.

Op outputs are intermediate data: once a run of a family has succeeded, no re-execution from
failure needs them. A run-status sensor is Dagster's place for "after a run succeeded" (it sees
the whole run, whichever executor ran the steps, and runs in the daemon that ``dagster dev``
starts), so the clean-up is a sensor factory rather than a hook inside the IO manager.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from dagster import (
    DagsterRunStatus,
    DefaultSensorStatus,
    JobDefinition,
    RunStatusSensorContext,
    RunStatusSensorDefinition,
    SkipReason,
)

from . import keys
from .io_manager import CheckpointIOManager


def checkpoint_cleanup_sensor(
    *,
    io_manager_key: str = "io_manager",
    name: str = "ckpt_cleanup_sensor",
    monitored_jobs: Sequence[JobDefinition] | None = None,
    monitor_all_code_locations: bool | None = None,
    default_status: DefaultSensorStatus = DefaultSensorStatus.RUNNING,
    minimum_interval_seconds: int | None = None,
) -> RunStatusSensorDefinition:
    """A sensor that deletes a run family's op outputs when a run of the family succeeds.

    It removes ``<namespace>/corr/<root run id>/`` of the succeeded run's job (op outputs and
    ``@checkpointed`` calls made inside ops) through the IO manager bound to
    ``io_manager_key``, unless that IO manager has ``retention="keep"``. Asset values live under
    ``<namespace>/assets/`` and are never deleted. After a failed run nothing is deleted, so the
    family can still be re-executed from failure.

    Args:
        io_manager_key: resource key of the :class:`CheckpointIOManager` to clean.
        name: sensor name (unique per code location).
        monitored_jobs: jobs to watch; default every job in the code location.
        monitor_all_code_locations: watch runs of every code location.
        default_status: running by default, so clean-up happens without a manual switch.
        minimum_interval_seconds: how often the daemon evaluates the sensor.

    Example:
        .. code-block:: python

            Definitions(
                jobs=[etl],
                sensors=[checkpoint_cleanup_sensor()],
                resources={"io_manager": CheckpointIOManager(url="s3://bucket/ckpt")},
            )
    """

    def cleanup(context: RunStatusSensorContext, **_resources: Any) -> SkipReason | None:
        io_manager = getattr(context.resources, io_manager_key)
        if not isinstance(io_manager, CheckpointIOManager):
            raise TypeError(
                f"resource {io_manager_key!r} is a {type(io_manager).__name__}, not a "
                "CheckpointIOManager; pass io_manager_key= naming the ckpt IO manager"
            )
        run = context.dagster_run
        family = keys.run_family(run.run_id, run.root_run_id)
        if io_manager.retention == "keep":
            return SkipReason(f"retention='keep': run family {family} is kept")
        removed = io_manager.delete_run_family(run.job_name, family)
        context.log.info(
            f"ckpt: deleted {removed} checkpoint(s) of run family {family} "
            f"(job {run.job_name}) after run {run.run_id} succeeded"
        )
        return None

    return RunStatusSensorDefinition(
        name=name,
        run_status=DagsterRunStatus.SUCCESS,
        run_status_sensor_fn=cleanup,
        description=(
            "Deletes a run family's ckpt op outputs after a successful run; asset values stay."
        ),
        monitored_jobs=list(monitored_jobs) if monitored_jobs is not None else None,
        monitor_all_code_locations=monitor_all_code_locations,
        default_status=default_status,
        minimum_interval_seconds=minimum_interval_seconds,
        required_resource_keys={io_manager_key},
    )

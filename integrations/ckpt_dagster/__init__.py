"""ckpt for Dagster: CheckpointIOManager.

Not implemented yet (see the Dagster issue); importing it today gives a clear error rather than a
half-working IO manager.
"""

raise ImportError(
    "ckpt_dagster is not available yet in this version of ckpt; use ckpt_core directly"
)

"""ckpt for Prefect: a result-storage block, a RESUME cache policy and flow hooks.

Not implemented yet (see the Prefect issue); importing it today gives a clear error rather than a
half-working block.
"""

raise ImportError(
    "ckpt_prefect is not available yet in this version of ckpt; use ckpt_core directly"
)

"""ckpt + Dagster example project; see definitions.py and docs/dagster.md."""

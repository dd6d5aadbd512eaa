"""A throwaway DagsterInstance for the Dagster tests (the fixtures are in ``conftest.py``)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from dagster import DagsterInstance

NO_TELEMETRY = {"telemetry": {"enabled": False}}


@contextlib.contextmanager
def temp_instance(tmp_path: Path) -> Iterator[DagsterInstance]:
    """A real DagsterInstance whose home is a fresh directory under ``tmp_path``."""
    home = tmp_path / "dagster_home"
    home.mkdir()
    with DagsterInstance.local_temp(str(home), overrides=NO_TELEMETRY) as inst:
        yield inst

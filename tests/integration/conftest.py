"""Fixtures of the Dagster integration tests: a throwaway instance, a call-count dir, a store.

(The Prefect tests keep their fixtures in their own module.)
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from dagster import DagsterInstance

from .dagster_fixtures import temp_instance


@pytest.fixture
def instance(tmp_path: Path) -> Iterator[DagsterInstance]:
    with temp_instance(tmp_path) as inst:
        yield inst


@pytest.fixture
def counts(tmp_path: Path) -> Path:
    """Where ops record their executions (a file per call; works across processes)."""
    path = tmp_path / "calls"
    path.mkdir()
    return path


@pytest.fixture
def store_url(tmp_path: Path) -> str:
    return str(tmp_path / "store")

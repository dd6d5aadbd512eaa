"""Shared fixtures. Real servers (Redis, SeaweedFS S3) live in :mod:`tests.servers`.

``store`` is parametrised over every backend; each parameter yields a fresh, empty store and
tears it down. In CI (``CI=true``) a backend whose server cannot be found or started fails the
test instead of skipping it.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from ckpt_core import FsspecStore, MemoryStore, Store

from .servers import *  # noqa: F403 - server fixtures (redis_url, s3_server, ...)

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")

STORE_KINDS = ["memory", "local", "fsspec-memory", "s3", "redis"]


def make_store(kind: str, request: pytest.FixtureRequest, tmp_path: object) -> Store:
    """A fresh, empty store of ``kind`` (server-backed kinds use the session's servers)."""
    if kind == "memory":
        return MemoryStore()
    if kind == "local":
        return FsspecStore(str(tmp_path) + "/store")
    if kind == "fsspec-memory":
        return FsspecStore(f"memory://ckpt-test-{uuid.uuid4().hex}")
    if kind == "s3":
        return request.getfixturevalue("s3_store_factory")()  # type: ignore[no-any-return]
    if kind == "redis":
        return request.getfixturevalue("redis_store_factory")()  # type: ignore[no-any-return]
    raise ValueError(kind)


@pytest.fixture(params=STORE_KINDS)
def store(request: pytest.FixtureRequest, tmp_path: object) -> Iterator[Store]:
    s = make_store(request.param, request, tmp_path)
    try:
        yield s
    finally:
        s.close()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Run the orchestrator integration tests last.

    Prefect's test harness leaves its at-fork handlers in the process, and after them a plain
    ``fork`` child fails CPython's ``threading._shutdown`` assertion on exit (exit code 1 after
    its work succeeded). The fork-safety tests of the stores fork on purpose, so they run before
    any orchestrator is imported; a real user process forks either with or without Prefect
    loaded, never both in one test session.
    """
    items.sort(key=lambda item: "/integration/" in str(item.fspath))


@pytest.fixture
def fault_backend(request: pytest.FixtureRequest, tmp_path: Any) -> Callable[[str], Any]:
    """Make a :class:`faults.crash.Backend` of a kind: ``local`` (below ``tmp_path``), ``redis``
    or ``s3`` (the shared test servers, under a fresh prefix), for the fast fault tier."""
    from faults.crash import local_backend, redis_backend, s3_backend

    def make(kind: str) -> Any:
        if kind == "local":
            return local_backend(tmp_path / "store")
        if kind == "redis":
            return redis_backend(request.getfixturevalue("redis_url"))
        server = request.getfixturevalue("s3_server")
        return s3_backend(server.bucket, server.storage_options())

    return make

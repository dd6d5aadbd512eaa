"""Conformance kit for ckpt stores: the tests every backend must pass, importable by yours.

A third-party store author subclasses the suites and provides one fixture, ``store``, that yields
a fresh, empty store and tears it down::

    # tests/test_my_store.py
    import pytest
    from ckpt_core.testing import ManagerConformance, StoreConformance

    from my_package import MyStore


    class MyStoreSuite:
        @pytest.fixture
        def store(self, tmp_path):
            store = MyStore(root=tmp_path)
            yield store
            store.close()


    class TestMyStore(MyStoreSuite, StoreConformance):
        pass


    class TestCheckpointManagerOnMyStore(MyStoreSuite, ManagerConformance):
        pass

Every test runs twice, once through the sync primitives (``put``, ``get``...) and once through
their async twins (``aput``, ``aget``...) on an event loop made for that test, so both flavours
are held to the same contract. Tests of optional features are gated on ``store.capabilities``
(``"ttl"``, ``"streaming"``) and skip with a reason when the store does not list the feature;
every other test always runs. The DESIGN.md invariants have tests named ``test_invariant_*``.

:class:`FaultyStore` wraps any store and fails, stops mid-write or truncates at a chosen call of a
chosen primitive, for tests of what a crash or a flaky backend leaves behind.

pytest is imported only by the suites (the ``test`` extra); ``FaultyStore`` and the helpers in
:mod:`ckpt_core.testing.twins` work without it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .faulty import Call, FaultyStore
from .twins import ChunkedPayload, GeneratedPayload, Twins, twin_mismatches

if TYPE_CHECKING:
    from .manager_suite import ManagerConformance
    from .store_suite import StoreConformance

__all__ = [
    "Call",
    "ChunkedPayload",
    "FaultyStore",
    "GeneratedPayload",
    "ManagerConformance",
    "StoreConformance",
    "Twins",
    "twin_mismatches",
]

_SUITES = {
    "StoreConformance": ".store_suite",
    "ManagerConformance": ".manager_suite",
}


def __getattr__(name: str) -> Any:
    # The suites import pytest; load them only when asked for, so FaultyStore needs no pytest.
    module = _SUITES.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module, __name__), name)

"""The manager conformance suite on every backend, plus self-tests of the suite.

``TestManagerConformance`` runs :class:`ckpt_core.testing.ManagerConformance` (every codec, scopes,
lifecycle, corruption, signing, the pickle policy and each DESIGN.md invariant, in both flavours)
over the parametrised ``store`` fixture of ``conftest.py``.
"""

from __future__ import annotations

import inspect
from typing import Any

import pytest

from ckpt_core import CheckpointCorrupted, MemoryStore, Store
from ckpt_core.serde.base import Buffer
from ckpt_core.stores.base import validate_prefix
from ckpt_core.testing import ManagerConformance, Twins
from ckpt_core.testing.manager_suite import CASES
from ckpt_core.types import RunContext


class TestManagerConformance(ManagerConformance):
    """Every backend of ``conftest.STORE_KINDS`` under the manager."""

    def credentials(self, store: Store) -> list[str]:
        # The secret halves only: an S3 access key *id* is an identifier that every signed
        # request carries in clear text (botocore's own DEBUG log prints it).
        options = getattr(getattr(store, "fs", None), "storage_options", None) or {}
        found = [options.get(name) for name in ("secret", "password", "token")]
        return [str(v) for v in found if v]


def test_every_auto_codec_has_a_case() -> None:
    from ckpt_core.serde import AUTO_ORDER

    assert {c.codec for c in CASES} == set(AUTO_ORDER)


# -- the suite must fail on broken stores ---------------------------------------------------------


def _run_suite_test(name: str, store: Store, mode: str, **params: Any) -> None:
    """Call one ManagerConformance test method directly, filling its fixtures by hand."""
    suite = ManagerConformance()
    method = getattr(suite, name)
    twins = Twins(mode)  # type: ignore[arg-type]
    manager = suite.make_manager(store)
    available = {
        "store": store,
        "twins": twins,
        "manager": manager,
        "mgr": twins(manager),
        "mode": mode,
        "ctx": RunContext(run_id="run-1", correlation_id="job-1", attempt=1, max_attempts=3),
        "retry": RunContext(run_id="run-2", correlation_id="job-1", attempt=2, max_attempts=3),
        **params,
    }
    wanted = inspect.signature(method).parameters
    try:
        method(**{k: v for k, v in available.items() if k in wanted})
    finally:
        twins.close()


class _BitRotStore(MemoryStore):
    """Returns each record with its last payload byte flipped."""

    def get_first(self, keys: Any) -> tuple[str, Buffer] | None:
        found = super().get_first(keys)
        if found is None:
            return None
        key, data = found
        rotten = bytearray(data)
        rotten[-40] ^= 0xFF
        return key, bytes(rotten)


class _NoDeleteStore(MemoryStore):
    """Claims prefix deletes succeed but keeps everything."""

    def delete_prefix(self, prefix: str) -> int:
        validate_prefix(prefix)
        return 0


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_the_suite_fails_on_bit_rot(mode: str) -> None:
    case = next(c for c in CASES if c.id == "nested-json")
    with pytest.raises(CheckpointCorrupted):
        _run_suite_test("test_round_trip", _BitRotStore(), mode, case=case)
    _run_suite_test("test_round_trip", MemoryStore(), mode, case=case)


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_the_suite_fails_on_a_store_that_does_not_delete(mode: str) -> None:
    name = "test_failed_attempt_keeps_correlation_and_the_retry_resumes"
    with pytest.raises(AssertionError):
        _run_suite_test(name, _NoDeleteStore(), mode)
    _run_suite_test(name, MemoryStore(), mode)

"""Fixtures every conformance suite shares: the sync/async ``mode`` and its event loop."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from ..stores.base import Store
from .twins import MODES, Mode, Twins


class TwinFixtures:
    """Runs each test of a subclass twice: through the sync ops and through their ``a`` twins."""

    @pytest.fixture(params=MODES)
    def mode(self, request: pytest.FixtureRequest) -> Mode:
        """``sync``: call ``op``; ``async``: run ``aop`` on the test's own event loop."""
        return request.param  # type: ignore[no-any-return]

    @pytest.fixture
    def twins(self, mode: Mode, store: Store) -> Iterator[Twins]:
        """This test's flavour and event loop. In async mode, ``store.aclose()`` is awaited on
        that loop before it ends (async clients must close on the loop they were bound to)."""
        t = Twins(mode)
        try:
            yield t
            if t.mode == "async":
                t.run(store.aclose())
        finally:
            t.close()

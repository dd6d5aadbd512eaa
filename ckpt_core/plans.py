"""Sync and async from one copy of the logic.

Every manager operation is written once, as a generator *plan* that yields :class:`StoreOp` values
(``put``, ``get_first``, ``head``, ``list``, ``delete_prefix`` ...) and receives their results.
:func:`run_sync` drives a plan against the sync primitives, :func:`run_async` against their ``a``
twins; the deciding code (keys, codecs, envelope, lookup order, lifecycle) never exists twice and
the sync path never starts an event loop. This is httpx's auth-flow pattern.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Any, NamedTuple, TypeVar

from .stores.base import Store

T = TypeVar("T")


class StoreOp(NamedTuple):
    """One store primitive call: ``name`` is the sync method, ``"a" + name`` its async twin.

    A named tuple, not a dataclass: every save and load makes one, and a tuple is built in a
    fraction of the time."""

    name: str
    args: tuple[Any, ...]


Plan = Generator[StoreOp, Any, T]


def run_sync(store: Store, plan: Plan[T]) -> T:
    """Drive ``plan`` with blocking store calls; store errors are thrown into the plan."""
    result: Any = None
    error: BaseException | None = None
    while True:
        try:
            op = plan.send(result) if error is None else plan.throw(error)
        except StopIteration as stop:
            return stop.value  # type: ignore[no-any-return]
        try:
            result, error = getattr(store, op.name)(*op.args), None
        except Exception as exc:
            result, error = None, exc


async def run_async(store: Store, plan: Plan[T]) -> T:
    """Drive ``plan`` with the store's async twins."""
    result: Any = None
    error: BaseException | None = None
    while True:
        try:
            op = plan.send(result) if error is None else plan.throw(error)
        except StopIteration as stop:
            return stop.value  # type: ignore[no-any-return]
        try:
            result, error = await getattr(store, "a" + op.name)(*op.args), None
        except Exception as exc:
            result, error = None, exc

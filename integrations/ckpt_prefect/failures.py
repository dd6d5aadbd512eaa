"""A task result that could not be checkpointed fails the flow run, not only a log line.

Prefect writes a task's result after the task has entered ``Completed``, when the task's
transaction commits, and a write that raises is only logged: the transaction rolls back, the task
stays ``Completed`` and the flow carries on (``prefect.transactions.Transaction.commit``; results
are best effort by design since Prefect 3.0). For a checkpointing store that is a silent loss: the
flow run "succeeds" while nothing it did can be resumed, or a later failure finds no checkpoint.

So :func:`ckpt_prefect.resumable` runs the flow body under :func:`watch_checkpoints`:
``CheckpointStorage`` reports each failed write (:func:`note_lost_checkpoint`), and when the body
returns, the first one is raised, so the flow run fails with the store's own error
(``StoreUnavailable`` naming the store, credentials masked). Prefect's flow retries, ``prefect
flow-run retry`` or a new flow run of the same declared correlation then skip every task whose
checkpoint was written. An exception of the body's own wins over a lost checkpoint.

The failures travel in a :mod:`contextvars` value set by the body, so tasks run inline, in the
thread pool task runner (which copies the context) and in in-process subflows report to the
flow run they belong to. Tasks running in other processes (Dask, Ray) cannot report here.
"""

from __future__ import annotations

import contextvars
import functools
import inspect
import logging
from collections.abc import Callable
from typing import Any, TypeVar

log = logging.getLogger("ckpt.prefect")

F = TypeVar("F", bound=Callable[..., Any])

_lost: contextvars.ContextVar[list[BaseException] | None] = contextvars.ContextVar(
    "ckpt_prefect_lost_checkpoints", default=None
)


def note_lost_checkpoint(exc: BaseException) -> None:
    """Record that a result write failed (a no-op outside a watched flow body)."""
    lost = _lost.get()
    if lost is not None:
        lost.append(exc)


def _raise_first(lost: list[BaseException]) -> None:
    if lost:
        log.error(
            "ckpt: %d task result(s) of this flow run could not be checkpointed; failing the flow "
            "run so that a retry resumes from the checkpoints that were written. First error: %s",
            len(lost),
            lost[0],
        )
        raise lost[0]


def watch_checkpoints(fn: F) -> F:
    """``fn`` (a flow body), failing with the first lost checkpoint once it returns.

    Generator flows are returned unchanged (their body runs while the caller iterates).
    """
    if getattr(fn, "__ckpt_watched__", False) or (
        inspect.isgeneratorfunction(fn) or inspect.isasyncgenfunction(fn)
    ):
        return fn

    if inspect.iscoroutinefunction(fn):

        @functools.wraps(fn)
        async def watched_async(*args: Any, **kwargs: Any) -> Any:
            lost: list[BaseException] = []
            token = _lost.set(lost)
            try:
                result = await fn(*args, **kwargs)
            finally:
                _lost.reset(token)
            _raise_first(lost)
            return result

        watched_async.__ckpt_watched__ = True  # type: ignore[attr-defined]
        return watched_async  # type: ignore[return-value]

    @functools.wraps(fn)
    def watched(*args: Any, **kwargs: Any) -> Any:
        lost: list[BaseException] = []
        token = _lost.set(lost)
        try:
            result = fn(*args, **kwargs)
        finally:
            _lost.reset(token)
        _raise_first(lost)
        return result

    watched.__ckpt_watched__ = True  # type: ignore[attr-defined]
    return watched  # type: ignore[return-value]

"""``@checkpointed``: save a function's result per call, load it when the run is retried.

The node key is ``<module>.<qualname>:<fingerprint>``, where the fingerprint is a stable hash of
the bound arguments (:mod:`ckpt_core.fingerprint`), so ``clean(day=1)`` and ``clean(day=2)`` are
separate checkpoints. ``key=`` replaces the fingerprint (a ``str``, or a callable taking the
function's arguments), ``node=`` replaces the name.

Outside any run (no ``ckpt_core.run`` and no ``CKPT_CORRELATION_ID``), a decorated function just
runs; the first such call in a process emits one :class:`CheckpointWarning`.
"""

from __future__ import annotations

import functools
import inspect
import threading
import time
import warnings
from collections.abc import Callable
from typing import Any, TypeVar, overload

from .context import ActiveRun, current_run
from .errors import CheckpointNotFound, CheckpointWarning, InvalidKey
from .fingerprint import fingerprint_call
from .types import Scope

F = TypeVar("F", bound=Callable[..., Any])
KeyFn = Callable[..., Any]

_FINGERPRINT_CHARS = 20
_warned = False
_warn_lock = threading.Lock()


def _warn_no_run(name: str) -> None:
    global _warned
    with _warn_lock:
        if _warned:
            return
        _warned = True
    warnings.warn(
        f"{name}() ran outside any ckpt run, so nothing is checkpointed. Wrap the pipeline in "
        "`with ckpt_core.run(correlation_id):` or set CKPT_CORRELATION_ID (shown once per process)",
        CheckpointWarning,
        stacklevel=3,
    )


class _Node:
    """Everything a decorated function needs to name and store one call."""

    def __init__(
        self,
        fn: Callable[..., Any],
        node: str | None,
        key: str | KeyFn | None,
        scope: Scope,
        codec: str | None,
    ) -> None:
        self.fn = fn
        self.name = node or f"{fn.__module__}.{fn.__qualname__}"
        self.key = key
        self.scope = Scope(scope)
        self.codec = codec

    def node_key(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
        if self.key is None:
            suffix = fingerprint_call(self.fn, args, kwargs)[:_FINGERPRINT_CHARS]
        elif callable(self.key):
            suffix = self.key(*args, **kwargs)
        else:
            suffix = self.key
        if not isinstance(suffix, str):
            raise InvalidKey(
                f"key= for {self.name} must give a str, got {type(suffix).__name__} {suffix!r}"
            )
        return f"{self.name}:{suffix}"


@overload
def checkpointed(fn: F) -> F: ...


@overload
def checkpointed(
    fn: None = None,
    *,
    node: str | None = None,
    key: str | KeyFn | None = None,
    scope: Scope = Scope.CORRELATION,
    codec: str | None = None,
) -> Callable[[F], F]: ...


def checkpointed(
    fn: F | None = None,
    *,
    node: str | None = None,
    key: str | KeyFn | None = None,
    scope: Scope = Scope.CORRELATION,
    codec: str | None = None,
) -> F | Callable[[F], F]:
    """Checkpoint each call's result in the active run; a retried run loads it instead.

    Works on sync and async functions. Use bare (``@checkpointed``) or with options.

    Args:
        node: checkpoint name (default ``module.qualname``).
        key: replaces the argument fingerprint: a ``str`` or ``callable(*args, **kwargs) -> str``.
            Needed when an argument has no stable content hash (a client, a connection).
        scope: ``Scope.CORRELATION`` (default; retries resume) or ``Scope.RUN``.
        codec: force a codec instead of the manager's default.
    """

    def decorate(func: F) -> F:
        if inspect.isgeneratorfunction(func) or inspect.isasyncgenfunction(func):
            raise TypeError(
                f"@checkpointed cannot wrap generator {func.__qualname__}(); return a list instead"
            )
        spec = _Node(func, node, key, scope, codec)

        if inspect.iscoroutinefunction(func):

            @functools.wraps(func)
            async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                active = current_run()
                if active is None:
                    _warn_no_run(spec.name)
                    return await func(*args, **kwargs)
                node_key = spec.node_key(args, kwargs)
                started = time.perf_counter()
                try:
                    value = await active.manager.aload(active.ctx, node_key)
                except CheckpointNotFound:
                    pass
                else:
                    active.record(node_key, "loaded", time.perf_counter() - started)
                    return value
                value = await func(*args, **kwargs)
                await active.manager.asave(
                    active.ctx, node_key, value, scope=spec.scope, codec=spec.codec
                )
                active.record(node_key, "computed", time.perf_counter() - started)
                return value

            async_wrapper.__ckpt_node__ = spec  # type: ignore[attr-defined]
            return async_wrapper  # type: ignore[return-value]

        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            active: ActiveRun | None = current_run()
            if active is None:
                _warn_no_run(spec.name)
                return func(*args, **kwargs)
            node_key = spec.node_key(args, kwargs)
            started = time.perf_counter()
            try:
                value = active.manager.load(active.ctx, node_key)
            except CheckpointNotFound:
                pass
            else:
                active.record(node_key, "loaded", time.perf_counter() - started)
                return value
            value = func(*args, **kwargs)
            active.manager.save(active.ctx, node_key, value, scope=spec.scope, codec=spec.codec)
            active.record(node_key, "computed", time.perf_counter() - started)
            return value

        wrapper.__ckpt_node__ = spec  # type: ignore[attr-defined]
        return wrapper  # type: ignore[return-value]

    if fn is not None:
        return decorate(fn)
    return decorate

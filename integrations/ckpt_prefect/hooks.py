"""Lifecycle hooks: clean each attempt's RUN scope, and the correlation once the flow succeeds.

:func:`resumable` adds :class:`CheckpointHooks` to a flow:

- ``on_running`` (start of every attempt, including in-process retries and ``prefect flow-run
  retry``): delete the RUN scope of the earlier attempts;
- ``on_completion``: ``finish(succeeded=True)``: RUN scope deleted, and the correlation's
  checkpoints too unless retention is ``"keep"``;
- ``on_failure``, ``on_crashed``, ``on_cancellation`` (final states only: Prefect does not call them
  for an attempt it will retry): ``finish(succeeded=False)``: RUN scope deleted, the correlation
  kept so the next run of the same job resumes.

The hooks also carry the flow's declared correlation (:mod:`.correlation` reads it from them).
Prefect logs a failing hook and carries on; ours log what they removed at debug level.
:func:`resumable` also makes a task result that cannot be checkpointed fail the flow run (see
:mod:`.failures`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, Literal, TypeVar, overload

from ckpt_core import CheckpointManager

from .block import CheckpointStorage
from .correlation import (
    Correlation,
    CorrelationSpec,
    Identity,
    flow_identity,
    is_inprocess_subflow,
)
from .failures import watch_checkpoints

log = logging.getLogger("ckpt.prefect")

Retention = Literal["delete", "keep"]
F = TypeVar("F")
_SLUG_PREFIX = CheckpointStorage._block_type_slug + "/"


def _check_storage(storage: Any, where: str) -> None:
    if storage is None or isinstance(storage, CheckpointStorage):
        return
    if isinstance(storage, str) and storage.startswith(_SLUG_PREFIX):
        return
    raise TypeError(
        f"{where} is {storage!r}, not a ckpt-storage block; pass a saved CheckpointStorage or "
        f"a slug like '{_SLUG_PREFIX}prod', or give resumable(storage=...)"
    )


class _Hook:
    """One Prefect flow-state hook bound to its :class:`CheckpointHooks`."""

    def __init__(self, owner: CheckpointHooks, kind: str) -> None:
        self.owner = owner
        self.kind = kind
        self.__name__ = f"ckpt_{kind}"
        self.__ckpt_spec__ = owner.spec

    def __call__(self, flow: Any, flow_run: Any, state: Any) -> Coroutine[Any, Any, None] | None:
        # Prefect awaits a coroutine a hook returns (sync engine included): async flows get
        # the async store calls, sync flows block.
        if getattr(flow, "isasync", False):
            return self.owner._arun(self.kind, flow, flow_run)
        self.owner._run(self.kind, flow, flow_run)
        return None


class CheckpointHooks:
    """The ckpt lifecycle of one flow, as Prefect state hooks.

    Args:
        correlation: the logical job a flow run belongs to, so a *new* flow run of the same job
            resumes from a failed one: a ``str.format`` template over ``flow_name`` and
            ``parameters`` (``"{flow_name}-{parameters[date]}"``) or a callable taking the
            parameters dict. Default: the flow run id (only retries of the same flow run resume).
        storage: the ``CheckpointStorage`` (saved instance or ``"ckpt-storage/<name>"`` slug) to
            clean. Default: the flow's ``result_storage``, else Prefect's default result storage
            (``PREFECT_RESULTS_DEFAULT_STORAGE_BLOCK``).
        retention: override the block's retention: ``"delete"`` removes the correlation's
            checkpoints after success, ``"keep"`` leaves them for ``ckpt gc``.
    """

    def __init__(
        self,
        *,
        correlation: Correlation | None = None,
        storage: CheckpointStorage | str | None = None,
        retention: Retention | None = None,
    ) -> None:
        if retention not in (None, "delete", "keep"):
            raise ValueError(f"retention must be 'delete' or 'keep', got {retention!r}")
        _check_storage(storage, "storage=")
        self.spec = CorrelationSpec(correlation) if correlation is not None else None
        self.storage = storage
        self.retention: Retention | None = retention

    def install(self, flow: F) -> F:
        """Add the hooks to ``flow`` (a Prefect ``Flow``) and return it."""
        hooks = getattr(flow, "on_running_hooks", None)
        if hooks is None:
            raise TypeError(
                f"resumable() decorates a Prefect flow; got {flow!r}. Put it above @flow"
            )
        name = str(getattr(flow, "name", flow))
        if any(hasattr(h, "__ckpt_spec__") for h in hooks):
            raise ValueError(f"flow {name!r} already has ckpt hooks")
        if self.spec is not None:
            parameters = getattr(flow, "parameters", None)
            self.spec.check(name, set(getattr(parameters, "properties", None) or {}))
        if self.storage is None:
            _check_storage(getattr(flow, "result_storage", None), f"{name!r}'s result_storage")
        # New lists: Flow.with_options shares hook lists between copies.
        for kind in ("running", "completion", "failure", "crashed", "cancellation"):
            attr = f"on_{kind}_hooks"
            setattr(flow, attr, [*getattr(flow, attr), _Hook(self, kind)])
        # Prefect only logs a result write that fails; the flow run fails instead (.failures).
        flow.fn = watch_checkpoints(flow.fn)  # type: ignore[attr-defined]
        return flow

    # -- resolution ------------------------------------------------------------------------
    def _source(self, flow: Any) -> Any:
        storage = self.storage if self.storage is not None else flow.result_storage
        if storage is None:
            from prefect.settings import get_current_settings

            storage = get_current_settings().results.default_storage_block
        if storage is None or isinstance(storage, Path):
            raise TypeError(
                f"flow {flow.name!r} has no ckpt-storage to clean: set result_storage= on the "
                "flow, PREFECT_RESULTS_DEFAULT_STORAGE_BLOCK=ckpt-storage/<name>, or "
                "resumable(storage=...)"
            )
        _check_storage(storage, f"the result storage of flow {flow.name!r}")
        return storage

    def _block(self, flow: Any) -> CheckpointStorage:
        storage = self._source(flow)
        if isinstance(storage, str):
            # `_sync=True` is the keyword Prefect's own sync code passes to its dispatching
            # methods; without it a sync flow started under a running event loop would get a
            # coroutine back.
            name = storage[len(_SLUG_PREFIX) :]
            storage = CheckpointStorage.load(name, _sync=True)  # type: ignore[call-arg]
        if not isinstance(storage, CheckpointStorage):  # pragma: no cover - checked above
            raise TypeError(f"{storage!r} is not a CheckpointStorage")
        return storage

    async def _ablock(self, flow: Any) -> CheckpointStorage:
        storage = self._source(flow)
        if isinstance(storage, str):
            storage = await CheckpointStorage.aload(storage[len(_SLUG_PREFIX) :])
        if not isinstance(storage, CheckpointStorage):  # pragma: no cover - checked above
            raise TypeError(f"{storage!r} is not a CheckpointStorage")
        return storage

    def _plan(
        self, kind: str, block: CheckpointStorage, flow: Any, flow_run: Any
    ) -> tuple[CheckpointManager, Identity, list[int], bool | None, Retention]:
        identity = flow_identity(flow, flow_run, block.namespace)
        manager = block.manager(identity.namespace)
        retention = self.retention or block.retention
        # `flow_run.run_count` is the attempt about to start, or (Prefect hands the hooks the
        # run as read before it entered Running) the one before; either way every attempt up to
        # it has ended or has not written anything yet, so its RUN scope can go.
        attempts = list(range(1, int(flow_run.run_count or 0) + 1))
        # None: an attempt starts (no finish); True/False: the flow run's final outcome.
        succeeded = {"running": None, "completion": True}.get(kind, False)
        if kind != "running" and not attempts:
            attempts = [1]
        return manager, identity, attempts, succeeded, retention

    def _run(self, kind: str, flow: Any, flow_run: Any) -> None:
        if _subflow(flow, flow_run):
            return
        manager, identity, attempts, succeeded, retention = self._plan(
            kind, self._block(flow), flow, flow_run
        )
        removed = sum(manager.cleanup_run(identity.run_id(a)) for a in attempts)
        if succeeded is not None:
            removed += manager.finish(identity.context(), succeeded, retention=retention)
        _log(kind, identity, removed)

    async def _arun(self, kind: str, flow: Any, flow_run: Any) -> None:
        if _subflow(flow, flow_run):
            return
        manager, identity, attempts, succeeded, retention = self._plan(
            kind, await self._ablock(flow), flow, flow_run
        )
        removed = 0
        for attempt in attempts:
            removed += await manager.acleanup_run(identity.run_id(attempt))
        if succeeded is not None:
            removed += await manager.afinish(identity.context(), succeeded, retention=retention)
        _log(kind, identity, removed)


def _subflow(flow: Any, flow_run: Any) -> bool:
    """In-process subflows file under their root flow run, whose hooks clean up: theirs don't."""
    if is_inprocess_subflow(flow_run):
        log.debug("ckpt: %r runs as a subflow; its root flow run owns the lifecycle", flow.name)
        return True
    return False


def _log(kind: str, identity: Identity, removed: int) -> None:
    log.debug(
        "ckpt %s hook: removed %d checkpoint(s) of correlation %r (namespace %r, attempt %d)",
        kind,
        removed,
        identity.correlation_id,
        identity.namespace,
        identity.attempt,
    )


@overload
def resumable(flow: F, /) -> F: ...


@overload
def resumable(
    flow: None = None,
    /,
    *,
    correlation: Correlation | None = None,
    storage: CheckpointStorage | str | None = None,
    retention: Retention | None = None,
) -> Callable[[F], F]: ...


def resumable(
    flow: F | None = None,
    /,
    *,
    correlation: Correlation | None = None,
    storage: CheckpointStorage | str | None = None,
    retention: Retention | None = None,
) -> F | Callable[[F], F]:
    """Give a flow ckpt's lifecycle (and optionally a correlation); put it above ``@flow``.

    Example:
        ```python
        @resumable(correlation="{flow_name}-{parameters[date]}")
        @flow(retries=2, result_storage="ckpt-storage/prod")
        def nightly(date: str) -> int: ...
        ```

    See :class:`CheckpointHooks` for the arguments.
    """
    hooks = CheckpointHooks(correlation=correlation, storage=storage, retention=retention)
    if flow is not None:
        return hooks.install(flow)
    return hooks.install

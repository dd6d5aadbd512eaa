"""The plain-Python run context: ``with ckpt_core.run("nightly-2026-11-22"): ...``.

The active run lives in a :class:`contextvars.ContextVar`, so asyncio tasks and threads started
with a copied context (``contextvars.copy_context().run``) see it, while unrelated threads do not.
On exit the run calls :meth:`CheckpointManager.finish` with the outcome: the RUN scope is cleaned,
the CORRELATION scope is cleaned after success (unless retention keeps it) and kept after a
failure, so running the script again with the same correlation id resumes.
"""

from __future__ import annotations

import contextvars
import logging
import os
import threading
import time
import uuid
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Literal

from .errors import ConcurrentRunError
from .lease import DEFAULT_LEASE_TTL, Lease
from .manager import CheckpointManager, Retention
from .stores.base import Store
from .types import RunContext

log = logging.getLogger("ckpt")

DEFAULT_STORE = "./.ckpt"
ENV_CORRELATION = "CKPT_CORRELATION_ID"
ENV_STORE = "CKPT_STORE"
ENV_NAMESPACE = "CKPT_NAMESPACE"


@dataclass(frozen=True)
class NodeEvent:
    """What happened to one checkpointed call: ``loaded`` from a checkpoint or ``computed``."""

    node: str
    status: Literal["loaded", "computed"]
    seconds: float


@dataclass
class ActiveRun:
    """The run a decorated call checkpoints into: a manager, a RunContext and what happened
    (and, for an exclusive run, the lease it holds)."""

    manager: CheckpointManager
    ctx: RunContext
    events: list[NodeEvent] = field(default_factory=list)
    lease: Lease | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def record(self, node: str, status: Literal["loaded", "computed"], seconds: float) -> None:
        with self._lock:
            self.events.append(NodeEvent(node, status, seconds))

    @property
    def loaded(self) -> list[str]:
        return [e.node for e in self.events if e.status == "loaded"]

    @property
    def computed(self) -> list[str]:
        return [e.node for e in self.events if e.status == "computed"]


_current: contextvars.ContextVar[ActiveRun | None] = contextvars.ContextVar(
    "ckpt_active_run", default=None
)
_implicit: ActiveRun | None = None
_implicit_env: tuple[str, str, str] | None = None
_implicit_lock = threading.Lock()


def current_run() -> ActiveRun | None:
    """The active run: the innermost ``ckpt_core.run`` (or one an integration set), else a
    process-wide run from ``CKPT_CORRELATION_ID`` if that variable is set, else ``None``."""
    active = _current.get()
    if active is not None:
        return active
    correlation = os.environ.get(ENV_CORRELATION)
    if not correlation:
        return None
    global _implicit, _implicit_env
    store = os.environ.get(ENV_STORE) or DEFAULT_STORE
    namespace = os.environ.get(ENV_NAMESPACE) or "default"
    env = (correlation, store, namespace)
    with _implicit_lock:
        # Rebuilt when any of the three variables changes, not only the correlation: a run that
        # kept writing to the old store after CKPT_STORE changed would be a silent surprise.
        if _implicit is None or _implicit_env != env:
            manager = CheckpointManager(store, namespace)
            ctx = RunContext(run_id=uuid.uuid4().hex, correlation_id=correlation)
            _implicit, _implicit_env = ActiveRun(manager, ctx), env
        return _implicit


def activate(active: ActiveRun) -> contextvars.Token[ActiveRun | None]:
    """Make ``active`` the current run (for integrations); undo with :func:`deactivate`."""
    return _current.set(active)


def deactivate(token: contextvars.Token[ActiveRun | None]) -> None:
    _current.reset(token)


class Run:
    """Run a block as one attempt of the job ``correlation_id``; ``@checkpointed`` calls inside
    save and resume there.

    Args:
        correlation_id: the logical job (``"nightly-2026-11-22"``); attempts with the same id
            resume from each other. Default: env ``CKPT_CORRELATION_ID``, else a fresh id (no
            resume across attempts).
        store: URL or :class:`Store`; default env ``CKPT_STORE``, else ``./.ckpt``.
        namespace: separates pipelines sharing a store; default env ``CKPT_NAMESPACE`` or
            ``"default"``.
        attempt: 1-based attempt number, recorded in each checkpoint's header.
        max_attempts: how many attempts the orchestrator allows (informational).
        run_id: id of this attempt (default: random).
        manager: an existing :class:`CheckpointManager` instead of ``store``/options.
        retention: override the manager's retention for this run's ``finish``.
        exclusive: single-writer mode: take the correlation's lease on entry (a second attempt
            of the same correlation running at the same time fails at once with
            :class:`~ckpt_core.errors.ConcurrentRunError`), renew it while the block runs and
            release it on exit. See :mod:`ckpt_core.lease`.
        lease_ttl: seconds the lease lives without renewal (``exclusive=True``); a crashed
            run blocks its correlation at most this long (a local directory frees it at once).
        **manager_options: ``codec=``, ``allow_pickle=``, ``signing_key=``, store options...

    Example:
        >>> import ckpt_core as ckpt
        >>> @ckpt.checkpointed
        ... def double(x):
        ...     return 2 * x
        >>> with ckpt.run("doc-example", store="memory://doctest"):
        ...     double(21)
        42
    """

    def __init__(
        self,
        correlation_id: str | None = None,
        *,
        store: Store | str | None = None,
        namespace: str | None = None,
        attempt: int = 1,
        max_attempts: int | None = None,
        run_id: str | None = None,
        manager: CheckpointManager | None = None,
        retention: Retention | None = None,
        exclusive: bool = False,
        lease_ttl: float = DEFAULT_LEASE_TTL,
        **manager_options: Any,
    ) -> None:
        correlation = correlation_id or os.environ.get(ENV_CORRELATION)
        self.run_id = run_id or uuid.uuid4().hex
        if not correlation:
            log.debug("ckpt.run without a correlation id: checkpoints live for this attempt only")
        self.ctx = RunContext(
            run_id=self.run_id,
            correlation_id=correlation or self.run_id,
            attempt=attempt,
            max_attempts=max_attempts,
        )
        # Close only what this run opened: a Store instance passed in belongs to the caller.
        self._owns_store = manager is None and not isinstance(store, Store)
        if manager is None:
            manager = CheckpointManager(
                store if store is not None else os.environ.get(ENV_STORE) or DEFAULT_STORE,
                namespace or os.environ.get(ENV_NAMESPACE) or "default",
                **manager_options,
            )
        elif store is not None or manager_options:
            raise TypeError("pass either manager= or store=/manager options, not both")
        self.manager = manager
        self.retention = retention
        self.exclusive = exclusive
        self.lease_ttl = lease_ttl
        self.active = ActiveRun(manager, self.ctx)
        self._tokens: list[contextvars.Token[ActiveRun | None]] = []
        self.started = 0.0

    @staticmethod
    def _lost_lease_of(lease: Lease | None) -> ConcurrentRunError | None:
        """Why an exclusive run may no longer finish (its lease was lost), else ``None``.

        A run that lost its lease must not apply the lifecycle: deleting the correlation's
        checkpoints after "success" would pull them from under the attempt that holds it now.
        """
        if lease is None:
            return None
        try:
            lease.check()
        except ConcurrentRunError as lost:
            return lost
        return None

    def _entered(self, lease: Lease | None) -> ActiveRun:
        self.active.lease = lease
        self.started = time.perf_counter()
        self._tokens.append(_current.set(self.active))
        return self.active

    # sync
    def __enter__(self) -> ActiveRun:
        lease = None
        if self.exclusive:
            try:
                lease = self.manager.acquire_lease(self.ctx, ttl=self.lease_ttl)
            except BaseException:
                if self._owns_store:
                    self.manager.close()
                raise
        return self._entered(lease)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        _current.reset(self._tokens.pop())
        lease, self.active.lease = self.active.lease, None
        try:
            lost = self._lost_lease_of(lease)
            if lost is not None:
                if exc_type is None:
                    raise lost
            else:
                self.manager.finish(self.ctx, exc_type is None, retention=self.retention)
        except Exception:
            if exc_type is None:
                raise
            log.warning("ckpt: could not finish run %s after a failure", self.run_id, exc_info=True)
        finally:
            try:
                if lease is not None:
                    lease.release()
            finally:
                if self._owns_store:
                    self.manager.close()

    # async
    async def __aenter__(self) -> ActiveRun:
        lease = None
        if self.exclusive:
            try:
                lease = await self.manager.aacquire_lease(self.ctx, ttl=self.lease_ttl)
            except BaseException:
                if self._owns_store:
                    await self.manager.aclose()
                raise
        return self._entered(lease)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        _current.reset(self._tokens.pop())
        lease, self.active.lease = self.active.lease, None
        try:
            lost = self._lost_lease_of(lease)
            if lost is not None:
                if exc_type is None:
                    raise lost
            else:
                await self.manager.afinish(self.ctx, exc_type is None, retention=self.retention)
        except Exception:
            if exc_type is None:
                raise
            log.warning("ckpt: could not finish run %s after a failure", self.run_id, exc_info=True)
        finally:
            try:
                if lease is not None:
                    await lease.arelease()
            finally:
                if self._owns_store:
                    await self.manager.aclose()


#: ``ckpt_core.run(...)`` reads as a verb; it is the :class:`Run` context manager.
run = Run

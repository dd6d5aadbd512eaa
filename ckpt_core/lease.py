"""Single-writer mode: an exclusive, expiring lease per correlation (``exclusive=True``).

Two attempts of the same correlation running at once would interleave their checkpoints: each
would load what the other saved and overwrite it. With ``ckpt.run(..., exclusive=True)`` (or
:meth:`CheckpointManager.acquire_lease`) an attempt first takes the correlation's lease; a second
attempt fails at once with :class:`~ckpt_core.errors.ConcurrentRunError`, naming who holds the
lease (host, pid, run id), when it expires and what to do. Different correlations never block each
other: the lease is named by the namespace and the correlation id, each encoded as one key
component by :mod:`ckpt_core.keys`, so hostile ids work as everywhere else.

Each store provides the primitive through :meth:`Store.lease_backend`, a :class:`LeaseBackend`
with three operations (and their ``a`` twins) on a named lease: ``acquire`` (take it if free or
expired, else report the holder), ``renew`` (extend it, only if still ours) and ``release`` (only
if still ours). The holder's record (:class:`LeaseHolder`, JSON) travels as opaque bytes, so
stores stay bytes-only:

=================  ===========================================================================
store              mechanism
=================  ===========================================================================
memory             a dict under a lock, expiring on the monotonic clock
local directory    an OS file lock (``flock``) on ``<root>/.leases/<ns>/<corr>``; the kernel frees
                   it when the holder's process dies, so a lease never outlives its process
                   (and never expires while it lives)
S3                 a lease object ``<prefix>/.leases/<ns>/<corr>``, created with
                   ``If-None-Match: *``; renewed, taken over after expiry and deleted only with
                   ``If-Match: <the ETag we saw>``, so each write is a compare-and-swap. Expiry
                   is judged on the server's clock (``Last-Modified`` against the ``Date`` of
                   the response)
Redis              ``SET key record NX PX ttl``; renewed and released by Lua scripts that compare
                   the stored record first, so one holder never extends or frees another's lease
=================  ===========================================================================

While held, a daemon thread renews the lease every ``ttl / 3``. If a renewal finds the lease gone
(it expired and another attempt took it), or the store stays unreachable for a whole ``ttl``, the
lease is marked lost and the next save of that correlation raises :class:`ConcurrentRunError`
instead of writing. A lease is advisory for code that does not take it, and like every lease it
bounds, not removes, the window of a holder frozen for longer than ``ttl`` (a stopped VM): such a
holder notices at its next save.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from types import TracebackType
from typing import TYPE_CHECKING, Any

from . import keys
from .errors import ConcurrentRunError, StoreConfigError

if TYPE_CHECKING:
    from .stores.base import Store
    from .types import RunContext

log = logging.getLogger("ckpt")

#: Seconds a lease lives without renewal (renewed every third of that while the run is alive).
DEFAULT_LEASE_TTL = 60.0
#: Directory (under a store's root) or key segment holding lease objects; a ``.``-name, so no
#: listing or prefix delete of records ever sees it.
LEASE_DIR = ".leases"


def lease_name(namespace: str, correlation_id: str) -> str:
    """The store-level name of a correlation's lease: ``<ns>/<corr>``, each id encoded."""
    return keys.join(keys.encode_component(namespace), keys.encode_component(correlation_id))


# -- what the stores implement ---------------------------------------------------------------


@dataclass(frozen=True)
class Claim:
    """Proof that this process holds the lease ``name``; ``token`` is the backend's handle (the
    record for Redis and memory, the object's ETag for S3, the locked file descriptor locally)."""

    name: str
    token: Any


@dataclass(frozen=True)
class Held:
    """The lease is held by someone else.

    Attributes:
        record: the holder's record as stored (``None`` if it could not be read).
        expires_in: seconds until it expires unless renewed; ``None`` if it does not expire
            (a local lock lasts as long as its process).
    """

    record: bytes | None
    expires_in: float | None


class LeaseBackend(abc.ABC):
    """A store's lease primitives; see the module docstring for each backend's mechanism.

    ``acquire`` takes the lease if it is free or expired and returns a :class:`Claim`, else a
    :class:`Held` describing the current holder. ``renew`` extends a lease we hold and returns the
    (possibly updated) claim, or ``None`` if it is no longer ours. ``release`` frees it only if
    it is still ours. None of them waits for a holder: a busy lease is reported at once.
    """

    #: Redacted URL of the store, for messages.
    url: str = ""
    #: Whether leases expire (``False``: held until released or the holder's process exits).
    expires: bool = True

    @abc.abstractmethod
    def acquire(self, name: str, record: bytes, ttl: float) -> Claim | Held: ...

    @abc.abstractmethod
    def renew(self, claim: Claim, record: bytes, ttl: float) -> Claim | None: ...

    @abc.abstractmethod
    def release(self, claim: Claim) -> None: ...

    @abc.abstractmethod
    async def aacquire(self, name: str, record: bytes, ttl: float) -> Claim | Held: ...

    @abc.abstractmethod
    async def arenew(self, claim: Claim, record: bytes, ttl: float) -> Claim | None: ...

    @abc.abstractmethod
    async def arelease(self, claim: Claim) -> None: ...


class BlockingLeaseBackend(LeaseBackend):
    """A lease backend whose client only blocks: the async twins run the sync body in a thread."""

    async def aacquire(self, name: str, record: bytes, ttl: float) -> Claim | Held:
        return await asyncio.to_thread(self.acquire, name, record, ttl)

    async def arenew(self, claim: Claim, record: bytes, ttl: float) -> Claim | None:
        return await asyncio.to_thread(self.renew, claim, record, ttl)

    async def arelease(self, claim: Claim) -> None:
        await asyncio.to_thread(self.release, claim)


def unsupported(store: object) -> StoreConfigError:
    """The error of a store without lease primitives."""
    return StoreConfigError(
        f"{store!r} does not support exclusive=True (single-writer leases). Use a local "
        "directory, S3, Redis or memory:// store for exclusive runs, or drop exclusive=True and "
        "limit concurrency in the orchestrator (see the concurrency docs)"
    )


# -- the holder record -----------------------------------------------------------------------


@dataclass(frozen=True)
class LeaseHolder:
    """Who holds a lease; stored with it and shown to a second attempt.

    Attributes:
        namespace, correlation_id: what the lease covers.
        run_id: the attempt holding it.
        host, pid: where that attempt runs.
        token: random id of this acquisition (two acquisitions never share one).
        acquired_at: when it was taken (seconds since the epoch, the holder's clock).
        ttl: seconds it lives without renewal (``None``: until released or the process exits).
        renewals: how many times it was renewed (S3 stores it, so every renewal is a new object).
    """

    namespace: str
    correlation_id: str
    run_id: str
    host: str
    pid: int
    token: str
    acquired_at: float
    ttl: float | None
    renewals: int = 0

    def encode(self) -> bytes:
        return json.dumps(
            {
                "kind": "ckpt-lease",
                "ns": self.namespace,
                "corr": self.correlation_id,
                "run": self.run_id,
                "host": self.host,
                "pid": self.pid,
                "token": self.token,
                "acquired_at": self.acquired_at,
                "ttl": self.ttl,
                "renewals": self.renewals,
            },
            sort_keys=True,
        ).encode()

    @classmethod
    def decode(cls, data: bytes | None) -> LeaseHolder | None:
        """The holder in ``data``, or ``None`` if it is not a readable lease record."""
        if not data:
            return None
        try:
            raw = json.loads(bytes(data))
            if raw.get("kind") != "ckpt-lease":
                return None
            ttl = raw.get("ttl")
            return cls(
                namespace=str(raw["ns"]),
                correlation_id=str(raw["corr"]),
                run_id=str(raw["run"]),
                host=str(raw["host"]),
                pid=int(raw["pid"]),
                token=str(raw["token"]),
                acquired_at=float(raw["acquired_at"]),
                ttl=None if ttl is None else float(ttl),
                renewals=int(raw.get("renewals", 0)),
            )
        except (ValueError, KeyError, TypeError, AttributeError):
            return None


def _when(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def _busy_error(
    name_ns: str, correlation_id: str, url: str, held: Held, expires: bool
) -> ConcurrentRunError:
    holder = LeaseHolder.decode(held.record)
    if holder is None:
        who = "another attempt (its lease record could not be read)"
    else:
        who = (
            f"run {holder.run_id!r} (pid {holder.pid} on host {holder.host!r}) since "
            f"{_when(holder.acquired_at)}"
        )
    if not expires:
        until = (
            "The lock is held until that process finishes the run or exits; the operating "
            "system frees it at once if the process dies"
        )
        todo = "Wait for the other attempt to finish, or stop it"
    else:
        if held.expires_in is None:
            until = "The lease has no expiry set"
        else:
            left = max(0.0, held.expires_in)
            until = (
                f"Its lease expires at {_when(time.time() + left)} (in {left:.0f} s) unless that "
                "run renews it, which a live run does every third of its ttl"
            )
        todo = (
            "Wait for the other attempt to finish, or stop it; if it died, start again once its "
            "lease has expired"
        )
    return ConcurrentRunError(
        f"correlation {correlation_id!r} (namespace {name_ns!r}) is already being run on {url}: "
        f"{who} holds its exclusive lease. {until}. Two attempts writing one correlation at once "
        f"would interleave their checkpoints, so this attempt stops before writing anything. "
        f"{todo}. Different correlation ids never block each other."
    )


# -- the lease a run holds -------------------------------------------------------------------


class Lease:
    """An exclusive lease on one correlation, held by this process.

    Made by :meth:`CheckpointManager.acquire_lease` (or ``ckpt.run(..., exclusive=True)``);
    ``release``/``arelease`` (or leaving the ``with`` block) frees it. While renewal runs, a
    daemon thread renews it every ``ttl / 3``; :meth:`check` raises
    :class:`~ckpt_core.errors.ConcurrentRunError` once it is lost.

    Attributes:
        holder: who holds it (this process), as stored with the lease.
        ttl: seconds it lives without renewal.
        name: the store-level lease name (``<ns>/<corr>``, encoded).
    """

    def __init__(
        self, backend: LeaseBackend, claim: Claim, holder: LeaseHolder, ttl: float
    ) -> None:
        self.backend = backend
        self.holder = holder
        self.ttl = ttl
        self.name = claim.name
        self._claim: Claim | None = claim
        self._lost: ConcurrentRunError | None = None
        self._renewed = time.monotonic()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._on_release: list[Callable[[Lease], None]] = []
        #: The process that holds the lease; a forked child only inherits a view of it.
        self._pid = os.getpid()

    def __repr__(self) -> str:
        state = "lost" if self._lost else "held" if self._claim else "released"
        return (
            f"Lease({self.holder.correlation_id!r}, namespace={self.holder.namespace!r}, "
            f"run={self.holder.run_id!r}, {state})"
        )

    @property
    def held(self) -> bool:
        """Whether this process still holds the lease (not released, not known to be lost)."""
        return self._claim is not None and self._lost is None

    @property
    def lost(self) -> ConcurrentRunError | None:
        """The error explaining how the lease was lost, or ``None``."""
        return self._lost

    def check(self) -> None:
        """Raise :class:`ConcurrentRunError` if the lease is lost or may have expired (not
        renewed for a whole ttl), so no checkpoint is written without it.

        In a forked child (a multiprocessing or executor worker of the holder) the parent holds
        and renews the lease; the child only sees whether it was lost before the fork.
        """
        if self._lost is not None:
            raise self._lost
        if self._claim is None:
            raise ConcurrentRunError(
                f"the lease on correlation {self.holder.correlation_id!r} was released; "
                "checkpoints of an exclusive run are written only while it holds its lease"
            )
        silent = time.monotonic() - self._renewed
        if self.backend.expires and silent > self.ttl and os.getpid() == self._pid:
            raise self._mark_lost(f"it was last renewed {silent:.0f} s ago, more than its ttl")

    def _mark_lost(self, why: str) -> ConcurrentRunError:
        """Record that the lease is lost (the first reason wins) and return the error."""
        if self._lost is None:
            self._lost = ConcurrentRunError(
                f"the exclusive lease of run {self.holder.run_id!r} on correlation "
                f"{self.holder.correlation_id!r} (namespace {self.holder.namespace!r}) on "
                f"{self.backend.url} was lost: {why}. Another attempt may be running this "
                "correlation now, so this one writes no more checkpoints. Let the other attempt "
                "finish, then retry; raise lease_ttl if the store is often slow to answer."
            )
            log.warning("ckpt: %s", self._lost)
        return self._lost

    def on_release(self, callback: Callable[[Lease], None]) -> None:
        """Call ``callback(lease)`` when the lease is released (the manager forgets it then)."""
        self._on_release.append(callback)

    def _record(self) -> bytes:
        return self.holder.encode()

    # -- renewal ---------------------------------------------------------------------------
    def renew(self) -> None:
        """Extend the lease by its ttl now; raises :class:`ConcurrentRunError` if it is lost."""
        with self._lock:
            claim = self._claim
            if claim is None or self._lost is not None:
                self.check()
                return
            self.holder = replace(self.holder, renewals=self.holder.renewals + 1)
            renewed = self.backend.renew(claim, self._record(), self.ttl)
            if renewed is None:
                raise self._mark_lost(
                    "it expired and another attempt took it over, or it was deleted"
                )
            self._claim = renewed
            self._renewed = time.monotonic()

    async def arenew(self) -> None:
        """Async twin of :meth:`renew` (in a worker thread: renewals of one lease are serialized
        with the renewal thread's, so two of ours never race each other)."""
        await asyncio.to_thread(self.renew)

    def start_renewal(self, interval: float | None = None) -> None:
        """Renew every ``interval`` seconds (default ``ttl / 3``) in a daemon thread, until
        :meth:`release`. Transient store errors are retried at the next tick; the lease is
        marked lost when a renewal finds it taken, or none succeeded for a whole ttl."""
        if self._thread is not None:
            return
        every = self.ttl / 3 if interval is None else interval
        self._thread = threading.Thread(
            target=self._renew_loop,
            args=(every,),
            name=f"ckpt-lease-{self.holder.correlation_id[:40]}",
            daemon=True,
        )
        self._thread.start()

    def _renew_loop(self, every: float) -> None:
        while not self._stop.wait(every):
            try:
                self.renew()
            except ConcurrentRunError:
                return
            except Exception as exc:
                silent = time.monotonic() - self._renewed
                if self.backend.expires and silent > self.ttl:
                    self._mark_lost(
                        f"no renewal succeeded for {silent:.0f} s (last error: "
                        f"{type(exc).__name__}: {exc})"
                    )
                    return
                log.warning("ckpt: renewing the lease of %r failed, retrying: %s", self, exc)

    def _stop_renewal(self) -> None:
        self._stop.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(30)

    # -- release ---------------------------------------------------------------------------
    def _released(self) -> Claim | None:
        with self._lock:
            claim, self._claim = self._claim, None
        for callback in self._on_release:
            with contextlib.suppress(Exception):
                callback(self)
        return claim

    def release(self) -> None:
        """Free the lease (if it is still ours); idempotent. In a forked child it only forgets
        the lease: the parent holds it."""
        self._stop_renewal()
        claim = self._released()
        if claim is not None and os.getpid() == self._pid:
            self.backend.release(claim)

    async def arelease(self) -> None:
        """Async twin of :meth:`release`."""
        if self._thread is not None:
            await asyncio.to_thread(self._stop_renewal)
        claim = self._released()
        if claim is not None and os.getpid() == self._pid:
            await self.backend.arelease(claim)

    def __enter__(self) -> Lease:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()

    async def __aenter__(self) -> Lease:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.arelease()


# -- acquisition (one copy of the logic, two short drivers) -----------------------------------


def _check_ttl(ttl: float) -> float:
    try:
        value = float(ttl)
    except (TypeError, ValueError):
        value = -1.0
    if not 0 < value < float("inf"):
        raise ValueError(f"lease ttl must be a positive number of seconds, got {ttl!r}")
    return value


def _prepare(
    store: Store, ctx: RunContext, namespace: str, ttl: float
) -> tuple[LeaseBackend, str, LeaseHolder]:
    ttl = _check_ttl(ttl)
    name = lease_name(namespace, ctx.correlation_id)
    backend = store.lease_backend()
    holder = LeaseHolder(
        namespace=namespace,
        correlation_id=ctx.correlation_id,
        run_id=ctx.run_id,
        host=socket.gethostname(),
        pid=os.getpid(),
        token=uuid.uuid4().hex,
        acquired_at=time.time(),
        ttl=ttl if backend.expires else None,
    )
    return backend, name, holder


def _claimed(backend: LeaseBackend, result: Claim | Held, holder: LeaseHolder, ttl: float) -> Lease:
    if isinstance(result, Held):
        raise _busy_error(
            holder.namespace, holder.correlation_id, backend.url, result, backend.expires
        )
    return Lease(backend, result, holder, _check_ttl(ttl))


def acquire_lease(
    store: Store,
    ctx: RunContext,
    namespace: str,
    *,
    ttl: float = DEFAULT_LEASE_TTL,
    renew: bool = True,
) -> Lease:
    """Take the exclusive lease of ``ctx``'s correlation on ``store``, or raise
    :class:`ConcurrentRunError` at once if another attempt holds it."""
    backend, name, holder = _prepare(store, ctx, namespace, ttl)
    lease = _claimed(backend, backend.acquire(name, holder.encode(), ttl), holder, ttl)
    if renew:
        lease.start_renewal()
    return lease


async def aacquire_lease(
    store: Store,
    ctx: RunContext,
    namespace: str,
    *,
    ttl: float = DEFAULT_LEASE_TTL,
    renew: bool = True,
) -> Lease:
    """Async twin of :func:`acquire_lease`."""
    backend, name, holder = _prepare(store, ctx, namespace, ttl)
    lease = _claimed(backend, await backend.aacquire(name, holder.encode(), ttl), holder, ttl)
    if renew:
        lease.start_renewal()
    return lease


__all__ = [
    "DEFAULT_LEASE_TTL",
    "BlockingLeaseBackend",
    "Claim",
    "Held",
    "Lease",
    "LeaseBackend",
    "LeaseHolder",
    "aacquire_lease",
    "acquire_lease",
    "lease_name",
]

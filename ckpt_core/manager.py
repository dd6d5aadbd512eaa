"""``CheckpointManager``: scopes, lookup order, lifecycle and codec choice, over any store.

Each public operation is one plan (see :mod:`ckpt_core.plans`) with a sync and an async driver,
so ``save``/``asave`` and friends cannot drift apart.

Key layout (every id encoded by :mod:`ckpt_core.keys`)::

    <namespace>/run/<run_id>/<node>              Scope.RUN
    <namespace>/corr/<correlation_id>/<node>     Scope.CORRELATION
"""

from __future__ import annotations

import builtins
import json
import os
import time
from collections.abc import Collection
from typing import Any, Literal

from . import crypto, keys
from . import lease as _lease
from .envelope import OpenedRecord, Record, read_record
from .errors import (
    CheckpointCorrupted,
    CheckpointError,
    CheckpointNotFound,
    SchemaMismatch,
    SerializationError,
)
from .lease import DEFAULT_LEASE_TTL, Lease
from .plans import Plan, StoreOp, run_async, run_sync
from .serde import CodecSet
from .serde.base import type_name
from .stores.base import ObjectInfo, ReadStream, Store
from .stores.registry import open_store
from .types import CheckpointInfo, RunContext, Scope

Retention = Literal["delete", "keep"]
_RETENTIONS = ("delete", "keep")


def _signing_key(value: str | bytes | None) -> bytes | None:
    if value is None:
        value = os.environ.get("CKPT_SIGNING_KEY") or None
    if value is None:
        return None
    key = value.encode() if isinstance(value, str) else bytes(value)
    if not key:
        raise ValueError("signing_key is empty; pass None to disable signing")
    return key


def _same_id(stored: Any, expected: str) -> bool:
    """Whether an id read back from a record header is ``expected``. JSON joins an escaped
    surrogate pair (``"\\ud800\\udc00"``) into one character, so such ids are compared in
    that form."""
    return bool(stored == expected or stored == json.loads(json.dumps(expected)))


#: Errors a codec raises without knowing the record's key; ``_decode`` adds it.
_KEYED = (CheckpointCorrupted, SerializationError, SchemaMismatch)


def _validate(value: Any, schema: Any) -> Any:
    # isinstance only for plain classes: list[int] and other generics go to pydantic.
    if isinstance(schema, type) and not hasattr(schema, "__origin__") and isinstance(value, schema):
        return value
    from pydantic import TypeAdapter

    try:
        return TypeAdapter(schema).validate_python(value)
    except Exception as exc:  # ValidationError, or a schema pydantic cannot build at all
        raise SchemaMismatch(
            f"the stored {type_name(value)} does not validate as "
            f"{getattr(schema, '__name__', schema)}: {exc}"
        ) from None


class CheckpointManager:
    """Save and load step outputs, per run and per correlation, on one store.

    Args:
        store: a :class:`~ckpt_core.stores.Store` or a URL for :func:`~ckpt_core.open_store`.
        namespace: separates pipelines that share a store (flow or job name).
        codec: default codec (``"auto"`` picks by type: raw, numpy, arrow, json, pickle).
        allow_pickle: allow saving and loading pickle records. Loading a pickle runs code chosen
            by whoever wrote it; switch it off for stores others can write to.
        pickle_modules: if given, pickle records may only revive classes from these top-level
            modules (plus builtins and collections).
        signing_key: HMAC-SHA256 key (``str`` or ``bytes``; default env ``CKPT_SIGNING_KEY``).
            When set, every record is signed and unsigned or altered records are refused before
            decoding.
        encryption_key: encrypt payloads at rest with AES-256-GCM (needs ``ckpt[crypto]``). A
            secret ``str`` (commas separate several keys), ``bytes``, or a list of them; default
            env ``CKPT_ENCRYPTION_KEY``. The first key encrypts new records, every listed key
            decrypts (rotation); when set, plaintext records are refused. See
            :mod:`ckpt_core.crypto`.
        retention: ``"delete"`` (default): a correlation's checkpoints are removed after a
            successful attempt; ``"keep"``: they stay until ``cleanup_correlation`` or gc.
        **store_options: options for :func:`~ckpt_core.open_store` when ``store`` is a URL.
    """

    def __init__(
        self,
        store: Store | str,
        namespace: str = "default",
        *,
        codec: str = "auto",
        allow_pickle: bool = True,
        pickle_modules: Collection[str] | None = None,
        signing_key: str | bytes | None = None,
        encryption_key: crypto.KeyInput = None,
        retention: Retention = "delete",
        **store_options: Any,
    ) -> None:
        if retention not in _RETENTIONS:
            raise ValueError(f"retention must be one of {_RETENTIONS}, got {retention!r}")
        keys.encode_component(namespace)  # validate early: a bad namespace fails here
        self.store = open_store(store, **store_options)
        self.namespace = namespace
        self.codec = codec
        self.retention: Retention = retention
        self.codecs = CodecSet(allow_pickle=allow_pickle, pickle_modules=pickle_modules)
        self._signing_key = _signing_key(signing_key)
        self._keyring = crypto.keyring(encryption_key)

    def __repr__(self) -> str:
        return f"CheckpointManager({self.store!r}, namespace={self.namespace!r})"

    # -- keys ------------------------------------------------------------------------------
    def key_for(self, ctx: RunContext, node: str, scope: Scope = Scope.CORRELATION) -> str:
        """The store key a checkpoint of ``node`` has in ``scope``."""
        if type(scope) is not Scope:
            scope = Scope(scope)
        if scope is Scope.RUN:
            return keys.record_key(self.namespace, "run", ctx.run_id, node)
        return keys.record_key(self.namespace, "correlation", ctx.correlation_id, node)

    def _lookup_keys(self, ctx: RunContext, node: str) -> list[str]:
        """The keys a load tries, in order: RUN scope, then CORRELATION (through
        :meth:`key_for`, which a subclass may lay out differently, as the Dagster asset manager
        does)."""
        return [self.key_for(ctx, node, Scope.RUN), self.key_for(ctx, node, Scope.CORRELATION)]

    def _info(self, obj: ObjectInfo, **fields: Any) -> CheckpointInfo:
        parsed = keys.parse_record_key(obj.key)
        ns, scope, _owner, node = parsed if parsed else (self.namespace, "correlation", "", obj.key)
        return CheckpointInfo(
            namespace=ns,
            node=node,
            scope=Scope(scope),
            key=obj.key,
            size=obj.size,
            modified=obj.modified,
            **fields,
        )

    # -- plans (the logic, written once) ---------------------------------------------------
    def _save_plan(
        self, ctx: RunContext, node: str, value: Any, scope: Scope, codec: str | None
    ) -> Plan[CheckpointInfo]:
        self._check_lease(ctx)
        if type(scope) is not Scope:
            scope = Scope(scope)
        key = self.key_for(ctx, node, scope)
        chosen, encoded = self.codecs.encode(value, codec or self.codec, node)
        created = time.time()
        header = {
            "codec": chosen.name,
            "schema": encoded.schema,
            "created_at": created,
            "ns": self.namespace,
            "node": node,
            "scope": scope.value,
            "run": ctx.run_id,
            "corr": ctx.correlation_id,
            "attempt": ctx.attempt,
        }
        keyring = self._keyring
        record = Record(
            header, encoded.buffers, self._signing_key, keyring.primary if keyring else None
        )
        yield StoreOp("put", (key, record))
        return CheckpointInfo(
            namespace=self.namespace,
            node=node,
            scope=scope,
            key=key,
            size=record.size,
            modified=created,
            codec=chosen.name,
            checksum=record.checksum,
            schema=encoded.schema,
            run_id=ctx.run_id,
            correlation_id=ctx.correlation_id,
            attempt=ctx.attempt,
            created_at=created,
            signed=self._signing_key is not None,
            encrypted=record.encrypted,
        )

    def _load_plan(self, ctx: RunContext, node: str, schema: Any) -> Plan[Any]:
        found = yield StoreOp("read_first", (self._lookup_keys(ctx, node), self._open))
        if found is None:
            raise CheckpointNotFound(
                f"no checkpoint for node {node!r} in run {ctx.run_id!r} or correlation "
                f"{ctx.correlation_id!r} (namespace {self.namespace!r}) on {self.store.url}",
                node=node,
            )
        key, opened = found
        return self._decode(key, opened, node, schema)

    def _open(self, key: str, stream: ReadStream) -> OpenedRecord:
        """Verify (and decrypt) the record the store found; runs where the store reads it."""
        return read_record(key, stream, self._signing_key, self._keyring)

    def _decode(self, key: str, opened: OpenedRecord, node: str, schema: Any) -> Any:
        header = opened.header
        if not (_same_id(header.get("ns"), self.namespace) and _same_id(header.get("node"), node)):
            raise CheckpointCorrupted(
                f"checkpoint {key} holds node {header.get('node')!r} of namespace "
                f"{header.get('ns')!r}, not {node!r} of {self.namespace!r}; it was copied or "
                "renamed, and is not loaded",
                key=key,
            )
        codec = self.codecs.decoder(header["codec"], key)
        try:
            value = codec.decode(opened.parts, header.get("schema"), want=schema)
        except CheckpointError as exc:
            if key in str(exc) or type(exc) not in _KEYED:
                raise
            # Codecs do not know the key (a lying numpy shape, a refused pickle class): name it.
            keyed = type(exc)(f"checkpoint {key}: {exc}")
            if isinstance(keyed, CheckpointCorrupted):
                keyed.key = key
            raise keyed from None
        except Exception as exc:
            raise SerializationError(
                f"cannot decode checkpoint {key} (codec {codec.name}): "
                f"{type(exc).__name__}: {exc}. If the code that produced it changed, delete "
                "the checkpoint to recompute"
            ) from None
        if schema is not None and codec.name != "json":
            value = _validate(value, schema)
        return value

    def _lookup_plan(self, ctx: RunContext, node: str) -> Plan[CheckpointInfo | None]:
        for key in self._lookup_keys(ctx, node):
            obj = yield StoreOp("head", (key,))
            if obj is not None:
                return self._info(obj)
        return None

    def _list_plan(self, ctx: RunContext) -> Plan[list[CheckpointInfo]]:
        out: list[CheckpointInfo] = []
        for scope, owner in ((Scope.RUN, ctx.run_id), (Scope.CORRELATION, ctx.correlation_id)):
            prefix = keys.scope_prefix(self.namespace, scope.value, owner)
            found = yield StoreOp("list", (prefix,))
            out.extend(self._info(obj) for obj in sorted(found, key=lambda o: o.key))
        return out

    def _delete_plan(self, scope: Scope, owner: str) -> Plan[int]:
        prefix = keys.scope_prefix(self.namespace, Scope(scope).value, owner)
        count = yield StoreOp("delete_prefix", (prefix,))
        return int(count)

    def _finish_plan(
        self, ctx: RunContext, succeeded: bool, retention: Retention | None
    ) -> Plan[int]:
        deleted = yield from self._delete_plan(Scope.RUN, ctx.run_id)
        if succeeded and (retention or self.retention) == "delete":
            deleted += yield from self._delete_plan(Scope.CORRELATION, ctx.correlation_id)
        return deleted

    # -- sync API --------------------------------------------------------------------------
    def save(
        self,
        ctx: RunContext,
        node: str,
        value: Any,
        scope: Scope = Scope.CORRELATION,
        *,
        codec: str | None = None,
    ) -> CheckpointInfo:
        """Store ``value`` as the checkpoint of ``node``; overwrites atomically."""
        return run_sync(self.store, self._save_plan(ctx, node, value, scope, codec))

    def load(self, ctx: RunContext, node: str, *, schema: Any = None) -> Any:
        """The checkpointed value of ``node`` (RUN scope first, then CORRELATION).

        Raises :class:`CheckpointNotFound` on a miss; a stored ``None`` is a hit.
        ``schema=`` validates or coerces the value (pydantic ``TypeAdapter`` semantics).
        """
        return run_sync(self.store, self._load_plan(ctx, node, schema))

    def lookup(self, ctx: RunContext, node: str) -> CheckpointInfo | None:
        """Where ``node``'s checkpoint is, without reading its payload; ``None`` on a miss."""
        return run_sync(self.store, self._lookup_plan(ctx, node))

    def list(self, ctx: RunContext) -> list[CheckpointInfo]:
        """Checkpoints of this run (RUN scope) and of its correlation."""
        return run_sync(self.store, self._list_plan(ctx))

    def finish(
        self, ctx: RunContext, succeeded: bool, *, retention: Retention | None = None
    ) -> int:
        """Apply the lifecycle at the end of an attempt; returns how many records were removed.

        RUN scope is always removed. CORRELATION scope is removed after success unless retention
        is ``"keep"``, and kept after a failure so the next attempt resumes.
        """
        return run_sync(self.store, self._finish_plan(ctx, succeeded, retention))

    def cleanup_run(self, run_id: str) -> int:
        """Delete every RUN-scope checkpoint of ``run_id``."""
        return run_sync(self.store, self._delete_plan(Scope.RUN, run_id))

    def cleanup_correlation(self, correlation_id: str) -> int:
        """Delete every CORRELATION-scope checkpoint of ``correlation_id``."""
        return run_sync(self.store, self._delete_plan(Scope.CORRELATION, correlation_id))

    def close(self) -> None:
        self.store.close()

    # -- async twins -----------------------------------------------------------------------
    async def asave(
        self,
        ctx: RunContext,
        node: str,
        value: Any,
        scope: Scope = Scope.CORRELATION,
        *,
        codec: str | None = None,
    ) -> CheckpointInfo:
        """Async twin of :meth:`save`."""
        return await run_async(self.store, self._save_plan(ctx, node, value, scope, codec))

    async def aload(self, ctx: RunContext, node: str, *, schema: Any = None) -> Any:
        """Async twin of :meth:`load`."""
        return await run_async(self.store, self._load_plan(ctx, node, schema))

    async def alookup(self, ctx: RunContext, node: str) -> CheckpointInfo | None:
        """Async twin of :meth:`lookup`."""
        return await run_async(self.store, self._lookup_plan(ctx, node))

    async def alist(self, ctx: RunContext) -> builtins.list[CheckpointInfo]:
        """Async twin of :meth:`list`."""
        return await run_async(self.store, self._list_plan(ctx))

    async def afinish(
        self, ctx: RunContext, succeeded: bool, *, retention: Retention | None = None
    ) -> int:
        """Async twin of :meth:`finish`."""
        return await run_async(self.store, self._finish_plan(ctx, succeeded, retention))

    async def acleanup_run(self, run_id: str) -> int:
        """Async twin of :meth:`cleanup_run`."""
        return await run_async(self.store, self._delete_plan(Scope.RUN, run_id))

    async def acleanup_correlation(self, correlation_id: str) -> int:
        """Async twin of :meth:`cleanup_correlation`."""
        return await run_async(self.store, self._delete_plan(Scope.CORRELATION, correlation_id))

    async def aclose(self) -> None:
        await self.store.aclose()

    # -- single-writer mode (exclusive=True) -------------------------------------------------
    def acquire_lease(
        self, ctx: RunContext, *, ttl: float = DEFAULT_LEASE_TTL, renew: bool = True
    ) -> Lease:
        """Hold ``ctx``'s correlation exclusively until the returned lease is released.

        A second attempt of the same correlation (any process, any host sharing the store) then
        fails at once with :class:`~ckpt_core.errors.ConcurrentRunError` naming the holder,
        instead of interleaving its checkpoints with this one's. Other correlations are never
        blocked. ``ckpt.run(..., exclusive=True)`` calls this on entry and releases on exit.

        Args:
            ctx: the attempt taking the lease; the lease covers its correlation in this
                manager's namespace.
            ttl: seconds the lease lives without renewal; a crashed holder blocks its
                correlation at most this long (a local directory frees it at once).
            renew: renew every ``ttl / 3`` in a daemon thread until released. If the lease is
                lost anyway, the next :meth:`save` of this correlation raises
                :class:`~ckpt_core.errors.ConcurrentRunError` instead of writing.

        Raises:
            ConcurrentRunError: another attempt holds the lease.
            StoreConfigError: the store has no lease primitive (see :mod:`ckpt_core.lease`).
        """
        lease = _lease.acquire_lease(self.store, ctx, self.namespace, ttl=ttl, renew=renew)
        self._track_lease(lease)
        return lease

    async def aacquire_lease(
        self, ctx: RunContext, *, ttl: float = DEFAULT_LEASE_TTL, renew: bool = True
    ) -> Lease:
        """Async twin of :meth:`acquire_lease`."""
        lease = await _lease.aacquire_lease(self.store, ctx, self.namespace, ttl=ttl, renew=renew)
        self._track_lease(lease)
        return lease

    def _held_leases(self) -> dict[str, Lease]:
        """Leases taken through this manager, by correlation id (made on first use)."""
        table: dict[str, Lease] = self.__dict__.setdefault("_leases", {})
        return table

    def _track_lease(self, lease: Lease) -> None:
        table = self._held_leases()
        correlation = lease.holder.correlation_id
        table[correlation] = lease

        def forget(released: Lease) -> None:
            if table.get(correlation) is released:
                del table[correlation]

        lease.on_release(forget)

    def _check_lease(self, ctx: RunContext) -> None:
        """Refuse to write for a correlation whose lease this manager held and lost."""
        lease = self.__dict__.get("_leases", {}).get(ctx.correlation_id)
        if lease is not None:
            lease.check()

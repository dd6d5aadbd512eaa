"""``CheckpointStorage``: a Prefect result-storage block that writes ckpt records.

The block holds configuration only. Each ``read_path``/``write_path`` call maps Prefect's identities
(flow, flow run, attempt, task cache policy, storage key) to a ckpt :class:`~ckpt_core.RunContext`
and node key (see :mod:`.correlation`) and calls a :class:`~ckpt_core.CheckpointManager`. Managers
and stores are cached per process, keyed by the block's content, so a block that Prefect re-creates
for every task run (a slug on ``@task``) does not reopen its store each time.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
from typing import Any, Literal

from prefect.filesystems import WritableFileSystem
from prefect.types import SecretDict
from pydantic import Field, SecretStr, field_validator

from ckpt_core import (
    CheckpointCorrupted,
    CheckpointManager,
    Scope,
    Store,
    open_store,
    redact_url,
)

from .correlation import Identity, current_identity, has_lifecycle, is_inprocess_subflow
from .failures import note_lost_checkpoint

log = logging.getLogger("ckpt.prefect")

_cache_lock = threading.Lock()
#: (pid, config fingerprint) -> store; (pid, config fingerprint, namespace) -> manager.
_stores: dict[tuple[int, str], Store] = {}
_managers: dict[tuple[int, str, str], CheckpointManager] = {}
_warned_flows: set[str] = set()


def _task_scope() -> Scope:
    """RUN when the running task's cache policy is a RUN-scoped :class:`~.policies.Resume`
    (alone or inside a compound policy), else CORRELATION."""
    from prefect.context import TaskRunContext

    task_ctx = TaskRunContext.get()
    policy = getattr(getattr(task_ctx, "task", None), "cache_policy", None)
    policies = getattr(policy, "policies", None) or [policy]
    for p in policies:
        if getattr(p, "__ckpt_scope__", None) is Scope.RUN:
            return Scope.RUN
    return Scope.CORRELATION


class CheckpointStorage(WritableFileSystem):
    """Store Prefect results as ckpt checkpoints, so a retried flow run skips finished tasks.

    Every result Prefect persists through this block becomes a checksummed ckpt record (signed
    when a signing key is set) in the store at ``url``: S3 and other fsspec URLs, Redis, or a
    local directory. Records are filed by flow (namespace), correlation (the flow run, or the
    correlation the flow declares with ``ckpt_prefect.resumable``) and attempt, so a retry of the
    flow run finds the results of the tasks that finished, and ``resumable``'s hooks delete them
    once the flow run succeeds.

    Attributes:
        url: where checkpoints live: ``s3://bucket/prefix``, ``redis://host:6379/0``,
            ``/var/lib/ckpt``, ``memory://name`` or any fsspec URL. Put credentials in
            ``storage_options``, not in the URL.
        namespace: separates pipelines that share one store; default: the flow's name.
        storage_options: options for the store, kept secret: fsspec options (``endpoint_url``,
            ``key``, ``secret``, ``client_kwargs``) or Redis options (``ttl``, ``password``).
        signing_key: HMAC key; when set, records are signed and unsigned or altered records are
            refused before Prefect reads them. Default: env ``CKPT_SIGNING_KEY``.
        encryption_key: encrypts results at rest (AES-256-GCM, needs ``ckpt[crypto]``); commas
            separate several keys: the first encrypts, every one decrypts (rotation). When set,
            plaintext records are refused. Default: env ``CKPT_ENCRYPTION_KEY``.
        retention: ``"delete"`` (default): a correlation's checkpoints are removed after the flow
            run succeeds; ``"keep"``: they stay until ``ckpt gc``.

    Example:
        ```python
        from prefect import flow, task
        from ckpt_prefect import RESUME, CheckpointStorage, resumable

        storage = CheckpointStorage(url="s3://my-bucket/ckpt")
        storage.save("prod", overwrite=True)

        # A saved instance costs nothing per task run; a "ckpt-storage/prod" slug on @task is
        # re-read from the Prefect API for every task run (put slugs on @flow instead).
        @task(result_storage=storage, cache_policy=RESUME)
        def extract(day: str) -> list[int]:
            return [1, 2, 3]

        @resumable
        @flow(retries=2, result_storage=storage)
        def nightly(day: str) -> int:
            return sum(extract(day))
        ```
    """

    _block_type_name = "ckpt Storage"
    _block_type_slug = "ckpt-storage"

    url: str = Field(
        default=...,
        title="Store URL",
        description=(
            "Where checkpoints live: s3://bucket/prefix, redis://host:6379/0, a local directory, "
            "or any fsspec URL. Put credentials in Storage options, not in the URL."
        ),
        examples=["s3://my-bucket/ckpt", "redis://localhost:6379/0", "/var/lib/ckpt"],
    )
    namespace: str | None = Field(
        default=None,
        title="Namespace",
        description="Separates pipelines sharing one store. Default: the flow's name.",
        examples=["nightly-etl"],
    )
    storage_options: SecretDict = Field(
        default_factory=lambda: SecretDict({}),
        title="Storage options",
        description=(
            "Options for the store, kept secret: fsspec options such as endpoint_url, key, "
            "secret, client_kwargs; or Redis options such as ttl and password."
        ),
    )
    signing_key: SecretStr | None = Field(
        default=None,
        title="Signing key",
        description=(
            "HMAC key: records are signed, and unsigned or altered records are refused. "
            "Default: the CKPT_SIGNING_KEY environment variable of the process running the flow."
        ),
    )
    encryption_key: SecretStr | None = Field(
        default=None,
        title="Encryption key",
        description=(
            "Encrypts results at rest (AES-256-GCM). Several keys, comma-separated, rotate: the "
            "first encrypts, every one decrypts. Plaintext records are then refused. Default: "
            "the CKPT_ENCRYPTION_KEY environment variable of the process running the flow."
        ),
    )
    retention: Literal["delete", "keep"] = Field(
        default="delete",
        title="Retention",
        description=(
            "delete: a flow run's checkpoints are removed once it succeeds. keep: they stay "
            "until `ckpt gc` removes them."
        ),
    )

    @field_validator("url")
    @classmethod
    def _url_not_empty(cls, value: str) -> str:
        if not value or not value.strip():
            raise ValueError("url must name a store, e.g. s3://bucket/prefix or /var/lib/ckpt")
        return value

    def __repr_args__(self) -> list[tuple[str | None, Any]]:
        # The URL may carry a password (redis://:pw@host); every other secret is a Secret type.
        return [
            (name, redact_url(value) if name == "url" and isinstance(value, str) else value)
            for name, value in super().__repr_args__()
        ]

    # -- manager ---------------------------------------------------------------------------
    def _options(self) -> dict[str, Any]:
        options = self.storage_options.get_secret_value() if self.storage_options else {}
        return dict(options or {})

    def _fingerprint(self) -> str:
        """Digest of everything that decides which store and keys a manager uses."""
        signing = self.signing_key.get_secret_value() if self.signing_key else None
        encryption = self.encryption_key.get_secret_value() if self.encryption_key else None
        raw = json.dumps(
            [self.url, self._options(), signing, encryption], sort_keys=True, default=str
        )
        return hashlib.sha256(raw.encode()).hexdigest()

    def manager(self, namespace: str) -> CheckpointManager:
        """The process's manager for this configuration and ``namespace`` (opened once).

        Keyed by the block's content and the process id: an edited block document gets a new
        store, and a forked worker never shares a parent's connections.
        """
        fingerprint = self._fingerprint()
        pid = os.getpid()
        key = (pid, fingerprint, namespace)
        manager = _managers.get(key)
        if manager is not None:
            return manager
        with _cache_lock:
            manager = _managers.get(key)
            if manager is None:
                store = _stores.get((pid, fingerprint))
                if store is None:
                    store = _stores[(pid, fingerprint)] = open_store(self.url, **self._options())
                manager = _managers[key] = CheckpointManager(
                    store,
                    namespace,
                    # Prefect hands us serialized bytes: stored as they are, never unpickled here.
                    codec="raw",
                    allow_pickle=False,
                    signing_key=self.signing_key.get_secret_value() if self.signing_key else None,
                    encryption_key=(
                        self.encryption_key.get_secret_value() if self.encryption_key else None
                    ),
                )
        return manager

    def identity(self) -> Identity:
        """Namespace, correlation and attempt of the Prefect run calling now."""
        identity = current_identity(self.namespace)
        self._warn_without_lifecycle()
        return identity

    def _warn_without_lifecycle(self) -> None:
        from prefect.context import FlowRunContext

        flow_ctx = FlowRunContext.get()
        flow = getattr(flow_ctx, "flow", None)
        if flow is None or flow.name in _warned_flows or has_lifecycle(flow):
            return
        if is_inprocess_subflow(getattr(flow_ctx, "flow_run", None)):
            return  # filed under its root flow run, whose hooks clean up
        _warned_flows.add(flow.name)
        log.warning(
            "flow %r writes results to ckpt-storage but has no ckpt lifecycle hooks, so its "
            "checkpoints are never cleaned up and a retry cannot use a declared correlation. "
            "Decorate it with @ckpt_prefect.resumable (above @flow)",
            flow.name,
        )

    # -- Prefect's file-system interface ---------------------------------------------------
    # Prefect's sync result store calls read_path/write_path with `_sync=True`, its async one
    # calls aread_path/awrite_path. The sync names always block and the a-names are always
    # coroutines: one behaviour per name, whatever the caller's event loop.

    def read_path(self, path: str, *, _sync: bool | None = None) -> bytes:  # type: ignore[override]
        """The bytes Prefect stored under ``path`` for this run (RUN scope, then CORRELATION).

        Raises:
            CheckpointNotFound: nothing stored (Prefect's existence check treats it as a miss).
            CheckpointCorrupted: the record failed its checksum or signature; it is not returned.
        """
        _refuse_async(_sync, "read_path")
        identity = self.identity()
        try:
            value = self.manager(identity.namespace).load(identity.context(), path)
        except CheckpointCorrupted as exc:
            _log_corrupted(exc)
            raise
        return bytes(value)

    async def aread_path(self, path: str) -> bytes:
        """Async twin of :meth:`read_path`."""
        identity = self.identity()
        try:
            value = await self.manager(identity.namespace).aload(identity.context(), path)
        except CheckpointCorrupted as exc:
            _log_corrupted(exc)
            raise
        return bytes(value)

    def write_path(self, path: str, content: bytes, *, _sync: bool | None = None) -> str:  # type: ignore[override]
        """Store ``content`` as the checkpoint ``path`` of this run; returns the store key.

        The scope is RUN for tasks whose cache policy is ``RESUME_RUN``, else CORRELATION.
        """
        _refuse_async(_sync, "write_path")
        identity = self.identity()
        try:
            info = self.manager(identity.namespace).save(
                identity.context(), path, content, scope=_task_scope()
            )
        except Exception as exc:
            note_lost_checkpoint(exc)  # Prefect only logs it; the flow run fails (.failures)
            raise
        return info.key

    async def awrite_path(self, path: str, content: bytes) -> str:
        """Async twin of :meth:`write_path`."""
        identity = self.identity()
        try:
            info = await self.manager(identity.namespace).asave(
                identity.context(), path, content, scope=_task_scope()
            )
        except Exception as exc:
            note_lost_checkpoint(exc)
            raise
        return info.key


def _refuse_async(_sync: bool | None, name: str) -> None:
    if _sync is False:
        raise TypeError(
            f"CheckpointStorage.{name} always runs synchronously; await a{name}() instead"
        )


def _log_corrupted(exc: CheckpointCorrupted) -> None:
    # Prefect's existence check swallows every exception as "absent" and recomputes the task;
    # say so, rather than let a damaged record disappear silently.
    log.warning("%s; Prefect will run the task again and overwrite it", exc)


def clear_cache() -> None:
    """Close and forget every cached store (tests, or after rotating credentials)."""
    with _cache_lock:
        stores = list(_stores.values())
        _stores.clear()
        _managers.clear()
    for store in stores:
        try:
            store.close()
        except Exception:  # pragma: no cover - closing is best effort
            log.debug("closing %r failed", store, exc_info=True)

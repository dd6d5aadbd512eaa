"""``CheckpointIOManager``: Dagster op outputs and assets as verified ckpt records.

The IO manager only maps Dagster identities (job, root run, step, output, mapping key, asset key,
partition) to a :class:`~ckpt_core.RunContext` plus a node name (:mod:`ckpt_dagster.keys`) and
calls a :class:`~ckpt_core.CheckpointManager`. Codecs, the envelope, checksums, signatures and
every backend live in ``ckpt_core``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Literal

from dagster import (
    ConfigurableIOManager,
    DagsterInvariantViolationError,
    DagsterRun,
    EnvVar,
    InitResourceContext,
    InputContext,
    OutputContext,
)
from pydantic import Field, PrivateAttr

from ckpt_core import (
    CheckpointInfo,
    CheckpointManager,
    CheckpointNotFound,
    InvalidKey,
    RunContext,
    Scope,
    Store,
    StoreConfigError,
    open_store,
    redact_url,
)
from ckpt_core.context import ActiveRun, activate, deactivate
from ckpt_core.keys import encode_component, join
from ckpt_core.redact import redact_options

from . import keys
from .metadata import SCOPE_ASSET, SCOPE_RUN_FAMILY, output_metadata, record_uri

log = logging.getLogger("ckpt.dagster")

Retention = Literal["delete", "keep"]
_RETRY_NUMBER_TAG = "dagster/retry_number"


class _AssetManager(CheckpointManager):
    """The same records, codecs and checks as :class:`CheckpointManager`, laid out for assets:
    ``<namespace>/assets/<node>``, outside every run family, so no run clean-up deletes them.

    The node is :func:`ckpt_dagster.keys.asset_node` (already encoded, one or more components).
    """

    def key_for(self, ctx: RunContext, node: str, scope: Scope = Scope.CORRELATION) -> str:
        return join(encode_component(self.namespace), keys.ASSETS_DIR, node)


def _resolve_env(value: Any, where: str) -> Any:
    """Resolve ``EnvVar`` values and ``{"env": "NAME"}`` mappings (what Dagster turns an
    ``EnvVar`` nested in a dict field into) at run time, never at construction."""
    if isinstance(value, EnvVar):
        name = value.env_var_name
        resolved = os.environ.get(name)
        if resolved is None:
            raise StoreConfigError(
                f"{where} comes from environment variable {name}, which is not set in this "
                "process; set it where the run executes (code server, run worker, step process)"
            )
        return resolved
    if isinstance(value, Mapping):
        if set(value) == {"env"} and isinstance(value["env"], str):
            return _resolve_env(EnvVar(value["env"]), where)
        return {k: _resolve_env(v, f"{where}.{k}") for k, v in value.items()}
    return value


def _dagster_run(context: InputContext | OutputContext) -> DagsterRun | None:
    """The run executing this step, or ``None`` for contexts built in unit tests."""
    try:
        return context.step_context.dagster_run
    except DagsterInvariantViolationError:
        return None


def _run_context(run: DagsterRun) -> RunContext:
    """ckpt identity of a Dagster run: the run, its family (root run id) and the retry number."""
    try:
        attempt = int(run.tags.get(_RETRY_NUMBER_TAG, "0")) + 1
    except ValueError:
        attempt = 1
    return RunContext(
        run_id=run.run_id,
        correlation_id=keys.run_family(run.run_id, run.root_run_id),
        attempt=attempt,
    )


def _step_key(context: InputContext) -> str:
    try:
        return context.step_context.step.key
    except DagsterInvariantViolationError:
        pass
    try:
        return context.op_def.name
    except DagsterInvariantViolationError:
        return "<unknown step>"


class CheckpointIOManager(ConfigurableIOManager):
    """Store every op output and asset as a verified ckpt record on shared storage, so that
    re-execution from failure, run retries and op retries load finished steps instead of
    recomputing them.

    What is stored: each output value, encoded by ckpt's codecs (raw bytes, Arrow for data
    frames, JSON for pydantic models and plain data, pickle as the fallback unless
    ``allow_pickle=False``) inside ckpt's envelope (checksum, optional HMAC signature, run ids).
    A record is written atomically: a reader sees the whole record or none.

    Key scheme (each id encoded as one key component, so no id can escape its prefix)::

        <namespace or job name>/corr/<root run id>/<step key>.<output>[<mapping key>]
        <namespace or "dagster">/assets/<asset key>/value
        <namespace or "dagster">/assets/<asset key>/partitions/<partition key>

    What survives re-execution: op outputs are keyed by the run family (the root run id) rather
    than the run id, so every re-execution of the family (from failure, from a selection, a
    re-execution of a re-execution, the run-retry daemon) loads the outputs of steps it skips,
    and a re-run step overwrites its record atomically (op ``RetryPolicy`` retries are
    idempotent). Asset values are keyed by asset key and partition and persist across runs
    and jobs, like ``UPathIOManager``: an upstream asset that is not part of the current run
    loads from its key. While a step runs, ``@ckpt_core.checkpointed`` functions called in the
    op body checkpoint into the same run family, so an ALL_STEPS re-execution skips their
    finished calls.

    Clean-up: a run family's op outputs can be deleted after a successful run with
    :func:`ckpt_dagster.checkpoint_cleanup_sensor` or :meth:`delete_run_family`; asset values
    are never deleted by either.

    Construction does no IO; the store opens on first use inside a run. Pass secrets as
    ``EnvVar`` (resolved when the run starts, never shown in the UI), including inside
    ``storage_options``.

    Attributes:
        url: Store URL: ``s3://bucket/prefix``, ``redis://host:6379/0``, a local path, any
            fsspec URL. Use a store every step process can reach (not ``memory://`` with the
            multiprocess executor).
        namespace: Top-level key prefix. Default: the job name for op outputs and ``dagster``
            for assets (assets outlive jobs, so their keys must not depend on one).
        storage_options: Options for the store (fsspec options such as ``endpoint_url``,
            ``key``, ``secret``, ``client_kwargs``; ``ttl`` for Redis). Values may be
            ``EnvVar("NAME")``.
        codec: Default codec: ``auto`` (by type), ``pickle``, ``json``, ``arrow``, ``raw``.
        allow_pickle: Allow pickle records. Loading a pickle runs code chosen by whoever wrote
            it; switch it off for stores others can write to.
        signing_key: HMAC key; when set, records are signed and unsigned or altered records
            are refused before decoding. Pass it as ``EnvVar(...)``; unset, ckpt falls back to
            the ``CKPT_SIGNING_KEY`` environment variable of the step process.
        encryption_key: Encrypt values at rest (AES-256-GCM, needs ``ckpt[crypto]``). Commas
            separate several keys: the first encrypts, every one decrypts (rotation). When set,
            plaintext records are refused. Pass it as ``EnvVar(...)``; unset, ckpt falls back to
            the ``CKPT_ENCRYPTION_KEY`` environment variable of the step process.
        retention: ``delete`` (default): the clean-up sensor deletes a run family's op outputs
            after a run of the family succeeds. ``keep``: they stay until deleted explicitly.
        checkpoint_op_bodies: While a step runs, make ``@ckpt_core.checkpointed`` calls inside
            the op body checkpoint into the run family (default ``True``).

    Example:
        .. code-block:: python

            from dagster import Definitions, EnvVar, job, op
            from ckpt_dagster import CheckpointIOManager, checkpoint_cleanup_sensor

            @op
            def extract() -> list[int]:
                return [1, 2, 3]

            @op
            def total(rows: list[int]) -> int:
                return sum(rows)

            @job
            def etl():
                total(extract())

            defs = Definitions(
                jobs=[etl],
                sensors=[checkpoint_cleanup_sensor()],
                resources={
                    "io_manager": CheckpointIOManager(
                        url=EnvVar("CKPT_URL"),              # e.g. s3://bucket/ckpt
                        storage_options={
                            "key": EnvVar("AWS_ACCESS_KEY_ID"),
                            "secret": EnvVar("AWS_SECRET_ACCESS_KEY"),
                        },
                        signing_key=EnvVar("CKPT_SIGNING_KEY"),
                    )
                },
            )
    """

    url: str = Field(
        description=(
            "Store URL: s3://bucket/prefix, redis://host:6379/0, a local path or any fsspec URL. "
            "Every step process must reach it."
        )
    )
    namespace: str | None = Field(
        default=None,
        description=(
            "Top-level key prefix. Default: the job name for op outputs, 'dagster' for assets."
        ),
    )
    storage_options: dict[str, Any] = Field(
        default={},
        description=(
            "Store options (fsspec: endpoint_url, key, secret, client_kwargs; Redis: ttl). "
            "Pass secrets as EnvVar values."
        ),
    )
    codec: str = Field(
        default="auto", description="Default codec: auto, pickle, json, arrow or raw."
    )
    allow_pickle: bool = Field(
        default=True,
        description="Allow pickle records (loading one runs code chosen by its writer).",
    )
    signing_key: str | None = Field(
        default=None,
        description="HMAC key: sign records and refuse unsigned or altered ones. Use EnvVar.",
    )
    encryption_key: str | None = Field(
        default=None,
        description=(
            "Encrypt values at rest (AES-256-GCM); comma-separated keys rotate: the first "
            "encrypts, all decrypt. Plaintext records are then refused. Use EnvVar."
        ),
    )
    retention: Retention = Field(
        default="delete",
        description=(
            "'delete': the clean-up sensor removes a run family's op outputs after a "
            "successful run; 'keep': they stay. Asset values are never removed."
        ),
    )
    checkpoint_op_bodies: bool = Field(
        default=True,
        description="Make @ckpt_core.checkpointed calls inside op bodies use the run family.",
    )

    _store: Store | None = PrivateAttr(default=None)
    _managers: dict[tuple[str, str], CheckpointManager] = PrivateAttr(default_factory=dict)
    _lock: threading.Lock = PrivateAttr(default_factory=threading.Lock)

    # -- secrets stay out of repr ----------------------------------------------------------
    def __repr_args__(self) -> Iterator[tuple[str | None, Any]]:
        for name, value in super().__repr_args__():
            if (
                name in ("signing_key", "encryption_key")
                and value is not None
                and not isinstance(value, EnvVar)
            ):
                yield name, "***"
            elif name == "storage_options" and isinstance(value, Mapping):
                yield name, redact_options(value)
            elif name == "url" and isinstance(value, str) and not isinstance(value, EnvVar):
                yield name, redact_url(value)
            else:
                yield name, value

    # -- lazy worker -----------------------------------------------------------------------
    def _open_store(self) -> Store:
        with self._lock:
            if self._store is None:
                url = _resolve_env(self.url, "url")
                options = _resolve_env(dict(self.storage_options), "storage_options")
                self._store = open_store(url, **options)
            return self._store

    def _manager(self, kind: Literal["ops", "assets"], namespace: str) -> CheckpointManager:
        store = self._open_store()
        with self._lock:
            manager = self._managers.get((kind, namespace))
            if manager is None:
                cls = _AssetManager if kind == "assets" else CheckpointManager
                signing_key = _resolve_env(self.signing_key, "signing_key")
                manager = cls(
                    store,
                    namespace,
                    codec=self.codec,
                    allow_pickle=self.allow_pickle,
                    signing_key=signing_key,
                    encryption_key=_resolve_env(self.encryption_key, "encryption_key"),
                    retention=self.retention,
                )
                self._managers[(kind, namespace)] = manager
            return manager

    def op_namespace(self, job_name: str) -> str:
        """Namespace of a job's op outputs: ``namespace`` if set, else the job name."""
        return _resolve_env(self.namespace, "namespace") or job_name

    def asset_namespace(self) -> str:
        """Namespace of asset values: ``namespace`` if set, else ``"dagster"``."""
        return _resolve_env(self.namespace, "namespace") or keys.DEFAULT_ASSET_NAMESPACE

    def op_manager(self, job_name: str) -> CheckpointManager:
        """The manager holding ``job_name``'s op outputs (and ``@checkpointed`` calls in ops)."""
        return self._manager("ops", self.op_namespace(job_name))

    def _op_manager_for(self, context: InputContext | OutputContext) -> CheckpointManager:
        # The job name is only needed when no namespace is set (contexts built in unit tests
        # may not have one).
        namespace = _resolve_env(self.namespace, "namespace") or context.job_name
        return self._manager("ops", namespace)

    def asset_manager(self) -> CheckpointManager:
        """The manager holding asset values (persistent layout, see :mod:`ckpt_dagster.keys`)."""
        return self._manager("assets", self.asset_namespace())

    def close(self) -> None:
        """Release the store's connections (the IO manager reopens it on next use)."""
        with self._lock:
            store, self._store = self._store, None
            self._managers.clear()
        if store is not None:
            store.close()

    # -- run lifecycle ---------------------------------------------------------------------
    @contextlib.contextmanager
    def yield_for_execution(self, context: InitResourceContext) -> Iterator[CheckpointIOManager]:
        """Activate the run family for ``@checkpointed`` calls in op bodies while the run (or,
        with the multiprocess executor, the step process) is executing; close the store after.

        The activation is a :mod:`contextvars` value set in the thread that runs the steps, so
        it covers op bodies and asyncio tasks they start, and is undone when execution ends.
        """
        run = context.run
        token = None
        if self.checkpoint_op_bodies and run is not None:
            active = ActiveRun(self.op_manager(run.job_name), _run_context(run))
            token = activate(active)
        try:
            yield self
        finally:
            if token is not None:
                try:
                    deactivate(token)
                except ValueError:  # torn down from another context: nothing left to undo here
                    log.debug("ckpt: run context was activated in another context")
            self.close()

    def delete_run_family(self, job_name: str, root_run_id: str) -> int:
        """Delete the op outputs (and in-op ``@checkpointed`` records) of one run family;
        returns how many records went. Asset values are never touched: they live under
        ``<namespace>/assets/``, outside every run family."""
        return self.op_manager(job_name).cleanup_correlation(root_run_id)

    # -- IOManager -------------------------------------------------------------------------
    def handle_output(self, context: OutputContext, obj: Any) -> None:
        if context.has_asset_key:
            info = self._save_asset(context, obj)
            scope = SCOPE_ASSET
        else:
            info = self._save_op_output(context, obj)
            scope = SCOPE_RUN_FAMILY
        context.add_output_metadata(output_metadata(info, self._open_store().url, scope))

    def load_input(self, context: InputContext) -> Any:
        if context.has_asset_key:
            return self._load_asset(context)
        upstream = context.upstream_output
        if upstream is not None and upstream.has_asset_key:
            # An input with no asset key of its own reading an asset output (an op downstream
            # of an asset, ``result.output_for_node``): the value lives under the asset's key.
            return self._load_asset_value(
                context, upstream.asset_key.path, self._upstream_partition(context, upstream)
            )
        return self._load_op_output(context)

    # -- op outputs ------------------------------------------------------------------------
    def _output_run_context(self, context: OutputContext) -> RunContext:
        run = _dagster_run(context)
        return _run_context(run) if run is not None else RunContext(run_id=context.run_id)

    def _save_op_output(self, context: OutputContext, obj: Any) -> CheckpointInfo:
        node = keys.op_output_node(context.step_key, context.name, context.mapping_key)
        manager = self._op_manager_for(context)
        return manager.save(self._output_run_context(context), node, obj, Scope.CORRELATION)

    def _load_op_output(self, context: InputContext) -> Any:
        upstream = context.upstream_output
        if upstream is None:
            raise CheckpointNotFound(
                f"step {_step_key(context)!r} input {context.name!r} has no upstream op output "
                "and no asset key, so CheckpointIOManager has nothing to load; give the input an "
                "upstream op or asset, or a different input manager"
            )
        run = _dagster_run(context)
        ctx = _run_context(run) if run is not None else RunContext(run_id=upstream.run_id)
        node = keys.op_output_node(upstream.step_key, upstream.name, upstream.mapping_key)
        manager = self._op_manager_for(context)
        try:
            return manager.load(ctx, node)
        except CheckpointNotFound:
            key = manager.key_for(ctx, node)
            raise CheckpointNotFound(
                f"step {_step_key(context)!r} cannot load its input {context.name!r}: no "
                f"checkpoint of output {upstream.name!r} of step {upstream.step_key!r} in run "
                f"family {ctx.correlation_id!r} (key {record_uri(manager.store.url, key)}). "
                "That step did not finish in this run family, or the family's checkpoints were "
                "deleted (retention='delete' clean-up after a successful run). Re-execute with "
                "that step selected, or launch a new run of the whole job",
                node=node,
                key=key,
            ) from None

    # -- assets ----------------------------------------------------------------------------
    def _save_asset(self, context: OutputContext, obj: Any) -> CheckpointInfo:
        partition: str | None = None
        if context.has_asset_partitions:
            partitions = list(context.asset_partition_keys)
            if len(partitions) != 1:
                raise InvalidKey(
                    f"asset {context.asset_key.to_user_string()!r} output covers "
                    f"{len(partitions)} partitions ({partitions[0]!r} ... {partitions[-1]!r}) in "
                    "one value, which CheckpointIOManager stores per partition; launch the "
                    "backfill as one run per partition (multi-run backfill policy)"
                )
            partition = partitions[0]
        node = keys.asset_node(context.asset_key.path, partition)
        return self.asset_manager().save(self._output_run_context(context), node, obj)

    def _load_asset(self, context: InputContext) -> Any:
        asset_path = context.asset_key.path
        if not context.has_asset_partitions:
            return self._load_asset_value(context, asset_path, None)
        partitions = list(context.asset_partition_keys)
        if len(partitions) == 1:  # as UPathIOManager: one partition loads as its value
            return self._load_asset_value(context, asset_path, partitions[0])
        allow_missing = bool((context.definition_metadata or {}).get("allow_missing_partitions"))
        values: dict[str, Any] = {}
        for partition in partitions:
            try:
                values[partition] = self._load_asset_value(context, asset_path, partition)
            except CheckpointNotFound:
                if not allow_missing:
                    raise
        return values

    @staticmethod
    def _upstream_partition(context: InputContext, upstream: OutputContext) -> str | None:
        """The partition of an upstream asset read by an input that has no asset key: the run's
        partition when the asset is partitioned (``asset_partitions_def`` does not trip Dagster's
        deprecation warning for ``upstream_output`` the way ``has_asset_partitions`` does)."""
        try:
            upstream.asset_partitions_def  # noqa: B018 - raises when the asset is unpartitioned
        except DagsterInvariantViolationError:
            return None
        if not context.has_partition_key:
            raise InvalidKey(
                f"step {_step_key(context)!r} reads partitioned asset "
                f"{upstream.asset_key.to_user_string()!r} outside a partitioned run, so there is "
                "no partition to load; run it for one partition or declare the input as an "
                "asset input (AssetIn)"
            )
        return context.partition_key

    def _load_asset_value(
        self, context: InputContext, asset_path: Sequence[str], partition: str | None
    ) -> Any:
        manager = self.asset_manager()
        node = keys.asset_node(asset_path, partition)
        run = _dagster_run(context)
        ctx = _run_context(run) if run is not None else RunContext(run_id="load")
        try:
            return manager.load(ctx, node)
        except CheckpointNotFound:
            key = manager.key_for(ctx, node)
            what = keys.escaped_asset_key(asset_path)
            if partition is not None:
                what += f" partition {partition!r}"
            raise CheckpointNotFound(
                f"step {_step_key(context)!r} cannot load asset {what} for its input "
                f"{context.name!r}: no checkpoint at {record_uri(manager.store.url, key)}. "
                "Materialize it first, or check that this IO manager's url and namespace match "
                "the ones that materialized it (set allow_missing_partitions=True in the input's "
                "metadata to skip missing partitions)",
                node=node,
                key=key,
            ) from None

"""Output metadata shown in the Dagster UI for every checkpointed output.

Built from the :class:`~ckpt_core.CheckpointInfo` that ``save`` already returns, so it costs no
extra store call and no extra log line: Dagster attaches it to the ``HANDLED_OUTPUT`` (and, for
assets, ``ASSET_MATERIALIZATION``) event it emits anyway.
"""

from __future__ import annotations

from dagster import MetadataValue

from ckpt_core import CheckpointInfo, redact_url

#: Every key the IO manager adds; prefixed so they never clash with an op's own metadata.
URI = "ckpt/uri"
SIZE = "ckpt/size"
CODEC = "ckpt/codec"
CHECKSUM = "ckpt/checksum"
SCOPE = "ckpt/scope"
KEYS = (URI, SIZE, CODEC, CHECKSUM, SCOPE)

#: Scope labels: op outputs belong to a run family, asset values persist.
SCOPE_RUN_FAMILY = "run family"
SCOPE_ASSET = "asset (persistent)"


def record_uri(store_url: str, key: str) -> str:
    """Where a record lives, with any credential in the store URL masked."""
    return f"{redact_url(store_url).rstrip('/')}/{key}"


def output_metadata(info: CheckpointInfo, store_url: str, scope: str) -> dict[str, MetadataValue]:
    """The metadata entries for one saved output."""
    return {
        URI: MetadataValue.path(record_uri(store_url, info.key)),
        SIZE: MetadataValue.int(info.size),
        CODEC: MetadataValue.text(info.codec or "unknown"),
        CHECKSUM: MetadataValue.text(info.checksum or "unknown"),
        SCOPE: MetadataValue.text(scope),
    }

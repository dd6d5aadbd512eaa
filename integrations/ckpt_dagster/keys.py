"""Dagster identities to ckpt node names and store keys. Pure functions: no Dagster import.

Layout (``<...>`` is one component encoded by :func:`ckpt_core.keys.encode_component`)::

    <namespace>/corr/<root run id>/<step key>.<output>            op output
    <namespace>/corr/<root run id>/<step key>.<output>[<mapping>]  dynamic op output
    <namespace>/corr/<root run id>/<module.qualname:fingerprint>   @checkpointed call in an op
    <asset namespace>/assets/<asset key>/value                     unpartitioned asset
    <asset namespace>/assets/<asset key>/partitions/<partition>    one partition of an asset

Op outputs live in the ckpt CORRELATION scope of the run family (the Dagster root run id), so
every re-execution and run retry of the family sees them and the family is deleted as one
prefix. Asset values are persistent, like ``UPathIOManager``'s files: they belong to the asset,
not to a run, and no run-family clean-up touches the ``assets`` directory.

Why the node names cannot collide:

- Dagster output names and mapping keys match ``[A-Za-z0-9_]+`` and step keys are dotted node
  handles plus ``[mapping]`` suffixes, so ``<step>.<output>[<mapping>]`` splits back uniquely
  (the output is the text after the last ``.`` outside the brackets, the mapping key the text in
  the last brackets).
- ``@checkpointed`` node names always contain ``:``, which no step key or output name does.
- An asset key is joined with Dagster's own escaping (``AssetKey.to_escaped_user_string``: ``\\``
  and ``/`` inside a component are backslash-escaped), so ``["a/b"]`` and ``["a", "b"]`` differ,
  then encoded as one component. ``value`` (a record) and ``partitions`` (a directory) are fixed
  names, so an unpartitioned and a partitioned version of one asset can coexist.
"""

from __future__ import annotations

from collections.abc import Sequence

from ckpt_core.keys import SEP, encode_component, join

#: Directory under a namespace that holds asset values (never under a run family).
ASSETS_DIR = "assets"
#: Namespace of asset values when the IO manager sets none: assets outlive any one job, so
#: their keys must not depend on which job materialized them.
DEFAULT_ASSET_NAMESPACE = "dagster"
UNPARTITIONED_LEAF = "value"
PARTITIONS_DIR = "partitions"


def op_output_node(step_key: str, output_name: str, mapping_key: str | None = None) -> str:
    """The node name of one op output: ``step.output`` or ``step.output[mapping_key]``."""
    node = f"{step_key}.{output_name}"
    return f"{node}[{mapping_key}]" if mapping_key else node


def escaped_asset_key(asset_path: Sequence[str]) -> str:
    """``AssetKey.to_escaped_user_string`` without importing Dagster: injective on key paths."""
    return SEP.join(part.replace("\\", "\\\\").replace("/", "\\/") for part in asset_path)


def asset_node(asset_path: Sequence[str], partition: str | None = None) -> str:
    """The path of an asset value below ``<namespace>/assets/``, every id encoded.

    Used as the node name of the record too, so the record header names exactly what it holds.
    """
    if not asset_path:
        raise ValueError("an asset key needs at least one component")
    base = encode_component(escaped_asset_key(asset_path))
    if partition is None:
        return join(base, UNPARTITIONED_LEAF)
    return join(base, PARTITIONS_DIR, encode_component(partition))


def asset_record_key(namespace: str, asset_path: Sequence[str], partition: str | None) -> str:
    """The full store key of an asset value."""
    return join(encode_component(namespace), ASSETS_DIR, asset_node(asset_path, partition))


def assets_prefix(namespace: str) -> str:
    """``<namespace>/assets/``: everything below it is persistent asset data."""
    return join(encode_component(namespace), ASSETS_DIR) + SEP


def run_family(run_id: str, root_run_id: str | None) -> str:
    """The ckpt correlation id of a Dagster run: its root run id, or its own id for a root run.

    Re-executions (Python API, UI, the run-retry daemon) set ``root_run_id`` to the first run
    of the family, so every attempt of one logical run shares it.
    """
    return root_run_id or run_id

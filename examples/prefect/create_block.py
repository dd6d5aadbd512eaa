"""Create (or update) the ``ckpt-storage`` block a deployment uses, from environment variables.

    CKPT_URL=s3://my-bucket/ckpt \
    CKPT_STORAGE_OPTIONS='{"endpoint_url": "http://minio:9000", "key": "...", "secret": "..."}' \
    CKPT_SIGNING_KEY=... \
    python examples/prefect/create_block.py

Variables: ``CKPT_URL`` (required), ``CKPT_BLOCK_NAME`` (default ``prod``), ``CKPT_NAMESPACE``,
``CKPT_STORAGE_OPTIONS`` (a JSON object), ``CKPT_SIGNING_KEY``, ``CKPT_RETENTION``
(``delete``/``keep``). Secrets are stored as Prefect secrets and never printed.
"""

from __future__ import annotations

import json
import os
import sys

from prefect.types import SecretDict
from pydantic import SecretStr

from ckpt_core import redact_url
from ckpt_prefect import CheckpointStorage


def main() -> int:
    url = os.environ.get("CKPT_URL")
    if not url:
        print("CKPT_URL is not set: give the store URL, e.g. s3://my-bucket/ckpt", file=sys.stderr)
        return 2
    name = os.environ.get("CKPT_BLOCK_NAME", "prod")
    raw_options = os.environ.get("CKPT_STORAGE_OPTIONS") or "{}"
    try:
        options = json.loads(raw_options)
    except json.JSONDecodeError as exc:
        print(f"CKPT_STORAGE_OPTIONS is not valid JSON ({exc.msg})", file=sys.stderr)
        return 2
    if not isinstance(options, dict):
        print("CKPT_STORAGE_OPTIONS must be a JSON object", file=sys.stderr)
        return 2
    retention = os.environ.get("CKPT_RETENTION", "delete")
    if retention not in ("delete", "keep"):
        print(f"CKPT_RETENTION must be 'delete' or 'keep', not {retention!r}", file=sys.stderr)
        return 2
    signing_key = os.environ.get("CKPT_SIGNING_KEY")
    block = CheckpointStorage(
        url=url,
        namespace=os.environ.get("CKPT_NAMESPACE") or None,
        storage_options=SecretDict(options),
        signing_key=SecretStr(signing_key) if signing_key else None,
        retention="keep" if retention == "keep" else "delete",
    )
    block.save(name, overwrite=True)
    print(f"saved block ckpt-storage/{name} -> {redact_url(url)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

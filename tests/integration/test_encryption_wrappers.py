"""``encryption_key`` on the Prefect block and the Dagster IO manager: each passes the key to the
managers it builds (records are encrypted at rest and read back), rotation works through the
integration's comma-separated field, and the key stays out of reprs and the block's schema.

Light on purpose: the block's and IO manager's own managers are driven directly, plus one Dagster
materialization through ``handle_output``/``load_input``; no Prefect server is started.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from dagster import DagsterInstance, EnvVar, materialize
from pydantic import SecretStr

import ckpt_core as ckpt
from ckpt_core import EncryptionKeyError, crypto
from ckpt_core.envelope import read_header
from ckpt_dagster import CheckpointIOManager
from ckpt_prefect import CheckpointStorage
from ckpt_prefect.block import clear_cache

from . import dagster_jobs as jobs

SECRET_1 = "integration-secret-one"
SECRET_2 = "integration-secret-two"
MARKER = "INTEGRATION-PLAINTEXT-51c2"
CTX = ckpt.RunContext("run-1", "corr-1")


def kid_of(secret: str) -> str:
    ring = crypto.keyring(secret)
    assert ring is not None
    return ring.primary.kid


def stored_records(url: str) -> list[tuple[str, bytes]]:
    store = ckpt.open_store(url)
    try:
        out = []
        for obj in store.list(""):
            data = store.get(obj.key)
            assert data is not None
            out.append((obj.key, bytes(data)))
        return out
    finally:
        store.close()


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.delenv(crypto.ENV_VAR, raising=False)
    monkeypatch.delenv("CKPT_SIGNING_KEY", raising=False)
    yield
    clear_cache()


# -- Prefect ---------------------------------------------------------------------------------
def test_prefect_block_encrypts_with_its_key_and_rotates(store_url: str) -> None:
    block = CheckpointStorage(url=store_url, encryption_key=SECRET_1)  # type: ignore[arg-type]
    assert isinstance(block.encryption_key, SecretStr)
    info = block.manager("flow").save(CTX, "result", MARKER.encode())
    assert info.encrypted
    [(key, data)] = stored_records(store_url)
    assert MARKER.encode() not in data
    assert read_header(data, key)["enc"]["kid"] == kid_of(SECRET_1)
    assert block.manager("flow").load(CTX, "result") == MARKER.encode()

    rotated = CheckpointStorage(url=store_url, encryption_key=f"{SECRET_2},{SECRET_1}")  # type: ignore[arg-type]
    assert rotated.manager("flow") is not block.manager("flow")  # the key is part of the cache key
    assert rotated.manager("flow").load(CTX, "result") == MARKER.encode()
    new = rotated.manager("flow").save(CTX, "next", b"x")
    assert read_header(dict(stored_records(store_url))[new.key], new.key)["enc"]["kid"] == (
        kid_of(SECRET_2)
    )

    with pytest.raises(EncryptionKeyError, match="no encryption key is configured"):
        CheckpointStorage(url=store_url).manager("flow").load(CTX, "result")

    schema = CheckpointStorage.model_json_schema()
    assert "encryption_key" in schema["secret_fields"]
    for text in (repr(block), str(block), repr(rotated), block.model_dump_json()):
        assert SECRET_1 not in text and SECRET_2 not in text


def test_prefect_block_reads_the_key_from_the_environment(
    store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(crypto.ENV_VAR, SECRET_1)
    info = CheckpointStorage(url=store_url).manager("flow").save(CTX, "r", b"v")
    assert info.encrypted


# -- Dagster ---------------------------------------------------------------------------------
def test_dagster_io_manager_encrypts_asset_values(
    store_url: str,
    instance: DagsterInstance,
    counts: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CKPT_TEST_ENCRYPTION_KEY", SECRET_1)
    iom = CheckpointIOManager(url=store_url, encryption_key=EnvVar("CKPT_TEST_ENCRYPTION_KEY"))
    tags = jobs.control_tags(counts)
    assets = [jobs.raw_orders, jobs.clean_orders]
    assert materialize(assets, resources={"io_manager": iom}, instance=instance, tags=tags)
    records = stored_records(store_url)
    assert len(records) == 2
    for key, data in records:
        assert read_header(data, key)["enc"]["kid"] == kid_of(SECRET_1)

    # Rotation through the env var: the new key first, the old one still reads.
    monkeypatch.setenv("CKPT_TEST_ENCRYPTION_KEY", f"{SECRET_2},{SECRET_1}")
    rotated = CheckpointIOManager(url=store_url, encryption_key=EnvVar("CKPT_TEST_ENCRYPTION_KEY"))
    result = materialize(
        assets,
        selection=["clean_orders"],
        resources={"io_manager": rotated},
        instance=instance,
        tags=tags,
    )
    assert result.output_for_node("clean_orders") == [3, 5]

    # Without a key the encrypted upstream value is refused with the typed error.
    with pytest.raises(EncryptionKeyError, match="raw_orders"):
        materialize(
            assets,
            selection=["clean_orders"],
            resources={"io_manager": CheckpointIOManager(url=store_url)},
            instance=instance,
            tags=tags,
        )


def test_dagster_io_manager_plain_string_key_and_repr(store_url: str) -> None:
    iom = CheckpointIOManager(url=store_url, encryption_key=SECRET_1, signing_key="sig")
    info = iom.op_manager("job").save(CTX, "out", {"v": MARKER})
    assert info.encrypted and info.signed
    [(_key, data)] = stored_records(store_url)
    assert MARKER.encode() not in data
    assert iom.op_manager("job").load(CTX, "out") == {"v": MARKER}
    text = repr(iom)
    assert SECRET_1 not in text and "encryption_key='***'" in text
    iom.close()

"""A store server that dies in the middle of a pipeline (plain ``@checkpointed`` steps).

A four-step pipeline runs under ``ckpt.run``; step 3 kills the server while it runs (Redis:
SIGKILL, with append-only persistence fsynced on every write; SeaweedFS: stopped), so step 3's
save hits a dead server. The step fails with ``ckpt.StoreUnavailable`` itself, within a bounded
time, naming the store with its credentials masked. The server is then restarted on the same
port and data directory: every checkpoint acknowledged before the fault loads byte for byte, and
a run with the same correlation id loads steps 1-2 (their bodies do not run again), computes
steps 3-4, completes, and cleans up after itself.

The Prefect and Dagster versions are in ``tests/integration/test_server_faults.py``.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
import secrets
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

import ckpt_core as ckpt

from .servers import AOF_ALWAYS, RedisServer, SeaweedServer

KiB = 1 << 10
MiB = 1 << 20
#: A dead server must surface as an error within this many seconds (measured: ~1 s for Redis,
#: ~3-6 s for S3, whose client retries three times with backoff, plus the run's clean-up try).
BOUND_SECONDS = 30.0


@dataclass
class Target:
    """A private store server the test may crash and restart, and how ckpt reaches it."""

    kind: str
    url: str
    options: dict[str, Any]
    #: The URL as every error message must show it (credentials masked).
    shown: str
    secrets: list[str]
    crash: Callable[[], None]
    restart: Callable[[], None]
    crashed_at: list[float] = field(default_factory=list)

    def kill(self) -> None:
        self.crash()
        self.crashed_at.append(time.monotonic())


@pytest.fixture(params=["redis", "s3"])
def target(
    request: pytest.FixtureRequest,
    redis_server_factory: Callable[..., RedisServer],
    seaweed_factory: Callable[[], SeaweedServer],
) -> Target:
    if request.param == "redis":
        password = "pw-" + secrets.token_hex(8)
        redis = redis_server_factory(password=password, **AOF_ALWAYS)
        return Target(
            "redis",
            redis.url,
            {"chunk_size": 64 * KiB},  # steps 1 and 2 are chunked records
            f"redis://:***@127.0.0.1:{redis.port}/0",
            [password],
            redis.kill,  # SIGKILL: only what the AOF fsynced survives
            redis.restart,
        )
    s3 = seaweed_factory()
    url = f"s3://{s3.bucket}/faults-{uuid.uuid4().hex[:8]}"
    options = s3.storage_options(multipart_threshold=6 * MiB)  # step 2 is a multipart upload
    return Target("s3", url, options, url, [s3.access_key, s3.secret_key], s3.stop, s3.restart)


def value(seed: int, size: int) -> bytes:
    return random.Random(seed).randbytes(size)


EXTRACTED = value(1, 300 * KiB)
CLEANED = EXTRACTED[::-1] + value(2, 7 * MiB)
ENRICHED = hashlib.sha256(CLEANED).digest() * 4096
PUBLISHED = ENRICHED[:1000] + b"!"


def sync_pipeline(target: Target, calls: Counter[str]) -> Callable[[], bytes]:
    @ckpt.checkpointed
    def extract(day: str) -> bytes:
        calls["extract"] += 1
        return value(1, 300 * KiB)

    @ckpt.checkpointed
    def clean(raw: bytes) -> bytes:
        calls["clean"] += 1
        return raw[::-1] + value(2, 7 * MiB)

    @ckpt.checkpointed
    def enrich(rows: bytes) -> bytes:
        calls["enrich"] += 1
        if calls["enrich"] == 1:
            target.kill()  # the store goes away while this step runs
        return hashlib.sha256(rows).digest() * 4096

    @ckpt.checkpointed
    def publish(rows: bytes) -> bytes:
        calls["publish"] += 1
        return rows[:1000] + b"!"

    def pipeline() -> bytes:
        return publish(enrich(clean(extract("2026-11-22"))))

    return pipeline


def async_pipeline(target: Target, calls: Counter[str]) -> Callable[[], Any]:
    @ckpt.checkpointed
    async def extract(day: str) -> bytes:
        calls["extract"] += 1
        return value(1, 300 * KiB)

    @ckpt.checkpointed
    async def clean(raw: bytes) -> bytes:
        calls["clean"] += 1
        return raw[::-1] + value(2, 7 * MiB)

    @ckpt.checkpointed
    async def enrich(rows: bytes) -> bytes:
        calls["enrich"] += 1
        if calls["enrich"] == 1:
            target.kill()
        return hashlib.sha256(rows).digest() * 4096

    @ckpt.checkpointed
    async def publish(rows: bytes) -> bytes:
        calls["publish"] += 1
        return rows[:1000] + b"!"

    async def pipeline() -> bytes:
        return await publish(await enrich(await clean(await extract("2026-11-22"))))

    return pipeline


def attempt(target: Target, mode: str, correlation: str, pipeline: Any, number: int) -> Any:
    """One attempt of the pipeline under ``ckpt.run``: ``(active run, result or exception)``."""
    run = ckpt.run(
        correlation, store=target.url, namespace="faults", attempt=number, **target.options
    )
    if mode == "sync":
        try:
            with run as active:
                return active, pipeline()
        except ckpt.CheckpointError as exc:
            return active, exc

    async def main() -> Any:
        try:
            async with run as active:
                return active, await pipeline()
        except ckpt.CheckpointError as exc:
            return active, exc

    return asyncio.run(main())


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_a_server_dying_mid_pipeline_fails_the_step_and_a_retry_resumes(
    target: Target, mode: str
) -> None:
    calls: Counter[str] = Counter()
    pipeline = (sync_pipeline if mode == "sync" else async_pipeline)(target, calls)
    correlation = f"nightly-{uuid.uuid4().hex[:8]}"

    first, error = attempt(target, mode, correlation, pipeline, 1)
    waited = time.monotonic() - target.crashed_at[0]

    # Step 3's save failed with the store's own error, quickly, naming the store safely.
    assert type(error) is ckpt.StoreUnavailable, repr(error)
    message = str(error)
    assert message.startswith("writing 'faults/corr/") and ".enrich%3A" in message  # the key
    assert target.shown in message
    assert not any(secret in message for secret in target.secrets)
    assert waited < BOUND_SECONDS, f"the failure took {waited:.1f} s to surface"
    assert dict(calls) == {"extract": 1, "clean": 1, "enrich": 1}
    assert first.loaded == [] and len(first.computed) == 2

    # Back up on the same port and data directory: what was acknowledged is there.
    target.restart()
    inspector = ckpt.CheckpointManager(target.url, "faults", **target.options)
    ctx = ckpt.RunContext(run_id="inspector", correlation_id=correlation)
    assert sorted(i.node for i in inspector.list(ctx)) == sorted(first.computed)
    for node, expected in zip(first.computed, (EXTRACTED, CLEANED), strict=True):
        assert inspector.load(ctx, node) == expected

    second, result = attempt(target, mode, correlation, pipeline, 2)
    assert result == PUBLISHED
    assert second.loaded == first.computed
    assert [n.split(":")[0].rsplit(".", 1)[-1] for n in second.computed] == ["enrich", "publish"]
    assert dict(calls) == {"extract": 1, "clean": 1, "enrich": 2, "publish": 1}
    assert inspector.list(ctx) == []  # a successful run removes its correlation's checkpoints
    inspector.close()

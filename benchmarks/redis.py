"""Scenario 3: the Redis store against raw redis-py on one connection pool.

- 1 KiB JSON record: ``save``/``load`` vs ``SET``/``GET`` of ``json.dumps`` bytes.
- 256 MiB ``bytes`` (16 MiB with ``--quick``): ckpt writes it as 4 MiB chunks plus a manifest;
  the reference is one raw ``SET``/``GET`` of the whole value.

Uses ``$CKPT_BENCH_REDIS_URL`` (default ``redis://127.0.0.1:6379/0``); every key lives under a
fresh prefix that is deleted afterwards.
"""

from __future__ import annotations

import json
import os
import uuid

from ._harness import Config, Row, clock, interleave, not_run, row_from_times, timed_each
from .local import RECORD

URL = os.environ.get("CKPT_BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")


def _clear(client: object, pattern: str) -> None:
    for key in client.scan_iter(match=pattern, count=1000):  # type: ignore[attr-defined]
        client.delete(key)  # type: ignore[attr-defined]


def run(cfg: Config) -> list[Row]:
    import redis

    import ckpt_core as ckpt
    from ckpt_core.stores.redis import RedisStore

    prefix = f"ckptbench-{uuid.uuid4().hex[:8]}"
    store = RedisStore(URL, prefix=prefix)
    client = redis.Redis(connection_pool=store._pool)  # the reference shares ckpt's pool
    try:
        client.ping()
    except Exception as exc:
        return [not_run("redis (all scenarios)", "-", f"no Redis at {URL}: {exc}")]
    mgr = ckpt.CheckpointManager(store, namespace="bench")
    ctx = ckpt.RunContext(run_id="r1", correlation_id="c1", attempt=1)
    n = cfg.pick(500, 50)
    nodes = [f"node-{i}" for i in range(n)]
    raw_keys = [f"{prefix}-raw:{name}" for name in nodes]
    rows: list[Row] = []
    try:
        ckpt_save = timed_each(lambda node: mgr.save(ctx, node, RECORD), nodes)

        raw_save = timed_each(lambda key: client.set(key, json.dumps(RECORD).encode()), raw_keys)

        ckpt_load = timed_each(lambda node: mgr.load(ctx, node), nodes)

        raw_load = timed_each(lambda key: json.loads(client.get(key)), raw_keys)

        rows.append(
            row_from_times(
                "redis 1 KiB JSON save", *interleave(ckpt_save, raw_save, cfg.reps), "<= 1.3", per=n
            )
        )
        rows.append(
            row_from_times(
                "redis 1 KiB JSON load", *interleave(ckpt_load, raw_load, cfg.reps), "<= 1.3", per=n
            )
        )

        size = cfg.pick(256 << 20, 16 << 20)
        payload = b"\x5a" * size
        big_key = f"{prefix}-raw:big"

        def ckpt_big_save() -> float:
            t = clock()
            mgr.save(ctx, "big", payload)
            return clock() - t

        def raw_big_save() -> float:
            t = clock()
            client.set(big_key, payload)
            return clock() - t

        def ckpt_big_load() -> float:
            t = clock()
            value = mgr.load(ctx, "big")
            seconds = clock() - t
            assert len(value) == size
            return seconds

        def raw_big_load() -> float:
            t = clock()
            value = client.get(big_key)
            seconds = clock() - t
            assert len(value) == size
            return seconds

        reps = max(3, cfg.reps - 2)
        label = f"{size >> 20} MiB"
        rows.append(
            row_from_times(
                f"redis {label} chunked save throughput",
                *interleave(ckpt_big_save, raw_big_save, reps),
                ">= 0.8",
                throughput_bytes=size,
            )
        )
        rows.append(
            row_from_times(
                f"redis {label} chunked load throughput",
                *interleave(ckpt_big_load, raw_big_load, reps),
                ">= 0.8",
                throughput_bytes=size,
            )
        )
    finally:
        _clear(client, f"{prefix}*")
        store.close()
    return rows

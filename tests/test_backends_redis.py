"""RedisStore against a real Redis: URLs, one-command writes with their TTL, chunked records that
switch atomically, escaped SCANs, failures, pools, async parity, processes, memory.

The generic store contract runs in ``test_store_conformance.py``; this file checks what only
Redis has. Tests that stop a server or need a password start their own ``redis-server``.
"""

from __future__ import annotations

import asyncio
import hashlib
import multiprocessing
import os
import time
import tracemalloc
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis

import ckpt_core as ckpt
import ckpt_core.stores.redis as redis_store_module
from ckpt_core import CheckpointCorrupted, StoreConfigError, StoreUnavailable, open_store
from ckpt_core.stores.redis import STAGING_TTL_MS, RedisStore, _Batch, _cmd, _pack_small
from ckpt_core.testing.twins import ChunkedPayload, GeneratedPayload

from .records import check_versioned, read_while_running, versioned
from .servers import RedisServer

Factory = Callable[..., RedisStore]


# -- helpers ---------------------------------------------------------------------------------------


@pytest.fixture
def raw(redis_url: str) -> Iterator[Any]:
    """A plain redis-py client on the shared server, to look behind the store."""
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


def raw_keys(client: Any, store: RedisStore) -> list[bytes]:
    return sorted(client.scan_iter(match=store._pattern(""), count=1000))


def chunk_keys(client: Any, store: RedisStore, key: str) -> list[bytes]:
    record = store._rkey(key)
    return [k for k in raw_keys(client, store) if k.startswith(record + b"\x00")]


def commands(client: Any) -> dict[str, int]:
    """Server-side command counts since the last CONFIG RESETSTAT (minus our own probes)."""
    stats = client.info("commandstats")
    return {
        k[len("cmdstat_") :]: v["calls"]
        for k, v in stats.items()
        if not k.startswith(("cmdstat_info", "cmdstat_config"))
    }


class RoundTrips:
    """Counts what redis-py sends on the wire: one ``send_packed_command`` is one round trip
    (a single command or a whole pipeline / MULTI block)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.count = 0
        original = redis.connection.AbstractConnection.send_packed_command

        def counting(conn: Any, command: Any, check_health: bool = True) -> Any:
            self.count += 1
            return original(conn, command, check_health)

        monkeypatch.setattr(redis.connection.AbstractConnection, "send_packed_command", counting)

    def take(self) -> int:
        n, self.count = self.count, 0
        return n


# -- URLs and options ------------------------------------------------------------------------------


def test_url_sets_db_password_prefix_ttl_and_chunk_size(
    redis_server_factory: Callable[..., RedisServer],
) -> None:
    server = redis_server_factory(password="s3cr3t-pw")
    url = f"redis://:s3cr3t-pw@127.0.0.1:{server.port}/3?prefix=myapp&ttl=60&chunk_size=1000"
    store = open_store(url)
    try:
        assert isinstance(store, RedisStore)
        assert (store.prefix, store.ttl, store.chunk_size) == ("myapp", 60.0, 1000)
        assert "s3cr3t-pw" not in repr(store) and "s3cr3t-pw" not in store.url
        assert repr(store) == (
            f"RedisStore('redis://:***@127.0.0.1:{server.port}/3?prefix=myapp&ttl=60"
            "&chunk_size=1000')"
        )
        store.put("ns/k", b"value")
        db3 = redis.Redis(port=server.port, password="s3cr3t-pw", db=3)
        db0 = redis.Redis(port=server.port, password="s3cr3t-pw", db=0)
        assert db3.get(b"myapp:ns/k") == b"value"
        assert 0 < db3.pttl(b"myapp:ns/k") <= 60_000
        assert db0.dbsize() == 0
        db3.close()
        db0.close()
    finally:
        store.close()


def test_explicit_options_win_over_the_url_query(redis_url: str) -> None:
    store = open_store(redis_url + "?prefix=from-url&ttl=5", prefix="explicit", ttl=7)
    assert isinstance(store, RedisStore)
    assert (store.prefix, store.ttl) == ("explicit", 7.0)
    store.close()


def test_unix_socket_url(redis_server_factory: Callable[..., RedisServer]) -> None:
    server = redis_server_factory()
    store = open_store(f"unix://{server.socket_path}?db=2&prefix=sock")
    try:
        store.put("ns/k", b"over a unix socket")
        assert bytes(store.get("ns/k")) == b"over a unix socket"
        client = redis.Redis(port=server.port, db=2)
        assert client.get(b"sock:ns/k") == b"over a unix socket"
        client.close()
    finally:
        store.close()


def test_rediss_url_uses_tls_and_opening_does_no_io() -> None:
    # example.invalid never resolves: construction must not connect.
    store = RedisStore("rediss://user:pw-secret@example.invalid:6380/1?ssl_cert_reqs=required")
    assert store._pool.connection_class is redis.SSLConnection
    assert store._pool.connection_kwargs["db"] == 1
    assert "pw-secret" not in repr(store)
    assert store.url == "rediss://user:***@example.invalid:6380/1?ssl_cert_reqs=required"
    store.close()


@pytest.mark.parametrize(
    ("options", "named"),
    [
        ({"ttl": 0}, "ttl"),
        ({"ttl": -3}, "ttl"),
        ({"ttl": "soon"}, "'soon'"),
        ({"chunk_size": 0}, "chunk_size"),
        ({"chunk_size": "big"}, "'big'"),
    ],
)
def test_bad_options_are_config_errors_naming_the_value(
    options: dict[str, Any], named: str
) -> None:
    with pytest.raises(StoreConfigError, match=named):
        RedisStore("redis://127.0.0.1:6379/0", **options)


def test_a_non_redis_url_is_a_config_error() -> None:
    with pytest.raises(StoreConfigError, match="is not a Redis URL"):
        RedisStore("http://127.0.0.1:6379/0")


# -- one command per small save, one round trip per small load -------------------------------------


def test_small_save_is_one_set_with_its_ttl_and_small_load_one_get(
    redis_server_factory: Callable[..., RedisServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    server = redis_server_factory()
    client = server.client()
    store = RedisStore(server.url, ttl=30)
    try:
        store.put("warm/up", b"x")  # connection handshake happens here, not below
        trips = RoundTrips(monkeypatch)
        client.config_resetstat()
        trips.take()

        store.put("ns/k", b"v" * 100)
        assert (trips.take(), commands(client)) == (1, {"set": 1})
        assert 0 < client.pttl(b"ckpt:ns/k") <= 30_000, "the TTL is part of the write itself"

        client.config_resetstat()
        trips.take()
        assert bytes(store.get("ns/k")) == b"v" * 100
        assert (trips.take(), commands(client)) == (1, {"get": 1})

        client.config_resetstat()
        trips.take()
        key, data = store.get_first(["ns/missing", "ns/k"])
        assert (key, bytes(data)) == ("ns/k", b"v" * 100)
        # One round trip for both candidates: a pipelined GET of each (no script).
        assert (trips.take(), commands(client)) == (1, {"get": 2})

        client.config_resetstat()
        trips.take()
        assert store.get_first(["ns/missing", "ns/also-missing"]) is None
        assert (trips.take(), commands(client)) == (1, {"get": 2})

        trips.take()
        assert store.head("ns/k").size == 100
        assert trips.take() == 1
    finally:
        store.close()
        client.close()


def test_async_small_save_and_load_are_one_round_trip_each(
    redis_server_factory: Callable[..., RedisServer],
) -> None:
    server = redis_server_factory()
    client = server.client()
    store = RedisStore(server.url, ttl=30)

    async def main() -> None:
        await store.aput("warm/up", b"x")
        client.config_resetstat()
        await store.aput("ns/k", b"async")
        assert commands(client) == {"set": 1}
        client.config_resetstat()
        assert bytes(await store.aget("ns/k")) == b"async"
        assert bytes((await store.aget_first(["ns/none", "ns/k"]))[1]) == b"async"
        assert commands(client) == {"get": 3}
        await store.aclose()

    try:
        asyncio.run(main())
        assert 0 < client.pttl(b"ckpt:ns/k") <= 30_000
    finally:
        store.close()
        client.close()


# -- TTL -------------------------------------------------------------------------------------------


def test_ttl_applies_to_small_records_manifests_and_chunks_and_they_expire(
    redis_store_factory: Factory, raw: Any
) -> None:
    store = redis_store_factory(ttl=0.5, chunk_size=1024)
    store.put("ns/small", b"small")
    store.put("ns/big", b"B" * 5000)
    written = raw_keys(raw, store)
    assert len(written) == 2 + 5, "one string, one manifest, five chunks"
    for key in written:
        assert 0 < raw.pttl(key) <= 500, f"{key!r} has no TTL or a wrong one"
    deadline = time.monotonic() + 30
    while store.get("ns/small") is not None or store.get("ns/big") is not None:
        assert time.monotonic() < deadline, "records still readable 30 s after a 0.5 s TTL"
        time.sleep(0.05)
    assert store.head("ns/big") is None and store.list("") == []
    assert [k for k in written if raw.exists(k)] == []


def test_without_ttl_nothing_expires(redis_store_factory: Factory, raw: Any) -> None:
    store = redis_store_factory(chunk_size=1024)
    store.put("ns/small", b"small")
    store.put("ns/big", b"B" * 3000)
    assert {raw.pttl(k) for k in raw_keys(raw, store)} == {-1}


# -- chunked records -------------------------------------------------------------------------------


def test_chunked_layout_and_overwrites_leave_no_stale_chunks(
    redis_store_factory: Factory, raw: Any
) -> None:
    store = redis_store_factory(chunk_size=1000)
    record = store._rkey("ns/k")

    store.put("ns/k", ChunkedPayload([b"a" * 10, b"b" * 3000, b"c" * 490]))
    manifest = raw.hgetall(record)
    # The small first piece travels alone, the large one as three zero-copy 1000-byte views.
    assert (int(manifest[b"n"]), int(manifest[b"size"])) == (5, 3500)
    first_gen = manifest[b"gen"]
    keys = [record + b"\x00" + first_gen + b"\x00" + str(i).encode() for i in range(5)]
    assert chunk_keys(raw, store, "ns/k") == sorted(keys)
    assert [raw.strlen(k) for k in keys] == [10, 1000, 1000, 1000, 490]
    assert bytes(store.get("ns/k")) == b"a" * 10 + b"b" * 3000 + b"c" * 490
    assert store.head("ns/k").size == 3500

    store.put("ns/k", b"d" * 2500)  # chunked over chunked: old generation removed
    assert raw.hget(record, "gen") != first_gen
    assert len(chunk_keys(raw, store, "ns/k")) == 3
    store.put("ns/k", b"small")  # small over chunked: a plain string, no chunks left
    assert raw.type(record) == b"string" and chunk_keys(raw, store, "ns/k") == []
    store.put("ns/k", b"e" * 1001)  # chunked over small
    assert bytes(store.get("ns/k")) == b"e" * 1001
    assert [i.key for i in store.list("")] == ["ns/k"]
    assert store.list("")[0].size == 1001
    store.delete("ns/k")
    assert raw_keys(raw, store) == []


def _kill_after_the_swap(store: RedisStore, plan: Any) -> None:
    """Run ``plan`` up to and including its MULTI/EXEC, then abandon it, as a writer killed
    before its follow-up UNLINK of the old chunks would."""
    batch = next(plan)
    while True:
        results = store._execute(batch)
        if batch.transaction:
            plan.close()
            return
        batch = plan.send(results)


@pytest.mark.parametrize("replacement", ["chunked", "small", "delete"])
def test_a_writer_killed_after_the_swap_leaves_no_chunks_without_a_ttl(
    redis_store_factory: Factory, raw: Any, replacement: str
) -> None:
    """The old generation's chunks get a TTL inside the swap transaction itself, so a writer
    killed before its UNLINK cannot leak them forever (found by the crash harness)."""
    store = redis_store_factory(chunk_size=100)
    store.put("ns/k", b"o" * 1000)
    old_chunks = chunk_keys(raw, store, "ns/k")
    assert len(old_chunks) == 10 and all(raw.pttl(k) == -1 for k in old_chunks)
    if replacement == "delete":
        plan = store._delete_plan("ns/k")
    else:
        plan = store._put_plan("ns/k", b"n" * (700 if replacement == "chunked" else 50))
    _kill_after_the_swap(store, plan)
    for key in old_chunks:
        assert 0 < raw.pttl(key) <= STAGING_TTL_MS, key
    if replacement != "delete":
        assert bytes(store.get("ns/k")) == b"n" * (700 if replacement == "chunked" else 50)


def test_get_first_finds_a_chunked_record(redis_store_factory: Factory) -> None:
    store = redis_store_factory(chunk_size=100)
    store.put("ns/second", b"s" * 1000)
    key, data = store.get_first(["ns/missing", "ns/second"])
    assert (key, bytes(data)) == ("ns/second", b"s" * 1000)


def test_get_first_keeps_the_order_of_its_keys_whatever_each_holds(
    redis_store_factory: Factory, raw: Any
) -> None:
    """The candidates are fetched together, but the first key holding a record wins: a chunked
    one before a plain one, a plain one before a chunked one; a foreign key first is reported,
    never skipped."""
    store = redis_store_factory(chunk_size=100)
    store.put("ns/chunked", b"c" * 1000)
    store.put("ns/plain", b"p" * 10)
    assert bytes(store.get_first(["ns/none", "ns/chunked", "ns/plain"])[1]) == b"c" * 1000
    assert bytes(store.get_first(["ns/plain", "ns/chunked"])[1]) == b"p" * 10
    assert store.get_first(["ns/none", "ns/also-none"]) is None
    assert store.get_first([]) is None
    raw.rpush(store._rkey("ns/list"), b"x")
    with pytest.raises(CheckpointCorrupted, match="ns/list"):
        store.get_first(["ns/list", "ns/plain"])


def test_error_replies_inside_a_batch_come_back_in_place(redis_store_factory: Factory) -> None:
    """A non-transactional batch reads every reply, an error one included, so the pooled
    connection it goes back on stays in step with the server."""
    store = redis_store_factory(chunk_size=100)
    store.put("ns/chunked", b"c" * 1000)
    store.put("ns/plain", b"p")
    chunked, plain = store._rkey("ns/chunked"), store._rkey("ns/plain")
    replies = store._execute(
        _Batch((_cmd("GET", plain), _cmd("GET", chunked), _cmd("HGETALL", chunked)))
    )
    assert replies[0] == b"p"
    assert isinstance(replies[1], redis.ResponseError) and "WRONGTYPE" in str(replies[1])
    assert replies[2][b"n"] == b"10"
    assert bytes(store.get("ns/plain")) == b"p"
    assert store._pool._created_connections == 1


def _kill_the_pooled_connection(store: RedisStore, raw: Any) -> None:
    """Close the store's (only) pooled connection from the server side, as a server restart or
    an idle timeout would; the store finds out on its next command."""
    conn = store._pool.get_connection()
    try:
        conn.send_command("CLIENT", "ID")
        client_id = conn.read_response()
    finally:
        store._pool.release(conn)
    raw.client_kill_filter(_id=client_id)


@pytest.mark.parametrize(
    "commands",
    [
        [("SET", b"ckpt:ns/k", b"\x00v\r\n" * 100, "PX", 30_000, "GET")],
        [("GET", b"ckpt:ns/run/r/n"), ("GET", b"ckpt:ns/corr/c/n")],
        [("EVAL", "return 1", 1, b"k", -1)],
        [("SCAN", 0, "MATCH", b"ckpt:ns/*", "COUNT", 1000), ("HSET", b"k", b"n", 3)],
    ],
)
def test_small_batches_go_out_as_redis_py_packs_them(commands: list[tuple[Any, ...]]) -> None:
    expected = b"".join(redis.Connection().pack_commands(commands))
    assert _pack_small([_cmd(*args) for args in commands]) == expected


@pytest.mark.parametrize(
    "args",
    [
        ("SET", b"k", memoryview(b"a chunk view")),
        ("SET", b"k", b"v" * (64 << 10)),
        ("SET", b"k", True),
        ("SET", b"k", 1.5),
        ("SET", "ключ", b"v"),
    ],
    ids=["view", "large", "bool", "float", "non-ascii-str"],
)
def test_large_or_unusual_arguments_are_left_to_redis_py(args: tuple[Any, ...]) -> None:
    assert _pack_small([_cmd(*args)]) is None


def test_a_connection_dropped_under_the_store_is_retried(
    redis_store_factory: Factory, raw: Any
) -> None:
    store = redis_store_factory()
    store.put("ns/k", b"before")
    _kill_the_pooled_connection(store, raw)
    assert bytes(store.get_first(["ns/none", "ns/k"])[1]) == b"before"
    _kill_the_pooled_connection(store, raw)
    store.put("ns/k", b"after")
    assert bytes(store.get("ns/k")) == b"after"


def _drive(store: RedisStore, plan: Any, batch: Any) -> Any:
    while True:
        try:
            batch = plan.send(store._execute(batch))
        except StopIteration as done:
            return done.value


def test_reader_restarts_from_the_manifest_when_an_overwrite_removes_its_chunks(
    redis_store_factory: Factory,
) -> None:
    store = redis_store_factory(chunk_size=100)
    old, new = b"o" * 1000, b"n" * 700
    store.put("ns/k", old)
    plan = store._get_plan("ns/k")
    batch = next(plan)  # GET: a manifest is there (WRONGTYPE)
    batch = plan.send(store._execute(batch))  # HGETALL: the old generation
    batch = plan.send(store._execute(batch))  # now reading the old chunks...
    store.put("ns/k", new)  # ...when a writer replaces the record and drops them
    assert bytes(_drive(store, plan, batch)) == new


def test_lost_chunks_read_as_a_missing_record(redis_store_factory: Factory, raw: Any) -> None:
    """Chunks gone while the manifest stays (evicted under maxmemory, expiring this very
    millisecond): never a truncated record, the record is simply not there any more."""
    store = redis_store_factory(chunk_size=100)
    store.put("ns/k", b"x" * 1000)
    raw.delete(chunk_keys(raw, store, "ns/k")[3])
    assert store.get("ns/k") is None
    assert store.get_first(["ns/k"]) is None


def test_a_foreign_hash_at_a_record_key_is_reported_as_corrupted(
    redis_store_factory: Factory, raw: Any
) -> None:
    store = redis_store_factory()
    raw.hset(store._rkey("ns/k"), mapping={"owner": "someone else"})
    with pytest.raises(CheckpointCorrupted, match="not a ckpt manifest") as info:
        store.get("ns/k")
    assert info.value.key == "ns/k"


class _Exploding:
    """A payload that dies after ``after`` bytes, like a writer killed mid-upload."""

    def __init__(self, size: int, after: int) -> None:
        self.size, self.after = size, after

    def __iter__(self) -> Iterator[bytes]:
        for _ in range(self.after // 100):
            yield b"n" * 100
        raise RuntimeError("writer died")


def test_a_write_that_dies_mid_chunks_publishes_nothing_and_leaks_nothing_for_long(
    redis_store_factory: Factory, raw: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(redis_store_module, "PIPELINE_BYTES", 200)  # send chunks two by two
    store = redis_store_factory(chunk_size=100)
    store.put("ns/k", b"previous")
    with pytest.raises(RuntimeError, match="writer died"):
        store.put("ns/k", _Exploding(1000, after=500))
    with pytest.raises(RuntimeError, match="writer died"):
        store.put("ns/fresh", _Exploding(1000, after=500))
    assert bytes(store.get("ns/k")) == b"previous"
    assert store.get("ns/fresh") is None and store.head("ns/fresh") is None
    assert [i.key for i in store.list("")] == ["ns/k"]
    staged = [k for k in raw_keys(raw, store) if b"\x00" in k]
    assert staged, "the dead writer staged some chunks"
    for key in staged:
        assert 0 < raw.pttl(key) <= STAGING_TTL_MS, "staged chunks must expire on their own"


def _put_losing_chunks(store: RedisStore, raw: Any, value: bytes, losses: int) -> Any:
    """Drive a chunked put, deleting one staged chunk before each of the first ``losses``
    commits (what a concurrent prefix delete or an eviction does)."""
    plan = store._put_plan("ns/k", value)
    batch = next(plan)
    while True:
        if batch.transaction and losses:
            losses -= 1
            raw.delete(chunk_keys(raw, store, "ns/k")[0])
        try:
            batch = plan.send(store._execute(batch))
        except StopIteration as done:
            return done.value


def test_chunks_lost_before_publishing_are_staged_again_and_the_save_lands(
    redis_store_factory: Factory, raw: Any
) -> None:
    """A chunk deleted between staging and the commit: nothing is published from that
    generation, the chunks are staged again under a new one, and the record lands whole."""
    store = redis_store_factory(chunk_size=100)
    value = bytes(range(256)) * 4
    _put_losing_chunks(store, raw, value, losses=2)
    assert bytes(store.get("ns/k")) == value
    manifest = raw.hgetall(store._rkey("ns/k"))
    live = {k for k in raw_keys(raw, store) if b"\x00" in k}
    assert len(live) == int(manifest[b"n"]), "only the published generation's chunks remain"


def test_chunks_lost_at_every_attempt_fail_the_save_and_leave_nothing(
    redis_store_factory: Factory, raw: Any
) -> None:
    store = redis_store_factory(chunk_size=100)
    with pytest.raises(StoreUnavailable, match="chunks disappeared before the record was"):
        _put_losing_chunks(store, raw, b"x" * 1000, losses=redis_store_module._PUBLISH_ATTEMPTS)
    assert store.get("ns/k") is None
    assert raw_keys(raw, store) == []


# -- SCAN escaping ---------------------------------------------------------------------------------


def test_store_prefixes_with_glob_characters_match_only_themselves(
    redis_store_factory: Factory,
) -> None:
    tag = os.urandom(4).hex()
    names = [f"t{tag}[1]*", f"t{tag}1x", f"t{tag}?", f"t{tag}X", f"t{tag}\\", f"t{tag}"]
    stores = {name: redis_store_factory(prefix=name) for name in names}
    for name, store in stores.items():
        store.put("run/a/n", name.encode())
        store.put("run/a:b/n", name.encode())
        store.put("run/a*/n", name.encode())
    for store in stores.values():
        assert sorted(i.key for i in store.list("")) == ["run/a*/n", "run/a/n", "run/a:b/n"]
    victim = stores[f"t{tag}[1]*"]
    assert victim.delete_prefix("run/a/") == 1
    assert sorted(i.key for i in victim.list("")) == ["run/a*/n", "run/a:b/n"]
    assert victim.delete_prefix("run/a*/") == 1
    assert victim.delete_prefix("") == 1
    for name, store in stores.items():
        if store is not victim:
            assert len(store.list("")) == 3, f"deleting {victim.prefix!r} touched {name!r}"
            assert bytes(store.get("run/a/n")) == name.encode()


def test_delete_prefix_counts_records_not_chunks(redis_store_factory: Factory, raw: Any) -> None:
    store = redis_store_factory(chunk_size=10)
    store.put("run/r1/a", b"x" * 95)
    store.put("run/r1/b", b"y")
    store.put("run/r10/c", b"z" * 30)
    assert store.delete_prefix("run/r1/") == 2
    assert sorted(i.key for i in store.list("")) == ["run/r10/c"]
    assert all(k.startswith(store._rkey("run/r10/c")) for k in raw_keys(raw, store))


# -- failures --------------------------------------------------------------------------------------


def test_a_stopped_server_is_store_unavailable_naming_the_url_without_password(
    redis_server_factory: Callable[..., RedisServer],
) -> None:
    server = redis_server_factory(password="pw-never-shown")
    store = RedisStore(server.url)
    store.put("ns/k", b"before")
    server.stop()
    for op, args in [("get", ("ns/k",)), ("put", ("ns/k", b"x")), ("list", ("",))]:
        with pytest.raises(StoreUnavailable) as info:
            getattr(store, op)(*args)
        message = str(info.value)
        assert f"redis://:***@127.0.0.1:{server.port}/0" in message
        assert "pw-never-shown" not in message and "after 4 attempts" in message
        assert info.value.__cause__ is None and info.value.__suppress_context__

    async def async_get() -> None:
        try:
            await store.aget("ns/k")
        finally:
            await store.aclose()

    with pytest.raises(StoreUnavailable, match="is unavailable"):
        asyncio.run(async_get())
    store.close()


def test_a_server_that_never_answered_is_store_unavailable() -> None:
    from .servers import free_ports

    store = RedisStore(f"redis://127.0.0.1:{free_ports(1)[0]}/0")
    with pytest.raises(StoreUnavailable, match=r"Connection refused|connecting"):
        store.head("ns/k")


@pytest.mark.parametrize("password", ["wrong-password", None])
def test_refused_authentication_is_a_config_error_without_the_password(
    redis_server_factory: Callable[..., RedisServer], password: str | None
) -> None:
    server = redis_server_factory(password="right-password")
    auth = f":{password}@" if password else ""
    store = RedisStore(f"redis://{auth}127.0.0.1:{server.port}/0")
    with pytest.raises(StoreConfigError, match=r"refused authentication|NOAUTH") as info:
        store.put("ns/k", b"x")
    assert "wrong-password" not in str(info.value) and "right-password" not in str(info.value)
    assert f"127.0.0.1:{server.port}" in str(info.value)
    store.close()
    good = RedisStore(f"redis://:right-password@127.0.0.1:{server.port}/0")
    good.put("ns/k", b"x")
    good.close()


def test_a_database_that_does_not_exist_is_a_config_error(
    redis_server_factory: Callable[..., RedisServer],
) -> None:
    server = redis_server_factory()
    store = RedisStore(f"redis://127.0.0.1:{server.port}/99")
    with pytest.raises(StoreConfigError, match="database number"):
        store.get("ns/k")
    store.close()


# -- pools, async, processes -----------------------------------------------------------------------


def test_one_connection_pool_per_store(redis_server_factory: Callable[..., RedisServer]) -> None:
    server = redis_server_factory()
    client = server.client()
    store = RedisStore(server.url, chunk_size=64)
    try:
        for i in range(30):
            store.put(f"ns/k{i}", b"x" * (i * 10))
            store.get(f"ns/k{i}")
            store.get_first(["ns/none", f"ns/k{i}"])
        store.list("")
        store.delete_prefix("ns/")

        async def work() -> None:
            await asyncio.gather(*(store.aput(f"ns/a{i}", b"y" * 100) for i in range(10)))
            for i in range(10):
                await store.aget(f"ns/a{i}")

        asyncio.run(work())
        # The checker itself, the sync pool's connection, and the async pool's (up to the
        # ten concurrent puts): never one connection per call (that would be ~120).
        clients = int(client.info("clients")["connected_clients"])
        assert clients <= 1 + 1 + 10
        assert len(store._pool._available_connections) + len(store._pool._in_use_connections) == 1
    finally:
        store.close()
        client.close()


def test_async_pools_follow_the_event_loop(redis_store_factory: Factory) -> None:
    """Each asyncio.run() is a new loop; a pool bound to a finished loop is never reused."""
    store = redis_store_factory()
    for i in range(3):
        asyncio.run(store.aput(f"ns/k{i}", b"%d" % i))
        assert asyncio.run(store.aget(f"ns/k{i}")) == b"%d" % i
    assert len(store._aclients) <= 1


def test_async_twins_see_the_same_records_as_sync(redis_store_factory: Factory) -> None:
    store = redis_store_factory(chunk_size=50)

    async def main() -> list[Any]:
        await store.aput("run/r/a", b"a" * 120)
        await store.aput("run/r/b", b"b")
        out = [
            sorted((i.key, i.size) for i in await store.alist("run/")),
            await store.ahead("run/r/a"),
            bytes(await store.aget("run/r/a")),
            await store.adelete_prefix("run/r/"),
        ]
        await store.aclose()
        return out

    listed, head, data, deleted = asyncio.run(main())
    assert listed == [("run/r/a", 120), ("run/r/b", 1)]
    assert head == ckpt.ObjectInfo("run/r/a", 120)
    assert data == b"a" * 120 and deleted == 2
    assert store.list("") == []


def _writer(url: str, prefix: str, writer: int, rounds: int) -> None:
    store = RedisStore(url, prefix=prefix, chunk_size=4096)
    for version in range(rounds):
        size = 1000 + (writer * 7919 + version * 104729) % 40000  # inline and chunked
        store.put("ns/shared", versioned(writer, version, size))
        store.put(f"ns/own-{writer}", versioned(writer, version, size))
    store.close()


def test_writers_in_several_processes_never_tear_a_record(redis_url: str) -> None:
    prefix = "ckpt-test-mp-" + os.urandom(4).hex()
    store = RedisStore(redis_url, prefix=prefix, chunk_size=4096)
    store.put("ns/shared", versioned(9, 0, 5000))
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(redis_url, prefix, w, 40)) for w in range(3)]
    try:
        for p in procs:
            p.start()
        problems = read_while_running(store, "ns/shared", procs, min_reads=20)
        for p in procs:
            p.join(120)
            assert p.exitcode == 0
        assert problems == []
        for w in range(3):
            assert check_versioned(bytes(store.get(f"ns/own-{w}"))) is None
        assert bytes(store.get(f"ns/own-{0}")).startswith(b"0:39:")
        chunk_owners = {
            k.split(b"\x00")[0]
            for k in redis.Redis.from_url(redis_url).keys(prefix.encode() + b":*\x00*")
        }
        assert chunk_owners <= {
            store._rkey(k) for k in ("ns/shared", "ns/own-0", "ns/own-1", "ns/own-2")
        }
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()
        store.delete_prefix("")
        store.close()


def test_a_store_opened_before_fork_works_in_the_child(redis_store_factory: Factory) -> None:
    store = redis_store_factory()
    store.put("ns/parent", b"p")
    ctx = multiprocessing.get_context("fork")
    child = ctx.Process(target=lambda: store.put("ns/child", bytes(store.get("ns/parent")) + b"c"))
    child.start()
    child.join(60)
    assert child.exitcode == 0
    assert bytes(store.get("ns/child")) == b"pc"


# -- large records stream --------------------------------------------------------------------------


def test_large_records_hold_at_most_one_extra_copy(redis_store_factory: Factory) -> None:
    size = 48 << 20
    store = redis_store_factory(chunk_size=1 << 20)
    payload = GeneratedPayload(size, chunk=1 << 20, seed=3)
    digest = hashlib.sha256()
    for piece in payload:
        digest.update(piece)
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        store.put("ns/big", payload)
        put_extra = tracemalloc.get_traced_memory()[1] - base
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        data = store.get("ns/big")
        get_peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    # Chunks go out a few at a time (PIPELINE_BYTES): far below one copy of the record.
    assert put_extra < size // 4, f"put of {size} bytes allocated {put_extra}: not streamed"
    assert data is not None and len(data) == size
    # The record itself plus a few chunks in flight: well under a second copy.
    assert get_peak < size + size // 2, f"get of {size} bytes peaked at {get_peak}"
    assert hashlib.sha256(data).digest() == digest.digest()


# -- through the manager ---------------------------------------------------------------------------


def test_manager_round_trip_on_redis_chunked_and_not(redis_store_factory: Factory) -> None:
    store = redis_store_factory(chunk_size=256)
    mgr = ckpt.CheckpointManager(store, namespace="etl")
    ctx = ckpt.RunContext(run_id="r-1", correlation_id="job-a*:b")
    mgr.save(ctx, "small", {"rows": 3})
    mgr.save(ctx, "large", list(range(2000)))
    assert mgr.load(ctx, "small") == {"rows": 3}
    assert mgr.load(ctx, "large") == list(range(2000))
    assert mgr.lookup(ctx, "large") is not None
    other = ckpt.RunContext(run_id="r-2", correlation_id="job-a")
    assert mgr.lookup(other, "large") is None
    mgr.finish(ctx, succeeded=True)
    assert store.list("") == []


def test_lookups_and_listings_survive_foreign_keys_and_lying_manifests(
    redis_store_factory: Factory, raw: Any
) -> None:
    """A key of another type, or a manifest whose size is no count, lists with size 0 (it is
    never a crash of ``ckpt ls``) and loading it reports the corruption, naming the key."""
    store = redis_store_factory()
    raw.hset(store._rkey("ns/words"), mapping={"gen": "g", "n": "1", "size": "abc"})
    raw.hset(store._rkey("ns/negative"), mapping={"gen": "g", "n": "1", "size": "-5"})
    raw.hset(store._rkey("ns/infinite"), mapping={"gen": "g", "n": "1", "size": "inf"})
    raw.hset(store._rkey("ns/nan"), mapping={"gen": "g", "n": "1", "size": "nan"})
    raw.rpush(store._rkey("ns/list"), b"x")
    for key in ("ns/words", "ns/negative", "ns/infinite", "ns/nan", "ns/list"):
        assert store.head(key) == ckpt.ObjectInfo(key, 0)
        with pytest.raises(CheckpointCorrupted) as err:
            store.get(key)
        assert key in str(err.value)
    assert sorted((i.key, i.size) for i in store.list("ns/")) == [
        ("ns/infinite", 0),
        ("ns/list", 0),
        ("ns/nan", 0),
        ("ns/negative", 0),
        ("ns/words", 0),
    ]

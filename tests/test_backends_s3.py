"""FsspecStore on S3 through s3fs, against a real SeaweedFS server: the options users already pass
to s3fs/pandas, one PUT per record, multipart uploads that publish only when complete, typed
failures without credentials, processes, forks and memory.

The generic store contract runs in ``test_store_conformance.py``; this file checks what only an
object store has. The server-down test starts its own SeaweedFS and stops it.
"""

from __future__ import annotations

import asyncio
import hashlib
import multiprocessing
import threading
import tracemalloc
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import ckpt_core as ckpt
from ckpt_core import (
    CheckpointError,
    FsspecStore,
    StoreConfigError,
    StoreUnavailable,
    open_store,
)
from ckpt_core.testing.twins import GeneratedPayload

from .records import check_versioned, read_while_running, versioned
from .servers import SeaweedServer

Factory = Callable[..., FsspecStore]
MiB = 1 << 20


class S3Calls:
    """Records the S3 operations (and HTTP attempts) the store's botocore client makes."""

    def __init__(self, store: FsspecStore) -> None:
        store.head("warm/up")  # s3fs creates its client on first use
        self.client = store.fs.s3
        self.ops: list[str] = []
        self.sends = 0
        self.client.meta.events.register("before-call.s3", self._call)
        self.client.meta.events.register("before-send.s3", self._send)

    def _call(self, model: Any, **_: Any) -> None:
        self.ops.append(model.name)

    def _send(self, **_: Any) -> None:
        self.sends += 1

    def take(self) -> list[str]:
        ops, self.ops, self.sends = self.ops, [], 0
        return ops

    def close(self) -> None:
        self.client.meta.events.unregister("before-call.s3", self._call)
        self.client.meta.events.unregister("before-send.s3", self._send)


@pytest.fixture
def calls() -> Iterator[Callable[[FsspecStore], S3Calls]]:
    made: list[S3Calls] = []

    def spy(store: FsspecStore) -> S3Calls:
        made.append(S3Calls(store))
        return made[-1]

    yield spy
    for spy_ in made:
        spy_.close()


# -- what users pass, what lands in the bucket -----------------------------------------------------


def test_pandas_style_options_and_one_object_per_record(s3_server: SeaweedServer) -> None:
    prefix = f"team/{uuid.uuid4().hex[:8]}"
    store = open_store(
        f"s3://{s3_server.bucket}/{prefix}",
        endpoint_url=s3_server.endpoint_url,
        key=s3_server.access_key,
        secret=s3_server.secret_key,
        client_kwargs={"region_name": "us-east-1"},
        config_kwargs={"s3": {"addressing_style": "path"}},
    )
    assert isinstance(store, FsspecStore)
    mgr = ckpt.CheckpointManager(store, namespace="etl")
    ctx = ckpt.RunContext(run_id="r-1", correlation_id="nightly/2026*11")
    info = mgr.save(ctx, "transform", {"rows": [1, 2, 3]})
    assert mgr.load(ctx, "transform") == {"rows": [1, 2, 3]}
    fs = s3_server.filesystem()
    objects = fs.find(f"{s3_server.bucket}/{prefix}", detail=True)
    assert list(objects) == [f"{s3_server.bucket}/{prefix}/{info.key}"]
    assert objects[f"{s3_server.bucket}/{prefix}/{info.key}"]["size"] == info.size
    assert s3_server.access_key not in repr(store) and s3_server.secret_key not in repr(store)


def test_small_save_is_one_put_object_and_small_load_one_get_object(
    s3_store_factory: Factory, calls: Callable[[FsspecStore], S3Calls]
) -> None:
    store = s3_store_factory()
    spy = calls(store)
    store.put("ns/k", b"v" * 1000)
    assert spy.take() == ["PutObject"], "no read, head or list before a write"
    assert bytes(store.get("ns/k")) == b"v" * 1000
    assert spy.take() == ["GetObject"]
    store.put("ns/k", b"w" * (2 * MiB))  # a file body past 1 MiB: still one PutObject
    assert spy.take() == ["PutObject"]
    assert bytes(store.get("ns/k")) == b"w" * (2 * MiB)
    assert store.get("ns/missing") is None
    assert spy.take() == ["GetObject", "GetObject"]
    key, data = store.get_first(["ns/missing", "ns/k"])  # both asked at once
    assert (key, len(data)) == ("ns/k", 2 * MiB)
    assert spy.take() == ["GetObject", "GetObject"]


def test_large_save_is_one_multipart_upload_fed_part_by_part(
    s3_store_factory: Factory, calls: Callable[[FsspecStore], S3Calls]
) -> None:
    store = s3_store_factory(multipart_threshold=6 * MiB, block_size=5 * MiB)
    payload = GeneratedPayload(12 * MiB + 5, chunk=MiB, seed=1)
    spy = calls(store)
    store.put("ns/big", payload)
    assert spy.take() == [
        "CreateMultipartUpload",
        "UploadPart",
        "UploadPart",
        "UploadPart",
        "CompleteMultipartUpload",
    ]
    assert bytes(store.get("ns/big")) == payload.expected()
    assert store.head("ns/big").size == 12 * MiB + 5


class _Paused:
    """A payload that stops after ``after`` bytes until released (or dies, if told to)."""

    def __init__(self, size: int, after: int, die: bool = False) -> None:
        self.size, self.after, self.die = size, after, die
        self.reached = threading.Event()
        self.release = threading.Event()

    def __iter__(self) -> Iterator[bytes]:
        sent = 0
        while sent < self.size:
            if sent == self.after:
                self.reached.set()
                if self.die:
                    raise RuntimeError("writer died mid-upload")
                self.release.wait(60)
            piece = min(MiB, self.size - sent)  # ``after`` is a whole number of MiB
            yield b"n" * piece
            sent += piece


def test_a_record_is_invisible_until_its_multipart_upload_completes(
    s3_store_factory: Factory,
) -> None:
    store = s3_store_factory(multipart_threshold=6 * MiB, block_size=5 * MiB)
    store.put("ns/old", b"previous")
    payloads = {"ns/old": _Paused(11 * MiB, after=10 * MiB), "ns/new": _Paused(11 * MiB, 10 * MiB)}
    errors: list[BaseException] = []

    def write(key: str) -> None:
        try:
            store.put(key, payloads[key])
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(k,)) for k in payloads]
    for t in threads:
        t.start()
    try:
        for payload in payloads.values():
            assert payload.reached.wait(60)
        # Two parts are uploaded for each, and neither is visible.
        assert bytes(store.get("ns/old")) == b"previous"
        assert store.head("ns/old").size == len(b"previous")
        assert store.get("ns/new") is None and store.head("ns/new") is None
        assert [i.key for i in store.list("")] == ["ns/old"]
    finally:
        for payload in payloads.values():
            payload.release.set()
        for t in threads:
            t.join(60)
    assert errors == []
    assert bytes(store.get("ns/old")) == b"n" * (11 * MiB)
    assert bytes(store.get("ns/new")) == b"n" * (11 * MiB)


def test_a_failed_multipart_upload_is_aborted_and_publishes_nothing(
    s3_store_factory: Factory, calls: Callable[[FsspecStore], S3Calls]
) -> None:
    store = s3_store_factory(multipart_threshold=6 * MiB, block_size=5 * MiB)
    store.put("ns/k", b"previous")
    spy = calls(store)
    with pytest.raises(CheckpointError, match="writer died mid-upload"):
        store.put("ns/k", _Paused(11 * MiB, after=10 * MiB, die=True))
    ops = spy.take()
    assert ops[:3] == ["CreateMultipartUpload", "UploadPart", "UploadPart"]
    assert ops[-1] == "AbortMultipartUpload" and "CompleteMultipartUpload" not in ops
    assert bytes(store.get("ns/k")) == b"previous"
    bucket, key, _ = store.fs.split_path(store._files.path("ns/k"))
    pending = store.fs.call_s3("list_multipart_uploads", Bucket=bucket, Prefix=key)
    assert pending.get("Uploads", []) == [], "the aborted upload must not linger"


def test_list_of_a_prefix_that_names_a_record_is_empty(s3_store_factory: Factory) -> None:
    """On S3 ``ns/a`` and ``ns/a/x`` can both exist; ``list("ns/a/")`` is only what is below."""
    store = s3_store_factory()
    store.put("ns/a", b"record")
    store.put("ns/ab/x", b"other")
    assert store.list("ns/a/") == []
    assert store.delete_prefix("ns/a/") == 0
    store.put("ns/a/x", b"below")
    assert [i.key for i in store.list("ns/a/")] == ["ns/a/x"]
    assert store.delete_prefix("ns/a/") == 1
    assert sorted(i.key for i in store.list("")) == ["ns/a", "ns/ab/x"]


# -- failures --------------------------------------------------------------------------------------


@pytest.mark.parametrize("op", ["get", "put", "head", "list", "delete", "delete_prefix"])
def test_a_missing_bucket_is_a_config_error_not_a_miss(s3_server: SeaweedServer, op: str) -> None:
    bucket = "no-such-bucket-" + uuid.uuid4().hex[:8]
    store = open_store(f"s3://{bucket}/prefix", **s3_server.storage_options())
    args = {"put": ("ns/k", b"x"), "list": ("",), "delete_prefix": ("ns/",)}.get(op, ("ns/k",))
    with pytest.raises(StoreConfigError, match="the bucket does not exist") as info:
        getattr(store, op)(*args)
    assert f"s3://{bucket}/prefix" in str(info.value)


@pytest.mark.parametrize("wrong", ["secret", "key"])
def test_refused_credentials_are_a_config_error_without_credentials(
    s3_server: SeaweedServer, wrong: str
) -> None:
    bad = {"secret": "wrong-secret-" + uuid.uuid4().hex, "key": "AKIAWRONG" + uuid.uuid4().hex[:8]}
    options = s3_server.storage_options(**{wrong: bad[wrong]})
    store = open_store(f"s3://{s3_server.bucket}/x", **options)
    for op, args in [("put", ("ns/k", b"x")), ("get", ("ns/k",)), ("list", ("",))]:
        with pytest.raises(StoreConfigError, match="was refused") as info:
            getattr(store, op)(*args)
        shown = f"{info.value} {store!r}"
        for secret in (options["key"], options["secret"]):
            assert secret not in shown


def test_a_stopped_server_is_store_unavailable_after_a_bounded_retry(
    seaweed_factory: Callable[[], SeaweedServer], calls: Callable[[FsspecStore], S3Calls]
) -> None:
    server = seaweed_factory()
    store = open_store(f"s3://{server.bucket}/p", **server.storage_options())
    store.put("ns/k", b"before")
    spy = calls(store)
    server.stop(grace=0)  # SIGKILL: the server dies, it does not say goodbye
    for op, args in [("get", ("ns/k",)), ("put", ("ns/k", b"x")), ("head", ("ns/k",))]:
        spy.take()
        with pytest.raises(StoreUnavailable, match="failed after retries") as info:
            getattr(store, op)(*args)
        message = str(info.value)
        assert f"s3://{server.bucket}/p" in message and "Could not connect" in message
        assert server.secret_key not in message and server.access_key not in message
        assert spy.sends == 3, f"{op}: expected 3 attempts (standard retry mode), saw {spy.sends}"


def test_user_retry_and_timeout_settings_are_kept(s3_server: SeaweedServer) -> None:
    default = FsspecStore(f"s3://{s3_server.bucket}/x", **s3_server.storage_options())
    config = default.fs.config_kwargs
    assert config["retries"] == {"total_max_attempts": 3, "mode": "standard"}
    assert config["connect_timeout"] == 3 and config["s3"] == {"addressing_style": "path"}
    chosen = {"retries": {"max_attempts": 9, "mode": "adaptive"}, "connect_timeout": 11}
    custom = FsspecStore(
        f"s3://{s3_server.bucket}/x", **s3_server.storage_options(config_kwargs=chosen)
    )
    assert custom.fs.config_kwargs == chosen


def test_a_part_size_below_the_s3_minimum_is_refused() -> None:
    with pytest.raises(StoreConfigError, match=r"block_size=1048576 .* \(5 MiB\)"):
        FsspecStore("s3://bucket/x", block_size=MiB, anon=True)


def test_a_missing_filesystem_package_names_the_extra() -> None:
    import fsspec  # noqa: F401 - a core dependency

    try:
        import gcsfs  # noqa: F401
    except ImportError:
        with pytest.raises(StoreConfigError, match=r"ckpt\[gcs\]"):
            open_store("gs://bucket/prefix")
    else:  # pragma: no cover - gcsfs installed: opening does no IO
        assert isinstance(open_store("gs://bucket/prefix", token="anon"), FsspecStore)


# -- processes, forks, async -----------------------------------------------------------------------


def _s3_writer(url: str, options: dict[str, Any], writer: int, rounds: int) -> None:
    store = open_store(url, **options)
    for version in range(rounds):
        size = 500 + (writer * 7919 + version * 104729) % 30000
        if writer == 0 and version == rounds - 1:
            size = 7 * MiB  # one multipart upload among the single PUTs
        store.put("ns/shared", versioned(writer, version, size))
        store.put(f"ns/own-{writer}", versioned(writer, version, size))


def test_writers_in_several_processes_never_tear_a_record(s3_server: SeaweedServer) -> None:
    url = f"s3://{s3_server.bucket}/mp-{uuid.uuid4().hex[:8]}"
    options = {**s3_server.storage_options(), "multipart_threshold": 6 * MiB}
    store = open_store(url, **options)
    store.put("ns/shared", versioned(9, 0, 100))
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_s3_writer, args=(url, options, w, 15)) for w in range(3)]
    try:
        for p in procs:
            p.start()
        problems = read_while_running(store, "ns/shared", procs, min_reads=10, pause=0.01)
        for p in procs:
            p.join(120)
            assert p.exitcode == 0
        assert problems == []
        for w in range(3):
            assert check_versioned(bytes(store.get(f"ns/own-{w}"))) is None
        assert len(store.get("ns/own-0")) == 7 * MiB
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()


def test_a_store_opened_before_fork_works_in_the_child_and_the_parent_stays_healthy(
    s3_server: SeaweedServer, s3_store_factory: Factory, calls: Callable[[FsspecStore], S3Calls]
) -> None:
    """fsspec's async filesystems are not fork-safe: the child gets its own. And the child must
    never close the copy it inherited: that would unregister the parent's pooled sockets from
    the event-loop epoll the two processes share, and the parent's next request would hang."""
    config = {"s3": {"addressing_style": "path"}, "read_timeout": 3}
    store = s3_store_factory(config_kwargs=config)
    store.put("ns/parent", b"p")  # the parent's client, loop thread and pooled connection exist
    spy = calls(store)

    def child() -> None:
        store.put("ns/child", bytes(store.get("ns/parent")) + b"c")

    for _ in range(3):
        proc = multiprocessing.get_context("fork").Process(target=child)
        proc.start()
        proc.join(60)
        assert proc.exitcode == 0
        spy.take()
        assert bytes(store.get("ns/child")) == b"pc"
        assert spy.sends == 1, "the parent's pooled connection broke when the child exited"


def test_async_twins_see_the_same_records_as_sync(s3_store_factory: Factory) -> None:
    store = s3_store_factory()

    async def main() -> list[Any]:
        await store.aput("run/r/a", b"a" * 120)
        await store.aput("run/r/b", b"b")
        return [
            sorted((i.key, i.size) for i in await store.alist("run/")),
            (await store.ahead("run/r/a")).size,
            bytes(await store.aget("run/r/a")),
            await store.aget_first(["run/r/none", "run/r/b"]),
            await store.adelete_prefix("run/r/"),
        ]

    listed, size, data, first, deleted = asyncio.run(main())
    assert listed == [("run/r/a", 120), ("run/r/b", 1)]
    assert (size, data, first, deleted) == (120, b"a" * 120, ("run/r/b", b"b"), 2)
    assert store.list("") == []


# -- large records stream --------------------------------------------------------------------------


def test_large_records_hold_at_most_one_extra_copy(s3_store_factory: Factory) -> None:
    size = 40 * MiB
    store = s3_store_factory(multipart_threshold=8 * MiB, block_size=5 * MiB)
    payload = GeneratedPayload(size, chunk=MiB, seed=4)
    digest = hashlib.sha256()
    for piece in payload:
        digest.update(piece)
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        store.put("ns/big", payload)
        put_extra = tracemalloc.get_traced_memory()[1] - base
        base = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        data = store.get("ns/big")
        get_peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    # One 5 MiB part buffer plus botocore's 1 MiB reads: far below a copy of the record.
    assert put_extra < size // 4, f"put of {size} bytes allocated {put_extra}: not streamed"
    assert data is not None and hashlib.sha256(data).digest() == digest.digest()
    # The record plus at most one transient copy (aiohttp joins the body it received).
    assert get_peak < 2 * size + 4 * MiB, f"get of {size} bytes peaked at {get_peak}"

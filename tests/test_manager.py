"""CheckpointManager details on the memory and local stores: lookup order, scopes and lifecycle,
CheckpointInfo fields, misplaced records, error messages, and the async twins.

The generic store/manager conformance suites over every backend live in ``ckpt_core.testing``;
these tests pin down the manager's own decisions.
"""

from __future__ import annotations

import asyncio
import inspect
import time

import pytest

import ckpt_core as ckpt
from ckpt_core import CheckpointManager, RunContext, Scope


@pytest.fixture(params=["memory", "local"])
def store(request: pytest.FixtureRequest, tmp_path: object) -> ckpt.Store:
    if request.param == "memory":
        return ckpt.MemoryStore()
    return ckpt.FsspecStore(f"{tmp_path}/store")


@pytest.fixture
def mgr(store: ckpt.Store) -> CheckpointManager:
    return CheckpointManager(store, namespace="etl")


ATTEMPT1 = RunContext(run_id="r-1", correlation_id="job-7", attempt=1, max_attempts=3)
ATTEMPT2 = RunContext(run_id="r-2", correlation_id="job-7", attempt=2, max_attempts=3)


def test_save_returns_full_info(mgr: CheckpointManager) -> None:
    before = time.time()
    info = mgr.save(ATTEMPT1, "transform", {"rows": 3})
    assert info.namespace == "etl" and info.node == "transform"
    assert info.scope is Scope.CORRELATION
    assert info.key == "etl/corr/job-7/transform" == mgr.key_for(ATTEMPT1, "transform")
    assert info.codec == "json" and info.schema == "json"
    assert info.run_id == "r-1" and info.correlation_id == "job-7" and info.attempt == 1
    assert info.created_at is not None and info.created_at >= before
    assert info.checksum is not None and info.checksum.startswith("blake3:")
    assert not info.signed
    data = mgr.store.get(info.key)
    assert data is not None and len(data) == info.size


def test_retry_resumes_from_the_correlation(mgr: CheckpointManager) -> None:
    mgr.save(ATTEMPT1, "extract", [1, 2, 3])
    mgr.save(ATTEMPT1, "scratch", "mine", scope=Scope.RUN)
    assert mgr.finish(ATTEMPT1, succeeded=False) == 1  # RUN scope always goes
    assert mgr.load(ATTEMPT2, "extract") == [1, 2, 3]
    with pytest.raises(ckpt.CheckpointNotFound):
        mgr.load(ATTEMPT2, "scratch")
    hit = mgr.lookup(ATTEMPT2, "extract")
    assert hit is not None and hit.scope is Scope.CORRELATION and hit.node == "extract"


def test_run_scope_is_private_to_the_attempt(mgr: CheckpointManager) -> None:
    mgr.save(ATTEMPT1, "n", "attempt-1", scope=Scope.RUN)
    assert mgr.load(ATTEMPT1, "n") == "attempt-1"
    assert mgr.lookup(ATTEMPT2, "n") is None


def test_lookup_tries_run_before_correlation(mgr: CheckpointManager) -> None:
    mgr.save(ATTEMPT1, "n", "shared", scope=Scope.CORRELATION)
    mgr.save(ATTEMPT1, "n", "private", scope=Scope.RUN)
    assert mgr.load(ATTEMPT1, "n") == "private"
    hit = mgr.lookup(ATTEMPT1, "n")
    assert hit is not None and hit.scope is Scope.RUN and hit.key == "etl/run/r-1/n"
    assert mgr.load(ATTEMPT2, "n") == "shared"


def test_list_shows_run_and_correlation(mgr: CheckpointManager) -> None:
    mgr.save(ATTEMPT1, "b", 1)
    mgr.save(ATTEMPT1, "a", 2)
    mgr.save(ATTEMPT1, "tmp", 3, scope=Scope.RUN)
    mgr.save(RunContext("other"), "x", 4)
    listed = mgr.list(ATTEMPT1)
    assert [(i.scope.value, i.node) for i in listed] == [
        ("run", "tmp"),
        ("correlation", "a"),
        ("correlation", "b"),
    ]
    assert all(i.size > 0 and i.namespace == "etl" for i in listed)


def test_finish_success_cleans_unless_retention_keeps(store: ckpt.Store) -> None:
    deleting = CheckpointManager(store, namespace="etl")
    deleting.save(ATTEMPT1, "n", 1)
    deleting.save(ATTEMPT1, "r", 1, scope=Scope.RUN)
    assert deleting.finish(ATTEMPT1, succeeded=True, retention="keep") == 1
    assert deleting.load(ATTEMPT2, "n") == 1
    assert deleting.finish(ATTEMPT2, succeeded=True) == 1
    assert deleting.lookup(ATTEMPT2, "n") is None

    keeping = CheckpointManager(store, namespace="etl", retention="keep")
    keeping.save(ATTEMPT1, "n", 1)
    assert keeping.finish(ATTEMPT1, succeeded=True) == 0
    assert keeping.load(ATTEMPT2, "n") == 1
    assert keeping.finish(ATTEMPT1, succeeded=True, retention="delete") == 1
    assert keeping.cleanup_correlation("job-7") == 0


def test_finish_failure_keeps_the_correlation(mgr: CheckpointManager) -> None:
    mgr.save(ATTEMPT1, "n", 1)
    assert mgr.finish(ATTEMPT1, succeeded=False) == 0
    assert mgr.load(ATTEMPT2, "n") == 1
    assert mgr.cleanup_correlation("job-7") == 1
    assert mgr.lookup(ATTEMPT2, "n") is None


def test_namespaces_are_separate(store: ckpt.Store) -> None:
    a = CheckpointManager(store, namespace="a")
    b = CheckpointManager(store, namespace="b")
    a.save(ATTEMPT1, "n", "from a")
    assert b.lookup(ATTEMPT1, "n") is None
    b.save(ATTEMPT1, "n", "from b")
    a.finish(ATTEMPT1, succeeded=True)
    assert b.load(ATTEMPT1, "n") == "from b"


def test_overwrite_replaces(mgr: CheckpointManager) -> None:
    mgr.save(ATTEMPT1, "n", b"x" * 1000)
    mgr.save(ATTEMPT1, "n", b"y")
    assert mgr.load(ATTEMPT1, "n") == b"y"
    assert len(mgr.list(ATTEMPT1)) == 1


def test_not_found_names_node_run_correlation_and_store(mgr: CheckpointManager) -> None:
    with pytest.raises(ckpt.CheckpointNotFound) as err:
        mgr.load(ATTEMPT1, "missing-node")
    msg = str(err.value)
    for part in ("missing-node", "r-1", "job-7", "etl", mgr.store.url):
        assert part in msg
    assert err.value.node == "missing-node"
    assert isinstance(err.value, LookupError)


def test_a_record_copied_to_another_node_is_refused(mgr: CheckpointManager) -> None:
    mgr.save(ATTEMPT1, "a", "value of a")
    data = mgr.store.get(mgr.key_for(ATTEMPT1, "a"))
    assert data is not None
    mgr.store.put(mgr.key_for(ATTEMPT1, "b"), bytes(data))
    with pytest.raises(ckpt.CheckpointCorrupted, match="holds node 'a'") as err:
        mgr.load(ATTEMPT1, "b")
    assert err.value.key == "etl/corr/job-7/b"
    other_ns = CheckpointManager(mgr.store, namespace="other")
    mgr.store.put(other_ns.key_for(ATTEMPT1, "a"), bytes(data))
    with pytest.raises(ckpt.CheckpointCorrupted, match="namespace 'etl'"):
        other_ns.load(ATTEMPT1, "a")


def test_corrupted_record_reports_the_key(mgr: CheckpointManager) -> None:
    mgr.save(ATTEMPT1, "n", list(range(100)))
    key = mgr.key_for(ATTEMPT1, "n")
    data = bytearray(mgr.store.get(key))  # type: ignore[arg-type]
    data[len(data) // 2] ^= 0xFF
    mgr.store.put(key, bytes(data))
    with pytest.raises(ckpt.CheckpointCorrupted) as err:
        mgr.load(ATTEMPT1, "n")
    assert err.value.key == key and key in str(err.value)
    mgr.store.put(key, bytes(data[:50]))
    with pytest.raises(ckpt.CheckpointCorrupted, match="truncated"):
        mgr.load(ATTEMPT1, "n")
    # lookup is a head: it does not read (or judge) the payload
    assert mgr.lookup(ATTEMPT1, "n") is not None


def test_constructor_validation_and_repr(tmp_path: object) -> None:
    with pytest.raises(ValueError, match="retention"):
        CheckpointManager(ckpt.MemoryStore(), retention="forever")  # type: ignore[arg-type]
    by_url = CheckpointManager(f"{tmp_path}/by-url", namespace="n")
    assert isinstance(by_url.store, ckpt.FsspecStore)
    by_url.save(ATTEMPT1, "x", 1)
    assert CheckpointManager(f"{tmp_path}/by-url", namespace="n").load(ATTEMPT1, "x") == 1
    memory = CheckpointManager("memory://test-manager-repr")
    assert (
        repr(memory)
        == "CheckpointManager(MemoryStore('memory://test-manager-repr'), namespace='default')"
    )
    with pytest.raises(TypeError):
        CheckpointManager(ckpt.MemoryStore(), fsync=False)  # options need a URL


def test_run_context_defaults() -> None:
    ctx = RunContext("only-run")
    assert ctx.correlation_id == "only-run" and ctx.attempt == 1
    with pytest.raises(TypeError, match="run_id must be str"):
        RunContext(42)  # type: ignore[arg-type]


def test_every_sync_method_has_an_async_twin() -> None:
    public = {
        name: fn
        for name, fn in inspect.getmembers(CheckpointManager, inspect.isfunction)
        if not name.startswith("_") and name != "key_for"
    }
    for name, fn in public.items():
        if name.startswith("a") and name[1:] in public:
            continue
        twin = public.get("a" + name)
        assert twin is not None, f"{name} has no async twin"
        assert inspect.iscoroutinefunction(twin)
        assert list(inspect.signature(twin).parameters) == list(inspect.signature(fn).parameters)


def test_async_twins_share_the_logic(mgr: CheckpointManager) -> None:
    async def scenario() -> None:
        info = await mgr.asave(ATTEMPT1, "n", {"a": 1})
        assert info.key == mgr.key_for(ATTEMPT1, "n")
        await mgr.asave(ATTEMPT1, "r", None, scope=Scope.RUN)
        assert await mgr.aload(ATTEMPT1, "n") == {"a": 1}
        assert await mgr.aload(ATTEMPT1, "r") is None
        hit = await mgr.alookup(ATTEMPT1, "r")
        assert hit is not None and hit.scope is Scope.RUN
        assert [i.node for i in await mgr.alist(ATTEMPT1)] == ["r", "n"]
        assert await mgr.afinish(ATTEMPT1, succeeded=False) == 1
        assert await mgr.aload(ATTEMPT2, "n") == {"a": 1}
        with pytest.raises(ckpt.CheckpointNotFound):
            await mgr.aload(ATTEMPT2, "r")
        await mgr.asave(ATTEMPT2, "r2", 1, scope=Scope.RUN)
        assert await mgr.acleanup_run("r-2") == 1
        assert await mgr.acleanup_correlation("job-7") == 1
        assert await mgr.alist(ATTEMPT2) == []
        await mgr.aclose()

    asyncio.run(scenario())


def test_sync_calls_inside_a_running_loop(mgr: CheckpointManager) -> None:
    # The decorator may run sync steps under a live loop: the sync path never starts one.
    async def scenario() -> object:
        mgr.save(ATTEMPT1, "n", 5)
        return mgr.load(ATTEMPT1, "n")

    assert asyncio.run(scenario()) == 5

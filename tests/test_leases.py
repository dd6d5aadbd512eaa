"""Single-writer mode: one exclusive lease per correlation, on memory, local files, S3 and Redis.

A second attempt of a correlation fails fast with a ``ConcurrentRunError`` that names the holder;
releasing lets the next attempt in; an expired lease is taken over and its old holder can neither
renew nor release the new one; renewal keeps a lease alive past its ttl; a SIGKILLed holder frees
a local lock at once and a Redis/S3 lease after its ttl; two processes racing for a correlation get
exactly one winner per round; and ``ckpt.run(exclusive=True)`` in a second process fails fast while
the first completes.

Child processes are fresh interpreters (``python -m tests.test_leases <role>``) that open the store
from a :class:`faults.crash.Backend` read from stdin (credentials never go through argv).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import select
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pytest

import ckpt_core as ckpt
from ckpt_core.lease import BlockingLeaseBackend, Held, LeaseBackend, LeaseHolder, lease_name
from ckpt_core.testing.twins import twin_mismatches
from faults.crash import Backend

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX locks and signals")

REPO = Path(__file__).resolve().parents[1]
NS = "lease-tests"
#: A ttl short enough to wait out in a test, per backend. S3 judges expiry on the server's clock
#: with one-second resolution (plus one second of slack), so its leases need a little longer.
SHORT_TTL = {"memory": 0.3, "redis": 0.5, "s3": 1.0}
#: Correlation ids that must each be one lease (an empty id means "the run id" in RunContext).
HOSTILE = ["a", "a*", "a:b", "a/b", "../x", " ", ".hidden", "ünï ☃", "x" * 400, "%2F", "a\\b"]


def ctx(run: str, correlation: str = "job-7") -> ckpt.RunContext:
    return ckpt.RunContext(run_id=run, correlation_id=correlation)


# -- stores --------------------------------------------------------------------------------------


def backend_for(kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    """How to open (in this process or a child) a fresh store of ``kind``."""
    if kind == "local":
        return Backend("local", str(tmp_path / "store"))
    if kind == "redis":
        url = request.getfixturevalue("redis_url")
        return Backend("redis", url, {"prefix": f"ckpt-lease-{uuid.uuid4().hex[:12]}"})
    if kind == "s3":
        server: Any = request.getfixturevalue("s3_server")
        url = f"s3://{server.bucket}/leases-{uuid.uuid4().hex[:12]}"
        return Backend("s3", url, server.storage_options())
    raise ValueError(kind)


@pytest.fixture
def opener(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[[str], Any]]:
    """``open(kind)`` -> ``(backend, store)``; a second ``open(kind)`` in one test returns another
    store on the *same* location (as a second process would see it). Everything is cleaned up."""
    made: dict[str, Backend] = {}
    stores: list[tuple[Backend | None, Any]] = []
    shared_memory: dict[str, ckpt.MemoryStore] = {}

    def open_(kind: str) -> tuple[Backend | None, Any]:
        if kind == "memory":
            store = shared_memory.setdefault(kind, ckpt.MemoryStore())
            return None, store
        if kind not in made:
            made[kind] = backend_for(kind, request, tmp_path)
        backend = made[kind]
        store = backend.open()
        stores.append((backend, store))
        return backend, store

    yield open_
    for backend, store in stores:
        with contextlib.suppress(Exception):
            if backend is not None and backend.name == "redis":
                store.delete_prefix("")  # records and leases alike (everything under the prefix)
            elif backend is not None and backend.name == "s3":
                store.fs.rm(store._files.root, recursive=True)
        with contextlib.suppress(Exception):
            store.close()


ALL = ["memory", "local", "s3", "redis"]
EXPIRING = ["memory", "s3", "redis"]
PROCESSES = ["local", "s3", "redis"]


# -- a second attempt fails fast, with a clear error ---------------------------------------------


@pytest.mark.parametrize("kind", ALL)
def test_second_attempt_fails_fast_naming_the_holder(kind: str, opener: Any) -> None:
    _, store = opener(kind)
    _, other = opener(kind)
    first = ckpt.CheckpointManager(store, NS)
    second = ckpt.CheckpointManager(other, NS)
    with first.acquire_lease(ctx("run-1"), ttl=30) as lease:
        assert lease.held and lease.holder.run_id == "run-1"
        started = time.monotonic()
        with pytest.raises(ckpt.ConcurrentRunError) as caught:
            second.acquire_lease(ctx("run-2"), ttl=30)
        assert time.monotonic() - started < 3.0, "a busy lease must be reported at once"
        message = str(caught.value)
        assert "'job-7'" in message and f"namespace {NS!r}" in message
        assert "run 'run-1'" in message
        assert f"pid {os.getpid()}" in message and repr(socket.gethostname()) in message
        assert "Wait for the other attempt to finish" in message
        if kind == "local":
            assert "frees it at once if the process dies" in message
        else:
            assert "lease expires at" in message and "UTC (in " in message
            seconds = float(message.split("UTC (in ")[1].split(" s)")[0])
            assert 25 <= seconds <= 31
        assert "run-2" not in message  # the error is about the holder, not the caller
        # The holder is unaffected by the refused attempt.
        lease.check()
        first.save(ctx("run-1"), "node", b"still mine")
    assert not lease.held


@pytest.mark.parametrize("kind", ALL)
def test_release_lets_the_next_attempt_in(kind: str, opener: Any) -> None:
    _, store = opener(kind)
    _, other = opener(kind)
    first = ckpt.CheckpointManager(store, NS)
    second = ckpt.CheckpointManager(other, NS)
    for round_ in range(3):
        lease = first.acquire_lease(ctx(f"a-{round_}"))
        with pytest.raises(ckpt.ConcurrentRunError):
            second.acquire_lease(ctx(f"b-{round_}"))
        lease.release()
        lease.release()  # idempotent
        with pytest.raises(ckpt.ConcurrentRunError, match="released"):
            lease.check()
        taken = second.acquire_lease(ctx(f"b-{round_}"))
        with pytest.raises(ckpt.ConcurrentRunError, match=f"run 'b-{round_}'"):
            first.acquire_lease(ctx(f"a-{round_}"))
        assert lease_objects(kind, store) == 1
        taken.release()
    assert lease_objects(kind, store) == 0  # a released lease leaves nothing behind


def lease_objects(kind: str, store: Any) -> int:
    """How many leases the backend holds, looking behind the store's API."""
    if kind == "memory":
        return len(store.lease_backend()._held)
    if kind == "local":
        root = Path(store._files.root) / ".leases"
        return sum(len(files) for _, _, files in os.walk(root))
    if kind == "s3":
        store.fs.invalidate_cache()
        found = store.fs.find(f"{store._files.root}/.leases", detail=True)
        return sum(1 for info in found.values() if info["type"] == "file")
    client = store._client
    return len(list(client.scan_iter(match=store._ns + b"\x00lease\x00*")))


@pytest.mark.parametrize("kind", ALL)
def test_correlations_never_block_each_other_and_hostile_ids_work(kind: str, opener: Any) -> None:
    _, store = opener(kind)
    _, other = opener(kind)
    mgr = ckpt.CheckpointManager(store, NS)
    held = [mgr.acquire_lease(ctx("r", correlation), renew=False) for correlation in HOSTILE]
    # Same ids in another namespace: independent too, including a hostile namespace.
    elsewhere = ckpt.CheckpointManager(other, "../ns*")
    held += [elsewhere.acquire_lease(ctx("r", c), renew=False) for c in HOSTILE]
    rival = ckpt.CheckpointManager(other, NS)
    for correlation in HOSTILE:
        with pytest.raises(ckpt.ConcurrentRunError) as caught:
            rival.acquire_lease(ctx("r2", correlation))
        assert repr(correlation) in str(caught.value)
    # Leases are not records: never listed, never deleted with a correlation's checkpoints.
    mgr.save(ctx("r", "a"), "node", b"x")
    assert [info.key for info in store.list("")] == [mgr.key_for(ctx("r", "a"), "node")]
    assert mgr.cleanup_correlation("a") == 1
    with pytest.raises(ckpt.ConcurrentRunError):
        rival.acquire_lease(ctx("r2", "a"))
    for lease in held:
        lease.release()
    assert rival.acquire_lease(ctx("r2", "a*"), renew=False).held


# -- expiry and renewal --------------------------------------------------------------------------


@pytest.mark.parametrize("kind", EXPIRING)
def test_an_expired_lease_is_taken_over_and_its_old_holder_cannot_touch_the_new_one(
    kind: str, opener: Any
) -> None:
    _, store = opener(kind)
    _, other = opener(kind)
    old_mgr = ckpt.CheckpointManager(store, NS)
    new_mgr = ckpt.CheckpointManager(other, NS)
    ttl = SHORT_TTL[kind]
    old = old_mgr.acquire_lease(ctx("stalled"), ttl=ttl, renew=False)  # a holder that froze
    with pytest.raises(ckpt.ConcurrentRunError):
        new_mgr.acquire_lease(ctx("next"), ttl=30)
    deadline = time.monotonic() + ttl + 10
    new = None
    while new is None:
        try:
            new = new_mgr.acquire_lease(ctx("next"), ttl=30)
        except ckpt.ConcurrentRunError:
            assert time.monotonic() < deadline, "the expired lease was never freed"
            time.sleep(0.1)
    waited = time.monotonic() - (deadline - ttl - 10)
    assert waited >= ttl * 0.9  # not before it expired

    # The old holder learns it lost the lease: renewing fails, and so does its next save.
    with pytest.raises(ckpt.ConcurrentRunError, match="was lost"):
        old.renew()
    with pytest.raises(ckpt.ConcurrentRunError, match="was lost"):
        old_mgr.save(ctx("stalled"), "node", b"late write")
    assert old_mgr.lookup(ctx("stalled"), "node") is None
    # Releasing the lost lease leaves the new holder's lease alone.
    old.release()
    with pytest.raises(ckpt.ConcurrentRunError, match="run 'next'"):
        old_mgr.acquire_lease(ctx("third"))
    new.release()


@pytest.mark.parametrize("kind", EXPIRING)
def test_renewal_keeps_a_lease_alive_past_its_ttl(kind: str, opener: Any) -> None:
    _, store = opener(kind)
    _, other = opener(kind)
    mgr = ckpt.CheckpointManager(store, NS)
    rival = ckpt.CheckpointManager(other, NS)
    ttl = 2.0 if kind == "s3" else 1.0  # renewed every ttl/3 (a loaded machine may lag a bit)
    lease = mgr.acquire_lease(ctx("alive"), ttl=ttl)
    until = time.monotonic() + 3 * ttl
    attempts = 0
    while time.monotonic() < until:
        with pytest.raises(ckpt.ConcurrentRunError):
            rival.acquire_lease(ctx("rival"), ttl=ttl)
        attempts += 1
        time.sleep(ttl / 4)
    assert attempts >= 10
    lease.check()
    assert lease.holder.renewals >= 3
    mgr.save(ctx("alive"), "node", b"written under a renewed lease")
    lease.release()
    rival.acquire_lease(ctx("rival"), ttl=ttl, renew=False).release()


def test_a_local_lock_does_not_expire_while_its_process_lives(opener: Any) -> None:
    _, store = opener("local")
    _, other = opener("local")
    lease = ckpt.CheckpointManager(store, NS).acquire_lease(ctx("slow"), ttl=0.1, renew=False)
    time.sleep(0.3)
    lease.check()  # no ttl: the lock lasts as long as the holder
    with pytest.raises(ckpt.ConcurrentRunError, match="frees it at once if the process dies"):
        ckpt.CheckpointManager(other, NS).acquire_lease(ctx("rival"))
    lease.release()


def test_a_lease_not_renewed_for_its_ttl_refuses_saves_even_if_nobody_took_it(
    opener: Any,
) -> None:
    _, store = opener("memory")
    mgr = ckpt.CheckpointManager(store, NS)
    lease = mgr.acquire_lease(ctx("frozen"), ttl=0.2, renew=False)
    mgr.save(ctx("frozen"), "before", b"ok")
    time.sleep(0.3)
    with pytest.raises(ckpt.ConcurrentRunError, match="last renewed"):
        mgr.save(ctx("frozen"), "after", b"too late")
    assert mgr.lookup(ctx("frozen"), "after") is None
    # Other correlations of the same manager are not affected.
    mgr.save(ctx("frozen", "other-job"), "after", b"fine")
    lease.release()


def _forked_child(mgr: ckpt.CheckpointManager, lease: ckpt.Lease, wait: float) -> None:
    time.sleep(wait)  # longer than the ttl: only the parent renews
    mgr.save(ctx("run-1"), "from-child", b"x")  # the manager that took the lease checks it
    lease.release()  # the child's view only: must not free the parent's lease
    os._exit(0)


@pytest.mark.parametrize("kind", ["memory", "local"])
def test_a_forked_child_neither_expires_nor_releases_its_parents_lease(
    kind: str, opener: Any
) -> None:
    import multiprocessing

    _, store = opener(kind)
    _, other = opener(kind)
    mgr = ckpt.CheckpointManager(store, NS)
    lease = mgr.acquire_lease(ctx("run-1"), ttl=0.3)
    child = multiprocessing.get_context("fork").Process(
        target=_forked_child, args=(mgr, lease, 0.6)
    )
    child.start()
    child.join(30)
    assert child.exitcode == 0
    assert lease.held
    lease.check()
    blocked_in = store if kind == "memory" else other
    with pytest.raises(ckpt.ConcurrentRunError, match="run 'run-1'"):
        ckpt.CheckpointManager(blocked_in, NS).acquire_lease(ctx("rival"))
    lease.release()


# -- exclusive runs ------------------------------------------------------------------------------


@ckpt.checkpointed
def double(x: int) -> int:
    return 2 * x


def test_exclusive_run_in_one_process_blocks_a_nested_second_attempt(tmp_path: Path) -> None:
    store = str(tmp_path / "store")
    with ckpt.run("nightly", store=store, exclusive=True) as active:
        assert active.lease is not None and active.lease.held
        assert double(21) == 42
        with (
            pytest.raises(ckpt.ConcurrentRunError, match="'nightly'"),
            ckpt.run("nightly", store=store, exclusive=True),
        ):
            pytest.fail("entered a second exclusive attempt")  # pragma: no cover
        with ckpt.run("another-night", store=store, exclusive=True):
            assert double(1) == 2
    assert active.lease is None
    with ckpt.run("nightly", store=store, exclusive=True) as again:
        assert double(21) == 42
        assert again.loaded == []  # the first run succeeded, so its checkpoints were cleaned


def test_exclusive_run_after_losing_its_lease_stops_writing_and_keeps_the_others_data() -> None:
    store = ckpt.MemoryStore()
    with (
        pytest.raises(ckpt.ConcurrentRunError, match="was lost"),
        ckpt.run("job", store=store, exclusive=True, lease_ttl=0.2) as active,
    ):
        assert double(1) == 2
        lease = active.lease
        assert lease is not None
        lease._stop_renewal()  # the process "freezes": no more renewals
        time.sleep(0.3)
        successor = ckpt.CheckpointManager(store, "default")
        taken = successor.acquire_lease(ctx("successor", "job"), renew=False)
        successor.save(ctx("successor", "job"), "theirs", b"data")
        double(2)  # the next save raises
    # The lost run neither finished (which would delete the correlation) nor released theirs.
    assert successor.load(ctx("successor", "job"), "theirs") == b"data"
    with pytest.raises(ckpt.ConcurrentRunError, match="run 'successor'"):
        ckpt.CheckpointManager(store, "default").acquire_lease(ctx("third", "job"))
    taken.release()


def test_async_exclusive_run_and_async_twins(opener: Any) -> None:
    _, store = opener("memory")

    async def main() -> None:
        mgr = ckpt.CheckpointManager(store, NS)
        lease = await mgr.aacquire_lease(ctx("a"), ttl=5)
        with pytest.raises(ckpt.ConcurrentRunError):
            await mgr.aacquire_lease(ctx("b"))
        await lease.arenew()
        await lease.arelease()
        async with ckpt.run("job-7", store=store, namespace=NS, exclusive=True) as active:
            assert active.lease is not None
            with pytest.raises(ckpt.ConcurrentRunError):
                await mgr.aacquire_lease(ctx("c"))

            @ckpt.checkpointed
            async def triple(x: int) -> int:
                return 3 * x

            assert await triple(2) == 6
        (await mgr.aacquire_lease(ctx("d"), renew=False)).release()

    asyncio.run(main())


@pytest.mark.parametrize("kind", ["redis", "s3", "local"])
def test_async_twins_on_server_backends(kind: str, opener: Any) -> None:
    _, store = opener(kind)
    _, other = opener(kind)

    async def main() -> None:
        mgr = ckpt.CheckpointManager(store, NS)
        lease = await mgr.aacquire_lease(ctx("a"), ttl=20)
        with pytest.raises(ckpt.ConcurrentRunError, match="run 'a'"):
            await ckpt.CheckpointManager(other, NS).aacquire_lease(ctx("b"))
        await lease.arenew()
        await lease.arelease()
        backend = store.lease_backend()
        name = lease_name(NS, "job-7")
        claim = await backend.aacquire(name, b'{"kind": "x"}', 20)
        assert not isinstance(claim, Held)
        assert await backend.arenew(claim, b'{"kind": "y"}', 20) is not None
        await backend.arelease(claim)
        assert await backend.arenew(claim, b'{"kind": "z"}', 20) is None  # released: not ours

    asyncio.run(main())


def test_stores_without_leases_refuse_exclusive_runs_clearly() -> None:
    store = ckpt.FsspecStore(f"memory://ckpt-lease-{uuid.uuid4().hex}")
    with pytest.raises(ckpt.StoreConfigError, match="does not support exclusive=True"):
        ckpt.CheckpointManager(store, NS).acquire_lease(ctx("r"))
    with (
        pytest.raises(ckpt.StoreConfigError, match="does not support exclusive=True"),
        ckpt.run("job", store=store, exclusive=True),
    ):
        pytest.fail("entered")  # pragma: no cover
    with pytest.raises(ValueError, match="positive number of seconds"):
        ckpt.CheckpointManager(ckpt.MemoryStore(), NS).acquire_lease(ctx("r"), ttl=0)


def test_every_lease_op_has_an_async_twin() -> None:
    from ckpt_core.stores.fsspec import _LocalLeases, _S3Leases
    from ckpt_core.stores.memory import _MemoryLeases
    from ckpt_core.stores.redis import _RedisLeases

    for cls in (LeaseBackend, BlockingLeaseBackend, _MemoryLeases, _LocalLeases, _S3Leases):
        assert twin_mismatches(cls, ("acquire", "renew", "release")) == [], cls
    assert twin_mismatches(_RedisLeases, ("acquire", "renew", "release")) == []
    assert twin_mismatches(ckpt.Lease, ("renew", "release")) == []
    assert twin_mismatches(ckpt.CheckpointManager, ("acquire_lease",)) == []


def test_holder_record_round_trips_and_foreign_bytes_are_no_holder() -> None:
    holder = LeaseHolder("ns", "c/../*", "r", "host", 7, "t" * 32, 1.5, 60.0, 2)
    assert LeaseHolder.decode(holder.encode()) == holder
    for junk in (None, b"", b"{", b"[]", b'{"kind": "other"}', b'{"kind": "ckpt-lease"}'):
        assert LeaseHolder.decode(junk) is None


# -- processes -----------------------------------------------------------------------------------


def _child(role: str, backend: Backend, **config: Any) -> subprocess.Popen[str]:
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.test_leases", role],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    assert process.stdin is not None
    process.stdin.write(json.dumps({"backend": asdict(backend), **config}) + "\n")
    process.stdin.flush()
    return process


def _read_line(process: subprocess.Popen[str], timeout: float = 60.0) -> str:
    assert process.stdout is not None
    ready, _, _ = select.select([process.stdout], [], [], timeout)
    line = process.stdout.readline() if ready else ""
    if not line:
        process.kill()
        _, err = process.communicate(timeout=30)
        pytest.fail(f"child said nothing (exit {process.returncode}):\n{err[-3000:]}")
    return line.strip()


def _send(process: subprocess.Popen[str], line: str) -> None:
    assert process.stdin is not None
    process.stdin.write(line + "\n")
    process.stdin.flush()


@pytest.mark.parametrize("kind", PROCESSES)
def test_a_sigkilled_holder_frees_its_lease(kind: str, opener: Any) -> None:
    backend, store = opener(kind)
    ttl = 3.0  # renewed every second while the holder lives
    holder = _child("hold", backend, correlation="job-7", ttl=ttl)
    try:
        pid = int(_read_line(holder).removeprefix("held "))
        mgr = ckpt.CheckpointManager(store, NS)
        with pytest.raises(ckpt.ConcurrentRunError, match=f"pid {pid} "):
            mgr.acquire_lease(ctx("next"))
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait(30)
    finally:
        holder.kill()
        holder.communicate(timeout=30)
    killed = time.monotonic()
    if kind == "local":
        mgr.acquire_lease(ctx("next")).release()  # the kernel freed the lock with the process
        return
    with pytest.raises(ckpt.ConcurrentRunError, match=f"pid {pid} "):
        mgr.acquire_lease(ctx("next"))  # a dead holder's lease lives out its ttl ...
    while True:  # ... and no longer
        try:
            lease = mgr.acquire_lease(ctx("next"))
            break
        except ckpt.ConcurrentRunError:
            assert time.monotonic() - killed < ttl + 10, "the dead holder's lease never expired"
            time.sleep(0.1)
    lease.release()


@pytest.mark.parametrize("kind", PROCESSES)
def test_two_processes_racing_for_a_correlation_get_exactly_one_winner_per_round(
    kind: str, opener: Any
) -> None:
    backend, _ = opener(kind)
    rounds = 15
    racers = [_child("race", backend, index=i, rounds=rounds) for i in range(2)]
    try:
        for racer in racers:
            assert _read_line(racer) == "ready"
        for round_ in range(rounds):
            for racer in racers:
                _send(racer, f"go {round_}")
            outcomes = [_read_line(racer) for racer in racers]
            assert sorted(o.split()[0] for o in outcomes) == ["lost", "won"], outcomes
            for racer in racers:
                _send(racer, "release")
            for racer in racers:
                assert _read_line(racer) == "released"
        for racer in racers:
            _send(racer, "done")
            racer.wait(60)
            assert racer.returncode == 0, racer.communicate()[1][-3000:]
    finally:
        for racer in racers:
            racer.kill()
            racer.communicate(timeout=30)


@pytest.mark.parametrize("kind", PROCESSES)
def test_exclusive_run_in_a_second_process_fails_fast_and_the_first_completes(
    kind: str, opener: Any
) -> None:
    backend, store = opener(kind)
    first = _child("run", backend, correlation="nightly", wait=True)
    try:
        assert _read_line(first) == "inside"
        second = _child("run", backend, correlation="nightly", wait=False)
        outcome = json.loads(_read_line(second))
        second.wait(60)
        assert outcome["error"] == "ConcurrentRunError", outcome
        assert outcome["seconds"] < 3.0, outcome  # fast: no waiting for the holder
        assert f"pid {first.pid} " in outcome["message"]
        assert "'nightly'" in outcome["message"]
        assert outcome["computed"] == []  # it never ran a step
        _send(first, "finish")
        result = json.loads(_read_line(first))
        first.wait(60)
        assert result == {"error": None, "computed": 2, "loaded": 0}
        assert first.returncode == 0
    finally:
        first.kill()
        first.communicate(timeout=30)
    # The first run succeeded: its checkpoints were cleaned up and the lease released.
    assert store.list("") == []
    ckpt.CheckpointManager(store, "default").acquire_lease(ctx("after", "nightly")).release()


# -- the child processes -------------------------------------------------------------------------


def _hold(config: dict[str, Any], mgr: ckpt.CheckpointManager) -> None:
    mgr.acquire_lease(ctx("holder", config["correlation"]), ttl=config["ttl"])
    print(f"held {os.getpid()}", flush=True)
    time.sleep(600)


def _race(config: dict[str, Any], mgr: ckpt.CheckpointManager) -> None:
    print("ready", flush=True)
    for line in sys.stdin:
        command = line.split()
        if command[0] == "done":
            return
        if command[0] == "go":
            try:
                # One correlation for every round: each round races a freshly released lease.
                lease: ckpt.Lease | None = mgr.acquire_lease(
                    ctx(f"racer-{config['index']}-{command[1]}", "race"), ttl=30, renew=False
                )
                print("won", flush=True)
            except ckpt.ConcurrentRunError:
                lease = None
                print("lost", flush=True)
        elif command[0] == "release":
            if lease is not None:
                lease.release()
            print("released", flush=True)


def _exclusive_run(config: dict[str, Any], store: Any) -> None:
    computed: list[str] = []
    started = time.monotonic()
    try:
        with ckpt.run(config["correlation"], store=store, exclusive=True) as active:
            if config["wait"]:
                print("inside", flush=True)
                double(1)
                sys.stdin.readline()  # "finish"
            double(2)
            computed = active.computed
            loaded = active.loaded
    except ckpt.ConcurrentRunError as exc:
        out = {"error": type(exc).__name__, "message": str(exc), "computed": computed}
        out["seconds"] = time.monotonic() - started
        print(json.dumps(out), flush=True)
        return
    print(json.dumps({"error": None, "computed": len(computed), "loaded": len(loaded)}), flush=True)


def _child_main(role: str) -> None:
    config = json.loads(sys.stdin.readline())
    store = Backend(**config["backend"]).open()
    if role == "run":
        _exclusive_run(config, store)
        return
    mgr = ckpt.CheckpointManager(store, NS)
    {"hold": _hold, "race": _race}[role](config, mgr)


if __name__ == "__main__":
    _child_main(sys.argv[1])

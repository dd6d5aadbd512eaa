"""``ckpt.run()``: where the active run is visible, what finish does on exit, nesting, env."""

from __future__ import annotations

import asyncio
import contextvars
import doctest
import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

import ckpt_core as ckpt
from ckpt_core import context
from ckpt_core.envelope import read_header


@pytest.fixture(autouse=True)
def _no_ambient_run(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("CKPT_CORRELATION_ID", "CKPT_STORE", "CKPT_NAMESPACE", "CKPT_SIGNING_KEY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(context, "_implicit", None)


def test_no_run_outside() -> None:
    assert ckpt.current_run() is None


def test_run_sets_identity() -> None:
    with ckpt.run("job-1", store=ckpt.MemoryStore(), attempt=2, max_attempts=3) as active:
        assert ckpt.current_run() is active
        assert active.ctx.correlation_id == "job-1"
        assert active.ctx.attempt == 2 and active.ctx.max_attempts == 3
        assert active.ctx.run_id and active.ctx.run_id != "job-1"
    assert ckpt.current_run() is None


def test_run_without_correlation_is_its_own_correlation() -> None:
    with ckpt.run(store=ckpt.MemoryStore(), run_id="solo") as active:
        assert active.ctx.run_id == "solo" and active.ctx.correlation_id == "solo"


def test_visible_in_asyncio_tasks() -> None:
    async def probe() -> ckpt.ActiveRun | None:
        await asyncio.sleep(0)
        return ckpt.current_run()

    async def main() -> None:
        async with ckpt.run("async", store=ckpt.MemoryStore()) as active:
            seen = await asyncio.gather(*(asyncio.create_task(probe()) for _ in range(5)))
            assert all(s is active for s in seen)
        assert await asyncio.create_task(probe()) is None

    asyncio.run(main())


def test_visible_in_copied_context_threads_not_in_plain_ones() -> None:
    seen: dict[str, object] = {}

    def probe(name: str) -> None:
        seen[name] = ckpt.current_run()

    with ckpt.run("threads", store=ckpt.MemoryStore()) as active:
        ctx = contextvars.copy_context()
        copied = threading.Thread(target=ctx.run, args=(probe, "copied"))
        plain = threading.Thread(target=probe, args=("plain",))
        for t in (copied, plain):
            t.start()
            t.join()
        with ThreadPoolExecutor(1) as pool:
            pool.submit(probe, "pool").result()
            pool.submit(contextvars.copy_context().run, probe, "pool-copied").result()
    assert seen == {"copied": active, "plain": None, "pool": None, "pool-copied": active}


def _seed(active: ckpt.ActiveRun) -> None:
    mgr, ctx = active.manager, active.ctx
    mgr.save(ctx, "corr-node", 1)
    mgr.save(ctx, "run-node", 2, scope=ckpt.Scope.RUN)


def test_success_cleans_the_correlation_by_default() -> None:
    store = ckpt.MemoryStore()
    with ckpt.run("ok", store=store) as active:
        _seed(active)
        assert len(store.list("")) == 2
    assert store.list("") == []


def test_failure_keeps_the_correlation_only() -> None:
    store = ckpt.MemoryStore()
    with pytest.raises(ValueError, match="boom"), ckpt.run("bad", store=store) as active:
        _seed(active)
        raise ValueError("boom")
    [left] = store.list("")
    assert left.key == "default/corr/bad/corr-node"


def test_retention_keep_keeps_after_success() -> None:
    store = ckpt.MemoryStore()
    with ckpt.run("keep", store=store, retention="keep") as active:
        _seed(active)
    assert [i.key for i in store.list("")] == ["default/corr/keep/corr-node"]
    mgr = ckpt.CheckpointManager(store, retention="keep")
    with ckpt.run("keep", manager=mgr) as active:
        assert active.manager.load(active.ctx, "corr-node") == 1
    assert len(store.list("")) == 1


def test_async_with_finishes_too() -> None:
    store = ckpt.MemoryStore()

    async def main(fail: bool) -> None:
        async with ckpt.run("aw", store=store) as active:
            await active.manager.asave(active.ctx, "n", "v")
            await active.manager.asave(active.ctx, "r", "v", scope=ckpt.Scope.RUN)
            if fail:
                raise OSError("disk")

    with pytest.raises(OSError, match="disk"):
        asyncio.run(main(fail=True))
    assert [i.key for i in store.list("")] == ["default/corr/aw/n"]
    asyncio.run(main(fail=False))
    assert store.list("") == []


def test_nested_runs_restore_the_outer() -> None:
    with ckpt.run("outer", store=ckpt.MemoryStore()) as outer:
        with ckpt.run("inner", store=ckpt.MemoryStore()) as inner:
            assert ckpt.current_run() is inner
        assert ckpt.current_run() is outer
        with pytest.raises(KeyError), ckpt.run("inner-2", store=ckpt.MemoryStore()):
            raise KeyError
        assert ckpt.current_run() is outer
    assert ckpt.current_run() is None

    async def main() -> None:
        async with ckpt.run("a-outer", store=ckpt.MemoryStore()) as a_outer:
            async with ckpt.run("a-inner", store=ckpt.MemoryStore()):
                pass
            assert ckpt.current_run() is a_outer

    asyncio.run(main())


class CountingStore(ckpt.MemoryStore):
    closed = 0

    def close(self) -> None:
        self.closed += 1


def test_a_store_passed_in_is_not_closed() -> None:
    store = CountingStore()
    with ckpt.run("mine", store=store):
        pass
    assert store.closed == 0
    with ckpt.run("mine", manager=ckpt.CheckpointManager(store)):
        pass
    assert store.closed == 0


def test_manager_and_store_are_exclusive() -> None:
    with pytest.raises(TypeError, match="manager="):
        ckpt.run("x", manager=ckpt.CheckpointManager(ckpt.MemoryStore()), store="memory://")


def test_attempt_is_recorded_in_headers() -> None:
    store = ckpt.MemoryStore()
    with ckpt.run("att", store=store, attempt=3, retention="keep") as active:
        info = active.manager.save(active.ctx, "n", 1)
    data = store.get(info.key)
    assert data is not None
    header = read_header(data, info.key)
    assert header["attempt"] == 3 and header["corr"] == "att" and header["run"] == active.ctx.run_id


class BrokenDeletes(ckpt.MemoryStore):
    def delete_prefix(self, prefix: str) -> int:
        raise ckpt.StoreUnavailable(f"deleting {prefix!r} on memory:// failed: down")


def test_finish_errors_never_hide_the_body_error(caplog: pytest.LogCaptureFixture) -> None:
    with (
        caplog.at_level(logging.WARNING, logger="ckpt"),
        pytest.raises(ZeroDivisionError),
        ckpt.run("broken", store=BrokenDeletes(), run_id="r-9"),
    ):
        1 / 0  # noqa: B018
    assert "could not finish run r-9" in caplog.text
    # ...but a clean body surfaces the finish error.
    with pytest.raises(ckpt.StoreUnavailable), ckpt.run("broken", store=BrokenDeletes()):
        pass


def test_env_defaults(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("CKPT_CORRELATION_ID", "from-env")
    monkeypatch.setenv("CKPT_STORE", str(tmp_path / "env-store"))
    monkeypatch.setenv("CKPT_NAMESPACE", "env-ns")
    with ckpt.run(retention="keep") as active:
        assert active.ctx.correlation_id == "from-env"
        assert active.manager.namespace == "env-ns"
        active.manager.save(active.ctx, "n", 1)
    assert (tmp_path / "env-store" / "env-ns" / "corr" / "from-env" / "n").is_file()


def test_implicit_run_from_env_follows_the_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CKPT_CORRELATION_ID", "implicit-1")
    monkeypatch.setenv("CKPT_STORE", "memory://implicit-a")
    first = ckpt.current_run()
    assert first is not None and first.ctx.correlation_id == "implicit-1"
    assert ckpt.current_run() is first  # one per process while the env is unchanged
    assert first.manager.store is ckpt.open_store("memory://implicit-a")
    monkeypatch.setenv("CKPT_STORE", "memory://implicit-b")
    second = ckpt.current_run()
    assert second is not None and second.manager.store is ckpt.open_store("memory://implicit-b")
    monkeypatch.setenv("CKPT_NAMESPACE", "other")
    third = ckpt.current_run()
    assert third is not None and third.manager.namespace == "other"
    with ckpt.run("explicit", store=ckpt.MemoryStore()) as explicit:
        assert ckpt.current_run() is explicit  # an explicit run wins over the env


def test_run_docstring_example() -> None:
    finder = doctest.DocTestFinder()
    runner = doctest.DocTestRunner()
    for test in finder.find(context.run, "run", globs={}):
        runner.run(test)
    assert runner.failures == 0 and runner.tries > 0

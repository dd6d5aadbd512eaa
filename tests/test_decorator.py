"""``@checkpointed``: a retried run loads what the failed one computed (counted calls), mapped
calls get their own checkpoints, async functions, nested runs, and calls outside any run."""

from __future__ import annotations

import asyncio
import collections
import os
import subprocess
import sys
import textwrap
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import ckpt_core as ckpt
from ckpt_core import context, decorator
from ckpt_core.envelope import read_header


@pytest.fixture(autouse=True)
def _no_ambient_run(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("CKPT_CORRELATION_ID", "CKPT_STORE", "CKPT_NAMESPACE", "CKPT_SIGNING_KEY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(context, "_implicit", None)


@pytest.fixture(params=["memory", "local"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> ckpt.Store:
    if request.param == "memory":
        return ckpt.MemoryStore()
    return ckpt.FsspecStore(str(tmp_path / "store"))


calls: collections.Counter[str] = collections.Counter()
fail_in_load = {"on": False}


@pytest.fixture(autouse=True)
def _reset_counters() -> Iterator[None]:
    calls.clear()
    fail_in_load["on"] = False
    yield


@ckpt.checkpointed
def extract() -> list[int]:
    calls["extract"] += 1
    return [1, 2, 3]


@ckpt.checkpointed
def transform(rows: list[int], factor: int = 10) -> list[int]:
    calls["transform"] += 1
    return [r * factor for r in rows]


@ckpt.checkpointed
def load_rows(rows: list[int]) -> int:
    """Load the rows somewhere."""
    calls["load"] += 1
    if fail_in_load["on"]:
        raise ConnectionError("warehouse is down")
    return sum(rows)


def pipeline() -> int:
    return load_rows(transform(extract()))


def test_retry_after_an_exception_resumes(store: ckpt.Store) -> None:
    fail_in_load["on"] = True
    with pytest.raises(ConnectionError), ckpt.run("nightly-1", store=store):
        pipeline()
    assert calls == {"extract": 1, "transform": 1, "load": 1}

    fail_in_load["on"] = False
    with ckpt.run("nightly-1", store=store, attempt=2) as active:
        assert pipeline() == 60
    assert calls == {"extract": 1, "transform": 1, "load": 2}
    assert [n.split(":")[0] for n in active.loaded] == [
        f"{__name__}.extract",
        f"{__name__}.transform",
    ]
    assert [n.split(":")[0] for n in active.computed] == [f"{__name__}.load_rows"]

    # Success cleaned the correlation: the next run of the same id recomputes everything.
    assert store.list("") == []
    with ckpt.run("nightly-1", store=store):
        pipeline()
    assert calls == {"extract": 2, "transform": 2, "load": 3}


def test_a_different_correlation_does_not_resume(store: ckpt.Store) -> None:
    fail_in_load["on"] = True
    with pytest.raises(ConnectionError), ckpt.run("job-a", store=store):
        pipeline()
    fail_in_load["on"] = False
    with ckpt.run("job-b", store=store):
        pipeline()
    assert calls == {"extract": 2, "transform": 2, "load": 2}


def test_mapped_calls_get_their_own_checkpoints(store: ckpt.Store) -> None:
    @ckpt.checkpointed
    def square(x: int, offset: int = 0) -> int:
        calls[f"square({x})"] += 1
        return x * x + offset

    with pytest.raises(RuntimeError), ckpt.run("map", store=store):
        assert [square(i) for i in range(4)] == [0, 1, 4, 9]
        raise RuntimeError("crash after the map")
    with ckpt.run("map", store=store) as active:
        assert [square(i) for i in range(4)] == [0, 1, 4, 9]
        assert square(x=2) == 4  # same call spelled differently: loaded
        assert square(2, offset=1) == 5  # different arguments: computed
    assert all(calls[f"square({i})"] == 1 for i in (0, 1, 3))
    assert calls["square(2)"] == 2
    assert len(active.loaded) == 5 and len(active.computed) == 1


def test_async_functions(store: ckpt.Store) -> None:
    @ckpt.checkpointed
    async def fetch(day: int) -> dict[str, int]:
        calls[f"fetch({day})"] += 1
        await asyncio.sleep(0)
        if calls["explode"]:
            raise TimeoutError
        return {"day": day}

    async def attempt(explode: bool) -> list[dict[str, int]]:
        async with ckpt.run("async-job", store=store):
            results = await asyncio.gather(*(fetch(d) for d in range(3)))
            if explode:
                calls["explode"] += 1
                await fetch(99)
            return list(results)

    with pytest.raises(TimeoutError):
        asyncio.run(attempt(explode=True))
    calls["explode"] = 0
    assert asyncio.run(attempt(explode=False)) == [{"day": 0}, {"day": 1}, {"day": 2}]
    assert [calls[f"fetch({d})"] for d in range(3)] == [1, 1, 1]
    assert calls["fetch(99)"] == 1


def test_nested_runs_use_the_innermost_and_restore_the_outer() -> None:
    outer_store, inner_store = ckpt.MemoryStore(), ckpt.MemoryStore()
    with ckpt.run("outer", store=outer_store) as outer:
        extract()
        with ckpt.run("inner", store=inner_store) as inner:
            assert ckpt.current_run() is inner
            extract()
            transform([1])
        assert ckpt.current_run() is outer
        transform([1])
        assert len(outer_store.list("")) == 2
        assert len(inner_store.list("")) == 0  # inner succeeded and was cleaned
    assert calls == {"extract": 2, "transform": 2}
    assert ckpt.current_run() is None


def test_outside_a_run_it_just_runs_and_warns_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(decorator, "_warned", False)
    with pytest.warns(ckpt.CheckpointWarning, match="outside any ckpt run") as record:
        assert transform([1, 2]) == [10, 20]
    assert len(record) == 1 and "transform()" in str(record[0].message)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert transform([1, 2]) == [10, 20]  # no second warning
        assert extract() == [1, 2, 3]
        assert asyncio.run(_async_double(4)) == 8
    assert calls == {"transform": 2, "extract": 1}


@ckpt.checkpointed
async def _async_double(x: int) -> int:
    return 2 * x


def test_key_str_and_callable(store: ckpt.Store) -> None:
    @ckpt.checkpointed(key="v1")
    def fixed(x: int) -> int:
        calls["fixed"] += 1
        return x

    class Conn:
        pass

    @ckpt.checkpointed(key=lambda conn, day: f"day={day}")
    def by_day(conn: Conn, day: int) -> int:
        calls["by_day"] += 1
        return day

    mgr = ckpt.CheckpointManager(store)
    with ckpt.run("keys", manager=mgr, retention="keep") as active:
        assert fixed(1) == 1
        assert fixed(2) == 1  # same key: the checkpoint wins, by the caller's choice
        assert by_day(Conn(), 5) == 5  # an unhashable argument is fine with key=
        assert by_day(Conn(), day=5) == 5
        assert by_day(Conn(), 6) == 6
    assert calls == {"fixed": 1, "by_day": 2}
    nodes = sorted(i.node for i in mgr.list(active.ctx))
    prefix = f"{__name__}.test_key_str_and_callable.<locals>"
    assert nodes == [f"{prefix}.by_day:day=5", f"{prefix}.by_day:day=6", f"{prefix}.fixed:v1"]


def test_key_callable_must_return_str() -> None:
    @ckpt.checkpointed(key=lambda x: x)
    def step(x: int) -> int:
        return x

    with ckpt.run("k", store=ckpt.MemoryStore()), pytest.raises(ckpt.InvalidKey, match="int 3"):
        step(3)


def test_unfingerprintable_argument_suggests_key() -> None:
    @ckpt.checkpointed
    def query(conn: object, sql: str) -> int:
        return 1

    with ckpt.run("k", store=ckpt.MemoryStore()), pytest.raises(ckpt.InvalidKey) as err:
        query(object(), "select 1")
    assert "'conn'" in str(err.value) and "key=" in str(err.value)


def test_node_scope_and_codec(store: ckpt.Store) -> None:
    @ckpt.checkpointed(node="custom-name", scope=ckpt.Scope.RUN, codec="pickle")
    def step(x: int) -> list[int]:
        calls["step"] += 1
        return [x]

    mgr = ckpt.CheckpointManager(store)
    with pytest.raises(KeyError), ckpt.run("scoped", manager=mgr) as active:
        assert step(1) == [1]
        [info] = mgr.list(active.ctx)
        assert info.scope is ckpt.Scope.RUN and info.node.startswith("custom-name:")
        data = store.get(info.key)
        assert data is not None and read_header(data, info.key)["codec"] == "pickle"
        assert step(1) == [1]  # loaded within the attempt
        raise KeyError("fail")
    assert store.list("") == []  # RUN scope is gone even after a failure
    with ckpt.run("scoped", manager=mgr):
        step(1)
    assert calls["step"] == 2  # so the retry recomputes


def test_corrupted_checkpoint_is_reported_not_recomputed(store: ckpt.Store) -> None:
    mgr = ckpt.CheckpointManager(store)
    with pytest.raises(RuntimeError), ckpt.run("corrupt", manager=mgr) as active:
        extract()
        raise RuntimeError
    [info] = mgr.list(active.ctx)
    data = bytearray(store.get(info.key))  # type: ignore[arg-type]
    data[-1] ^= 1
    store.put(info.key, bytes(data))
    with pytest.raises(ckpt.CheckpointCorrupted) as err, ckpt.run("corrupt", manager=mgr):
        extract()
    assert err.value.key == info.key
    assert calls["extract"] == 1


def test_generators_are_refused() -> None:
    with pytest.raises(TypeError, match="generator"):

        @ckpt.checkpointed
        def gen() -> Iterator[int]:
            yield 1

    with pytest.raises(TypeError, match="generator"):

        @ckpt.checkpointed(node="x")
        async def agen() -> Any:
            yield 1


def test_wrapper_keeps_metadata() -> None:
    assert load_rows.__name__ == "load_rows"
    assert load_rows.__doc__ == "Load the rows somewhere."
    assert load_rows.__wrapped__ is not None  # type: ignore[attr-defined]
    assert load_rows.__ckpt_node__.name == f"{__name__}.load_rows"  # type: ignore[attr-defined]
    assert asyncio.iscoroutinefunction(_async_double)


def test_sync_step_called_from_async_code(store: ckpt.Store) -> None:
    async def main() -> int:
        async with ckpt.run("mixed", store=store, retention="keep"):
            return load_rows(transform(extract()))

    assert asyncio.run(main()) == 60
    assert asyncio.run(main()) == 60
    assert calls == {"extract": 1, "transform": 1, "load": 1}


SCRIPT = textwrap.dedent(
    """
    import os, warnings
    warnings.simplefilter("error")   # an implicit run must not warn
    import ckpt_core as ckpt

    @ckpt.checkpointed
    def step(x):
        with open(os.environ["COUNTER"], "a") as f:
            f.write("x")
        return x * 2

    print(step(21))
    """
)


def test_env_correlation_id_gives_an_implicit_run(tmp_path: Path) -> None:
    counter = tmp_path / "counter"

    def attempt(correlation: str) -> str:
        env = {
            **os.environ,
            "CKPT_CORRELATION_ID": correlation,
            "CKPT_STORE": str(tmp_path / "store"),
            "COUNTER": str(counter),
        }
        out = subprocess.run(
            [sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, check=True
        )
        return out.stdout.strip()

    assert attempt("job-1") == "42"
    assert attempt("job-1") == "42"
    assert counter.read_text() == "x"  # the second process loaded the checkpoint
    assert attempt("job-2") == "42"
    assert counter.read_text() == "xx"

"""The store conformance suite on every backend, plus self-tests of the kit itself.

``TestStoreConformance`` runs :class:`ckpt_core.testing.StoreConformance` over the parametrised
``store`` fixture of ``conftest.py`` (memory, local, fsspec-memory, s3, redis). The rest checks the
kit: that it passes on a transparent :class:`FaultyStore`, that it *fails* on stores with known
bugs (a suite that cannot fail proves nothing), that FaultyStore does what it says, and the
local-filesystem guarantees only a real directory can show (hidden temp files, a killed writer).
"""

from __future__ import annotations

import asyncio
import errno
import importlib
import inspect
import os
import pkgutil
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

import ckpt_core.stores
from ckpt_core import FsspecStore, MemoryStore, Store, StoreUnavailable
from ckpt_core.keys import record_key
from ckpt_core.serde.base import Buffer
from ckpt_core.stores.base import Data, ObjectInfo, validate_prefix
from ckpt_core.testing import ChunkedPayload, FaultyStore, StoreConformance, Twins
from ckpt_core.testing.store_suite import TRICKY_IDS
from ckpt_core.testing.twins import twin_mismatches

from .conftest import STORE_KINDS


class TestStoreConformance(StoreConformance):
    """Every backend of ``conftest.STORE_KINDS`` through the whole suite."""

    @pytest.fixture
    def ttl_store(self, request: pytest.FixtureRequest, store: Store) -> Store:
        # Only RedisStore lists "ttl" among the built-in stores; its factory cleans up.
        assert type(store).__name__ == "RedisStore", f"no ttl_store recipe for {store!r}"
        factory = request.getfixturevalue("redis_store_factory")
        return factory(ttl=self.ttl_seconds)  # type: ignore[no-any-return]

    def streaming_size(self, store: Store) -> int:
        # FsspecStore sends records under its multipart threshold as one PUT (joined, one copy,
        # which the invariant allows) and streams the larger ones; test a streamed one.
        threshold = getattr(getattr(store, "_files", None), "multipart_threshold", 0)
        return max(super().streaming_size(store), threshold + (1 << 20))

    def credentials(self, store: Store) -> list[str]:
        # The secret halves only: an S3 access key *id* is an identifier that every signed
        # request carries in clear text (botocore's own DEBUG log prints it).
        options = getattr(getattr(store, "fs", None), "storage_options", None) or {}
        found = [options.get(name) for name in ("secret", "password", "token")]
        return [str(v) for v in found if v]


def test_the_suite_covers_every_backend() -> None:
    assert {"memory", "local", "fsspec-memory", "s3", "redis"} <= set(STORE_KINDS)


# -- twins ----------------------------------------------------------------------------------------


def _concrete_store_classes() -> list[type[Store]]:
    found: list[type[Store]] = []
    for module_info in pkgutil.iter_modules(ckpt_core.stores.__path__):
        module = importlib.import_module(f"ckpt_core.stores.{module_info.name}")
        for _, cls in inspect.getmembers(module, inspect.isclass):
            if (
                cls.__module__ == module.__name__
                and issubclass(cls, Store)
                and not inspect.isabstract(cls)
            ):
                found.append(cls)
    return found


STORE_OPS = tuple(
    name
    for name, attr in vars(Store).items()
    if not name.startswith("_") and callable(attr) and "a" + name in vars(Store)
)


def test_store_interface_ops_are_the_documented_primitives() -> None:
    assert set(STORE_OPS) == {
        "put",
        "get",
        "get_first",
        "read_first",
        "head",
        "delete",
        "delete_prefix",
        "list",
        "close",
    }


@pytest.mark.parametrize("cls", [*_concrete_store_classes(), FaultyStore], ids=lambda c: c.__name__)
def test_every_store_op_has_an_async_twin_with_the_same_signature(cls: type[Store]) -> None:
    assert twin_mismatches(cls, STORE_OPS) == []


def test_concrete_store_discovery_finds_the_builtin_stores() -> None:
    names = {cls.__name__ for cls in _concrete_store_classes()}
    assert {"MemoryStore", "FsspecStore"} <= names


def test_twin_mismatches_reports_drift() -> None:
    class Drifted:
        def put(self, key: str, data: bytes) -> None: ...

        async def aput(self, key: str, data: bytes, extra: int = 0) -> None: ...

        def get(self, key: str) -> bytes: ...

        async def aget(self, key: str) -> bytes | None: ...

        async def aorphan(self) -> None: ...

        def head(self, key: str) -> None: ...

        def ahead(self, key: str) -> None: ...

    problems = twin_mismatches(Drifted, ["put", "get", "delete"])
    text = "\n".join(problems)
    assert "Drifted.put/aput: parameters differ" in text
    assert "Drifted.get/aget: return annotations differ" in text
    assert "Drifted lacks the sync op delete()" in text
    assert "Drifted lacks the async twin adelete()" in text
    assert "Drifted.aorphan() has no sync twin orphan()" in text
    assert len(problems) == 5  # ahead is not a coroutine function, so it is not a twin


# -- the kit on a transparent wrapper -------------------------------------------------------------


class TestKitOnTransparentFaultyStore(StoreConformance):
    """A FaultyStore with no fault armed is just its inner store: it must conform too."""

    @pytest.fixture
    def store(self) -> Iterator[Store]:
        s = FaultyStore(MemoryStore())
        yield s
        s.close()


# -- the kit must fail on broken stores -----------------------------------------------------------


def _run_suite_test(name: str, store: Store, mode: str, **params: Any) -> None:
    """Call one StoreConformance test method directly, filling its fixtures by hand."""
    suite = StoreConformance()
    method = getattr(suite, name)
    twins = Twins(mode)  # type: ignore[arg-type]
    available = {"store": store, "twins": twins, "ops": twins(store), "mode": mode, **params}
    wanted = inspect.signature(method).parameters
    try:
        method(**{k: v for k, v in available.items() if k in wanted})
    finally:
        twins.close()


class _LeakyPrefixStore(MemoryStore):
    """Deletes by raw string prefix, the classic ``KEYS a*`` bug: ``a:b`` goes with ``a``."""

    def delete_prefix(self, prefix: str) -> int:
        validate_prefix(prefix)
        with self._lock:
            doomed = [k for k in self._records if k.startswith(prefix.rstrip("/"))]
            for key in doomed:
                del self._records[key]
        return len(doomed)


class _InPlaceWriterStore(MemoryStore):
    """Writes into the live record chunk by chunk, like a non-atomic file write."""

    def put(self, key: str, data: Data) -> None:
        with self._lock:
            self._records[key] = (b"", 0.0)
        for chunk in data if not isinstance(data, (bytes, bytearray)) else [data]:
            with self._lock:
                self._records[key] = (self._records[key][0] + bytes(chunk), 0.0)


class _EmptyIsMissStore(MemoryStore):
    """Treats an empty record as absent (``if not data: return None``)."""

    def get(self, key: str) -> Buffer | None:
        data = super().get(key)
        return data or None

    def get_first(self, keys: Sequence[str]) -> tuple[str, Buffer] | None:
        for key in keys:
            data = self.get(key)
            if data:
                return key, data
        return None


class _DriftedAsyncStore(MemoryStore):
    """The async twin has drifted from the sync one: ``alist`` forgets the prefix."""

    async def alist(self, prefix: str = "") -> list[ObjectInfo]:
        return self.list("")


class _GlobbingStore(MemoryStore):
    """Treats the prefix as a glob pattern, as an unescaped Redis ``SCAN MATCH`` would."""

    def list(self, prefix: str = "") -> list[ObjectInfo]:
        import fnmatch

        validate_prefix(prefix)
        with self._lock:
            return [
                ObjectInfo(k, len(v), t)
                for k, (v, t) in self._records.items()
                if fnmatch.fnmatchcase(k, prefix + "*")
            ]


class _UncheckedKeysStore(MemoryStore):
    """Accepts any key on reads."""

    def get(self, key: str) -> Buffer | None:
        with self._lock:
            entry = self._records.get(key)
        return None if entry is None else entry[0]


@pytest.mark.parametrize(
    ("broken", "test_name", "modes", "params"),
    [
        pytest.param(
            _LeakyPrefixStore,
            "test_invariant_deleting_prefix_a_never_touches_a_colon_b_or_a_star",
            ("sync", "async"),
            {},
            id="leaky-prefix",
        ),
        pytest.param(
            _InPlaceWriterStore,
            "test_invariant_reader_sees_whole_record_or_nothing",
            ("sync", "async"),
            {"where": "middle"},
            id="in-place-writer",
        ),
        pytest.param(
            _EmptyIsMissStore,
            "test_put_get_round_trips_exact_bytes",
            ("sync",),
            {"kind": "empty"},
            id="empty-is-miss-get",
        ),
        pytest.param(
            _EmptyIsMissStore,
            "test_get_first_finds_an_empty_record",
            ("sync",),
            {},
            id="empty-is-miss-get-first",
        ),
        pytest.param(
            _DriftedAsyncStore,
            "test_list_is_recursive_and_bounded_by_whole_components",
            ("async",),
            {},
            id="drifted-async-twin",
        ),
        pytest.param(
            _GlobbingStore,
            "test_glob_characters_in_a_prefix_match_only_themselves",
            ("sync",),
            {},
            id="globbing-list",
        ),
        pytest.param(
            _UncheckedKeysStore,
            "test_invalid_keys_are_refused_by_every_primitive",
            ("sync",),
            {"bad": "../escape"},
            id="unchecked-keys",
        ),
    ],
)
def test_the_kit_fails_on_a_broken_store(
    broken: type[Store], test_name: str, modes: Sequence[str], params: dict[str, Any]
) -> None:
    for mode in modes:
        with pytest.raises((AssertionError, pytest.fail.Exception)):
            _run_suite_test(test_name, broken(), mode, **params)
        # ...and the same test passes on the reference store, so the failure is the bug's.
        _run_suite_test(test_name, MemoryStore(), mode, **params)


def test_the_drifted_async_twin_passes_in_sync_mode() -> None:
    """The drift is invisible to a suite that tests one twin: why every test runs in both."""
    _run_suite_test(
        "test_list_is_recursive_and_bounded_by_whole_components", _DriftedAsyncStore(), "sync"
    )


# -- FaultyStore itself ---------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_faulty_store_counts_both_flavours_as_one_primitive(mode: str) -> None:
    faulty = FaultyStore(MemoryStore())
    twins = Twins(mode)  # type: ignore[arg-type]
    ops = twins(faulty)
    try:
        faulty.fail("get", call=2)
        ops.put("k", b"v")
        assert bytes(ops.get("k")) == b"v"  # call 1
        with pytest.raises(StoreUnavailable, match=r"injected fault: FaultyStore made get\(\)"):
            ops.get("k")  # call 2
        assert bytes(ops.get("k")) == b"v"  # call 3: the fault fired once
        assert faulty.count("get") == 3 and faulty.count("put") == 1
        assert faulty.ops() == ["put", "get", "get", "get"]
        assert {c.is_async for c in faulty.calls} == {mode == "async"}
    finally:
        twins.close()


def test_faulty_store_fail_times_and_custom_errors() -> None:
    faulty = FaultyStore(MemoryStore())
    faulty.fail("head", ConnectionResetError("reset by peer"), times=2)
    for _ in range(2):
        with pytest.raises(ConnectionResetError, match="reset by peer"):
            faulty.head("k")
    assert faulty.head("k") is None


def test_faulty_store_stop_mid_write_hands_over_exactly_the_first_bytes() -> None:
    seen: list[bytes] = []

    class Recording(MemoryStore):
        def put(self, key: str, data: Data) -> None:
            for chunk in data if not isinstance(data, bytes) else [data]:
                seen.append(bytes(chunk))
            super().put(key, data)

    faulty = FaultyStore(Recording())
    faulty.stop_mid_write(5, OSError(errno.EIO, "I/O error"))
    with pytest.raises(OSError, match="I/O error"):
        faulty.put("k", ChunkedPayload([b"abc", b"defgh"]))
    assert b"".join(seen) == b"abcde"
    assert faulty.get("k") is None


def test_faulty_store_truncate_reports_success_and_writes_less() -> None:
    inner = MemoryStore()
    faulty = FaultyStore(inner)
    faulty.truncate(keep=-3)
    faulty.put("k", ChunkedPayload([b"abc", b"defgh"]))
    assert inner.get("k") == b"abcde"
    faulty.truncate(keep=2)
    faulty.put("k", b"xyz")
    assert inner.get("k") == b"xy"
    faulty.put("k", b"whole")
    assert inner.get("k") == b"whole"


def test_faulty_store_refuses_unknown_primitives() -> None:
    faulty = FaultyStore(MemoryStore())
    with pytest.raises(ValueError, match="unknown primitive 'pput'"):
        faulty.fail("pput")
    with pytest.raises(ValueError, match="times must be at least 1"):
        faulty.fail("put", times=0)


def test_faulty_store_reports_the_inner_store() -> None:
    inner = MemoryStore("named")
    faulty = FaultyStore(inner)
    assert faulty.url == "memory://named" and faulty.capabilities == inner.capabilities
    assert repr(faulty) == "FaultyStore(MemoryStore('memory://named'))"


def test_importing_faulty_store_does_not_import_pytest() -> None:
    code = (
        "import sys; from ckpt_core.testing import FaultyStore; "
        "assert 'pytest' not in sys.modules, 'pytest imported'; "
        "import ckpt_core.testing as t; t.StoreConformance; assert 'pytest' in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# -- local filesystem: what only a real directory shows -------------------------------------------


@pytest.fixture
def local(tmp_path: Path) -> Iterator[FsspecStore]:
    store = FsspecStore(str(tmp_path / "root"))
    yield store
    store.close()


def test_local_names_starting_with_a_dot_are_never_listed(
    local: FsspecStore, tmp_path: Path
) -> None:
    local.put("ns/run/r/node", b"record")
    root = tmp_path / "root"
    (root / "ns" / "run" / "r" / ".node.0123456789ab.tmp").write_bytes(b"half a rec")
    (root / ".hidden").write_bytes(b"x")
    (root / "ns" / ".r.0123456789ab.deleting").mkdir()
    (root / "ns" / ".r.0123456789ab.deleting" / "node").write_bytes(b"being deleted")
    (root / "ns" / ".cache").mkdir()
    (root / "ns" / ".cache" / "visible-name").write_bytes(b"inside a hidden dir")
    assert [i.key for i in local.list("")] == ["ns/run/r/node"]
    assert [i.key for i in local.list("ns/run/r/")] == ["ns/run/r/node"]
    assert local.delete_prefix("ns/run/r/") == 1
    assert local.list("") == []


def test_local_records_never_escape_the_root(local: FsspecStore, tmp_path: Path) -> None:
    for ident in TRICKY_IDS:
        local.put(record_key(ident, "run", ident, ident), b"x")
    outside = [
        os.path.join(d, f)
        for d, _, files in os.walk(tmp_path)
        for f in files
        if not os.path.join(d, f).startswith(str(tmp_path / "root") + os.sep)
    ]
    assert outside == []
    assert len(local.list("")) == len(TRICKY_IDS)


def test_local_disk_full_mid_write_is_store_unavailable_naming_the_key(
    local: FsspecStore,
) -> None:
    local.put("ns/k", b"previous")
    faulty = FaultyStore(local)
    faulty.stop_mid_write(3, OSError(errno.ENOSPC, "No space left on device"))
    with pytest.raises(StoreUnavailable) as raised:
        faulty.put("ns/k", ChunkedPayload([b"new ", b"record"]))
    assert "'ns/k'" in str(raised.value) and "No space left" in str(raised.value)
    assert local.get("ns/k") == b"previous"
    assert [i.key for i in local.list("")] == ["ns/k"]


_CHILD = textwrap.dedent(
    """
    import sys, time
    from ckpt_core import FsspecStore

    class Stalling:
        size = 2 << 20
        def __iter__(self):
            yield b"n" * (1 << 20)
            print("half-written", flush=True)
            time.sleep(600)
            yield b"n" * (1 << 20)

    FsspecStore(sys.argv[1]).put("ns/k", Stalling())
    """
)


def test_local_writer_killed_mid_write_leaves_the_previous_record(
    local: FsspecStore, tmp_path: Path
) -> None:
    """DESIGN invariant, for a real crash: SIGKILL a process half-way through a write."""
    root = str(tmp_path / "root")
    local.put("ns/k", b"previous")
    child = subprocess.Popen(
        [sys.executable, "-c", _CHILD, root], stdout=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "half-written"
        child.send_signal(signal.SIGKILL)
    finally:
        child.wait(30)
    assert child.returncode == -signal.SIGKILL
    assert local.get("ns/k") == b"previous"
    assert [i.key for i in local.list("")] == ["ns/k"]
    temp = [n for n in os.listdir(os.path.join(root, "ns")) if n.endswith(".tmp")]
    assert len(temp) == 1, "the killed writer's temp file should be left for the sweeper"
    assert local.sweep_temp_files(older_than=0) == 1
    assert sorted(os.listdir(os.path.join(root, "ns"))) == ["k"]


def test_blocking_store_async_twins_leave_the_event_loop_free(local: FsspecStore) -> None:
    """BlockingStore's async twins run the blocking body in a worker thread, so other tasks on
    the loop run while a write is in progress."""

    async def main() -> list[str]:
        order: list[str] = []

        async def ticker() -> None:
            order.append("tick")

        tick = asyncio.ensure_future(ticker())
        await local.aput("ns/k", b"x")
        order.append("put done")
        await tick
        return order

    loop = asyncio.new_event_loop()
    try:
        assert loop.run_until_complete(main()) == ["tick", "put done"]
    finally:
        loop.close()
    assert local.get("ns/k") == b"x"


def test_the_documented_third_party_usage_runs(tmp_path: Path) -> None:
    """The example in ``ckpt_core.testing``'s docstring, run as written against a stand-in
    ``my_package.MyStore``: an author who copies it gets a working suite."""
    import ckpt_core.testing

    doc = ckpt_core.testing.__doc__ or ""
    example = textwrap.dedent(doc.split("::\n", 1)[1].split("\nEvery test runs twice", 1)[0])
    assert "class TestMyStore(MyStoreSuite, StoreConformance)" in example
    (tmp_path / "my_package.py").write_text(
        "from ckpt_core import MemoryStore\n\n"
        "class MyStore(MemoryStore):\n"
        "    def __init__(self, root):\n"
        "        super().__init__(str(root))\n"
    )
    (tmp_path / "test_my_store.py").write_text(example)
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-k", "round_trip"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    summary = result.stdout.strip().splitlines()[-1]
    assert " passed" in summary and "failed" not in summary, summary

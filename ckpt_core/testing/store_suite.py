"""``StoreConformance``: the behaviour every ckpt store must have, as a pytest base class.

Subclass it and provide a ``store`` fixture that yields a fresh, empty store (see the package
docstring of :mod:`ckpt_core.testing`). Every test runs twice, through the sync primitives and
through their async twins (the ``mode`` parameter). Tests of optional features are gated on
``store.capabilities`` and skip, with a reason, only when the store does not list the feature.
"""

from __future__ import annotations

import hashlib
import random
import threading
import time
import tracemalloc
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest

from .. import keys
from ..errors import CheckpointError, InvalidKey
from ..redact import is_secret_name
from ..stores.base import ObjectInfo, Store
from .faulty import FaultyStore
from .fixtures import TwinFixtures
from .twins import ChunkedPayload, GeneratedPayload, Twins

#: Ids that look alike once careless code turns them into paths or patterns. Encoded with
#: :func:`ckpt_core.keys.encode_component`, each must be its own key component, and deleting the
#: prefix of ``"a"`` must leave every other one in place.
TRICKY_IDS: tuple[str, ...] = (
    "a",
    "a:b",
    "a*",
    "a?",
    "a[b]",
    "a/b",
    "a/",
    "a b",
    "ab",
    "a.",
    "a%2F",
    "..",
    ".",
    "",
    "~",
    "a\\b",
    "a-ü-日本-🎉",
    "a" * 300,
    "a" * 299 + "b",
    "a" * 300 + "/../../etc",
)

#: Keys no store may accept: they could escape a root directory or hide behind temp-file names.
INVALID_KEYS: tuple[str, ...] = (
    "",
    ".",
    "..",
    "../escape",
    "a/../b",
    "a/./b",
    ".hidden",
    "a/.hidden",
    "a//b",
    "/a",
    "a/",
    "a\\b",
    "a\x00b",
)

#: Prefixes no store may accept for ``list`` / ``delete_prefix``.
INVALID_PREFIXES: tuple[str, ...] = ("a", "a/b", "/", "../", ".hidden/", "a//", "a/../")


def _blob(size: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(size)


_ROUND_TRIPS: dict[str, Callable[[], tuple[Any, bytes]]] = {
    "empty": lambda: (b"", b""),
    "one-byte": lambda: (b"\x00", b"\x00"),
    "all-byte-values": lambda: (bytes(range(256)) * 3, bytes(range(256)) * 3),
    "bytearray": lambda: (bytearray(b"mutable\x00bytes"), b"mutable\x00bytes"),
    "memoryview": lambda: (memoryview(_blob(1000, 1))[10:900], _blob(1000, 1)[10:900]),
    "payload": lambda: (
        ChunkedPayload([b"head", b"", _blob(70_000, 2), b"\xff" * 3, memoryview(_blob(5, 3))]),
        b"head" + _blob(70_000, 2) + b"\xff" * 3 + _blob(5, 3),
    ),
    "payload-of-empty-chunks": lambda: (ChunkedPayload([b"", b""]), b""),
}


def _keys(infos: list[ObjectInfo]) -> list[str]:
    return sorted(info.key for info in infos)


class StoreConformance(TwinFixtures):
    """The store contract (:mod:`ckpt_core.stores.base`), as tests.

    Required from the subclass: a ``store`` fixture yielding a fresh, empty :class:`Store`.
    Optional: a ``ttl_store`` fixture (stores listing ``"ttl"``) yielding a fresh store whose
    records expire after :attr:`ttl_seconds`; override :attr:`large_record_size` or
    :attr:`streaming_record_size` for slow backends; override :meth:`credentials` to name the
    secrets the store was built with, so the suite checks none of them leaks.

    In async mode the suite awaits ``store.aclose()`` on the test's event loop before your fixture
    tears the store down, so async clients close on the loop they were bound to. ``close`` must
    therefore be idempotent.
    """

    #: Size of the "large record" round trip (a little over 5 MiB, not a multiple of any chunk).
    large_record_size: int = (5 << 20) + 123
    #: Size of the record that stores listing ``"streaming"`` must write without a copy.
    streaming_record_size: int = 24 << 20
    #: The ``ttl_store`` fixture's record lifetime, and how long to wait for expiry at most.
    ttl_seconds: float = 1.0
    ttl_deadline: float = 30.0

    # -- fixtures ---------------------------------------------------------------------------------
    @pytest.fixture
    def ops(self, twins: Twins, store: Store) -> Any:
        """The store under test, in this test's flavour: ``ops.put(key, data)``."""
        return twins(store)

    @pytest.fixture
    def ttl_store(self, store: Store) -> Store:
        """Override in suites for stores listing ``"ttl"``: a fresh store whose records expire
        after :attr:`ttl_seconds`."""
        pytest.fail(
            f"{type(store).__name__} lists 'ttl' in its capabilities: give the suite a ttl_store "
            f"fixture yielding a fresh store whose records expire after {self.ttl_seconds} s"
        )

    def streaming_size(self, store: Store) -> int:
        """Size of the record the ``"streaming"`` test writes. Override when the store joins
        records below some threshold (e.g. one PUT under the multipart size) and streams above."""
        return self.streaming_record_size

    def credentials(self, store: Store) -> list[str]:
        """Secrets used to build ``store`` (passwords, keys); none may appear in its repr."""
        return []

    def require(self, store: Store, capability: str) -> None:
        """Skip, naming the capability, unless ``store`` lists it."""
        if capability not in store.capabilities:
            pytest.skip(
                f"{type(store).__name__} does not list {capability!r} in its capabilities "
                f"({sorted(store.capabilities)})"
            )

    # -- put / get --------------------------------------------------------------------------------
    @pytest.mark.parametrize("kind", sorted(_ROUND_TRIPS))
    def test_put_get_round_trips_exact_bytes(self, ops: Any, kind: str) -> None:
        data, expected = _ROUND_TRIPS[kind]()
        ops.put("ns/k", data)
        got = ops.get("ns/k")
        assert got is not None, f"get() of a {kind} record returned None: empty records are hits"
        assert bytes(got) == expected
        info = ops.head("ns/k")
        assert info is not None and info.key == "ns/k" and info.size == len(expected)

    @pytest.mark.parametrize("shape", ["bytes", "payload"])
    def test_large_record_round_trips(self, ops: Any, shape: str) -> None:
        blob = _blob(self.large_record_size, 7)
        data: Any = blob
        if shape == "payload":
            view = memoryview(blob)
            data = ChunkedPayload([view[i : i + (1 << 20)] for i in range(0, len(blob), 1 << 20)])
        ops.put("ns/large", data)
        got = ops.get("ns/large")
        assert got is not None
        assert len(got) == len(blob)
        assert hashlib.sha256(got).digest() == hashlib.sha256(blob).digest()
        info = ops.head("ns/large")
        assert info is not None and info.size == len(blob)

    def test_get_returns_bytes_the_caller_cannot_use_to_change_the_record(self, ops: Any) -> None:
        ops.put("ns/k", b"original")
        got = ops.get("ns/k")
        assert got is not None
        if isinstance(got, (bytearray, memoryview)) and not getattr(got, "readonly", False):
            got[0:1] = b"X"
        assert bytes(ops.get("ns/k")) == b"original"

    @pytest.mark.parametrize("sizes", [(100, 10), (10, 100), (5, 0), (0, 5)])
    def test_overwrite_replaces_the_whole_record(self, ops: Any, sizes: tuple[int, int]) -> None:
        first, second = _blob(sizes[0], 1), _blob(sizes[1], 2)
        ops.put("ns/k", first)
        ops.put("ns/k", second)
        assert bytes(ops.get("ns/k")) == second
        assert ops.head("ns/k").size == len(second)
        assert _keys(ops.list("")) == ["ns/k"]

    def test_overwrite_is_atomic_under_concurrent_readers(self, ops: Any, store: Store) -> None:
        """Readers in other threads see one whole version or another: never a mix, never
        nothing (a delete-then-write overwrite would show a miss)."""
        size, chunk = 256 << 10, 32 << 10
        versions = [bytes([v]) * size for v in range(1, 7)]
        allowed = set(versions)
        ops.put("ns/k", versions[0])
        stop = threading.Event()
        bad: list[str] = []
        reads = [0]

        def reader() -> None:
            while True:
                got = store.get("ns/k")
                reads[0] += 1
                if got is None:
                    bad.append("a miss while the record was being overwritten")
                elif bytes(got) not in allowed:
                    values = sorted(set(bytes(got)))[:8]
                    bad.append(f"{len(got)} bytes mixing versions {values}")
                if stop.is_set() or len(bad) > 5:
                    return

        threads = [threading.Thread(target=reader, daemon=True) for _ in range(2)]
        for t in threads:
            t.start()
        try:
            for n in range(12):
                version = versions[n % len(versions)]
                view = memoryview(version)
                chunks = [view[i : i + chunk] for i in range(0, size, chunk)]
                ops.put("ns/k", ChunkedPayload(chunks))
        finally:
            stop.set()
            for t in threads:
                t.join(60)
        assert not bad, f"readers saw torn records: {bad}"
        assert reads[0] > 0
        assert bytes(ops.get("ns/k")) == versions[11 % len(versions)]

    # -- missing records --------------------------------------------------------------------------
    def test_get_and_head_of_a_missing_record_return_none(self, ops: Any) -> None:
        assert ops.get("ns/missing") is None
        assert ops.head("ns/missing") is None
        ops.put("ns/dir/leaf", b"x")
        # A "directory" that holds records is not a record, and a record is not a directory.
        assert ops.get("ns/dir") is None
        assert ops.head("ns/dir") is None
        assert ops.get("ns/dir/leaf/below") is None
        assert ops.head("ns/dir/leaf/below") is None
        ops.delete("ns/dir")  # not a record: nothing to delete, and the records below stay
        assert bytes(ops.get("ns/dir/leaf")) == b"x"

    def test_get_first_returns_the_first_existing_key_in_order(self, ops: Any) -> None:
        ops.put("ns/b", b"B")
        ops.put("ns/c", b"C")
        key, data = ops.get_first(["ns/a", "ns/b", "ns/c"])
        assert (key, bytes(data)) == ("ns/b", b"B")
        key, data = ops.get_first(["ns/c", "ns/b"])
        assert (key, bytes(data)) == ("ns/c", b"C")
        assert ops.get_first(["ns/a", "ns/z"]) is None
        assert ops.get_first([]) is None

    def test_get_first_finds_an_empty_record(self, ops: Any) -> None:
        ops.put("ns/empty", b"")
        ops.put("ns/full", b"full")
        key, data = ops.get_first(["ns/missing", "ns/empty", "ns/full"])
        assert (key, bytes(data)) == ("ns/empty", b"")

    def test_head_reports_size_without_reading(self, ops: Any) -> None:
        for size in (0, 1, 1234):
            ops.put(f"ns/s{size}", _blob(size, size))
            info = ops.head(f"ns/s{size}")
            assert isinstance(info, ObjectInfo)
            assert (info.key, info.size) == (f"ns/s{size}", size)
            # seconds since the epoch (not ms, not ns), or unknown
            assert info.modified is None or abs(float(info.modified) - time.time()) < 86400

    # -- delete -----------------------------------------------------------------------------------
    def test_delete_removes_one_record_and_missing_is_fine(self, ops: Any) -> None:
        ops.put("ns/a", b"A")
        ops.put("ns/ab", b"AB")
        ops.put("ns/a.b", b"A.B")
        assert ops.delete("ns/a") is None
        assert ops.get("ns/a") is None
        assert ops.head("ns/a") is None
        assert _keys(ops.list("")) == ["ns/a.b", "ns/ab"]
        ops.delete("ns/a")  # already gone
        ops.delete("never/existed")
        ops.delete("ns/a.b/below")  # under a record, not a directory
        assert _keys(ops.list("")) == ["ns/a.b", "ns/ab"]

    # -- list -------------------------------------------------------------------------------------
    def test_list_is_recursive_and_bounded_by_whole_components(self, ops: Any) -> None:
        records = {
            "ns/run/a/n1": b"1",
            "ns/run/a/deep/er/n2": b"22",
            "ns/run/ab/n3": b"333",
            "ns/run/a.b/n4": b"4444",
            "ns/corr/a/n5": b"",
            "other/x": b"x",
        }
        for key, data in records.items():
            ops.put(key, data)
        everything = ops.list("")
        assert _keys(everything) == sorted(records)
        assert {i.key: i.size for i in everything} == {k: len(v) for k, v in records.items()}
        assert _keys(ops.list("ns/run/a/")) == ["ns/run/a/deep/er/n2", "ns/run/a/n1"]
        assert _keys(ops.list("ns/run/a/deep/")) == ["ns/run/a/deep/er/n2"]
        assert _keys(ops.list("ns/")) == sorted(k for k in records if k.startswith("ns/"))
        assert ops.list("ns/missing/") == []
        assert ops.list("ns/run/a/n1/") == []  # a record is not a directory

    def test_list_of_an_empty_store_is_empty(self, ops: Any) -> None:
        assert ops.list("") == []
        assert ops.list("ns/") == []

    def test_glob_characters_in_a_prefix_match_only_themselves(self, ops: Any) -> None:
        """Keys built by other code may hold glob characters; a prefix still matches literally
        (Redis ``SCAN MATCH`` and fsspec ``glob`` patterns must be escaped)."""
        names = ["a*", "a?", "a[b]", "a]", "ab", "ax"]
        for name in names:
            ops.put(f"ns/{name}/rec", name.encode())
        for name in names:
            assert _keys(ops.list(f"ns/{name}/")) == [f"ns/{name}/rec"], name
        assert ops.delete_prefix("ns/a*/") == 1
        assert ops.delete_prefix("ns/a?/") == 1
        assert ops.delete_prefix("ns/a[b]/") == 1
        assert _keys(ops.list("")) == sorted(f"ns/{n}/rec" for n in ["a]", "ab", "ax"])

    # -- delete_prefix ----------------------------------------------------------------------------
    def test_delete_prefix_returns_the_count_and_removes_everything_below(self, ops: Any) -> None:
        for key in ("ns/run/r1/a", "ns/run/r1/b", "ns/run/r1/sub/c", "ns/run/r2/a"):
            ops.put(key, b"x")
        assert ops.delete_prefix("ns/run/r1/") == 3
        assert _keys(ops.list("")) == ["ns/run/r2/a"]
        assert ops.delete_prefix("ns/run/r1/") == 0
        assert ops.delete_prefix("ns/never/") == 0
        ops.put("ns/run/r1/a", b"again")  # the prefix is usable again
        assert bytes(ops.get("ns/run/r1/a")) == b"again"

    def test_invariant_deleting_prefix_a_never_touches_a_colon_b_or_a_star(self, ops: Any) -> None:
        """Any string is one key component: ``a:b``, ``a*``, ``a/b``, ``..``, unicode and 300-char
        ids neither escape nor collide, and deleting ``a`` leaves each of them in place."""
        prefixes = {i: keys.scope_prefix("ns", "run", i) for i in TRICKY_IDS}
        assert len(set(prefixes.values())) == len(TRICKY_IDS), "two ids share one prefix"
        expected: dict[str, bytes] = {}
        for n, (ident, prefix) in enumerate(prefixes.items()):
            for node in ("n1", "n2"):
                key = prefix + keys.encode_component(node)
                expected[key] = f"{n}:{ident}:{node}".encode()
                ops.put(key, expected[key])
        assert _keys(ops.list("")) == sorted(expected)
        for key, data in expected.items():
            assert bytes(ops.get(key)) == data
        assert ops.delete_prefix(prefixes["a"]) == 2
        del expected[prefixes["a"] + "n1"], expected[prefixes["a"] + "n2"]
        assert _keys(ops.list("")) == sorted(expected)
        for key, data in expected.items():
            assert bytes(ops.get(key)) == data, f"{key} changed when run 'a' was deleted"
        for ident in ("a:b", "a*", "a/b", "..", "a" * 300):
            assert ops.delete_prefix(prefixes[ident]) == 2, ident
        assert len(ops.list("")) == len(expected) - 10

    # -- key validation ---------------------------------------------------------------------------
    @pytest.mark.parametrize("bad", INVALID_KEYS, ids=repr)
    def test_invalid_keys_are_refused_by_every_primitive(self, ops: Any, bad: str) -> None:
        calls: list[tuple[str, tuple[Any, ...]]] = [
            ("put", (bad, b"data")),
            ("get", (bad,)),
            ("head", (bad,)),
            ("delete", (bad,)),
            ("get_first", (["ns/fine", bad],)),
        ]
        for op, args in calls:
            with pytest.raises(InvalidKey) as info:
                getattr(ops, op)(*args)
            assert repr(bad) in str(info.value), f"{op}: the message must name the key"
        assert ops.list("") == []

    @pytest.mark.parametrize("bad", INVALID_PREFIXES, ids=repr)
    def test_invalid_prefixes_are_refused(self, ops: Any, bad: str) -> None:
        ops.put("a/b/c", b"kept")
        for op in ("list", "delete_prefix"):
            with pytest.raises(InvalidKey) as info:
                getattr(ops, op)(bad)
            assert repr(bad) in str(info.value), f"{op}: the message must name the prefix"
        assert _keys(ops.list("")) == ["a/b/c"]

    def test_keys_made_by_encode_component_are_valid(self, ops: Any) -> None:
        for ident in TRICKY_IDS:
            key = keys.record_key(ident, "correlation", ident, ident)
            ops.put(key, ident.encode("utf-8"))
            assert bytes(ops.get(key)) == ident.encode("utf-8")
        assert len(ops.list("")) == len(TRICKY_IDS)

    # -- failures ---------------------------------------------------------------------------------
    @pytest.mark.parametrize("where", ["first-byte", "middle", "last-byte"])
    def test_invariant_reader_sees_whole_record_or_nothing(
        self, twins: Twins, store: Store, where: str
    ) -> None:
        """A write that dies part-way (crash, dropped connection, full disk) leaves the previous
        record readable and adds no visible record."""
        faulty = FaultyStore(store)
        ops = twins(faulty)
        old, new = _blob(300_000, 1), _blob(400_000, 2)
        after = {"first-byte": 0, "middle": len(new) // 2, "last-byte": len(new) - 1}[where]
        ops.put("ns/k", old)
        view = memoryview(new)
        payload = ChunkedPayload([view[i : i + 65536] for i in range(0, len(new), 65536)])
        faulty.stop_mid_write(after)
        with pytest.raises(CheckpointError):
            ops.put("ns/k", payload)
        faulty.stop_mid_write(after)
        with pytest.raises(CheckpointError):
            ops.put("ns/fresh", payload)
        assert bytes(ops.get("ns/k")) == old
        assert ops.head("ns/k").size == len(old)
        assert ops.get("ns/fresh") is None
        assert ops.head("ns/fresh") is None
        assert _keys(ops.list("")) == ["ns/k"]
        ops.put("ns/k", payload)  # the store is still usable and the next write lands whole
        assert bytes(ops.get("ns/k")) == new

    def test_close_is_idempotent(self, ops: Any) -> None:
        ops.close()
        ops.close()

    def test_repr_and_url_hold_no_credentials(self, store: Store) -> None:
        parts = urlsplit(store.url)
        assert parts.password in (None, "***"), f"{store.url} shows a password"
        for name, value in parse_qsl(parts.query):
            assert not is_secret_name(name) or value == "***", f"{store.url} shows {name}"
        shown = f"{store!r} {store.url} {store}"
        for secret in self.credentials(store):
            assert secret not in shown, "a credential appears in the store's repr or url"

    # -- optional capabilities --------------------------------------------------------------------
    def test_capability_ttl_records_expire(
        self, request: pytest.FixtureRequest, store: Store, twins: Twins
    ) -> None:
        self.require(store, "ttl")
        ttl_store: Store = request.getfixturevalue("ttl_store")
        ops = twins(ttl_store)
        ops.put("ns/expiring", b"soon gone")
        assert bytes(ops.get("ns/expiring")) == b"soon gone"
        deadline = time.monotonic() + self.ttl_deadline
        while ops.get("ns/expiring") is not None:
            if time.monotonic() > deadline:
                pytest.fail(f"record still readable {self.ttl_deadline} s after put")
            time.sleep(0.1)
        assert ops.head("ns/expiring") is None
        assert ops.list("ns/") == []
        if twins.mode == "async":
            twins.run(ttl_store.aclose())

    def test_capability_streaming_put_holds_no_copy(self, ops: Any, store: Store) -> None:
        """A store listing ``"streaming"`` writes a payload chunk by chunk: while ``put`` runs,
        memory beyond what the store keeps afterwards stays under half the record."""
        self.require(store, "streaming")
        size = self.streaming_size(store)
        payload = GeneratedPayload(size, chunk=1 << 20, seed=5)
        tracemalloc.start()
        try:
            base = tracemalloc.get_traced_memory()[0]
            tracemalloc.reset_peak()
            ops.put("ns/streamed", payload)
            retained, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        extra = peak - max(retained, base)
        assert extra < size // 2, (
            f"put of a {size}-byte payload allocated {extra} bytes more than it kept: the "
            "payload was joined instead of streamed"
        )
        digest = hashlib.sha256()
        for piece in payload:
            digest.update(piece)
        got = ops.get("ns/streamed")
        assert got is not None and hashlib.sha256(got).digest() == digest.digest()

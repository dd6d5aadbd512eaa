"""``ManagerConformance``: :class:`~ckpt_core.CheckpointManager` over a store, as a pytest base
class.

The manager owns scopes, lookup order, lifecycle, codecs and verification; the store only moves
bytes. Running the manager over a store is therefore the end-to-end check that a backend keeps the
promises of DESIGN.md: every invariant there has a test here named ``test_invariant_*``.

Subclass it and provide a ``store`` fixture yielding a fresh, empty store. Every test runs through
``save``/``load``/... and through ``asave``/``aload``/... (the ``mode`` parameter).
"""

from __future__ import annotations

import dataclasses
import datetime
import logging
import threading
import tracemalloc
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import pydantic
import pytest

from .. import keys
from ..envelope import PREFIX_SIZE, Record, open_record, parse_prefix
from ..errors import (
    CheckpointCorrupted,
    CheckpointError,
    CheckpointNotFound,
    InvalidKey,
    SchemaMismatch,
    SerializationError,
    StoreUnavailable,
)
from ..manager import CheckpointManager
from ..serde import register_codec
from ..serde.base import Encoded
from ..stores.base import Store, validate_key
from ..types import CheckpointInfo, RunContext, Scope
from .faulty import FaultyStore
from .fixtures import TwinFixtures
from .store_suite import TRICKY_IDS
from .twins import Twins, twin_mismatches

# -- values every codec must carry ----------------------------------------------------------------


class ConformanceModel(pydantic.BaseModel):
    """A pydantic model at module level, so a record can name it and ``load`` can revive it."""

    name: str
    count: int
    tags: list[str]
    weights: dict[str, float]
    when: datetime.datetime | None = None


class ConformanceModelV2(pydantic.BaseModel):
    """A newer version of :class:`ConformanceModel` (a field added with a default)."""

    name: str
    count: int
    tags: list[str]
    weights: dict[str, float]
    when: datetime.datetime | None = None
    extra: str = "default"


@dataclasses.dataclass(frozen=True)
class ConformancePoint:
    x: int
    y: float
    label: str
    tags: tuple[str, ...] = ()


def _model() -> ConformanceModel:
    return ConformanceModel(
        name="ünïcode ✓",
        count=3,
        tags=["a", "b"],
        weights={"w": 0.25},
        when=datetime.datetime(2026, 11, 22, 3, 0, tzinfo=datetime.timezone.utc),
    )


class Case(NamedTuple):
    """A value, built lazily (optional libraries are imported only by the cases that need them),
    and the codec ``codec="auto"`` must choose for it."""

    id: str
    make: Callable[[], Any]
    codec: str


def _np() -> Any:
    import numpy

    return numpy


def _pd() -> Any:
    import pandas

    return pandas


def _pl() -> Any:
    import polars

    return polars


def _pa() -> Any:
    import pyarrow

    return pyarrow


CASES: tuple[Case, ...] = (
    Case("none", lambda: None, "json"),
    Case("empty-bytes", lambda: b"", "raw"),
    Case("bytes", lambda: bytes(range(256)), "raw"),
    Case("bytearray", lambda: bytearray(b"\x00mutable"), "raw"),
    Case("empty-str", lambda: "", "json"),
    Case("str", lambda: "ünïcode ✓ 日本 🎉 \x01", "json"),
    Case("int", lambda: -(2**80), "json"),
    Case("float", lambda: 0.1, "json"),
    Case("bool", lambda: False, "json"),
    Case("empty-dict", lambda: {}, "json"),
    Case("empty-list", lambda: [], "json"),
    Case(
        "nested-json",
        lambda: {"a": [1, 2.5, {"b": None, "c": "ü"}], "t": True, "": [[], {}], "n": -0.0},
        "json",
    ),
    Case("pydantic", _model, "json"),
    Case("dataclass", lambda: ConformancePoint(1, 2.5, "p", ("x", "y")), "json"),
    Case("numpy-2d", lambda: _np().arange(12, dtype="<f8").reshape(3, 4) / 7, "numpy"),
    Case("numpy-empty", lambda: _np().empty(0, dtype="<i4"), "numpy"),
    Case("numpy-empty-2d", lambda: _np().empty((0, 3), dtype="<f4"), "numpy"),
    Case("numpy-0d", lambda: _np().array(3.5), "numpy"),
    Case(
        "numpy-structured",
        lambda: _np().array(
            [(1, (2.0, 3.0), b"abc"), (-4, (5.5, 6.5), b"de")],
            dtype=[("a", "<i4"), ("b", "<f8", (2,)), ("c", "S3")],
        ),
        "numpy",
    ),
    Case("numpy-fortran", lambda: _np().asfortranarray(_np().arange(6).reshape(2, 3)), "numpy"),
    Case("numpy-strided", lambda: _np().arange(20, dtype="<i8")[::3], "numpy"),
    Case("numpy-big-endian", lambda: _np().arange(5, dtype=">u2"), "numpy"),
    Case(
        "numpy-datetime",
        lambda: _np().array(["2026-11-22T03:00", "1970-01-01"], dtype="datetime64[s]"),
        "numpy",
    ),
    Case("numpy-object", lambda: _np().array([1, "two", None], dtype=object), "pickle"),
    Case("pandas-empty", lambda: _pd().DataFrame(), "arrow"),
    Case(
        "pandas-empty-typed",
        lambda: _pd().DataFrame({"a": _pd().Series([], dtype="int64")}),
        "arrow",
    ),
    Case(
        "pandas",
        lambda: _pd().DataFrame(
            {"i": [1, 2, 3], "f": [0.5, None, 2.0], "b": [True, False, True]},
            index=_pd().Index([10, 20, 30], name="idx"),
        ),
        "arrow",
    ),
    Case("polars-empty", lambda: _pl().DataFrame(), "arrow"),
    Case("polars-empty-typed", lambda: _pl().DataFrame(schema={"a": _pl().Int64}), "arrow"),
    Case(
        "polars",
        lambda: _pl().DataFrame({"i": [1, 2, None], "s": ["x", "ü", None], "f": [0.5, 1.5, 2.5]}),
        "arrow",
    ),
    Case("arrow-table", lambda: _pa().table({"i": [1, 2], "s": ["a", None]}), "arrow"),
    Case(
        "arrow-empty-table",
        lambda: _pa().table({"i": _pa().array([], type=_pa().int32())}),
        "arrow",
    ),
    Case("tuple", lambda: (1, "a", (2, 3.5), None), "pickle"),
    Case("set", lambda: {1, 2, 3}, "pickle"),
    Case("frozenset", lambda: frozenset({"a", "b"}), "pickle"),
    Case("dict-int-keys", lambda: {1: "one", 2: "two"}, "pickle"),
    Case("list-with-tuple", lambda: [1, (2, 3)], "pickle"),
    Case("complex", lambda: 1 + 2j, "pickle"),
    Case(
        "datetime", lambda: datetime.datetime(2026, 11, 22, tzinfo=datetime.timezone.utc), "pickle"
    ),
)


def assert_same_value(got: Any, expected: Any) -> None:
    """``got`` is ``expected``'s type and value (arrays and frames compared exactly)."""
    assert type(got) is type(expected), f"loaded a {type(got)}, saved a {type(expected)}"
    module = type(expected).__module__.split(".", 1)[0]
    if module == "numpy" and type(expected).__name__ == "ndarray":
        assert (got.dtype, got.shape) == (expected.dtype, expected.shape)
        if expected.dtype.hasobject:
            assert got.tolist() == expected.tolist()
        else:
            assert got.tobytes() == expected.tobytes()
    elif module == "pandas":
        _pd().testing.assert_frame_equal(got, expected)
    elif module == "polars":
        import polars.testing

        polars.testing.assert_frame_equal(got, expected)
    elif module == "pyarrow":
        assert got.schema == expected.schema and got.equals(expected)
    else:
        assert got == expected


# -- instruments ----------------------------------------------------------------------------------


class SpyCodec:
    """A ``raw``-like codec that records each decode, to prove refusals happen before decoding."""

    name = "conformance-spy"
    decoded: list[bytes] = []  # class-level: codec instances are per manager

    def accepts(self, value: Any) -> bool:
        return type(value) is bytes

    def encode(self, value: Any) -> Encoded:
        return Encoded("spy", [value])

    def decode(self, parts: Sequence[memoryview], schema: str | None, want: Any = None) -> Any:
        data = b"".join(bytes(p) for p in parts)
        SpyCodec.decoded.append(data)
        return data


register_codec(SpyCodec.name, f"{__name__}:SpyCodec")

#: What :class:`PickleTripwire` records when a pickle of it is loaded.
TRIPPED: list[str] = []


def _trip(tag: str) -> str:
    TRIPPED.append(tag)
    return tag


class PickleTripwire:
    """Unpickling this runs :func:`_trip`: proof that a refused pickle was never loaded."""

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (_trip, ("unpickled",))


def _raw(store: Store, key: str) -> bytes:
    """The stored record under ``key``, read with the sync primitive."""
    data = store.get(key)
    assert data is not None, f"{key} is missing from the store"
    return bytes(data)


def _flip(data: bytes, index: int) -> bytes:
    out = bytearray(data)
    out[index] ^= 0x01
    return bytes(out)


def _reforge(data: bytes, key: str, payload: bytes | None = None, **header: Any) -> bytes:
    """A well-formed record signed with the wrong key: what someone who altered a record without
    the signing key can produce (its checksum is valid; only the signature can catch it)."""
    opened = open_record(data, key, None)
    new_header = {k: v for k, v in opened.header.items() if k not in ("size", "parts", "hash")}
    new_header.update(header)
    if payload is None:
        payload = b"".join(bytes(p) for p in opened.parts)
    return Record(new_header, [payload], b"forged-without-the-key").to_bytes()


class ManagerConformance(TwinFixtures):
    """DESIGN.md's manager contract and invariants, over the subclass's store.

    Required from the subclass: a ``store`` fixture yielding a fresh, empty :class:`Store`.
    Optional: :attr:`large_value_size` for slow backends; :meth:`credentials` to name secrets the
    store was built with, so the suite checks none of them leaks.
    """

    namespace = "conformance"
    #: Size of the array the large-payload invariant saves and loads.
    large_value_size: int = 16 << 20
    signing_key = "conformance-signing-key-must-not-leak"

    # -- fixtures ---------------------------------------------------------------------------------
    @pytest.fixture
    def manager(self, store: Store) -> CheckpointManager:
        return self.make_manager(store)

    @pytest.fixture
    def mgr(self, twins: Twins, manager: CheckpointManager) -> Any:
        """The manager under test, in this test's flavour: ``mgr.save(ctx, node, value)``."""
        return twins(manager)

    @pytest.fixture
    def ctx(self) -> RunContext:
        return RunContext(run_id="run-1", correlation_id="job-1", attempt=1, max_attempts=3)

    @pytest.fixture
    def retry(self) -> RunContext:
        """The next attempt of ``ctx``'s correlation."""
        return RunContext(run_id="run-2", correlation_id="job-1", attempt=2, max_attempts=3)

    def make_manager(self, store: Store, **options: Any) -> CheckpointManager:
        """A manager over ``store``; suites may override to add options every manager needs."""
        options.setdefault("namespace", self.namespace)
        return CheckpointManager(store, **options)

    def credentials(self, store: Store) -> list[str]:
        """Secrets used to build ``store``; none may appear in reprs, errors or logs."""
        return []

    # -- twins ------------------------------------------------------------------------------------
    def test_every_manager_method_has_an_async_twin_with_the_same_signature(self) -> None:
        ops = ("save", "load", "lookup", "list", "finish", "cleanup_run", "cleanup_correlation")
        assert twin_mismatches(CheckpointManager, (*ops, "close")) == []

    # -- codecs -----------------------------------------------------------------------------------
    @pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
    def test_round_trip(
        self, mgr: Any, ctx: RunContext, retry: RunContext, case: Case, store: Store
    ) -> None:
        value = case.make()
        info = mgr.save(ctx, "node", value)
        assert info.codec == case.codec, f"auto chose {info.codec} for {case.id}"
        assert_same_value(mgr.load(ctx, "node"), value)
        assert_same_value(mgr.load(retry, "node"), value)  # CORRELATION scope: a retry resumes
        assert store.head(info.key) is not None

    def test_pydantic_model_with_and_without_schema(self, mgr: Any, ctx: RunContext) -> None:
        model = _model()
        mgr.save(ctx, "m", model)
        assert mgr.load(ctx, "m") == model
        assert mgr.load(ctx, "m", schema=ConformanceModel) == model
        newer = mgr.load(ctx, "m", schema=ConformanceModelV2)
        assert isinstance(newer, ConformanceModelV2)
        assert (newer.name, newer.count, newer.extra) == (model.name, model.count, "default")
        as_dict = mgr.load(ctx, "m", schema=dict)
        assert as_dict["name"] == model.name and as_dict["tags"] == model.tags
        with pytest.raises(SchemaMismatch, match="int"):
            mgr.load(ctx, "m", schema=int)

    def test_plain_data_loaded_with_a_schema(self, mgr: Any, ctx: RunContext) -> None:
        mgr.save(ctx, "d", {"name": "n", "count": 2, "tags": [], "weights": {}})
        model = mgr.load(ctx, "d", schema=ConformanceModel)
        assert model == ConformanceModel(name="n", count=2, tags=[], weights={})
        with pytest.raises(SchemaMismatch, match="ConformancePoint"):
            mgr.load(ctx, "d", schema=ConformancePoint)

    def test_mutating_a_loaded_value_leaves_the_checkpoint_unchanged(
        self, mgr: Any, ctx: RunContext
    ) -> None:
        np = _np()
        mgr.save(ctx, "ba", bytearray(b"abc"))
        mgr.save(ctx, "arr", np.arange(4))
        mgr.save(ctx, "json", {"rows": [1, 2]})
        loaded_ba, loaded_arr, loaded_json = (mgr.load(ctx, n) for n in ("ba", "arr", "json"))
        loaded_ba[0] = ord("X")
        loaded_arr[0] = 99  # a loaded array is writable, whatever the backend
        loaded_json["rows"].append(3)
        assert mgr.load(ctx, "ba") == bytearray(b"abc")
        assert mgr.load(ctx, "arr").tolist() == [0, 1, 2, 3]
        assert mgr.load(ctx, "json") == {"rows": [1, 2]}

    # -- invariants: hits -------------------------------------------------------------------------
    def test_invariant_stored_none_is_a_hit(self, mgr: Any, ctx: RunContext) -> None:
        mgr.save(ctx, "nothing", None)
        assert mgr.lookup(ctx, "nothing") is not None
        assert mgr.load(ctx, "nothing") is None

    def test_invariant_stored_empty_bytes_is_a_hit(self, mgr: Any, ctx: RunContext) -> None:
        mgr.save(ctx, "empty", b"")
        assert mgr.lookup(ctx, "empty") is not None
        assert mgr.load(ctx, "empty") == b""

    @pytest.mark.parametrize("kind", ["pandas", "polars", "arrow"])
    def test_invariant_stored_empty_dataframe_is_a_hit(
        self, mgr: Any, ctx: RunContext, kind: str
    ) -> None:
        frame = {
            "pandas": lambda: _pd().DataFrame(),
            "polars": lambda: _pl().DataFrame(),
            "arrow": lambda: _pa().table({}),
        }[kind]()
        mgr.save(ctx, "frame", frame)
        assert mgr.lookup(ctx, "frame") is not None
        loaded = mgr.load(ctx, "frame")
        assert type(loaded) is type(frame) and len(loaded) == 0

    def test_load_of_a_missing_checkpoint_raises_checkpoint_not_found(
        self, mgr: Any, ctx: RunContext
    ) -> None:
        with pytest.raises(CheckpointNotFound) as info:
            mgr.load(ctx, "never-saved")
        message = str(info.value)
        assert "'never-saved'" in message and "'run-1'" in message and "'job-1'" in message
        assert info.value.node == "never-saved"
        assert mgr.lookup(ctx, "never-saved") is None

    # -- scopes -----------------------------------------------------------------------------------
    def test_run_scope_is_looked_up_before_correlation(
        self, mgr: Any, ctx: RunContext, retry: RunContext
    ) -> None:
        corr = mgr.save(ctx, "n", "from-correlation", Scope.CORRELATION)
        run = mgr.save(ctx, "n", "from-run", Scope.RUN)
        assert (run.scope, corr.scope) == (Scope.RUN, Scope.CORRELATION)
        assert run.key != corr.key
        assert mgr.load(ctx, "n") == "from-run"
        hit = mgr.lookup(ctx, "n")
        assert (hit.scope, hit.key) == (Scope.RUN, run.key)
        # Another attempt sees the correlation's checkpoint, never this attempt's RUN scope.
        assert mgr.load(retry, "n") == "from-correlation"
        assert mgr.lookup(retry, "n").scope is Scope.CORRELATION
        assert mgr.cleanup_run(ctx.run_id) == 1
        assert mgr.load(ctx, "n") == "from-correlation"

    def test_run_scope_is_private_to_its_attempt(
        self, mgr: Any, ctx: RunContext, retry: RunContext
    ) -> None:
        mgr.save(ctx, "n", 1, Scope.RUN)
        assert mgr.lookup(retry, "n") is None
        with pytest.raises(CheckpointNotFound):
            mgr.load(retry, "n")

    def test_save_returns_the_info_lookup_and_list_report(
        self, mgr: Any, ctx: RunContext, store: Store, manager: CheckpointManager
    ) -> None:
        info = mgr.save(ctx, "n", {"x": 1}, Scope.RUN)
        assert isinstance(info, CheckpointInfo)
        assert info.key == manager.key_for(ctx, "n", Scope.RUN)
        assert (info.namespace, info.node, info.scope) == (self.namespace, "n", Scope.RUN)
        assert (info.run_id, info.correlation_id, info.attempt) == ("run-1", "job-1", 1)
        assert info.codec == "json" and not info.signed
        assert info.checksum is not None and info.checksum.startswith("blake3:")
        head = store.head(info.key)
        assert head is not None and info.size == head.size
        hit = mgr.lookup(ctx, "n")
        assert (hit.key, hit.size, hit.node, hit.scope) == (info.key, info.size, "n", Scope.RUN)
        assert [(i.key, i.size) for i in mgr.list(ctx)] == [(info.key, info.size)]

    def test_list_returns_run_then_correlation_checkpoints(
        self, mgr: Any, ctx: RunContext, retry: RunContext, manager: CheckpointManager
    ) -> None:
        mgr.save(ctx, "r1", 1, Scope.RUN)
        mgr.save(ctx, "c2", 2)
        mgr.save(ctx, "c1", b"")
        mgr.save(retry, "other-run", 3, Scope.RUN)
        other = RunContext(run_id="run-9", correlation_id="job-9")
        mgr.save(other, "elsewhere", 4)
        listed = mgr.list(ctx)
        assert [(i.scope, i.node) for i in listed] == [
            (Scope.RUN, "r1"),
            (Scope.CORRELATION, "c1"),
            (Scope.CORRELATION, "c2"),
        ]
        for info in listed:
            assert info.key == manager.key_for(ctx, info.node, info.scope)
            assert info.namespace == self.namespace and info.size > 0
        assert [i.node for i in mgr.list(retry)] == ["other-run", "c1", "c2"]
        assert mgr.list(RunContext(run_id="nobody")) == []

    def test_lookup_reads_no_payload(self, twins: Twins, store: Store, ctx: RunContext) -> None:
        faulty = FaultyStore(store)
        manager = self.make_manager(faulty)
        mgr = twins(manager)
        saved = mgr.save(ctx, "n", b"x" * 10_000)
        faulty.reset()
        hit = mgr.lookup(ctx, "n")
        assert faulty.ops() == ["head", "head"], "lookup must only head (RUN, then CORRELATION)"
        assert (hit.key, hit.size, hit.scope) == (saved.key, saved.size, Scope.CORRELATION)
        faulty.reset()
        mgr.load(ctx, "n")
        assert faulty.ops() == ["get_first"], "load reads RUN-then-CORRELATION in one primitive"
        assert faulty.calls[0].args[0] == (
            manager.key_for(ctx, "n", Scope.RUN),
            manager.key_for(ctx, "n", Scope.CORRELATION),
        )

    # -- lifecycle --------------------------------------------------------------------------------
    @pytest.mark.parametrize(
        ("succeeded", "retention", "finish_retention", "correlation_kept"),
        [
            (True, "delete", None, False),
            (True, "keep", None, True),
            (True, "delete", "keep", True),
            (True, "keep", "delete", False),
            (False, "delete", None, True),
            (False, "delete", "delete", True),
        ],
    )
    def test_finish_applies_the_scope_lifecycle(
        self,
        twins: Twins,
        store: Store,
        ctx: RunContext,
        retry: RunContext,
        succeeded: bool,
        retention: str,
        finish_retention: str | None,
        correlation_kept: bool,
    ) -> None:
        mgr = twins(self.make_manager(store, retention=retention))
        mgr.save(ctx, "r", 1, Scope.RUN)
        mgr.save(ctx, "c1", 2)
        mgr.save(ctx, "c2", 3)
        mgr.save(retry, "other-attempt", 4, Scope.RUN)
        removed = mgr.finish(ctx, succeeded, retention=finish_retention)
        assert removed == (1 if correlation_kept else 3)
        assert mgr.lookup(ctx, "r") is None, "RUN scope is always removed at finish"
        assert (mgr.lookup(ctx, "c1") is not None) is correlation_kept
        assert mgr.lookup(retry, "other-attempt") is not None, "finish touched another attempt"
        if correlation_kept:
            assert mgr.load(retry, "c2") == 3

    def test_failed_attempt_keeps_correlation_and_the_retry_resumes(
        self, mgr: Any, ctx: RunContext, retry: RunContext
    ) -> None:
        mgr.save(ctx, "extract", [1, 2, 3])
        mgr.save(ctx, "scratch", "tmp", Scope.RUN)
        assert mgr.finish(ctx, False) == 1
        assert mgr.load(retry, "extract") == [1, 2, 3]
        mgr.save(retry, "transform", [2, 4, 6])
        assert mgr.finish(retry, True) == 2
        assert mgr.list(retry) == []
        assert mgr.finish(retry, True) == 0  # finishing twice is harmless

    def test_invariant_deleting_run_a_never_touches_run_a_colon_b_or_a_star(
        self, mgr: Any, twins: Twins, store: Store
    ) -> None:
        """Any string is one key component, so cleanup of ``a`` is exactly ``a``."""
        ids = ("a", "a:b", "a*", "a/b", "a/", "a%2F", "..", "a b", "ab", "a.", "a" * 300, "")
        for ident in ids:
            c = RunContext(run_id=ident, correlation_id=ident)
            mgr.save(c, "n", f"run:{ident}", Scope.RUN)
            mgr.save(c, "n", f"corr:{ident}", Scope.CORRELATION)
        sibling_ns = twins(self.make_manager(store, namespace=self.namespace + ":b"))
        sibling_ns.save(RunContext(run_id="a"), "n", "other namespace", Scope.RUN)
        assert mgr.cleanup_run("a") == 1
        assert mgr.cleanup_correlation("a") == 1
        assert mgr.cleanup_run("a") == 0
        for ident in ids[1:]:
            c = RunContext(run_id=ident, correlation_id=ident)
            assert mgr.load(c, "n") == f"run:{ident}", f"cleanup of 'a' touched run {ident!r}"
            assert [i.scope for i in mgr.list(c)] == [Scope.RUN, Scope.CORRELATION]
        with pytest.raises(CheckpointNotFound):
            mgr.load(RunContext(run_id="a"), "n")
        assert sibling_ns.load(RunContext(run_id="a"), "n") == "other namespace"
        assert mgr.cleanup_correlation("a:b") == 1
        assert mgr.load(RunContext(run_id="a:b"), "n") == "run:a:b"

    def test_invariant_any_string_is_a_valid_id(self, twins: Twins, store: Store) -> None:
        """Run ids, correlation ids, namespaces and node names may be any NUL-free string; each
        stays inside its namespace and none collides with another."""
        seen: dict[str, str] = {}
        for ident in TRICKY_IDS:
            manager = self.make_manager(store, namespace=ident)
            mgr = twins(manager)
            c = RunContext(run_id=ident, correlation_id=ident + "/corr")
            run = mgr.save(c, ident, {"id": ident, "scope": "run"}, Scope.RUN)
            corr = mgr.save(c, ident, {"id": ident, "scope": "corr"})
            for key in (run.key, corr.key):
                validate_key(key)
                assert key.startswith(keys.encode_component(ident) + "/")
                assert key not in seen, f"ids {ident!r} and {seen.get(key)!r} share key {key}"
                seen[key] = ident
            assert mgr.load(c, ident) == {"id": ident, "scope": "run"}
            assert mgr.load(RunContext(run_id="x", correlation_id=c.correlation_id), ident) == {
                "id": ident,
                "scope": "corr",
            }
            assert [i.key for i in mgr.list(c)] == [run.key, corr.key]
        assert len(store.list("")) == 2 * len(TRICKY_IDS)

    def test_ids_with_nul_are_refused_naming_the_id(self, mgr: Any, ctx: RunContext) -> None:
        with pytest.raises(InvalidKey, match=r"'bad\\x00node'"):
            mgr.save(ctx, "bad\x00node", 1)
        with pytest.raises(InvalidKey, match=r"'bad\\x00run'"):
            mgr.load(RunContext(run_id="bad\x00run"), "n")

    # -- corruption -------------------------------------------------------------------------------
    @pytest.mark.parametrize(
        "damage",
        [
            "flip-magic",
            "flip-header",
            "flip-payload",
            "flip-trailer",
            "truncate-1",
            "truncate-half",
            "truncate-to-prefix",
            "empty",
            "append-byte",
            "not-a-record",
        ],
    )
    def test_invariant_corruption_is_detected_and_names_the_key(
        self, mgr: Any, ctx: RunContext, store: Store, damage: str
    ) -> None:
        info = mgr.save(ctx, "n", {"payload": "x" * 200})
        data = _raw(store, info.key)
        _, header_len = parse_prefix(data, info.key)
        damages: dict[str, Callable[[], bytes]] = {
            "flip-magic": lambda: _flip(data, 0),
            "flip-header": lambda: _flip(data, PREFIX_SIZE + header_len // 2),
            "flip-payload": lambda: _flip(data, PREFIX_SIZE + header_len + 5),
            "flip-trailer": lambda: _flip(data, len(data) - 1),
            "truncate-1": lambda: data[:-1],
            "truncate-half": lambda: data[: len(data) // 2],
            "truncate-to-prefix": lambda: data[:PREFIX_SIZE],
            "empty": lambda: b"",
            "append-byte": lambda: data + b"\x00",
            "not-a-record": lambda: b'{"payload": "x"}',
        }
        damaged = damages[damage]()
        store.put(info.key, damaged)
        with pytest.raises(CheckpointCorrupted) as raised:
            mgr.load(ctx, "n")
        assert raised.value.key == info.key
        assert info.key in str(raised.value)

    def test_every_single_byte_flip_is_detected(
        self, mgr: Any, ctx: RunContext, store: Store
    ) -> None:
        """The header says how to decode the payload (codec, dtype, shape), so a flipped bit
        anywhere in a record, header included, is corruption, never different data."""
        np = _np()
        info = mgr.save(ctx, "n", np.arange(3, dtype="<i2"))
        data = _raw(store, info.key)
        assert mgr.load(ctx, "n").tolist() == [0, 1, 2]  # the unflipped record loads
        undetected = []
        for index in range(len(data)):
            store.put(info.key, _flip(data, index))
            try:
                value = mgr.load(ctx, "n")
            except CheckpointCorrupted as exc:
                assert exc.key == info.key
                continue
            except CheckpointError as exc:
                undetected.append(f"byte {index}: {type(exc).__name__}: {exc}")
                continue
            undetected.append(f"byte {index}: loaded {value!r}")
        assert not undetected, f"{len(undetected)} flips were not reported as corruption: " + (
            "; ".join(undetected[:5])
        )

    def test_truncated_write_is_detected(self, twins: Twins, store: Store, ctx: RunContext) -> None:
        """A backend that silently drops the end of a record: the next load reports corruption
        instead of returning a shorter value."""
        faulty = FaultyStore(store)
        mgr = twins(self.make_manager(faulty))
        faulty.truncate(keep=-1)
        info = mgr.save(ctx, "n", b"z" * 5000)
        head = store.head(info.key)
        assert head is not None and head.size == info.size - 1
        with pytest.raises(CheckpointCorrupted, match=r"truncated|checksum") as raised:
            mgr.load(ctx, "n")
        assert raised.value.key == info.key

    @pytest.mark.parametrize("after", [0, 100, -1])
    def test_invariant_reader_sees_whole_record_or_nothing(
        self, twins: Twins, store: Store, ctx: RunContext, retry: RunContext, after: int
    ) -> None:
        """A save that dies mid-write leaves the previous checkpoint loadable, and a first save
        that dies leaves a miss, never a half record."""
        faulty = FaultyStore(store)
        mgr = twins(self.make_manager(faulty))
        previous = {"rows": list(range(1000))}
        mgr.save(ctx, "n", previous)
        new_value = {"rows": list(range(2000))}
        size = mgr.save(ctx, "probe", new_value).size
        stop_at = after if after >= 0 else size - 1
        faulty.stop_mid_write(stop_at)
        with pytest.raises(StoreUnavailable, match="injected fault"):
            mgr.save(ctx, "n", new_value)
        assert mgr.load(retry, "n") == previous
        faulty.stop_mid_write(stop_at)
        with pytest.raises(StoreUnavailable):
            mgr.save(ctx, "first", new_value)
        assert mgr.lookup(retry, "first") is None
        with pytest.raises(CheckpointNotFound):
            mgr.load(retry, "first")
        assert sorted(i.node for i in mgr.list(retry)) == ["n", "probe"]

    def test_overwrite_under_concurrent_loads_is_whole(
        self, mgr: Any, ctx: RunContext, manager: CheckpointManager
    ) -> None:
        values = [bytes([v]) * (200 << 10) for v in range(1, 5)]
        mgr.save(ctx, "n", values[0])
        stop = threading.Event()
        bad: list[str] = []

        def reader() -> None:
            while not stop.is_set() and len(bad) < 5:
                try:
                    got = manager.load(ctx, "n")
                except CheckpointError as exc:
                    bad.append(f"{type(exc).__name__}: {exc}")
                    continue
                if got not in values:
                    bad.append(f"a {len(got)}-byte value that was never saved")

        thread = threading.Thread(target=reader, daemon=True)
        thread.start()
        try:
            for n in range(10):
                mgr.save(ctx, "n", values[n % len(values)])
        finally:
            stop.set()
            thread.join(60)
        assert not bad, bad

    # -- errors from the store --------------------------------------------------------------------
    @pytest.mark.parametrize(
        ("primitive", "method"),
        [
            ("put", "save"),
            ("get_first", "load"),
            ("head", "lookup"),
            ("list", "list"),
            ("delete_prefix", "finish"),
            ("delete_prefix", "cleanup_run"),
            ("delete_prefix", "cleanup_correlation"),
        ],
    )
    def test_store_errors_propagate_typed_never_as_misses(
        self, twins: Twins, store: Store, ctx: RunContext, primitive: str, method: str
    ) -> None:
        faulty = FaultyStore(store)
        mgr = twins(self.make_manager(faulty))
        mgr.save(ctx, "n", 1)
        args: dict[str, tuple[Any, ...]] = {
            "save": (ctx, "n", 2),
            "load": (ctx, "n"),
            "lookup": (ctx, "n"),
            "list": (ctx,),
            "finish": (ctx, True),
            "cleanup_run": (ctx.run_id,),
            "cleanup_correlation": (ctx.correlation_id,),
        }
        faulty.fail(primitive, StoreUnavailable(f"backend down during {primitive}"))
        with pytest.raises(StoreUnavailable, match=f"backend down during {primitive}"):
            getattr(mgr, method)(*args[method])
        assert mgr.load(ctx, "n") == 1

    # -- signing ----------------------------------------------------------------------------------
    def test_signed_records_round_trip(self, twins: Twins, store: Store, ctx: RunContext) -> None:
        signed = twins(self.make_manager(store, signing_key=self.signing_key))
        info = signed.save(ctx, "n", {"a": 1})
        assert info.signed
        assert signed.load(ctx, "n") == {"a": 1}

    def test_signed_manager_refuses_unsigned_records_before_decoding(
        self, twins: Twins, store: Store, ctx: RunContext
    ) -> None:
        plain = twins(self.make_manager(store))
        signed = twins(self.make_manager(store, signing_key=self.signing_key))
        SpyCodec.decoded.clear()
        info = plain.save(ctx, "n", b"written without a key", codec=SpyCodec.name)
        assert plain.load(ctx, "n") == b"written without a key"
        assert SpyCodec.decoded == [b"written without a key"], "the spy codec must see decodes"
        SpyCodec.decoded.clear()
        with pytest.raises(CheckpointCorrupted, match="not signed") as raised:
            signed.load(ctx, "n")
        assert raised.value.key == info.key
        assert SpyCodec.decoded == [], "an unsigned record was decoded by a signed manager"

    @pytest.mark.parametrize("tamper", ["payload", "header", "wrong-key"])
    def test_signed_manager_refuses_tampered_records_before_decoding(
        self, twins: Twins, store: Store, ctx: RunContext, tamper: str
    ) -> None:
        signed = twins(self.make_manager(store, signing_key=self.signing_key))
        SpyCodec.decoded.clear()
        info = signed.save(ctx, "n", b"pay me 10", codec=SpyCodec.name)
        original = _raw(store, info.key)
        if tamper == "payload":
            forged = _reforge(original, info.key, payload=b"pay me 99")
        elif tamper == "header":
            forged = _reforge(original, info.key, attempt=99)
        else:
            forged = original
            signed = twins(self.make_manager(store, signing_key="some-other-key"))
        store.put(info.key, forged)
        with pytest.raises(CheckpointCorrupted, match="signature") as raised:
            signed.load(ctx, "n")
        assert raised.value.key == info.key
        assert SpyCodec.decoded == [], "a tampered record was decoded"

    # -- pickle policy ----------------------------------------------------------------------------
    @pytest.mark.parametrize(
        ("value", "type_name"),
        [((1, 2), "tuple"), ({1, 2}, "set"), (PickleTripwire(), "PickleTripwire")],
        ids=["tuple", "set", "object"],
    )
    def test_allow_pickle_false_refuses_to_save_naming_the_type(
        self, twins: Twins, store: Store, ctx: RunContext, value: Any, type_name: str
    ) -> None:
        strict = twins(self.make_manager(store, allow_pickle=False))
        with pytest.raises(SerializationError) as raised:
            strict.save(ctx, "the-node", value)
        message = str(raised.value)
        assert type_name in message and "'the-node'" in message and "allow_pickle=True" in message
        assert strict.lookup(ctx, "the-node") is None

    def test_allow_pickle_false_refuses_to_load_pickle_records_before_unpickling(
        self, twins: Twins, store: Store, ctx: RunContext
    ) -> None:
        lenient = twins(self.make_manager(store, allow_pickle=True))
        strict = twins(self.make_manager(store, allow_pickle=False))
        info = lenient.save(ctx, "n", PickleTripwire())
        assert info.codec == "pickle"
        TRIPPED.clear()
        with pytest.raises(SerializationError, match="allow_pickle=True") as raised:
            strict.load(ctx, "n")
        assert info.key in str(raised.value)
        assert TRIPPED == [], "the pickle was loaded although allow_pickle=False"
        assert lenient.load(ctx, "n") == "unpickled"
        assert TRIPPED == ["unpickled"]

    # -- secrets ----------------------------------------------------------------------------------
    def test_invariant_credentials_never_appear_in_logs_errors_or_repr(
        self,
        twins: Twins,
        store: Store,
        ctx: RunContext,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        caplog.set_level(logging.DEBUG)
        secrets = [self.signing_key, *self.credentials(store)]
        manager = self.make_manager(store, signing_key=self.signing_key)
        mgr = twins(manager)
        shown = [repr(manager), repr(store), str(store.url), repr(mgr.save(ctx, "n", 1))]
        unsigned_reader = twins(self.make_manager(store))
        shown.append(repr(unsigned_reader.load(ctx, "n")))
        with pytest.raises(CheckpointNotFound) as missing:
            mgr.load(ctx, "missing")
        store.put(manager.key_for(ctx, "n"), b"garbage")
        with pytest.raises(CheckpointCorrupted) as corrupted:
            mgr.load(ctx, "n")
        shown += [f"{e.value!r} {e.value}" for e in (missing, corrupted)]
        shown.append(caplog.text)
        for secret in secrets:
            for text in shown:
                assert secret not in text, f"a secret leaked into: {text[:200]}"

    # -- memory -----------------------------------------------------------------------------------
    def test_invariant_large_payloads_stream(self, mgr: Any, ctx: RunContext, store: Store) -> None:
        """Saving or loading an N-byte value holds at most about one extra copy of it: memory
        allocated beyond what is kept afterwards stays under 1.5 N."""
        np = _np()
        size = self.large_value_size
        value = np.arange(size // 8, dtype="<i8")
        tracemalloc.start()
        try:
            base = tracemalloc.get_traced_memory()[0]
            tracemalloc.reset_peak()
            mgr.save(ctx, "big", value)
            retained, peak = tracemalloc.get_traced_memory()
            save_extra = peak - max(retained, base)
            base = tracemalloc.get_traced_memory()[0]
            tracemalloc.reset_peak()
            loaded = mgr.load(ctx, "big")
            retained, peak = tracemalloc.get_traced_memory()
            load_extra = peak - max(retained, base)
        finally:
            tracemalloc.stop()
        assert np.array_equal(loaded, value)
        assert save_extra < 1.5 * size, f"save of {size} bytes allocated {save_extra} extra"
        assert load_extra < 1.5 * size, f"load of {size} bytes allocated {load_extra} extra"

"""Codecs through the manager, on the memory and the local store: exact round trips, the codec
``auto`` picks, ``schema=`` on load, and the pickle policy."""

from __future__ import annotations

import dataclasses
import datetime as dt
import decimal
import enum
import math
from collections import OrderedDict
from typing import Any

import numpy as np
import pandas as pd
import polars as pl
import pyarrow as pa
import pydantic
import pytest
from pandas.testing import assert_frame_equal

import ckpt_core as ckpt
from ckpt_core.envelope import Record, read_header


class Order(pydantic.BaseModel):
    id: int
    items: list[str] = []


class OrderV2(pydantic.BaseModel):
    id: int
    items: list[str] = []
    note: str = "none"


class Loose(pydantic.BaseModel):
    payload: Any = None


class Base(pydantic.BaseModel):
    x: int


class Derived(Base):
    y: int


class Holder(pydantic.BaseModel):
    inner: Base


class WithPrivate(pydantic.BaseModel):
    x: int
    _cache: int = pydantic.PrivateAttr(default=0)


@dataclasses.dataclass
class Point:
    x: float
    y: float
    tags: tuple[str, ...] = ()


@dataclasses.dataclass(eq=False)
class NoEq:
    x: int


class Color(enum.Enum):
    RED = 1


class Custom:
    def __init__(self, v: int) -> None:
        self.v = v

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Custom) and other.v == self.v

    __hash__ = None  # type: ignore[assignment]


@pytest.fixture(params=["memory", "local"])
def store(request: pytest.FixtureRequest, tmp_path: object) -> ckpt.Store:
    if request.param == "memory":
        return ckpt.MemoryStore()
    return ckpt.FsspecStore(f"{tmp_path}/store")


@pytest.fixture
def mgr(store: ckpt.Store) -> ckpt.CheckpointManager:
    return ckpt.CheckpointManager(store, namespace="codecs")


CTX = ckpt.RunContext(run_id="r1", correlation_id="c1")


def codec_of(mgr: ckpt.CheckpointManager, node: str) -> str:
    data = mgr.store.get(mgr.key_for(CTX, node))
    assert data is not None
    return str(read_header(data, "k")["codec"])


def round_trip(mgr: ckpt.CheckpointManager, value: Any, **kw: Any) -> Any:
    info = mgr.save(CTX, "node", value, **kw)
    assert info.size > 0 and info.checksum and info.checksum.startswith("blake3:")
    assert mgr.lookup(CTX, "node") is not None
    return mgr.load(CTX, "node")


EXACT: list[tuple[str, Any, str]] = [
    ("none", None, "json"),
    ("empty-bytes", b"", "raw"),
    ("bytes", b"\x00\xff" * 10, "raw"),
    ("empty-str", "", "json"),
    ("empty-list", [], "json"),
    ("empty-dict", {}, "json"),
    ("zero", 0, "json"),
    ("false", False, "json"),
    ("float", 0.1, "json"),
    ("neg-zero", -0.0, "json"),
    ("inf", float("inf"), "json"),
    ("big-int", 10**100, "json"),
    ("unicode", "日本語 \U0001f600 é", "json"),
    ("nested", {"a": [1, {"b": None, "c": [True, 2.5]}], "d": "x"}, "json"),
    ("empty-tuple", (), "pickle"),
    ("tuple", (1, "a", None), "pickle"),
    ("set", {1, 2, 3}, "pickle"),
    ("empty-set", set(), "pickle"),
    ("frozenset", frozenset({"a"}), "pickle"),
    ("int-keys", {1: "a"}, "pickle"),
    ("ordered", OrderedDict(a=1), "pickle"),
    ("complex", 1 + 2j, "pickle"),
    ("datetime", dt.datetime(2026, 11, 22, 3, tzinfo=dt.timezone.utc), "pickle"),
    ("decimal", decimal.Decimal("1.10"), "pickle"),
    ("enum", Color.RED, "pickle"),
    ("custom", Custom(3), "pickle"),
    ("huge-int", 10**5000, "pickle"),  # past JSON's digit limit
    ("model", Order(id=1, items=["a"]), "json"),
    ("dataclass", Point(1.5, -2.0, ("t",)), "json"),
    ("no-eq-dataclass", NoEq(1), "json"),
]


@pytest.mark.parametrize(("name", "value", "codec"), EXACT, ids=[e[0] for e in EXACT])
def test_exact_round_trip(mgr: ckpt.CheckpointManager, name: str, value: Any, codec: str) -> None:
    loaded = round_trip(mgr, value)
    if isinstance(value, NoEq):
        assert type(loaded) is NoEq and loaded.x == value.x
    else:
        assert loaded == value
    assert type(loaded) is type(value)
    assert codec_of(mgr, "node") == codec
    if name == "neg-zero":
        assert math.copysign(1, loaded) == -1


class _Key(str):
    pass


class _Count(int):
    pass


def _nested(depth: int) -> Any:
    value: Any = 1
    for i in range(depth):
        value = [value] if i % 2 else {"k": value}
    return value


def _types(value: Any) -> Any:
    """The type of ``value`` and, nested alike, of every key and element in it."""
    if isinstance(value, (list, tuple)):
        return type(value), [_types(item) for item in value]
    if isinstance(value, dict):
        return type(value), [(type(k), _types(v)) for k, v in value.items()]
    return type(value)


def _cyclic() -> list[Any]:
    value: list[Any] = [1]
    value.append([value])
    return value


# The exactness walk goes one nesting level at a time over all containers of the level: what it
# must still catch is one inexact key or value anywhere in a wide level, or deep below one.
WALKED: list[tuple[str, Any, str]] = [
    ("wide-rows", {"rows": [{"id": i, "v": i * 0.5, "t": ["a", None]} for i in range(50)]}, "json"),
    ("mixed-levels", [[1, {"a": [2.5, {"b": [True]}]}], {"c": []}, "s", None], "json"),
    ("tuple-in-a-later-row", {"rows": [{"t": [1]}, {"t": [1]}, {"t": [1, (2,)]}]}, "pickle"),
    ("str-subclass-key-in-a-later-row", [{"k": 1}, {"k": 2}, {_Key("k"): 3}], "pickle"),
    ("int-key-in-a-later-row", [{"k": 1}, {1: 2}], "pickle"),
    ("int-subclass-deep-in-a-list", [[1, 2], {"a": [{"b": _Count(1)}]}], "pickle"),
    ("dict-subclass-among-dicts", [{"a": 1}, OrderedDict(a=1)], "pickle"),
    ("deepest-allowed", _nested(201), "json"),
    ("one-level-too-deep", _nested(202), "pickle"),
    ("contains-itself", _cyclic(), "pickle"),
]


@pytest.mark.parametrize(("name", "value", "codec"), WALKED, ids=[w[0] for w in WALKED])
def test_json_takes_only_values_that_round_trip_exactly(
    mgr: ckpt.CheckpointManager, name: str, value: Any, codec: str
) -> None:
    mgr.save(CTX, "node", value)
    assert codec_of(mgr, "node") == codec
    if name != "contains-itself":  # pickle keeps the cycle; == on it would recurse forever
        loaded = mgr.load(CTX, "node")
        assert loaded == value
        assert _types(loaded) == _types(value)  # not only equal: the same types all the way down


def test_bytes_likes_keep_their_type(mgr: ckpt.CheckpointManager) -> None:
    assert round_trip(mgr, bytearray(b"ab")) == bytearray(b"ab")
    assert type(mgr.load(CTX, "node")) is bytearray
    strided = memoryview(b"abcdef")[::2]  # non-contiguous
    assert round_trip(mgr, strided) == b"ace"
    assert round_trip(mgr, memoryview(np.arange(3, dtype="<i2"))) == b"\x00\x00\x01\x00\x02\x00"


def test_nan_round_trips(mgr: ckpt.CheckpointManager) -> None:
    assert math.isnan(round_trip(mgr, float("nan")))
    assert math.isnan(round_trip(mgr, [float("nan")])[0])


def test_lone_surrogate_strings_round_trip(mgr: ckpt.CheckpointManager) -> None:
    assert round_trip(mgr, "a\udcffb") == "a\udcffb"
    assert codec_of(mgr, "node") == "json"
    # and as a node name and run id
    ctx = ckpt.RunContext(run_id="run\ud800", correlation_id="corr\udc80")
    mgr.save(ctx, "node\ud800\udc00", 1)
    assert mgr.load(ctx, "node\ud800\udc00") == 1


def test_none_is_a_hit_not_a_miss(mgr: ckpt.CheckpointManager) -> None:
    mgr.save(CTX, "nothing", None)
    assert mgr.load(CTX, "nothing") is None
    with pytest.raises(ckpt.CheckpointNotFound):
        mgr.load(CTX, "never-saved")


# -- models that JSON would change: auto falls back to pickle ----------------------------------


@pytest.mark.parametrize(
    "value",
    [
        Loose(payload=(1, 2)),  # tuple in an Any field would load as a list
        Loose(payload={1, 2}),
        Holder(inner=Derived(x=1, y=2)),  # subclass serialised as its base loses y
        pydantic.create_model("Floats", __module__=__name__, f=(float, ...))(f=float("nan")),
    ],
    ids=["tuple-in-any", "set-in-any", "subclass-field", "nan-field"],
)
def test_models_that_json_would_change_go_to_pickle(
    mgr: ckpt.CheckpointManager, value: pydantic.BaseModel
) -> None:
    if "Floats" in type(value).__name__:
        globals()["Floats"] = type(value)  # picklable by reference
    loaded = round_trip(mgr, value)
    assert codec_of(mgr, "node") == "pickle"
    assert type(loaded) is type(value)
    assert loaded.model_dump_json() == value.model_dump_json()
    if isinstance(value, Holder):
        assert type(loaded.inner) is Derived and loaded.inner.y == 2  # type: ignore[attr-defined]


def test_private_attributes_are_not_lost(mgr: ckpt.CheckpointManager) -> None:
    value = WithPrivate(x=1)
    value._cache = 42
    loaded = round_trip(mgr, value)
    assert loaded._cache == 42


def test_model_json_that_cannot_round_trip_without_pickle_is_refused(store: ckpt.Store) -> None:
    strict = ckpt.CheckpointManager(store, allow_pickle=False)
    with pytest.raises(ckpt.SerializationError) as err:
        strict.save(CTX, "n", Loose(payload=(1, 2)))
    assert "Loose" in str(err.value) and "round-trip" in str(err.value)


# -- numpy -------------------------------------------------------------------------------------

ARRAYS = {
    "f8": np.linspace(0, 1, 12).reshape(3, 4),
    "0d": np.array(3.5),
    "0d-int": np.array(7, dtype="<i4"),
    "empty": np.zeros((0, 3)),
    "empty-1d": np.array([], dtype="<u2"),
    "non-contiguous": np.arange(24).reshape(4, 6)[::2, 1::3],
    "fortran": np.asfortranarray(np.arange(6).reshape(2, 3)),
    "transposed": np.arange(6).reshape(2, 3).T,
    "big-endian": np.arange(5, dtype=">i4"),
    "bool": np.array([True, False]),
    "complex": np.array([1 + 2j]),
    "unicode": np.array(["ab", "日本"]),
    "bytes": np.array([b"a", b"bc"]),
    "datetime": np.array(["2026-11-22T03:00"], dtype="M8[m]"),
    "timedelta": np.array([5], dtype="m8[s]"),
    "structured": np.array([(1, 2.5, (1, 2))], dtype=[("a", "<i4"), ("b", "<f8"), ("c", "<i2", 2)]),
    "nested-struct": np.zeros(2, dtype=[("p", [("x", "<f4"), ("y", "<f4")]), ("n", "u1")]),
    "aligned-struct": np.zeros(2, dtype=np.dtype([("a", "u1"), ("b", "<i4")], align=True)),
    "offset-struct": np.zeros(
        2, dtype=np.dtype({"names": ["a", "b"], "formats": ["u1", "<i4"], "offsets": [0, 8]})
    ),
}


@pytest.mark.parametrize("name", list(ARRAYS))
def test_numpy_round_trip(mgr: ckpt.CheckpointManager, name: str) -> None:
    value = ARRAYS[name]
    loaded = round_trip(mgr, value)
    assert codec_of(mgr, "node") == "numpy"
    assert type(loaded) is np.ndarray
    assert loaded.dtype == value.dtype
    assert loaded.shape == value.shape
    assert loaded.tobytes() == np.ascontiguousarray(value).tobytes()
    assert loaded.flags.writeable  # whatever the backend
    if loaded.size:
        loaded.reshape(-1)[0] = loaded.reshape(-1)[-1]  # and actually writable


def test_object_arrays_and_subclasses_use_pickle(mgr: ckpt.CheckpointManager) -> None:
    obj = np.array([1, "a", None], dtype=object)
    assert list(round_trip(mgr, obj)) == [1, "a", None]
    assert codec_of(mgr, "node") == "pickle"
    masked = np.ma.masked_array([1, 2, 3], mask=[0, 1, 0])
    loaded = round_trip(mgr, masked)
    assert codec_of(mgr, "node") == "pickle"
    assert isinstance(loaded, np.ma.MaskedArray) and list(loaded.mask) == [False, True, False]


def test_pickled_arrays_are_writable_and_out_of_band(mgr: ckpt.CheckpointManager) -> None:
    value = {"a": np.arange(1000, dtype="<f8"), "b": [np.ones(3)]}
    info = mgr.save(CTX, "node", value)
    data = mgr.store.get(info.key)
    assert data is not None
    header = read_header(data, info.key)
    assert header["codec"] == "pickle" and len(header["parts"]) == 3  # main + 2 buffers
    loaded = mgr.load(CTX, "node")
    assert np.array_equal(loaded["a"], value["a"]) and np.array_equal(loaded["b"][0], np.ones(3))
    loaded["a"][0] = -1.0  # writable whatever the backend


# -- dataframes --------------------------------------------------------------------------------

FRAMES = {
    "empty": pd.DataFrame(),
    "empty-with-columns": pd.DataFrame({"a": pd.Series([], dtype="int64")}),
    "basic": pd.DataFrame({"a": [1, 2], "b": ["x", None], "c": [0.5, float("nan")]}),
    "int-columns": pd.DataFrame({0: [1, 2], 1: [3, 4]}),
    "named-index": pd.DataFrame({"a": [1, 2]}, index=pd.Index(["x", "y"], name="k")),
    "range-index": pd.DataFrame({"a": [1, 2, 3]}, index=pd.RangeIndex(5, 8)),
    "multi-index": pd.DataFrame(
        {"a": [1, 2]}, index=pd.MultiIndex.from_tuples([("a", 1), ("b", 2)], names=["p", "q"])
    ),
    "multi-columns": pd.DataFrame(
        [[1, 2]], columns=pd.MultiIndex.from_tuples([("a", "x"), ("a", "y")])
    ),
    "tz-index": pd.DataFrame(
        {"a": [1, 2]}, index=pd.DatetimeIndex(["2026-01-01", "2026-01-02"], tz="UTC", name="t")
    ),
    "categorical": pd.DataFrame({"c": pd.Categorical(["a", "b", "a"])}),
    "nullable": pd.DataFrame({"i": pd.array([1, None], dtype="Int64")}),
}


@pytest.mark.parametrize("name", list(FRAMES))
def test_pandas_round_trip(mgr: ckpt.CheckpointManager, name: str) -> None:
    value = FRAMES[name]
    loaded = round_trip(mgr, value)
    assert codec_of(mgr, "node") == "arrow"
    assert_frame_equal(loaded, value)


def test_empty_dataframe_is_a_hit(mgr: ckpt.CheckpointManager) -> None:
    mgr.save(CTX, "empty", pd.DataFrame())
    assert mgr.lookup(CTX, "empty") is not None
    assert mgr.load(CTX, "empty").empty


def test_frames_arrow_cannot_hold_fall_back_to_pickle(mgr: ckpt.CheckpointManager) -> None:
    mixed = pd.DataFrame({"o": [1, "a"]})
    assert_frame_equal(round_trip(mgr, mixed), mixed)
    assert codec_of(mgr, "node") == "pickle"
    dup = pd.DataFrame([[1, 2]], columns=["a", "a"])
    assert_frame_equal(round_trip(mgr, dup), dup)
    strict = ckpt.CheckpointManager(mgr.store, allow_pickle=False)
    with pytest.raises(ckpt.SerializationError, match="Duplicate column names"):
        strict.save(CTX, "dup", dup)


def test_polars_and_pyarrow_round_trip(mgr: ckpt.CheckpointManager) -> None:
    frame = pl.DataFrame({"a": [1, 2], "b": ["x", None]})
    loaded = round_trip(mgr, frame)
    assert isinstance(loaded, pl.DataFrame) and loaded.equals(frame)
    assert round_trip(mgr, pl.DataFrame()).shape == (0, 0)
    table = pa.table({"a": [1, 2]})
    assert round_trip(mgr, table).equals(table)
    assert codec_of(mgr, "node") == "arrow"


# -- schema= on load ---------------------------------------------------------------------------


def test_schema_model_to_dict_and_back(mgr: ckpt.CheckpointManager) -> None:
    mgr.save(CTX, "order", Order(id=1, items=["a"]))
    assert mgr.load(CTX, "order") == Order(id=1, items=["a"])
    assert mgr.load(CTX, "order", schema=dict) == {"id": 1, "items": ["a"]}
    assert mgr.load(CTX, "order", schema=OrderV2) == OrderV2(id=1, items=["a"], note="none")
    mgr.save(CTX, "plain", {"id": "7", "items": []})
    assert mgr.load(CTX, "plain", schema=Order) == Order(id=7)  # coerced like pydantic does
    info = mgr.save(CTX, "order", Order(id=2))
    assert info.schema == f"pydantic:{__name__}:Order"


def test_schema_mismatch_names_the_type(mgr: ckpt.CheckpointManager) -> None:
    mgr.save(CTX, "plain", {"nope": 1})
    with pytest.raises(ckpt.SchemaMismatch, match="Order"):
        mgr.load(CTX, "plain", schema=Order)
    mgr.save(CTX, "set", {1, 2})  # pickle record, validated after decoding
    with pytest.raises(ckpt.SchemaMismatch, match="Order"):
        mgr.load(CTX, "set", schema=Order)
    with pytest.raises(ckpt.SchemaMismatch, match="ndarray"):
        mgr.load(CTX, "set", schema=np.ndarray)  # pydantic cannot even build a validator


def test_schema_with_generics_and_non_json_records(mgr: ckpt.CheckpointManager) -> None:
    mgr.save(CTX, "t", (1, "2"))
    assert mgr.load(CTX, "t", schema=list[int]) == [1, 2]
    assert mgr.load(CTX, "t", schema=tuple) == (1, "2")
    mgr.save(CTX, "arr", np.arange(3))
    assert isinstance(mgr.load(CTX, "arr", schema=np.ndarray), np.ndarray)


def test_record_of_a_class_that_no_longer_imports(mgr: ckpt.CheckpointManager) -> None:
    key = mgr.key_for(CTX, "gone")
    header = {
        "codec": "json",
        "schema": "pydantic:no_such_module_xyz:Order",
        "ns": "codecs",
        "node": "gone",
    }
    mgr.store.put(key, Record(header, [b'{"id": 3, "items": []}'], None).to_bytes())
    with pytest.raises(ckpt.SchemaMismatch, match=r"no_such_module_xyz.*schema="):
        mgr.load(CTX, "gone")
    assert mgr.load(CTX, "gone", schema=Order) == Order(id=3)


# -- pickle policy and explicit codecs --------------------------------------------------------


def test_allow_pickle_false_names_node_and_type(store: ckpt.Store) -> None:
    strict = ckpt.CheckpointManager(store, allow_pickle=False)
    with pytest.raises(ckpt.SerializationError) as err:
        strict.save(CTX, "step-7", Custom(1))
    msg = str(err.value)
    assert "step-7" in msg and "test_codecs.Custom" in msg and "allow_pickle=True" in msg
    with pytest.raises(ckpt.SerializationError, match="tuple"):
        strict.save(CTX, "n", (1, 2))
    with pytest.raises(ckpt.SerializationError, match="set"):
        strict.save(CTX, "n", {1}, codec="pickle")
    # Everything else still works without pickle.
    for value in (None, b"", {"a": [1]}, Order(id=1), np.arange(2), pd.DataFrame({"a": [1]})):
        strict.save(CTX, "ok", value)


def test_loading_a_pickle_record_needs_allow_pickle(store: ckpt.Store) -> None:
    ckpt.CheckpointManager(store).save(CTX, "p", {1, 2})
    with pytest.raises(ckpt.SerializationError, match="allow_pickle=True"):
        ckpt.CheckpointManager(store, allow_pickle=False).load(CTX, "p")


def test_pickle_modules_allowlist(store: ckpt.Store) -> None:
    ckpt.CheckpointManager(store).save(CTX, "c", Custom(5))
    limited = ckpt.CheckpointManager(store, pickle_modules=["numpy"])
    with pytest.raises(ckpt.SerializationError, match=r"tests.*pickle_modules"):
        limited.load(CTX, "c")
    trusting = ckpt.CheckpointManager(store, pickle_modules=["tests"])
    assert trusting.load(CTX, "c") == Custom(5)


@pytest.mark.parametrize(
    ("value", "codec"),
    [("text", "raw"), ((1, 2), "json"), ([1], "numpy"), ({"a": 1}, "arrow")],
)
def test_explicit_codec_that_cannot_hold_the_value(
    mgr: ckpt.CheckpointManager, value: Any, codec: str
) -> None:
    with pytest.raises(ckpt.SerializationError) as err:
        mgr.save(CTX, "forced", value, codec=codec)
    assert repr(codec) in str(err.value) and type(value).__name__ in str(err.value)
    assert "forced" in str(err.value)


def test_explicit_codec_is_used(mgr: ckpt.CheckpointManager) -> None:
    assert round_trip(mgr, {"a": 1}, codec="pickle") == {"a": 1}
    assert codec_of(mgr, "node") == "pickle"
    ckpt.CheckpointManager(mgr.store, namespace="codecs", codec="pickle").save(CTX, "node", [1])
    assert codec_of(mgr, "node") == "pickle"


def test_unknown_codec(mgr: ckpt.CheckpointManager) -> None:
    with pytest.raises(ckpt.SerializationError, match="unknown codec 'zstd'"):
        mgr.save(CTX, "n", b"", codec="zstd")


def test_unpicklable_value(mgr: ckpt.CheckpointManager) -> None:
    with pytest.raises(ckpt.SerializationError, match="function"):
        mgr.save(CTX, "n", lambda: 1)

"""Argument fingerprints: stable across processes, equal for equal calls, different otherwise."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import threading
import types
from typing import Any

import numpy as np
import pandas as pd
import pytest

import ckpt_core as ckpt
from ckpt_core.fingerprint import fingerprint_call, fingerprint_value

# Built the same way here and in fresh interpreters with other hash seeds.
VALUES_SOURCE = r"""
import dataclasses, datetime, decimal, enum, pathlib, uuid
import numpy as np, pandas as pd, polars as pl, pyarrow as pa, pydantic

class Color(enum.Enum):
    RED = 1

@dataclasses.dataclass
class Point:
    x: int
    y: str

class Model(pydantic.BaseModel):
    a: int
    b: list[str]

VALUES = {
    "none": None, "true": True, "int": 12345678901234567890, "neg": -1, "float": 0.1,
    "nan": float("nan"), "str": "héllo \U0001f600", "bytes": b"\x00\xff",
    "list": [1, [2, "3"]], "tuple": (1, 2), "set": {"b", "a", "c"},
    "frozenset": frozenset({1, 2}), "dict": {"z": 1, "a": [None, {"k": 2.5}]},
    "int-keys": {3: "c", 1: "a", 2: "b"},
    "enum": Color.RED, "date": datetime.date(2026, 11, 22),
    "datetime": datetime.datetime(2026, 11, 22, 3, 4, 5, tzinfo=datetime.timezone.utc),
    "uuid": uuid.UUID(int=7), "decimal": decimal.Decimal("1.10"),
    "path": pathlib.PurePosixPath("/data/x.csv"),
    "dataclass": Point(1, "y"), "model": Model(a=1, b=["x"]),
    "ndarray": np.arange(12, dtype="<f8").reshape(3, 4),
    "np-scalar": np.float32(1.5),
    "structured": np.zeros(2, dtype=[("a", "<i4"), ("b", "<f8")]),
    "pandas": pd.DataFrame({"a": [1, 2], "b": ["x", "y"]}, index=["i", "j"]),
    "series": pd.Series([1.0, 2.0], name="s"),
    "polars": pl.DataFrame({"a": [1, 2]}),
    "arrow": pa.table({"a": [1, 2]}),
}
"""


def _load_values(source: str) -> dict[str, Any]:
    """Run ``source`` as a real module named ``fp_values`` (class identity is part of a
    fingerprint, so the parent and the children must name the classes the same way)."""
    module = types.ModuleType("fp_values")
    sys.modules["fp_values"] = module
    exec(compile(source, "fp_values", "exec", dont_inherit=True), module.__dict__)
    return module.VALUES  # type: ignore[no-any-return]


CHILD = r"""
import json, sys, types
module = types.ModuleType("fp_values")
sys.modules["fp_values"] = module
exec(sys.stdin.read(), module.__dict__)
from ckpt_core.fingerprint import fingerprint_value
json.dump({k: fingerprint_value(v) for k, v in module.VALUES.items()}, sys.stdout)
"""


def _in_subprocess(hash_seed: str) -> dict[str, str]:
    env = {**os.environ, "PYTHONHASHSEED": hash_seed}
    out = subprocess.run(
        [sys.executable, "-c", CHILD],
        input=VALUES_SOURCE,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout)  # type: ignore[no-any-return]


def test_stable_across_processes_and_hash_seeds() -> None:
    here = {k: fingerprint_value(v) for k, v in _load_values(VALUES_SOURCE).items()}
    results: list[dict[str, str]] = []
    threads = [
        threading.Thread(target=lambda s=seed: results.append(_in_subprocess(s)))
        for seed in ("1", "4242")
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 2
    for other in results:
        assert other == here
    assert len(set(here.values())) == len(here)  # and all distinct


def f(x: Any, y: Any = 2, *args: Any, z: Any = None, **kwargs: Any) -> None:
    pass


def test_bound_arguments_not_spelling() -> None:
    assert fingerprint_call(f, (1,), {}) == fingerprint_call(f, (), {"x": 1})
    assert fingerprint_call(f, (1,), {}) == fingerprint_call(f, (1, 2), {})  # default applied
    assert fingerprint_call(f, (1,), {"z": 3, "w": 4}) == fingerprint_call(
        f, (), {"w": 4, "x": 1, "z": 3}
    )


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ((1,), (2,)),
        ((1,), (True,)),
        ((1,), (1.0,)),
        ((1,), ("1",)),
        (([1],), ((1,),)),
        ((b"a",), ("a",)),
        ((None,), ("None",)),
        ((0.0,), (-0.0,)),
        (("a", "b"), ("ab", "")),
        (([1, 2],), ([2, 1],)),
        (({"a": 1},), ({"a": 2},)),
        (({"a": 1},), ({"b": 1},)),
        ((1, 3), (1, 2, 3)),  # extra *args
        ((1,), (1, 2, 3)),
    ],
)
def test_different_arguments_differ(a: tuple[Any, ...], b: tuple[Any, ...]) -> None:
    assert fingerprint_call(f, a, {}) != fingerprint_call(f, b, {})


def test_order_insensitive_where_python_is() -> None:
    assert fingerprint_value({"a": 1, "b": 2}) == fingerprint_value({"b": 2, "a": 1})
    assert fingerprint_value({3, 1, 2}) == fingerprint_value({1, 2, 3})
    # Keys of mixed types sort by digest, never by comparing values.
    assert fingerprint_value({1: [1], "1": [2]}) == fingerprint_value({"1": [2], 1: [1]})


def test_numpy_content_hashing() -> None:
    a = np.arange(6, dtype="<i8").reshape(2, 3)
    assert fingerprint_value(a) == fingerprint_value(a.copy())
    assert fingerprint_value(a) == fingerprint_value(np.asfortranarray(a))  # same content
    changed = a.copy()
    changed[1, 2] = 99
    assert fingerprint_value(a) != fingerprint_value(changed)
    assert fingerprint_value(a) != fingerprint_value(a.astype("<i4"))
    assert fingerprint_value(a) != fingerprint_value(a.reshape(3, 2))
    assert fingerprint_value(a) != fingerprint_value(a.T)
    assert fingerprint_value(np.array(5)) != fingerprint_value(np.array([5]))
    ab = np.zeros(2, dtype=[("a", "<i4"), ("b", "<i4")])
    xy = np.zeros(2, dtype=[("x", "<i4"), ("y", "<i4")])
    assert fingerprint_value(ab) != fingerprint_value(xy)


def test_pandas_content_hashing() -> None:
    df = pd.DataFrame({"a": [1, 2], "b": ["x", "y"]})
    assert fingerprint_value(df) == fingerprint_value(df.copy())
    changed = df.copy()
    changed.loc[1, "a"] = 3
    assert fingerprint_value(df) != fingerprint_value(changed)
    assert fingerprint_value(df) != fingerprint_value(df.rename(columns={"a": "c"}))
    assert fingerprint_value(df) != fingerprint_value(df.set_axis([5, 6]))
    assert fingerprint_value(df) != fingerprint_value(df.astype({"a": "float64"}))
    one = pd.DataFrame({"o": pd.Series([1, "x"], dtype=object)})
    text = pd.DataFrame({"o": pd.Series(["1", "x"], dtype=object)})
    assert fingerprint_value(one) != fingerprint_value(text)  # pandas alone hashes str(cell)
    assert fingerprint_value(pd.Series([1, 2])) != fingerprint_value(pd.DataFrame({0: [1, 2]}))


class Client:
    """Something without a stable content hash (a connection, a session...)."""


@pytest.mark.parametrize(
    "bad",
    [
        Client(),
        lambda: 1,
        np.array([object()], dtype=object),
        np.ma.masked_array([1, 2], mask=[0, 1]),
        pd.DataFrame({"l": [[1], [2]]}),
        [Client()],
        {"k": Client()},
    ],
    ids=["object", "lambda", "object-array", "masked", "list-cells", "nested-list", "nested-dict"],
)
def test_unsupported_arguments_name_the_argument(bad: Any) -> None:
    def step(rows: Any, conn: Any) -> None:
        pass

    with pytest.raises(ckpt.InvalidKey) as err:
        fingerprint_call(step, (1,), {"conn": bad})
    msg = str(err.value)
    assert "'conn'" in msg and "step()" in msg and "key=" in msg


def test_self_referencing_values_are_refused_not_looped() -> None:
    loop: list[Any] = []
    loop.append(loop)
    with pytest.raises(ckpt.InvalidKey, match="'x'"):
        fingerprint_call(f, (loop,), {})


def test_bad_binding_is_a_type_error_naming_the_function() -> None:
    with pytest.raises(TypeError, match="f\\(\\)"):
        fingerprint_call(f, (), {})


def test_dataclass_and_model_fingerprints_follow_content() -> None:
    @dataclasses.dataclass
    class P:
        x: int

    assert fingerprint_value(P(1)) == fingerprint_value(P(1))
    assert fingerprint_value(P(1)) != fingerprint_value(P(2))


def test_lazy_frames_are_refused_naming_their_type() -> None:
    import polars as pl

    def step(frame: Any) -> None:
        pass

    with pytest.raises(ckpt.InvalidKey, match="LazyFrame"):
        fingerprint_call(step, (pl.DataFrame({"a": [1]}).lazy(),), {})

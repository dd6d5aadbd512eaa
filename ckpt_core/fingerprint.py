"""Stable fingerprints of function arguments, so mapped calls get their own checkpoints.

The fingerprint is a sha256 over a canonical, type-tagged encoding of the bound arguments. It is the
same in every process and Python session (no ``hash()``, no ``id()``, no pickle). Supported, by
content: ``None``, bool, int, float, str, bytes, lists/tuples/sets/dicts of these, pydantic models,
dataclasses, enums, dates/datetimes/UUIDs/Decimals/paths, numpy arrays and scalars, pandas and
polars DataFrames/Series and pyarrow tables. Anything else raises :class:`InvalidKey` naming the
argument and suggesting ``key=``.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import decimal
import enum
import hashlib
import inspect
import pathlib
import struct
import sys
import uuid
from collections.abc import Callable, Mapping
from typing import Any

from .errors import InvalidKey

_MAX_DEPTH = 100


class _Unsupported(Exception):
    def __init__(self, value: Any) -> None:
        self.value = value


def _update(h: Any, tag: bytes, payload: bytes) -> None:
    h.update(tag)
    h.update(struct.pack(">Q", len(payload)))
    h.update(payload)


def _qualified(cls: type) -> bytes:
    return f"{cls.__module__}.{cls.__qualname__}".encode()


def _feed(h: Any, value: Any, depth: int = 0) -> None:
    if depth > _MAX_DEPTH:
        raise _Unsupported(value)
    t = type(value)
    if value is None:
        h.update(b"N")
    elif t is bool:
        h.update(b"T" if value else b"F")
    elif t is int:
        _update(h, b"i", str(value).encode())
    elif t is float:
        _update(h, b"f", value.hex().encode())
    elif t is str:
        _update(h, b"s", value.encode("utf-8", "surrogatepass"))
    elif t in (bytes, bytearray, memoryview):
        _update(h, b"b", bytes(value))
    elif t in (list, tuple):
        _update(h, b"l" if t is list else b"t", str(len(value)).encode())
        for item in value:
            _feed(h, item, depth + 1)
    elif t in (set, frozenset):
        digests = sorted(fingerprint_value(v) for v in value)
        _update(h, b"S", "".join(digests).encode())
    elif isinstance(value, Mapping):
        # Sort on the key digest only: comparing values on a tie would raise for most types.
        items = sorted(((fingerprint_value(k), v) for k, v in value.items()), key=lambda kv: kv[0])
        _update(h, b"d", str(len(items)).encode())
        for kdigest, v in items:
            _update(h, b"k", kdigest.encode())
            _feed(h, v, depth + 1)
    elif isinstance(value, enum.Enum):
        _update(h, b"e", _qualified(t) + b":" + value.name.encode())
    elif isinstance(value, (_dt.datetime, _dt.date, _dt.time, _dt.timedelta)):
        _update(h, b"D", _qualified(t) + b":" + repr(value).encode())
    elif isinstance(value, (uuid.UUID, decimal.Decimal, pathlib.PurePath)):
        _update(h, b"V", _qualified(t) + b":" + str(value).encode())
    elif _is_pydantic(value):
        _update(h, b"P", _qualified(t))
        _feed(h, value.model_dump(mode="python"), depth + 1)
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        _update(h, b"C", _qualified(t))
        for f in dataclasses.fields(value):
            _update(h, b"k", f.name.encode())
            _feed(h, getattr(value, f.name), depth + 1)
    elif t.__module__.split(".")[0] in ("numpy", "pandas", "polars", "pyarrow"):
        _feed_array_like(h, value, t)
    else:
        raise _Unsupported(value)


def _is_pydantic(value: Any) -> bool:
    module = sys.modules.get("pydantic")
    return module is not None and isinstance(value, module.BaseModel)


def _feed_array_like(h: Any, value: Any, t: type) -> None:
    lib = t.__module__.split(".")[0]
    if lib == "numpy":
        import numpy as np

        if isinstance(value, np.generic):
            value = np.asarray(value)
        # Exactly ndarray: a subclass (masked array, matrix) carries state its buffer does not.
        if type(value) is not np.ndarray or value.dtype.hasobject:
            raise _Unsupported(value)
        # descr, not dtype.str: a structured dtype's str is only its size ("|V8"), so arrays whose
        # fields differ in name or type would otherwise hash alike.
        dtype = repr(value.dtype.descr) if value.dtype.names else value.dtype.str
        _update(h, b"A", f"{dtype}:{value.shape}".encode())
        h.update(np.ascontiguousarray(value).reshape(-1).view(np.uint8).data)
        return
    if lib == "pandas":
        import pandas as pd

        if not isinstance(value, (pd.DataFrame, pd.Series)):
            raise _Unsupported(value)
        is_series = isinstance(value, pd.Series)
        frame = value.to_frame() if is_series else value
        _update(
            h,
            b"z" if is_series else b"Z",
            repr((list(map(str, frame.columns)), list(map(str, frame.dtypes)))).encode(),
        )
        try:
            hashed = pd.util.hash_pandas_object(frame, index=True).to_numpy()
        except Exception:  # unhashable cells (lists, dicts) in an object column
            raise _Unsupported(value) from None
        h.update(memoryview(hashed).cast("B"))
        # pandas hashes object cells by their str(), so 1 and "1" would collide: feed object
        # columns (and an object index) value by value, with their types.
        for i, dtype in enumerate(frame.dtypes):
            if dtype.kind == "O":
                _feed(h, frame.iloc[:, i].tolist())
        if frame.index.dtype.kind == "O":
            _feed(h, frame.index.tolist())
        return
    if lib == "polars":
        if not hasattr(value, "to_arrow"):  # a LazyFrame: its content is not computed yet
            raise _Unsupported(value)
        value = value.to_arrow()
    import pyarrow as pa

    if isinstance(value, pa.ChunkedArray | pa.Array):
        value = pa.table({"_": value})
    if isinstance(value, pa.RecordBatch):
        value = pa.Table.from_batches([value])
    if not isinstance(value, pa.Table):
        raise _Unsupported(value)
    _update(h, b"R", _qualified(t))  # a polars frame and an equal pyarrow table are not one input
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, value.schema) as writer:
        writer.write_table(value)
    h.update(memoryview(sink.getvalue()))


def fingerprint_value(value: Any) -> str:
    """Hex sha256 of one value's canonical encoding; raises ``_Unsupported`` internally."""
    h = hashlib.sha256()
    _feed(h, value)
    return h.hexdigest()


def fingerprint_call(fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
    """Fingerprint of a call's bound arguments (defaults applied, so ``f(1)`` == ``f(x=1)``)."""
    try:
        bound = inspect.signature(fn).bind(*args, **kwargs)
    except TypeError as exc:
        raise TypeError(f"{fn.__qualname__}(): {exc}") from None
    bound.apply_defaults()
    h = hashlib.sha256()
    for name, value in bound.arguments.items():
        _update(h, b"a", name.encode())
        try:
            _feed(h, value)
        except _Unsupported as exc:
            bad = type(exc.value)
            raise InvalidKey(
                f"cannot fingerprint argument {name!r} of {fn.__qualname__}(): "
                f"{bad.__module__}.{bad.__qualname__} has no stable content hash. Pass "
                f"key=lambda ...: <a str identifying the input> to @checkpointed, or give the "
                f"step JSON-able arguments"
            ) from None
    return h.hexdigest()

"""``numpy``: plain (non-object) numpy arrays as their raw buffer, no pickle needed.

The schema reference records dtype and shape (``numpy:{"descr": "<f8", "shape": [3, 4]}``); the
payload is the C-contiguous data. Loading returns a writable array that views the loaded record
when the store returned writable memory (the local store does), so a large array costs one copy in
memory, not two; over read-only memory (the memory store's shared ``bytes``) it is copied, so a
loaded array is writable whatever the backend.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import Any

from ..errors import CheckpointCorrupted
from .base import Encoded

_PREFIX = "numpy:"
#: numpy's own limit on the number of dimensions.
_MAX_DIMS = 64


class NumpyCodec:
    name = "numpy"

    def accepts(self, value: Any) -> bool:
        cls = type(value)
        return cls.__name__ == "ndarray" and cls.__module__ == "numpy" and not value.dtype.hasobject

    def encode(self, value: Any) -> Encoded:
        import numpy as np

        # Not np.ascontiguousarray: it turns a 0-d array into shape (1,).
        array = value if value.flags.c_contiguous else value.copy(order="C")
        descr = np.lib.format.dtype_to_descr(array.dtype)
        schema = _PREFIX + json.dumps({"descr": descr, "shape": list(value.shape)})
        data = array.reshape(-1).view(np.uint8).data if array.size else memoryview(b"")
        return Encoded(schema, [data])

    def decode(self, parts: Sequence[memoryview], schema: str | None, want: Any = None) -> Any:
        import numpy as np

        (part,) = parts
        dtype, shape = _spec(schema, len(part))
        if not len(part):
            return np.empty(shape, dtype=dtype)  # a zero-size array: allocates nothing
        # Over read-only memory, copy the bytes (not ndarray.copy(), which skips the padding of
        # aligned structured dtypes) so the array is writable and byte-exact.
        flat = np.frombuffer(bytearray(part) if part.readonly else part, dtype=dtype)
        return flat.reshape(shape)


def _spec(schema: Any, nbytes: int) -> tuple[Any, tuple[int, ...]]:
    """dtype and shape from a record's schema, checked against its payload before anything is
    allocated: the header may come from someone who can write the store (a checksum does not
    stop them), so an object dtype, a negative dimension or a shape whose size differs from the
    payload (``[10**6, 10**6]`` over an empty payload would be an 8 TB ``np.empty``) is refused.
    """
    import numpy as np

    if not isinstance(schema, str) or not schema.startswith(_PREFIX):
        raise CheckpointCorrupted(f"numpy record without a dtype/shape schema: {schema!r:.200}")
    try:
        spec = json.loads(schema[len(_PREFIX) :])
        descr, shape = spec["descr"], spec["shape"]
        dtype = np.lib.format.descr_to_dtype(
            [tuple(f) for f in descr] if isinstance(descr, list) else descr
        )
    except (ValueError, TypeError, KeyError, IndexError, RecursionError) as exc:
        raise CheckpointCorrupted(
            f"numpy record with an unreadable dtype/shape schema ({type(exc).__name__}: "
            f"{str(exc)[:200]})"
        ) from None
    if not isinstance(dtype, np.dtype) or dtype.hasobject:
        raise CheckpointCorrupted(
            f"numpy record declares dtype {dtype!r:.200}, which holds objects"
        )
    if (
        not isinstance(shape, list)
        or len(shape) > _MAX_DIMS
        or not all(type(d) is int and d >= 0 for d in shape)
    ):
        raise CheckpointCorrupted(f"numpy record declares an invalid shape {shape!r:.200}")
    expected = math.prod(shape) * dtype.itemsize  # Python ints: no overflow
    if expected != nbytes:
        raise CheckpointCorrupted(
            f"numpy record declares {dtype} {tuple(shape)} ({expected} bytes), but its payload "
            f"holds {nbytes} bytes"
        )
    return dtype, tuple(shape)

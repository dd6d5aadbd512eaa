"""``numpy``: plain (non-object) numpy arrays as their raw buffer, no pickle needed.

The schema reference records dtype and shape (``numpy:{"descr": "<f8", "shape": [3, 4]}``); the
payload is the C-contiguous data. Loading returns a writable array that views the loaded record
when the store returned writable memory (the local store does), so a large array costs one copy in
memory, not two; over read-only memory (the memory store's shared ``bytes``) it is copied, so a
loaded array is writable whatever the backend.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from ..errors import CheckpointCorrupted
from .base import Encoded

_PREFIX = "numpy:"


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

        if not schema or not schema.startswith(_PREFIX):
            raise CheckpointCorrupted(f"numpy record without a dtype/shape schema: {schema!r}")
        spec = json.loads(schema[len(_PREFIX) :])
        dtype = np.lib.format.descr_to_dtype(
            [tuple(f) for f in spec["descr"]] if isinstance(spec["descr"], list) else spec["descr"]
        )
        shape = tuple(spec["shape"])
        (part,) = parts
        if not len(part):
            return np.empty(shape, dtype=dtype)
        # Over read-only memory, copy the bytes (not ndarray.copy(), which skips the padding of
        # aligned structured dtypes) so the array is writable and byte-exact.
        flat = np.frombuffer(bytearray(part) if part.readonly else part, dtype=dtype)
        return flat.reshape(shape)

"""``pickle``: protocol 5 with out-of-band buffers, the fallback for everything else.

Large buffers (numpy arrays, ``PickleBuffer`` objects) are written as separate parts of the record
instead of being copied into the pickle stream, and on load they are handed back to ``pickle.loads``
as views over the loaded record: no second copy either way. (Over read-only memory, such as the
memory store's shared ``bytes``, out-of-band buffers are copied, so a revived numpy array is
writable whatever the backend.)

Loading a pickle runs code chosen by whoever wrote the record. The manager refuses pickle records
unless ``allow_pickle=True``; ``pickle_modules=`` limits which top-level modules may be revived.
"""

from __future__ import annotations

import io
import pickle
from collections.abc import Collection, Sequence
from typing import Any

from ..errors import SerializationError
from .base import Encoded, type_name


class _AllowlistUnpickler(pickle.Unpickler):
    def __init__(self, file: Any, allowed: Collection[str], buffers: Any) -> None:
        super().__init__(file, buffers=buffers)
        self._allowed = allowed

    def find_class(self, module: str, name: str) -> Any:
        top = module.split(".", 1)[0]
        if top not in self._allowed:
            raise SerializationError(
                f"pickle record needs {module}.{name}, but module {top!r} is not in "
                f"pickle_modules={sorted(self._allowed)!r}; add it if you trust this store"
            )
        return super().find_class(module, name)


# builtins and the stdlib modules pickle itself needs for containers are always allowed.
_ALWAYS = frozenset({"builtins", "copyreg", "collections", "datetime", "decimal", "_codecs"})


class PickleCodec:
    name = "pickle"

    def __init__(self, allowed_modules: Collection[str] | None = None) -> None:
        self.allowed_modules = (
            None if allowed_modules is None else frozenset(allowed_modules) | _ALWAYS
        )

    def accepts(self, value: Any) -> bool:
        return True

    def encode(self, value: Any) -> Encoded:
        out_of_band: list[pickle.PickleBuffer] = []
        try:
            main = pickle.dumps(value, protocol=5, buffer_callback=out_of_band.append)
            views = [pb.raw() for pb in out_of_band]
        except BufferError:
            # A non-contiguous buffer cannot be referenced out of band; pickle it in-band.
            main, views = pickle.dumps(value, protocol=5), []
        except Exception as exc:
            raise SerializationError(f"cannot pickle {type_name(value)}: {exc}") from None
        return Encoded(None, [main, *views])

    def decode(self, parts: Sequence[memoryview], schema: str | None, want: Any = None) -> Any:
        main = parts[0]
        buffers = [part if not part.readonly else bytearray(part) for part in parts[1:]]
        if self.allowed_modules is None:
            return pickle.loads(main, buffers=buffers)
        return _AllowlistUnpickler(io.BytesIO(main), self.allowed_modules, buffers).load()

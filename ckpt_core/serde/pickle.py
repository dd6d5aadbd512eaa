"""``pickle``: protocol 5 with out-of-band buffers, the fallback for everything else.

Large buffers (numpy arrays, ``PickleBuffer`` objects) are written as separate parts of the record
instead of being copied into the pickle stream, and on load they are handed back to ``pickle.loads``
as views over the loaded record: no second copy either way. (Over read-only memory, such as the
memory store's shared ``bytes``, out-of-band buffers are copied, so a revived numpy array is
writable whatever the backend.)

Loading a pickle runs code chosen by whoever wrote the record. The manager refuses pickle records
unless ``allow_pickle=True``; ``pickle_modules=`` limits which top-level modules may be revived
(plus the plain data types of ``builtins``, ``collections``, ``datetime`` and ``decimal``; never
``builtins.eval`` and friends). It stops code from other modules, not a record that asks an allowed
module for a lot of memory: only load pickles from stores you trust.
"""

from __future__ import annotations

import builtins
import io
import pickle
from collections.abc import Collection, Sequence
from typing import Any

from ..errors import SerializationError
from .base import Encoded, type_name


class _AllowlistUnpickler(pickle.Unpickler):
    """Revives only what ``find_class`` allows: any name of a module the user listed, and from
    the stdlib modules every pickle needs only the data types in :data:`_SAFE_NAMES` (never
    ``builtins.eval``, ``getattr`` or ``__import__``, which would run code chosen by the writer).
    """

    def __init__(self, file: Any, allowed: Collection[str], buffers: Any) -> None:
        super().__init__(file, buffers=buffers)
        self._allowed = allowed

    def find_class(self, module: str, name: str) -> Any:
        top = module.split(".", 1)[0]
        if top in self._allowed:
            found = super().find_class(module, name)
            # A dotted name can walk out of the module (``mymod.os.system`` when mymod imported
            # os): what it reaches must belong to an allowed module too.
            owner = getattr(found, "__module__", None)
            if not isinstance(owner, str) or owner.split(".", 1)[0] in self._allowed:
                return found
            where = f"{module}.{name}, which is {owner}.{getattr(found, '__qualname__', name)}"
        elif module in _SAFE_NAMES and name in _SAFE_NAMES[module]:
            return super().find_class(module, name)
        else:
            where = f"{module}.{name}"
        raise SerializationError(
            f"pickle record needs {where}, but module {top!r} is not in "
            f"pickle_modules={sorted(self._allowed)!r}; add it if you trust this store"
        )


#: What a restricted unpickler revives from the stdlib without being told: plain data types.
#: List a module in ``pickle_modules`` (even ``"builtins"``) to allow all of it.
_SAFE_BUILTINS = {
    "bool", "bytearray", "bytes", "complex", "dict", "float", "frozenset", "int", "list",
    "object", "range", "set", "slice", "str", "tuple", "type", "Ellipsis", "NotImplemented",
}  # fmt: skip
_SAFE_NAMES: dict[str, frozenset[str]] = {
    "builtins": frozenset(_SAFE_BUILTINS)
    | {
        n for n, v in vars(builtins).items() if isinstance(v, type) and issubclass(v, BaseException)
    },
    "collections": frozenset({"ChainMap", "Counter", "OrderedDict", "defaultdict", "deque"}),
    "copyreg": frozenset({"_reconstructor"}),
    "datetime": frozenset({"date", "datetime", "time", "timedelta", "timezone", "tzinfo"}),
    "decimal": frozenset({"Decimal"}),
    "_codecs": frozenset({"encode"}),
}


class PickleCodec:
    name = "pickle"

    def __init__(self, allowed_modules: Collection[str] | None = None) -> None:
        self.allowed_modules = None if allowed_modules is None else frozenset(allowed_modules)

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

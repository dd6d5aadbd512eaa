"""``json``: JSON types, pydantic models and dataclasses, which come back as their own type.

The schema reference records what to revive: ``json`` (plain data), ``pydantic:<module>:<qualname>``
or ``dataclass:<module>:<qualname>``. Plain data is accepted only if it round-trips exactly
(dicts with ``str`` keys, lists, str, int, float, bool, None): a tuple or a set would come back as a
list, so ``auto`` sends those to another codec instead of silently changing them. Models and
dataclasses are held to the same rule: after encoding, the JSON is validated back and compared with
the value, so a model whose JSON would load differently (a NaN field, a tuple in an ``Any`` field,
a subclass instance in a field typed as its base, a private attribute) is refused and ``auto``
falls through to pickle instead of saving a checkpoint that cannot load or loads wrong. This costs
one parse per save of a model, which is small next to writing it.

On load, ``schema=`` validates and coerces the JSON directly
(``TypeAdapter(schema).validate_json``), so a record can be read as a newer model version or
as a plain ``dict``.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import json
import sys
from collections.abc import Collection, Iterable, Sequence
from itertools import chain
from typing import Any

from ..errors import SchemaMismatch, SerializationError
from .base import Encoded, type_name

_PLAIN = "json"
_MAX_DEPTH = 200


_SCALARS = frozenset({str, int, float, bool, type(None)})
_STR_ONLY = frozenset({str})
_JSON_TYPES = _SCALARS | {list, dict}


#: The payload encoders, built once (``json.dumps`` with options builds one per call). No
#: ``check_circular``: ``accepts`` (:func:`_is_plain_json`) has already refused values nested
#: deeper than :data:`_MAX_DEPTH`, cycles included, and the C encoder still stops a cycle
#: passed to ``encode`` directly with a ``RecursionError``.
_encode_utf8 = json.JSONEncoder(
    ensure_ascii=False, separators=(",", ":"), check_circular=False
).encode
_encode_ascii = json.JSONEncoder(
    ensure_ascii=True, separators=(",", ":"), check_circular=False
).encode


def _dump_plain(value: Any) -> bytes:
    """Compact UTF-8 JSON; a lone surrogate in a str (not UTF-8) is escaped as ``\\udXXX``."""
    try:
        return _encode_utf8(value).encode("utf-8")
    except UnicodeEncodeError:
        return _encode_ascii(value).encode()


_raw_decode = json.JSONDecoder().raw_decode


def loads_compact(text: str) -> Any:
    """``json.loads(text)``, a little faster for compact JSON ckpt wrote (payloads and record
    headers): ``raw_decode`` skips the two whitespace matches around the document. Any other
    text (whitespace around it, data after it, an error) goes to ``json.loads``, which accepts
    or refuses it exactly as it always did."""
    try:
        value, end = _raw_decode(text)
    except ValueError:
        return json.loads(text)
    return value if end == len(text) else json.loads(text)


def _is_plain_json(value: Any) -> bool:
    """Whether ``value`` is made of exact JSON types only (so it round-trips unchanged).

    Runs on every save of JSON data, so it walks the value one nesting level at a time: the
    types of all keys and of all values of a level are each collected by one
    ``set(map(type, ...))`` in C, and no Python code runs per container or per element unless
    the level mixes containers with other values. Containers nested deeper than
    :data:`_MAX_DEPTH` (or a value that contains itself) are refused."""
    kind = type(value)
    if kind in _SCALARS:
        return True
    if kind is not dict and kind is not list:
        return False
    dicts: list[Any] = [value] if kind is dict else []
    lists: list[Any] = [value] if kind is list else []
    for _depth in range(_MAX_DEPTH + 1):
        if dicts:
            keys = dicts[0] if len(dicts) == 1 else chain.from_iterable(dicts)
            if not set(map(type, keys)) <= _STR_ONLY:
                return False
        types = set(map(type, _values(dicts, lists)))
        if types <= _SCALARS:
            return True
        if not types <= _JSON_TYPES:
            return False
        dicts, lists = _of_type(dict, types, dicts, lists), _of_type(list, types, dicts, lists)
    return False


def _values(dicts: list[dict[str, Any]], lists: list[list[Any]]) -> Iterable[Any]:
    """The values of every container of one level, afresh (a lone container as it is)."""
    if not dicts:
        return lists[0] if len(lists) == 1 else chain.from_iterable(lists)
    in_dicts = (
        dicts[0].values() if len(dicts) == 1 else chain.from_iterable(map(dict.values, dicts))
    )
    return chain(chain.from_iterable(lists), in_dicts) if lists else in_dicts


def _of_type(
    kind: type, types: set[type], dicts: list[dict[str, Any]], lists: list[list[Any]]
) -> list[Any]:
    """The ``kind`` containers among the values of a level whose value types are ``types``."""
    if kind not in types:
        return []
    if len(types) == 1:
        return list(_values(dicts, lists))
    return [value for value in _values(dicts, lists) if type(value) is kind]


def _pydantic_base() -> Any:
    module = sys.modules.get("pydantic")
    return None if module is None else module.BaseModel


def _is_model(value: Any) -> bool:
    base = _pydantic_base()
    return base is not None and isinstance(value, base)


def _ref(kind: str, cls: type) -> str:
    return f"{kind}:{cls.__module__}:{cls.__qualname__}"


def _resolve(ref: str, may_import: bool | Collection[str] = True) -> type:
    """The class a schema reference names. A module that is not imported yet is imported only if
    ``may_import`` allows it: importing runs the module's top-level code, and the reference comes
    from the record, so from whoever can write the store."""
    kind, module_name, qualname = ref.split(":", 2)
    module = sys.modules.get(module_name)
    allowed = () if isinstance(may_import, bool) else may_import
    if module is None and may_import is not True and module_name.split(".")[0] not in allowed:
        raise SchemaMismatch(
            f"the record holds a {qualname} from module {module_name!r}, which is not imported, "
            "and this manager does not import modules named by records (allow_pickle=False or "
            "pickle_modules); import it first, or pass schema=<the model class> (or schema=dict)"
        )
    try:
        obj: Any = module or importlib.import_module(module_name)
        for part in qualname.split("."):
            if not part.isidentifier() or part.startswith("__"):
                raise AttributeError(f"{part!r} is not a class name")
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as exc:
        raise SchemaMismatch(
            f"the record holds a {qualname} from module {module_name!r}, which cannot be imported "
            f"here ({exc}); pass schema=<the model class> (or schema=dict) to load it"
        ) from None
    base = _pydantic_base()
    ok = (
        kind == "pydantic" and isinstance(obj, type) and base is not None and issubclass(obj, base)
    ) or (kind == "dataclass" and isinstance(obj, type) and dataclasses.is_dataclass(obj))
    if not ok:
        raise SchemaMismatch(
            f"the record's schema {ref!r} does not name a {kind} class; pass schema= to load it"
        )
    return obj  # type: ignore[no-any-return]


def _adapter(tp: Any) -> Any:
    """A pydantic ``TypeAdapter``, cached: building one costs about a millisecond per type."""
    try:
        return _cached_adapter(tp)
    except TypeError:  # an unhashable schema object
        from pydantic import TypeAdapter

        return TypeAdapter(tp)


@functools.lru_cache(maxsize=256)
def _cached_adapter(tp: Any) -> Any:
    from pydantic import TypeAdapter

    return TypeAdapter(tp)


def _revive(cls: type, data: bytes) -> Any:
    return _adapter(cls).validate_json(data)


def _same(original: Any, revived: Any) -> bool:
    """Whether a revived model/dataclass equals the original, field by field for dataclasses (so
    ``eq=False`` dataclasses are compared by content, not identity)."""
    try:
        if dataclasses.is_dataclass(original) and not _is_model(original):
            names = [f.name for f in dataclasses.fields(original)]
            return type(revived) is type(original) and all(
                bool(getattr(original, n) == getattr(revived, n)) for n in names
            )
        return bool(original == revived)
    except Exception:  # an __eq__ that raises (numpy fields...) proves nothing
        return False


def _not_exact(value: Any) -> SerializationError:
    return SerializationError(
        f"{type_name(value)} does not round-trip through JSON exactly (a NaN, a tuple or set in "
        "an untyped field, a subclass instance, a private attribute...); it needs pickle"
    )


class JsonCodec:
    """JSON, pydantic models and dataclasses.

    Args:
        import_modules: whether a record may make this codec import the module of its model
            (``True``), only modules under these top-level names, or none (``False``: models
            are revived only from modules the process has already imported). The manager
            passes ``False`` when ``allow_pickle=False`` and ``pickle_modules`` when given.
    """

    name = "json"

    def __init__(self, import_modules: bool | Collection[str] = True) -> None:
        self.import_modules = (
            import_modules if isinstance(import_modules, bool) else frozenset(import_modules)
        )

    def accepts(self, value: Any) -> bool:
        if type(value) in _JSON_TYPES:  # plain data (never a model or a dataclass)
            return _is_plain_json(value)
        if _is_model(value):
            return True
        return dataclasses.is_dataclass(value) and not isinstance(value, type)

    def encode(self, value: Any) -> Encoded:
        try:
            if type(value) not in _JSON_TYPES:  # plain data is never a model or a dataclass
                if _is_model(value):
                    data = value.model_dump_json().encode()
                    if not _same(value, _revive(type(value), data)):
                        raise _not_exact(value)
                    return Encoded(_ref("pydantic", type(value)), [data])
                if dataclasses.is_dataclass(value) and not isinstance(value, type):
                    data = _adapter(type(value)).dump_json(value)
                    if not _same(value, _revive(type(value), data)):
                        raise _not_exact(value)
                    return Encoded(_ref("dataclass", type(value)), [data])
            return Encoded(_PLAIN, [_dump_plain(value)])
        except SerializationError:
            raise
        except (TypeError, ValueError, RecursionError) as exc:
            raise SerializationError(f"cannot encode {type_name(value)} as JSON: {exc}") from None
        except Exception as exc:  # pydantic's PydanticSerializationError and friends
            raise SerializationError(f"cannot encode {type_name(value)} as JSON: {exc}") from None

    def decode(self, parts: Sequence[memoryview], schema: str | None, want: Any = None) -> Any:
        data = b"".join(parts) if len(parts) != 1 else parts[0]
        if want is not None:
            try:
                return _adapter(want).validate_json(bytes(data))
            except Exception as exc:
                raise SchemaMismatch(
                    f"the stored value does not validate as {getattr(want, '__name__', want)}: "
                    f"{exc}"
                ) from None
        if schema in (None, _PLAIN):
            return loads_compact(str(data, "utf-8"))
        return _revive(_resolve(schema, self.import_modules), bytes(data))

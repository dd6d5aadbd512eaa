"""The codec protocol: turn a value into buffers and back, with a tag that travels with the bytes.

A codec's ``name`` is written into every record header, so readers never guess how to decode.
``encode`` returns a schema reference (what type to revive, e.g. ``pydantic:app.models:Order``) and
one or more buffers. Extra buffers are pickle protocol-5 out-of-band buffers or other zero-copy
views; the envelope records their sizes, so large arrays are written and read without being copied
into one ``bytes`` object first.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple, Protocol, runtime_checkable

Buffer = bytes | bytearray | memoryview


class Encoded(NamedTuple):
    """What a codec produced: the schema reference and the payload buffers, in order."""

    schema: str | None
    buffers: Sequence[Buffer]


@runtime_checkable
class Codec(Protocol):
    """How one family of values becomes bytes.

    ``accepts`` must be cheap (a type check); ``encode`` may still refuse with
    :class:`~ckpt_core.errors.SerializationError`, and ``codec="auto"`` then tries the next one.
    ``decode`` receives the buffers exactly as ``encode`` produced them (as memoryviews over the
    loaded record) and, when the caller passed ``schema=``, that type as ``want``.
    """

    name: str

    def accepts(self, value: Any) -> bool: ...

    def encode(self, value: Any) -> Encoded: ...

    def decode(self, parts: Sequence[memoryview], schema: str | None, want: Any = None) -> Any: ...


def type_name(value: Any) -> str:
    """``module.QualName`` of a value's type, for error messages."""
    cls = type(value)
    module = cls.__module__
    return cls.__qualname__ if module == "builtins" else f"{module}.{cls.__qualname__}"

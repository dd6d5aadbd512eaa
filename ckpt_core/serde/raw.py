"""``raw``: bytes-like values stored as they are (no copy on save)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .base import Encoded


class RawCodec:
    name = "raw"

    def accepts(self, value: Any) -> bool:
        return type(value) in (bytes, bytearray, memoryview)

    def encode(self, value: Any) -> Encoded:
        if isinstance(value, memoryview):
            view = value if value.contiguous else memoryview(value.tobytes())
            return Encoded("bytes", [view.cast("B") if view.format != "B" else view])
        return Encoded(type(value).__name__, [value])

    def decode(self, parts: Sequence[memoryview], schema: str | None, want: Any = None) -> Any:
        (part,) = parts
        return bytearray(part) if schema == "bytearray" else bytes(part)

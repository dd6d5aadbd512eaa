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
        if schema == "bytearray":
            return bytearray(part)
        if type(part.obj) is bytes and part.nbytes == len(part.obj):
            return part.obj  # read straight into its own bytes object: no copy
        return bytes(part)

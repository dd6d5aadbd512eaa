"""Codec registry and the ``auto`` choice.

Codecs are named (the name goes into each record) and looked up lazily from ``"module:Class"``
paths, so optional dependencies are imported only when a codec is used. Third-party codecs register
with :func:`register_codec` or the ``ckpt.codecs`` entry-point group. Each
:class:`~ckpt_core.manager.CheckpointManager` builds its own :class:`CodecSet`: codec instances are
never shared between managers.
"""

from __future__ import annotations

import importlib
from collections.abc import Collection, Mapping
from importlib.metadata import entry_points
from types import MappingProxyType
from typing import Any

from ..errors import SerializationError
from .base import Codec, Encoded, type_name

_BUILTIN: dict[str, str] = {
    "raw": "ckpt_core.serde.raw:RawCodec",
    "numpy": "ckpt_core.serde.numpy:NumpyCodec",
    "arrow": "ckpt_core.serde.arrow:ArrowCodec",
    "json": "ckpt_core.serde.json:JsonCodec",
    "pickle": "ckpt_core.serde.pickle:PickleCodec",
}
#: The order in which ``codec="auto"`` tries codecs; pickle only when allowed.
AUTO_ORDER = ("raw", "numpy", "arrow", "json", "pickle")

_registry: dict[str, str] = dict(_BUILTIN)
_entry_points_loaded = False

#: Read-only view of the registered codecs (name -> "module:Class").
registered_codecs: Mapping[str, str] = MappingProxyType(_registry)


def register_codec(name: str, target: str, *, replace: bool = False) -> None:
    """Register a codec class under ``name`` (``target`` is ``"module:Class"``)."""
    if name in _registry and _registry[name] != target and not replace:
        raise ValueError(
            f"codec {name!r} is already registered to {_registry[name]}; pass replace=True"
        )
    _registry[name] = target


def _load_entry_points() -> None:
    global _entry_points_loaded
    if _entry_points_loaded:
        return
    _entry_points_loaded = True
    for ep in entry_points(group="ckpt.codecs"):
        _registry.setdefault(ep.name, ep.value)


def _import(target: str) -> Any:
    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module), attr)


class CodecSet:
    """The codecs one manager may use, with the ``auto`` choice and the pickle policy."""

    def __init__(
        self,
        *,
        allow_pickle: bool = True,
        pickle_modules: Collection[str] | None = None,
    ) -> None:
        self.allow_pickle = allow_pickle
        self.pickle_modules = pickle_modules
        self._instances: dict[str, Codec] = {}

    def get(self, name: str) -> Codec:
        cached = self._instances.get(name)
        if cached is not None:
            return cached
        if name not in _registry:
            _load_entry_points()
        if name not in _registry:
            raise SerializationError(
                f"unknown codec {name!r}; known codecs: {', '.join(sorted(_registry))}"
            )
        cls = _import(_registry[name])
        codec: Codec
        if name == "pickle":
            codec = cls(self.pickle_modules)
        elif name == "json" and _registry[name] == _BUILTIN["json"]:
            # A record names the module of its model: importing it runs that module's code, so
            # only when pickle (which could run any code) is allowed, and from its allowlist.
            imports = self.allow_pickle and (
                True if self.pickle_modules is None else frozenset(self.pickle_modules)
            )
            codec = cls(import_modules=imports)
        else:
            codec = cls()
        self._instances[name] = codec
        return codec

    def encode(self, value: Any, codec: str, node: str) -> tuple[Codec, Encoded]:
        """Encode ``value`` with ``codec`` (or the first ``auto`` codec that takes it)."""
        if codec != "auto":
            if codec == "pickle" and not self.allow_pickle:
                raise SerializationError(self._pickle_refusal(value, node))
            chosen = self.get(codec)
            if not chosen.accepts(value):
                # e.g. codec="raw" for a str, or "json" for a tuple (it would come back a list).
                raise SerializationError(
                    f"node {node!r}: codec {codec!r} cannot store a {type_name(value)} exactly; "
                    'use codec="auto" or another codec'
                )
            try:
                return chosen, chosen.encode(value)
            except SerializationError as exc:
                raise SerializationError(f"node {node!r}: {exc}") from None
        errors: list[str] = []
        for name in AUTO_ORDER:
            if name == "pickle" and not self.allow_pickle:
                break
            candidate = self.get(name)
            if not candidate.accepts(value):
                continue
            try:
                return candidate, candidate.encode(value)
            except SerializationError as exc:
                errors.append(str(exc))
        if not self.allow_pickle:
            raise SerializationError(self._pickle_refusal(value, node, errors))
        raise SerializationError(  # pragma: no cover - pickle accepts everything it can encode
            f"node {node!r}: no codec can encode {type_name(value)}: {'; '.join(errors)}"
        )

    def decoder(self, name: str, key: str) -> Codec:
        """The codec to decode a record written with ``name``, honouring the pickle policy."""
        if name == "pickle" and not self.allow_pickle:
            raise SerializationError(
                f"record {key} was written with pickle, and loading a pickle can run arbitrary "
                "code; pass allow_pickle=True to the manager if you trust this store"
            )
        try:
            return self.get(name)
        except SerializationError as exc:  # an unknown codec: say which record names it
            raise SerializationError(f"cannot decode checkpoint {key}: {exc}") from None

    @staticmethod
    def _pickle_refusal(value: Any, node: str, errors: list[str] | None = None) -> str:
        detail = f" ({'; '.join(errors)})" if errors else ""
        return (
            f"node {node!r}: cannot save a {type_name(value)} without pickle{detail}; "
            "return bytes, JSON data, a pydantic model, a dataclass, a numpy array or a "
            "DataFrame, or pass allow_pickle=True"
        )

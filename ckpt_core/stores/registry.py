"""URL scheme → store class, resolved lazily.

``open_store(url, **options)`` picks the implementation from the URL's scheme:

- ``memory://name``: :class:`MemoryStore` (one instance per name in a process);
- ``redis://``, ``rediss://``, ``unix://``: :class:`RedisStore` (the ``redis`` extra);
- a bare path or ``file://``: :class:`FsspecStore` on the local filesystem;
- any other scheme: :class:`FsspecStore`, and fsspec's own registry finds the filesystem
  (we never copy that registry).

Third-party stores register a scheme with :func:`register_store` or through the ``ckpt.stores``
entry-point group (``myscheme = "pkg.module:MyStore"``); the class must provide
``from_url(url, **options)``. Rebinding a scheme that is already taken raises unless
``replace=True``.
"""

from __future__ import annotations

import importlib
import threading
from collections.abc import Mapping
from importlib.metadata import entry_points
from types import MappingProxyType
from typing import Any

from ..errors import StoreConfigError
from .base import Store

#: scheme -> ("module:Class", install hint)
_registry: dict[str, tuple[str, str]] = {
    "memory": ("ckpt_core.stores.memory:MemoryStore", ""),
    "redis": ("ckpt_core.stores.redis:RedisStore", "pip install 'ckpt[redis]'"),
    "rediss": ("ckpt_core.stores.redis:RedisStore", "pip install 'ckpt[redis]'"),
    "unix": ("ckpt_core.stores.redis:RedisStore", "pip install 'ckpt[redis]'"),
}
_FSSPEC = ("ckpt_core.stores.fsspec:FsspecStore", "")
_entry_points_loaded = False
_memory_stores: dict[str, Store] = {}
_memory_lock = threading.Lock()

#: Read-only view: scheme -> ("module:Class", install hint).
registered_stores: Mapping[str, tuple[str, str]] = MappingProxyType(_registry)


def register_store(scheme: str, target: str, *, hint: str = "", replace: bool = False) -> None:
    """Bind ``scheme`` to ``target`` (``"module:Class"``)."""
    scheme = scheme.lower()
    current = _registry.get(scheme)
    if current is not None and current[0] != target and not replace:
        raise ValueError(
            f"URL scheme {scheme!r} is already bound to {current[0]}; pass replace=True"
        )
    _registry[scheme] = (target, hint)


def _load_entry_points() -> None:
    global _entry_points_loaded
    if _entry_points_loaded:
        return
    _entry_points_loaded = True
    for ep in entry_points(group="ckpt.stores"):
        _registry.setdefault(ep.name.lower(), (ep.value, f"the plugin providing {ep.name!r}"))


def _scheme(url: str) -> str | None:
    if "://" not in url:
        return None
    return url.split("://", 1)[0].lower() or None


def _import_store(target: str, hint: str, url: str) -> Any:
    module_name, _, attr = target.partition(":")
    try:
        return getattr(importlib.import_module(module_name), attr)
    except ImportError as exc:
        from ..redact import redact_url

        extra = f"; install it with {hint}" if hint else ""
        raise StoreConfigError(f"cannot open {redact_url(url)}: {exc}{extra}") from None


def open_store(url: str | Store, **options: Any) -> Store:
    """Open the store for ``url``; a :class:`Store` instance is returned as it is.

    Options go to the store (``ttl=``, ``fsync=``) or, for fsspec URLs, to the filesystem
    (``endpoint_url=``, ``key=``, ``secret=``, ``client_kwargs=``...).
    """
    if isinstance(url, Store):
        if options:
            raise TypeError("options cannot be applied to an already opened store")
        return url
    if not isinstance(url, str) or not url:
        raise StoreConfigError(f"a store URL must be a non-empty string, got {url!r}")
    scheme = _scheme(url)
    if scheme == "memory":
        name = url.split("://", 1)[1]
        with _memory_lock:
            store = _memory_stores.get(name)
            if store is None:
                from .memory import MemoryStore

                store = _memory_stores[name] = MemoryStore(name)
        return store
    if scheme is not None and scheme not in _registry:
        _load_entry_points()
    target, hint = _registry.get(scheme, _FSSPEC) if scheme else _FSSPEC
    cls = _import_store(target, hint, url)
    from_url = getattr(cls, "from_url", None)
    store = from_url(url, **options) if from_url is not None else cls(url, **options)
    if not isinstance(store, Store):
        raise StoreConfigError(f"{target} did not return a ckpt Store for {scheme}://")
    return store

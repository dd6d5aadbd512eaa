"""URL scheme → store class, resolved lazily.

``open_store(url, **options)`` picks the implementation from the URL's scheme:

- ``memory://name``: :class:`MemoryStore` (one instance per name in a process);
- ``redis://``, ``rediss://``, ``unix://``: :class:`RedisStore` (the ``redis`` extra);
- a bare path or ``file://``: :class:`FsspecStore` on the local filesystem;
- any other scheme: :class:`FsspecStore`, and fsspec's own registry finds the filesystem
  (we never copy that registry).

Third-party stores register a scheme with :func:`register_store` or through the ``ckpt.stores``
entry-point group, read on the first URL whose scheme is not built in::

    # pyproject.toml of the plugin
    [project.entry-points."ckpt.stores"]
    myscheme = "my_package.store:MyStore"

The class is imported only when a URL needs it; it may provide ``from_url(url, **options)``,
otherwise it is called as ``MyStore(url, **options)``. Rebinding a scheme that is already taken
raises unless ``replace=True``; an entry point naming a taken scheme is ignored with a warning
(a plugin cannot silently take over ``redis://`` or ``s3://``).
"""

from __future__ import annotations

import importlib
import re
import threading
import warnings
from collections.abc import Mapping
from importlib.metadata import entry_points
from types import MappingProxyType
from typing import Any

from ..errors import CheckpointWarning, StoreConfigError
from .base import Store

#: Entry-point group third-party stores publish under.
ENTRY_POINT_GROUP = "ckpt.stores"
_REDIS = ("ckpt_core.stores.redis:RedisStore", "pip install 'ckpt[redis]'")
#: scheme -> ("module:Class", install hint)
_registry: dict[str, tuple[str, str]] = {
    "memory": ("ckpt_core.stores.memory:MemoryStore", ""),
    "redis": _REDIS,
    "rediss": _REDIS,
    "unix": _REDIS,
}
_FSSPEC = ("ckpt_core.stores.fsspec:FsspecStore", "")
_SCHEME = re.compile(r"^[a-z][a-z0-9+.\-]*$")
_entry_points_loaded = False
_lock = threading.Lock()
_memory_stores: dict[str, Store] = {}

#: Read-only view: scheme -> ("module:Class", install hint).
registered_stores: Mapping[str, tuple[str, str]] = MappingProxyType(_registry)


def register_store(scheme: str, target: str, *, hint: str = "", replace: bool = False) -> None:
    """Bind ``scheme`` (``"myscheme"``, without ``://``) to ``target`` (``"module:Class"``).

    ``hint`` is shown when the module cannot be imported (``"pip install my-plugin"``).
    """
    if not isinstance(scheme, str) or not _SCHEME.match(scheme.lower()):
        raise ValueError(
            f"{scheme!r} is not a URL scheme: use letters, digits, '+', '-' or '.', starting "
            "with a letter, and no '://'"
        )
    module, sep, attr = target.partition(":")
    if not module or not sep or not attr:
        raise ValueError(f"target {target!r} must look like 'package.module:ClassName'")
    scheme = scheme.lower()
    with _lock:
        current = _registry.get(scheme)
        if current is not None and current[0] != target and not replace:
            raise ValueError(
                f"URL scheme {scheme!r} is already bound to {current[0]}; pass replace=True to "
                f"rebind it to {target}"
            )
        _registry[scheme] = (target, hint)


def _load_entry_points() -> None:
    global _entry_points_loaded
    with _lock:
        if _entry_points_loaded:
            return
        _entry_points_loaded = True
        for ep in entry_points(group=ENTRY_POINT_GROUP):
            scheme = ep.name.lower()
            current = _registry.get(scheme)
            if current is not None and current[0] != ep.value:
                warnings.warn(
                    f"ignoring the {ENTRY_POINT_GROUP} entry point {ep.name} = {ep.value!r}: "
                    f"{scheme}:// is already bound to {current[0]}",
                    CheckpointWarning,
                    stacklevel=4,
                )
                continue
            dist = getattr(getattr(ep, "dist", None), "name", None)
            hint = f"reinstall {dist}" if dist else f"the plugin providing {scheme}://"
            _registry[scheme] = (ep.value, hint)


def _scheme(url: str) -> str | None:
    if "://" not in url:
        return None
    return url.split("://", 1)[0].lower() or None


def _import_store(target: str, hint: str, url: str) -> Any:
    module_name, _, attr = target.partition(":")
    try:
        return getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        from ..redact import redact_url

        extra = f"; install it with {hint}" if hint.startswith("pip ") else ""
        extra = extra or (f" ({hint})" if hint else "")
        raise StoreConfigError(f"cannot open {redact_url(url)}: {exc}{extra}") from None


def open_store(url: str | Store, **options: Any) -> Store:
    """Open the store for ``url``; a :class:`Store` instance is returned as it is.

    Options go to the store (``ttl=``, ``prefix=``, ``fsync=``) or, for fsspec URLs, to the
    filesystem (``endpoint_url=``, ``key=``, ``secret=``, ``client_kwargs=``...). Opening does no
    IO: a wrong address or password shows on the first operation.
    """
    if isinstance(url, Store):
        if options:
            raise TypeError("options cannot be applied to an already opened store")
        return url
    if not isinstance(url, str) or not url:
        raise StoreConfigError(f"a store URL must be a non-empty string, got {url!r}")
    scheme = _scheme(url)
    if scheme == "memory":
        if options:
            raise StoreConfigError(
                f"memory:// stores take no options, got {sorted(options)}; they live in this "
                "process only"
            )
        name = url.split("://", 1)[1]
        with _lock:
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
        raise StoreConfigError(
            f"{target} returned {type(store).__name__} for {scheme}://, not a ckpt Store"
        )
    return store

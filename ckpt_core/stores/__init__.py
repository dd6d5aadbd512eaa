"""Stores: bytes-level backends. See :mod:`.base` for the contract and :mod:`.registry` for URLs."""

from .base import BlockingStore, ObjectInfo, Payload, Store
from .fsspec import FsspecStore
from .memory import MemoryStore
from .registry import open_store, register_store, registered_stores

__all__ = [
    "BlockingStore",
    "FsspecStore",
    "MemoryStore",
    "ObjectInfo",
    "Payload",
    "Store",
    "open_store",
    "register_store",
    "registered_stores",
]

"""``MemoryStore``: the in-process reference backend (tests, notebooks, single-process runs)."""

from __future__ import annotations

import builtins
import threading
import time
from collections.abc import Sequence

from ..serde.base import Buffer
from .base import Data, ObjectInfo, Store, join_chunks, validate_key, validate_prefix


class MemoryStore(Store):
    """Records in a dict guarded by a lock. Each instance is independent.

    ``open_store("memory://name")`` returns the same instance for the same name within a process,
    the way fsspec's memory filesystem does, so a run and a later lookup can share it.
    """

    capabilities = frozenset({"atomic"})

    def __init__(self, name: str = "") -> None:
        self.url = f"memory://{name}"
        self._records: dict[str, tuple[bytes, float]] = {}
        self._lock = threading.Lock()

    def put(self, key: str, data: Data) -> None:
        validate_key(key)
        blob = join_chunks(data)
        with self._lock:
            self._records[key] = (blob, time.time())

    def get(self, key: str) -> Buffer | None:
        validate_key(key)
        with self._lock:
            entry = self._records.get(key)
        return None if entry is None else entry[0]

    def get_first(self, keys: Sequence[str]) -> tuple[str, Buffer] | None:
        for key in keys:
            validate_key(key)
        with self._lock:
            for key in keys:
                entry = self._records.get(key)
                if entry is not None:
                    return key, entry[0]
        return None

    def head(self, key: str) -> ObjectInfo | None:
        validate_key(key)
        with self._lock:
            entry = self._records.get(key)
        return None if entry is None else ObjectInfo(key, len(entry[0]), entry[1])

    def delete(self, key: str) -> None:
        validate_key(key)
        with self._lock:
            self._records.pop(key, None)

    def delete_prefix(self, prefix: str) -> int:
        validate_prefix(prefix)
        with self._lock:
            doomed = [k for k in self._records if k.startswith(prefix)]
            for key in doomed:
                del self._records[key]
        return len(doomed)

    def list(self, prefix: str = "") -> list[ObjectInfo]:
        validate_prefix(prefix)
        with self._lock:
            return [
                ObjectInfo(k, len(blob), mtime)
                for k, (blob, mtime) in self._records.items()
                if k.startswith(prefix)
            ]

    # No IO to wait for: the async twins call the sync bodies directly.
    async def aput(self, key: str, data: Data) -> None:
        self.put(key, data)

    async def aget(self, key: str) -> Buffer | None:
        return self.get(key)

    async def aget_first(self, keys: Sequence[str]) -> tuple[str, Buffer] | None:
        return self.get_first(keys)

    async def ahead(self, key: str) -> ObjectInfo | None:
        return self.head(key)

    async def adelete(self, key: str) -> None:
        self.delete(key)

    async def adelete_prefix(self, prefix: str) -> int:
        return self.delete_prefix(prefix)

    async def alist(self, prefix: str = "") -> builtins.list[ObjectInfo]:
        return self.list(prefix)

"""``MemoryStore``: the in-process reference backend (tests, notebooks, single-process runs)."""

from __future__ import annotations

import builtins
import threading
import time
from collections.abc import Sequence

from ..lease import Claim, Held, LeaseBackend
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

    def lease_backend(self) -> LeaseBackend:
        """Leases in a dict beside the records (never listed); see :mod:`ckpt_core.lease`."""
        with self._lock:
            leases: _MemoryLeases | None = getattr(self, "_leases", None)
            if leases is None:
                leases = self._leases = _MemoryLeases(self.url)
        return leases


class _MemoryLeases(LeaseBackend):
    """Leases of one :class:`MemoryStore`: ``name -> (record, expiry)`` under a lock, expiring
    on the monotonic clock. The record doubles as the claim token (each holds a fresh token)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._held: dict[str, tuple[bytes, float]] = {}
        self._lock = threading.Lock()

    def acquire(self, name: str, record: bytes, ttl: float) -> Claim | Held:
        validate_key(name)
        now = time.monotonic()
        with self._lock:
            current = self._held.get(name)
            if current is not None and current[1] > now:
                return Held(current[0], current[1] - now)
            self._held[name] = (record, now + ttl)
        return Claim(name, record)

    def renew(self, claim: Claim, record: bytes, ttl: float) -> Claim | None:
        now = time.monotonic()
        with self._lock:
            current = self._held.get(claim.name)
            if current is None or current[0] != claim.token or current[1] <= now:
                return None
            self._held[claim.name] = (current[0], now + ttl)
        return claim

    def release(self, claim: Claim) -> None:
        with self._lock:
            current = self._held.get(claim.name)
            if current is not None and current[0] == claim.token:
                del self._held[claim.name]

    async def aacquire(self, name: str, record: bytes, ttl: float) -> Claim | Held:
        return self.acquire(name, record, ttl)

    async def arenew(self, claim: Claim, record: bytes, ttl: float) -> Claim | None:
        return self.renew(claim, record, ttl)

    async def arelease(self, claim: Claim) -> None:
        self.release(claim)

"""``FaultyStore``: wrap any store and make chosen calls fail, the way httpx's ``MockTransport``
stands in for a network.

Faults are armed on the wrapper and fire on a chosen call of a chosen primitive. The sync and the
async twin of a primitive count as the same primitive (``put`` and ``aput`` share one counter), so
a test written once runs unchanged through both flavours::

    faulty = FaultyStore(MemoryStore())
    faulty.fail("get_first", StoreUnavailable("redis went away"))   # the next get_first raises
    faulty.fail("put", call=3)                 # the 3rd put raises the default StoreUnavailable
    faulty.stop_mid_write(after=100)           # the next put consumes 100 bytes, then raises
    faulty.truncate(keep=-1)                   # the next put silently loses its last byte

    faulty.calls        # every call, in order: [Call("put", ("ns/run/r/n", ...), False), ...]
    faulty.count("head")

``fail`` raises before the inner store is touched. ``stop_mid_write`` hands the inner store a
payload that raises part-way through iteration: that is what a crash, a dropped connection or a
full disk looks like from inside a store, and a correct store leaves the previous record in place.
``truncate`` hands the inner store fewer bytes than the record has and reports success, like a
backend that loses data silently; the envelope must then report the record as corrupted.
"""

from __future__ import annotations

import builtins
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from ..errors import StoreUnavailable
from ..serde.base import Buffer
from ..stores.base import Data, ObjectInfo, Store, data_size, iter_chunks

#: The primitives a fault can be armed on (sync names; the ``a`` twins share them).
PRIMITIVES = ("put", "get", "get_first", "head", "delete", "delete_prefix", "list", "close")

FaultKind = Literal["raise", "stop", "truncate"]


@dataclass(frozen=True)
class Call:
    """One call that reached the wrapper: primitive (sync name), arguments, flavour."""

    op: str
    args: tuple[Any, ...]
    is_async: bool


@dataclass
class _Fault:
    op: str
    kind: FaultKind
    first: int
    last: int
    error: BaseException | None
    limit: int = 0


def _injected(op: str) -> StoreUnavailable:
    return StoreUnavailable(f"injected fault: FaultyStore made {op}() fail")


class _StoppingPayload:
    """Yields the first ``after`` bytes of ``data``, then raises ``error``."""

    def __init__(self, data: Data, after: int, error: BaseException) -> None:
        self._data = data
        self._after = after
        self._error = error
        self.size = data_size(data)

    def __iter__(self) -> Iterator[Buffer]:
        left = self._after
        for chunk in iter_chunks(self._data):
            view = memoryview(chunk).cast("B")
            if view.nbytes >= left:
                if left:
                    yield view[:left]
                break
            left -= view.nbytes
            yield view
        raise self._error


class _TruncatedPayload:
    """The first ``size`` bytes of ``data``; a complete, well-formed (but short) payload."""

    def __init__(self, data: Data, size: int) -> None:
        self._data = data
        self.size = size

    def __iter__(self) -> Iterator[Buffer]:
        left = self.size
        for chunk in iter_chunks(self._data):
            if left <= 0:
                break
            view = memoryview(chunk).cast("B")[:left]
            left -= view.nbytes
            yield view


class FaultyStore(Store):
    """A store that forwards to ``inner`` except where a fault is armed.

    Args:
        inner: the store that does the real work. Its ``url`` and ``capabilities`` are reported
            as the wrapper's own, so suites treat the pair as the inner store.
    """

    def __init__(self, inner: Store) -> None:
        self.inner = inner
        self.url = inner.url
        self.capabilities = inner.capabilities
        self.calls: list[Call] = []
        self._counts: dict[str, int] = dict.fromkeys(PRIMITIVES, 0)
        self._faults: list[_Fault] = []
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"FaultyStore({self.inner!r})"

    # -- arming ----------------------------------------------------------------------------------
    def _arm(
        self,
        op: str,
        kind: FaultKind,
        error: BaseException | None,
        call: int | None,
        times: int,
        limit: int = 0,
    ) -> FaultyStore:
        if op not in PRIMITIVES:
            raise ValueError(f"unknown primitive {op!r}; choose one of {PRIMITIVES}")
        if times < 1:
            raise ValueError(f"times must be at least 1, got {times}")
        with self._lock:
            first = call if call is not None else self._counts[op] + 1
            if first < 1:
                raise ValueError(f"call numbers start at 1, got {call}")
            self._faults.append(_Fault(op, kind, first, first + times - 1, error, limit))
        return self

    def fail(
        self,
        op: str,
        error: BaseException | None = None,
        *,
        call: int | None = None,
        times: int = 1,
    ) -> FaultyStore:
        """Make ``op`` raise ``error`` (default: :class:`StoreUnavailable`) without reaching the
        inner store, on its ``call``-th call (1-based, counted since the wrapper was made;
        default: the next call) and the ``times - 1`` calls after it."""
        return self._arm(op, "raise", error, call, times)

    def stop_mid_write(
        self, after: int, error: BaseException | None = None, *, call: int | None = None
    ) -> FaultyStore:
        """Make a ``put`` hand the inner store only ``after`` bytes, then raise ``error`` from
        inside the payload iteration (the inner store sees a writer dying mid-record)."""
        if after < 0:
            raise ValueError(f"after must be >= 0, got {after}")
        return self._arm("put", "stop", error, call, 1, after)

    def truncate(self, keep: int, *, call: int | None = None) -> FaultyStore:
        """Make a ``put`` write only the first ``keep`` bytes (negative: all but the last
        ``-keep``) and report success, like a backend losing the end of a record."""
        return self._arm("put", "truncate", None, call, 1, keep)

    def reset(self) -> None:
        """Disarm every fault and forget the call log (counters keep running)."""
        with self._lock:
            self._faults.clear()
            self.calls.clear()

    def count(self, op: str) -> int:
        """How many times ``op`` (either flavour) was called."""
        return self._counts[op]

    def ops(self) -> builtins.list[str]:
        """The primitives called, in order (sync names)."""
        return [c.op for c in self.calls]

    # -- the one place faults fire -----------------------------------------------------------
    def _enter(self, op: str, args: tuple[Any, ...], is_async: bool) -> _Fault | None:
        with self._lock:
            self._counts[op] += 1
            number = self._counts[op]
            self.calls.append(Call(op, args, is_async))
            fault = next(
                (f for f in self._faults if f.op == op and f.first <= number <= f.last), None
            )
        if fault is not None and fault.kind == "raise":
            raise fault.error if fault.error is not None else _injected(op)
        return fault

    def _data(self, data: Data, is_async: bool, key: str) -> Data:
        fault = self._enter("put", (key, data), is_async)
        if fault is None:
            return data
        if fault.kind == "stop":
            error = fault.error if fault.error is not None else _injected("put")
            return _StoppingPayload(data, fault.limit, error)
        size = data_size(data)
        keep = fault.limit if fault.limit >= 0 else max(size + fault.limit, 0)
        return _TruncatedPayload(data, min(keep, size))

    # -- sync primitives -----------------------------------------------------------------------
    def put(self, key: str, data: Data) -> None:
        self.inner.put(key, self._data(data, False, key))

    def get(self, key: str) -> Buffer | None:
        self._enter("get", (key,), False)
        return self.inner.get(key)

    def get_first(self, keys: Sequence[str]) -> tuple[str, Buffer] | None:
        self._enter("get_first", (tuple(keys),), False)
        return self.inner.get_first(keys)

    def head(self, key: str) -> ObjectInfo | None:
        self._enter("head", (key,), False)
        return self.inner.head(key)

    def delete(self, key: str) -> None:
        self._enter("delete", (key,), False)
        self.inner.delete(key)

    def delete_prefix(self, prefix: str) -> int:
        self._enter("delete_prefix", (prefix,), False)
        return self.inner.delete_prefix(prefix)

    def list(self, prefix: str = "") -> builtins.list[ObjectInfo]:
        self._enter("list", (prefix,), False)
        return self.inner.list(prefix)

    def close(self) -> None:
        self._enter("close", (), False)
        self.inner.close()

    # -- async twins ---------------------------------------------------------------------------
    async def aput(self, key: str, data: Data) -> None:
        await self.inner.aput(key, self._data(data, True, key))

    async def aget(self, key: str) -> Buffer | None:
        self._enter("get", (key,), True)
        return await self.inner.aget(key)

    async def aget_first(self, keys: Sequence[str]) -> tuple[str, Buffer] | None:
        self._enter("get_first", (tuple(keys),), True)
        return await self.inner.aget_first(keys)

    async def ahead(self, key: str) -> ObjectInfo | None:
        self._enter("head", (key,), True)
        return await self.inner.ahead(key)

    async def adelete(self, key: str) -> None:
        self._enter("delete", (key,), True)
        await self.inner.adelete(key)

    async def adelete_prefix(self, prefix: str) -> int:
        self._enter("delete_prefix", (prefix,), True)
        return await self.inner.adelete_prefix(prefix)

    async def alist(self, prefix: str = "") -> builtins.list[ObjectInfo]:
        self._enter("list", (prefix,), True)
        return await self.inner.alist(prefix)

    async def aclose(self) -> None:
        self._enter("close", (), True)
        await self.inner.aclose()

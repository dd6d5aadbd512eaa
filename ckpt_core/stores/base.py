"""The store interface: bytes only, a handful of primitives, each in a sync and an async flavour.

A store knows nothing about codecs, scopes or runs. Keys are ``/``-separated components made by
:mod:`ckpt_core.keys`; a store may rely on them never being empty, ``.``/``..``, or starting with
``.`` (so ``.``-names are free for temp files) and checks that with :func:`validate_key`.

Primitives (``op`` and ``aop`` twins with the same signature):

- ``put(key, data)``: write a whole record; readers see the old record or the new one, never a mix.
  ``data`` is ``bytes`` or a :class:`Payload` (iterated once per attempt, in order).
- ``get(key)``: the whole record, or ``None``. ``get_first(keys)``: the first key that exists (one
  round trip where the backend allows it; the manager's RUN-then-CORRELATION lookup uses it).
- ``read_first(keys, read)``: like ``get_first``, but hands the record to ``read(key, stream)`` as
  a :class:`ReadStream` and returns ``(key, result)``. The default wraps ``get_first``; a store
  that can read ranges of a large record without loading it whole (local files) overrides it,
  so the envelope can read a payload straight into the buffer it is decoded from.
- ``head(key)``: :class:`ObjectInfo` or ``None``, never reading the payload.
- ``delete(key)``; ``delete_prefix(prefix)`` for a directory-like prefix ending in ``/``, returning
  how many records went; ``list(prefix)``, every record below the prefix.

Backends whose client only blocks subclass :class:`BlockingStore`, which derives the async twins
by running the sync body in a worker thread: one copy of the logic, never an event loop inside a
sync call.
"""

from __future__ import annotations

import abc
import asyncio
import builtins
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, TypeVar, runtime_checkable

from ..errors import InvalidKey
from ..serde.base import Buffer

if TYPE_CHECKING:
    from ..lease import LeaseBackend


@runtime_checkable
class Payload(Protocol):
    """A record to write: its exact ``size`` and its bytes as an iterable of buffers.

    A buffer must stay unchanged until the write returns: a store may hold views of several
    of them at once (a batch of Redis chunks) instead of copying them."""

    size: int

    def __iter__(self) -> Iterator[Buffer]: ...


Data = bytes | bytearray | memoryview | Payload
R = TypeVar("R")


class ReadStream(Protocol):
    """Random access to one stored record of ``size`` bytes, for :meth:`Store.read_first`."""

    size: int
    #: The record is already in memory: ``whole()`` is free, and reading parts out of it would
    #: only copy them.
    in_memory: bool

    def pread(self, n: int, offset: int) -> Buffer:
        """``n`` bytes from ``offset`` (fewer only at the end of the record)."""
        ...

    def preadinto(self, view: memoryview, offset: int) -> int:
        """Fill ``view`` from ``offset``; the number of bytes read (short only at the end)."""
        ...

    def whole(self) -> Buffer:
        """The whole record as one buffer."""
        ...


class BufferStream:
    """A :class:`ReadStream` over a record already in memory (zero-copy views)."""

    __slots__ = ("_view", "size")
    in_memory = True

    def __init__(self, data: Buffer) -> None:
        self._view = memoryview(data).cast("B")
        self.size = self._view.nbytes

    def pread(self, n: int, offset: int) -> Buffer:
        return self._view[offset : offset + n]

    def preadinto(self, view: memoryview, offset: int) -> int:
        piece = self._view[offset : offset + view.nbytes]
        view[: piece.nbytes] = piece
        return piece.nbytes

    def whole(self) -> Buffer:
        return self._view


def iter_chunks(data: Data) -> Iterable[Buffer]:
    """The buffers of ``data``, whether it is one bytes-like object or a :class:`Payload`."""
    if isinstance(data, (bytes, bytearray, memoryview)):
        return (data,)
    return data


def data_size(data: Data) -> int:
    if isinstance(data, memoryview):
        return data.nbytes
    if isinstance(data, (bytes, bytearray)):
        return len(data)
    return data.size


def join_chunks(data: Data) -> bytes:
    """The whole of ``data`` as one ``bytes`` (for backends that need a single buffer)."""
    if isinstance(data, bytes):
        return data
    return b"".join(iter_chunks(data))


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    """What a store knows about a record without reading it."""

    key: str
    size: int
    modified: float | None = None


#: Keys built from encoded components (every key ckpt makes) match this at once.
_COMPONENT = r"[A-Za-z0-9_\-~%][A-Za-z0-9_.\-~%]*"
_ENCODED_KEY = re.compile(rf"{_COMPONENT}(?:/{_COMPONENT})*")


def validate_key(key: str) -> str:
    """Refuse keys that could escape a root or hide behind temp-file names."""
    if type(key) is str and _ENCODED_KEY.fullmatch(key):
        return key  # no component is empty, "." or "..", none starts with "."; no NUL or "\\"
    if not isinstance(key, str) or not key:
        raise InvalidKey(f"store keys must be non-empty str, got {key!r}")
    for component in key.split("/"):
        if not component or component in (".", "..") or component.startswith("."):
            raise InvalidKey(
                f"store key {key!r} has an invalid component {component!r}; build keys with "
                "ckpt_core.keys.encode_component"
            )
    if "\x00" in key or "\\" in key:
        raise InvalidKey(f"store key {key!r} contains NUL or backslash")
    return key


def validate_prefix(prefix: str) -> str:
    """A prefix is ``""`` (everything) or a key-like path ending with ``/``."""
    if prefix == "":
        return prefix
    if not isinstance(prefix, str) or not prefix.endswith("/"):
        raise InvalidKey(f"prefix {prefix!r} must end with '/' so it matches whole components")
    try:
        validate_key(prefix[:-1])
    except InvalidKey as exc:
        raise InvalidKey(f"prefix {prefix!r} is not a valid key prefix: {exc}") from None
    return prefix


class Store(abc.ABC):
    """Abstract store; see the module docstring for the contract."""

    #: Redacted URL, safe to print.
    url: str = ""
    #: Optional features this store has ("ttl", "streaming", "atomic", "multiprocess", ...).
    capabilities: frozenset[str] = frozenset()

    # -- sync primitives -------------------------------------------------------------------
    @abc.abstractmethod
    def put(self, key: str, data: Data) -> None: ...

    @abc.abstractmethod
    def get(self, key: str) -> Buffer | None: ...

    def get_first(self, keys: Sequence[str]) -> tuple[str, Buffer] | None:
        for key in keys:
            data = self.get(key)
            if data is not None:
                return key, data
        return None

    def read_first(
        self, keys: Sequence[str], read: Callable[[str, ReadStream], R]
    ) -> tuple[str, R] | None:
        found = self.get_first(keys)
        if found is None:
            return None
        return found[0], read(found[0], BufferStream(found[1]))

    @abc.abstractmethod
    def head(self, key: str) -> ObjectInfo | None: ...

    @abc.abstractmethod
    def delete(self, key: str) -> None: ...

    @abc.abstractmethod
    def delete_prefix(self, prefix: str) -> int: ...

    @abc.abstractmethod
    def list(self, prefix: str = "") -> list[ObjectInfo]: ...

    def close(self) -> None:  # noqa: B027 - optional hook, most stores hold nothing
        """Release connections; the store may not be used afterwards."""

    def lease_backend(self) -> LeaseBackend:
        """The lease primitives behind ``exclusive=True`` (one writer per correlation; see
        :mod:`ckpt_core.lease`). Stores without them raise
        :class:`~ckpt_core.errors.StoreConfigError`."""
        from ..lease import unsupported

        raise unsupported(self)

    # -- async twins -----------------------------------------------------------------------
    @abc.abstractmethod
    async def aput(self, key: str, data: Data) -> None: ...

    @abc.abstractmethod
    async def aget(self, key: str) -> Buffer | None: ...

    async def aget_first(self, keys: Sequence[str]) -> tuple[str, Buffer] | None:
        for key in keys:
            data = await self.aget(key)
            if data is not None:
                return key, data
        return None

    async def aread_first(
        self, keys: Sequence[str], read: Callable[[str, ReadStream], R]
    ) -> tuple[str, R] | None:
        found = await self.aget_first(keys)
        if found is None:
            return None
        return found[0], read(found[0], BufferStream(found[1]))

    @abc.abstractmethod
    async def ahead(self, key: str) -> ObjectInfo | None: ...

    @abc.abstractmethod
    async def adelete(self, key: str) -> None: ...

    @abc.abstractmethod
    async def adelete_prefix(self, prefix: str) -> int: ...

    @abc.abstractmethod
    async def alist(self, prefix: str = "") -> builtins.list[ObjectInfo]: ...

    async def aclose(self) -> None:
        self.close()

    # -- conveniences ----------------------------------------------------------------------
    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.url!r})"


class BlockingStore(Store):
    """A store whose client only blocks: the async twins run the sync primitive in a thread."""

    async def aput(self, key: str, data: Data) -> None:
        await asyncio.to_thread(self.put, key, data)

    async def aget(self, key: str) -> Buffer | None:
        return await asyncio.to_thread(self.get, key)

    async def aget_first(self, keys: Sequence[str]) -> tuple[str, Buffer] | None:
        return await asyncio.to_thread(self.get_first, keys)

    async def aread_first(
        self, keys: Sequence[str], read: Callable[[str, ReadStream], R]
    ) -> tuple[str, R] | None:
        return await asyncio.to_thread(self.read_first, keys, read)

    async def ahead(self, key: str) -> ObjectInfo | None:
        return await asyncio.to_thread(self.head, key)

    async def adelete(self, key: str) -> None:
        await asyncio.to_thread(self.delete, key)

    async def adelete_prefix(self, prefix: str) -> int:
        return await asyncio.to_thread(self.delete_prefix, prefix)

    async def alist(self, prefix: str = "") -> builtins.list[ObjectInfo]:
        return await asyncio.to_thread(self.list, prefix)

    async def aclose(self) -> None:
        await asyncio.to_thread(self.close)

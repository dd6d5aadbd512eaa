"""Run one test through both flavours of an API, and check that the flavours match.

Every ckpt API that does IO comes as a twin pair, ``op`` and ``aop``, with the same signature.
:class:`Twins` lets a test be written once against ``op`` and run twice: in ``sync`` mode it calls
``obj.op(...)``; in ``async`` mode it runs ``obj.aop(...)`` to completion on one event loop that
lives for the whole test. One loop per test, not ``asyncio.run`` per call: asyncio clients (Redis,
aiohttp sessions inside s3fs) bind to the loop they were first used on.

:func:`twin_mismatches` is the static half: it compares the signatures of the pairs on a class.

This module imports nothing from pytest, so it is usable from scripts too.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, Literal

from ..serde.base import Buffer

Mode = Literal["sync", "async"]
#: The two flavours every conformance test runs in.
MODES: tuple[Mode, ...] = ("sync", "async")


class Twins:
    """Call ``op`` or drive ``aop`` on one event loop, depending on ``mode``.

    ``twins(obj).put(key, data)`` is ``obj.put(key, data)`` in sync mode and
    ``loop.run_until_complete(obj.aput(key, data))`` in async mode. :meth:`close` ends the loop;
    a test fixture owns one :class:`Twins` per test.
    """

    def __init__(self, mode: Mode) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        self.mode: Mode = mode
        self.loop: asyncio.AbstractEventLoop | None = (
            asyncio.new_event_loop() if mode == "async" else None
        )

    def call(self, obj: object, op: str, /, *args: Any, **kwargs: Any) -> Any:
        """``obj.op(*args, **kwargs)`` in this flavour (``op`` is always the sync name)."""
        if self.loop is None:
            return getattr(obj, op)(*args, **kwargs)
        twin = getattr(obj, "a" + op, None)
        if twin is None:
            raise AttributeError(
                f"{type(obj).__name__} has {op}() but no async twin a{op}(); every IO method "
                "needs both flavours"
            )
        awaitable = twin(*args, **kwargs)
        if not inspect.isawaitable(awaitable):
            raise TypeError(
                f"{type(obj).__name__}.a{op}() returned {type(awaitable).__name__}, not an "
                "awaitable; async twins must be coroutine functions"
            )
        return self.loop.run_until_complete(awaitable)

    def run(self, awaitable: Any) -> Any:
        """Run any awaitable on this test's loop (async mode only)."""
        if self.loop is None:
            raise RuntimeError("Twins.run() needs async mode")
        return self.loop.run_until_complete(awaitable)

    def __call__(self, obj: object) -> Any:
        """A proxy whose methods are ``obj``'s methods in this flavour."""
        return Driven(self, obj)

    def close(self) -> None:
        if self.loop is not None and not self.loop.is_closed():
            self.loop.run_until_complete(self.loop.shutdown_asyncgens())
            self.loop.close()


class Driven:
    """``Twins(mode)(obj)``: attribute access returns the method in the chosen flavour."""

    def __init__(self, twins: Twins, obj: object) -> None:
        self._twins = twins
        self._obj = obj

    def __getattr__(self, op: str) -> Callable[..., Any]:
        if op.startswith("_"):
            raise AttributeError(op)
        return functools.partial(self._twins.call, self._obj, op)

    def __repr__(self) -> str:
        return f"<{self._twins.mode} {self._obj!r}>"


# -- signature parity ----------------------------------------------------------------------------


def _public_methods(cls: type) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in dir(cls):
        if name.startswith("_"):
            continue
        attr = inspect.getattr_static(cls, name)
        if isinstance(attr, (staticmethod, classmethod, property)):
            continue
        if inspect.isfunction(attr):
            out[name] = attr
    return out


def _signature(func: Any) -> inspect.Signature:
    # eval_str: ``list[ObjectInfo]`` and ``builtins.list[ObjectInfo]`` are the same annotation.
    return inspect.signature(func, eval_str=True)


def twin_mismatches(cls: type, required: Iterable[str] = ()) -> list[str]:
    """Problems with the ``op``/``aop`` pairs of ``cls``, as readable sentences (empty if none).

    Checked: each name in ``required`` has both flavours; every public coroutine method ``aop``
    has a plain ``op``; each pair has the same parameters (names, kinds, defaults, annotations)
    and return annotation; ``aop`` is a coroutine function and ``op`` is not.
    """
    methods = _public_methods(cls)
    problems: list[str] = []
    pairs: set[str] = set()
    for name in required:
        if name not in methods:
            problems.append(f"{cls.__name__} lacks the sync op {name}()")
        if "a" + name not in methods:
            problems.append(f"{cls.__name__} lacks the async twin a{name}() of {name}()")
        pairs.add(name)
    for name, func in methods.items():
        if name.startswith("a") and inspect.iscoroutinefunction(func):
            if name[1:] not in methods:
                problems.append(f"{cls.__name__}.{name}() has no sync twin {name[1:]}()")
            pairs.add(name[1:])
    for op in sorted(pairs):
        sync, async_ = methods.get(op), methods.get("a" + op)
        if sync is None or async_ is None:
            continue
        where = f"{cls.__name__}.{op}/a{op}"
        if inspect.iscoroutinefunction(sync):
            problems.append(f"{where}: the sync flavour {op}() is a coroutine function")
        if not inspect.iscoroutinefunction(async_):
            problems.append(f"{where}: the async flavour a{op}() is not a coroutine function")
        s, a = _signature(sync), _signature(async_)
        if s.parameters != a.parameters:
            problems.append(f"{where}: parameters differ: {op}{s} vs a{op}{a}")
        elif s.return_annotation != a.return_annotation:
            problems.append(
                f"{where}: return annotations differ: {s.return_annotation!r} vs "
                f"{a.return_annotation!r}"
            )
    return problems


# -- payloads --------------------------------------------------------------------------------------


class ChunkedPayload:
    """A :class:`~ckpt_core.stores.Payload` over fixed chunks; re-iterable, counts iterations."""

    def __init__(self, chunks: Sequence[Buffer]) -> None:
        self.chunks = list(chunks)
        self.size = sum(memoryview(c).nbytes for c in self.chunks)
        self.iterations = 0

    def __iter__(self) -> Iterator[Buffer]:
        self.iterations += 1
        yield from self.chunks

    def to_bytes(self) -> bytes:
        return b"".join(self.chunks)


class GeneratedPayload:
    """``size`` bytes produced chunk by chunk on iteration, never held whole.

    The content is a deterministic function of the offset, so a reader can check it with
    :meth:`expected` without the writer keeping a copy.
    """

    def __init__(self, size: int, chunk: int = 1 << 20, seed: int = 0) -> None:
        self.size = size
        self.chunk = chunk
        self.seed = seed

    def _piece(self, index: int, length: int) -> bytes:
        stamp = ((index * 2654435761 + self.seed) & 0xFFFFFFFF).to_bytes(4, "big")
        return (stamp * (length // 4 + 1))[:length]

    def __iter__(self) -> Iterator[Buffer]:
        for index, start in enumerate(range(0, self.size, self.chunk)):
            yield self._piece(index, min(self.chunk, self.size - start))

    def expected(self) -> bytes:
        """The whole content (for comparisons in tests with small sizes)."""
        return b"".join(self)

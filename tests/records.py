"""Self-checking records for the multi-writer tests: a torn or mixed record is detectable."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any


def versioned(writer: int, version: int, size: int) -> bytes:
    """A self-checking record: a header naming its writer, version and size, then filler."""
    head = f"{writer}:{version}:{size}:".encode()
    return head + bytes([(writer * 31 + version) % 251]) * (size - len(head))


def check_versioned(data: bytes) -> str | None:
    """``None`` if ``data`` is one whole record made by :func:`versioned`, else why not."""
    try:
        writer, version, size, _ = data.split(b":", 3)
        expected = versioned(int(writer), int(version), int(size))
    except ValueError:
        return f"unparseable record head {data[:24]!r}"
    return None if data == expected else f"torn record {data[:24]!r} ({len(data)} bytes)"


def read_while_running(
    store: Any, key: str, procs: Sequence[Any], min_reads: int, pause: float = 0.0
) -> list[str]:
    """Read ``key`` over and over while any of the writer ``procs`` is alive (and at least
    ``min_reads`` times): the problems found, a miss or a torn record each (empty when none)."""
    reads, problems = 0, []
    while any(p.is_alive() for p in procs) or reads < min_reads:
        data = store.get(key)
        reads += 1
        problem = "a miss" if data is None else check_versioned(bytes(data))
        if problem:
            problems.append(problem)
        if pause:
            time.sleep(pause)  # leave the cores to the writers and the server
    return problems

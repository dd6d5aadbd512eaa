"""Self-checking records for the multi-writer tests: a torn or mixed record is detectable."""

from __future__ import annotations


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

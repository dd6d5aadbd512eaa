"""Every error ckpt raises, in one tree.

::

    CheckpointError                       catch-all for ckpt
    ├── CheckpointNotFound  (LookupError)     no record for the node in the run or its correlation
    ├── CheckpointCorrupted (ValueError)      checksum/signature mismatch, truncated, malformed
    ├── SerializationError  (TypeError)       the value cannot be encoded with the allowed codecs
    ├── SchemaMismatch      (TypeError)       the record does not validate against ``schema=``
    ├── InvalidKey          (ValueError)      an id or argument cannot be turned into a key
    ├── StoreUnavailable    (ConnectionError) the backend did not answer after retries, disk full
    ├── StoreConfigError    (ValueError)      wrong URL or options (no such bucket, refused auth)
    └── ConcurrentRunError                    another attempt of the correlation holds the lease

Each error carries the offending key or value in its message and says what to do next: these
messages are read by someone paging through logs at 3 a.m. URLs in messages are always redacted.
"""

from __future__ import annotations


class CheckpointError(Exception):
    """Base class of every ckpt error."""


class CheckpointNotFound(CheckpointError, LookupError):
    """No checkpoint exists for the node, in the run scope or in its correlation."""

    def __init__(self, message: str, *, node: str | None = None, key: str | None = None) -> None:
        super().__init__(message)
        self.node = node
        self.key = key


class CheckpointCorrupted(CheckpointError, ValueError):
    """A stored record failed verification; it is never returned as data."""

    def __init__(self, message: str, *, key: str | None = None) -> None:
        super().__init__(message)
        self.key = key


class SerializationError(CheckpointError, TypeError):
    """The value (or a stored payload) cannot be encoded/decoded with the allowed codecs."""


class SchemaMismatch(CheckpointError, TypeError):
    """The stored value does not match the ``schema=`` the caller asked for."""


class InvalidKey(CheckpointError, ValueError):
    """An id, node name or function argument cannot be turned into a key."""


class StoreUnavailable(CheckpointError, ConnectionError):
    """The backend is down or unreachable after a bounded retry."""


class StoreConfigError(CheckpointError, ValueError):
    """The store URL or its options are wrong (unknown scheme, missing bucket, refused auth)."""


class ConcurrentRunError(CheckpointError):
    """Another attempt of the same correlation is running (single-writer mode)."""


class CheckpointWarning(UserWarning):
    """Warnings about checkpointing being skipped or degraded."""

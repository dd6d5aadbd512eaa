"""Every error ckpt raises, in one tree.

::

    CheckpointError                       catch-all for ckpt
    ├── CheckpointNotFound  (LookupError)     no record for the node in the run or its correlation
    ├── CheckpointCorrupted (ValueError)      checksum/signature mismatch, truncated, malformed
    │   └── EncryptionKeyError                no key, wrong key, or plaintext where a key is set
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

from collections.abc import Sequence


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


class EncryptionKeyError(CheckpointCorrupted):
    """A record cannot be opened with the configured encryption keys: it is encrypted and no key
    is configured, it was encrypted with a key that is not configured, or it is plaintext while a
    key is configured. Messages name key ids only, never keys.

    Attributes:
        record_kid: the key id the record was encrypted with (``None`` for a plaintext record).
        configured_kids: the ids of the keys this reader has (empty when none is configured).
    """

    def __init__(
        self,
        message: str,
        *,
        key: str | None = None,
        record_kid: str | None = None,
        configured_kids: Sequence[str] = (),
    ) -> None:
        super().__init__(message, key=key)
        self.record_kid = record_kid
        self.configured_kids = tuple(configured_kids)


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

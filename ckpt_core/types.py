"""The small value types shared by every layer: scopes, run identity, record info."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any


class Scope(str, enum.Enum):
    """Who can see a checkpoint and when it is deleted.

    ``RUN``: this attempt only; deleted when the attempt finishes (success or failure).
    ``CORRELATION``: every attempt of the correlation, so a retry resumes; deleted after success
    unless retention keeps it, kept after a failure until ``cleanup_correlation`` or gc.
    """

    RUN = "run"
    CORRELATION = "correlation"

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class RunContext:
    """Identity of one attempt of a pipeline.

    Attributes:
        run_id: this attempt (a Prefect flow-run attempt, a Dagster run, a script invocation).
        correlation_id: the family of attempts retrying one logical job; defaults to ``run_id``.
        attempt: 1-based attempt number, recorded in each checkpoint's header.
        max_attempts: how many attempts the orchestrator allows (informational).
    """

    run_id: str
    correlation_id: str = ""
    attempt: int = 1
    max_attempts: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.run_id, str):
            raise TypeError(f"run_id must be str, got {type(self.run_id).__name__}")
        if not self.correlation_id:
            object.__setattr__(self, "correlation_id", self.run_id)


@dataclass(frozen=True)
class CheckpointInfo:
    """What is known about one stored checkpoint without decoding its payload.

    ``lookup`` and ``list`` fill the fields the store reports (key, size, modified); ``save`` and
    ``read_header`` also fill the header fields (codec, checksum, ids).
    """

    namespace: str
    node: str
    scope: Scope
    key: str
    size: int
    modified: float | None = None
    codec: str | None = None
    checksum: str | None = None
    schema: str | None = None
    run_id: str | None = None
    correlation_id: str | None = None
    attempt: int | None = None
    created_at: float | None = None
    signed: bool = False
    encrypted: bool = False
    meta: dict[str, Any] = field(default_factory=dict)

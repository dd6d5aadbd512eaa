"""ckpt: checkpoint pipeline steps so a retried run resumes instead of recomputing.

Quick tour::

    import ckpt_core as ckpt

    @ckpt.checkpointed
    def transform(rows): ...

    with ckpt.run("nightly-2026-11-22", store="./.ckpt"):
        transform(extract())

The layers, top to bottom: the decorator and run context (:mod:`.decorator`, :mod:`.context`), the
:class:`CheckpointManager` (:mod:`.manager`), the record envelope and codecs (:mod:`.envelope`,
:mod:`.serde`), and bytes-only stores (:mod:`.stores`). Importing this package imports no
orchestrator and no optional backend.
"""

from .context import ActiveRun, NodeEvent, Run, current_run, run
from .decorator import checkpointed
from .errors import (
    CheckpointCorrupted,
    CheckpointError,
    CheckpointNotFound,
    CheckpointWarning,
    ConcurrentRunError,
    EncryptionKeyError,
    InvalidKey,
    SchemaMismatch,
    SerializationError,
    StoreConfigError,
    StoreUnavailable,
)
from .lease import Lease, LeaseHolder
from .manager import CheckpointManager
from .redact import redact_url
from .stores import FsspecStore, MemoryStore, ObjectInfo, Store, open_store, register_store
from .types import CheckpointInfo, RunContext, Scope

__version__ = "0.1.0"

__all__ = [
    "ActiveRun",
    "CheckpointCorrupted",
    "CheckpointError",
    "CheckpointInfo",
    "CheckpointManager",
    "CheckpointNotFound",
    "CheckpointWarning",
    "ConcurrentRunError",
    "EncryptionKeyError",
    "FsspecStore",
    "InvalidKey",
    "Lease",
    "LeaseHolder",
    "MemoryStore",
    "NodeEvent",
    "ObjectInfo",
    "Run",
    "RunContext",
    "SchemaMismatch",
    "Scope",
    "SerializationError",
    "Store",
    "StoreConfigError",
    "StoreUnavailable",
    "__version__",
    "checkpointed",
    "current_run",
    "open_store",
    "redact_url",
    "register_store",
    "run",
]

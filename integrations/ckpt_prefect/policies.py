"""Cache policies that make a retried flow run skip the tasks that already finished.

``RESUME`` keys a task call by correlation, task and inputs. The correlation is the flow run id
(stable across flow retries) or the correlation the flow declared with
:func:`ckpt_prefect.resumable`, so a task that finished in a failed attempt, or in a failed earlier
flow run of the same logical job, is found and not run again.

The task is named by its file and qualified name (:func:`task_identity`), not by its source
code, so editing an unrelated line of the file does not invalidate every checkpoint; compose with
Prefect's ``TASK_SOURCE`` when a code change should recompute (``RESUME + TASK_SOURCE``). Exclude
unhashable arguments such as clients with ``RESUME - "client"``.

``RESUME_RUN`` adds the attempt to the key, and ``CheckpointStorage`` files its results in the RUN
scope: they are reused within one attempt only and deleted when the attempt ends.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field, replace
from functools import lru_cache
from pathlib import PurePath
from typing import Any

from prefect.cache_policies import CachePolicy, Inputs
from prefect.context import TaskRunContext

from ckpt_core import Scope

from .correlation import current_identity


def task_identity(fn: Any) -> str:
    """``<file stem>.<qualname>`` of a task function.

    The file stem, not ``__module__``: the same file is ``__main__`` when run as a script,
    ``flows`` when a worker loads the entrypoint ``flows.py:nightly`` and ``pkg.flows`` when
    imported, and every attempt of a correlation must name the task the same way.
    """
    qualname = getattr(fn, "__qualname__", None) or type(fn).__qualname__
    filename = getattr(getattr(fn, "__code__", None), "co_filename", None)
    return _task_identity(filename, qualname, str(getattr(fn, "__module__", "?")))


@lru_cache(maxsize=1024)
def _task_identity(filename: str | None, qualname: str, module: str) -> str:
    # Cached: it runs for every task run, and parsing the path is most of its cost.
    where = PurePath(filename).stem if filename else module
    return f"{where}.{qualname}"


def _digest(*parts: str | int | None) -> str:
    """The key digest of ``parts``: byte for byte what Prefect's ``hash_objects(*parts)`` gives
    for these JSON-native parts (MD5 of ``json.dumps([parts, {}], sort_keys=True)``), so keys
    stay those of earlier versions, without building a pydantic serializer and importing its
    JSON library by name on every task run as ``hash_objects`` does."""
    raw = json.dumps([list(parts), {}], sort_keys=True).encode()
    return hashlib.md5(raw, usedforsecurity=False).hexdigest()


@dataclass
class Resume(CachePolicy):
    """Key = correlation + task (:func:`task_identity`) + inputs (+ attempt for ``Scope.RUN``).

    Attributes:
        scope: ``Scope.CORRELATION`` (every attempt of the correlation sees the result) or
            ``Scope.RUN`` (this attempt only).
        exclude: argument names left out of the key (``RESUME - "client"``).
    """

    scope: Scope = Scope.CORRELATION
    exclude: list[str] = field(default_factory=list)

    @property
    def __ckpt_scope__(self) -> Scope:
        """Read by ``CheckpointStorage`` to file results in the right scope."""
        return Scope(self.scope)

    def compute_key(
        self,
        task_ctx: TaskRunContext,
        inputs: dict[str, Any],
        flow_parameters: dict[str, Any],
        **kwargs: Any,
    ) -> str | None:
        if task_ctx is None:
            return None
        identity = current_identity()
        task_name = task_identity(task_ctx.task.fn)
        # Prefect's own Inputs policy: same hashing, same stable transforms, same error message
        # naming the unhashable argument.
        inputs_key = Inputs(exclude=list(self.exclude)).compute_key(
            task_ctx=task_ctx, inputs=inputs, flow_parameters=flow_parameters
        )
        parts: list[str | int | None] = [identity.correlation_id, task_name, inputs_key]
        if Scope(self.scope) is Scope.RUN:
            parts.append(identity.attempt)
        return f"{task_name}:{_digest(*parts)}"

    def __sub__(self, other: str) -> Resume:
        if not isinstance(other, str):
            raise TypeError("Can only subtract argument names (str) from cache policies.")
        return replace(self, exclude=[*self.exclude, other])


#: Resume across attempts and across flow runs of the same declared correlation.
RESUME = Resume()
#: Reuse within one attempt only; results are deleted when the attempt ends.
RESUME_RUN = Resume(scope=Scope.RUN)

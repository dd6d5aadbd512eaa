"""Who is writing: Prefect's run identities mapped to a ckpt namespace, correlation and attempt.

Prefect's result store hands the storage block only a key and some bytes. The rest comes from the
run context at the time of the call:

- **namespace**: the block's ``namespace`` field, else the flow's name;
- **correlation**: the flow run id (stable across in-process retries and ``prefect flow-run
  retry``), or the correlation the flow declared with :func:`ckpt_prefect.resumable`, rendered from
  the flow name and the flow run's parameters, so a *new* flow run of the same logical job (same
  date, say) resumes from a failed one;
- **attempt**: the flow run's ``run_count``; the RUN scope of an attempt is the run id
  ``"<flow run id>#<attempt>"``;
- an in-process **subflow** takes all three from the flow run at the root of its tree.

The declared correlation lives on the lifecycle hooks the flow carries (see :mod:`.hooks`), so the
flow object is the single source of truth: the block, the cache policy and the hooks all read it
from there, and ``flow.with_options(...)`` keeps it.

Parameters are taken from ``flow_run.parameters`` (the JSON form Prefect stores) in every place,
so the hooks, which only see that form, render exactly the same correlation as the tasks.
"""

from __future__ import annotations

import string
import threading
from collections import OrderedDict
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, replace
from typing import Any

from ckpt_core import CheckpointError, InvalidKey, RunContext

#: A correlation declaration: a ``str.format`` template over ``flow_name`` and ``parameters``
#: (``"{flow_name}-{parameters[date]}"``), or a callable taking the parameters dict.
Correlation = str | Callable[[Mapping[str, Any]], str]

_TEMPLATE_FIELDS = ("flow_name", "parameters")


class OutsideFlowRun(CheckpointError):
    """ckpt-storage was used outside any Prefect flow or task run, so it cannot tell which
    run a result belongs to."""


@dataclass(frozen=True)
class CorrelationSpec:
    """A flow's declared correlation, checked once when it is declared."""

    correlation: Correlation

    def check(self, flow_name: str, parameter_names: Collection[str]) -> None:
        """Refuse a template that names an unknown field or parameter, at decoration time."""
        if not isinstance(self.correlation, str):
            if not callable(self.correlation):
                raise TypeError(
                    f"correlation= for flow {flow_name!r} must be a str template or a callable, "
                    f"got {type(self.correlation).__name__}"
                )
            return
        for _literal, field, _spec, _conv in string.Formatter().parse(self.correlation):
            if field is None:
                continue
            root, _, rest = field.partition("[")
            root = root.split(".", 1)[0]
            if root not in _TEMPLATE_FIELDS:
                raise ValueError(
                    f"correlation template {self.correlation!r} of flow {flow_name!r} uses "
                    f"{{{field}}}; the template may use {{flow_name}} and "
                    "{parameters[<name>]} only"
                )
            if root == "parameters" and rest:
                name = rest.split("]", 1)[0].strip("'\"")
                if name not in parameter_names:
                    known = ", ".join(sorted(parameter_names)) or "none"
                    raise ValueError(
                        f"correlation template {self.correlation!r} of flow {flow_name!r} "
                        f"uses parameter {name!r}, which the flow does not have "
                        f"(its parameters: {known})"
                    )

    def render(self, flow_name: str, parameters: Mapping[str, Any]) -> str:
        """The correlation id of one flow run."""
        try:
            if isinstance(self.correlation, str):
                value: Any = self.correlation.format(
                    flow_name=flow_name, parameters=dict(parameters)
                )
            else:
                value = self.correlation(dict(parameters))
        except (KeyError, IndexError, AttributeError) as exc:
            raise InvalidKey(
                f"cannot render the correlation {self.correlation!r} of flow {flow_name!r} "
                f"from parameters {sorted(parameters)}: missing {exc}"
            ) from None
        if not isinstance(value, str) or not value:
            raise InvalidKey(
                f"the correlation {self.correlation!r} of flow {flow_name!r} gave "
                f"{value!r}; it must give a non-empty str"
            )
        return value


@dataclass(frozen=True)
class Identity:
    """Where one flow run attempt files its checkpoints."""

    namespace: str
    correlation_id: str
    flow_run_id: str
    attempt: int
    max_attempts: int | None = None

    def run_id(self, attempt: int | None = None) -> str:
        """The RUN-scope owner of an attempt (this one by default)."""
        return f"{self.flow_run_id}#{self.attempt if attempt is None else attempt}"

    def context(self, attempt: int | None = None) -> RunContext:
        return RunContext(
            run_id=self.run_id(attempt),
            correlation_id=self.correlation_id,
            attempt=self.attempt if attempt is None else attempt,
            max_attempts=self.max_attempts,
        )


def spec_of(flow: Any) -> CorrelationSpec | None:
    """The correlation a flow declared through its ckpt hooks, if any."""
    for hook in getattr(flow, "on_running_hooks", None) or ():
        spec = getattr(hook, "__ckpt_spec__", None)
        if isinstance(spec, CorrelationSpec):
            return spec
    return None


def has_lifecycle(flow: Any) -> bool:
    """Whether the flow carries ckpt lifecycle hooks (declared correlation or not)."""
    return any(hasattr(h, "__ckpt_spec__") for h in getattr(flow, "on_running_hooks", None) or ())


def _max_attempts(flow: Any) -> int | None:
    retries = getattr(flow, "retries", None)
    return retries + 1 if isinstance(retries, int) else None


def is_inprocess_subflow(flow_run: Any) -> bool:
    """A flow called from another flow's body: it has a parent task run and no deployment of
    its own (a ``run_deployment`` child has one, and is a job of its own)."""
    return (
        getattr(flow_run, "parent_task_run_id", None) is not None
        and getattr(flow_run, "deployment_id", None) is None
    )


#: Top-level flow runs seen in this process: flow run id -> flow object (for its declared
#: correlation when one of its subflows asks). Bounded: a served flow runs for months.
_known_flows: OrderedDict[str, Any] = OrderedDict()
#: Subflow run id -> the identity of the flow run at the root of its tree.
_subflow_roots: OrderedDict[str, Identity] = OrderedDict()
_registry_lock = threading.Lock()
_REGISTRY_SIZE = 512


def _remember(registry: OrderedDict[str, Any], key: str, value: Any) -> None:
    with _registry_lock:
        registry[key] = value
        registry.move_to_end(key)
        while len(registry) > _REGISTRY_SIZE:
            registry.popitem(last=False)


def _root_identity(flow_run: Any, namespace: str | None) -> Identity:
    """The identity of the top-level flow run an in-process subflow belongs to.

    A subflow files its results under its root's namespace, correlation and attempt: the root's
    retry reads a finished subflow's result in the root's context (Prefect reuses a completed
    subflow run instead of running it again), a re-run subflow resumes its finished tasks, and the
    root's lifecycle hooks clean everything. Costs one or two API reads per subflow run (cached).
    """
    key = str(flow_run.id)
    cached = _subflow_roots.get(key)
    if cached is None:
        from prefect.client.orchestration import get_client

        with get_client(sync_client=True) as client:
            current = flow_run
            while True:
                parent_task = client.read_task_run(current.parent_task_run_id)
                parent_id = parent_task.flow_run_id
                if parent_id is None:  # pragma: no cover - a subflow always has a parent flow
                    raise InvalidKey(f"subflow run {key} has no parent flow run")
                attempt = max(int(parent_task.flow_run_run_count or 0), 1)
                parent = client.read_flow_run(parent_id)
                if not is_inprocess_subflow(parent):
                    break
                current = parent
            flow = _known_flows.get(str(parent_id))
            if flow is not None:
                name, spec, max_attempts = flow.name, spec_of(flow), _max_attempts(flow)
            else:
                name = client.read_flow(parent.flow_id).name
                spec, max_attempts = None, None
        parent_key = str(parent_id)
        cached = Identity(
            namespace=name,
            correlation_id=(
                spec.render(name, parent.parameters or {}) if spec is not None else parent_key
            ),
            flow_run_id=parent_key,
            attempt=attempt,
            max_attempts=max_attempts,
        )
        _remember(_subflow_roots, key, cached)
    return replace(cached, namespace=namespace) if namespace else cached


def flow_identity(flow: Any, flow_run: Any, namespace: str | None) -> Identity:
    """Identity of a flow run attempt, from the flow object and its ``FlowRun``.

    An in-process subflow gets the identity of the flow run at the root of its tree (see
    :func:`_root_identity`).
    """
    if is_inprocess_subflow(flow_run):
        return _root_identity(flow_run, namespace)
    flow_run_id = str(flow_run.id)
    if _known_flows.get(flow_run_id) is not flow:
        _remember(_known_flows, flow_run_id, flow)
    spec = spec_of(flow)
    correlation = (
        spec.render(flow.name, flow_run.parameters or {}) if spec is not None else flow_run_id
    )
    return Identity(
        namespace=namespace or flow.name,
        correlation_id=correlation,
        flow_run_id=flow_run_id,
        attempt=max(int(flow_run.run_count or 0), 1),
        max_attempts=_max_attempts(flow),
    )


def current_identity(namespace: str | None = None) -> Identity:
    """Identity of the Prefect run the caller is in (a task run, or the flow run itself).

    Raises:
        OutsideFlowRun: no flow or task run is active (``state.result()`` called from a plain
            script, for example).
    """
    from prefect.context import FlowRunContext, TaskRunContext

    flow_ctx = FlowRunContext.get()
    if flow_ctx is not None and flow_ctx.flow_run is not None and flow_ctx.flow is not None:
        return flow_identity(flow_ctx.flow, flow_ctx.flow_run, namespace)
    task_ctx = TaskRunContext.get()
    if task_ctx is not None:
        # A task called without a flow: its own task run is the correlation (task retries
        # keep the id); no lifecycle hooks run, so its records stay until `ckpt gc`.
        task_run = task_ctx.task_run
        return Identity(
            namespace=namespace or "prefect-tasks",
            correlation_id=str(task_run.id),
            flow_run_id=str(task_run.id),
            attempt=max(int(task_run.run_count or 0), 1),
        )
    raise OutsideFlowRun(
        "ckpt-storage files each result under the flow run that wrote it, and no Prefect flow "
        "or task run is active here. Read results inside the flow run (for example with "
        "state.result() in the flow), or use another result storage for results you fetch "
        "from outside a run"
    )

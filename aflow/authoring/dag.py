"""DAG: a named graph of tasks with a schedule, as Airflow users write it."""

from __future__ import annotations

import contextvars
import functools
import inspect
import re
from collections.abc import Callable, Iterable
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from aflow.authoring.assets import as_condition
from aflow.authoring.deadlines import DeadlineAlert, as_deadlines
from aflow.authoring.params import ParamsDict
from aflow.authoring.webhooks import Webhook
from aflow.exceptions import (
    CycleError,
    DagDefinitionError,
    DuplicateTaskIdError,
    TaskAlreadyInDagError,
)

if TYPE_CHECKING:
    from aflow.authoring.baseoperator import BaseOperator

_ID_RE = re.compile(r"^[A-Za-z0-9_.\-]+$")

_dag_context: contextvars.ContextVar[list[DAG]] = contextvars.ContextVar("aflow_dag_stack")
# While a DAG file is being loaded, DAGs closed by `with` (or built by @dag) are collected
# here, so a DAG need not be bound to a module-level name (Airflow's auto-register).
_loading: contextvars.ContextVar[list[DAG] | None] = contextvars.ContextVar(
    "aflow_dag_loading", default=None
)


def collect_dags_into(registry: list[DAG] | None) -> contextvars.Token[list[DAG] | None]:
    return _loading.set(registry)


def stop_collecting(token: contextvars.Token[list[DAG] | None]) -> None:
    _loading.reset(token)

ScheduleArg = Any  # a cron string, a preset, a timedelta, None, or assets (see assets.py)
Callback = Callable[[dict[str, Any]], Any]  # a function or a notifier, called with a context


def validate_id(kind: str, value: str) -> str:
    if not isinstance(value, str) or not value or len(value) > 250 or not _ID_RE.match(value):
        raise DagDefinitionError(
            f"invalid {kind} {value!r}: use 1-250 letters, digits, '_', '-' or '.'"
        )
    return value


def current_dag() -> DAG | None:
    stack = _dag_context.get(None)
    return stack[-1] if stack else None


class DAG:
    """A workflow. Use as a context manager so tasks created inside join it."""

    def __init__(
        self,
        dag_id: str,
        *,
        schedule: ScheduleArg = None,
        start_date: datetime | None = None,
        end_date: datetime | None = None,
        catchup: bool = False,
        default_args: dict[str, Any] | None = None,
        params: dict[str, Any] | None = None,
        tags: Iterable[str] | None = None,
        description: str | None = None,
        doc_md: str | None = None,
        max_active_runs: int = 16,
        max_active_tasks: int = 16,
        dagrun_timeout: timedelta | None = None,
        on_success_callback: Callback | list[Callback] | None = None,
        on_failure_callback: Callback | list[Callback] | None = None,
        user_defined_macros: dict[str, Any] | None = None,
        user_defined_filters: dict[str, Callable[..., Any]] | None = None,
        template_searchpath: str | list[str] | None = None,
        render_template_as_native_obj: bool = False,
        is_paused_upon_creation: bool | None = None,
        webhooks: Iterable[Webhook] | None = None,
        deadline: DeadlineAlert | list[DeadlineAlert] | None = None,
    ) -> None:
        self.dag_id = validate_id("dag_id", dag_id)
        if start_date is not None and start_date.tzinfo is None:
            raise DagDefinitionError(
                f"DAG {dag_id!r}: start_date {start_date} must be timezone-aware "
                "(use e.g. datetime(2024, 1, 1, tzinfo=timezone.utc))"
            )
        # An asset condition is not a timetable: such a DAG has no timetable (schedule None)
        # and runs when its condition is met by asset events (see aflow.runtime.assets).
        self.asset_condition = as_condition(schedule)
        self.schedule = None if self.asset_condition is not None else schedule
        self.start_date = start_date
        self.end_date = end_date
        self.catchup = catchup
        self.default_args: dict[str, Any] = dict(default_args or {})
        self.params = ParamsDict(params or {})
        self.tags = sorted(set(tags or ()))
        self.description = description
        self.doc_md = doc_md
        self.max_active_runs = max_active_runs
        self.max_active_tasks = max_active_tasks
        self.dagrun_timeout = dagrun_timeout
        self.on_success_callback = on_success_callback
        self.on_failure_callback = on_failure_callback
        self.user_defined_macros = dict(user_defined_macros or {})
        self.user_defined_filters = dict(user_defined_filters or {})
        if isinstance(template_searchpath, str):
            template_searchpath = [template_searchpath]
        self.template_searchpath = list(template_searchpath or [])
        self.render_template_as_native_obj = render_template_as_native_obj
        self.is_paused_upon_creation = is_paused_upon_creation
        self.webhooks: list[Webhook] = list(webhooks or [])
        names = [w.name for w in self.webhooks]
        for name in names:
            if names.count(name) > 1:
                raise DagDefinitionError(f"DAG {dag_id!r}: webhook {name!r} is defined twice")
        self.deadlines = as_deadlines(f"DAG {dag_id!r}", deadline)  # see runtime/deadlines.py
        self.fileloc: str | None = _caller_file()
        self.task_dict: dict[str, BaseOperator] = {}
        self._topo_cache: list[BaseOperator] | None = None
        self._weights: dict[str, int] | None = None
        self._token: contextvars.Token[list[DAG]] | None = None

    # -- context manager -------------------------------------------------
    def __enter__(self) -> DAG:
        stack = list(_dag_context.get([]))
        stack.append(self)
        self._token = _dag_context.set(stack)
        return self

    def __exit__(self, exc_type: object, *rest: object) -> None:
        assert self._token is not None
        _dag_context.reset(self._token)
        self._token = None
        registry = _loading.get()
        if exc_type is None and registry is not None and self not in registry:
            registry.append(self)

    # -- tasks -------------------------------------------------------------
    @property
    def tasks(self) -> list[BaseOperator]:
        return list(self.task_dict.values())

    @property
    def task_ids(self) -> list[str]:
        return list(self.task_dict)

    def add_task(self, task: BaseOperator) -> None:
        if task.dag is not None and task.dag is not self:
            raise TaskAlreadyInDagError(
                f"task {task.task_id!r} is already in DAG {task.dag.dag_id!r} "
                f"and cannot be added to DAG {self.dag_id!r}"
            )
        if task.task_id in self.task_dict and self.task_dict[task.task_id] is not task:
            raise DuplicateTaskIdError(
                f"DAG {self.dag_id!r}: task_id {task.task_id!r} is used by more than one task"
            )
        self.task_dict[task.task_id] = task
        task.dag = self
        self._topo_cache = None
        self._weights = None

    def get_task(self, task_id: str) -> BaseOperator:
        from aflow.exceptions import TaskNotFound

        try:
            return self.task_dict[task_id]
        except KeyError:
            raise TaskNotFound(f"DAG {self.dag_id!r} has no task {task_id!r}") from None

    def has_task(self, task_id: str) -> bool:
        return task_id in self.task_dict

    @property
    def roots(self) -> list[BaseOperator]:
        return [t for t in self.task_dict.values() if not t.upstream_task_ids]

    @property
    def leaves(self) -> list[BaseOperator]:
        return [t for t in self.task_dict.values() if not t.downstream_task_ids]

    def invalidate_order(self) -> None:
        """Forget the cached task order (tasks or dependencies changed)."""
        self._topo_cache = None
        self._weights = None

    def priority_weights(self) -> dict[str, int]:
        """Each task's effective priority weight under its `weight_rule` (Airflow's):
        `downstream` adds the weights of every task downstream of it (so a long branch
        starts first), `upstream` those of every task upstream, `absolute` nothing.
        Computed once per DAG (until its tasks change); waiting tries start highest first."""
        if self._weights is None:
            self._weights = _effective_weights(self.topological_order())
        return self._weights

    def topological_order(self) -> list[BaseOperator]:
        """Tasks in an order where each comes after its upstream; raises CycleError."""
        if self._topo_cache is not None:
            return list(self._topo_cache)
        indegree = {tid: len(t.upstream_task_ids) for tid, t in self.task_dict.items()}
        ready = [tid for tid, n in indegree.items() if n == 0]
        order: list[BaseOperator] = []
        while ready:
            tid = ready.pop()
            task = self.task_dict[tid]
            order.append(task)
            for down in sorted(task.downstream_task_ids):  # same order in every process
                indegree[down] -= 1
                if indegree[down] == 0:
                    ready.append(down)
        if len(order) != len(self.task_dict):
            stuck = sorted(tid for tid, n in indegree.items() if n > 0)
            cycle = _find_cycle(self, set(stuck))
            raise CycleError(
                f"DAG {self.dag_id!r} has a cycle: {' >> '.join(cycle)}"
                if cycle
                else f"DAG {self.dag_id!r} has a cycle among {stuck}"
            )
        self._topo_cache = order
        return list(order)

    def validate(self) -> None:
        """Check the whole DAG: every dependency names a task of this DAG, no cycle."""
        for task in self.task_dict.values():
            for other in task.upstream_task_ids | task.downstream_task_ids:
                if other not in self.task_dict:
                    raise DagDefinitionError(
                        f"DAG {self.dag_id!r}: task {task.task_id!r} depends on "
                        f"{other!r}, which is not in this DAG"
                    )
        self.topological_order()
        from aflow.authoring.templating import has_templates

        for task in self.task_dict.values():  # once, at load, rather than at each first try
            task._aflow_templated = has_templates(task)
        self.priority_weights()
        if self.schedule is not None:
            from aflow.runtime.timetable import timetable_for

            timetable_for(self)  # raises on an invalid schedule

    def asset_watchers(self) -> list[dict[str, Any]]:
        """The watchers of the assets this DAG is scheduled on, JSON-ready."""
        if self.asset_condition is None:
            return []
        out: list[dict[str, Any]] = []
        seen: set[tuple[str, str]] = set()
        for asset in self.asset_condition.iter_assets():
            for w in asset.watchers:
                if (asset.uri, w.name) not in seen:
                    seen.add((asset.uri, w.name))
                    out.append(
                        {"uri": asset.uri, "name": w.name, "classpath": w.classpath,
                         "kwargs": w.kwargs}
                    )
        return out

    def structure(self) -> dict[str, Any]:
        """A JSON-ready description of the DAG, stored for the UI and other hosts."""
        out = self._structure()
        if self.asset_condition is not None:
            out["schedule"] = f"assets: {self.asset_condition!r}"
            out["asset_condition"] = self.asset_condition.to_json()
            out["asset_watchers"] = self.asset_watchers()
        return out

    def _structure(self) -> dict[str, Any]:
        return {
            "dag_id": self.dag_id,
            "schedule": _schedule_repr(self.schedule),
            "description": self.description,
            "tags": self.tags,
            "max_active_runs": self.max_active_runs,
            "max_active_tasks": self.max_active_tasks,
            "params": self.params.describe(),
            "webhooks": [w.describe() for w in self.webhooks],
            "tasks": [
                {
                    "task_id": t.task_id,
                    "operator": t.operator_name,
                    **({"mapped": True} if t.is_mapped else {}),
                    "trigger_rule": str(t.trigger_rule),
                    "retries": t.retries,
                    **({"max_active_tis_per_dag": t.max_active_tis_per_dag}
                       if t.max_active_tis_per_dag is not None else {}),
                    **({"max_active_tis_per_dagrun": t.max_active_tis_per_dagrun}
                       if t.max_active_tis_per_dagrun is not None else {}),
                    "upstream": sorted(t.upstream_task_ids),
                    "downstream": sorted(t.downstream_task_ids),
                    "ui_color": t.ui_color,
                    **({"outlets": [a.uri for a in t.outlets]} if t.outlets else {}),
                }
                for t in self.topological_order()
            ],
        }

    def __repr__(self) -> str:
        return f"<DAG {self.dag_id}>"


def _effective_weights(order: list[BaseOperator]) -> dict[str, int]:
    """Effective weights from the tasks in topological order: each task's own weight, plus,
    under the `downstream` (`upstream`) rule, the weights of every task it reaches."""
    weights = {t.task_id: t.priority_weight for t in order}
    rules = {str(t.weight_rule) for t in order}
    for rule in ("downstream", "upstream"):
        if rule in rules:
            _add_reached_weights(order, weights, downstream=rule == "downstream")
    return weights


def _add_reached_weights(
    order: list[BaseOperator], weights: dict[str, int], *, downstream: bool
) -> None:
    """Add to each task of that rule the weights of the tasks it reaches. The tasks a task
    reaches are a bitset (an int, one bit per task: a chain of 10,000 costs 10,000 big-int
    ORs, not 50 million set insertions; a sum of weights is a popcount per distinct
    weight). Bits are numbered from the far end, so a task near it has a small set, and a
    task's set is dropped once every task that builds on it has: memory follows the
    widest frontier, not tasks x tasks (10,000 tasks fanned into one join took 14 MB)."""
    n = len(order)
    index = {t.task_id: i for i, t in enumerate(order)}

    def bit(i: int) -> int:
        return 1 << (n - 1 - i if downstream else i)

    by_weight: dict[int, int] = {}
    for i, t in enumerate(order):
        by_weight[t.priority_weight] = by_weight.get(t.priority_weight, 0) | bit(i)
    rule = "downstream" if downstream else "upstream"
    live: dict[int, int] = {}  # task -> the set it reaches, while a task still needs it
    needed: dict[int, int] = {}  # task -> how many tasks still need its set
    for i in range(n - 1, -1, -1) if downstream else range(n):
        task = order[i]
        mask = 0
        for other in task.downstream_task_ids if downstream else task.upstream_task_ids:
            j = index[other]
            mask |= live[j] | bit(j)
            needed[j] -= 1
            if not needed[j]:
                del live[j], needed[j]
        if str(task.weight_rule) == rule and mask:
            weights[task.task_id] += sum(w * (mask & m).bit_count() for w, m in by_weight.items())
        users = len(task.upstream_task_ids if downstream else task.downstream_task_ids)
        if users:
            live[i], needed[i] = mask, users


def _schedule_repr(schedule: ScheduleArg) -> str | None:
    if schedule is None:
        return None
    if isinstance(schedule, timedelta):
        return f"every {schedule}"
    return str(schedule)


def _find_cycle(dag: DAG, candidates: set[str]) -> list[str]:
    """One concrete cycle among `candidates`, as a list of task ids closing on itself."""
    visiting: list[str] = []
    on_path: set[str] = set()
    done: set[str] = set()

    def walk(tid: str) -> list[str] | None:
        visiting.append(tid)
        on_path.add(tid)
        for down in sorted(dag.task_dict[tid].downstream_task_ids & candidates):
            if down in on_path:
                return visiting[visiting.index(down) :] + [down]
            if down not in done:
                found = walk(down)
                if found:
                    return found
        visiting.pop()
        on_path.discard(tid)
        done.add(tid)
        return None

    for start in sorted(candidates):
        if start not in done:
            found = walk(start)
            if found:
                return found
    return []


def _caller_file() -> str | None:
    frame = inspect.currentframe()
    try:
        while frame is not None:
            filename = frame.f_code.co_filename
            if "aflow/authoring" not in filename.replace("\\", "/"):
                return filename
            frame = frame.f_back
    finally:
        del frame
    return None


def dag(
    dag_id: str | None = None, **dag_kwargs: Any
) -> Callable[[Callable[..., Any]], Callable[..., DAG]]:
    """TaskFlow: `@dag(schedule=..., start_date=...)` turns a function into a DAG factory.

    The function's keyword arguments with defaults become the DAG's params.
    """

    def decorator(fn: Callable[..., Any]) -> Callable[..., DAG]:
        @functools.wraps(fn)
        def factory(*args: Any, **kwargs: Any) -> DAG:
            sig = inspect.signature(fn)
            params = dict(dag_kwargs.get("params") or {})
            for name, p in sig.parameters.items():
                if p.default is not inspect.Parameter.empty and name not in params:
                    params[name] = p.default
            other_kwargs = {k: v for k, v in dag_kwargs.items() if k != "params"}
            the_dag = DAG(dag_id or fn.__name__, params=params, **other_kwargs)
            the_dag.fileloc = inspect.getsourcefile(fn) or the_dag.fileloc
            if fn.__doc__ and not the_dag.doc_md:
                the_dag.doc_md = inspect.cleandoc(fn.__doc__)
            with the_dag:
                bound = sig.bind_partial(*args, **kwargs)
                call_kwargs = {}
                for name, p in sig.parameters.items():
                    if name in bound.arguments:
                        call_kwargs[name] = bound.arguments[name]
                    elif p.default is not inspect.Parameter.empty:
                        from aflow.authoring.xcom_arg import ParamRef

                        call_kwargs[name] = ParamRef(name)
                fn(**call_kwargs)
            return the_dag

        return factory

    if callable(dag_id):  # used as bare @dag
        fn, dag_id = dag_id, None
        return decorator(fn)  # type: ignore[return-value]
    return decorator

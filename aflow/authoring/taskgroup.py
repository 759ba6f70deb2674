"""TaskGroup: a named set of tasks (and groups) whose ids get the group's prefix
(`group.task`, `outer.inner.task`), that can be linked as a whole (`a >> group >> b`
links `a` to the group's roots and the group's leaves to `b`), and whose `default_args`
apply to the tasks made inside it. `@task_group` makes one per call of a function."""

from __future__ import annotations

import contextvars
import functools
import inspect
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from aflow.authoring.dag import DAG, current_dag, validate_id
from aflow.authoring.linkable import Linkable
from aflow.exceptions import DagDefinitionError, DuplicateTaskIdError

if TYPE_CHECKING:
    from aflow.authoring.baseoperator import BaseOperator

_group_context: contextvars.ContextVar[tuple[TaskGroup, ...]] = contextvars.ContextVar(
    "aflow_task_group_stack", default=()
)


def current_task_group() -> TaskGroup | None:
    """The innermost group being defined (`with TaskGroup(...)`), if any."""
    stack = _group_context.get()
    return stack[-1] if stack else None


def groups_of(dag: DAG) -> dict[str, TaskGroup]:
    """The task groups of `dag` by full group id (kept on the DAG object)."""
    groups = dag.__dict__.get("_aflow_task_groups")
    if groups is None:
        groups = dag.__dict__["_aflow_task_groups"] = {}
    return groups


class TaskGroup(Linkable):
    """`with TaskGroup("extract") as g:` — tasks made inside are `extract.<task_id>`.

    `prefix_group_id=False` keeps its children's ids as they are; `default_args` fill the
    arguments its tasks do not pass (over the DAG's and any outer group's)."""

    def __init__(
        self,
        group_id: str,
        *,
        prefix_group_id: bool = True,
        parent_group: TaskGroup | None = None,
        dag: DAG | None = None,
        default_args: dict[str, Any] | None = None,
        tooltip: str = "",
        ui_color: str = "CornflowerBlue",
        add_suffix_on_collision: bool = False,
    ) -> None:
        validate_id("group_id", group_id)
        if "." in group_id:
            raise DagDefinitionError(
                f"invalid group_id {group_id!r}: a group id cannot contain '.' "
                "(nest TaskGroups instead; '.' separates a group from its children)"
            )
        self.parent_group = parent_group if parent_group is not None else current_task_group()
        self.dag = dag or (self.parent_group.dag if self.parent_group else None) or current_dag()
        self.prefix_group_id = prefix_group_id
        self.default_args: dict[str, Any] = dict(default_args or {})
        self.tooltip = tooltip
        self.ui_color = ui_color
        self.children: dict[str, BaseOperator | TaskGroup] = {}
        self._label = group_id
        self.group_id = self._full_id(group_id)
        if self.dag is not None:
            taken = groups_of(self.dag)
            if add_suffix_on_collision:
                base, n = self._label, 1
                while self.group_id in taken or self.group_id in self.dag.task_dict:
                    self._label = f"{base}__{n}"
                    self.group_id = self._full_id(self._label)
                    n += 1
            if self.group_id in taken:
                raise DuplicateTaskIdError(
                    f"DAG {self.dag.dag_id!r}: group_id {self.group_id!r} is used by more than "
                    "one TaskGroup"
                )
            if self.group_id in self.dag.task_dict:
                raise DuplicateTaskIdError(
                    f"DAG {self.dag.dag_id!r}: group_id {self.group_id!r} is also a task_id"
                )
            taken[self.group_id] = self
        if self.parent_group is not None:
            self.parent_group.children[self.group_id] = self
        self._tokens: list[contextvars.Token[tuple[TaskGroup, ...]]] = []

    def _full_id(self, label: str) -> str:
        return self.parent_group.child_id(label) if self.parent_group is not None else label

    def child_id(self, label: str) -> str:
        """The id a child called `label` gets in this group (Airflow's rule: with
        prefix_group_id=False the child keeps `label`)."""
        return f"{self.group_id}.{label}" if self.prefix_group_id else label

    # -- context manager -------------------------------------------------
    def __enter__(self) -> TaskGroup:
        self._tokens.append(_group_context.set((*_group_context.get(), self)))
        return self

    def __exit__(self, *exc: object) -> None:
        _group_context.reset(self._tokens.pop())

    # -- membership --------------------------------------------------------
    def add(self, task: BaseOperator) -> None:
        if self.dag is None and task.dag is not None:
            self.dag = task.dag
        self.children[task.task_id] = task

    def iter_tasks(self) -> Iterator[BaseOperator]:
        """Every task in this group and its nested groups."""
        for child in self.children.values():
            if isinstance(child, TaskGroup):
                yield from child.iter_tasks()
            else:
                yield child

    def all_default_args(self) -> dict[str, Any]:
        """default_args of the outer groups, then this group's (inner ones win)."""
        out = self.parent_group.all_default_args() if self.parent_group is not None else {}
        out.update(self.default_args)
        return out

    @property
    def roots(self) -> list[BaseOperator]:
        """Its tasks with no upstream task inside the group."""
        tasks = list(self.iter_tasks())
        ids = {t.task_id for t in tasks}
        return [t for t in tasks if not (t.upstream_task_ids & ids)]

    @property
    def leaves(self) -> list[BaseOperator]:
        """Its tasks with no downstream task inside the group; a teardown stands aside
        (as in Airflow): in its place come the work tasks before it (not its setups), so
        `group >> report` waits for the work and the teardown runs on its own."""
        tasks = list(self.iter_tasks())
        by_id = {t.task_id: t for t in tasks}
        out: dict[str, BaseOperator] = {}

        def before_teardown(teardown: BaseOperator, seen: set[str]) -> None:
            for up_id in sorted(teardown.upstream_task_ids & by_id.keys()):
                up = by_id[up_id]
                if up_id in seen:
                    continue
                seen.add(up_id)
                if up.is_teardown:
                    before_teardown(up, seen)
                elif up.is_setup:
                    continue
                elif not any(not by_id[d].is_teardown
                             for d in up.downstream_task_ids & by_id.keys() if d != teardown.task_id):
                    out.setdefault(up_id, up)

        for t in tasks:
            if t.downstream_task_ids & by_id.keys():
                continue
            if t.is_teardown:
                before_teardown(t, set())
            else:
                out.setdefault(t.task_id, t)
        return list(out.values())

    def _ends(self, which: str) -> list[BaseOperator]:
        tasks = self.roots if which == "roots" else self.leaves
        if not tasks:
            raise DagDefinitionError(
                f"cannot set a dependency on TaskGroup {self.group_id!r}: it has no tasks yet"
            )
        return tasks

    # -- dependencies ------------------------------------------------------
    def set_downstream(self, other: Any) -> None:
        for leaf in self._ends("leaves"):
            leaf.set_downstream(other)

    def set_upstream(self, other: Any) -> None:
        for root in self._ends("roots"):
            root.set_upstream(other)


    def __repr__(self) -> str:
        return f"<TaskGroup: {self.group_id}>"


class _TaskGroupFunction:
    """What `@task_group` returns: each call makes a TaskGroup and calls the function in
    it. The call returns what the function returns (a task or XComArg to link to), or
    the group itself when the function returns None."""

    def __init__(self, function: Callable[..., Any], kwargs: dict[str, Any]) -> None:
        self.function = function
        self.kwargs = kwargs
        functools.update_wrapper(self, function)

    def override(self, **kwargs: Any) -> _TaskGroupFunction:
        return _TaskGroupFunction(self.function, {**self.kwargs, **kwargs})

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        group_kwargs = dict(self.kwargs)
        group_id = group_kwargs.pop("group_id", None) or self.function.__name__
        if "tooltip" not in group_kwargs and self.function.__doc__:
            group_kwargs["tooltip"] = inspect.cleandoc(self.function.__doc__)
        try:
            inspect.signature(self.function).bind(*args, **kwargs)
        except TypeError as exc:
            raise DagDefinitionError(f"task group {group_id!r}: bad arguments: {exc}") from None
        group_kwargs.setdefault("add_suffix_on_collision", True)
        with TaskGroup(group_id, **group_kwargs) as group:
            value = self.function(*args, **kwargs)
        return group if value is None else value


def task_group(
    python_callable: Callable[..., Any] | None = None, **kwargs: Any
) -> Any:
    """`@task_group` / `@task_group(group_id=..., prefix_group_id=..., default_args=...)`."""
    if python_callable is not None:
        return _TaskGroupFunction(python_callable, kwargs)
    return lambda fn: _TaskGroupFunction(fn, kwargs)

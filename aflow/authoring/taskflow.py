"""TaskFlow: `@task`, `@task.bash` turn functions into tasks; calling one inside a DAG
adds the task and returns an XComArg, so passing it to another task makes the dependency."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from aflow.authoring.baseoperator import BaseOperator
from aflow.authoring.dag import current_dag
from aflow.authoring.mapped import (
    MappedOperator,
    _check_expand_values,
    _split,
    check_expand_kwargs,
    refuse_unmappable,
)
from aflow.authoring.operators.bash import BashOperator
from aflow.authoring.operators.branch import BranchPythonOperator, ShortCircuitOperator
from aflow.authoring.operators.python import PythonOperator, context_kwargs
from aflow.authoring.sensors.base import BaseSensorOperator
from aflow.authoring.templating import jinja_env, render_value
from aflow.authoring.xcom_arg import XComArg, refuse_derived
from aflow.exceptions import DagDefinitionError, XComValueError


class _PythonDecoratedOperator(PythonOperator):
    def __init__(self, *, multiple_outputs: bool = False, **kwargs: Any) -> None:
        self.multiple_outputs = multiple_outputs
        super().__init__(**kwargs)

    def execute(self, context: dict[str, Any]) -> Any:
        result = super().execute(context)
        if inspect.isawaitable(result):

            async def finish() -> Any:
                return self._push_outputs(await result, context)

            return finish()
        return self._push_outputs(result, context)

    def _push_outputs(self, value: Any, context: dict[str, Any]) -> Any:
        if self.multiple_outputs and value is not None:
            if not isinstance(value, Mapping):
                raise XComValueError(
                    f"task {self.task_id!r} has multiple_outputs=True but returned "
                    f"{type(value).__name__}, not a dict"
                )
            for key, item in value.items():
                if not isinstance(key, str):
                    raise XComValueError(f"multiple_outputs keys must be strings, got {key!r}")
                context["ti"].xcom_push(key=key, value=item)
        return value


class _BashDecoratedOperator(BashOperator):
    """`@task.bash`: the function returns the command, which is then rendered and run."""

    template_fields: Sequence[str] = ("op_args", "op_kwargs", "env", "cwd")

    def __init__(
        self,
        *,
        python_callable: Callable[..., str],
        op_args: Sequence[Any] | None = None,
        op_kwargs: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        self.python_callable = python_callable
        self.op_args = list(op_args or [])
        self.op_kwargs = dict(op_kwargs or {})
        super().__init__(bash_command="", **kwargs)

    async def execute(self, context: dict[str, Any]) -> str | None:
        kwargs = context_kwargs(self.python_callable, self.op_args, self.op_kwargs, context)
        command = self.python_callable(*self.op_args, **kwargs)
        if inspect.isawaitable(command):
            command = await command
        if not isinstance(command, str) or not command.strip():
            raise DagDefinitionError(
                f"@task.bash function {self.task_id!r} must return a non-empty command string, "
                f"got {command!r}"
            )
        self.bash_command = render_value(command, context, jinja_env(self.dag))
        return await super().execute(context)


class _SensorDecoratedOperator(BaseSensorOperator):
    """`@task.sensor`: the function is the poke; it returns a bool or a PokeReturnValue
    (whose xcom_value becomes the task's XCom). Poke and reschedule modes; a function
    has no trigger, so it cannot run deferrable."""

    template_fields: Sequence[str] = ("op_args", "op_kwargs")

    def __init__(
        self,
        *,
        python_callable: Callable[..., Any],
        op_args: Sequence[Any] | None = None,
        op_kwargs: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        self.python_callable = python_callable
        self.op_args = list(op_args or [])
        self.op_kwargs = dict(op_kwargs or {})
        super().__init__(**kwargs)

    def is_async(self) -> bool:
        return inspect.iscoroutinefunction(self.python_callable)

    def poke(self, context: dict[str, Any]) -> Any:
        kwargs = context_kwargs(self.python_callable, self.op_args, self.op_kwargs, context)
        return self.python_callable(*self.op_args, **kwargs)


class DecoratedTask:
    """What `@task` returns: call it inside a DAG to add a task and get its XComArg."""

    def __init__(
        self,
        function: Callable[..., Any],
        operator_class: type[BaseOperator],
        kwargs: dict[str, Any],
    ) -> None:
        self.function = function
        self.operator_class = operator_class
        self.kwargs = kwargs
        functools.update_wrapper(self, function)

    def override(self, **kwargs: Any) -> DecoratedTask:
        return DecoratedTask(self.function, self.operator_class, {**self.kwargs, **kwargs})

    def _operator_kwargs(self) -> tuple[str, dict[str, Any]]:
        """(the new task's id, unique in its DAG; the operator's arguments)."""
        op_kwargs = dict(self.kwargs)
        task_id = op_kwargs.pop("task_id", None) or self.function.__name__
        dag = op_kwargs.get("dag") or current_dag()
        if dag is not None and "task_id" not in self.kwargs:
            from aflow.authoring.taskgroup import current_task_group

            group = op_kwargs.get("task_group") or current_task_group()
            task_id = _unique_task_id(dag.task_ids, task_id, group)
        if self.function.__doc__ and "doc_md" not in op_kwargs:
            op_kwargs["doc_md"] = inspect.cleandoc(self.function.__doc__)
        return task_id, op_kwargs

    def partial(self, **kwargs: Any) -> DecoratedPartial:
        """Fix some of the function's arguments for every instance of a mapped task."""
        return DecoratedPartial(self, kwargs)

    def expand(self, **mapped: Any) -> XComArg:
        """One task instance per element of the lists (their cross product if several)."""
        return DecoratedPartial(self, {}).expand(**mapped)

    def expand_kwargs(self, value: Any) -> XComArg:
        """One task instance per dict of function arguments in `value`."""
        return DecoratedPartial(self, {}).expand_kwargs(value)

    def __call__(self, *args: Any, **kwargs: Any) -> XComArg:
        task_id, op_kwargs = self._operator_kwargs()
        try:
            inspect.signature(self.function).bind(*args, **kwargs)
        except TypeError as exc:
            raise DagDefinitionError(f"task {task_id!r}: bad arguments: {exc}") from None
        for i, value in enumerate(args):
            refuse_derived(f"task {task_id!r}: argument {i + 1}", value)
        for name, value in kwargs.items():
            refuse_derived(f"task {task_id!r}: argument {name!r}", value)
        operator = self.operator_class(
            task_id=task_id,
            python_callable=self.function,
            op_args=args,
            op_kwargs=kwargs,
            **op_kwargs,
        )
        return XComArg(operator)


class DecoratedPartial:
    """`@task` function `.partial(**fixed)`: `.expand(**mapped)` or `.expand_kwargs(...)`
    adds the mapped task and returns its XComArg (the list of its instances' values)."""

    def __init__(self, decorated: DecoratedTask, kwargs: dict[str, Any]) -> None:
        refuse_unmappable(decorated.operator_class, decorated.function.__name__)
        for name, value in kwargs.items():
            refuse_derived(f"task {decorated.function.__name__!r}: partial({name}=...)", value)
        self.decorated = decorated
        self.kwargs = kwargs

    def _check(self, task_id: str, names: Any) -> None:
        sig = inspect.signature(self.decorated.function)
        for name in names:
            if name in self.kwargs:
                raise DagDefinitionError(
                    f"task {task_id!r}: {name!r} is given both to partial() and to expand()"
                )
        try:
            sig.bind_partial(**self.kwargs, **dict.fromkeys(names))
        except TypeError as exc:
            raise DagDefinitionError(f"task {task_id!r}: bad arguments: {exc}") from None

    def _make(self, task_id: str, op_kwargs: dict[str, Any], **mapping: Any) -> XComArg:
        base, own = _split(op_kwargs)
        operator = MappedOperator(
            operator_class=self.decorated.operator_class,
            partial_kwargs={
                **own, "python_callable": self.decorated.function, "op_kwargs": dict(self.kwargs),
            },
            mapped_into="op_kwargs",
            task_id=task_id,
            **mapping,
            **base,
        )
        return XComArg(operator)

    def expand(self, **mapped: Any) -> XComArg:
        task_id, op_kwargs = self.decorated._operator_kwargs()
        if not mapped:
            raise DagDefinitionError(f"task {task_id!r}: expand() needs an argument")
        self._check(task_id, list(mapped))
        _check_expand_values(task_id, mapped)
        return self._make(task_id, op_kwargs, expand_input=dict(mapped))

    def expand_kwargs(self, value: Any) -> XComArg:
        task_id, op_kwargs = self.decorated._operator_kwargs()
        check_expand_kwargs(task_id, value, lambda names: self._check(task_id, names))
        return self._make(task_id, op_kwargs, expand_kwargs_input=value)


def _unique_task_id(existing: list[str], base: str, group: Any = None) -> str:
    """`base`, or `base__1`, `base__2`... if its id (in `group`, if any) is taken."""
    def full(label: str) -> str:
        return group.child_id(label) if group is not None else label

    taken = set(existing)
    if full(base) not in taken:
        return base
    n = 1
    while full(f"{base}__{n}") in taken:
        n += 1
    return f"{base}__{n}"


def _decorator(
    operator_class: type[BaseOperator],
) -> Callable[..., Any]:
    def make(python_callable: Callable[..., Any] | None = None, **kwargs: Any) -> Any:
        if python_callable is not None:
            return DecoratedTask(python_callable, operator_class, kwargs)
        return lambda fn: DecoratedTask(fn, operator_class, kwargs)

    return make


class _TaskFactory:
    """`@task`, `@task(...)`, `@task.python`, `@task.bash`, `@task.sensor`, `@task.branch`,
    `@task.short_circuit`."""

    def __init__(self) -> None:
        self.python = _decorator(_PythonDecoratedOperator)
        self.bash = _decorator(_BashDecoratedOperator)
        self.sensor = _decorator(_SensorDecoratedOperator)
        self.branch = _decorator(BranchPythonOperator)
        self.short_circuit = _decorator(ShortCircuitOperator)

    def __call__(self, python_callable: Callable[..., Any] | None = None, **kwargs: Any) -> Any:
        return self.python(python_callable, **kwargs)


task = _TaskFactory()

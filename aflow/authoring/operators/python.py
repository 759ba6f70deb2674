"""PythonOperator: calls a Python callable, sync (in a worker thread) or async (on the loop)."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from aflow.authoring.baseoperator import BaseOperator
from aflow.exceptions import DagDefinitionError


def context_kwargs(
    fn: Callable[..., Any],
    args: Sequence[Any],
    kwargs: Mapping[str, Any],
    context: Mapping[str, Any],
) -> dict[str, Any]:
    """The keyword arguments to call `fn` with: `kwargs`, plus the context values that
    `fn` asks for by name (or all of them if it takes `**kwargs`), as Airflow does."""
    sig = inspect.signature(fn)
    params = list(sig.parameters.values())
    out = dict(kwargs)
    if any(p.kind is p.VAR_KEYWORD for p in params):
        for key, value in context.items():
            out.setdefault(key, value)
        return out
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    filled = {p.name for p in positional[: len(args)]}
    for p in params:
        if p.kind in (p.VAR_POSITIONAL, p.POSITIONAL_ONLY):
            continue
        if p.name in context and p.name not in out and p.name not in filled:
            out[p.name] = context[p.name]
    return out


class PythonOperator(BaseOperator):
    template_fields: Sequence[str] = ("templates_dict", "op_args", "op_kwargs")
    ui_color = "#ffefeb"

    def __init__(
        self,
        *,
        python_callable: Callable[..., Any],
        op_args: Sequence[Any] | None = None,
        op_kwargs: Mapping[str, Any] | None = None,
        templates_dict: dict[str, Any] | None = None,
        show_return_value_in_logs: bool = True,
        **kwargs: Any,
    ) -> None:
        if not callable(python_callable):
            raise DagDefinitionError(
                f"task {kwargs.get('task_id')!r}: python_callable must be callable"
            )
        self.python_callable = python_callable
        self.op_args = list(op_args or [])
        self.op_kwargs = dict(op_kwargs or {})
        self.templates_dict = templates_dict
        self.show_return_value_in_logs = show_return_value_in_logs
        super().__init__(**kwargs)

    def is_async(self) -> bool:
        return inspect.iscoroutinefunction(self.python_callable)

    def execute(self, context: dict[str, Any]) -> Any:
        """Call the callable; for an async callable this returns the coroutine to await."""
        if self.templates_dict is not None:
            context = {**context, "templates_dict": self.templates_dict}
        kwargs = context_kwargs(self.python_callable, self.op_args, self.op_kwargs, context)
        return self.python_callable(*self.op_args, **kwargs)

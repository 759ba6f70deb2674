"""PythonOperator: calls a Python callable, sync (in a worker thread) or async (on the loop)."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from aflow.authoring.baseoperator import BaseOperator
from aflow.exceptions import DagDefinitionError


@functools.lru_cache(maxsize=4096)
def _signature_facts(fn: Callable[..., Any]) -> tuple[bool, tuple[str, ...], tuple[str, ...]]:
    """(takes **kwargs, positional parameter names, keyword-passable names), cached."""
    params = list(inspect.signature(fn).parameters.values())
    var_kw = any(p.kind is p.VAR_KEYWORD for p in params)
    positional = tuple(
        p.name for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
    )
    by_name = tuple(
        p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
    )
    return var_kw, positional, by_name


def context_kwargs(
    fn: Callable[..., Any],
    args: Sequence[Any],
    kwargs: Mapping[str, Any],
    context: Mapping[str, Any],
) -> dict[str, Any]:
    """The keyword arguments to call `fn` with: `kwargs`, plus the context values that
    `fn` asks for by name (or all of them if it takes `**kwargs`), as Airflow does."""
    try:
        var_kw, positional, by_name = _signature_facts(fn)
    except TypeError:  # unhashable callable: no cache
        var_kw, positional, by_name = _signature_facts.__wrapped__(fn)
    out = dict(kwargs)
    if var_kw:
        for key, value in context.items():
            out.setdefault(key, value)
        return out
    filled = positional[: len(args)]
    for name in by_name:
        if name in context and name not in out and name not in filled:
            out[name] = context[name]
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

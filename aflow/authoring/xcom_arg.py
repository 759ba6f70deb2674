"""XComArg: a reference to a task's output, resolved when the consuming task runs."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from aflow.authoring.linkable import Linkable

if TYPE_CHECKING:
    from aflow.authoring.baseoperator import BaseOperator

RETURN_KEY = "return_value"


class XComArg(Linkable):
    """The XCom `key` of `operator` (its return value by default)."""

    def __init__(self, operator: BaseOperator, key: str = RETURN_KEY) -> None:
        self.operator = operator
        self.key = key

    def __getitem__(self, key: str) -> XComArg:
        """With `multiple_outputs=True`, `out["k"]` is the XCom pushed under key "k"."""
        return XComArg(self.operator, key)

    def resolve(self, context: dict[str, Any]) -> Any:
        return context["ti"].xcom_pull(task_ids=self.operator.task_id, key=self.key)


    def set_downstream(self, other: Any) -> None:
        self.operator.set_downstream(other)

    def set_upstream(self, other: Any) -> None:
        self.operator.set_upstream(other)

    def as_setup(self) -> XComArg:
        """Make its task a setup (see BaseOperator.as_setup)."""
        self.operator.as_setup()
        return self

    def as_teardown(self, *, setups: Any = None, on_failure_fail_dagrun: bool | None = None) -> XComArg:
        """Make its task a teardown (see BaseOperator.as_teardown)."""
        self.operator.as_teardown(setups=setups, on_failure_fail_dagrun=on_failure_fail_dagrun)
        return self

    def __iter__(self) -> Iterator[Any]:
        raise TypeError("an XComArg is resolved when its task runs and cannot be iterated here")

    def __repr__(self) -> str:
        return f"XComArg({self.operator.task_id!r}, key={self.key!r})"


class ParamRef:
    """A DAG param, passed to tasks by an `@dag` function; resolved at run time."""

    def __init__(self, name: str) -> None:
        self.name = name

    def resolve(self, context: dict[str, Any]) -> Any:
        return context["params"].get(self.name)

    def __repr__(self) -> str:
        return f"ParamRef({self.name!r})"


def iter_xcom_args(value: Any) -> Iterator[XComArg]:
    if isinstance(value, XComArg):
        yield value
    elif isinstance(value, list | tuple | set):
        for item in value:
            yield from iter_xcom_args(item)
    elif isinstance(value, dict):
        for item in value.values():
            yield from iter_xcom_args(item)


def resolve_refs(value: Any, context: dict[str, Any]) -> Any:
    """`value` with every XComArg and ParamRef inside it replaced by what it refers to."""
    if isinstance(value, XComArg | ParamRef):
        return value.resolve(context)
    if isinstance(value, list):
        return [resolve_refs(v, context) for v in value]
    if isinstance(value, tuple):
        return tuple(resolve_refs(v, context) for v in value)
    if isinstance(value, dict):
        return {k: resolve_refs(v, context) for k, v in value.items()}
    return value

"""XComArg: a reference to a task's output, resolved when the consuming task runs.

`out.map(fn)` and `out.zip(other, ...)` make lazy views of outputs (MapXComArg,
ZipXComArg) for dynamic task mapping only: `expand()` and `expand_kwargs()` resolve them
when the mapped task expands (see aflow.authoring.mapped), and `fn` is applied to an
element only when the instance for it is built.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from aflow.authoring.linkable import Linkable
from aflow.exceptions import DagDefinitionError

if TYPE_CHECKING:
    from aflow.authoring.baseoperator import BaseOperator

RETURN_KEY = "return_value"


class _NotSet:
    def __repr__(self) -> str:
        return "NOTSET"


NOTSET: Any = _NotSet()
"""`zip()` without a fillvalue: it stops at the shortest input."""


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

    def map(self, fn: Callable[[Any], Any]) -> MapXComArg:
        """For expand(): each element of this output (a list, or a dict's [key, value]
        pairs) passed through `fn`, a plain function, when its instance is built."""
        return MapXComArg(self, (_map_function(self, fn),))

    def zip(self, *others: Any, fillvalue: Any = NOTSET) -> ZipXComArg:
        """For expand(): tuples of this output's elements and those of `others` (outputs
        or literal lists), as long as the shortest, or the longest with `fillvalue`."""
        return ZipXComArg((self, *others), fillvalue)

    def __iter__(self) -> Iterator[Any]:
        raise TypeError("an XComArg is resolved when its task runs and cannot be iterated here")

    def __repr__(self) -> str:
        return f"XComArg({self.operator.task_id!r}, key={self.key!r})"


class DerivedXComArg(Linkable):
    """What `.map()` and `.zip()` make: a view of upstream outputs that only
    expand()/expand_kwargs() can take (they resolve it when the mapped task expands).
    With `>>`/`<<` it stands for the tasks whose outputs it reads."""

    def map(self, fn: Callable[[Any], Any]) -> MapXComArg:
        return MapXComArg(self, (_map_function(self, fn),))

    def zip(self, *others: Any, fillvalue: Any = NOTSET) -> ZipXComArg:
        return ZipXComArg((self, *others), fillvalue)

    def sources(self) -> Iterator[XComArg]:
        """The task outputs it reads: their tasks are upstream of the task expanding it."""
        raise NotImplementedError

    def set_downstream(self, other: Any) -> None:
        for arg in self.sources():
            arg.operator.set_downstream(other)

    def set_upstream(self, other: Any) -> None:
        for arg in self.sources():
            arg.operator.set_upstream(other)

    def __iter__(self) -> Iterator[Any]:
        raise TypeError(f"{self!r} is resolved when its mapped task expands and cannot be "
                        "iterated here")


class MapXComArg(DerivedXComArg):
    """`source.map(f).map(g)`: each element of `source` through f, then g."""

    def __init__(
        self, source: XComArg | DerivedXComArg, functions: tuple[Callable[[Any], Any], ...]
    ) -> None:
        self.source = source
        self.functions = functions

    def map(self, fn: Callable[[Any], Any]) -> MapXComArg:
        return MapXComArg(self.source, (*self.functions, _map_function(self, fn)))

    def sources(self) -> Iterator[XComArg]:
        yield from iter_xcom_args(self.source)

    def __repr__(self) -> str:
        names = ").map(".join(getattr(f, "__name__", repr(f)) for f in self.functions)
        return f"{self.source!r}.map({names})"


class ZipXComArg(DerivedXComArg):
    """`a.zip(b, c, fillvalue=...)`: tuples of the i-th elements of each input."""

    def __init__(self, inputs: tuple[Any, ...], fillvalue: Any = NOTSET) -> None:
        for i, value in enumerate(inputs[1:], 2):
            if isinstance(value, XComArg | DerivedXComArg):
                continue
            if not isinstance(value, list | tuple | Mapping):
                raise DagDefinitionError(
                    f"{inputs[0]!r}.zip(): input {i} is {type(value).__name__}; zip() takes "
                    "task outputs (XComArgs), their .map()/.zip() or literal lists and dicts"
                )
            inner = find_derived(value)
            if inner is not None:
                raise DagDefinitionError(
                    f"{inputs[0]!r}.zip(): input {i} holds {inner!r} inside a literal; "
                    "pass it to zip() directly"
                )
        self.inputs = inputs
        self.fillvalue = fillvalue

    def sources(self) -> Iterator[XComArg]:
        for value in self.inputs:
            yield from iter_xcom_args(value)

    def __repr__(self) -> str:
        rest = [repr(v) for v in self.inputs[1:]]
        if self.fillvalue is not NOTSET:
            rest.append(f"fillvalue={self.fillvalue!r}")
        return f"{self.inputs[0]!r}.zip({', '.join(rest)})"


def _map_function(source: Any, fn: Any) -> Callable[[Any], Any]:
    """`fn` if it can be applied to each element when an instance is built, else a
    DagDefinitionError: a @task is a task of its own (as in Airflow, it cannot be
    used), and an async function would give a coroutine, not a value."""
    from aflow.authoring.taskflow import DecoratedTask

    if isinstance(fn, DecoratedTask):
        raise DagDefinitionError(
            f"{source!r}.map(): {fn.function.__name__!r} is a @task; map() takes a plain "
            "function, applied to each element when its instance is built"
        )
    if not callable(fn):
        raise DagDefinitionError(
            f"{source!r}.map(): {fn!r} is {type(fn).__name__}, not a function"
        )
    if inspect.iscoroutinefunction(fn) or inspect.isasyncgenfunction(fn):
        raise DagDefinitionError(
            f"{source!r}.map(): {getattr(fn, '__name__', fn)!r} is async; map() takes a "
            "plain (sync) function"
        )
    return fn


class ParamRef:
    """A DAG param, passed to tasks by an `@dag` function; resolved at run time."""

    def __init__(self, name: str) -> None:
        self.name = name

    def resolve(self, context: dict[str, Any]) -> Any:
        return context["params"].get(self.name)

    def __repr__(self) -> str:
        return f"ParamRef({self.name!r})"


def iter_xcom_args(value: Any) -> Iterator[XComArg]:
    """The XComArgs in `value` (in lists, tuples, sets, dict values, and the views made
    by .map()/.zip()): the outputs a task taking `value` depends on."""
    if isinstance(value, XComArg):
        yield value
    elif isinstance(value, DerivedXComArg):
        yield from value.sources()
    elif isinstance(value, list | tuple | set):
        for item in value:
            yield from iter_xcom_args(item)
    elif isinstance(value, dict):
        for item in value.values():
            yield from iter_xcom_args(item)


def find_derived(value: Any) -> DerivedXComArg | None:
    """The first .map()/.zip() view inside `value` (lists, tuples, sets, dict values)."""
    if isinstance(value, DerivedXComArg):
        return value
    if isinstance(value, dict):
        value = value.values()
    elif not isinstance(value, list | tuple | set):
        return None
    for item in value:
        found = find_derived(item)
        if found is not None:
            return found
    return None


def refuse_derived(where: str, value: Any) -> None:
    """A DagDefinitionError if `value` holds a .map()/.zip() view: those are only for
    expand() and expand_kwargs() (as in Airflow)."""
    found = find_derived(value)
    if found is not None:
        verb = "is" if found is value else "holds"
        raise DagDefinitionError(
            f"{where} {verb} {found!r}: the result of .map() or .zip() can only be given "
            "to expand() or expand_kwargs() (or to another .map()/.zip())"
        )


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

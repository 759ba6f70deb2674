"""Dynamic task mapping: `Op.partial(...).expand(...)`, `expand_kwargs`, and the same on
`@task` functions.

A mapped task is one node of the DAG (a MappedOperator) until its run decides it: then
its expand input is resolved (literal lists, or upstream XComs) and it becomes N task
instances with `map_index` 0..N-1, each built (`unmap`) as an ordinary operator of the
mapped class just before its try. With several expanded arguments the instances are
their cross product, the last argument varying fastest (as Airflow). A downstream task
that reads a mapped task's XCom gets the list of its instances' values, in map-index
order (instances that pushed nothing are left out, as in Airflow).

An input may also be a view made by `out.map(fn)` or `a.zip(b, ...)` (see xcom_arg): its
outputs are resolved when the task expands, and its elements are computed only when an
instance is built, so an error in `fn` fails that instance alone.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from aflow.authoring.baseoperator import BaseOperator, shallow_copy
from aflow.authoring.templating import has_templates, value_has_template
from aflow.authoring.xcom_arg import (
    NOTSET,
    DerivedXComArg,
    MapXComArg,
    XComArg,
    ZipXComArg,
    iter_xcom_args,
    refuse_derived,
)
from aflow.exceptions import DagDefinitionError

if TYPE_CHECKING:
    from aflow.runtime.xcom import XComView

# BaseOperator arguments a mapped task takes once for all of its instances: its identity,
# its place in the DAG and what the engine reads off the task itself (pool and slots,
# weight, trigger rule, retries, deadline, how many of its instances may run at once).
# They may not be mapped.
_NOT_MAPPABLE = frozenset({
    "task_id", "dag", "default_args", "task_group", "pool", "pool_slots", "priority_weight",
    "weight_rule", "trigger_rule", "retries", "deadline", "depends_on_past",
    "max_active_tis_per_dag", "max_active_tis_per_dagrun",
})


class ExpandError(Exception):
    """The expand input of a mapped task, resolved at run time, cannot be mapped over."""


def _base_param_names() -> frozenset[str]:
    init = getattr(BaseOperator.__init__, "__wrapped__", BaseOperator.__init__)
    return frozenset(
        name for name, p in inspect.signature(init).parameters.items()
        if p.kind is p.KEYWORD_ONLY
    )


def _accepted_names(cls: type[BaseOperator]) -> frozenset[str]:
    """The keyword arguments the `__init__`s of `cls` take, down to BaseOperator's."""
    names: set[str] = set()
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        sig = inspect.signature(getattr(init, "__wrapped__", init))
        for name, p in sig.parameters.items():
            if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD) and name != "self":
                names.add(name)
        if klass is BaseOperator:
            break
    return frozenset(names)


@dataclass(frozen=True, slots=True)
class ResolvedInput:
    """A mapped task's expand input with every reference resolved, for one run."""

    names: tuple[str, ...]  # expand(): the mapped argument names; () for expand_kwargs
    # expand(): one sequence per name; expand_kwargs: (list,). A sequence may be a lazy
    # view (.map()/.zip()), whose elements are computed here, as each instance is built.
    values: tuple[Sequence[Any], ...]
    length: int

    def at(self, index: int) -> dict[str, Any]:
        """The mapped arguments of instance `index` (what a .map() function raises, too)."""
        if not 0 <= index < self.length:
            raise ExpandError(f"map index {index} is out of range: the input has {self.length} elements")
        if not self.names:
            item = self.values[0][index]
            _check_kwargs_element(index, item)  # (a lazy view's elements were not seen before)
            return dict(item)
        if len(self.names) == 1:
            return {self.names[0]: self.values[0][index]}
        out: dict[str, Any] = {}
        for name, seq in zip(reversed(self.names), reversed(self.values), strict=True):
            index, here = divmod(index, len(seq))
            out[name] = seq[here]
        return out


class _MappedElements(Sequence[Any]):
    """A resolved `.map()`: element i is the source's element i through the functions,
    computed each time it is read (as an instance is built; a try builds it again)."""

    __slots__ = ("functions", "source")

    def __init__(self, source: Sequence[Any], functions: tuple[Any, ...]) -> None:
        self.source = source
        self.functions = functions

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: Any) -> Any:
        if not isinstance(index, int):
            raise TypeError("a mapped input is read one element at a time")
        value = self.source[index]
        for fn in self.functions:
            value = fn(value)
        return value


class _ZippedElements(Sequence[Any]):
    """A resolved `.zip()`: element i is the tuple of the inputs' elements i, as long as
    the shortest input, or the longest with the missing elements filled."""

    __slots__ = ("fillvalue", "inputs", "length")

    def __init__(self, inputs: list[Sequence[Any]], fillvalue: Any) -> None:
        self.inputs = inputs
        self.fillvalue = fillvalue
        lengths = [len(seq) for seq in inputs]
        self.length = max(lengths) if fillvalue is not NOTSET else min(lengths)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: Any) -> tuple[Any, ...]:
        if not isinstance(index, int):
            raise TypeError("a zipped input is read one element at a time")
        if not 0 <= index < self.length:
            raise IndexError(index)
        return tuple(seq[index] if index < len(seq) else self.fillvalue for seq in self.inputs)


_LAZY = (_MappedElements, _ZippedElements)


def _check_kwargs_element(index: int, item: Any) -> None:
    if not isinstance(item, Mapping) or not all(isinstance(k, str) for k in item):
        raise ExpandError(
            f"expand_kwargs element {index} is {type(item).__name__}, not a dict of "
            "argument names to values"
        )


def _as_sequence(task_id: str, name: str, value: Any) -> Sequence[Any]:
    if isinstance(value, list | tuple):
        return value
    if isinstance(value, Mapping):
        return [[k, v] for k, v in value.items()]  # (key, value) pairs, as JSON lists
    raise ExpandError(
        f"task {task_id!r} cannot map over {name}: it is {type(value).__name__}, "
        "not a list or a dict"
    )


class MappedOperator(BaseOperator):
    """A task expanded over its input at run time into one instance per element."""

    _aflow_takes_derived = frozenset({"expand_input", "expand_kwargs_input"})

    def __init__(
        self,
        *,
        operator_class: type[BaseOperator],
        partial_kwargs: dict[str, Any],
        expand_input: dict[str, Any] | None = None,
        expand_kwargs_input: Any = None,
        mapped_into: str | None = None,
        **base_kwargs: Any,
    ) -> None:
        self.operator_class = operator_class
        self.partial_kwargs = partial_kwargs
        self.expand_input = expand_input
        self.expand_kwargs_input = expand_kwargs_input
        self.mapped_into = mapped_into  # "op_kwargs" for @task: mapped values are its arguments
        self.template_fields = ()  # rendered on each instance, not here
        self.ui_color = operator_class.ui_color
        # BaseOperator arguments given to partial(), which every instance gets too, and the
        # default_args in effect here (the DAG's, its task groups', partial()'s own)
        self.base_kwargs = {k: v for k, v in base_kwargs.items() if k not in _NOT_MAPPABLE}
        self.instance_defaults = dict(self.__dict__.get("_aflow_defaults") or {})
        super().__init__(**base_kwargs)

    @property
    def is_mapped(self) -> bool:
        return True

    @property
    def operator_name(self) -> str:
        return self.operator_class.__name__

    def _after_init(self) -> None:
        """XComArgs anywhere in the partial or expand input are upstream dependencies."""
        sources = [self.partial_kwargs, self.expand_input, self.expand_kwargs_input]
        for value in sources:
            for arg in iter_xcom_args(value):
                arg.operator.set_downstream(self)

    # -- at run time ------------------------------------------------------------
    def resolve_input(self, xcoms: XComView) -> ResolvedInput:
        """The expand input with its XComArgs read from the run's XComs; ExpandError
        names the task and the argument when a value cannot be mapped over."""
        if self.expand_input is None:
            seq = _expandable(
                self.task_id, "its expand_kwargs input", self.expand_kwargs_input, xcoms)
            if not isinstance(seq, _LAZY):  # (a lazy view's are checked as each is built)
                for i, item in enumerate(seq):
                    try:
                        _check_kwargs_element(i, item)
                    except ExpandError as exc:
                        raise ExpandError(f"task {self.task_id!r}: {exc}") from None
            return ResolvedInput((), (seq,), len(seq))
        names = tuple(self.expand_input)
        values = tuple(
            _expandable(self.task_id, f"argument {name!r}", self.expand_input[name], xcoms)
            for name in names
        )
        length = 1
        for seq in values:
            length *= len(seq)
        return ResolvedInput(names, values, length)

    def unmap(self, index: int, resolved: ResolvedInput) -> BaseOperator:
        """Instance `index` as an ordinary operator of the mapped class: the partial
        arguments plus its mapped ones. It is not added to the DAG (it shares the mapped
        task's id and dependencies); its constructor's errors propagate."""
        mapped = resolved.at(index)
        bad = [k for k in mapped if k in _NOT_MAPPABLE]
        if bad:
            raise ExpandError(f"task {self.task_id!r}: {', '.join(bad)} cannot be mapped")
        if self.mapped_into is None:
            return self._build({**self.partial_kwargs, **mapped})
        # A function's arguments: the operator is built once and copied per instance with
        # its own arguments (its constructor only stores them), which is ~5x cheaper.
        template = self.__dict__.get("_aflow_template")
        if template is None:
            template = self._build(self.partial_kwargs)
            template._aflow_templated = has_templates(template)
            self._aflow_template = template
        op = shallow_copy(template)
        setattr(op, self.mapped_into, {**getattr(template, self.mapped_into), **mapped})
        if not template._aflow_templated and self.mapped_into in op.template_fields:
            op._aflow_templated = value_has_template(mapped, tuple(op.template_ext))
        return op

    def _build(self, kwargs: dict[str, Any]) -> BaseOperator:
        assert self.dag is not None
        op = self.operator_class.__new__(self.operator_class)
        op._aflow_unmapped = True  # no DAG membership, no new dependencies
        op.__init__(task_id=self.task_id, default_args=self.instance_defaults,
                    **{**self.base_kwargs, **kwargs})
        op.dag = self.dag
        op.upstream_task_ids = self.upstream_task_ids
        op.downstream_task_ids = self.downstream_task_ids
        return op


def _expandable(task_id: str, what: str, value: Any, xcoms: XComView) -> Sequence[Any]:
    """An expand input as a sequence: a literal or an upstream output (a dict as its
    [key, value] pairs), or a lazy view of them for .map()/.zip()."""
    if isinstance(value, MapXComArg):
        return _MappedElements(_expandable(task_id, what, value.source, xcoms), value.functions)
    if isinstance(value, ZipXComArg):
        return _ZippedElements(
            [_expandable(task_id, f"{what} (zip input {i})", v, xcoms)
             for i, v in enumerate(value.inputs, 1)],
            value.fillvalue,
        )
    return _as_sequence(task_id, what, _resolve(value, xcoms))


def _resolve(value: Any, xcoms: XComView) -> Any:
    if isinstance(value, XComArg):
        return xcoms.get(value.operator.task_id, value.key)
    if isinstance(value, list):
        return [_resolve(v, xcoms) for v in value]
    if isinstance(value, dict):
        return {k: _resolve(v, xcoms) for k, v in value.items()}
    return value


def _check_expand_values(task_id: str, values: Mapping[str, Any]) -> None:
    for name, value in values.items():
        if isinstance(value, XComArg | DerivedXComArg):
            continue
        if not isinstance(value, list | tuple | Mapping):
            raise DagDefinitionError(
                f"task {task_id!r}: expand({name}=...) needs a list, a dict or an upstream "
                f"task's output (XComArg), got {type(value).__name__}"
            )
        refuse_derived(f"task {task_id!r}: an element of expand({name}=...)", value)


def check_expand_kwargs(task_id: str, value: Any, check_names: Any) -> None:
    """`expand_kwargs(value)` takes a list of dicts (each one's names checked with
    `check_names`) or an upstream task's output; else a DagDefinitionError."""
    if not isinstance(value, XComArg | DerivedXComArg | list | tuple):
        raise DagDefinitionError(
            f"task {task_id!r}: expand_kwargs() needs a list of dicts or an upstream task's "
            f"output, got {type(value).__name__}"
        )
    if isinstance(value, list | tuple):
        refuse_derived(f"task {task_id!r}: an element of expand_kwargs()", value)
        for i, item in enumerate(value):
            if not isinstance(item, Mapping):
                raise DagDefinitionError(
                    f"task {task_id!r}: expand_kwargs element {i} is {type(item).__name__}, "
                    "not a dict"
                )
            check_names(list(item))


def _split(kwargs: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(BaseOperator arguments and default_args, the operator class's own arguments)."""
    base_names = _base_param_names() | {"default_args"}
    base = {k: v for k, v in kwargs.items() if k in base_names}
    own = {k: v for k, v in kwargs.items() if k not in base_names}
    return base, own


def refuse_unmappable(cls: type[BaseOperator], task_id: Any) -> None:
    """Branch and short-circuit tasks decide what runs after them from one choice: a
    mapped one would make many, so they cannot be mapped."""
    from aflow.authoring.operators.branch import BranchMixIn, ShortCircuitOperator

    if issubclass(cls, BranchMixIn | ShortCircuitOperator):
        raise DagDefinitionError(
            f"task {task_id!r}: a branch or short-circuit task ({cls.__name__}) cannot be mapped"
        )


class OperatorPartial:
    """What `SomeOperator.partial(task_id=..., **fixed)` returns: `.expand(**mapped)` or
    `.expand_kwargs(list_of_dicts)` makes the mapped task."""

    def __init__(self, operator_class: type[BaseOperator], kwargs: dict[str, Any]) -> None:
        if "task_id" not in kwargs:
            raise DagDefinitionError(f"{operator_class.__name__}.partial() needs a task_id")
        refuse_unmappable(operator_class, kwargs["task_id"])
        for name, value in kwargs.items():
            refuse_derived(f"task {kwargs['task_id']!r}: partial({name}=...)", value)
        self.operator_class = operator_class
        self.kwargs = kwargs
        self._used = False

    def _check_names(self, names: Sequence[str]) -> None:
        task_id = self.kwargs["task_id"]
        accepted = _accepted_names(self.operator_class)
        for name in names:
            if name in _NOT_MAPPABLE:
                raise DagDefinitionError(f"task {task_id!r}: {name} cannot be mapped")
            if name not in accepted:
                raise DagDefinitionError(
                    f"task {task_id!r}: {self.operator_class.__name__} has no argument "
                    f"{name!r} to map over"
                )
            if name in self.kwargs:
                raise DagDefinitionError(
                    f"task {task_id!r}: {name!r} is given both to partial() and to expand()"
                )

    def _make(self, **mapping: Any) -> MappedOperator:
        if self._used:
            raise DagDefinitionError(
                f"task {self.kwargs['task_id']!r}: a partial() can be expanded only once"
            )
        self._used = True
        kwargs = dict(self.kwargs)
        task_id = kwargs.pop("task_id")
        base, own = _split(kwargs)
        return MappedOperator(
            operator_class=self.operator_class, partial_kwargs=own, task_id=task_id,
            **mapping, **base,
        )

    def expand(self, **mapped: Any) -> MappedOperator:
        if not mapped:
            raise DagDefinitionError(f"task {self.kwargs['task_id']!r}: expand() needs an argument")
        self._check_names(list(mapped))
        _check_expand_values(self.kwargs["task_id"], mapped)
        return self._make(expand_input=dict(mapped))

    def expand_kwargs(self, value: Any) -> MappedOperator:
        check_expand_kwargs(self.kwargs["task_id"], value, self._check_names)
        return self._make(expand_kwargs_input=value)

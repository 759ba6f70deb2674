"""BaseOperator: the unit of work in a DAG, with Airflow's arguments and `>>` dependencies."""

from __future__ import annotations

import copy
import functools
import inspect
from collections.abc import Callable, Iterable, Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Literal, NoReturn, TypeVar

from aflow.authoring.assets import as_outlets
from aflow.authoring.dag import DAG, current_dag, validate_id
from aflow.authoring.deadlines import as_deadlines
from aflow.authoring.linkable import Linkable
from aflow.exceptions import DagDefinitionError, TaskAlreadyInDagError
from aflow.states import TriggerRule, WeightRule

F = TypeVar("F", bound=Callable[..., Any])

if TYPE_CHECKING:
    from aflow.authoring.mapped import OperatorPartial
    from aflow.authoring.xcom_arg import XComArg

RunIn = Literal["auto", "loop", "thread", "process"]
_RUN_IN = ("auto", "loop", "thread", "process")

DEFAULT_RETRY_DELAY = timedelta(seconds=300)
DEFAULT_MAX_RETRY_DELAY = timedelta(hours=24)

Callback = Callable[[dict[str, Any]], Any]


def _bad_pool(task_id: str, pool: Any) -> NoReturn:
    raise DagDefinitionError(f"task {task_id!r}: pool must be a pool's name, got {pool!r}")


def _own_param_names(init: Callable[..., None]) -> set[str]:
    """The keyword-passable argument names of one `__init__` (not its parents')."""
    init = getattr(init, "__wrapped__", init)
    return {
        name
        for name, p in inspect.signature(init).parameters.items()
        if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD) and name != "self"
    }


def shallow_copy(obj: Any) -> Any:
    """`copy.copy(obj)` for an operator: a new object of its class with the same attribute
    dict, made directly (a third of copy.copy's cost, which goes through __reduce_ex__)
    unless the class defines its own __copy__ or __slots__."""
    cls = type(obj)
    plain = _PLAIN_CLASSES.get(cls)
    if plain is None:
        plain = _PLAIN_CLASSES[cls] = not (hasattr(cls, "__copy__") or hasattr(cls, "__slots__"))
    if not plain:
        return copy.copy(obj)
    new = object.__new__(cls)
    new.__dict__.update(obj.__dict__)
    return new


_PLAIN_CLASSES: dict[type, bool] = {}  # operator class -> whether shallow_copy may go direct


def loop_safe(fn: F) -> F:
    """Mark a sync method as quick and non-blocking, so `run_in="auto"` calls it on the
    event loop instead of paying a worker-thread hop (e.g. a sensor's `execute_complete`
    that only returns its event). The mark is on the function: an override in a subclass
    does not inherit it, and so runs in a thread again unless it is marked too."""
    fn._aflow_loop_safe = True  # type: ignore[attr-defined]
    return fn


def is_loop_safe(fn: Callable[..., Any]) -> bool:
    while isinstance(fn, functools.partial):
        fn = fn.func
    return bool(getattr(fn, "_aflow_loop_safe", False))


class BaseOperator(Linkable):
    """Base of every operator. Subclasses implement `execute(context)`, sync or async.

    Arguments missing from a task's constructor are taken from its DAG's `default_args`.
    """

    template_fields: Sequence[str] = ()
    template_ext: Sequence[str] = ()
    ui_color: str = "#ffffff"
    # constructor arguments that may hold .map()/.zip() views (a mapped task's expand input)
    _aflow_takes_derived: frozenset[str] = frozenset()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "__init__" in cls.__dict__:
            cls.__init__ = _apply_default_args(cls.__dict__["__init__"])  # type: ignore[method-assign]

    def __init__(
        self,
        *,
        task_id: str,
        dag: DAG | None = None,
        owner: str = "aflow",
        retries: int | None = 0,
        retry_delay: timedelta | float = DEFAULT_RETRY_DELAY,
        retry_exponential_backoff: bool = False,
        max_retry_delay: timedelta | float | None = None,
        execution_timeout: timedelta | float | None = None,
        trigger_rule: str | TriggerRule = TriggerRule.ALL_SUCCESS,
        pool: str = "default_pool",
        pool_slots: int = 1,
        priority_weight: int = 1,
        weight_rule: str | WeightRule = WeightRule.DOWNSTREAM,
        max_active_tis_per_dag: int | None = None,
        max_active_tis_per_dagrun: int | None = None,
        on_success_callback: Callback | list[Callback] | None = None,
        on_failure_callback: Callback | list[Callback] | None = None,
        on_retry_callback: Callback | list[Callback] | None = None,
        on_execute_callback: Callback | list[Callback] | None = None,
        run_in: RunIn = "auto",
        do_xcom_push: bool = True,
        params: dict[str, Any] | None = None,
        doc_md: str | None = None,
        email: str | list[str] | None = None,
        depends_on_past: bool = False,
        outlets: Any = None,
        task_group: Any = None,
        deadline: Any = None,
        **kwargs: Any,
    ) -> None:
        if kwargs:
            raise DagDefinitionError(
                f"invalid arguments were passed to {type(self).__name__} "
                f"(task_id {task_id!r}): {', '.join(sorted(kwargs))}"
            )
        from aflow.authoring.taskgroup import current_task_group

        group = task_group if task_group is not None else current_task_group()
        validate_id("task_id", task_id)
        self.task_id = validate_id("task_id", group.child_id(task_id) if group else task_id)
        self.task_group = group
        self.is_setup = False
        self.is_teardown = False
        self.on_failure_fail_dagrun = False  # a teardown's failure fails its run (see as_teardown)
        self.owner = owner
        self.retries = int(retries or 0)
        if self.retries < 0:
            raise DagDefinitionError(f"task {task_id!r}: retries must be >= 0")
        self.retry_delay = _as_timedelta(retry_delay)
        self.retry_exponential_backoff = retry_exponential_backoff
        self.max_retry_delay = (
            _as_timedelta(max_retry_delay) if max_retry_delay is not None else None
        )
        self.execution_timeout = (
            _as_timedelta(execution_timeout) if execution_timeout is not None else None
        )
        try:
            self.trigger_rule = TriggerRule(trigger_rule)
        except ValueError:
            raise DagDefinitionError(
                f"task {task_id!r}: unknown trigger_rule {trigger_rule!r}; "
                f"use one of {', '.join(r.value for r in TriggerRule)}"
            ) from None
        if run_in not in _RUN_IN:
            raise DagDefinitionError(f"task {task_id!r}: run_in must be one of {_RUN_IN}")
        self.run_in: RunIn = run_in
        self.pool = validate_id("pool", pool) if isinstance(pool, str) else _bad_pool(task_id, pool)
        if isinstance(pool_slots, bool) or not isinstance(pool_slots, int) or pool_slots < 1:
            raise DagDefinitionError(
                f"task {task_id!r}: pool_slots must be an integer >= 1, got {pool_slots!r}"
            )
        self.pool_slots = pool_slots
        if isinstance(priority_weight, bool) or not isinstance(priority_weight, int):
            raise DagDefinitionError(
                f"task {task_id!r}: priority_weight must be an integer, got {priority_weight!r}"
            )
        self.priority_weight = priority_weight
        try:
            self.weight_rule = WeightRule(weight_rule)
        except ValueError:
            raise DagDefinitionError(
                f"task {task_id!r}: unknown weight_rule {weight_rule!r}; "
                f"use one of {', '.join(r.value for r in WeightRule)}"
            ) from None
        # at most this many tries of the task running at once (in this scheduler process):
        # across every run of its DAG, and within one run (a mapped task's instances)
        self.max_active_tis_per_dag = _limit(task_id, "max_active_tis_per_dag",
                                             max_active_tis_per_dag)
        self.max_active_tis_per_dagrun = _limit(task_id, "max_active_tis_per_dagrun",
                                                max_active_tis_per_dagrun)
        self.on_success_callback = _as_list(on_success_callback)
        self.on_failure_callback = _as_list(on_failure_callback)
        self.on_retry_callback = _as_list(on_retry_callback)
        self.on_execute_callback = _as_list(on_execute_callback)
        self.do_xcom_push = do_xcom_push
        self.params = dict(params or {})
        self.doc_md = doc_md
        self.email = email
        self.depends_on_past = depends_on_past
        self.outlets = as_outlets(task_id, outlets)  # assets its success updates
        self.deadlines = as_deadlines(f"task {task_id!r}", deadline)  # DeadlineAlerts
        self.upstream_task_ids: set[str] = set()
        self.downstream_task_ids: set[str] = set()
        self.dag: DAG | None = None
        the_dag = dag or current_dag() or (group.dag if group is not None else None)
        if the_dag is not None:
            self._attach(the_dag)
        if group is not None:
            group.add(self)

    # -- DAG membership --------------------------------------------------
    def _attach(self, dag: DAG) -> None:
        if self.dag is not None and self.dag is not dag:
            raise TaskAlreadyInDagError(
                f"task {self.task_id!r} is already in DAG {self.dag.dag_id!r} "
                f"and cannot be added to DAG {dag.dag_id!r}"
            )
        dag.add_task(self)
        self.dag = dag

    def _after_init(self) -> None:
        """Once fully constructed: XComArgs in templated fields make upstream dependencies."""
        from aflow.authoring.xcom_arg import iter_xcom_args

        if self.__dict__.get("_aflow_unmapped"):
            return  # an instance of a mapped task: its dependencies are the mapped task's
        for name in self.template_fields:
            for arg in iter_xcom_args(getattr(self, name, None)):
                arg.operator.set_downstream(self)

    # -- execution ---------------------------------------------------------
    def execute(self, context: dict[str, Any]) -> Any:
        raise NotImplementedError(f"{type(self).__name__} must implement execute(context)")

    def defer(
        self,
        *,
        trigger: Any,
        method_name: str,
        kwargs: dict[str, Any] | None = None,
        timeout: timedelta | float | None = None,
    ) -> NoReturn:
        """Park this task on `trigger` (a triggers.BaseTrigger) without holding a slot;
        when it fires, the task resumes with `method_name(context, event=payload, **kwargs)`.
        With `timeout`, the wait fails the task after that long (or skips it with soft_fail)."""
        from aflow.exceptions import TaskDeferred

        raise TaskDeferred(
            trigger=trigger,
            method_name=method_name,
            kwargs=kwargs,
            timeout=_as_timedelta(timeout) if timeout is not None else None,
        )

    def resume_method(self, method_name: str) -> Callable[..., Any]:
        """The method a deferred task resumes with; a clear error if it does not exist."""
        method = getattr(self, method_name, None)
        if not callable(method):
            raise DagDefinitionError(
                f"task {self.task_id!r} deferred with method_name={method_name!r}, "
                f"but {type(self).__name__} has no such method"
            )
        return method

    def is_async(self) -> bool:
        """True when `execute` is a coroutine function and so runs on the event loop."""
        return inspect.iscoroutinefunction(self.execute)

    def execute_on_loop(self) -> bool:
        """Whether `run_in="auto"` calls `execute` on the event loop rather than in a worker
        thread: when it is async, or known to return at once (see `loop_safe`)."""
        return self.is_async() or is_loop_safe(self.execute)

    def prepare_for_run(self) -> BaseOperator:
        """A shallow copy for one try, so rendering templates never touches the DAG's task
        (an instance of a mapped task is built for its try: it is used as it is)."""
        if "_aflow_templated" not in self.__dict__:
            from aflow.authoring.templating import has_templates

            self._aflow_templated = has_templates(self)
        if self.__dict__.get("_aflow_unmapped"):
            return self
        return shallow_copy(self)

    # -- setup / teardown --------------------------------------------------
    def as_setup(self) -> BaseOperator:
        """Make this task a setup: a teardown after it runs only if it succeeded."""
        if self.is_teardown:
            raise DagDefinitionError(f"task {self.task_id!r} is a teardown; it cannot be a setup too")
        self.is_setup = True
        return self

    def as_teardown(
        self, *, setups: Any = None, on_failure_fail_dagrun: bool | None = None
    ) -> BaseOperator:
        """Make this task a teardown: it runs once its upstream tasks are done, whatever
        their outcome, provided one of its setups succeeded (trigger rule
        `all_done_setup_success`), and it does not decide its run's state unless
        `on_failure_fail_dagrun=True`. `setups` (tasks) are linked upstream of it."""
        if self.is_setup:
            raise DagDefinitionError(f"task {self.task_id!r} is a setup; it cannot be a teardown too")
        self.is_teardown = True
        self.trigger_rule = TriggerRule.ALL_DONE_SETUP_SUCCESS
        if on_failure_fail_dagrun is not None:
            self.on_failure_fail_dagrun = bool(on_failure_fail_dagrun)
        if setups is not None:
            for setup_task in _tasks_of(setups, "up"):
                if not setup_task.is_teardown:
                    setup_task.as_setup()
                self.set_upstream(setup_task)
        return self

    # -- mapping -------------------------------------------------------------
    @classmethod
    def partial(cls, **kwargs: Any) -> OperatorPartial:
        """Fix the arguments shared by every instance of a mapped task; `.expand(...)`
        or `.expand_kwargs(...)` on the result names what is mapped over."""
        from aflow.authoring.mapped import OperatorPartial

        return OperatorPartial(cls, kwargs)

    @property
    def is_mapped(self) -> bool:
        return False

    @property
    def operator_name(self) -> str:
        """The operator's class name, as shown on its task instances."""
        return type(self).__name__

    # -- dependencies ------------------------------------------------------
    def set_downstream(self, other: TaskLike | Iterable[TaskLike]) -> None:
        for task in _tasks_of(other, "down"):
            self._link(task)

    def set_upstream(self, other: TaskLike | Iterable[TaskLike]) -> None:
        for task in _tasks_of(other, "up"):
            task._link(self)

    def _link(self, downstream: BaseOperator) -> None:
        if downstream is self:
            raise DagDefinitionError(f"task {self.task_id!r} cannot depend on itself")
        dag = self.dag or downstream.dag
        if dag is None:
            raise DagDefinitionError(
                f"cannot link {self.task_id!r} >> {downstream.task_id!r}: neither is in a DAG"
            )
        if self.dag is None:
            self._attach(dag)
        if downstream.dag is None:
            downstream._attach(dag)
        if self.dag is not downstream.dag:
            assert self.dag is not None and downstream.dag is not None
            raise DagDefinitionError(
                f"tasks {self.task_id!r} (DAG {self.dag.dag_id!r}) and {downstream.task_id!r} "
                f"(DAG {downstream.dag.dag_id!r}) are in different DAGs"
            )
        self.downstream_task_ids.add(downstream.task_id)
        downstream.upstream_task_ids.add(self.task_id)
        self.dag.invalidate_order()


    @property
    def upstream_list(self) -> list[BaseOperator]:
        assert self.dag is not None
        return [self.dag.task_dict[t] for t in sorted(self.upstream_task_ids)]

    @property
    def downstream_list(self) -> list[BaseOperator]:
        assert self.dag is not None
        return [self.dag.task_dict[t] for t in sorted(self.downstream_task_ids)]

    @property
    def output(self) -> XComArg:
        """This task's return value, as an XComArg usable by other tasks."""
        from aflow.authoring.xcom_arg import XComArg

        return XComArg(self)

    @property
    def dag_id(self) -> str | None:
        return self.dag.dag_id if self.dag else None

    def __repr__(self) -> str:
        return f"<Task({type(self).__name__}): {self.task_id}>"


TaskLike = BaseOperator  # plus XComArg; resolved in _tasks_of


def _tasks_of(other: Any, side: Literal["up", "down"] = "down") -> list[BaseOperator]:
    """The tasks `other` stands for on the `side` of a dependency: a TaskGroup stands for
    its leaves upstream and for its roots downstream."""
    from aflow.authoring.taskgroup import TaskGroup
    from aflow.authoring.xcom_arg import DerivedXComArg, XComArg

    if isinstance(other, BaseOperator):
        return [other]
    if isinstance(other, XComArg):
        return [other.operator]
    if isinstance(other, DerivedXComArg):  # .map()/.zip(): the tasks whose outputs it reads
        return [arg.operator for arg in other.sources()]
    if isinstance(other, TaskGroup):
        return other._ends("leaves" if side == "up" else "roots")
    if isinstance(other, Iterable) and not isinstance(other, str | bytes):
        out: list[BaseOperator] = []
        for item in other:
            out.extend(_tasks_of(item, side))
        return out
    raise DagDefinitionError(f"cannot set a dependency on {other!r}: not a task")


def chain(*items: Any) -> None:
    """`chain(a, b, [c, d], e)`: a >> b >> [c, d] >> e; two adjacent lists are paired up."""
    for left, right in zip(items, items[1:], strict=False):
        left_list = isinstance(left, list | tuple)
        right_list = isinstance(right, list | tuple)
        if left_list and right_list:
            if len(left) != len(right):
                raise DagDefinitionError(
                    f"chain: adjacent lists must have the same length ({len(left)} != {len(right)})"
                )
            for a, b in zip(left, right, strict=True):
                for ta in _tasks_of(a, "up"):
                    ta.set_downstream(b)
        else:
            for ta in _tasks_of(left, "up"):
                ta.set_downstream(right)


def _limit(task_id: str, name: str, value: Any) -> int | None:
    if value is None or (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
        return value
    raise DagDefinitionError(
        f"task {task_id!r}: {name} must be a positive integer or None (no limit), got {value!r}"
    )


def _as_timedelta(value: timedelta | float) -> timedelta:
    return value if isinstance(value, timedelta) else timedelta(seconds=float(value))


def _as_list(cb: Callback | list[Callback] | None) -> list[Callback]:
    if cb is None:
        return []
    return list(cb) if isinstance(cb, list | tuple) else [cb]


def _refuse_derived_arguments(
    op: BaseOperator, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> None:
    """A .map()/.zip() view given to an operator's constructor (not to expand()) is a
    DagDefinitionError, raised before the task joins its DAG."""
    from aflow.authoring.xcom_arg import refuse_derived

    where = f"task {kwargs.get('task_id')!r}: "
    for i, value in enumerate(args):
        refuse_derived(f"{where}argument {i + 1}", value)
    for name, value in kwargs.items():
        if name not in op._aflow_takes_derived:
            refuse_derived(f"{where}argument {name!r}", value)


def _apply_default_args(init: Callable[..., None]) -> Callable[..., None]:
    """Wrap an operator's __init__ so that the DAG's default_args fill missing arguments.

    Each wrapped level fills only the arguments its own signature names, so a subclass
    that passes a parent argument itself (`super().__init__(retries=0, **kwargs)`) wins.
    """
    own = _own_param_names(init)

    @functools.wraps(init)
    def wrapper(self: BaseOperator, *args: Any, **kwargs: Any) -> None:
        outermost = "_aflow_defaults" not in self.__dict__
        if outermost:
            if not self.__dict__.get("_aflow_unmapped"):  # (an instance: its values are resolved)
                _refuse_derived_arguments(self, args, kwargs)
            dag = kwargs.get("dag") or current_dag()
            defaults = dict(dag.default_args) if dag is not None else {}
            from aflow.authoring.taskgroup import current_task_group

            group = kwargs.get("task_group") or current_task_group()
            if group is not None:
                defaults.update(group.all_default_args())
            explicit = kwargs.pop("default_args", None)
            if explicit:
                defaults.update(explicit)
            self._aflow_defaults = defaults
        for key, value in self._aflow_defaults.items():
            if key in own and key not in kwargs:
                kwargs[key] = value
        try:
            init(self, *args, **kwargs)
        finally:
            if outermost:
                del self._aflow_defaults
        if outermost:
            self._after_init()

    return wrapper


BaseOperator.__init__ = _apply_default_args(BaseOperator.__init__)  # type: ignore[method-assign]

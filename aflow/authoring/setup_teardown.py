"""`@setup` and `@teardown`: TaskFlow tasks that make and remove what the work needs.

A teardown runs once its upstream tasks are done, whatever their outcome, provided one of
its setups succeeded (trigger rule `all_done_setup_success`); its own outcome does not
decide its run's state unless `on_failure_fail_dagrun=True`. Its setups are the setup
tasks upstream of it: `s >> work >> t`, `t.as_teardown(setups=s)` or a teardown that
takes the setup's output (`delete(create())`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from aflow.authoring.taskflow import DecoratedTask, task
from aflow.authoring.xcom_arg import XComArg


class _SetupTeardownTask(DecoratedTask):
    """A DecoratedTask whose each call makes a setup (or teardown) task."""

    def __init__(self, inner: DecoratedTask, role: str, on_failure_fail_dagrun: bool) -> None:
        super().__init__(inner.function, inner.operator_class, inner.kwargs)
        self.role = role
        self.on_failure_fail_dagrun = on_failure_fail_dagrun

    def override(self, **kwargs: Any) -> DecoratedTask:
        return _SetupTeardownTask(super().override(**kwargs), self.role, self.on_failure_fail_dagrun)

    def __call__(self, *args: Any, **kwargs: Any) -> XComArg:
        out = super().__call__(*args, **kwargs)
        if self.role == "setup":
            out.operator.as_setup()
        else:
            out.operator.as_teardown(on_failure_fail_dagrun=self.on_failure_fail_dagrun)
        return out


def _as_decorated(fn: Callable[..., Any] | DecoratedTask) -> DecoratedTask:
    return fn if isinstance(fn, DecoratedTask) else task(fn)


def setup(python_callable: Callable[..., Any] | DecoratedTask) -> DecoratedTask:
    """`@setup` on a function (or on a `@task`/`@task.bash` one): its tasks are setups."""
    return _SetupTeardownTask(_as_decorated(python_callable), "setup", False)


def teardown(
    python_callable: Callable[..., Any] | DecoratedTask | None = None,
    *,
    on_failure_fail_dagrun: bool = False,
) -> Any:
    """`@teardown` / `@teardown(on_failure_fail_dagrun=True)`: its tasks are teardowns."""
    if python_callable is not None:
        return _SetupTeardownTask(_as_decorated(python_callable), "teardown", on_failure_fail_dagrun)
    return lambda fn: _SetupTeardownTask(_as_decorated(fn), "teardown", on_failure_fail_dagrun)

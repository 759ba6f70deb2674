"""Branching and short-circuiting: tasks that choose which of their downstream tasks run.

The choice is an XCom (key `skipmixin_key`, as Airflow's) pushed with the task's
success, so it is committed in the same transaction as the task's end. The run driver
reads it when it decides the downstream tasks (aflow.runtime.skips): a crash between the
task's end and those decisions loses nothing, the next owner decides from the XCom.

- A branch task pushes {"followed": [task ids]}: its direct downstream tasks that are not
  followed (nor downstream of a followed one) are skipped; further tasks follow their
  trigger rules.
- A short circuit whose condition is falsy pushes {"short_circuit": true,
  "ignore_downstream_trigger_rules": bool}: with True every task downstream of it is
  skipped (teardowns excepted); with False only its direct downstream tasks, and
  further tasks follow their trigger rules.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Iterable
from typing import Any

from aflow.authoring.baseoperator import BaseOperator
from aflow.authoring.operators.python import PythonOperator
from aflow.exceptions import TaskFailure

SKIPMIXIN_KEY = "skipmixin_key"

log = logging.getLogger("aflow.task")


def followed_ids(task: BaseOperator, returned: Any) -> list[str]:
    """The direct downstream task ids a branch `task` follows, given what its callable
    returned: a task id, a TaskGroup id (its roots), a list of those, or None (none).
    Anything else fails the task with a clear error."""
    if returned is None:
        return []
    if isinstance(returned, str):
        wanted = [returned]
    elif isinstance(returned, Iterable) and not isinstance(returned, bytes | dict):
        wanted = list(returned)
    else:
        raise TaskFailure(
            f"branch task {task.task_id!r} must return a task id, a list of task ids or "
            f"None; it returned {type(returned).__name__} {returned!r}"
        )
    from aflow.authoring.taskgroup import groups_of

    downstream = task.downstream_task_ids
    groups = groups_of(task.dag) if task.dag is not None else {}
    out: set[str] = set()
    for item in wanted:
        if not isinstance(item, str):
            raise TaskFailure(
                f"branch task {task.task_id!r} returned {item!r} ({type(item).__name__}); "
                "task ids are strings"
            )
        if item in downstream:
            out.add(item)
            continue
        group = groups.get(item)
        roots = {t.task_id for t in group.roots} & downstream if group is not None else set()
        if roots:
            out.update(roots)
            continue
        choices = ", ".join(sorted(downstream)) or "none"
        raise TaskFailure(
            f"branch task {task.task_id!r} returned {item!r}, which is not a task (or task "
            f"group) directly downstream of it; its direct downstream tasks: {choices}"
        )
    return sorted(out)


class BranchMixIn:
    """For an operator whose `choose_branch(context)` result is the branch to follow."""

    def do_branch(self, context: dict[str, Any], returned: Any) -> Any:
        task: Any = self
        followed = followed_ids(task, returned)
        skipped = sorted(set(task.downstream_task_ids) - set(followed))
        log.info("Following branch %s; skipping %s", followed or "(none)", skipped or "(none)")
        context["ti"].xcom_push(SKIPMIXIN_KEY, {"followed": followed})
        return returned


class BranchPythonOperator(PythonOperator, BranchMixIn):
    """Calls `python_callable`; what it returns (a task id, a list of ids, or None) is the
    branch to follow: its other direct downstream tasks are skipped."""

    ui_color = "#ffefeb"

    def execute(self, context: dict[str, Any]) -> Any:
        result = super().execute(context)
        if inspect.isawaitable(result):

            async def finish() -> Any:
                return self.do_branch(context, await result)

            return finish()
        return self.do_branch(context, result)


class ShortCircuitOperator(PythonOperator):
    """Calls `python_callable`; a falsy result skips the downstream tasks.

    With `ignore_downstream_trigger_rules=True` (the default, as Airflow's) every task
    downstream is skipped, whatever its trigger rule (teardowns still run by theirs);
    with False only the direct downstream tasks are skipped and the trigger rules of
    the tasks after them decide."""

    ui_color = "#ffefeb"

    def __init__(self, *, ignore_downstream_trigger_rules: bool = True, **kwargs: Any) -> None:
        self.ignore_downstream_trigger_rules = bool(ignore_downstream_trigger_rules)
        super().__init__(**kwargs)

    def execute(self, context: dict[str, Any]) -> Any:
        result = super().execute(context)
        if inspect.isawaitable(result):

            async def finish() -> Any:
                return self.do_short_circuit(context, await result)

            return finish()
        return self.do_short_circuit(context, result)

    def do_short_circuit(self, context: dict[str, Any], condition: Any) -> Any:
        if condition:
            log.info("Condition is %r: downstream tasks go on", condition)
            return condition
        how = ("every downstream task" if self.ignore_downstream_trigger_rules
               else "the direct downstream tasks")
        log.info("Condition is %r: skipping %s", condition, how)
        context["ti"].xcom_push(SKIPMIXIN_KEY, {
            "short_circuit": True,
            "ignore_downstream_trigger_rules": self.ignore_downstream_trigger_rules,
        })
        return condition

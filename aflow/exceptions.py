"""aflow's errors, in one short hierarchy, and the control-flow signals kept apart.

    AflowError
    ├── DagDefinitionError        a DAG file or DAG object is invalid
    │   ├── CycleError
    │   ├── DuplicateTaskIdError
    │   └── TaskAlreadyInDagError
    ├── ConfigError               a setting (file, environment, flag) is invalid
    ├── InvalidConfError          `conf` or params do not validate
    ├── DagNotFound / RunNotFound / TaskNotFound
    ├── RunAlreadyExists
    ├── RunBusy                   a run or TI cannot be changed by hand now
    ├── BackfillError             a backfill's range or DAG cannot be backfilled
    ├── PoolError                 a pool change is refused (default_pool, tasks in it)
    │   └── PoolNotFound
    ├── SecretsError              a variable or connection is unknown, invalid or cannot
    │   │                         be decrypted; or no encryption key is set
    │   ├── VariableNotFound
    │   └── ConnectionNotFound
    ├── StoreError                the store failed (driver errors are chained)
    │   └── StoreUnavailable      cannot reach the database
    ├── TaskFailure               raised by a task to fail without a retry
    ├── XComValueError            a value is not JSON-serializable
    └── TaskTimeout               execution_timeout elapsed

Signals (not errors): ``SkipTask`` ends a task as skipped; ``TaskDeferred`` parks it
on a trigger.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any


class AflowError(Exception):
    """Base of every error aflow raises on purpose."""


class DagDefinitionError(AflowError):
    """A DAG (or the file defining it) is invalid."""


class CycleError(DagDefinitionError):
    """The task graph of a DAG has a cycle."""


class DuplicateTaskIdError(DagDefinitionError):
    """Two tasks in one DAG share a task_id."""


class TaskAlreadyInDagError(DagDefinitionError):
    """A task object was added to a second DAG."""


class ConfigError(AflowError):
    """A setting in the config file, the environment or a flag is invalid."""


class InvalidConfError(AflowError):
    """A run's conf (or a DAG's params) does not validate; `problems` lists each one."""

    def __init__(self, message: str, problems: list[str] | None = None) -> None:
        super().__init__(message)
        self.problems = problems or [message]


class DagNotFound(AflowError):
    pass


class RunNotFound(AflowError):
    pass


class TaskNotFound(AflowError):
    pass


class RunAlreadyExists(AflowError):
    pass


class RunBusy(AflowError):
    """A run (or some of its task instances) cannot be cleared or marked right now: it
    is driven by another live process, or the task instances are running or waiting."""


class BackfillError(AflowError):
    """A backfill cannot run as asked (a DAG without a schedule, start after end, a range
    with no interval of the schedule, an invalid limit); nothing was created."""


class SecretsError(AflowError):
    """A Variable or Connection is unknown, invalid or cannot be decrypted, or a secret
    must be encrypted and no key is set."""


class VariableNotFound(SecretsError, KeyError):
    """No variable of that key (and no default was given)."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class ConnectionNotFound(SecretsError, LookupError):
    """No connection of that id in any secrets backend."""


class StoreError(AflowError):
    """The store failed; the driver's exception is chained as __cause__."""


class StoreUnavailable(StoreError):
    """The database cannot be reached or opened."""


class TaskFailure(AflowError):
    """Raise inside a task to fail it at once, without using its remaining retries."""


class UserAlreadyExists(AflowError):
    """A user of that name exists already."""


class XComValueError(AflowError):
    """An XCom value cannot be stored as JSON."""


class TaskTimeout(AflowError):
    """A task ran longer than its execution_timeout."""


class TemplateError(AflowError):
    """A templated field failed to render."""


class SkipTask(Exception):  # noqa: N818 - a signal, named like Airflow's AirflowSkipException
    """Raise inside a task to end it as skipped (a signal, not an error)."""


class TaskDeferred(Exception):  # noqa: N818 - a signal, named like Airflow's
    """Raised by `BaseOperator.defer`: park this task on a trigger, free its slot, and
    resume it later by calling `method_name(context, event=payload, **kwargs)`."""

    def __init__(
        self,
        *,
        trigger: Any,
        method_name: str,
        kwargs: dict[str, Any] | None = None,
        timeout: timedelta | None = None,
    ) -> None:
        super().__init__(f"deferred to {trigger!r}, resuming with {method_name}")
        self.trigger = trigger
        self.method_name = method_name
        self.kwargs = dict(kwargs or {})
        self.timeout = timeout


class TriggerFailed(AflowError):
    """The trigger a deferred task waited on raised; its traceback is in the task log."""


class TaskReschedule(Exception):  # noqa: N818 - a signal, named like Airflow's AirflowRescheduleException
    """Raised by a sensor in mode="reschedule": free the slot and poke again at `when`."""

    def __init__(self, when: Any) -> None:
        super().__init__(f"poke again at {when}")
        self.when = when


class SensorTimeout(AflowError):
    """A sensor waited longer than its timeout."""


class PoolError(AflowError):
    """A pool cannot be changed that way (deleting default_pool, or a pool in use)."""


class PoolNotFound(PoolError):
    pass

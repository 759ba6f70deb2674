"""BaseTrigger and TriggerEvent, in Airflow's shape."""

from __future__ import annotations

import abc
import importlib
import json
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class TriggerEvent:
    """What a trigger yields when its condition holds. `payload` must be JSON."""

    payload: Any = None


class BaseTrigger(abc.ABC):
    """A deferrable wait.

    Subclasses keep only state that `serialize()` returns, so any triggerer can rebuild
    the trigger from `(classpath, kwargs)` and resume it after a restart or a move.
    `run()` yields events; the first one resumes the task. `cleanup()` runs on every
    exit (event, error, cancellation, being moved to another process) and releases local
    resources; `on_kill()` runs only when a user kills the task, to cancel external work.
    """

    def __init__(self, **kwargs: Any) -> None:
        self.trigger_id: int | None = None
        self.task_instance: Any = None  # set by the triggerer: what the trigger waits for

    @abc.abstractmethod
    def serialize(self) -> tuple[str, dict[str, Any]]:
        """(classpath, JSON-serializable kwargs) that rebuild this trigger."""

    @abc.abstractmethod
    def run(self) -> AsyncIterator[TriggerEvent]:
        """Yield TriggerEvents (usually one). Written as `async def run(self): ... yield`."""

    def next_watch(self, payload: Any) -> BaseTrigger | None:
        """As an asset watcher (see aflow.AssetWatcher): the trigger that waits for the
        NEXT event after the one whose payload is `payload`, so that one occurrence is
        reported once (an edge), not again at every re-check. None, the default: this
        trigger reports one event only, and the watcher is then done."""
        return None

    async def cleanup(self) -> None:  # noqa: B027 - optional hook
        """Release local resources; called on every exit of run()."""

    async def on_kill(self) -> None:  # noqa: B027 - optional hook
        """Cancel external work; called only when a user kills the waiting task."""

    @property
    def log(self) -> logging.Logger:
        return logging.getLogger(f"{type(self).__module__}.{type(self).__name__}")

    def __repr__(self) -> str:
        classpath, kwargs = self.serialize()
        return f"<{classpath} {kwargs}>"


def classpath_of(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def check_kwargs(classpath: str, kwargs: dict[str, Any]) -> str:
    """The kwargs as JSON text; raises ValueError naming the trigger if they are not JSON."""
    try:
        return json.dumps(kwargs, sort_keys=True, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"trigger {classpath}: kwargs are not JSON-serializable: {exc}") from None


def load_trigger(classpath: str, kwargs: dict[str, Any]) -> BaseTrigger:
    """Rebuild a trigger from its serialized form."""
    module_name, _, class_name = classpath.rpartition(".")
    if not module_name:
        raise ValueError(f"trigger classpath {classpath!r} is not 'module.Class'")
    try:
        module = importlib.import_module(module_name)
        cls = getattr(module, class_name)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"cannot import trigger {classpath!r}: {exc}") from exc
    if not (isinstance(cls, type) and issubclass(cls, BaseTrigger)):
        raise ValueError(f"{classpath!r} is not a BaseTrigger subclass")
    return cls(**kwargs)

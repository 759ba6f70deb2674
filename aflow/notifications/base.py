"""BaseNotifier: Airflow's notifier shape. An instance is called with a callback's
context; it renders its templated fields with that context, then sends. A notifier
never raises into the run: whatever goes wrong is logged (in the task's log when it
runs as a task callback) and the run goes on as it would have."""

from __future__ import annotations

import copy
import logging
from collections.abc import Sequence
from typing import Any

import jinja2

from aflow.authoring.templating import jinja_env, render_value
from aflow.exceptions import AflowError

log = logging.getLogger(__name__)


class NotificationError(AflowError):
    """A notifier could not deliver its alert (the message never holds a secret URL)."""


class BaseNotifier:
    """Subclasses set `template_fields` and implement `async notify(context)`."""

    template_fields: Sequence[str] = ()

    async def notify(self, context: dict[str, Any]) -> None:
        raise NotImplementedError(f"{type(self).__name__} must implement notify(context)")

    async def send(self, context: dict[str, Any]) -> None:
        """Render and send; raises what went wrong (the deadline watcher records it)."""
        await self.render(context).notify(context)

    async def __call__(self, context: dict[str, Any] | None = None, *_: Any) -> None:
        context = dict(context or {})
        name = type(self).__name__
        try:
            await self.send(context)
        except Exception:  # noqa: BLE001 - an alert that fails never changes the run
            log.exception("%s failed for %s; the run is not affected", name, _where(context))
        else:
            log.info("%s sent for %s", name, _where(context))

    def render(self, context: dict[str, Any]) -> BaseNotifier:
        """A copy with each templated field rendered with `context`. A field that does
        not render (a name the context lacks) is sent as written, with a warning: the
        alert matters more than its wording."""
        rendered = copy.copy(self)
        env = jinja_env(context.get("dag"))
        for field in self.template_fields:
            raw = getattr(self, field, None)
            try:
                setattr(rendered, field, render_value(raw, context, env))
            except jinja2.TemplateError as exc:
                log.warning("%s: templated field %r does not render (%s: %s); sent as written",
                            type(self).__name__, field, type(exc).__name__, exc)
        return rendered


def _where(context: dict[str, Any]) -> str:
    d = describe(context)
    task = f" task {d['task_id']}" if d["task_id"] else ""
    return f"DAG {d['dag_id']} run {d['run_id']}{task}"


def describe(context: dict[str, Any]) -> dict[str, Any]:
    """What a callback context is about, as plain JSON-ready values: dag_id, run_id,
    task_id, map_index, try_number, state, reason, exception, logical_date, deadline."""
    dag = context.get("dag")
    run = context.get("dag_run")
    ti = context.get("ti")
    deadline = context.get("deadline")
    dag_id = getattr(dag, "dag_id", None) or getattr(run, "dag_id", None)
    task_id = getattr(ti, "task_id", None) or context.get("task_id")
    if ti is not None:
        state = getattr(ti, "state", None)
    else:
        state = getattr(getattr(run, "state", None), "value", None)
    reason = context.get("reason")
    if reason is None and ti is not None:
        reason = {"success": "task_success", "up_for_retry": "task_retry"}.get(
            str(state), "task_failure")
    logical_date = getattr(run, "logical_date", None)
    exception = context.get("exception")
    return {
        "dag_id": dag_id,
        "run_id": context.get("run_id") or getattr(run, "run_id", None),
        "task_id": task_id,
        "map_index": getattr(ti, "map_index", None) if ti is not None else None,
        "try_number": getattr(ti, "try_number", None) if ti is not None else None,
        "state": None if state is None else str(state),
        "reason": reason,
        "exception": None if exception is None else str(exception),
        "logical_date": logical_date.isoformat() if logical_date is not None else None,
        "deadline": deadline.to_json() if hasattr(deadline, "to_json") else None,
    }


def default_message(d: dict[str, Any]) -> str:
    """One line that says what happened, from `describe`'s output."""
    what = {
        "task_failure": "failed", "task_retry": "failed and will retry",
        "task_success": "succeeded", "success": "succeeded",
        "deadline_missed": "missed its deadline",
    }.get(str(d["reason"]), str(d["state"] or d["reason"]))
    subject = f"task {d['task_id']} of DAG {d['dag_id']}" if d["task_id"] else f"DAG {d['dag_id']}"
    text = f"aflow: {subject} (run {d['run_id']}) {what}"
    if d["reason"] == "deadline_missed" and d["deadline"]:
        text += f" (deadline {d['deadline']['deadline_at']})"
    if d["exception"]:
        text += f": {d['exception']}"
    return text


def page_url(base_url: str | None, d: dict[str, Any]) -> str | None:
    """The web UI's page of the task (its logs) or of the run, under `base_url`."""
    if not base_url or not d["dag_id"] or not d["run_id"]:
        return None
    from urllib.parse import quote

    url = f"{base_url.rstrip('/')}/dags/{quote(d['dag_id'])}/runs/{quote(d['run_id'], safe='')}"
    if d["task_id"]:
        url += f"/tasks/{quote(d['task_id'])}"
    return url

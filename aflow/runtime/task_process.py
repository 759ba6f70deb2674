"""Running one try in a child process (`run_in="process"`): for CPU-bound work or to
isolate the orchestrator from crashes. The child re-imports the DAG file, runs the task
with the same context, and writes its result as JSON; its stdout and stderr (C-level
output included) go straight to the try's log. A child that dies — an exception, a
segfault, `os._exit` — fails that task only.

Run as `python -m aflow.runtime.task_process SPEC.json`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import signal
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio

from aflow.authoring.operators.bash import kill_process_group
from aflow.runtime import logs
from aflow.runtime.xcom import RETURN_KEY
from aflow.states import DagRunState, RunType, TaskState
from aflow.store.codec import dt_in, dt_out
from aflow.store.records import AssetEventRecord, DagRunRecord

if TYPE_CHECKING:  # task_runner imports this module lazily; avoid the cycle
    from aflow.runtime.task_runner import TryJob, TryResult


def _run_to_json(run: DagRunRecord) -> dict[str, Any]:
    out = dataclasses.asdict(run)
    for key, value in out.items():
        if hasattr(value, "isoformat"):
            out[key] = dt_out(value)
    out["run_type"] = run.run_type.value
    out["state"] = run.state.value
    out["triggering_asset_events"] = [
        {**dataclasses.asdict(e), "timestamp": dt_out(e.timestamp)}
        for e in run.triggering_asset_events
    ]
    return out


def _run_from_json(data: dict[str, Any]) -> DagRunRecord:
    fields = {f.name for f in dataclasses.fields(DagRunRecord)}
    values = {k: v for k, v in data.items() if k in fields}
    for key in ("logical_date", "data_interval_start", "data_interval_end", "created_at",
                "start_date", "end_date", "lease_until"):
        values[key] = dt_in(values.get(key))
    values["run_type"] = RunType(values["run_type"])
    values["state"] = DagRunState(values["state"])
    values["triggering_asset_events"] = tuple(
        AssetEventRecord(**{**e, "timestamp": dt_in(e["timestamp"])})
        for e in values.get("triggering_asset_events") or ()
    )
    return DagRunRecord(**values)


def _store_url(job: TryJob) -> str | None:
    if job.store is None:
        return None
    path = getattr(job.store, "abspath", None)  # SQLite: absolute, whatever the child's cwd
    return f"sqlite:///{path}" if path else job.store.url


def _child_env() -> dict[str, str]:
    """The child's environment: ours, plus this process's secrets settings (so a child
    decrypts connections with the key the parent was configured with, which may come
    from the config file rather than the environment)."""
    from aflow.secrets.backends import settings
    from aflow.secrets.crypto import FERNET_KEY_ENV

    env = dict(os.environ)
    if settings.fernet_key:
        env[FERNET_KEY_ENV] = settings.fernet_key
    paths = [f"{type(b).__module__}:{type(b).__qualname__}" for b in settings.backends]
    if paths:
        env[BACKENDS_ENV] = ",".join(paths)
    return env


BACKENDS_ENV = "AFLOW__SECRETS__BACKENDS"


async def run_in_child_process(
    job: TryJob, task_log: logs.TaskLog, timeout_s: float | None
) -> TryResult:
    from aflow.runtime.task_runner import TryResult

    task = job.task
    assert task.dag is not None
    if not task.dag.fileloc or not await anyio.Path(task.dag.fileloc).exists():
        return TryResult(
            TaskState.FAILED,
            error=f"run_in='process' needs the DAG to be importable from its file; "
            f"DAG {task.dag.dag_id!r} has fileloc {task.dag.fileloc!r}",
            retryable=False,
        )
    task_log.ensure_file()
    spec = {
        "dag_file": task.dag.fileloc,
        "dag_id": task.dag.dag_id,
        "task_id": task.task_id,
        "map_index": job.map_index,
        "try_number": job.try_number,
        "max_tries": job.max_tries,
        "start_date": dt_out(job.start_date),
        "hostname": job.hostname,
        "run": _run_to_json(job.run),
        "xcoms": job.xcoms.as_list(without=task.task_id if job.map_index >= 0 else None),
        "mapped": job.xcoms.mapped,
        "store_url": _store_url(job),  # for Variable/Connection lookups in the child
    }
    with tempfile.TemporaryDirectory(prefix="aflow-task-") as tmp:
        spec_path = Path(tmp) / "spec.json"
        result_path = Path(tmp) / "result.json"
        spec["result_path"] = str(result_path)
        await anyio.Path(spec_path).write_text(json.dumps(spec))
        log_fd = os.open(str(job.log_path), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "aflow.runtime.task_process",
                str(spec_path),
                stdin=asyncio.subprocess.DEVNULL,
                env=_child_env(),
                stdout=log_fd,
                stderr=log_fd,
                start_new_session=True,
            )
        finally:
            os.close(log_fd)
        try:
            with anyio.fail_after(timeout_s):
                rc = await proc.wait()
        except TimeoutError:
            with anyio.CancelScope(shield=True):
                await kill_process_group(proc)
            msg = (
                f"task {task.task_id!r} exceeded its execution_timeout of {timeout_s}s; "
                "its process was killed"
            )
            task_log.write_line(f"ERROR - {msg}")
            return TryResult(TaskState.FAILED, error=msg)
        except BaseException:
            with anyio.CancelScope(shield=True):
                await kill_process_group(proc)
            raise
        try:
            result = json.loads(await anyio.Path(result_path).read_text())
        except FileNotFoundError:
            result = None
    if result is None:
        if rc < 0:
            try:
                how = f"killed by signal {signal.Signals(-rc).name}"
            except ValueError:
                how = f"killed by signal {-rc}"
        else:
            how = f"exited with code {rc} before reporting a result"
        msg = f"task process (pid {proc.pid}) {how}"
        task_log.write_line(f"ERROR - {msg}")
        return TryResult(TaskState.FAILED, error=msg)
    return TryResult(
        TaskState(result["state"]),
        xcoms=result.get("xcoms") or {},
        error=result.get("error"),
        retryable=result.get("retryable", True),
        outlet_extras=result.get("outlet_extras"),
    )


def _child_main(spec_path: str) -> int:
    import logging
    import traceback

    from aflow.authoring.templating import render_template_fields
    from aflow.exceptions import SkipTask, TaskFailure
    from aflow.runtime.dag_loader import load_file
    from aflow.runtime.task_runner import _call_sync, build_context, outlet_extras
    from aflow.runtime.ti import RuntimeTaskInstance
    from aflow.runtime.xcom import XComView, check_json
    from aflow.secrets.backends import configure_secrets, parse_backends
    from aflow.secrets.crypto import FERNET_KEY_ENV
    from aflow.secrets.masking import mask
    from aflow.secrets.templates import secret_refs, template_context

    spec = json.loads(Path(spec_path).read_text())
    # Output goes straight to the log file: mask known secrets on the way.
    sys.stdout = logs.MaskingStream(sys.stdout)  # type: ignore[assignment]
    sys.stderr = logs.MaskingStream(sys.stderr)  # type: ignore[assignment]
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stderr,
        format="[%(asctime)s] {%(name)s} %(levelname)s - %(message)s",
    )
    result: dict[str, Any]
    try:
        configure_secrets(fernet_key=os.environ.get(FERNET_KEY_ENV),
                          backends=parse_backends(os.environ.get(BACKENDS_ENV)),
                          store_url=spec.get("store_url"))
        dags = {d.dag_id: d for d in load_file(Path(spec["dag_file"]))}
        dag = dags[spec["dag_id"]]
        xcoms = XComView.from_list(spec["xcoms"], spec.get("mapped"))
        task = dag.get_task(spec["task_id"])
        if task.is_mapped:  # this instance, built as the parent built it
            task = task.unmap(spec["map_index"], task.resolve_input(xcoms))  # type: ignore[attr-defined]
        task = task.prepare_for_run()
        run = _run_from_json(spec["run"])
        ti = RuntimeTaskInstance(
            dag_id=dag.dag_id,
            run_id=run.run_id,
            task_id=task.task_id,
            map_index=spec["map_index"],
            try_number=spec["try_number"],
            max_tries=spec["max_tries"],
            start_date=dt_in(spec["start_date"]),
            hostname=spec["hostname"],
            xcoms=xcoms,
            upstream_task_ids=task.upstream_task_ids,
        )
        context = build_context(task, ti, run)
        refs = secret_refs(task)
        if refs is not None:
            context.update(anyio.run(template_context, refs))
        render_template_fields(task, context)
        value = _call_sync(task.execute, context)
        xcoms = dict(ti.pushed)
        if value is not None and task.do_xcom_push:
            xcoms[RETURN_KEY] = check_json(value, task_id=task.task_id, key=RETURN_KEY)
        result = {"state": "success", "xcoms": xcoms,
                  "outlet_extras": outlet_extras(task, context)}
    except SkipTask as exc:
        print(f"Task skipped: {exc}", file=sys.stderr)
        result = {"state": "skipped"}
    except Exception as exc:  # noqa: BLE001 - reported to the parent
        print("Task failed with exception", file=sys.stderr)
        traceback.print_exc()
        result = {
            "state": "failed",
            "error": mask(f"{type(exc).__name__}: {exc}"),
            "retryable": not isinstance(exc, TaskFailure),
        }
    sys.stdout.flush()
    sys.stderr.flush()
    tmp = spec["result_path"] + ".tmp"
    with open(tmp, "w") as f:
        json.dump(result, f)
    os.replace(tmp, spec["result_path"])
    return 0


if __name__ == "__main__":
    sys.exit(_child_main(sys.argv[1]))

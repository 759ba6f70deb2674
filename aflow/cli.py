"""The `aflow` command line: argument parsing, output formatting and signals, nothing else.

Every command is a thin wrapper over the Orchestrator, the Store or the DAG loader.
Flags map onto constructor arguments; a flag not given takes its value from the settings
(aflow/config.py: AFLOW__SECTION__KEY, older AFLOW_* variables, $AFLOW_HOME/aflow.toml).
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import logging
import os
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Coroutine, Mapping, Sequence
from contextlib import AsyncExitStack
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio

from aflow import __version__
from aflow.cli_backfill import add_parser as add_backfill_parser
from aflow.cli_secrets import add_parsers as add_secrets_parsers
from aflow.cli_web import add_parsers as add_web_parsers
from aflow.config import SETTINGS, Config, load_config, resolve_home
from aflow.exceptions import AflowError
from aflow.orchestrator import DEFAULT_HOME, Orchestrator
from aflow.runtime import logs
from aflow.runtime.dag_loader import DagBag
from aflow.runtime.dag_processor import DagProcessor
from aflow.runtime.pools import check_pool
from aflow.runtime.run_factory import with_unstarted
from aflow.runtime.stats import pool_uses, trigger_counts
from aflow.secrets.backends import configure_secrets, parse_backends
from aflow.states import DagRunState, TaskState
from aflow.store.factory import open_store_url
from aflow.store.records import UNLIMITED_SLOTS

EXIT_FAILED = 1
EXIT_USAGE = 2

# The CLI owns its event loop, so it runs on uvloop (about 10% more task instances per
# second here); embedded use runs on whatever loop the host service has.
LOOP_OPTIONS = {"use_uvloop": importlib.util.find_spec("uvloop") is not None}

GC_THRESHOLDS = (50_000, 20, 100)


def tune_gc() -> None:
    """For a process the CLI owns: what is loaded by now (aflow, its dependencies) is
    frozen out of the cyclic collector, and the young generation is collected every
    50,000 allocations instead of 700. A task instance allocates a few hundred objects
    that reference counting frees; at the default threshold the collector ran every few
    tasks and took about a tenth of the engine's CPU. Embedded use keeps the host's
    settings."""
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


# -- settings ----------------------------------------------------------------------------------
def apply_config(args: argparse.Namespace, env: Mapping[str, str]) -> Config:
    """Resolve every setting (flag > AFLOW__SECTION__KEY > older AFLOW_* > file > default)
    and put the values of this command's flags onto `args`."""
    home, home_source = resolve_home(args.home, env)
    flags = {s.name: getattr(args, s.dest, None) for s in SETTINGS if s.dest}
    config = load_config(home, env=env, flags=flags, home_source=home_source)
    args.home = str(home)
    for s in SETTINGS:
        if s.dest and hasattr(args, s.dest):
            value = config.get(s.name)
            setattr(args, s.dest, str(value) if isinstance(value, Path) else value)
    args.config = config
    configure_secrets(fernet_key=config.get("core.fernet_key"),
                      backends=parse_backends(config.get("secrets.backends")),
                      store_url=str(config.get("core.store")))
    return config


def _setting_help(text: str, name: str) -> str:
    s = next(s for s in SETTINGS if s.name == name)
    default = s.default_text or s.default
    alias = f" or {s.legacy_env}" if s.legacy_env else ""
    return f"{text} (setting {name}: env {s.env}{alias}; default {default})".replace("%", "%%")


def _open_store(args: argparse.Namespace) -> Any:
    return open_store_url(store_url_of(args),
                          sqlite_synchronous=args.config.get("core.sqlite_synchronous"))


def home_of(args: argparse.Namespace) -> Path:
    return Path(args.home).expanduser()


def store_url_of(args: argparse.Namespace) -> str:
    return args.store or f"sqlite:///{home_of(args) / 'aflow.db'}"


def dags_folder_of(args: argparse.Namespace) -> Path:
    return Path(args.dags_folder).expanduser() if args.dags_folder else home_of(args) / "dags"


def parse_conf(text: str | None) -> dict[str, Any] | None:
    if text is None:
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise AflowError(f"--conf is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise AflowError(f"--conf must be a JSON object, got {type(value).__name__}")
    return value


def parse_date(text: str | None) -> datetime | None:
    if text is None:
        return None
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise AflowError(f"invalid date {text!r}: use ISO-8601, e.g. 2024-01-31 or 2024-01-31T06:00:00+00:00") from None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


# -- output ------------------------------------------------------------------------------------
def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, datetime):
        return value.isoformat(timespec="seconds")
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


def emit(rows: Sequence[dict[str, Any]], columns: Sequence[str], output: str) -> None:
    if output == "json":
        print(json.dumps([{c: _jsonable(r.get(c)) for c in columns} for r in rows], indent=2))
        return
    if not rows:
        print("(none)")
        return
    cells = [[_cell(r.get(c)) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip())
    print("  ".join("-" * w for w in widths))
    for row in cells:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())


def _jsonable(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    return value


# -- commands --------------------------------------------------------------------------------------
async def cmd_db_init(args: argparse.Namespace) -> int:
    home_of(args).mkdir(parents=True, exist_ok=True)
    async with _open_store(args) as store:
        version = await store.schema_version()
        for pool in args.config.pools:  # the config file's [pools]
            await store.set_pool(pool)
    print(f"store {store_url_of(args)} is at schema version {version}")
    return 0


# -- pools -----------------------------------------------------------------------------------------
async def cmd_pools_list(args: argparse.Namespace) -> int:
    async with _open_store(args) as store:
        pools = await pool_uses(store)
    rows = [
        {
            "pool": p.name,
            "slots": "unlimited" if p.slots == UNLIMITED_SLOTS and args.output == "table" else p.slots,
            "include_deferred": p.include_deferred,
            "running": p.running,
            "deferred": p.deferred,
            "description": p.description,
        }
        for p in pools
    ]
    emit(rows, ["pool", "slots", "include_deferred", "running", "deferred", "description"],
         args.output)
    return 0


async def cmd_pools_set(args: argparse.Namespace) -> int:
    async with _open_store(args) as store:
        old = await store.get_pool(args.name)
        description = args.description if args.description is not None else (
            old.description if old else "")
        include_deferred = args.include_deferred if args.include_deferred is not None else (
            old.include_deferred if old else False)
        pool = check_pool(args.name, args.slots, description, include_deferred)
        await store.set_pool(pool)
    slots = "no limit" if pool.slots == UNLIMITED_SLOTS else f"{pool.slots} slots"
    print(f"pool {pool.name} {'updated' if old else 'created'}: {slots}, "
          f"include_deferred={'true' if pool.include_deferred else 'false'}")
    return 0


async def cmd_pools_delete(args: argparse.Namespace) -> int:
    async with _open_store(args) as store:
        await store.delete_pool(args.name)
    print(f"pool {args.name} deleted")
    return 0


async def _load_bag(args: argparse.Namespace, *, report_errors: bool = False) -> DagBag:
    """Load the DAG folder through the DagProcessor's parser processes, so a file that
    hangs or crashes at import becomes an import error instead of hanging the command.
    With `report_errors` the command reports import errors itself, so the loader's own
    warning per broken file is not printed a second time."""
    folder = dags_folder_of(args)
    if not await anyio.Path(folder).exists():
        raise AflowError(f"DAG folder {folder} does not exist (set --dags-folder, "
                         "AFLOW__CORE__DAGS_FOLDER or [core] dags_folder in aflow.toml)")
    quiet = [logging.getLogger(name) for name in
             ("aflow.runtime.dag_loader", "aflow.runtime.dag_processor")]
    levels = [lg.level for lg in quiet]
    if report_errors and not args.verbose:
        for lg in quiet:
            lg.setLevel(logging.ERROR)
    try:
        bag = DagBag()
        async with DagProcessor(
            folder,
            processes=args.config.get("dag_processor.parse_processes"),
            timeout_s=args.config.get("dag_processor.parse_timeout_seconds"),
        ) as processor:
            await processor.load(bag)
        return bag
    finally:
        for lg, level in zip(quiet, levels, strict=True):
            lg.setLevel(level)


async def cmd_dags_list(args: argparse.Namespace) -> int:
    """The DAGs of the folder, with their paused flag from the store, then the DAGs the
    store records from this folder whose file is gone or no longer defines them
    (inactive: no longer scheduled; their runs stay visible)."""
    bag = await _load_bag(args, report_errors=True)
    folder = dags_folder_of(args).resolve()
    async with _open_store(args) as store:
        recorded = {d.dag_id: d for d in await store.list_dags()}
    rows = []
    for d in sorted(bag.dags.values(), key=lambda d: d.dag_id):
        record = recorded.get(d.dag_id)
        paused = record.is_paused if record is not None else bool(d.is_paused_upon_creation)
        rows.append({
            "dag_id": d.dag_id,
            "fileloc": d.fileloc,
            "schedule": d.structure()["schedule"],
            "tasks": len(d.task_dict),
            "tags": ",".join(d.tags),
            "is_paused": paused,
            "is_active": True,
        })
    for dag_id in sorted(set(recorded) - set(bag.dags)):
        record = recorded[dag_id]
        if record.fileloc is None or not Path(record.fileloc).is_relative_to(folder):
            continue  # recorded from another DAG folder than this one
        rows.append({
            "dag_id": dag_id,
            "fileloc": record.fileloc,
            "schedule": record.structure.get("schedule"),
            "tasks": len(record.structure.get("tasks", [])),
            "tags": ",".join(record.structure.get("tags", [])),
            "is_paused": record.is_paused,
            "is_active": False,
        })
    emit(rows, ["dag_id", "fileloc", "schedule", "tasks", "tags", "is_paused", "is_active"],
         args.output)
    if bag.import_errors:  # on stderr, so that stdout stays parseable with --output json
        print(f"\n{len(bag.import_errors)} DAG file(s) failed to import"
              " (details: aflow dags list-import-errors):", file=sys.stderr)
        for _, message in sorted(bag.import_errors.items()):
            print(f"  {message.splitlines()[0]}", file=sys.stderr)
    return 0


async def cmd_dags_import_errors(args: argparse.Namespace) -> int:
    bag = await _load_bag(args, report_errors=True)
    rows = [{"filename": f, "error": m} for f, m in sorted(bag.import_errors.items())]
    if args.output == "table":
        if not rows:
            print("no import errors")
        for r in rows:
            print(f"{r['filename']}\n{r['error']}\n")
    else:
        emit(rows, ["filename", "error"], "json")
    return 0


def _ti_rows(tis: Sequence[Any]) -> list[dict[str, Any]]:
    return [
        {
            "task_id": t.task_id if t.map_index < 0 else f"{t.task_id}[{t.map_index}]",
            "state": t.state.value,
            "tries": t.try_number,
            "duration_s": t.duration_s,
            "error": (t.error or "")[:120],
        }
        for t in tis
    ]


async def cmd_dags_test(args: argparse.Namespace) -> int:
    conf = parse_conf(args.conf)
    logical_date = parse_date(args.logical_date)
    async with Orchestrator(
        dags_folder_of(args),
        store=store_url_of(args),
        home=home_of(args),
        parallelism=args.parallelism,
        schedule=False,
        claim=False,
        sqlite_synchronous=args.config.get("core.sqlite_synchronous"),
        parse_processes=args.config.get("dag_processor.parse_processes"),
        parse_timeout_s=args.config.get("dag_processor.parse_timeout_seconds"),
        pools={p.name: p for p in args.config.pools},
    ) as o:
        dag = o.dagbag.get_dag(args.dag_id)
        handle = await o.trigger(
            dag.dag_id, conf=conf, logical_date=logical_date, triggered_by="cli dags test"
        )
        final = await handle.wait()
        tis = await handle.task_instances()
    order = {t.task_id: i for i, t in enumerate(dag.topological_order())}
    tis.sort(key=lambda t: (order.get(t.task_id, len(order)), t.map_index))
    if args.output == "json":
        print(json.dumps({"dag_id": dag.dag_id, "run_id": final.run_id, "state": final.state.value,
                          "tasks": _ti_rows(tis)}, indent=2))
    else:
        print(f"run {final.run_id} of {dag.dag_id}: {final.state.value}")
        emit(_ti_rows(tis), ["task_id", "state", "tries", "duration_s", "error"], "table")
        print(f"\nlogs: {home_of(args) / 'logs'}")
    return 0 if final.state is DagRunState.SUCCESS else EXIT_FAILED


async def cmd_dags_trigger(args: argparse.Namespace) -> int:
    from aflow.runtime.run_factory import manual_interval, new_run
    from aflow.states import RunType

    conf = parse_conf(args.conf)
    bag = await _load_bag(args)
    dag = bag.get_dag(args.dag_id)
    now = datetime.now(UTC)
    logical_date = parse_date(args.logical_date) or now
    run, tis = new_run(
        dag,
        run_type=RunType.MANUAL,
        logical_date=logical_date,
        now=now,
        data_interval=manual_interval(dag, logical_date),
        conf=conf,
        run_id=args.run_id,
        triggered_by="cli",
    )
    async with _open_store(args) as store:
        await store.create_run(run, [])  # TI rows are written as they first change
    emit([{"dag_id": run.dag_id, "run_id": run.run_id, "state": run.state.value,
           "logical_date": run.logical_date}], ["dag_id", "run_id", "state", "logical_date"],
         args.output)
    return 0


async def cmd_dags_pause(args: argparse.Namespace, paused: bool) -> int:
    async with _open_store(args) as store:
        if await store.get_dag(args.dag_id) is None:
            raise AflowError(f"no DAG {args.dag_id!r} in the store (has a scheduler loaded it?)")
        await store.set_dag_paused(args.dag_id, paused)
    print(f"DAG {args.dag_id} {'paused' if paused else 'unpaused'}")
    return 0


async def cmd_triggers_list(args: argparse.Namespace) -> int:
    """Parked triggers by type: how many wait, the oldest wait, how many fired."""
    async with _open_store(args) as store:
        triggers = await store.list_triggers()
    rows = [{"classpath": c.classpath, "waiting": c.waiting, "fired": c.fired,
             "oldest_s": c.oldest_wait_s} for c in trigger_counts(triggers, datetime.now(UTC))]
    emit(rows, ["classpath", "waiting", "fired", "oldest_s"], args.output)
    return 0


async def cmd_triggers_health(args: argparse.Namespace) -> int:
    """Triggerers whose event loop wrote a heartbeat lately (exit 1 if none)."""
    async with _open_store(args) as store:
        procs = await store.list_processes("triggerer")
    now = datetime.now(UTC)
    rows = [
        {
            "process_id": p.process_id,
            "hostname": p.hostname,
            "pid": p.pid,
            "heartbeat_age_s": (now - p.heartbeat_at).total_seconds(),
            "healthy": (now - p.heartbeat_at).total_seconds() <= args.max_age,
        }
        for p in procs
    ]
    emit(rows, ["process_id", "hostname", "pid", "heartbeat_age_s", "healthy"], args.output)
    return 0 if any(r["healthy"] for r in rows) else EXIT_FAILED


async def cmd_runs_list(args: argparse.Namespace) -> int:
    states = [DagRunState(s) for s in args.state] if args.state else None
    async with _open_store(args) as store:
        runs = await store.list_runs(args.dag_id, states=states, limit=args.limit)
    rows = [
        {
            "dag_id": r.dag_id,
            "run_id": r.run_id,
            "state": r.state.value,
            "run_type": r.run_type.value,
            "logical_date": r.logical_date,
            "start_date": r.start_date,
            "end_date": r.end_date,
        }
        for r in runs
    ]
    emit(rows, ["dag_id", "run_id", "state", "run_type", "logical_date", "start_date", "end_date"], args.output)
    return 0


async def cmd_tasks_list(args: argparse.Namespace) -> int:
    dag = (await _load_bag(args)).get_dag(args.dag_id)
    rows = [
        {"task_id": t.task_id, "operator": t.operator_name + (" (mapped)" if t.is_mapped else ""),
         "trigger_rule": t.trigger_rule.value,
         "upstream": ",".join(sorted(t.upstream_task_ids))}
        for t in dag.topological_order()
    ]
    emit(rows, ["task_id", "operator", "trigger_rule", "upstream"], args.output)
    return 0


async def cmd_tasks_test(args: argparse.Namespace) -> int:
    """Run one task alone, in-process, with no dependencies and nothing recorded."""
    from aflow.runtime.run_factory import manual_interval, new_run
    from aflow.runtime.task_runner import TryJob, run_try
    from aflow.runtime.xcom import XComView
    from aflow.states import RunType

    dag = (await _load_bag(args)).get_dag(args.dag_id)
    task = dag.get_task(args.task_id)
    now = datetime.now(UTC)
    logical_date = parse_date(args.logical_date) or now
    run, _ = new_run(dag, run_type=RunType.MANUAL, logical_date=logical_date, now=now,
                     data_interval=manual_interval(dag, logical_date),
                     conf=parse_conf(args.conf), run_id=f"test__{logical_date.isoformat()}")
    with tempfile.TemporaryDirectory(prefix="aflow-tasks-test-") as tmp:
        log_file = Path(tmp) / "attempt=1.log"
        logs.install_log_routing()
        try:
            result = await run_try(
                TryJob(task=task, run=run, map_index=-1, try_number=1, max_tries=0,
                       start_date=now, hostname="local", xcoms=XComView(), log_path=str(log_file))
            )
        finally:
            logs.uninstall_log_routing()
        text, _ = logs.read_log(log_file)
    sys.stdout.write(text)
    print(f"task {task.task_id}: {result.state.value}")
    if result.xcoms:
        print(f"xcom: {json.dumps(result.xcoms)}")
    return 0 if result.state is not TaskState.FAILED else EXIT_FAILED


async def cmd_tasks_logs(args: argparse.Namespace) -> int:
    async with _open_store(args) as store:
        run = await store.get_run(args.dag_id, args.run_id)
        tis = [t for t in await store.get_tis(args.dag_id, args.run_id) if t.task_id == args.task_id]
    if run is None:
        raise AflowError(f"DAG {args.dag_id!r} has no run {args.run_id!r}")
    if not tis:
        print(f"task {args.task_id} has not run yet in {args.run_id}")
        return 0
    ti = tis[0]
    try_number = args.try_number or ti.try_number
    if try_number < 1:
        if args.try_number is not None:
            raise AflowError(f"--try must be 1 or more, got {args.try_number}")
        print(f"task {args.task_id} has not run yet (state {ti.state.value})")
        return 0
    if try_number > ti.try_number:
        raise AflowError(
            f"task {args.task_id} has no try {try_number}: it has run {ti.try_number} time(s)"
        )
    path = logs.log_path(home_of(args) / "logs", args.dag_id, args.run_id, args.task_id, try_number, ti.map_index)
    text, _ = logs.read_log(path)
    print(f"*** {path} (try {try_number} of {ti.try_number}, state {ti.state.value})")
    sys.stdout.write(text if text else "(the task wrote nothing to its log)\n")
    return 0


def _first_line(text: str | None, width: int) -> str:
    return (text or "").partition("\n")[0][:width]


async def cmd_tasks_states(args: argparse.Namespace) -> int:
    async with _open_store(args) as store:
        run = await store.get_run(args.dag_id, args.run_id)
        if run is None:
            raise AflowError(f"DAG {args.dag_id!r} has no run {args.run_id!r}")
        tis = await store.get_tis(args.dag_id, args.run_id)
        dag = await store.get_dag(args.dag_id)
    if dag is not None:
        task_ids = [t["task_id"] for t in dag.structure.get("tasks", [])]
        tis = with_unstarted(args.dag_id, args.run_id, task_ids, tis)
    rows = [
        {
            "task_id": t.task_id,
            "map_index": t.map_index,
            "state": t.state.value,
            "try_number": t.try_number,
            "max_tries": t.max_tries,
            "start_date": t.start_date,
            "end_date": t.end_date,
            "hostname": t.hostname,
            "error": t.error if args.output == "json" else _first_line(t.error, 80),
        }
        for t in sorted(tis, key=lambda t: (t.task_id, t.map_index))
    ]
    emit(rows, ["task_id", "map_index", "state", "try_number", "max_tries", "start_date", "end_date",
                "hostname", "error"], args.output)
    return 0


def _by_hand_orchestrator(args: argparse.Namespace) -> Orchestrator:
    """An Orchestrator that only changes runs by hand: it drives, claims and schedules
    nothing, so a change to a run reaches whichever scheduler drives it next."""
    return Orchestrator(
        dags_folder_of(args),
        store=store_url_of(args),
        home=home_of(args),
        schedule=False,
        claim=False,
        triggerer=False,
        watch_dags=False,
        sqlite_synchronous=args.config.get("core.sqlite_synchronous"),
        parse_processes=args.config.get("dag_processor.parse_processes"),
        parse_timeout_s=args.config.get("dag_processor.parse_timeout_seconds"),
    )


async def _runs_to_clear(o: Orchestrator, args: argparse.Namespace) -> list[str]:
    if args.run_id is not None:
        if args.start is not None or args.end is not None:
            raise AflowError("give either --run-id or --start/--end, not both")
        if await o.store.get_run(args.dag_id, args.run_id) is None:
            raise AflowError(f"DAG {args.dag_id!r} has no run {args.run_id!r}")
        return [args.run_id]
    start, end = parse_date(args.start), parse_date(args.end)
    if start is None and end is None:
        raise AflowError("say which runs to clear: --run-id RUN_ID, or --start/--end dates")
    if start is not None and end is not None and end < start:
        raise AflowError(f"--end {args.end} is before --start {args.start}")
    runs = [
        r for r in await o.store.list_runs(args.dag_id, limit=1_000_000)
        if (start is None or r.logical_date >= start) and (end is None or r.logical_date <= end)
    ]
    if not runs:
        raise AflowError(f"DAG {args.dag_id!r} has no run with a logical date in that range")
    return [r.run_id for r in sorted(runs, key=lambda r: r.logical_date)]


def _matching_tasks(dag: Any, regex: str | None) -> list[str] | None:
    if regex is None:
        return None
    import re

    try:
        pattern = re.compile(regex)
    except re.error as exc:
        raise AflowError(f"--task-regex {regex!r} is not a valid regular expression: {exc}") from None
    matched = [t for t in dag.task_ids if pattern.search(t)]
    if not matched:
        raise AflowError(f"no task of DAG {dag.dag_id!r} matches --task-regex {regex!r}")
    return matched


async def _confirm(question: str) -> bool:
    if not sys.stdin.isatty():
        raise AflowError("not clearing without --yes: stdin is not a terminal to confirm on")
    answer = await anyio.to_thread.run_sync(input, f"{question} [y/N] ")
    return answer.strip().lower() in ("y", "yes")


async def cmd_tasks_clear(args: argparse.Namespace) -> int:
    """As `airflow tasks clear`: the matching TIs of the chosen runs run again."""
    async with _by_hand_orchestrator(args) as o:
        dag = o.dagbag.get_dag(args.dag_id)
        task_ids = _matching_tasks(dag, args.task_regex)
        options = {"downstream": args.downstream, "upstream": args.upstream,
                   "only_failed": args.only_failed}
        plan = {}  # every run checked before any is changed
        for run_id in await _runs_to_clear(o, args):
            tis = await o.tasks_to_clear(dag.dag_id, run_id, task_ids, **options)
            if tis:
                plan[run_id] = tis
        rows = [{"dag_id": dag.dag_id, "run_id": run_id, "task_id": t.task_id,
                 "state": t.state.value, "try_number": t.try_number}
                for run_id, tis in plan.items() for t in tis]
        if not rows:
            if args.output == "json":
                emit([], ["dag_id", "run_id", "task_id", "state", "try_number"], "json")
            else:
                print("nothing to clear")
            return 0
        if not args.yes:
            emit(rows, ["dag_id", "run_id", "task_id", "state", "try_number"], "table")
            if not await _confirm(f"Clear these {len(rows)} task instance(s)?"):
                print("nothing cleared")
                return EXIT_FAILED
        for run_id in plan:
            await o.clear_tasks(dag.dag_id, run_id, [t.task_id for t in plan[run_id]])
    if args.output == "json":
        emit(rows, ["dag_id", "run_id", "task_id", "state", "try_number"], "json")
    else:
        print(f"cleared {len(rows)} task instance(s) in {len(plan)} run(s): they run again "
              "once a scheduler picks the run up")
        if args.yes:
            emit(rows, ["dag_id", "run_id", "task_id", "state", "try_number"], "table")
    return 0


async def cmd_tasks_mark(args: argparse.Namespace) -> int:
    async with _by_hand_orchestrator(args) as o:
        changed = await o.mark_task(args.dag_id, args.run_id, args.task_id, args.state)
        run = await o.store.get_run(args.dag_id, args.run_id)
    run_state = run.state.value if run is not None else None
    if args.output == "json":
        print(json.dumps({"dag_id": args.dag_id, "run_id": args.run_id, "task_id": args.task_id,
                          "state": args.state, "cleared_downstream": changed[1:],
                          "run_state": run_state}, indent=2))
    else:
        print(f"task {args.task_id} of run {args.run_id} marked {args.state}")
        if len(changed) > 1:
            print(f"cleared downstream to run again: {', '.join(changed[1:])}")
        if run_state == DagRunState.QUEUED.value:
            print("the run is queued again: a scheduler decides what follows and ends it")
    return 0


async def cmd_runs_mark(args: argparse.Namespace) -> int:
    async with _by_hand_orchestrator(args) as o:
        run = await o.mark_run(args.dag_id, args.run_id, args.state)
        tis = await o.store.get_tis(args.dag_id, args.run_id)
    if args.output == "json":
        print(json.dumps({"dag_id": run.dag_id, "run_id": run.run_id, "state": run.state.value,
                          "tasks": {t.task_id: t.state.value for t in tis}}, indent=2))
    else:
        print(f"run {run.run_id} of {run.dag_id} marked {run.state.value}")
    return 0


def _config_value(value: Any) -> Any:
    return str(value) if isinstance(value, Path) else value


def _listed_value(v: Any) -> Any:
    if v.setting.secret and v.value is not None:
        return "***"
    return _config_value(v.value)


async def cmd_config_list(args: argparse.Namespace) -> int:
    config: Config = args.config
    rows = [{"setting": "home", "value": str(config.home), "source": config.home_source,
             "env": "AFLOW_HOME"}]
    rows += [{"setting": name, "value": _listed_value(v), "source": v.source,
              "env": v.setting.env} for name, v in config.values.items()]
    if args.output == "table":  # 30, not the listings' 30.000
        for row in rows:
            if isinstance(row["value"], float):
                row["value"] = f"{row['value']:g}"
    emit(rows, ["setting", "value", "source", "env"], args.output)
    if args.output == "table":
        exists = "" if config.file.exists() else " (not present)"
        print(f"\nconfig file: {config.file}{exists}")
    return 0


async def cmd_config_get(args: argparse.Namespace) -> int:
    value = _config_value(args.config.get(args.name))
    print("" if value is None else value)
    return 0


async def _serve(args: argparse.Namespace, what: str) -> int:
    folder = dags_folder_of(args)
    # scheduler: schedules and drives runs; triggerer: only parks deferred waits;
    # webserver: the UI and REST API (runs it creates are left to the schedulers);
    # standalone: all of them in one process.
    drives_runs = what in ("scheduler", "standalone")
    serves_web = what in ("webserver", "standalone")
    orchestrator = Orchestrator(
        folder,
        store=store_url_of(args),
        home=home_of(args),
        parallelism=args.parallelism,
        shutdown_grace_s=args.grace,
        schedule=drives_runs,
        claim=drives_runs,
        drive_runs=what != "webserver",
        triggerer=what in ("triggerer", "standalone"),
        triggerer_capacity=args.capacity,
        lease_s=args.lease,
        poll_s=args.config.get("scheduler.poll_seconds"),
        sweep_s=args.sweep,
        orphan_grace_s=args.orphan_grace,
        hostname=args.hostname,
        sqlite_synchronous=args.config.get("core.sqlite_synchronous"),
        watch_dags=args.config.get("dag_processor.watch"),
        parse_processes=args.config.get("dag_processor.parse_processes"),
        parse_timeout_s=args.config.get("dag_processor.parse_timeout_seconds"),
        pools={p.name: p for p in args.config.pools} if drives_runs else None,
    )
    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with anyio.create_task_group() as watchers, AsyncExitStack() as web:
            async with orchestrator as o:
                url = password = None
                if serves_web:  # (imported here: other commands need no web stack)
                    from aflow.api import serve_api
                    from aflow.cli_web import ensure_admin

                    password = await ensure_admin(o.store) if what == "standalone" else None
                    url = await web.enter_async_context(
                        serve_api(o, host=args.host, port=args.port))
                print(f"aflow {what} {__version__} running (pid {os.getpid()})", flush=True)
                print(f"  home:        {o.home}", flush=True)
                print(f"  store:       {store_url_of(args)}", flush=True)
                exists = "" if args.config.file.exists() else " (not present; defaults apply)"
                print(f"  config:      {args.config.file}{exists}", flush=True)
                print(f"  DAG folder:  {folder} ({len(o.dagbag.dags)} DAGs, {len(o.dagbag.import_errors)} import errors)", flush=True)
                print(f"  task logs:   {o.log_dir}", flush=True)
                if url is not None:
                    print(f"  web UI:      {url}  (REST API: {url}/api/v1)", flush=True)
                    if password is not None:
                        print(f"  login:       admin / {password}  (created now, shown "
                              "once: only its hash is stored; see aflow users)", flush=True)
                for message in o.dagbag.import_errors.values():
                    print(f"  import error: {message.splitlines()[0]}", flush=True)
                async for signum in signals:
                    print(f"received {signal.Signals(signum).name}: stopping; running tasks get "
                          f"{args.grace}s (signal again to stop at once)", flush=True)
                    break

                async def second_signal() -> None:
                    async for signum in signals:
                        print(f"received {signal.Signals(signum).name} again: cancelling running "
                              "tasks now", flush=True)
                        o.cut_grace_short()

                watchers.start_soon(second_signal)
                await web.aclose()  # the web server stops before the orchestrator drains
            watchers.cancel_scope.cancel()
    print("stopped", flush=True)
    return 0


# -- parser ------------------------------------------------------------------------------------
Handler = Callable[[argparse.Namespace], Coroutine[Any, Any, int]]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="aflow", description="aflow: async-native workflow orchestration")
    parser.add_argument("--version", action="version", version=f"aflow {__version__}")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--home",
                        help="state folder: store, logs, aflow.toml (env AFLOW_HOME; "
                             f"default {DEFAULT_HOME})")
    common.add_argument("--store", help=_setting_help("store URL, e.g. sqlite:///path.db", "core.store"))
    common.add_argument("--dags-folder", help=_setting_help("folder of DAG files", "core.dags_folder"))
    common.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    output = argparse.ArgumentParser(add_help=False)
    output.add_argument("-o", "--output", choices=["table", "json"], default="table", help="output format")
    running = argparse.ArgumentParser(add_help=False)
    running.add_argument("--parallelism", type=int,
                         help=_setting_help("most tries running at once", "core.parallelism"))

    groups = parser.add_subparsers(dest="group", required=True, metavar="COMMAND")

    db = groups.add_parser("db", help="the store").add_subparsers(dest="cmd", required=True)
    p = db.add_parser("init", parents=[common], help="create or migrate the store")
    p.set_defaults(handler=cmd_db_init)

    dags = groups.add_parser("dags", help="DAGs").add_subparsers(dest="cmd", required=True)
    p = dags.add_parser("list", parents=[common, output], help="list DAGs (and import errors)")
    p.set_defaults(handler=cmd_dags_list)
    p = dags.add_parser("list-import-errors", parents=[common, output], help="DAG files that failed to import")
    p.set_defaults(handler=cmd_dags_import_errors)
    p = dags.add_parser("test", parents=[common, output, running],
                        help="run one whole run in-process and print each task's outcome")
    p.add_argument("dag_id")
    p.add_argument("--conf", help="run conf as a JSON object")
    p.add_argument("--logical-date", help="ISO-8601 date (default now)")
    p.set_defaults(handler=cmd_dags_test)
    p = dags.add_parser("trigger", parents=[common, output], help="create a run for a scheduler to execute")
    p.add_argument("dag_id")
    p.add_argument("--conf", help="run conf as a JSON object")
    p.add_argument("--run-id")
    p.add_argument("--logical-date", help="ISO-8601 date (default now)")
    p.set_defaults(handler=cmd_dags_trigger)
    for name, paused in (("pause", True), ("unpause", False)):
        p = dags.add_parser(name, parents=[common], help=f"{name} a DAG's scheduled runs")
        p.add_argument("dag_id")
        p.set_defaults(handler=lambda a, paused=paused: cmd_dags_pause(a, paused))

    tasks = groups.add_parser("tasks", help="task instances").add_subparsers(dest="cmd", required=True)
    p = tasks.add_parser("list", parents=[common, output], help="a DAG's tasks in order")
    p.add_argument("dag_id")
    p.set_defaults(handler=cmd_tasks_list)
    p = tasks.add_parser("test", parents=[common], help="run one task alone, recording nothing")
    p.add_argument("dag_id")
    p.add_argument("task_id")
    p.add_argument("--conf")
    p.add_argument("--logical-date")
    p.set_defaults(handler=cmd_tasks_test)
    p = tasks.add_parser("logs", parents=[common], help="print a task instance's log")
    p.add_argument("dag_id")
    p.add_argument("run_id")
    p.add_argument("task_id")
    p.add_argument("--try", dest="try_number", type=int, help="try number (default: the latest)")
    p.set_defaults(handler=cmd_tasks_logs)
    p = tasks.add_parser("states-for-dag-run", parents=[common, output],
                         help="the state of every task instance of one run")
    p.add_argument("dag_id")
    p.add_argument("run_id")
    p.set_defaults(handler=cmd_tasks_states)

    p = tasks.add_parser("clear", parents=[common, output],
                         help="make task instances run again (as airflow tasks clear)")
    p.add_argument("dag_id")
    p.add_argument("--run-id", help="the run to clear in")
    p.add_argument("-s", "--start", help="clear in runs with a logical date from this (ISO-8601)")
    p.add_argument("-e", "--end", help="... up to this (ISO-8601, inclusive)")
    p.add_argument("-t", "--task-regex", help="only tasks whose id matches (re.search)")
    p.add_argument("-d", "--downstream", action="store_true", help="and every task downstream")
    p.add_argument("-u", "--upstream", action="store_true", help="and every task upstream")
    p.add_argument("-f", "--only-failed", action="store_true",
                   help="only failed and upstream_failed task instances")
    p.add_argument("-y", "--yes", action="store_true", help="do not ask for confirmation")
    p.set_defaults(handler=cmd_tasks_clear)
    p = tasks.add_parser("mark", parents=[common, output],
                         help="end a task instance as success or failed by hand")
    p.add_argument("dag_id")
    p.add_argument("run_id")
    p.add_argument("task_id")
    p.add_argument("state", choices=["success", "failed"])
    p.set_defaults(handler=cmd_tasks_mark)

    runs = groups.add_parser("runs", help="DAG runs").add_subparsers(dest="cmd", required=True)
    p = runs.add_parser("mark", parents=[common, output],
                        help="end a run as success or failed by hand")
    p.add_argument("dag_id")
    p.add_argument("run_id")
    p.add_argument("state", choices=["success", "failed"])
    p.set_defaults(handler=cmd_runs_mark)
    p = runs.add_parser("list", parents=[common, output], help="list runs, newest first")
    p.add_argument("dag_id", nargs="?")
    p.add_argument("--state", action="append", choices=[s.value for s in DagRunState])
    p.add_argument("--limit", type=int, default=50)
    p.set_defaults(handler=cmd_runs_list)

    trig = groups.add_parser("triggers", help="deferred waits").add_subparsers(dest="cmd", required=True)
    p = trig.add_parser("list", parents=[common, output], help="parked triggers by type")
    p.set_defaults(handler=cmd_triggers_list)
    p = trig.add_parser("health", parents=[common, output],
                        help="triggerers with a recent event-loop heartbeat (exit 1 if none)")
    p.add_argument("--max-age", type=float, default=30.0, help="seconds (default %(default)s)")
    p.set_defaults(handler=cmd_triggers_health)

    for name, text in (("scheduler", "schedule and drive runs until SIGTERM/Ctrl-C"),
                       ("triggerer", "park deferred waits (triggers) until SIGTERM/Ctrl-C"),
                       ("webserver", "serve the web UI and REST API until SIGTERM/Ctrl-C"),
                       ("standalone", "run every part of aflow in one process, with the web "
                                      "UI (creates an admin user on first start)")):
        p = groups.add_parser(name, parents=[common, running], help=text)
        if name in ("webserver", "standalone"):
            p.add_argument("--host", help=_setting_help("address to listen on", "webserver.host"))
            p.add_argument("--port", type=int, help=_setting_help("port", "webserver.port"))
        p.add_argument("--grace", type=float,
                       help=_setting_help("seconds running tasks get to finish on shutdown",
                                          "core.shutdown_grace_seconds"))
        p.add_argument("--capacity", type=int,
                       help=_setting_help("most triggers this process parks", "triggerer.capacity"))
        _add_scale_out_options(p)
        p.set_defaults(handler=lambda a, name=name: _serve(a, name))

    add_web_parsers(groups, common, output)
    add_secrets_parsers(groups, common, output)
    add_backfill_parser(groups, [common, output, running],
                        _setting_help("seconds running tasks get to finish on SIGTERM/Ctrl-C",
                                      "core.shutdown_grace_seconds"))
    pools = groups.add_parser("pools", help="named pools of slots").add_subparsers(
        dest="cmd", required=True)
    p = pools.add_parser("list", parents=[common, output],
                         help="pools: slots, and task instances running or deferred in each")
    p.set_defaults(handler=cmd_pools_list)
    p = pools.add_parser("set", parents=[common],
                         help="create or change a pool (a running scheduler applies it live)")
    p.add_argument("name", metavar="NAME")
    p.add_argument("slots", metavar="SLOTS", type=int, help="slots (-1: no limit)")
    p.add_argument("--description", help="what the pool is for (default: unchanged)")
    p.add_argument("--include-deferred", action=argparse.BooleanOptionalAction, default=None,
                   help="deferred tasks keep counting against the pool (default: unchanged; "
                        "false for a new pool)")
    p.set_defaults(handler=cmd_pools_set)
    p = pools.add_parser("delete", parents=[common],
                         help="delete a pool (not default_pool, nor one with tasks in it)")
    p.add_argument("name", metavar="NAME")
    p.set_defaults(handler=cmd_pools_delete)

    conf = groups.add_parser("config", help="settings: $AFLOW_HOME/aflow.toml, AFLOW__SECTION__KEY")
    conf_cmds = conf.add_subparsers(dest="cmd", required=True)
    p = conf_cmds.add_parser("list", parents=[common, output],
                             help="every setting's effective value and where it came from")
    p.set_defaults(handler=cmd_config_list)
    p = conf_cmds.add_parser("get", parents=[common], help="one setting's effective value")
    p.add_argument("name", metavar="SECTION.KEY", help="e.g. core.parallelism")
    p.set_defaults(handler=cmd_config_get)
    return parser


def _add_scale_out_options(p: argparse.ArgumentParser) -> None:
    """Several processes sharing one PostgreSQL (README: "Running several schedulers")."""
    p.add_argument("--lease", type=float,
                   help=_setting_help("seconds a dead process keeps its runs before others adopt "
                                      "them", "scheduler.lease_seconds"))
    p.add_argument("--sweep", type=float,
                   help=_setting_help("seconds between safety sweeps for new runs while "
                                      "PostgreSQL notifications wake the scheduler",
                                      "scheduler.sweep_seconds"))
    p.add_argument("--orphan-grace", type=float,
                   help=_setting_help("seconds a run may wait for a DAG that no scheduler loads "
                                      "before it fails", "scheduler.orphan_grace_seconds"))
    p.add_argument("--hostname",
                   help=_setting_help("this host's name in process records and task instances",
                                      "scheduler.hostname"))


def _setup_logging(level_name: str) -> None:
    """`level_name` is what reaches stderr; task logs are routed to their files as before."""
    level = logging.getLevelNamesMapping()[level_name]
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(logs.OutsideTaskFilter())
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(min(level, logging.INFO))
    handler.setLevel(level)
    logging.getLogger("aflow").setLevel(min(level, logging.INFO))


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # e.g. to tell how to resume
    try:  # bad settings: one line, non-zero exit, nothing done
        config = apply_config(args, os.environ)
    except AflowError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    _setup_logging("DEBUG" if args.verbose else config.get("logging.level"))
    handler: Handler = args.handler
    tune_gc()
    try:
        code = anyio.run(handler, args, backend_options=LOOP_OPTIONS)
        if args.group in ("scheduler", "standalone", "backfill"):
            _leave_abandoned_threads(code)
        return code
    except AflowError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except BaseExceptionGroup as group:
        errors, rest = group.split(AflowError)
        if errors is None or rest is not None:
            raise
        for exc in _leaves(errors):
            print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # e.g. `aflow dags test ... | head`
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_FAILED


def _leave_abandoned_threads(code: int) -> None:
    """A sync try cancelled at the end of the grace period goes on in its worker thread
    (Python cannot stop a thread), and a non-daemon thread would keep the process alive after
    shutdown. Everything is recorded and the store closed by now: exit without waiting."""
    deadline = time.monotonic() + 1.0
    for thread in threading.enumerate():
        if thread is not threading.current_thread() and not thread.daemon:
            thread.join(max(0.0, deadline - time.monotonic()))
    stuck = [t for t in threading.enumerate()
             if t is not threading.current_thread() and not t.daemon and t.is_alive()]
    if stuck:
        print(f"abandoning {len(stuck)} thread(s) of tries cancelled after the grace period",
              file=sys.stderr, flush=True)
        logging.shutdown()
        sys.stdout.flush()
        os._exit(code)


def _leaves(group: BaseExceptionGroup[Any]) -> list[BaseException]:
    out: list[BaseException] = []
    for exc in group.exceptions:
        out.extend(_leaves(exc) if isinstance(exc, BaseExceptionGroup) else [exc])
    return out


if __name__ == "__main__":
    sys.exit(main())

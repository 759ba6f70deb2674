"""PostgresStore's statements shared by several methods, and the translation between
records and query parameters/rows: datetimes go to timestamptz as they are (aware only),
JSON goes as the codec's text, enums as their values."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from aflow.states import DagRunState, RunType, TaskState
from aflow.store.codec import json_in, json_out
from aflow.store.records import (
    DagRecord,
    DagRunRecord,
    TaskInstanceRecord,
    TaskInstanceRow,
    TriggerRecord,
)

RUN_COLS = (
    "dag_id, run_id, run_type, state, logical_date, data_interval_start, data_interval_end, "
    "conf, created_at, start_date, end_date, triggered_by, owner, lease_until, note"
)
TI_COLS = (
    "dag_id, run_id, task_id, map_index, state, try_number, max_tries, start_date, end_date, "
    "hostname, operator, priority_weight, pool, next_retry_at, next_method, next_kwargs, error"
)
# The task-instance upsert, the hot write (two per try). Ops name it by UPSERT_TI with
# `ti_row` tuples as rows; however many rows a batch holds, they go as one statement,
# UPSERT_TI_BULK, with `bulk_ti_params` (see there for why in that form).
UPSERT_TI = "upsert task_instance"
_TI_TYPES = (
    "text", "text", "text", "int4", "text", "int4", "int4", "timestamptz", "timestamptz",
    "text", "text", "int4", "text", "timestamptz", "text", "text", "text",
)
# A timestamp travels as microseconds since the epoch (int8), turned back exactly: the
# whole seconds times one second (float8 arithmetic, exact for any year 1-9999) plus the
# remaining microseconds. Only time-of-day intervals: no calendar or time zone involved.
_FROM_MICROS = (
    "'epoch'::timestamptz + ({c} / 1000000) * interval '1 second' "
    "+ ({c} % 1000000) * interval '1 microsecond'"
)
UPSERT_TI_BULK = (
    f"INSERT INTO task_instance ({TI_COLS}) SELECT "
    + ", ".join(
        _FROM_MICROS.format(c=f"c{i}") if t == "timestamptz" else f"c{i}"
        for i, t in enumerate(_TI_TYPES, 1)
    )
    + " FROM unnest("
    + ", ".join(
        f"${i}::text::{'int8' if t == 'timestamptz' else t}[]"
        for i, t in enumerate(_TI_TYPES, 1)
    )
    + ") AS u("
    + ", ".join(f"c{i}" for i in range(1, len(_TI_TYPES) + 1))
    + ") ON CONFLICT (dag_id, run_id, task_id, map_index) DO UPDATE SET "
    "state=excluded.state, try_number=excluded.try_number, max_tries=excluded.max_tries, "
    "start_date=excluded.start_date, end_date=excluded.end_date, hostname=excluded.hostname, "
    "operator=excluded.operator, priority_weight=excluded.priority_weight, pool=excluded.pool, "
    "next_retry_at=excluded.next_retry_at, next_method=excluded.next_method, "
    "next_kwargs=excluded.next_kwargs, error=excluded.error"
)
INSERT_RUN = f"INSERT INTO dag_run ({RUN_COLS}) VALUES ({', '.join(f'${i}' for i in range(1, 16))})"
UPDATE_RUN = (
    "UPDATE dag_run SET state=$1, start_date=$2, end_date=$3, conf=$4, note=$5 "
    "WHERE dag_id=$6 AND run_id=$7"
)
# A trigger's lease is its owner's (one row per triggerer in trigger_lease).
TRIGGER_COLS = (
    "id, classpath, kwargs, created_at, timeout_at, owner, "
    "(SELECT l.lease_until FROM trigger_lease l WHERE l.owner = trigger.owner), "
    "dag_id, run_id, task_id, map_index, try_number, event, fired_at"
)
INSERT_TRIGGER = (
    "INSERT INTO trigger (classpath, kwargs, created_at, timeout_at, dag_id, run_id, task_id, "
    "map_index, try_number) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)"
)
DELETE_TI_TRIGGER = (
    "DELETE FROM trigger WHERE dag_id=$1 AND run_id=$2 AND task_id=$3 AND map_index=$4"
)
DELETE_TI_XCOMS = (
    "DELETE FROM xcom WHERE dag_id=$1 AND run_id=$2 AND task_id=$3 AND map_index=$4"
)
INSERT_XCOM = (
    "INSERT INTO xcom (dag_id, run_id, task_id, map_index, key, value) "
    "VALUES ($1, $2, $3, $4, $5, $6)"
)
DAG_COLS = "dag_id, fileloc, structure, is_paused, is_active, updated_at"
PROCESS_COLS = "process_id, kind, hostname, pid, started_at, heartbeat_at"
UNFINISHED = "state IN ('queued', 'running')"


# -- records to parameters and rows to records ---------------------------------------------


def aware(value: datetime | None) -> datetime | None:
    """asyncpg would take a naive datetime as UTC; aflow refuses it, as the codec does."""
    if value is not None and value.utcoffset() is None:
        raise ValueError(
            f"naive datetime {value!r}: aflow stores only timezone-aware datetimes"
        )
    return value


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


def micros(value: datetime | None) -> int | None:
    """An aware datetime as microseconds since the epoch (None stays None)."""
    if value is None:
        return None
    try:
        return (value - _EPOCH) // _MICROSECOND
    except TypeError:  # naive minus aware
        aware(value)  # raises the error aflow gives for naive datetimes
        raise


def ti_row(ti: TaskInstanceRow) -> tuple[Any, ...]:
    """A TI as a row of UPSERT_TI ops: its key first, timestamps as `micros`."""
    start, end, retry = ti.start_date, ti.end_date, ti.next_retry_at
    return (
        ti.dag_id,
        ti.run_id,
        ti.task_id,
        ti.map_index,
        ti.state.value,
        ti.try_number,
        ti.max_tries,
        None if start is None else micros(start),
        None if end is None else micros(end),
        ti.hostname,
        ti.operator,
        ti.priority_weight,
        ti.pool,
        None if retry is None else micros(retry),
        ti.next_method,
        None if ti.next_kwargs is None else json_out(ti.next_kwargs),
        ti.error,
    )


def _quoted(value: str) -> str:
    if '"' in value or "\\" in value:
        value = value.replace("\\", "\\\\").replace('"', '\\"')
    return '"' + value + '"'


def text_array(values: Sequence[str | None]) -> str:
    """A text[] literal (PostgreSQL's array input syntax) of `values`."""
    if values and None not in values:
        body = '","'.join(values)  # type: ignore[arg-type]
        # No value holds a quote (only the separators do) nor a backslash: none to escape.
        if body.count('"') == 2 * len(values) - 2 and "\\" not in body:
            return '{"' + body + '"}'
    return "{" + ",".join(["NULL" if v is None else _quoted(v) for v in values]) + "}"


def int_array(values: Sequence[int | None]) -> str:
    """An integer array literal of `values`."""
    if None not in values:
        return "{" + ",".join(map(str, values)) + "}"
    return "{" + ",".join(["NULL" if v is None else str(v) for v in values]) + "}"


_TI_LITERALS = tuple(text_array if t == "text" else int_array for t in _TI_TYPES)


def bulk_ti_params(rows: Sequence[Sequence[Any]]) -> list[str]:
    """UPSERT_TI_BULK's parameters for `ti_row`s applied in order: the last row of each key
    wins (exactly what upserting them one by one leaves, since the upsert sets every
    column; one statement cannot update a row twice), one array per column.

    Each array goes as the text of an array literal, cast on the server: asyncpg encodes
    an array element by element (a few microseconds each, ~20 us a row here), which was
    as much CPU on the event loop as the rest of a row's write; joining strings is a
    fraction of that. Timestamps go as `micros` (formatting a datetime costs more)."""
    last: dict[tuple[Any, ...], Sequence[Any]] = {}
    for row in rows:
        last[(row[0], row[1], row[2], row[3])] = row
    columns = zip(*last.values(), strict=True)
    return [literal(column) for literal, column in zip(_TI_LITERALS, columns, strict=True)]


def ti_from(r: Sequence[Any]) -> TaskInstanceRecord:
    return TaskInstanceRecord(
        dag_id=r[0],
        run_id=r[1],
        task_id=r[2],
        map_index=r[3],
        state=TaskState(r[4]),
        try_number=r[5],
        max_tries=r[6],
        start_date=r[7],
        end_date=r[8],
        hostname=r[9],
        operator=r[10],
        priority_weight=r[11],
        pool=r[12],
        next_retry_at=r[13],
        next_method=r[14],
        next_kwargs=json_in(r[15]),
        error=r[16],
    )


def run_row(run: DagRunRecord) -> tuple[Any, ...]:
    return (
        run.dag_id,
        run.run_id,
        run.run_type.value,
        run.state.value,
        aware(run.logical_date),
        aware(run.data_interval_start),
        aware(run.data_interval_end),
        json_out(run.conf),
        aware(run.created_at),
        aware(run.start_date),
        aware(run.end_date),
        run.triggered_by,
        run.owner,
        aware(run.lease_until),
        run.note,
    )


def run_from(r: Sequence[Any]) -> DagRunRecord:
    return DagRunRecord(
        dag_id=r[0],
        run_id=r[1],
        run_type=RunType(r[2]),
        state=DagRunState(r[3]),
        logical_date=r[4],
        data_interval_start=r[5],
        data_interval_end=r[6],
        conf=json_in(r[7]) or {},
        created_at=r[8],
        start_date=r[9],
        end_date=r[10],
        triggered_by=r[11],
        owner=r[12],
        lease_until=r[13],
        note=r[14],
    )


def run_update_row(run: DagRunRecord) -> tuple[Any, ...]:
    return (
        run.state.value,
        aware(run.start_date),
        aware(run.end_date),
        json_out(run.conf),
        run.note,
        run.dag_id,
        run.run_id,
    )


def trigger_from(r: Sequence[Any]) -> TriggerRecord:
    return TriggerRecord(
        id=r[0],
        classpath=r[1],
        kwargs=json_in(r[2]),
        created_at=r[3],
        timeout_at=r[4],
        owner=r[5],
        lease_until=r[6],
        dag_id=r[7],
        run_id=r[8],
        task_id=r[9],
        map_index=r[10],
        try_number=r[11],
        event=json_in(r[12]),
        fired_at=r[13],
    )


def dag_from(r: Sequence[Any]) -> DagRecord:
    return DagRecord(
        dag_id=r[0],
        fileloc=r[1],
        structure=json_in(r[2]),
        is_paused=r[3],
        is_active=r[4],
        updated_at=r[5],
    )

"""Timetables: when a DAG's scheduled runs fall due and which data interval each covers.

Airflow's semantics: a scheduled run covers the data interval ``[start, end)`` between two
consecutive schedule points; its ``logical_date`` is the interval start and it becomes
due (``run_after``) at the interval end. ``@once`` runs one time, at ``start_date``.

* cron strings (5 fields) and the presets ``@hourly @daily @weekly @monthly @yearly
  @annually`` are read as local wall-clock times in the zone of the DAG's ``start_date``;
* a ``timedelta`` gives back-to-back intervals of that exact (elapsed) length, on the grid
  ``start_date + k * delta``, whatever the wall clock does;
* every datetime a timetable returns is timezone-aware UTC; inputs may be in any zone
  and are compared in UTC. Naive inputs raise ``ValueError``.

Daylight-saving time, for cron schedules (tested on Europe/Berlin and America/New_York):

* A local time that does not exist (skipped when clocks spring forward) fires once,
  shifted forward by the length of the gap: in Berlin on 2024-03-31 "0 2 * * *" runs at
  03:00 CEST and "30 2 * * *" at 03:30 CEST. When the shifted instant is also a regular
  point of the schedule (an hourly schedule's 02:00 becomes 03:00) it is one run, not two.
* A local time that occurs twice (clocks fall back) fires once, at its first occurrence,
  unless the schedule fires in every hour of the day (its hour field is ``*``): then it
  fires at both, so "0 * * * *" keeps running once per elapsed hour (25 runs that day)
  while "30 1 * * *" in New York on 2024-11-03 runs once, at 01:30 EDT.
* Points are always strictly increasing in UTC, and consecutive intervals share their
  boundary, so no interval is duplicated or skipped; a daily interval across a change
  lasts 23 or 25 hours of elapsed time.

With ``catchup=False`` the scheduler skips to the most recent complete interval (the
latest one whose ``run_after <= now``) and, as in Airflow, returns None if that interval
starts after ``end_date``.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, tzinfo
from typing import TYPE_CHECKING, Protocol
from zoneinfo import ZoneInfo

from croniter import (  # type: ignore[import-untyped]  # no stubs installed
    CroniterBadDateError,
    CroniterError,
    croniter,
)

from aflow.exceptions import DagDefinitionError

if TYPE_CHECKING:
    from aflow.authoring.dag import DAG

__all__ = [
    "PRESETS",
    "CronTimetable",
    "DagRunInfo",
    "DeltaTimetable",
    "OnceTimetable",
    "Timetable",
    "dag_timezone",
    "timetable_for",
]

PRESETS: dict[str, str] = {
    "@hourly": "0 * * * *",
    "@daily": "0 0 * * *",
    "@weekly": "0 0 * * 0",
    "@monthly": "0 0 1 * *",
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
}
ONCE = "@once"

_US = timedelta(microseconds=1)
# Offsets are sampled this far around an instant to see whether a UTC-offset change
# (a DST transition) is near enough to reorder wall-clock times and instants.
_SAMPLE_STEP = timedelta(hours=12)
_SAMPLES = range(-3, 4)
# croniter's random ("R") and hashed ("H") fields are not reproducible across processes.
_RANDOM_OR_HASHED = re.compile(r"(?<![A-Za-z])[RrHh](?![A-Za-z])")


def _utc(value: datetime, what: str) -> datetime:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{what} must be timezone-aware, got {value!r}")
    return value.astimezone(UTC)


@dataclass(frozen=True, slots=True)
class DagRunInfo:
    """The dates of one scheduled run."""

    logical_date: datetime  # == data_interval_start, as in Airflow
    data_interval_start: datetime
    data_interval_end: datetime
    run_after: datetime  # when the run becomes due

    def __post_init__(self) -> None:
        for name in ("logical_date", "data_interval_start", "data_interval_end", "run_after"):
            _utc(getattr(self, name), name)
        if self.data_interval_end < self.data_interval_start:
            raise ValueError(
                f"data interval ends ({self.data_interval_end}) before it starts "
                f"({self.data_interval_start})"
            )

    @classmethod
    def interval(cls, start: datetime, end: datetime) -> DagRunInfo:
        """The run covering ``[start, end)``, due at ``end``."""
        return cls(
            logical_date=start, data_interval_start=start, data_interval_end=end, run_after=end
        )


class Timetable(Protocol):
    @property
    def summary(self) -> str:
        """Human text, e.g. "0 6 * * *", "@daily" or "every 1:00:00"."""
        ...

    def next_run(
        self, last: DagRunInfo | None, *, now: datetime, catchup: bool
    ) -> DagRunInfo | None:
        """The run after ``last`` (the first one if None); None when there is no more."""
        ...

    def infer_manual_interval(self, when: datetime) -> tuple[datetime, datetime]:
        """The data interval of a manual run triggered at ``when``."""
        ...

    def intervals_between(self, start: datetime, end: datetime) -> list[DagRunInfo]:
        """Every run whose logical_date is in ``[start, end]`` (for a backfill)."""
        ...


class _GridTimetable(ABC):
    """A timetable whose runs go from one point of an infinite grid to the next."""

    __slots__ = ()

    start_date: datetime
    end_date: datetime | None

    @abstractmethod
    def _after(self, t: datetime) -> datetime | None:
        """The first grid point strictly after ``t`` (UTC)."""

    @abstractmethod
    def _before(self, t: datetime) -> datetime | None:
        """The last grid point strictly before ``t`` (UTC)."""

    @abstractmethod
    def _points_between(self, lo: datetime, hi: datetime) -> list[datetime]:
        """Every grid point in ``[lo, hi]`` (UTC), in increasing order."""

    def _first(self) -> datetime | None:
        return self._after(self.start_date - _US)

    def _interval_from(self, start: datetime) -> DagRunInfo | None:
        end = self._after(start)
        return None if end is None else DagRunInfo.interval(start, end)

    def next_run(
        self, last: DagRunInfo | None, *, now: datetime, catchup: bool
    ) -> DagRunInfo | None:
        now = _utc(now, "now")
        first = self._first()
        if first is None:
            return None
        start: datetime | None = first
        if last is not None:
            start = self._after(_utc(last.logical_date, "last.logical_date"))
            if start is not None and start < first:
                start = first  # start_date moved later since the last run
        if start is None:
            return None
        if not catchup:
            # The latest complete interval ends at the last point <= now.
            latest_end = self._before(now + _US)
            latest_start = None if latest_end is None else self._before(latest_end)
            if latest_start is not None and latest_start > start:
                start = latest_start
        if self.end_date is not None and start > self.end_date:
            return None
        return self._interval_from(start)

    def infer_manual_interval(self, when: datetime) -> tuple[datetime, datetime]:
        """The last complete interval at ``when``: [previous point, last point <= when]."""
        when = _utc(when, "when")
        end = self._before(when + _US)
        start = None if end is None else self._before(end)
        if end is None or start is None:
            return when, when
        return start, end

    def intervals_between(self, start: datetime, end: datetime) -> list[DagRunInfo]:
        """Runs with logical_date in [start, end], limited to [start_date, end_date]."""
        lo, hi = _utc(start, "start"), _utc(end, "end")
        first = self._first()
        if first is None:
            return []
        lo = max(lo, first)
        if self.end_date is not None:
            hi = min(hi, self.end_date)
        if lo > hi:
            return []
        points = self._points_between(lo, hi)
        if not points:
            return []
        after_last = self._after(points[-1])
        ends = points[1:] + ([after_last] if after_last is not None else [])
        return [DagRunInfo.interval(a, b) for a, b in zip(points, ends, strict=False)]


@dataclass(frozen=True, slots=True)
class CronTimetable(_GridTimetable):
    """Runs between consecutive points of a 5-field cron expression, in ``timezone``."""

    expression: str
    timezone: tzinfo
    start_date: datetime
    end_date: datetime | None = None
    summary: str = ""
    _every_hour: bool = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "start_date", _utc(self.start_date, "start_date"))
        if self.end_date is not None:
            object.__setattr__(self, "end_date", _utc(self.end_date, "end_date"))
        if not self.summary:
            object.__setattr__(self, "summary", self.expression)
        hours = croniter.expand(self.expression)[0][1]
        object.__setattr__(self, "_every_hour", hours == ["*"])

    # -- wall clock <-> instants ----------------------------------------------------------
    def _wall(self, t: datetime) -> datetime:
        return t.astimezone(self.timezone).replace(tzinfo=None)

    def _instants(self, wall: datetime) -> tuple[datetime, ...]:
        """The UTC instants at which a schedule point at local time ``wall`` fires."""
        first = wall.replace(tzinfo=self.timezone).astimezone(UTC)
        if self._wall(first) != wall:
            # Skipped by a spring-forward: fold=0 reads it with the offset from before
            # the gap, which lands after the gap, shifted by the gap's length.
            return (first,)
        second = wall.replace(tzinfo=self.timezone, fold=1).astimezone(UTC)
        if second != first and self._every_hour:
            return (first, second)  # repeated by a fall-back; hourly schedules keep both
        return (first,)

    def _offsets_near(self, t: datetime) -> tuple[timedelta, timedelta]:
        """The smallest and largest UTC offsets of the zone within ~1.5 days of ``t``."""
        offsets = [self._offset(t + k * _SAMPLE_STEP) for k in _SAMPLES]
        return min(offsets), max(offsets)

    def _offset(self, t: datetime) -> timedelta:
        offset = t.astimezone(self.timezone).utcoffset()
        assert offset is not None
        return offset

    def _walls(self, start: datetime, *, backwards: bool) -> Iterator[datetime]:
        """Wall-clock schedule points strictly after (or before) naive ``start``."""
        it = croniter(self.expression, start)
        while True:
            try:
                yield it.get_prev(datetime) if backwards else it.get_next(datetime)
            except CroniterBadDateError:
                return

    # -- grid ------------------------------------------------------------------------------
    # A wall time w fires at w - offset; near a DST change that mapping is not monotonic
    # (and a point may fire twice), so the nearest instant is searched among the wall
    # points whose instant could be it, bounded by the zone's offsets around t.
    def _after(self, t: datetime) -> datetime | None:
        low, _ = self._offsets_near(t)
        best: datetime | None = None
        stop: datetime | None = None
        for wall in self._walls((t + low).replace(tzinfo=None), backwards=False):
            if stop is not None and wall >= stop:
                break
            for instant in self._instants(wall):
                if instant > t and (best is None or instant < best):
                    best = instant
                    # A later wall time w fires at w - offset >= best once w >= stop.
                    stop = (best + self._offsets_near(best)[1]).replace(tzinfo=None)
            if stop is not None and wall >= stop:
                break
        return best

    def _before(self, t: datetime) -> datetime | None:
        _, high = self._offsets_near(t)
        best: datetime | None = None
        stop: datetime | None = None
        for wall in self._walls((t + high).replace(tzinfo=None), backwards=True):
            if stop is not None and wall <= stop:
                break
            for instant in self._instants(wall):
                if instant < t and (best is None or instant > best):
                    best = instant
                    stop = (best + self._offsets_near(best)[0]).replace(tzinfo=None)
            if stop is not None and wall <= stop:
                break
        return best

    def _points_between(self, lo: datetime, hi: datetime) -> list[datetime]:
        begin = (lo + self._offsets_near(lo)[0]).replace(tzinfo=None) - _US
        finish = (hi + self._offsets_near(hi)[1]).replace(tzinfo=None)
        found: set[datetime] = set()
        for wall in self._walls(begin, backwards=False):
            if wall > finish:
                break
            found.update(i for i in self._instants(wall) if lo <= i <= hi)
        return sorted(found)


@dataclass(frozen=True, slots=True)
class DeltaTimetable(_GridTimetable):
    """Back-to-back intervals of ``delta`` elapsed time from ``start_date``."""

    delta: timedelta
    start_date: datetime
    end_date: datetime | None = None
    summary: str = ""

    def __post_init__(self) -> None:
        if self.delta <= timedelta(0):
            raise ValueError(f"delta must be positive, got {self.delta}")
        object.__setattr__(self, "start_date", _utc(self.start_date, "start_date"))
        if self.end_date is not None:
            object.__setattr__(self, "end_date", _utc(self.end_date, "end_date"))
        if not self.summary:
            object.__setattr__(self, "summary", f"every {self.delta}")

    def _after(self, t: datetime) -> datetime | None:
        return self.start_date + ((t - self.start_date) // self.delta + 1) * self.delta

    def _before(self, t: datetime) -> datetime | None:
        steps_up = -((self.start_date - t) // self.delta)  # ceil((t - start) / delta)
        return self.start_date + (steps_up - 1) * self.delta

    def _points_between(self, lo: datetime, hi: datetime) -> list[datetime]:
        point = self.start_date - ((self.start_date - lo) // self.delta) * self.delta
        points = []
        while point <= hi:
            points.append(point)
            point += self.delta
        return points


@dataclass(frozen=True, slots=True)
class OnceTimetable:
    """``@once``: one run, due at ``start_date``, with an empty data interval there."""

    start_date: datetime
    end_date: datetime | None = None
    summary: str = ONCE

    def __post_init__(self) -> None:
        object.__setattr__(self, "start_date", _utc(self.start_date, "start_date"))
        if self.end_date is not None:
            object.__setattr__(self, "end_date", _utc(self.end_date, "end_date"))

    def _the_run(self) -> DagRunInfo | None:
        if self.end_date is not None and self.start_date > self.end_date:
            return None
        at = self.start_date
        return DagRunInfo(
            logical_date=at, data_interval_start=at, data_interval_end=at, run_after=at
        )

    def next_run(
        self, last: DagRunInfo | None, *, now: datetime, catchup: bool
    ) -> DagRunInfo | None:
        _utc(now, "now")
        return None if last is not None else self._the_run()

    def infer_manual_interval(self, when: datetime) -> tuple[datetime, datetime]:
        when = _utc(when, "when")
        return when, when

    def intervals_between(self, start: datetime, end: datetime) -> list[DagRunInfo]:
        run = self._the_run()
        if run is None or not _utc(start, "start") <= run.logical_date <= _utc(end, "end"):
            return []
        return [run]


# -- building a DAG's timetable ------------------------------------------------------------
def timetable_for(dag: DAG) -> Timetable | None:
    """The timetable of ``dag``, None when it has no schedule.

    Raises DagDefinitionError, naming the DAG, for an invalid schedule, a schedule without
    a start_date, a naive end_date or an end_date before the start_date.
    """
    schedule = dag.schedule
    if schedule is None:
        return None
    where = f"DAG {dag.dag_id!r}"
    if not isinstance(schedule, str | timedelta):
        raise DagDefinitionError(
            f"{where}: schedule must be a cron string, a preset such as '@daily', a "
            f"timedelta or None, not {type(schedule).__name__} {schedule!r}"
        )
    start, end = dag.start_date, dag.end_date
    if start is None:
        raise DagDefinitionError(f"{where}: schedule {schedule!r} needs a start_date")
    if start.tzinfo is None or start.utcoffset() is None:
        raise DagDefinitionError(f"{where}: start_date {start} must be timezone-aware")
    if end is not None:
        if end.tzinfo is None or end.utcoffset() is None:
            raise DagDefinitionError(f"{where}: end_date {end} must be timezone-aware")
        if end < start:
            raise DagDefinitionError(f"{where}: end_date {end} is before start_date {start}")

    if isinstance(schedule, timedelta):
        if schedule <= timedelta(0):
            raise DagDefinitionError(f"{where}: schedule timedelta {schedule} must be positive")
        return DeltaTimetable(delta=schedule, start_date=start, end_date=end)

    text = schedule.strip()
    if text.lower() == ONCE:
        return OnceTimetable(start_date=start, end_date=end)
    expression = _cron_expression(where, text)
    zone = _zone_of(start)
    try:
        croniter(expression, start.astimezone(zone).replace(tzinfo=None)).get_next(datetime)
    except CroniterBadDateError:
        raise DagDefinitionError(
            f"{where}: cron schedule {schedule!r} never matches a date after {start}"
        ) from None
    return CronTimetable(
        expression=expression, timezone=zone, start_date=start, end_date=end, summary=text
    )


def _cron_expression(where: str, text: str) -> str:
    if text.startswith("@"):
        preset = PRESETS.get(text.lower())
        if preset is None:
            known = ", ".join([ONCE, *PRESETS])
            raise DagDefinitionError(
                f"{where}: unknown schedule preset {text!r}; use one of {known}, a 5-field "
                "cron string or a timedelta"
            )
        return preset
    fields = text.split()
    if len(fields) != 5:
        raise DagDefinitionError(
            f"{where}: invalid cron schedule {text!r}: expected 5 fields "
            f"(minute hour day-of-month month day-of-week), got {len(fields)}"
        )
    if _RANDOM_OR_HASHED.search(text):
        raise DagDefinitionError(
            f"{where}: invalid cron schedule {text!r}: random (R) and hashed (H) fields "
            "are not supported"
        )
    expression = " ".join(fields)
    try:
        croniter.expand(expression)
    except (CroniterError, ValueError, TypeError) as exc:
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[-1]
        raise DagDefinitionError(f"{where}: invalid cron schedule {text!r}: {reason}") from None
    return expression


def _zone_of(start: datetime) -> tzinfo:
    zone = start.tzinfo
    assert zone is not None
    # pytz zones do not implement PEP 495 (fold); use the same zone from zoneinfo.
    name = getattr(zone, "zone", None)
    if hasattr(zone, "localize") and isinstance(name, str):
        return ZoneInfo(name)
    return zone


def dag_timezone(dag: DAG) -> tzinfo:
    """The time zone a DAG's schedule is read in: its ``start_date``'s (UTC without one)."""
    start = dag.start_date
    if start is None or start.tzinfo is None:
        return UTC
    return _zone_of(start)

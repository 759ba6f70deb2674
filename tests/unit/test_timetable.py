"""Timetables: presets, cron, timedelta, @once, catchup, end_date, DST and month ends."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aflow.authoring.dag import DAG
from aflow.exceptions import DagDefinitionError
from aflow.runtime.timetable import (
    CronTimetable,
    DagRunInfo,
    DeltaTimetable,
    OnceTimetable,
    Timetable,
    timetable_for,
)

BERLIN = ZoneInfo("Europe/Berlin")
NEW_YORK = ZoneInfo("America/New_York")
JAN1 = datetime(2024, 1, 1, tzinfo=UTC)


def utc(
    year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0
) -> datetime:
    return datetime(year, month, day, hour, minute, second, tzinfo=UTC)


def make(
    schedule: object,
    start: datetime | None = JAN1,
    end: datetime | None = None,
) -> Timetable:
    dag = DAG("tt_dag", schedule=schedule, start_date=start, end_date=end)  # type: ignore[arg-type]
    tt = timetable_for(dag)
    assert tt is not None
    return tt


def chain(tt: Timetable, n: int, *, now: datetime = JAN1) -> list[DagRunInfo]:
    """The first n runs, as a scheduler with catchup would create them."""
    runs: list[DagRunInfo] = []
    last = None
    for _ in range(n):
        info = tt.next_run(last, now=now, catchup=True)
        if info is None:
            break
        runs.append(info)
        last = info
    return runs


def starts(runs: list[DagRunInfo], tz: ZoneInfo | None = None) -> list[str]:
    return [r.logical_date.astimezone(tz or UTC).isoformat() for r in runs]


def assert_contiguous(runs: list[DagRunInfo]) -> None:
    for a, b in zip(runs, runs[1:], strict=False):
        assert a.logical_date < b.logical_date
        assert a.data_interval_end == b.data_interval_start
    for r in runs:
        assert r.logical_date == r.data_interval_start
        assert r.run_after == r.data_interval_end
        assert r.data_interval_start < r.data_interval_end


# -- building timetables -----------------------------------------------------------------
def test_no_schedule_means_no_timetable() -> None:
    assert timetable_for(DAG("tt_dag", schedule=None)) is None
    assert timetable_for(DAG("tt_dag", schedule=None, start_date=JAN1)) is None


def test_kinds_and_summaries() -> None:
    cron = make("0 6 * * *")
    assert isinstance(cron, CronTimetable)
    assert cron.summary == "0 6 * * *"
    assert make("@daily").summary == "@daily"
    delta = make(timedelta(hours=1))
    assert isinstance(delta, DeltaTimetable)
    assert delta.summary == "every 1:00:00"
    once = make("@once")
    assert isinstance(once, OnceTimetable)
    assert once.summary == "@once"


@pytest.mark.parametrize(
    ("schedule", "match"),
    [
        ("61 * * * *", "out of range"),
        ("0 0 * *", "expected 5 fields"),
        ("0 0 * * * *", "expected 5 fields"),
        ("every day", "expected 5 fields"),
        ("a b c d e", "not acceptable"),
        ("*/0 * * * *", "step"),
        ("0 0 30 2 *", "never matches"),
        ("R * * * *", "random"),
        ("H * * * *", "hashed"),
        ("@fortnightly", "unknown schedule preset"),
        ("@continuous", "unknown schedule preset"),
        (timedelta(0), "must be positive"),
        (timedelta(hours=-1), "must be positive"),
        (5, "not int"),
    ],
)
def test_invalid_schedule_names_dag_and_schedule(schedule: object, match: str) -> None:
    dag = DAG("broken_dag", schedule=schedule, start_date=JAN1)  # type: ignore[arg-type]
    with pytest.raises(DagDefinitionError, match=match) as info:
        timetable_for(dag)
    assert "'broken_dag'" in str(info.value)
    if isinstance(schedule, str):
        assert repr(schedule) in str(info.value)


def test_validate_rejects_invalid_cron() -> None:
    dag = DAG("broken_dag", schedule="0 25 * * *", start_date=JAN1)
    with pytest.raises(DagDefinitionError, match="broken_dag.*'0 25 \\* \\* \\*'"):
        dag.validate()


@pytest.mark.parametrize("schedule", ["@daily", "0 0 * * *", timedelta(days=1), "@once"])
def test_schedule_without_start_date_is_an_error(schedule: object) -> None:
    dag = DAG("no_start", schedule=schedule)  # type: ignore[arg-type]
    with pytest.raises(DagDefinitionError, match="'no_start'.*needs a start_date"):
        timetable_for(dag)


def test_bad_end_dates() -> None:
    with pytest.raises(DagDefinitionError, match="'tt_dag'.*end_date.*timezone-aware"):
        make("@daily", end=datetime(2024, 2, 1))
    with pytest.raises(DagDefinitionError, match="'tt_dag'.*end_date.*before start_date"):
        make("@daily", end=utc(2023, 12, 31))


def test_names_of_weekdays_and_months_are_not_mistaken_for_hashes() -> None:
    runs = chain(make("0 0 * MAR THU"), 2)
    assert starts(runs) == ["2024-03-07T00:00:00+00:00", "2024-03-14T00:00:00+00:00"]


def test_naive_inputs_are_refused() -> None:
    tt = make("@daily")
    with pytest.raises(ValueError, match="now must be timezone-aware"):
        tt.next_run(None, now=datetime(2024, 1, 1), catchup=True)
    with pytest.raises(ValueError, match="timezone-aware"):
        tt.infer_manual_interval(datetime(2024, 1, 1))
    with pytest.raises(ValueError, match="timezone-aware"):
        DagRunInfo.interval(datetime(2024, 1, 1), datetime(2024, 1, 2))


# -- presets -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("preset", "expected"),
    [
        ("@hourly", ["2024-01-01T00:00", "2024-01-01T01:00", "2024-01-01T02:00"]),
        ("@daily", ["2024-01-01T00:00", "2024-01-02T00:00", "2024-01-03T00:00"]),
        # 2024-01-01 is a Monday; @weekly runs at midnight starting Sunday
        ("@weekly", ["2024-01-07T00:00", "2024-01-14T00:00", "2024-01-21T00:00"]),
        ("@monthly", ["2024-01-01T00:00", "2024-02-01T00:00", "2024-03-01T00:00"]),
        ("@yearly", ["2024-01-01T00:00", "2025-01-01T00:00", "2026-01-01T00:00"]),
        ("@annually", ["2024-01-01T00:00", "2025-01-01T00:00", "2026-01-01T00:00"]),
        ("@DAILY", ["2024-01-01T00:00", "2024-01-02T00:00", "2024-01-03T00:00"]),
    ],
)
def test_presets(preset: str, expected: list[str]) -> None:
    runs = chain(make(preset), 3)
    assert [r.logical_date.strftime("%Y-%m-%dT%H:%M") for r in runs] == expected
    assert_contiguous(runs)
    assert runs[0].run_after == runs[1].logical_date


def test_once_runs_a_single_time_at_start_date() -> None:
    start = datetime(2024, 5, 5, 12, 30, tzinfo=BERLIN)
    tt = make("@once", start=start)
    first = tt.next_run(None, now=JAN1, catchup=False)
    assert first == DagRunInfo(start, start, start, start)
    assert first.run_after == utc(2024, 5, 5, 10, 30)
    assert first.logical_date.tzinfo is UTC
    assert tt.next_run(first, now=utc(2030, 1, 1), catchup=True) is None
    # also when the start is long past
    assert tt.next_run(None, now=utc(2030, 1, 1), catchup=False) == first


def test_once_end_date_and_intervals_between() -> None:
    start = utc(2024, 5, 5)
    tt = make("@once", start=start, end=start)
    assert tt.next_run(None, now=JAN1, catchup=True) is not None
    assert [r.logical_date for r in tt.intervals_between(JAN1, utc(2024, 12, 31))] == [start]
    assert tt.intervals_between(JAN1, utc(2024, 5, 4)) == []
    assert tt.infer_manual_interval(utc(2024, 7, 1, 9)) == (utc(2024, 7, 1, 9), utc(2024, 7, 1, 9))


# -- cron --------------------------------------------------------------------------------
def test_first_interval_starts_at_first_point_at_or_after_start_date() -> None:
    on_point = make("0 6 * * *", start=utc(2024, 1, 1, 6))
    first = on_point.next_run(None, now=JAN1, catchup=True)
    assert first == DagRunInfo.interval(utc(2024, 1, 1, 6), utc(2024, 1, 2, 6))
    off_point = make("0 6 * * *", start=utc(2024, 1, 1, 6, 0, 1))
    first = off_point.next_run(None, now=JAN1, catchup=True)
    assert first is not None and first.logical_date == utc(2024, 1, 2, 6)


def test_cron_is_read_in_the_start_dates_zone() -> None:
    tt = make("0 6 * * *", start=datetime(2024, 1, 1, tzinfo=BERLIN))
    runs = chain(tt, 2)
    assert starts(runs) == ["2024-01-01T05:00:00+00:00", "2024-01-02T05:00:00+00:00"]
    assert all(r.logical_date.tzinfo is UTC for r in runs)
    fixed = make("0 6 * * *", start=datetime(2024, 1, 1, tzinfo=timezone(timedelta(hours=-3))))
    assert starts(chain(fixed, 1)) == ["2024-01-01T09:00:00+00:00"]


def test_cron_field_lists_ranges_and_steps() -> None:
    runs = chain(make("*/20 9-10 * * 1-5"), 8)
    assert [r.logical_date.strftime("%a %H:%M") for r in runs] == [
        "Mon 09:00", "Mon 09:20", "Mon 09:40", "Mon 10:00", "Mon 10:20", "Mon 10:40",
        "Tue 09:00", "Tue 09:20",
    ]  # fmt: skip
    assert runs[5].data_interval_end == utc(2024, 1, 2, 9)
    assert_contiguous(runs)


def test_run_is_returned_even_when_not_due_yet() -> None:
    tt = make("@daily", start=utc(2030, 1, 1))
    info = tt.next_run(None, now=JAN1, catchup=False)
    assert info == DagRunInfo.interval(utc(2030, 1, 1), utc(2030, 1, 2))


# -- catchup -----------------------------------------------------------------------------
def test_catchup_true_goes_one_interval_at_a_time_from_the_start() -> None:
    tt = make("@daily")
    far = utc(2025, 6, 1, 12)
    first = tt.next_run(None, now=far, catchup=True)
    assert first == DagRunInfo.interval(utc(2024, 1, 1), utc(2024, 1, 2))
    second = tt.next_run(first, now=far, catchup=True)
    assert second == DagRunInfo.interval(utc(2024, 1, 2), utc(2024, 1, 3))


def test_catchup_false_skips_to_the_latest_complete_interval() -> None:
    tt = make("@daily")
    far = utc(2025, 6, 1, 12)
    latest = DagRunInfo.interval(utc(2025, 5, 31), utc(2025, 6, 1))
    assert tt.next_run(None, now=far, catchup=False) == latest
    old = DagRunInfo.interval(utc(2024, 1, 1), utc(2024, 1, 2))
    assert tt.next_run(old, now=far, catchup=False) == latest
    # once the latest complete interval has run, the next one is the one in progress
    assert tt.next_run(latest, now=far, catchup=False) == DagRunInfo.interval(
        utc(2025, 6, 1), utc(2025, 6, 2)
    )


def test_catchup_false_exactly_on_a_boundary() -> None:
    tt = make("@daily")
    now = utc(2024, 3, 10)
    assert tt.next_run(None, now=now, catchup=False) == DagRunInfo.interval(
        utc(2024, 3, 9), utc(2024, 3, 10)
    )
    just_before = now - timedelta(microseconds=1)
    assert tt.next_run(None, now=just_before, catchup=False) == DagRunInfo.interval(
        utc(2024, 3, 8), utc(2024, 3, 9)
    )


def test_catchup_false_before_any_interval_is_complete() -> None:
    tt = make("@daily")
    info = tt.next_run(None, now=utc(2024, 1, 1, 18), catchup=False)
    assert info == DagRunInfo.interval(utc(2024, 1, 1), utc(2024, 1, 2))
    before_start = tt.next_run(None, now=utc(2023, 6, 1), catchup=False)
    assert before_start == info


def test_start_date_moved_later_than_last_run() -> None:
    tt = make("@daily", start=utc(2024, 6, 1))
    old = DagRunInfo.interval(utc(2024, 1, 1), utc(2024, 1, 2))
    assert tt.next_run(old, now=utc(2024, 6, 1), catchup=True) == DagRunInfo.interval(
        utc(2024, 6, 1), utc(2024, 6, 2)
    )


# -- end_date ----------------------------------------------------------------------------
def test_end_date_stops_the_schedule_and_is_inclusive() -> None:
    tt = make("@daily", end=utc(2024, 1, 3))
    runs = chain(tt, 10)
    assert starts(runs) == [
        "2024-01-01T00:00:00+00:00",
        "2024-01-02T00:00:00+00:00",
        "2024-01-03T00:00:00+00:00",
    ]
    assert tt.next_run(runs[-1], now=utc(2030, 1, 1), catchup=True) is None


def test_end_date_with_catchup_false_long_after_it() -> None:
    # as in Airflow: the latest complete interval starts after end_date, so nothing runs
    tt = make("@daily", end=utc(2024, 1, 10))
    assert tt.next_run(None, now=utc(2024, 6, 1), catchup=False) is None
    # while still inside the DAG's life, it skips ahead normally
    assert tt.next_run(None, now=utc(2024, 1, 5, 3), catchup=False) == DagRunInfo.interval(
        utc(2024, 1, 4), utc(2024, 1, 5)
    )


def test_end_date_for_timedelta() -> None:
    tt = make(timedelta(hours=8), end=utc(2024, 1, 1, 16))
    assert starts(chain(tt, 10)) == [
        "2024-01-01T00:00:00+00:00",
        "2024-01-01T08:00:00+00:00",
        "2024-01-01T16:00:00+00:00",
    ]


# -- timedelta ---------------------------------------------------------------------------
def test_timedelta_intervals_start_at_start_date() -> None:
    start = utc(2024, 1, 1, 0, 7, 30)
    tt = make(timedelta(minutes=45), start=start)
    runs = chain(tt, 3)
    assert runs[0] == DagRunInfo.interval(start, start + timedelta(minutes=45))
    assert_contiguous(runs)
    assert runs[2].logical_date == start + timedelta(minutes=90)


def test_timedelta_catchup_false_stays_on_the_start_date_grid() -> None:
    start = utc(2024, 1, 1, 0, 7)
    tt = make(timedelta(hours=1), start=start)
    info = tt.next_run(None, now=utc(2024, 3, 1, 12, 30), catchup=False)
    assert info == DagRunInfo.interval(utc(2024, 3, 1, 11, 7), utc(2024, 3, 1, 12, 7))
    assert tt.next_run(info, now=utc(2024, 3, 1, 12, 30), catchup=False) == (
        DagRunInfo.interval(utc(2024, 3, 1, 12, 7), utc(2024, 3, 1, 13, 7))
    )


def test_timedelta_counts_elapsed_time_across_dst() -> None:
    tt = make(timedelta(days=1), start=datetime(2024, 3, 30, 12, tzinfo=BERLIN))
    runs = chain(tt, 3)
    assert [r.logical_date.astimezone(BERLIN).hour for r in runs] == [12, 13, 13]
    assert all(r.data_interval_end - r.data_interval_start == timedelta(days=1) for r in runs)


def test_timedelta_infer_manual_interval_and_backfill() -> None:
    tt = make(timedelta(hours=6))
    assert tt.infer_manual_interval(utc(2024, 2, 1, 13)) == (
        utc(2024, 2, 1, 6),
        utc(2024, 2, 1, 12),
    )
    runs = tt.intervals_between(utc(2024, 1, 1, 1), utc(2024, 1, 2))
    assert starts(runs) == [
        "2024-01-01T06:00:00+00:00",
        "2024-01-01T12:00:00+00:00",
        "2024-01-01T18:00:00+00:00",
        "2024-01-02T00:00:00+00:00",
    ]
    assert runs[-1].data_interval_end == utc(2024, 1, 2, 6)


# -- month ends --------------------------------------------------------------------------
def test_day_31_only_in_long_months() -> None:
    runs = chain(make("0 0 31 * *"), 4)
    assert [r.logical_date.date().isoformat() for r in runs] == [
        "2024-01-31", "2024-03-31", "2024-05-31", "2024-07-31",
    ]  # fmt: skip
    assert runs[0].data_interval_end == utc(2024, 3, 31)
    assert_contiguous(runs)


def test_monthly_from_jan_31_starts_on_the_next_first() -> None:
    runs = chain(make("@monthly", start=utc(2024, 1, 31)), 3)
    assert runs[0] == DagRunInfo.interval(utc(2024, 2, 1), utc(2024, 3, 1))
    assert [r.logical_date.month for r in runs] == [2, 3, 4]


def test_last_day_of_month_and_leap_day() -> None:
    runs = chain(make("0 0 L * *"), 3)
    assert [r.logical_date.date().isoformat() for r in runs] == [
        "2024-01-31", "2024-02-29", "2024-03-31",
    ]  # fmt: skip
    leap = chain(make("0 0 29 2 *"), 2)
    assert [r.logical_date.date().isoformat() for r in leap] == ["2024-02-29", "2028-02-29"]


def test_monthly_in_a_zone() -> None:
    runs = chain(make("@monthly", start=datetime(2024, 3, 1, tzinfo=BERLIN)), 2)
    assert starts(runs, BERLIN) == ["2024-03-01T00:00:00+01:00", "2024-04-01T00:00:00+02:00"]
    assert runs[0].data_interval_end - runs[0].data_interval_start == timedelta(days=31, hours=-1)


# -- DST: Europe/Berlin (02:00 CET -> 03:00 CEST on 2024-03-31; 03:00 CEST -> 02:00 CET
# on 2024-10-27) -------------------------------------------------------------------------
def berlin_runs(schedule: str, day: datetime, hours: int = 30) -> list[DagRunInfo]:
    tt = make(schedule, start=datetime(2024, 1, 1, tzinfo=BERLIN))
    runs = tt.intervals_between(day, day.astimezone(UTC) + timedelta(hours=hours))  # elapsed
    assert_contiguous(runs)
    return runs


def test_berlin_spring_forward_daily_at_two_runs_at_three() -> None:
    runs = berlin_runs("0 2 * * *", datetime(2024, 3, 30, tzinfo=BERLIN), hours=50)
    assert starts(runs, BERLIN) == [
        "2024-03-30T02:00:00+01:00",
        "2024-03-31T03:00:00+02:00",  # 02:00 does not exist that day
        "2024-04-01T02:00:00+02:00",
    ]
    assert [r.data_interval_end - r.data_interval_start for r in runs] == [
        timedelta(hours=24), timedelta(hours=23), timedelta(hours=24),
    ]  # fmt: skip


def test_berlin_spring_forward_half_past_two_is_shifted_by_the_gap() -> None:
    runs = berlin_runs("30 2 * * *", datetime(2024, 3, 31, tzinfo=BERLIN), hours=23)
    assert starts(runs, BERLIN) == ["2024-03-31T03:30:00+02:00"]


def test_berlin_half_past_one_keeps_its_wall_time() -> None:
    runs = berlin_runs("30 1 * * *", datetime(2024, 3, 30, tzinfo=BERLIN), hours=50)
    assert starts(runs, BERLIN) == [
        "2024-03-30T01:30:00+01:00",
        "2024-03-31T01:30:00+01:00",
        "2024-04-01T01:30:00+02:00",
    ]
    assert runs[1].data_interval_end - runs[1].data_interval_start == timedelta(hours=23)
    fall = berlin_runs("30 1 * * *", datetime(2024, 10, 26, tzinfo=BERLIN), hours=52)
    assert starts(fall, BERLIN) == [
        "2024-10-26T01:30:00+02:00",
        "2024-10-27T01:30:00+02:00",
        "2024-10-28T01:30:00+01:00",
    ]
    assert fall[1].data_interval_end - fall[1].data_interval_start == timedelta(hours=25)


def test_berlin_spring_forward_hourly_has_no_duplicate() -> None:
    runs = berlin_runs("0 * * * *", datetime(2024, 3, 31, tzinfo=BERLIN), hours=4)
    assert starts(runs, BERLIN) == [
        "2024-03-31T00:00:00+01:00",
        "2024-03-31T01:00:00+01:00",
        "2024-03-31T03:00:00+02:00",
        "2024-03-31T04:00:00+02:00",
        "2024-03-31T05:00:00+02:00",
    ]
    assert all(r.data_interval_end - r.data_interval_start == timedelta(hours=1) for r in runs)


def test_berlin_fall_back_daily_at_two_runs_once() -> None:
    runs = berlin_runs("0 2 * * *", datetime(2024, 10, 26, tzinfo=BERLIN), hours=52)
    assert starts(runs, BERLIN) == [
        "2024-10-26T02:00:00+02:00",
        "2024-10-27T02:00:00+02:00",  # the first of the two 02:00s
        "2024-10-28T02:00:00+01:00",
    ]
    assert [r.data_interval_end - r.data_interval_start for r in runs] == [
        timedelta(hours=24), timedelta(hours=25), timedelta(hours=24),
    ]  # fmt: skip


def test_berlin_fall_back_hourly_runs_every_elapsed_hour() -> None:
    day = datetime(2024, 10, 27, tzinfo=BERLIN)
    runs = berlin_runs("0 * * * *", day, hours=24)
    assert len(runs) == 25  # 00:00 CEST to 23:00 CET: the day has 25 hours
    assert starts(runs, BERLIN)[-1] == "2024-10-27T23:00:00+01:00"
    assert starts(runs, BERLIN)[1:5] == [
        "2024-10-27T01:00:00+02:00",
        "2024-10-27T02:00:00+02:00",
        "2024-10-27T02:00:00+01:00",
        "2024-10-27T03:00:00+01:00",
    ]
    assert all(r.data_interval_end - r.data_interval_start == timedelta(hours=1) for r in runs)


def test_berlin_dst_next_run_chain_matches_backfill() -> None:
    for schedule in ("0 2 * * *", "30 1 * * *", "0 * * * *", "30 2 * * *", "*/20 2 * * *"):
        start = datetime(2024, 3, 29, tzinfo=BERLIN)
        tt = make(schedule, start=start)
        backfill = tt.intervals_between(start, datetime(2024, 4, 2, tzinfo=BERLIN))
        assert chain(tt, len(backfill)) == backfill
        start = datetime(2024, 10, 25, tzinfo=BERLIN)
        tt = make(schedule, start=start)
        backfill = tt.intervals_between(start, datetime(2024, 10, 29, tzinfo=BERLIN))
        assert chain(tt, len(backfill)) == backfill


def test_berlin_catchup_false_across_the_repeated_hour() -> None:
    tt = make("0 * * * *", start=datetime(2024, 10, 1, tzinfo=BERLIN))
    now = datetime(2024, 10, 27, 2, 30, fold=1, tzinfo=BERLIN)  # 02:30 CET, 01:30 UTC
    info = tt.next_run(None, now=now, catchup=False)
    assert info == DagRunInfo.interval(utc(2024, 10, 27, 0), utc(2024, 10, 27, 1))
    assert info.logical_date.astimezone(BERLIN).isoformat() == "2024-10-27T02:00:00+02:00"
    nxt = tt.next_run(info, now=now, catchup=False)
    assert nxt is not None
    assert nxt.logical_date.astimezone(BERLIN).isoformat() == "2024-10-27T02:00:00+01:00"


# -- DST: America/New_York (02:00 EST -> 03:00 EDT on 2024-03-10; 02:00 EDT -> 01:00 EST
# on 2024-11-03) -------------------------------------------------------------------------
def ny_runs(schedule: str, day: datetime, hours: int) -> list[DagRunInfo]:
    tt = make(schedule, start=datetime(2024, 1, 1, tzinfo=NEW_YORK))
    runs = tt.intervals_between(day, day.astimezone(UTC) + timedelta(hours=hours))  # elapsed
    assert_contiguous(runs)
    return runs


def test_new_york_spring_forward() -> None:
    day = datetime(2024, 3, 9, tzinfo=NEW_YORK)
    assert starts(ny_runs("30 2 * * *", day, 50), NEW_YORK) == [
        "2024-03-09T02:30:00-05:00",
        "2024-03-10T03:30:00-04:00",
        "2024-03-11T02:30:00-04:00",
    ]
    hourly = ny_runs("0 * * * *", datetime(2024, 3, 10, tzinfo=NEW_YORK), 3)
    assert starts(hourly, NEW_YORK) == [
        "2024-03-10T00:00:00-05:00",
        "2024-03-10T01:00:00-05:00",
        "2024-03-10T03:00:00-04:00",
        "2024-03-10T04:00:00-04:00",
    ]


def test_new_york_fall_back() -> None:
    day = datetime(2024, 11, 2, tzinfo=NEW_YORK)
    daily = ny_runs("30 1 * * *", day, 52)
    assert starts(daily, NEW_YORK) == [
        "2024-11-02T01:30:00-04:00",
        "2024-11-03T01:30:00-04:00",  # once, at the first 01:30
        "2024-11-04T01:30:00-05:00",
    ]
    assert daily[1].data_interval_end - daily[1].data_interval_start == timedelta(hours=25)
    hourly = ny_runs("0 * * * *", datetime(2024, 11, 3, tzinfo=NEW_YORK), 3)
    assert starts(hourly, NEW_YORK) == [
        "2024-11-03T00:00:00-04:00",
        "2024-11-03T01:00:00-04:00",
        "2024-11-03T01:00:00-05:00",
        "2024-11-03T02:00:00-05:00",
    ]
    half_hourly = ny_runs("*/30 1 * * *", datetime(2024, 11, 3, tzinfo=NEW_YORK), 3)
    assert starts(half_hourly, NEW_YORK) == [  # not every hour: the repeated ones once
        "2024-11-03T01:00:00-04:00",
        "2024-11-03T01:30:00-04:00",
    ]


def test_points_out_of_wall_order_stay_strictly_increasing() -> None:
    # 02:15 and 02:45 shift to 03:15 and 03:45 CEST, where the schedule also fires
    runs = berlin_runs("15,45 2,3 * * *", datetime(2024, 3, 31, tzinfo=BERLIN), hours=5)
    assert starts(runs, BERLIN) == ["2024-03-31T03:15:00+02:00", "2024-03-31T03:45:00+02:00"]


# -- manual runs and backfill -------------------------------------------------------------
def test_infer_manual_interval_is_the_last_complete_interval() -> None:
    tt = make("@daily")
    assert tt.infer_manual_interval(utc(2024, 2, 25, 1)) == (utc(2024, 2, 24), utc(2024, 2, 25))
    assert tt.infer_manual_interval(utc(2024, 2, 25)) == (utc(2024, 2, 24), utc(2024, 2, 25))
    berlin = make("0 2 * * *", start=datetime(2024, 1, 1, tzinfo=BERLIN))
    start, end = berlin.infer_manual_interval(datetime(2024, 3, 31, 12, tzinfo=BERLIN))
    assert start.astimezone(BERLIN).isoformat() == "2024-03-30T02:00:00+01:00"
    assert end.astimezone(BERLIN).isoformat() == "2024-03-31T03:00:00+02:00"


def test_intervals_between_is_inclusive_and_limited_to_the_dags_life() -> None:
    tt = make("@daily", start=utc(2024, 1, 3), end=utc(2024, 1, 6))
    runs = tt.intervals_between(utc(2023, 12, 1), utc(2024, 2, 1))
    assert starts(runs) == [
        "2024-01-03T00:00:00+00:00",
        "2024-01-04T00:00:00+00:00",
        "2024-01-05T00:00:00+00:00",
        "2024-01-06T00:00:00+00:00",
    ]
    assert runs[-1].data_interval_end == utc(2024, 1, 7)
    inside = tt.intervals_between(utc(2024, 1, 4), utc(2024, 1, 5))
    assert starts(inside) == ["2024-01-04T00:00:00+00:00", "2024-01-05T00:00:00+00:00"]
    assert tt.intervals_between(utc(2024, 1, 4, 1), utc(2024, 1, 4, 23)) == []
    assert tt.intervals_between(utc(2024, 1, 5), utc(2024, 1, 4)) == []


def test_intervals_between_accepts_any_zone() -> None:
    tt = make("@hourly")
    runs = tt.intervals_between(
        datetime(2024, 1, 1, 2, tzinfo=BERLIN), datetime(2024, 1, 1, 3, tzinfo=BERLIN)
    )
    assert starts(runs) == ["2024-01-01T01:00:00+00:00", "2024-01-01T02:00:00+00:00"]


# -- properties --------------------------------------------------------------------------
ZONES = ["Europe/Berlin", "America/New_York", "Australia/Lord_Howe", "UTC", "Asia/Kolkata"]
CRONS = ["0 * * * *", "30 1 * * *", "0 2 * * *", "*/20 * * * *", "15,45 2,3 * * *", "@weekly"]


@settings(
    max_examples=40,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(
    zone=st.sampled_from(ZONES),
    schedule=st.sampled_from(CRONS),
    minutes=st.integers(min_value=0, max_value=4 * 365 * 24 * 60),
    now_frac=st.floats(min_value=0, max_value=1),
)
def test_chain_backfill_and_skip_agree(
    zone: str, schedule: str, minutes: int, now_frac: float
) -> None:
    start = datetime(2021, 1, 1, tzinfo=ZoneInfo(zone)) + timedelta(minutes=minutes)
    tt = make(schedule, start=start)
    span = timedelta(days=3) if schedule != "@weekly" else timedelta(days=30)
    backfill = tt.intervals_between(start, start + span)
    assert backfill
    assert_contiguous(backfill)
    assert chain(tt, len(backfill)) == backfill
    now = start + now_frac * span
    complete = [r for r in backfill if r.run_after <= now]
    expected = complete[-1] if complete else backfill[0]
    assert tt.next_run(None, now=now, catchup=False) == expected

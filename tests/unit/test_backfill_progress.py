"""`aflow backfill`'s progress display: redrawn in place on a terminal, plain lines at
most every second elsewhere; and its date parsing."""

from __future__ import annotations

import io
from dataclasses import replace
from datetime import datetime

import pytest

from aflow import BackfillProgress
from aflow.cli_backfill import LINE_EVERY_S, ProgressDisplay, format_progress, parse_bound
from aflow.exceptions import AflowError

P0 = BackfillProgress(dag_id="daily", total=4, done=0, succeeded=0, failed=0, active_runs=2,
                      tasks_running=1, tasks_failed=0, elapsed_s=0.0, eta_s=None, stopping=False)


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_format_names_every_figure() -> None:
    p = replace(P0, done=2, succeeded=1, failed=1, tasks_running=3, tasks_failed=1,
                elapsed_s=65, eta_s=65)
    assert format_progress(p) == (
        "backfill daily: 2/4 runs done (1 succeeded, 1 failed), 2 active, 3 tasks running, "
        "1 tasks failed | 0:01:05 elapsed, ETA 0:01:05"
    )
    assert format_progress(P0).endswith("ETA --:--")
    assert format_progress(replace(P0, stopping=True)).endswith("| stopping")


def test_plain_lines_at_most_every_second_and_only_on_change() -> None:
    out, clock = io.StringIO(), FakeClock()
    show = ProgressDisplay(out, tty=False, clock=clock)
    show(P0)
    clock.now += 0.2
    show(replace(P0, tasks_running=2))  # too soon: held back
    clock.now += 0.2
    show(replace(P0, tasks_running=2))
    assert out.getvalue().count("\n") == 1
    clock.now += LINE_EVERY_S
    show(replace(P0, tasks_running=2, elapsed_s=2))
    show(replace(P0, tasks_running=2, elapsed_s=3))  # nothing changed but the time
    assert out.getvalue().count("\n") == 2
    show(replace(P0, done=1, succeeded=1))  # too soon again: shown by finish()
    show.finish()
    lines = out.getvalue().splitlines()
    assert len(lines) == 3 and "1/4 runs done" in lines[-1]
    show(replace(P0, done=4, succeeded=4))  # the last one is always shown
    assert "4/4 runs done" in out.getvalue().splitlines()[-1]
    assert "\r" not in out.getvalue() and "\x1b" not in out.getvalue()


def test_terminal_line_is_redrawn_in_place() -> None:
    out, clock = io.StringIO(), FakeClock()
    show = ProgressDisplay(out, tty=True, clock=clock)
    show(P0)
    clock.now += 0.5
    show(replace(P0, done=2, succeeded=2))
    show.message("received SIGINT: stopping")
    clock.now += 0.5
    show(replace(P0, done=4, succeeded=4))
    show.finish()
    text = out.getvalue()
    assert text.count("\r\x1b[2K") == 3
    assert "[##########..........] backfill daily: 2/4" in text
    assert "\nreceived SIGINT: stopping\n" in text  # on a line of its own
    assert text.endswith("\n") and text.count("\n") == 3


def test_dates() -> None:
    assert parse_bound("2024-01-31", "--start") == datetime(2024, 1, 31)
    assert parse_bound("2024-01-31T06:00+01:00", "--end").utcoffset() is not None
    with pytest.raises(AflowError, match=r"invalid --start '31/01/2024': use an ISO-8601"):
        parse_bound("31/01/2024", "--start")

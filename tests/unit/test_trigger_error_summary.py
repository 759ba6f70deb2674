"""What a failed trigger leaves on its TI's row: the final exception of the traceback
the triggerer sent, whole (an SQL error's statement line included), not just its last
line."""

from __future__ import annotations

import traceback

from aflow.runtime.task_runner import trigger_error_summary


def _text_of(exc: BaseException) -> str:
    return "".join(traceback.format_exception(exc))


def _raised(exc: BaseException) -> BaseException:
    try:
        raise exc
    except BaseException as caught:  # noqa: BLE001 - the test wants it back
        return caught


def test_a_multi_line_message_is_kept_whole() -> None:
    exc = _raised(RuntimeError("query failed: relation \"t\" does not exist\n  SQL: SELECT n FROM t"))
    assert trigger_error_summary(_text_of(exc)) == (
        'RuntimeError: query failed: relation "t" does not exist\n  SQL: SELECT n FROM t')


def test_a_chained_exception_gives_the_last_one() -> None:
    try:
        try:
            raise KeyError("first")
        except KeyError as first:
            raise ValueError("second") from first
    except ValueError as exc:
        text = _text_of(exc)
    assert "KeyError" in text
    assert trigger_error_summary(text) == "ValueError: second"


def test_an_exception_group_gives_its_innermost_line() -> None:
    group = _raised(ExceptionGroup("in the trigger's task group", [_raised(OSError("gone"))]))
    assert trigger_error_summary(_text_of(group)) == "OSError: gone"


def test_text_that_is_no_traceback_and_none_at_all() -> None:
    assert trigger_error_summary("the trigger said no\nfor this reason") == "for this reason"
    assert trigger_error_summary("") == "no detail"
    assert len(trigger_error_summary("x" * 5000)) == 1000

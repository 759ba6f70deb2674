"""Clearing and marking by hand through the Orchestrator, on real runs and a real SQLite
file: exactly the cleared TIs run again (try numbers, a record of which callables ran),
the others keep their state and XComs; marks end TIs and runs as Airflow does; a run this
process drives is changed in place, while it runs."""

from __future__ import annotations

import shutil
import sqlite3
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
import pytest

from aflow import DAG, Orchestrator, PythonOperator, RunBusy, TaskState
from aflow.exceptions import AflowError, DagNotFound, RunNotFound, TaskNotFound
from aflow.states import DagRunState, RunType
from aflow.store.records import DagRunRecord
from aflow.store.sqlite import SqliteStore
from tests.conftest import REPO, driver_and_bystander

pytestmark = pytest.mark.anyio

START = datetime(2024, 1, 1, tzinfo=UTC)
WAIT_S = 60


async def tries(o: Orchestrator, dag_id: str, run_id: str) -> dict[str, tuple[str, int]]:
    handle = await o.get_run(dag_id, run_id)
    return {t.task_id: (t.state.value, t.try_number) for t in await handle.task_instances()}


async def until(predicate: Callable[[], Any]) -> None:
    """Wait (polling the store through `predicate`) until it holds."""
    with anyio.fail_after(WAIT_S):
        while not await predicate():  # noqa: ASYNC110 - states in the store, no event to wait on
            await anyio.sleep(0.02)


# -- the weather example: fix transform, clear it, only transform and load run again ------------

BUG = '    raw = ti.xcom_pull(task_ids="fetch")\n    return daily_stats(raw["cities"])\n'
RECORDER = '''

# -- added by the test: a record of which callables ran --------------------------------
import functools as _functools


def _recorded(fn):
    @_functools.wraps(fn)
    def call(*args, **kwargs):
        with open(os.environ["WEATHER_TEST_RECORD"], "a", encoding="utf-8") as f:
            f.write(fn.__name__ + "\\n")
        return fn(*args, **kwargs)

    return call


for _task in dag.tasks:
    _task.python_callable = _recorded(_task.python_callable)
'''


def weather_copy(folder: Path, *, broken: bool) -> None:
    """dags/weather_dashboard.py as it is, with its retries due at once (not after 5 s),
    each callable recording its call; with `broken`, transform raises."""
    text = (REPO / "dags" / "weather_dashboard.py").read_text()
    assert BUG in text and "timedelta(seconds=5)" in text
    text = text.replace("timedelta(seconds=5)", "timedelta(seconds=0)")
    if broken:
        text = text.replace(BUG, '    raise ValueError("transform has a bug")\n')
    (folder / "weather_dashboard.py").write_text(text + RECORDER)


@pytest.mark.slow
async def test_weather_fix_transform_clear_it_and_only_transform_and_load_run_again(
    home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "dags"
    (folder / "data").mkdir(parents=True)
    shutil.copy(REPO / "dags" / "data" / "weather_sample.json", folder / "data")
    record = tmp_path / "record.txt"
    examples_db = tmp_path / "examples.db"
    monkeypatch.setenv("WEATHER_TEST_RECORD", str(record))
    monkeypatch.setenv("AFLOW_EXAMPLES_DB", str(examples_db))
    monkeypatch.delenv("WEATHER_API_URL", raising=False)
    weather_copy(folder, broken=True)

    async with Orchestrator(folder, home=home, schedule=False, parse_processes=1) as o:
        run = await o.trigger("weather_dashboard")
        first = await run.wait(timeout=WAIT_S)
        assert first.state is DagRunState.FAILED
        assert await tries(o, "weather_dashboard", run.run_id) == {
            "fetch": ("success", 1), "transform": ("failed", 3), "load": ("upstream_failed", 0)}
        assert record.read_text().split() == ["fetch_weather"] + ["transform_weather"] * 3

        # fix transform: the file is saved, the DAG folder is re-parsed
        reloaded = anyio.Event()
        o.on_dags_changed.append(lambda change: reloaded.set())
        weather_copy(folder, broken=False)
        with anyio.fail_after(WAIT_S):
            await reloaded.wait()
        record.write_text("")

        cleared = await o.clear_tasks("weather_dashboard", run.run_id, ["transform"], downstream=True)
        assert cleared == ["transform", "load"]
        final = await run.wait(timeout=WAIT_S)
        assert final.state is DagRunState.SUCCESS
        assert final.end_date is not None and final.end_date > first.end_date  # type: ignore[operator]
        assert await tries(o, "weather_dashboard", run.run_id) == {
            "fetch": ("success", 1), "transform": ("success", 4), "load": ("success", 1)}
        assert record.read_text().split() == ["transform_weather", "load_weather"]
        tis = {t.task_id: t for t in await run.task_instances()}
        assert tis["transform"].max_tries == 3 + 2  # fresh retries: try number + retries
    with sqlite3.connect(examples_db) as conn:
        assert conn.execute("SELECT COUNT(*) FROM weather_daily").fetchone()[0] == 5


# -- selection: downstream, upstream, only_failed ---------------------------------------------


def diamond(calls: list[str], failing: set[str]) -> DAG:
    """a >> b >> c, a >> d; each task returns its upstream's value plus its name, so a
    task that runs again shows the XComs it read."""

    def make(name: str) -> Callable[..., Any]:
        def fn(ti: Any) -> str:
            calls.append(name)
            if name in failing:
                raise ValueError(f"{name} fails")
            up = {"b": "a", "c": "b", "d": "a"}.get(name)
            return ((ti.xcom_pull(task_ids=up) or "") if up else "") + name

        return fn

    with DAG("diamond", start_date=START) as dag:
        a, b, c, d = (PythonOperator(task_id=n, python_callable=make(n), retries=1, retry_delay=0)
                      for n in "abcd")
        a >> b >> c
        a >> d
    return dag


async def test_selection_with_downstream_upstream_and_only_failed(
    orchestrator_factory: Any,
) -> None:
    calls: list[str] = []
    o = await orchestrator_factory(diamond(calls, failing=set()))
    run = await o.trigger("diamond")
    assert (await run.wait(timeout=WAIT_S)).state is DagRunState.SUCCESS
    plan = o.tasks_to_clear
    ids = lambda tis: [t.task_id for t in tis]  # noqa: E731
    assert ids(await plan("diamond", run.run_id, ["b"])) == ["b"]
    assert ids(await plan("diamond", run.run_id, ["b"], downstream=True)) == ["b", "c"]
    assert ids(await plan("diamond", run.run_id, ["b"], upstream=True)) == ["a", "b"]
    assert ids(await plan("diamond", run.run_id, ["a"], downstream=True)) == ["a", "d", "b", "c"]
    assert len(await plan("diamond", run.run_id)) == 4
    # nothing failed: only_failed clears nothing and leaves the ended run alone
    assert await o.clear_tasks("diamond", run.run_id, only_failed=True) == []
    assert (await o.store.get_run("diamond", run.run_id)).state is DagRunState.SUCCESS

    # c alone runs again and reads the XCom b pushed in its first try
    calls.clear()
    assert await o.clear_tasks("diamond", run.run_id, ["c"]) == ["c"]
    assert (await run.wait(timeout=WAIT_S)).state is DagRunState.SUCCESS
    assert calls == ["c"]
    xcoms = {x.task_id: x.value for x in await o.store.get_xcoms("diamond", run.run_id)}
    assert xcoms == {"a": "a", "b": "ab", "c": "abc", "d": "ad"}
    assert await tries(o, "diamond", run.run_id) == {
        "a": ("success", 1), "b": ("success", 1), "c": ("success", 2), "d": ("success", 1)}

    # upstream closure: a and b run again, c and d keep their state
    calls.clear()
    assert await o.clear_tasks("diamond", run.run_id, ["b"], upstream=True) == ["a", "b"]
    assert (await run.wait(timeout=WAIT_S)).state is DagRunState.SUCCESS
    assert calls == ["a", "b"]
    assert await tries(o, "diamond", run.run_id) == {
        "a": ("success", 2), "b": ("success", 2), "c": ("success", 2), "d": ("success", 1)}


async def test_only_failed_clears_the_failed_and_upstream_failed_tis(
    orchestrator_factory: Any,
) -> None:
    calls: list[str] = []
    failing = {"b"}
    o = await orchestrator_factory(diamond(calls, failing))
    run = await o.trigger("diamond")
    assert (await run.wait(timeout=WAIT_S)).state is DagRunState.FAILED
    assert await tries(o, "diamond", run.run_id) == {
        "a": ("success", 1), "b": ("failed", 2), "c": ("upstream_failed", 0), "d": ("success", 1)}
    failing.clear()
    calls.clear()
    assert await o.clear_tasks("diamond", run.run_id, only_failed=True) == ["b", "c"]
    final = await run.wait(timeout=WAIT_S)
    assert final.state is DagRunState.SUCCESS
    assert sorted(calls) == ["b", "c"]
    assert await tries(o, "diamond", run.run_id) == {
        "a": ("success", 1), "b": ("success", 3), "c": ("success", 1), "d": ("success", 1)}


async def test_bad_input_is_refused_and_changes_nothing(orchestrator_factory: Any) -> None:
    calls: list[str] = []
    o = await orchestrator_factory(diamond(calls, failing={"b"}))
    run = await o.trigger("diamond")
    await run.wait(timeout=WAIT_S)
    before = await tries(o, "diamond", run.run_id)
    with pytest.raises(TaskNotFound, match="has no task 'nope'"):
        await o.clear_tasks("diamond", run.run_id, ["b", "nope"])
    with pytest.raises(RunNotFound, match="no run 'nope'"):
        await o.clear_tasks("diamond", "nope", ["b"])
    with pytest.raises(DagNotFound, match="no DAG named 'nope'"):
        await o.clear_tasks("nope", run.run_id)
    with pytest.raises(AflowError, match="use success or failed"):
        await o.mark_task("diamond", run.run_id, "b", "running")
    with pytest.raises(TaskNotFound):
        await o.mark_task("diamond", run.run_id, "nope", "success")
    with pytest.raises(AflowError, match="use success or failed"):
        await o.mark_run("diamond", run.run_id, "queued")
    assert await tries(o, "diamond", run.run_id) == before
    assert (await o.store.get_run("diamond", run.run_id)).state is DagRunState.FAILED


# -- marking -----------------------------------------------------------------------------------


async def test_mark_a_failed_ti_success_in_an_ended_run_lets_its_downstream_run(
    orchestrator_factory: Any,
) -> None:
    calls: list[str] = []
    o = await orchestrator_factory(diamond(calls, failing={"b"}))
    run = await o.trigger("diamond")
    assert (await run.wait(timeout=WAIT_S)).state is DagRunState.FAILED
    calls.clear()
    assert await o.mark_task("diamond", run.run_id, "b", "success") == ["b", "c"]
    final = await run.wait(timeout=WAIT_S)
    assert final.state is DagRunState.SUCCESS
    assert calls == ["c"]  # b is not run again: it is marked
    assert await tries(o, "diamond", run.run_id) == {
        "a": ("success", 1), "b": ("success", 2), "c": ("success", 1), "d": ("success", 1)}


async def test_mark_a_ti_failed_in_an_ended_run_fails_the_run(orchestrator_factory: Any) -> None:
    calls: list[str] = []
    o = await orchestrator_factory(diamond(calls, failing=set()))
    run = await o.trigger("diamond")
    assert (await run.wait(timeout=WAIT_S)).state is DagRunState.SUCCESS
    assert await o.mark_task("diamond", run.run_id, "d", "failed") == ["d"]
    final = await run.wait(timeout=WAIT_S)
    assert final.state is DagRunState.FAILED
    tis = {t.task_id: t for t in await run.task_instances()}
    assert tis["d"].state is TaskState.FAILED and tis["d"].error == "marked failed by hand"


async def test_mark_an_ended_run(orchestrator_factory: Any) -> None:
    calls: list[str] = []
    o = await orchestrator_factory(diamond(calls, failing={"b"}))
    run = await o.trigger("diamond")
    assert (await run.wait(timeout=WAIT_S)).state is DagRunState.FAILED
    record = await o.mark_run("diamond", run.run_id, "success")
    assert record.state is DagRunState.SUCCESS and record.end_date is not None
    assert (await o.store.get_run("diamond", run.run_id)) == record
    # ended TIs keep their state; nothing runs again
    assert (await tries(o, "diamond", run.run_id))["b"] == ("failed", 2)


# -- a run this process is driving ------------------------------------------------------------


def gated(calls: list[str], failing: set[str], gate: anyio.Event) -> DAG:
    """flaky >> after, and slow (waits on `gate`) >> join << after."""

    def flaky() -> str:
        calls.append("flaky")
        if "flaky" in failing:
            raise ValueError("flaky fails")
        return "ok"

    def after(ti: Any) -> str:
        calls.append("after")
        return f"after {ti.xcom_pull(task_ids='flaky')}"

    async def slow() -> str:
        calls.append("slow")
        await gate.wait()
        return "slow"

    def join() -> None:
        calls.append("join")

    with DAG("gated", start_date=START) as dag:
        f = PythonOperator(task_id="flaky", python_callable=flaky)
        a = PythonOperator(task_id="after", python_callable=after)
        s = PythonOperator(task_id="slow", python_callable=slow)
        j = PythonOperator(task_id="join", python_callable=join)
        f >> a >> j
        s >> j
    return dag


async def test_clear_ended_tis_of_a_run_that_is_still_being_driven(
    orchestrator_factory: Any,
) -> None:
    calls: list[str] = []
    failing = {"flaky"}
    gate = anyio.Event()
    o = await orchestrator_factory(gated(calls, failing, gate))
    run = await o.trigger("gated")

    async def flaky_ended() -> bool:
        return (await tries(o, "gated", run.run_id))["after"] == ("upstream_failed", 0)

    await until(flaky_ended)
    assert (await tries(o, "gated", run.run_id))["slow"] == ("running", 1)
    assert (run.dag_id, run.run_id) in o.driver.runs  # driven here, still running
    with pytest.raises(RunBusy, match=r"running or waiting right now: slow \(running\)"):
        await o.clear_tasks("gated", run.run_id, ["slow"])
    failing.clear()
    # join was decided upstream_failed at once: it is cleared too, and waits for slow again
    assert await o.clear_tasks("gated", run.run_id, ["flaky"], downstream=True) == [
        "flaky", "after", "join"]

    async def after_done() -> bool:
        return (await tries(o, "gated", run.run_id))["after"] == ("success", 1)

    await until(after_done)
    now = await tries(o, "gated", run.run_id)
    assert (now["slow"], now["join"]) == (("running", 1), ("none", 0))
    gate.set()
    final = await run.wait(timeout=WAIT_S)
    assert final.state is DagRunState.SUCCESS
    assert await tries(o, "gated", run.run_id) == {
        "flaky": ("success", 2), "after": ("success", 1), "slow": ("success", 1),
        "join": ("success", 1)}
    assert sorted(calls) == ["after", "flaky", "flaky", "join", "slow"]


async def test_mark_a_ti_success_in_a_run_that_is_being_driven(orchestrator_factory: Any) -> None:
    calls: list[str] = []
    gate = anyio.Event()
    o = await orchestrator_factory(gated(calls, {"flaky"}, gate))
    run = await o.trigger("gated")

    async def flaky_ended() -> bool:
        return (await tries(o, "gated", run.run_id))["after"] == ("upstream_failed", 0)

    await until(flaky_ended)
    with pytest.raises(RunBusy, match="slow"):
        await o.mark_task("gated", run.run_id, "slow", "success")
    assert await o.mark_task("gated", run.run_id, "flaky", "success") == [
        "flaky", "after", "join"]

    async def after_done() -> bool:
        return (await tries(o, "gated", run.run_id))["after"] == ("success", 1)

    await until(after_done)
    gate.set()
    assert (await run.wait(timeout=WAIT_S)).state is DagRunState.SUCCESS
    assert (await tries(o, "gated", run.run_id))["flaky"] == ("success", 1)
    assert calls.count("flaky") == 1


@pytest.mark.parametrize(("mark", "expected"), [
    ("failed", {"flaky": "success", "after": "success", "slow": "failed", "join": "skipped"}),
    ("success", {"flaky": "success", "after": "success", "slow": "success", "join": "success"}),
])
async def test_mark_a_run_that_is_being_driven(
    orchestrator_factory: Any, mark: str, expected: dict[str, str]
) -> None:
    calls: list[str] = []
    gate = anyio.Event()
    o = await orchestrator_factory(gated(calls, set(), gate))
    run = await o.trigger("gated")

    async def waiting_on_slow() -> bool:
        return (await tries(o, "gated", run.run_id))["after"] == ("success", 1)

    await until(waiting_on_slow)
    record = await o.mark_run("gated", run.run_id, mark)
    assert record.state.value == mark
    assert (await run.wait(timeout=WAIT_S)).state.value == mark
    gate.set()  # the slow try ends now: its outcome is not recorded over the mark
    with anyio.fail_after(WAIT_S):
        while o.slots_in_use:  # noqa: ASYNC110 - the slot count has no event
            await anyio.sleep(0.01)
    assert {t: s for t, (s, _) in (await tries(o, "gated", run.run_id)).items()} == expected
    assert "join" not in calls
    assert (await o.store.get_run("gated", run.run_id)).state.value == mark


# -- a run another live process drives ---------------------------------------------------------


async def test_a_run_driven_by_another_live_process_is_refused(
    home: Path, orchestrator_factory: Any
) -> None:
    calls: list[str] = []
    o = await orchestrator_factory(diamond(calls, failing=set()))
    now = o.clock.now()
    async with SqliteStore(f"sqlite:///{home / 'aflow.db'}") as other:
        await other.create_run(DagRunRecord(
            dag_id="diamond", run_id="elsewhere", run_type=RunType.MANUAL,
            state=DagRunState.RUNNING, logical_date=now, data_interval_start=now,
            data_interval_end=now, created_at=now, start_date=now,
            owner="host:1:other", lease_until=now.replace(year=now.year + 1)), [])
    with pytest.raises(RunBusy, match=r"cannot mark a \(none\).*has not ended yet"):
        await o.mark_task("diamond", "elsewhere", "a", "success")
    with pytest.raises(RunBusy, match=r"driven by another process \(host:1:other"):
        await o.mark_run("diamond", "elsewhere", "failed")
    assert await o.clear_tasks("diamond", "elsewhere") == []  # nothing has ended there yet
    record = await o.store.get_run("diamond", "elsewhere")
    assert record.state is DagRunState.RUNNING and record.owner == "host:1:other"
    assert await o.store.get_tis("diamond", "elsewhere") == []


# -- PostgreSQL --------------------------------------------------------------------------------


@pytest.mark.postgres
async def test_clear_and_mark_on_postgresql(home: Path, pg_schema_url: str) -> None:
    calls: list[str] = []
    failing = {"b"}
    async with Orchestrator(diamond(calls, failing), store=pg_schema_url, home=home,
                            schedule=False) as o:
        run = await o.trigger("diamond")
        assert (await run.wait(timeout=WAIT_S)).state is DagRunState.FAILED
        failing.clear()
        calls.clear()
        assert await o.clear_tasks("diamond", run.run_id, ["b"], downstream=True) == ["b", "c"]
        assert (await run.wait(timeout=WAIT_S)).state is DagRunState.SUCCESS
        assert sorted(calls) == ["b", "c"]
        assert await tries(o, "diamond", run.run_id) == {
            "a": ("success", 1), "b": ("success", 3), "c": ("success", 1), "d": ("success", 1)}
        record = await o.mark_run("diamond", run.run_id, "failed")
        assert record.state is DagRunState.FAILED
        assert (await o.store.get_run("diamond", run.run_id)).state is DagRunState.FAILED


async def test_clear_in_a_run_left_by_a_dead_scheduler_is_adopted_with_the_new_states(
    home: Path, orchestrator_factory: Any
) -> None:
    """A running run whose owner's lease has expired is no one's: it is changed in the
    store (its state stays `running`) and the next claim drives it on from there."""
    from aflow.store.records import TaskInstanceRecord

    calls: list[str] = []
    now = datetime.now(UTC)
    async with SqliteStore(f"sqlite:///{home / 'aflow.db'}") as other:
        await other.create_run(DagRunRecord(
            dag_id="diamond", run_id="orphan", run_type=RunType.MANUAL,
            state=DagRunState.RUNNING, logical_date=now, data_interval_start=now,
            data_interval_end=now, created_at=now, start_date=now,
            owner="host:1:dead", lease_until=now.replace(year=now.year - 1)), [])
        await other.save_tis([
            TaskInstanceRecord(dag_id="diamond", run_id="orphan", task_id=task_id,
                               try_number=tries, max_tries=1, state=state, start_date=now,
                               end_date=now)
            for task_id, state, tries in (("a", TaskState.SUCCESS, 1), ("b", TaskState.FAILED, 2))
        ])
    o = await orchestrator_factory(diamond(calls, failing=set()), claim=False)
    assert await o.clear_tasks("diamond", "orphan", ["b"]) == ["b"]
    record = await o.store.get_run("diamond", "orphan")
    assert record.state is DagRunState.RUNNING  # not ended: it stays as it is, still claimable
    assert (await tries(o, "diamond", "orphan"))["b"] == ("none", 2)
    # a scheduler adopts it: b runs again, then c; d too (it never ran)
    driver = await orchestrator_factory(diamond(calls, failing=set()))
    final = await (await driver.get_run("diamond", "orphan")).wait(timeout=WAIT_S)
    assert final.state is DagRunState.SUCCESS
    assert sorted(calls) == ["b", "c", "d"]
    assert (await tries(driver, "diamond", "orphan"))["b"] == ("success", 3)


# -- clearing a run another process is driving ------------------------------------------------


async def test_clear_in_a_run_another_process_is_driving(
    home: Path, orchestrator_factory: Any
) -> None:
    """`driver` drives the run; `other` (as the CLI would) clears ended TIs of it in the
    store, and the driver clears them in its memory too: they run again there, while
    its running task goes on undisturbed."""
    calls: list[str] = []
    failing = {"flaky"}
    gate = anyio.Event()
    dag = gated(calls, failing, gate)
    driver = await orchestrator_factory(dag, poll_s=0.05)
    other = await orchestrator_factory(dag, claim=False, triggerer=False)
    run = await driver.trigger("gated")

    async def flaky_ended() -> bool:
        return (await tries(other, "gated", run.run_id))["join"] == ("upstream_failed", 0)

    await until(flaky_ended)
    assert (run.dag_id, run.run_id) in driver.driver.runs
    assert (run.dag_id, run.run_id) not in other.driver.runs
    with pytest.raises(RunBusy, match=r"running or waiting right now: slow \(running\)"):
        await other.clear_tasks("gated", run.run_id, ["slow"])
    with pytest.raises(RunBusy, match=r"cannot mark slow \(running\).*has not ended yet"):
        await other.mark_task("gated", run.run_id, "slow", "success")
    with pytest.raises(RunBusy, match="driven by another process"):
        await other.mark_run("gated", run.run_id, "success")
    failing.clear()
    planned = await other.tasks_to_clear("gated", run.run_id, ["flaky"], downstream=True)
    assert [t.task_id for t in planned] == ["flaky", "after", "join"]
    assert await other.clear_tasks("gated", run.run_id, ["flaky"], downstream=True) == [
        "flaky", "after", "join"]

    async def after_done() -> bool:
        return (await tries(other, "gated", run.run_id))["after"] == ("success", 1)

    await until(after_done)
    now = await tries(other, "gated", run.run_id)
    assert (now["flaky"], now["slow"], now["join"]) == (("success", 2), ("running", 1), ("none", 0))
    assert [t for t in await other.store.list_triggers()] == []  # the clear's event rows went
    gate.set()
    assert (await run.wait(timeout=WAIT_S)).state is DagRunState.SUCCESS
    assert await tries(other, "gated", run.run_id) == {
        "flaky": ("success", 2), "after": ("success", 1), "slow": ("success", 1),
        "join": ("success", 1)}
    assert sorted(calls) == ["after", "flaky", "flaky", "join", "slow"]


async def test_a_clear_that_the_driving_process_could_overtake_is_refused(
    orchestrator_factory: Any,
) -> None:
    """`broken` >> `tidy` (all_done) << `slow`: tidy waits for slow in the driver's memory;
    if broken were cleared, the driver could decide tidy on broken's old state before
    it learned of the clear, so that clear waits until tidy has ended."""
    gate = anyio.Event()

    async def slow() -> None:
        await gate.wait()

    def broken() -> None:
        raise ValueError("broken")

    with DAG("overtake", start_date=START) as dag:
        b = PythonOperator(task_id="broken", python_callable=broken)
        t = PythonOperator(task_id="tidy", python_callable=lambda: None, trigger_rule="all_done")
        s = PythonOperator(task_id="slow", python_callable=slow)
        [b, s] >> t
    driver = await orchestrator_factory(dag)
    other = await orchestrator_factory(dag, claim=False, triggerer=False)
    run = await driver.trigger("overtake")

    async def broken_ended() -> bool:
        return (await tries(other, "overtake", run.run_id))["broken"] == ("failed", 1)

    await until(broken_ended)
    with pytest.raises(RunBusy, match="tidy, right after them, has not ended yet"):
        await other.clear_tasks("overtake", run.run_id, ["broken"])
    assert (await tries(other, "overtake", run.run_id))["broken"] == ("failed", 1)
    gate.set()
    assert (await run.wait(timeout=WAIT_S)).state is DagRunState.SUCCESS  # tidy is all_done
    assert await other.clear_tasks("overtake", run.run_id, ["broken"]) == ["broken"]


async def test_a_clear_that_arrives_as_the_run_ends_queues_it_again(
    orchestrator_factory: Any,
) -> None:
    """The driver learns of the clear only on its claim sweep (here: never, but for the
    wake-up when a run ends), so the run ends first; on ending it finds the clear and
    queues the run again, and the cleared TIs run."""
    calls: list[str] = []
    failing = {"flaky"}
    gate = anyio.Event()
    dag = gated(calls, failing, gate)
    driver = await orchestrator_factory(dag, poll_s=3600)
    other = await orchestrator_factory(dag, claim=False, triggerer=False)
    run = await driver.trigger("gated")

    async def flaky_ended() -> bool:
        return (await tries(other, "gated", run.run_id))["join"] == ("upstream_failed", 0)

    await until(flaky_ended)
    failing.clear()
    assert await other.clear_tasks("gated", run.run_id, ["flaky"], downstream=True) == [
        "flaky", "after", "join"]
    gate.set()  # slow ends: the driver, unaware of the clear, ends the run
    final = await run.wait(timeout=WAIT_S)
    assert final.state is DagRunState.SUCCESS
    assert await tries(other, "gated", run.run_id) == {
        "flaky": ("success", 2), "after": ("success", 1), "slow": ("success", 1),
        "join": ("success", 1)}
    assert await other.store.list_triggers() == []


async def test_mark_a_ti_in_a_run_another_process_is_driving(orchestrator_factory: Any) -> None:
    calls: list[str] = []
    gate = anyio.Event()
    dag = gated(calls, {"flaky"}, gate)
    driver = await orchestrator_factory(dag, poll_s=0.05)
    other = await orchestrator_factory(dag, claim=False, triggerer=False)
    run = await driver.trigger("gated")

    async def flaky_ended() -> bool:
        return (await tries(other, "gated", run.run_id))["join"] == ("upstream_failed", 0)

    await until(flaky_ended)
    assert await other.mark_task("gated", run.run_id, "flaky", "success") == [
        "flaky", "after", "join"]

    async def after_done() -> bool:
        return (await tries(other, "gated", run.run_id))["after"] == ("success", 1)

    await until(after_done)
    assert await other.store.list_triggers() == []
    gate.set()
    assert (await run.wait(timeout=WAIT_S)).state is DagRunState.SUCCESS
    assert await tries(other, "gated", run.run_id) == {
        "flaky": ("success", 1), "after": ("success", 1), "slow": ("success", 1),
        "join": ("success", 1)}
    assert calls.count("flaky") == 1


@pytest.mark.postgres
async def test_clear_in_a_run_another_process_is_driving_on_postgresql(
    home: Path, pg_schema_url: str
) -> None:
    """As on SQLite, with the driver woken by NOTIFY instead of its claim sweep (which
    here would take an hour)."""
    calls: list[str] = []
    failing = {"flaky"}
    gate = anyio.Event()
    dag = gated(calls, failing, gate)
    async with driver_and_bystander(dag, pg_schema_url, home) as (driver, other):
        run = await driver.trigger("gated")

        async def flaky_ended() -> bool:
            return (await tries(other, "gated", run.run_id))["join"] == ("upstream_failed", 0)

        await until(flaky_ended)
        with anyio.fail_after(WAIT_S):
            while not driver.store.notifications_live:  # noqa: ASYNC110 - a property
                await anyio.sleep(0.01)
        failing.clear()
        assert await other.clear_tasks("gated", run.run_id, ["flaky"], downstream=True) == [
            "flaky", "after", "join"]

        async def after_done() -> bool:
            return (await tries(other, "gated", run.run_id))["after"] == ("success", 1)

        await until(after_done)
        gate.set()
        assert (await run.wait(timeout=WAIT_S)).state is DagRunState.SUCCESS
        assert (await tries(other, "gated", run.run_id))["flaky"] == ("success", 2)

"""XCom (JSON only), templated fields and per-try logs, end to end through a real
Orchestrator on a real SQLite file."""

from __future__ import annotations

import logging
import re
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import pytest

from aflow import DAG, BashOperator, Orchestrator, PythonOperator, TriggerRule, task
from aflow.runtime.logs import log_path, read_log
from tests.conftest import run_dag

pytestmark = pytest.mark.anyio

START = datetime(2024, 1, 1, tzinfo=UTC)


async def run_and_xcoms(
    o: Orchestrator, dag_id: str, **trigger: Any
) -> tuple[Any, dict[str, Any], dict[tuple[str, str], Any]]:
    handle = await o.trigger(dag_id, **trigger)
    final = await handle.wait(timeout=30)
    states = {t.task_id: t for t in await handle.task_instances()}
    xcoms = {(x.task_id, x.key): x.value for x in await o.store.get_xcoms(dag_id, handle.run_id)}
    return final, states, xcoms


# -- XCom -----------------------------------------------------------------------------------
async def test_return_values_are_pushed(orchestrator_factory: Any) -> None:
    with DAG("returns", start_date=START) as dag:
        PythonOperator(task_id="int_", python_callable=lambda: 42)
        PythonOperator(
            task_id="dict_", python_callable=lambda: {"a": [1, 2.5, None, True], "b": "x"}
        )

        async def async_list() -> list[str]:
            return ["a", "b"]

        PythonOperator(task_id="async_list", python_callable=async_list)
        PythonOperator(task_id="none_", python_callable=lambda: None)
        PythonOperator(task_id="no_push", python_callable=lambda: 7, do_xcom_push=False)
        PythonOperator(task_id="tuple_", python_callable=lambda: (1, 2))
        BashOperator(task_id="bash", bash_command="echo first; echo last line")

        @task
        def deco() -> dict[str, int]:
            return {"n": 1}

        deco()

    o = await orchestrator_factory([dag])
    final, _, xcoms = await run_and_xcoms(o, "returns")
    assert final.state.value == "success"
    assert xcoms == {
        ("int_", "return_value"): 42,
        ("dict_", "return_value"): {"a": [1, 2.5, None, True], "b": "x"},
        ("async_list", "return_value"): ["a", "b"],
        ("tuple_", "return_value"): [1, 2],  # what JSON gives back
        ("bash", "return_value"): "last line",
        ("deco", "return_value"): {"n": 1},
    }


async def test_xcom_push_and_pull(orchestrator_factory: Any) -> None:
    pulled: dict[str, Any] = {}

    def a(ti: Any) -> str:
        ti.xcom_push(key="k", value={"from": "a"})
        ti.xcom_push(key="n", value=5)
        return "ret-a"

    async def b(ti: Any) -> str:
        ti.xcom_push(key="k", value=[1, 2])
        return "ret-b"

    def quiet() -> None:
        return None

    def puller(ti: Any) -> None:
        pulled.update(
            str=ti.xcom_pull(task_ids="a"),
            str_key=ti.xcom_pull(task_ids="a", key="k"),
            list=ti.xcom_pull(task_ids=["b", "a"]),
            list_key=ti.xcom_pull(task_ids=["a", "b", "quiet"], key="k"),
            upstream=ti.xcom_pull(),
            default=ti.xcom_pull(task_ids="a", key="nope", default="dflt"),
            quiet=ti.xcom_pull(task_ids="quiet"),
            tuple_ids=ti.xcom_pull(task_ids=("a",), key="n"),
        )

    async def apuller(ti: Any) -> None:
        pulled["async"] = await ti.axcom_pull(task_ids=["a", "b"], key="k")

    with DAG("pushpull", start_date=START) as dag:
        ta = PythonOperator(task_id="a", python_callable=a)
        tb = PythonOperator(task_id="b", python_callable=b)
        tq = PythonOperator(task_id="quiet", python_callable=quiet)
        p = PythonOperator(task_id="puller", python_callable=puller)
        ap = PythonOperator(task_id="apuller", python_callable=apuller)
        bash = BashOperator(
            task_id="bash",
            bash_command="echo {{ ti.xcom_pull(task_ids='a', key='n') }}-{{ ti.xcom_pull(task_ids=['a', 'b']) | join(',') }}",
        )
        [ta, tb, tq] >> p
        [ta, tb] >> ap
        [ta, tb] >> bash

    o = await orchestrator_factory([dag])
    final, _, xcoms = await run_and_xcoms(o, "pushpull")
    assert final.state.value == "success"
    assert pulled == {
        "str": "ret-a",
        "str_key": {"from": "a"},
        "list": ["ret-b", "ret-a"],
        "list_key": [{"from": "a"}, [1, 2], None],
        "upstream": ["ret-a", "ret-b", None],  # the upstream tasks, sorted by id
        "default": "dflt",
        "quiet": None,
        "tuple_ids": [5],
        "async": [{"from": "a"}, [1, 2]],
    }
    assert xcoms[("a", "k")] == {"from": "a"}
    assert xcoms[("a", "n")] == 5
    assert xcoms[("a", "return_value")] == "ret-a"
    assert xcoms[("bash", "return_value")] == "5-ret-a,ret-b"


async def test_xcoms_of_a_failed_try_are_not_committed(orchestrator_factory: Any) -> None:
    pulled: list[Any] = []

    def fails(ti: Any) -> None:
        ti.xcom_push(key="partial", value=1)
        raise ValueError("after pushing")

    def after(ti: Any) -> None:
        pulled.append(ti.xcom_pull(task_ids="fails", key="partial", default="absent"))

    with DAG("nocommit", start_date=START) as dag:
        PythonOperator(task_id="fails", python_callable=fails) >> PythonOperator(
            task_id="after", python_callable=after, trigger_rule=TriggerRule.ALL_DONE
        )

    o = await orchestrator_factory([dag])
    final, states, xcoms = await run_and_xcoms(o, "nocommit")
    assert states["fails"].state.value == "failed"
    assert states["after"].state.value == "success"
    assert pulled == ["absent"]
    assert ("fails", "partial") not in xcoms
    assert final.state.value == "success"


class Opaque:
    pass


@pytest.mark.parametrize(
    ("value_factory", "type_name"),
    [
        (lambda: {1, 2, 3}, "set"),
        (Opaque, "Opaque"),
        (lambda: {"when": datetime(2024, 1, 1)}, "dict"),
        (lambda: [1.0, float("nan")], "list"),
    ],
    ids=["set", "object", "datetime_inside", "nan_is_not_json"],
)
async def test_non_json_return_value_fails_the_task(
    orchestrator_factory: Any, value_factory: Any, type_name: str
) -> None:
    with DAG("nonjson", start_date=START) as dag:
        bad = PythonOperator(task_id="bad_value", python_callable=value_factory)
        bad >> PythonOperator(task_id="after", python_callable=lambda: None)
        PythonOperator(task_id="sibling", python_callable=lambda: "fine")

    o = await orchestrator_factory([dag])
    final, states, xcoms = await run_and_xcoms(o, "nonjson")
    assert states["bad_value"].state.value == "failed"
    assert states["after"].state.value == "upstream_failed"
    assert states["sibling"].state.value == "success"
    assert final.state.value == "failed"
    error = states["bad_value"].error or ""
    assert "'bad_value'" in error
    assert "JSON" in error
    assert "pickle" in error
    assert type_name in error
    assert ("bad_value", "return_value") not in xcoms
    log = read_log(log_path(o.log_dir, "nonjson", final.run_id, "bad_value", 1))[0]
    assert "JSON" in log and "pickle" in log


async def test_non_json_xcom_push_fails_the_task(home: Path) -> None:
    def pushes(ti: Any) -> None:
        ti.xcom_push(key="obj", value=Opaque())

    with DAG("nonjson_push", start_date=START) as dag:
        PythonOperator(task_id="pusher", python_callable=pushes)

    result = await run_dag(dag, home)
    assert result.ti_state("pusher") == "failed"
    error = result.tis["pusher"].error or ""
    assert "'pusher'" in error and "'obj'" in error and "JSON" in error and "pickle" in error


# -- templating --------------------------------------------------------------------------
FIELDS = {
    "ds": "{{ ds }}",
    "ds_nodash": "{{ ds_nodash }}",
    "ts": "{{ ts }}",
    "logical_date": "{{ logical_date }}",
    "logical_date_year": "{{ logical_date.year }}",
    "start": "{{ data_interval_start }}",
    "end": "{{ data_interval_end | ds }}",
    "run_id": "{{ run_id }}",
    "dag": "{{ dag.dag_id }}",
    "task": "{{ task.task_id }}",
    "ti": "{{ ti.task_id }}/{{ ti.try_number }}",
    "params_name": "{{ params.name }}",
    "params_n": "{{ params.n * 2 }}",
    "conf": "{{ dag_run.conf['name'] }}-{{ dag_run.conf.get('missing', 'none') }}",
    "macro": "{{ macros.ds_add(ds, 1) }}",
    "loop": "{% for i in range(3) %}{{ i }}{% endfor %}",
    "plain": "no template here",
}


async def test_templated_fields_are_rendered(orchestrator_factory: Any) -> None:
    def echo(**kwargs: Any) -> dict[str, Any]:
        return {k: kwargs[k] for k in FIELDS}

    with DAG(
        "tmpl",
        schedule="@daily",
        start_date=START,
        params={"name": "default", "n": 21},
    ) as dag:
        py = PythonOperator(task_id="py", python_callable=echo, op_kwargs=dict(FIELDS))
        bash = BashOperator(
            task_id="bash",
            bash_command='echo "$GREETING {{ ds_nodash }} {{ params.name }} {{ task.task_id }}"',
            env={"GREETING": "hello-{{ dag_run.conf['name'] }}"},
        )
        py >> bash

    o = await orchestrator_factory([dag])
    logical_date = datetime(2024, 3, 5, 10, 30, tzinfo=UTC)
    final, states, xcoms = await run_and_xcoms(
        o, "tmpl", conf={"name": "Oslo"}, logical_date=logical_date
    )
    assert final.state.value == "success", {k: v.error for k, v in states.items()}
    rendered = xcoms[("py", "return_value")]
    assert rendered == {
        "ds": "2024-03-05",
        "ds_nodash": "20240305",
        "ts": "2024-03-05T10:30:00+00:00",
        "logical_date": "2024-03-05 10:30:00+00:00",
        "logical_date_year": "2024",
        "start": "2024-03-04 00:00:00+00:00",
        "end": "2024-03-05",
        "run_id": final.run_id,
        "dag": "tmpl",
        "task": "py",
        "ti": "py/1",
        "params_name": "Oslo",  # the run's conf overrides the param default
        "params_n": "42",
        "conf": "Oslo-none",
        "macro": "2024-03-06",
        "loop": "012",
        "plain": "no template here",
    }
    assert xcoms[("bash", "return_value")] == "hello-Oslo 20240305 Oslo bash"
    # Rendering works on a per-try copy: the DAG's task keeps its templates.
    assert dag.get_task("py").op_kwargs == FIELDS  # type: ignore[attr-defined]
    assert "{{ ds_nodash }}" in dag.get_task("bash").bash_command  # type: ignore[attr-defined]


async def test_params_defaults_without_conf(orchestrator_factory: Any) -> None:
    with DAG("tmpl_defaults", start_date=START, params={"name": "default"}) as dag:
        BashOperator(
            task_id="b",
            bash_command="echo {{ params.name }}:{{ params.extra }}:{{ dag_run.conf | length }}",
            params={"extra": "task-level"},
        )

    o = await orchestrator_factory([dag])
    final, _, xcoms = await run_and_xcoms(o, "tmpl_defaults")
    assert final.state.value == "success"
    assert xcoms[("b", "return_value")] == "default:task-level:0"


async def test_template_error_fails_that_task_only(orchestrator_factory: Any) -> None:
    with DAG("tmpl_error", start_date=START) as dag:
        bad = BashOperator(task_id="bad", bash_command="echo {{ undefined_variable }}")
        bad >> BashOperator(task_id="after_bad", bash_command="echo never")
        bad >> BashOperator(
            task_id="cleanup", bash_command="echo cleaned", trigger_rule=TriggerRule.ALL_DONE
        )
        BashOperator(task_id="good", bash_command="echo {{ ds }}")
        PythonOperator(
            task_id="bad_py",
            python_callable=lambda x: x,
            op_kwargs={"x": "{{ ti.no_such_attribute.deeper }}"},
        )
        BashOperator(task_id="syntax", bash_command="echo {{ ds ")  # unclosed tag

    o = await orchestrator_factory([dag])
    final, states, xcoms = await run_and_xcoms(o, "tmpl_error")
    assert {k: v.state.value for k, v in states.items()} == {
        "bad": "failed",
        "after_bad": "upstream_failed",
        "cleanup": "success",
        "good": "success",
        "bad_py": "failed",
        "syntax": "failed",
    }
    assert final.state.value == "failed"
    bad_error = states["bad"].error or ""
    assert "bash_command" in bad_error and "undefined_variable" in bad_error
    assert "op_kwargs" in (states["bad_py"].error or "")
    assert "bash_command" in (states["syntax"].error or "")
    assert xcoms[("good", "return_value")] == final.logical_date.strftime("%Y-%m-%d")
    log = read_log(log_path(o.log_dir, "tmpl_error", final.run_id, "bad", 1))[0]
    assert "undefined_variable" in log

    # The process stays up and runs the next run.
    with DAG("tmpl_ok", start_date=START) as ok_dag:
        BashOperator(task_id="t", bash_command="echo ok")
    o2 = await orchestrator_factory([ok_dag])
    final2, _, xcoms2 = await run_and_xcoms(o2, "tmpl_ok")
    assert final2.state.value == "success"
    assert xcoms2[("t", "return_value")] == "ok"
    second, _, _ = await run_and_xcoms(o, "tmpl_error", run_id="again")
    assert second.state.value == "failed"


# -- logs -----------------------------------------------------------------------------------
async def test_each_try_has_its_own_log(home: Path) -> None:
    def flaky(ti: Any) -> str:
        print(f"output of try {ti.try_number}")
        logging.getLogger("user").warning("warning of try %d", ti.try_number)
        if ti.try_number < 3:
            raise RuntimeError(f"try {ti.try_number} failed")
        return "ok"

    with DAG("tries", start_date=START) as dag:
        PythonOperator(task_id="t", python_callable=flaky, retries=3, retry_delay=0)

    result = await run_dag(dag, home)
    assert result.ti_state("t") == "success"
    assert result.tis["t"].try_number == 3
    folder = Path(log_path(home / "logs", "tries", result.run.run_id, "t", 1)).parent
    assert sorted(p.name for p in folder.iterdir()) == [
        "attempt=1.log",
        "attempt=2.log",
        "attempt=3.log",
    ]
    for n in (1, 2, 3):
        text = result.log("t", n)
        assert f"output of try {n}" in text
        assert f"warning of try {n}" in text
        others = {1, 2, 3} - {n}
        assert not any(f"try {m}" in text for m in others), (n, text)
    assert "RuntimeError: try 1 failed" in result.log("t", 1)
    assert "RuntimeError" not in result.log("t", 3)


async def test_failed_task_log_holds_the_traceback(home: Path) -> None:
    def inner_helper(data: dict[str, int]) -> int:
        return data["missing_key"]

    def failing_task() -> int:
        return inner_helper({"present": 1})

    async def async_failing() -> None:
        await anyio.lowlevel.checkpoint()
        raise ZeroDivisionError("async division")

    with DAG("tb", start_date=START) as dag:
        PythonOperator(task_id="sync", python_callable=failing_task)
        PythonOperator(task_id="async_", python_callable=async_failing)
        BashOperator(task_id="bash", bash_command="echo 'going down' >&2; exit 4")

    result = await run_dag(dag, home)
    assert result.states() == {"sync": "failed", "async_": "failed", "bash": "failed"}
    log = result.log("sync")
    assert "Traceback (most recent call last)" in log
    assert "failing_task" in log and "inner_helper" in log
    assert "KeyError: 'missing_key'" in log
    alog = result.log("async_")
    assert (
        "Traceback (most recent call last)" in alog and "ZeroDivisionError: async division" in alog
    )
    blog = result.log("bash")
    assert "going down" in blog and "exit code 4" in blog


async def test_concurrent_task_logs_do_not_mix(
    home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """50 tasks (async, thread and bash) write at the same time; every log holds exactly
    its own lines."""
    lines_per_task = 15
    running = {"now": 0, "peak": 0}
    lock = threading.Lock()
    all_started = threading.Event()

    def enter() -> None:
        with lock:
            running["now"] += 1
            running["peak"] = max(running["peak"], running["now"])
            if running["now"] >= 10:
                all_started.set()

    def leave() -> None:
        with lock:
            running["now"] -= 1

    async def async_writer(ti: Any) -> None:
        enter()
        try:
            for i in range(lines_per_task):
                print(f"MARK {ti.task_id} {i}")
                await anyio.sleep(0.001)
                logging.getLogger("user").info("MARK %s %d", ti.task_id, i + 1000)
                await anyio.lowlevel.checkpoint()
        finally:
            leave()

    def thread_writer(ti: Any) -> None:
        enter()
        try:
            all_started.wait(5)  # overlap with the others
            for i in range(lines_per_task):
                print(f"MARK {ti.task_id} {i}")
                time.sleep(0.001)
                logging.getLogger("user").info("MARK %s %d", ti.task_id, i + 1000)
        finally:
            leave()

    with DAG("noisy", start_date=START, max_active_tasks=64) as dag:
        for n in range(50):
            kind = n % 3
            tid = f"w{n:02d}"
            if kind == 0:
                PythonOperator(task_id=tid, python_callable=async_writer)
            elif kind == 1:
                PythonOperator(task_id=tid, python_callable=thread_writer)
            else:
                BashOperator(
                    task_id=tid,
                    bash_command=(
                        f"for i in $(seq 0 {lines_per_task - 1}); do echo MARK {tid} $i; "
                        f"echo MARK {tid} $((i + 1000)) >&2; sleep 0.002; done"
                    ),
                )

    result = await run_dag(dag, home, parallelism=64)
    assert result.state == "success", result.states()
    assert running["peak"] >= 10  # they really ran at the same time
    expected_numbers = sorted(
        [str(i) for i in range(lines_per_task)] + [str(i + 1000) for i in range(lines_per_task)]
    )
    for n in range(50):
        tid = f"w{n:02d}"
        text = result.log(tid)
        marks = re.findall(r"MARK (w\d\d) (\d+)", text)
        assert {m[0] for m in marks} == {tid}, (tid, text)
        assert sorted(m[1] for m in marks) == expected_numbers, (tid, text)
    # Task output went to the task logs, not to the console.
    captured = capsys.readouterr()
    assert "MARK" not in captured.out
    assert "MARK" not in captured.err


async def test_logs_survive_a_restart(home: Path) -> None:
    def talk(ti: Any) -> None:
        print(f"kept line of {ti.task_id} in {ti.run_id}")

    with DAG("durable_logs", start_date=START) as dag:
        PythonOperator(task_id="a", python_callable=talk) >> BashOperator(
            task_id="b", bash_command="echo bash kept line"
        )

    first = await run_dag(dag, home)  # the Orchestrator is closed when this returns
    a_log = first.log("a")
    b_log = first.log("b")
    assert f"kept line of a in {first.run.run_id}" in a_log
    assert "bash kept line" in b_log

    # A new Orchestrator over the same home: the old run, its TIs and its logs are intact,
    # and a new run gets its own logs.
    async with Orchestrator([dag], home=home, schedule=False) as o:
        stored = await o.store.get_run("durable_logs", first.run.run_id)
        assert stored is not None and stored.state.value == "success"
        handle = await o.trigger("durable_logs", run_id="second")
        await handle.wait(timeout=30)
    assert first.log("a") == a_log
    assert first.log("b") == b_log
    second_log = read_log(log_path(home / "logs", "durable_logs", "second", "a", 1))[0]
    assert "kept line of a in second" in second_log
    assert first.run.run_id not in second_log


async def test_log_lines_carry_time_and_level(home: Path) -> None:
    def logs_things() -> None:
        logging.getLogger("user.module").error("an error line")
        logging.getLogger("user.module").debug("a debug line")

    with DAG("levels", start_date=START) as dag:
        PythonOperator(task_id="t", python_callable=logs_things)

    result = await run_dag(dag, home)
    text = result.log("t")
    assert re.search(
        r"\[\d{4}-\d\d-\d\dT[\d:]+[+-]\d{4}\] \{user\.module\} ERROR - an error line", text
    ), text
    assert "a debug line" not in text  # INFO and above, as in Airflow

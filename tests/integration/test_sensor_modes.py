"""One sensor, three modes: poke (holds a slot), reschedule (frees it between pokes) and
deferrable (the triggerer waits): the same result, and the slot count stays right."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
import pytest

from aflow import DAG, PythonOperator
from aflow.authoring.sensors import BaseSensorOperator, PokeReturnValue
from aflow.states import TaskState
from aflow.store.factory import open_store_url
from tests.conftest import run_dag
from triggers.base import BaseTrigger, TriggerEvent

pytestmark = pytest.mark.anyio
START = datetime(2024, 1, 1, tzinfo=UTC)


class FlagTrigger(BaseTrigger):
    def __init__(self, path: str) -> None:
        super().__init__()
        self.path = path

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (f"{__name__}.FlagTrigger", {"path": self.path})

    async def run(self) -> AsyncIterator[TriggerEvent]:
        while not await anyio.Path(self.path).exists():  # noqa: ASYNC110 - polls a file
            await anyio.sleep(0.01)
        yield TriggerEvent({"path": self.path, "via": "trigger"})


class FlagSensor(BaseSensorOperator):
    """Done when a file exists; counts its pokes in a side file."""

    def __init__(self, *, path: str, pokes: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.path = path
        self.pokes = pokes

    def poke(self, context: dict[str, Any]) -> PokeReturnValue:
        with open(self.pokes, "a") as f:
            f.write(f"{context['ti'].try_number}\n")
        found = Path(self.path).exists()
        return PokeReturnValue(found, {"path": self.path, "via": "poke"})

    def trigger_for(self, context: dict[str, Any]) -> Any:
        return FlagTrigger(self.path)


def sensor_dag(dag_id: str, tmp_path: Path, **sensor_kwargs: Any) -> DAG:
    flag = tmp_path / "flag"

    def make_flag() -> None:
        flag.touch()

    with DAG(dag_id, start_date=START) as dag:
        sense = FlagSensor(
            task_id="sense", path=str(flag), pokes=str(tmp_path / "pokes"),
            poke_interval=0.05, **sensor_kwargs,
        )
        sense >> PythonOperator(task_id="after", python_callable=lambda ti: ti.xcom_pull(task_ids="sense"))
        # with one slot, this can only run while the sensor holds none
        PythonOperator(task_id="maker", python_callable=make_flag)
    return dag


@pytest.mark.parametrize(
    ("kwargs", "parallelism", "via"),
    [
        ({"mode": "poke"}, 2, "poke"),
        ({"mode": "reschedule"}, 1, "poke"),
        ({"deferrable": True}, 1, "trigger"),
    ],
    ids=["poke", "reschedule", "deferrable"],
)
async def test_modes_give_the_same_result(
    home: Path, tmp_path: Path, kwargs: dict[str, Any], parallelism: int, via: str
) -> None:
    dag = sensor_dag(f"sensor_{'_'.join(kwargs)}", tmp_path, **kwargs)
    result = await run_dag(dag, home, parallelism=parallelism, timeout=30)
    assert result.states() == {"sense": "success", "after": "success", "maker": "success"}
    assert result.tis["sense"].try_number == 1  # reschedules and resumes stay in one try
    assert result.tis["after"].state is TaskState.SUCCESS


@pytest.mark.parametrize("with_callback", [False, True], ids=["batched", "with-callback"])
async def test_a_resumed_sensor_ends_with_its_xcom_and_its_callbacks(
    home: Path, tmp_path: Path, with_callback: bool
) -> None:
    """Resumed sensors whose execute_complete is a built-in one end in a batch without a
    try of their own; one with a callback ends as an ordinary try, which calls it."""
    called: list[str] = []
    kwargs: dict[str, Any] = {"deferrable": True}
    if with_callback:
        kwargs["on_success_callback"] = lambda context: called.append(context["ti"].task_id)
    dag = sensor_dag(f"resumed_{with_callback}", tmp_path, **kwargs)
    result = await run_dag(dag, home, parallelism=1, timeout=30)
    assert result.states() == {"sense": "success", "after": "success", "maker": "success"}
    assert result.tis["sense"].end_date is not None and result.tis["sense"].next_method is None
    async with open_store_url(f"sqlite:///{home / 'aflow.db'}") as store:
        assert await store.list_triggers() == []  # the fired trigger row went with the end
        (xcom,) = await store.get_xcoms(dag.dag_id, result.run.run_id, "sense")
        after = await store.get_xcoms(dag.dag_id, result.run.run_id, "after")
    assert xcom.value == {"path": str(tmp_path / "flag"), "via": "trigger"}
    assert [x.value for x in after] == [xcom.value]  # the downstream read it
    assert called == (["sense"] if with_callback else [])


async def test_reschedule_mode_frees_the_slot_between_pokes(home: Path, tmp_path: Path) -> None:
    dag = sensor_dag("resched", tmp_path, mode="reschedule")
    result = await run_dag(dag, home, parallelism=1, timeout=30)
    pokes = (tmp_path / "pokes").read_text().split()
    assert set(pokes) == {"1"}  # every poke in try 1
    assert result.ti_state("maker") == "success"


@pytest.mark.parametrize("kwargs", [{"mode": "poke"}, {"mode": "reschedule"}, {"deferrable": True}],
                         ids=["poke", "reschedule", "deferrable"])
@pytest.mark.parametrize(("soft_fail", "state"), [(False, "failed"), (True, "skipped")])
async def test_timeout_in_every_mode(
    home: Path, tmp_path: Path, kwargs: dict[str, Any], soft_fail: bool, state: str
) -> None:
    with DAG("sensor_timeout", start_date=START) as dag:
        FlagSensor(task_id="sense", path=str(tmp_path / "never"), pokes=str(tmp_path / "pokes"),
                   poke_interval=0.05, timeout=0.3, soft_fail=soft_fail, **kwargs)
    result = await run_dag(dag, home, timeout=30)
    assert result.ti_state("sense") == state


@pytest.mark.parametrize("mode", ["poke", "reschedule"])
async def test_task_sensor_decorator_pushes_its_xcom(home: Path, mode: str) -> None:
    from aflow import task

    calls: list[int] = []

    with DAG(f"task_sensor_{mode}", start_date=START) as dag:

        @task.sensor(poke_interval=0.01, mode=mode)
        async def third_time_lucky() -> PokeReturnValue:
            calls.append(1)
            return PokeReturnValue(len(calls) >= 3, {"pokes": len(calls)})

        @task
        def use(value: dict[str, int]) -> int:
            return value["pokes"]

        use(third_time_lucky())

    result = await run_dag(dag, home, timeout=30)
    assert result.states() == {"third_time_lucky": "success", "use": "success"}
    assert len(calls) == 3
    assert result.tis["third_time_lucky"].try_number == 1

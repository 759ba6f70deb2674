"""A mapped task in the UI and the REST API (no browser): the grid shows one state for
all of its instances, its page counts them by state and links to each, an instance's
page shows its own state, error, XCom, rendered arguments and log; the API lists and
reads instances by map index."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest

from aflow import DAG, BashOperator, Orchestrator
from aflow.api import serve_api
from tests.auth_helpers import bearer

pytestmark = pytest.mark.anyio


def build() -> DAG:
    with DAG("mapped_ui", start_date=datetime(2024, 1, 1, tzinfo=UTC)) as dag:
        BashOperator.partial(task_id="each").expand(
            bash_command=["echo zero", "echo one", "echo two; exit 3", "echo three"]
        )
    return dag


async def test_a_mapped_task_in_the_pages_and_the_api(home: Path) -> None:
    async with Orchestrator([build()], home=home, schedule=False) as o, serve_api(o) as url:
        run = await (await o.trigger("mapped_ui")).wait(timeout=60)
        assert run.state.value == "failed"
        async with httpx.AsyncClient(base_url=url, headers=await bearer(o.store, "viewer")) as client:
            grid = (await client.get("/dags/mapped_ui")).text
            assert "state-failed" in grid  # one failed instance fails the task's cell

            page = await client.get(f"/dags/mapped_ui/runs/{run.run_id}/tasks/each")
            assert page.status_code == 200
            assert "mapped into 4 instances" in page.text
            assert "1 failed" in page.text and "3 success" in page.text
            for index in range(4):
                assert f'href="?map_index={index}"' in page.text
            assert "each [0]" in page.text  # the first instance is shown by default

            failed = await client.get(f"/dags/mapped_ui/runs/{run.run_id}/tasks/each",
                                      params={"map_index": 2})
            assert "each [2]" in failed.text
            assert 'class="state-text state-failed">failed' in failed.text
            assert "echo two; exit 3" in failed.text  # its own rendered bash_command
            assert "/logs/1?map_index=2" in failed.text

            missing = await client.get(f"/dags/mapped_ui/runs/{run.run_id}/tasks/each",
                                       params={"map_index": 9})
            assert missing.status_code == 404 and "map index 9" in missing.text

            api = "/api/v1/dags/mapped_ui/runs/" + run.run_id + "/taskInstances"
            listed = (await client.get(api)).json()
            rows = [(t["task_id"], t["map_index"], t["state"]) for t in listed["task_instances"]]
            assert rows == [("each", 0, "success"), ("each", 1, "success"),
                            ("each", 2, "failed"), ("each", 3, "success")]
            one = (await client.get(f"{api}/each", params={"map_index": 1})).json()
            assert one["state"] == "success" and one["map_index"] == 1
            log = (await client.get(f"{api}/each/logs/1", params={"map_index": 2})).json()
            assert "two" in log["content"]
            xcom = (await client.get(f"{api}/each/xcomEntries", params={"map_index": 3})).json()
            assert [e["value"] for e in xcom["xcom_entries"]] == ["three"]

"""The web UI driven in a real headless Chromium against a real Orchestrator, SQLite
store and loopback server: the DAG list, the trigger form built from params (with its
errors), the graph turning green live (no reload), the grid, a task's log, the pause
toggle, and the error pages."""

from __future__ import annotations

import re
import textwrap
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from aflow import Orchestrator
from aflow.api import serve_api
from aflow.api.auth import create_user
from tests.auth_helpers import PASSWORD

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

SHOP = '''
import logging
import time
from datetime import datetime, timezone
from pathlib import Path

from aflow import DAG, Param, PythonOperator

GATE = Path({gate!r})


def prepare(**context):
    logging.getLogger("shop").info("preparing %d orders for %s",
                                   context["params"]["count"], context["params"]["region"])
    return context["params"]["count"]


def wait_for_gate():
    deadline = time.monotonic() + 60
    while not GATE.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    logging.getLogger("shop").info("gate open")


with DAG("shop", schedule=None, start_date=datetime(2024, 1, 1, tzinfo=timezone.utc),
         params={{"region": Param("eu", enum=["eu", "us"], description="where to ship"),
                  "count": Param(3, type="integer", minimum=1, maximum=10)}}):
    a = PythonOperator(task_id="prepare", python_callable=prepare)
    b = PythonOperator(task_id="gate", python_callable=wait_for_gate)
    c = PythonOperator(task_id="ship", python_callable=lambda: "shipped")
    a >> b >> c
'''


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    d = tmp_path / "dags"
    d.mkdir()
    (d / "shop.py").write_text(textwrap.dedent(SHOP.format(gate=str(tmp_path / "gate"))))
    return d


async def node_state(page: Any, task_id: str) -> str:
    return await page.get_attribute(f'#graph .node[data-task-id="{task_id}"]', "data-state")


async def test_trigger_from_the_form_and_watch_the_graph_turn_green(
    browser: Any, shots: Any, folder: Path, home: Path, tmp_path: Path
) -> None:
    from playwright.async_api import expect

    async with Orchestrator(folder, home=home, watch_dags=False) as o, serve_api(o) as url:
        await create_user(o.store, "ada", "admin", PASSWORD, datetime.now(UTC))
        page = await browser.new_page(viewport={"width": 1280, "height": 800})
        await page.goto(f"{url}/dags")
        await page.wait_for_url(re.compile(r"/login\?next="))  # not logged in yet
        await page.fill("#username", "ada")
        await page.fill("#password", "wrong password")
        await page.click("#login-submit")
        await expect(page.locator("#problems")).to_contain_text("Wrong username or password")
        await shots(page, "login-refused")
        await page.fill("#password", PASSWORD)
        await page.click("#login-submit")
        await page.wait_for_url(f"{url}/dags")
        await expect(page.locator("#whoami")).to_have_text("ada (admin)")
        await expect(page.locator("#dag-list a.dag-link")).to_have_text(["shop"])
        await shots(page, "dag-list")

        await page.click('a[title="Trigger shop"]')
        await expect(page.locator("#param_region")).to_have_value("eu")
        await page.fill("#param_count", "99")
        await page.select_option("#param_region", "us")
        await page.click("#trigger-submit")
        problems = page.locator("#problems")
        await expect(problems).to_contain_text("count")
        await shots(page, "trigger-form-error")
        assert await o.store.list_runs("shop") == []  # a bad form creates nothing
        await expect(page.locator("#param_region")).to_have_value("us")  # kept what was typed

        await page.fill("#param_count", "4")
        await page.click("#trigger-submit")
        await page.wait_for_url("**/dags/shop?run_id=*")
        runs = await o.store.list_runs("shop")
        assert len(runs) == 1 and runs[0].conf == {"region": "us", "count": 4}
        await page.evaluate("window.__still_the_same_page = true")

        await expect(page.locator('#graph .node[data-task-id="gate"]')).to_have_attribute(
            "data-state", "running", timeout=30_000)
        assert await node_state(page, "prepare") == "success"
        await shots(page, "graph-running")
        (tmp_path / "gate").touch()
        await expect(page.locator('#graph .node[data-task-id="ship"]')).to_have_attribute(
            "data-state", "success", timeout=30_000)
        assert await node_state(page, "gate") == "success"
        await expect(page.locator("#selected-run-state")).to_have_text("success")
        assert await page.evaluate("window.__still_the_same_page") is True  # live, not reloaded
        cell = page.locator(f'.cell[data-run-id="{runs[0].run_id}"][data-task-id="ship"]')
        await expect(cell).to_have_class("cell state-success")
        await shots(page, "graph-success")

        await page.click('#graph .node[data-task-id="prepare"]')
        await expect(page.locator("#log")).to_contain_text("preparing 4 orders for us")
        await expect(page.locator("#ti-state")).to_have_text("success")
        await expect(page.locator("#xcoms")).to_contain_text("4")
        await shots(page, "task-log")

        await page.goto(f"{url}/dags/shop/runs/{runs[0].run_id}")
        await expect(page.locator("#gantt .gantt-bar")).to_have_count(3)
        await shots(page, "run-gantt")


async def test_pause_toggle_and_error_pages(
    browser: Any, shots: Any, folder: Path, home: Path
) -> None:
    from playwright.async_api import expect

    async with Orchestrator(folder, home=home, watch_dags=False) as o, serve_api(o) as url:
        await create_user(o.store, "ada", "admin", PASSWORD, datetime.now(UTC))
        page = await browser.new_page()
        await log_in(page, url)
        await page.goto(f"{url}/dags")
        toggle = page.locator('tr[data-dag-id="shop"] button.pause')
        await expect(toggle).to_have_text("on")
        await toggle.click()
        await expect(page.locator('tr[data-dag-id="shop"] button.pause')).to_have_text("paused")
        record = await o.store.get_dag("shop")
        assert record is not None and record.is_paused
        await shots(page, "paused")

        # a form posted from elsewhere (no CSRF token) changes nothing
        response = await page.request.post(f"{url}/dags/shop/pause", form={"paused": "false"})
        assert response.status == 403
        record = await o.store.get_dag("shop")
        assert record is not None and record.is_paused

        await page.goto(f"{url}/dags/nope")
        await expect(page.locator("#error-message")).to_contain_text("There is no DAG 'nope'")
        await page.goto(f"{url}/dags/shop/runs/nope")
        await expect(page.locator("#error-message")).to_contain_text("has no run 'nope'")
        await shots(page, "error-page")

        await page.click("#logout")
        await page.wait_for_url(re.compile(r"/login$"))
        await page.goto(f"{url}/dags")
        await page.wait_for_url(re.compile(r"/login\?next="))  # the session is gone


async def log_in(page: Any, url: str) -> None:
    await page.goto(f"{url}/login")
    await page.fill("#username", "ada")
    await page.fill("#password", PASSWORD)
    await page.click("#login-submit")
    await page.wait_for_url(f"{url}/dags")


FLAKY = '''
from datetime import datetime, timezone
from pathlib import Path

from aflow import DAG, PythonOperator

FIXED = Path({fixed!r})


def transform():
    if not FIXED.exists():
        raise ValueError("bad input row 42")
    return "ok"


with DAG("etl", schedule=None, start_date=datetime(2024, 1, 1, tzinfo=timezone.utc)):
    extract = PythonOperator(task_id="extract", python_callable=lambda: 1)
    fix = PythonOperator(task_id="transform", python_callable=transform)
    load = PythonOperator(task_id="load", python_callable=lambda: 3)
    extract >> fix >> load
'''


async def test_open_a_failed_tasks_log_clear_it_and_watch_it_run_again(
    browser: Any, shots: Any, home: Path, tmp_path: Path
) -> None:
    from playwright.async_api import expect

    folder = tmp_path / "etl_dags"
    folder.mkdir()
    (folder / "etl.py").write_text(textwrap.dedent(FLAKY.format(fixed=str(tmp_path / "fixed"))))
    async with Orchestrator(folder, home=home, watch_dags=False) as o, serve_api(o) as url:
        await create_user(o.store, "ada", "admin", PASSWORD, datetime.now(UTC))
        handle = await o.trigger("etl")
        assert (await handle.wait(timeout=30)).state == "failed"
        page = await browser.new_page(viewport={"width": 1280, "height": 800})
        await log_in(page, url)
        await page.goto(f"{url}/dags/etl")
        node = page.locator('#graph .node[data-task-id="transform"]')
        await expect(node).to_have_attribute("data-state", "failed")
        await expect(page.locator('#graph .node[data-task-id="load"]')).to_have_attribute(
            "data-state", "upstream_failed")
        await shots(page, "failed-run")

        await node.click()
        await expect(page.locator("#log")).to_contain_text("ValueError: bad input row 42")
        await shots(page, "failed-log")

        (tmp_path / "fixed").touch()  # the fix
        await page.click("#clear")
        await expect(page.locator("#ti-state")).to_have_text("success", timeout=30_000)
        await expect(page.locator(".tries a")).to_have_text(["try 1", "try 2"])
        await shots(page, "cleared-and-green")
        final = await o.store.get_run("etl", handle.run_id)
        assert final is not None
        with_runs = {t.task_id: (t.state.value, t.try_number)
                     for t in await o.store.get_tis("etl", handle.run_id)}
        assert with_runs == {"extract": ("success", 1), "transform": ("success", 2),
                             "load": ("success", 1)}
        await page.goto(f"{url}/dags/etl?run_id={quote(handle.run_id, safe='')}")
        await expect(page.locator('#graph .node[data-task-id="load"]')).to_have_attribute(
            "data-state", "success")
        await expect(page.locator("#selected-run-state")).to_have_text("success")

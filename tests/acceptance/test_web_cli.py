"""The web server from the command line, with real processes: `aflow users`, `aflow
tokens`, `aflow webserver` beside a scheduler, and `aflow standalone` with its UI."""

from __future__ import annotations

import re
import signal
import subprocess
from pathlib import Path

import httpx
import pytest

from tests.acceptance.conftest import CLI, write_dag
from tests.conftest import aflow_cmd

pytestmark = pytest.mark.slow

DAG_SOURCE = '''
from datetime import datetime, timezone
from aflow import DAG, PythonOperator

with DAG("hello", start_date=datetime(2024, 1, 1, tzinfo=timezone.utc)):
    PythonOperator(task_id="say", python_callable=lambda: "hi")
'''


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    d = tmp_path / "dags"
    write_dag(d, "hello.py", DAG_SOURCE)
    return d


def url_of(server_stdout: str) -> str:
    found = re.search(r"web UI:\s+(http://\S+)", server_stdout)
    assert found, server_stdout
    return found.group(1)


def test_users_and_tokens(cli: CLI) -> None:
    made = cli.ok("users", "create", "ada", "--role", "admin")
    assert "user ada (admin) created" in made.stdout
    assert re.search(r"password: \S{12,}", made.stdout)
    piped = subprocess.run(
        aflow_cmd("users", "create", "bob", "--password-stdin"),
        input="a long enough password\n", env=cli.env, capture_output=True, text=True,
        cwd=cli.workdir, timeout=60,
    )
    assert piped.returncode == 0, piped.stderr
    assert "password:" not in piped.stdout  # given, so not shown
    assert [(u["username"], u["role"]) for u in cli.json("users", "list")] == [
        ("ada", "admin"), ("bob", "viewer")]

    again = cli.run("users", "create", "ada")
    assert again.returncode == 1 and "exists already" in again.stderr
    assert cli.run("users", "create", "eve", "--role", "root").returncode == 2
    short = subprocess.run(
        aflow_cmd("users", "create", "eve", "--password-stdin"),
        input="short\n", env=cli.env, capture_output=True, text=True, cwd=cli.workdir, timeout=60)
    assert short.returncode == 1 and "at least 8" in short.stderr

    token = cli.ok("tokens", "create", "ada", "--name", "ci", "--expires-days", "30")
    token_id = re.search(r"token (tok_\w+) for ada, valid until", token.stdout).group(1)  # type: ignore[union-attr]
    assert re.search(r"^aflow_\S{40,}$", token.stdout, re.M)
    listed = cli.json("tokens", "list")
    assert [(t["token_id"], t["username"], t["name"]) for t in listed] == [(token_id, "ada", "ci")]
    assert "aflow_" not in cli.ok("tokens", "list").stdout  # never the value
    assert cli.run("tokens", "create", "nobody").returncode == 1
    assert "revoked" in cli.ok("tokens", "revoke", token_id).stdout
    assert cli.run("tokens", "revoke", token_id).returncode == 1
    assert "deleted" in cli.ok("users", "delete", "bob").stdout
    assert cli.run("users", "delete", "bob").returncode == 1


def test_a_webserver_creates_runs_that_a_separate_scheduler_drives(cli: CLI, folder: Path) -> None:
    cli.ok("users", "create", "ada", "--role", "admin")
    token = cli.ok("tokens", "create", "ada").stdout.splitlines()[1].strip()
    web = cli.spawn("webserver", "--dags-folder", str(folder), "--port", "0", name="web")
    web.wait_ready()
    url = url_of(web.stdout())
    assert "login:" not in web.stdout()  # only standalone makes an admin
    headers = {"Authorization": f"Bearer {token}"}
    made = httpx.post(f"{url}/api/v1/dags/hello/runs", json={}, headers=headers, timeout=30)
    assert made.status_code == 201, made.text
    run_id = made.json()["dag_run_id"]
    assert httpx.get(f"{url}/api/v1/dags/hello/runs/{run_id}", headers=headers).json()["state"] == "queued"

    scheduler = cli.spawn("scheduler", "--dags-folder", str(folder), name="scheduler")
    scheduler.wait_ready()
    final = cli.wait_run_state("hello", run_id)
    assert final["state"] == "success"
    for server in (web, scheduler):
        server.signal(signal.SIGTERM)
        assert server.wait_exit() == 0, server.describe()


def test_standalone_serves_the_ui_and_creates_an_admin_once(cli: CLI, folder: Path) -> None:
    first = cli.spawn("standalone", "--dags-folder", str(folder), "--port", "0", name="standalone")
    first.wait_ready()
    out = first.stdout()
    url = url_of(out)
    password = re.search(r"login:\s+admin / (\S+)", out).group(1)  # type: ignore[union-attr]
    assert url.startswith("http://127.0.0.1:")  # loopback by default
    with httpx.Client(base_url=url, timeout=30) as browser:
        assert browser.get("/dags").status_code == 303  # to the login page
        page = browser.get("/login")
        csrf = browser.cookies["aflow_csrf"]
        assert page.status_code == 200
        done = browser.post("/login", data={"csrf_token": csrf, "username": "admin",
                                            "password": password, "next": "/dags"})
        assert done.status_code == 303
        assert "hello" in browser.get("/dags").text
        assert browser.get("/api/v1/health").json()["status"] == "healthy"
    first.signal(signal.SIGTERM)
    assert first.wait_exit() == 0, first.describe()

    second = cli.spawn("standalone", "--dags-folder", str(folder), "--port", "0", name="again")
    second.wait_ready()
    assert "login:" not in second.stdout()  # the admin exists: no new password
    second.signal(signal.SIGTERM)
    assert second.wait_exit() == 0, second.describe()

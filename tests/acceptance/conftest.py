"""Helpers for acceptance tests that drive the real `aflow` CLI in real subprocesses.

Every wait polls with a deadline (never a fixed sleep as the basis of an assertion) and
every process a test starts is killed, by its own pid, when the test ends.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from tests.conftest import aflow_cmd

T = TypeVar("T")

DEADLINE_S = 30.0


def wait_until(
    predicate: Callable[[], T], *, timeout: float = DEADLINE_S, interval: float = 0.1,
    what: str = "condition",
) -> T:
    """Poll `predicate` until it returns something truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


class Server:
    """A long-running `aflow` process (scheduler, standalone) with its output in files."""

    def __init__(self, proc: subprocess.Popen[bytes], out: Path, err: Path) -> None:
        self.proc = proc
        self.out_path = out
        self.err_path = err

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stdout(self) -> str:
        return self.out_path.read_text(errors="replace")

    def stderr(self) -> str:
        return self.err_path.read_text(errors="replace")

    def describe(self) -> str:
        return f"--- stdout ---\n{self.stdout()}\n--- stderr ---\n{self.stderr()}"

    def wait_for_output(self, text: str, timeout: float = DEADLINE_S) -> None:
        def seen() -> bool:
            if text in self.stdout():
                return True
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"process exited with {self.proc.returncode} before printing {text!r}\n"
                    + self.describe()
                )
            return False

        wait_until(seen, timeout=timeout, what=f"{text!r} on stdout")

    def wait_ready(self) -> None:
        self.wait_for_output("task logs:")

    def signal(self, signum: int) -> None:
        self.proc.send_signal(signum)

    def wait_exit(self, timeout: float = DEADLINE_S) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"process {self.pid} did not exit within {timeout}s\n" + self.describe()
            ) from None

    def kill(self) -> None:
        """SIGKILL the process (and its own process group: tasks' subprocesses)."""
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait(timeout=DEADLINE_S)


class CLI:
    """Runs `aflow` subcommands against one AFLOW_HOME."""

    def __init__(self, env: dict[str, str], workdir: Path) -> None:
        self.env = env
        self.workdir = workdir
        self.servers: list[Server] = []

    @property
    def home(self) -> Path:
        return Path(self.env["AFLOW_HOME"])

    def run(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            aflow_cmd(*args), env=self.env, capture_output=True, text=True, timeout=timeout,
            cwd=self.workdir,
        )

    def ok(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        result = self.run(*args, timeout=timeout)
        assert result.returncode == 0, (
            f"aflow {' '.join(args)} exited {result.returncode}\n"
            f"--- stdout ---\n{result.stdout}\n--- stderr ---\n{result.stderr}"
        )
        return result

    def json(self, *args: str) -> Any:
        return json.loads(self.ok(*args, "--output", "json").stdout)

    def runs(self, dag_id: str | None = None) -> list[dict[str, Any]]:
        return self.json("runs", "list", *([dag_id] if dag_id else []))

    def ti_states(self, dag_id: str, run_id: str) -> dict[str, dict[str, Any]]:
        rows = self.json("tasks", "states-for-dag-run", dag_id, run_id)
        return {r["task_id"]: r for r in rows}

    def wait_run_state(
        self, dag_id: str, run_id: str, states: tuple[str, ...] = ("success", "failed"),
        timeout: float = DEADLINE_S,
    ) -> dict[str, Any]:
        def state() -> dict[str, Any] | None:
            for run in self.runs(dag_id):
                if run["run_id"] == run_id and run["state"] in states:
                    return run
            return None

        return wait_until(state, timeout=timeout, what=f"run {run_id} of {dag_id} in {states}")

    def spawn(self, *args: str, name: str = "server") -> Server:
        n = len(self.servers)
        out = self.workdir / f"{name}-{n}.out"
        err = self.workdir / f"{name}-{n}.err"
        with out.open("wb") as fo, err.open("wb") as fe:
            proc = subprocess.Popen(
                aflow_cmd(*args), env=self.env, stdout=fo, stderr=fe, stdin=subprocess.DEVNULL,
                cwd=self.workdir, start_new_session=True,
            )
        server = Server(proc, out, err)
        self.servers.append(server)
        return server

    def close(self) -> None:
        for server in self.servers:
            server.kill()


@pytest.fixture
def cli(cli_env: dict[str, str], tmp_path: Path) -> Iterator[CLI]:
    workdir = tmp_path / "work"
    workdir.mkdir()
    for var in ("WEATHER_API_URL", "ECOMMERCE_CLICKSTREAM_URL"):  # keep examples offline
        cli_env.pop(var, None)
    cli_env["AFLOW_EXAMPLES_DB"] = str(tmp_path / "examples.db")
    c = CLI(cli_env, workdir)
    try:
        yield c
    finally:
        c.close()


def write_dag(folder: Path, name: str, source: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(textwrap.dedent(source).lstrip())
    return path


def parse_table(text: str) -> list[dict[str, str]]:
    """Rows of the first `emit` table in `text` (header, dashes, rows up to a blank line)."""
    lines = text.splitlines()
    for i in range(1, len(lines)):
        if lines[i] and set(lines[i].replace(" ", "")) == {"-"}:
            header, dashes = lines[i - 1], lines[i]
            break
    else:
        raise AssertionError(f"no table in:\n{text}")
    spans: list[tuple[int, int]] = []
    pos = 0
    for width in (len(d) for d in dashes.split("  ")):
        spans.append((pos, pos + width))
        pos += width + 2
    names = [header[a:b].strip() for a, b in spans]
    rows = []
    for line in lines[i + 1:]:
        if not line.strip():
            break
        cells = [line[a:b].strip() for a, b in spans[:-1]] + [line[spans[-1][0]:].strip()]
        rows.append(dict(zip(names, cells, strict=True)))
    return rows

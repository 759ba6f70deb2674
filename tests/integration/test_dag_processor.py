"""The DAG folder through the DagProcessor: real files, real parser processes, a real
watcher. Waits are on the Orchestrator's `on_dags_changed` notifications, never sleeps."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import anyio
import pytest

from aflow import Orchestrator
from aflow.runtime.dag_processor import BagChange

pytestmark = pytest.mark.anyio

HEADER = """\
from datetime import UTC, datetime
from aflow import DAG, PythonOperator
"""


def dag_source(dag_id: str, tasks: list[str], schedule: str | None = None) -> str:
    body = "\n".join(
        f"    PythonOperator(task_id={t!r}, python_callable=lambda: {t!r})" for t in tasks
    )
    return (
        f"{HEADER}\nwith DAG({dag_id!r}, schedule={schedule!r}, "
        f"start_date=datetime(2024, 1, 1, tzinfo=UTC), catchup=False):\n{body}\n"
    )


def write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")  # hidden: not a DAG file itself
    tmp.write_text(text)
    os.replace(tmp, path)  # as editors save: the watcher sees one complete file


def remove(path: Path) -> None:
    path.unlink()


async def until(o: Orchestrator, check: Callable[[], bool], timeout: float = 15) -> None:  # noqa: ASYNC109 - a plain wait limit
    """Wait until `check()` holds after some change of the DAG folder."""
    changed = anyio.Event()

    def listener(_: BagChange) -> None:
        if check():
            changed.set()

    o.on_dags_changed.append(listener)
    try:
        if not check():
            with anyio.fail_after(timeout):
                await changed.wait()
    finally:
        o.on_dags_changed.remove(listener)


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    d = tmp_path / "dags"
    d.mkdir()
    return d


async def test_hanging_and_crashing_files_become_import_errors_while_good_ones_run(
    folder: Path, home: Path
) -> None:
    write(folder / "good.py", dag_source("good", ["a", "b"]))
    write(folder / "hangs.py", "import time\ntime.sleep(3600)\n")
    write(folder / "exits.py", "import os\nos._exit(3)\n")
    write(folder / "segfaults.py", "import ctypes\nctypes.string_at(0)\n")
    write(folder / "raises.py", "x = 1\n\nraise ValueError('no such table')\n")
    async with Orchestrator(folder, home=home, parse_timeout_s=1, watch_dags=False) as o:
        assert sorted(o.dagbag.dags) == ["good"]
        errors = {Path(r.filename).name: r.message for r in await o.store.list_import_errors()}
        assert sorted(errors) == ["exits.py", "hangs.py", "raises.py", "segfaults.py"]
        # where it hung: file and line, and the stack of that moment
        assert errors["hangs.py"].startswith(f"{folder / 'hangs.py'}:2: timed out after 1s")
        assert f'File "{folder / "hangs.py"}", line 2 in <module>' in errors["hangs.py"]
        assert "the parser process died" in errors["exits.py"]
        assert "exit code 3" in errors["exits.py"]
        assert "the parser process died" in errors["segfaults.py"]
        # file and line, then the traceback from the DAG file's own frame
        assert errors["raises.py"].startswith(f"{folder / 'raises.py'}:3: ValueError: no such table")
        assert 'raises.py", line 3, in <module>' in errors["raises.py"]
        final = await (await o.trigger("good")).wait(timeout=30)
        assert final.state == "success"


async def test_an_edited_file_is_reloaded_and_a_new_file_is_scheduled(
    folder: Path, home: Path
) -> None:
    path = folder / "edited.py"
    write(path, dag_source("edited", ["a"]))
    async with Orchestrator(folder, home=home) as o:
        assert list(o.dagbag.dags["edited"].task_dict) == ["a"]

        write(path, dag_source("edited", ["a", "b"]))
        await until(o, lambda: "b" in o.dagbag.dags["edited"].task_dict)
        handle = await o.trigger("edited")
        assert (await handle.wait(timeout=30)).state == "success"
        assert {t.task_id for t in await handle.task_instances()} == {"a", "b"}
        stored = await o.store.get_dag("edited")
        assert stored is not None
        assert {t["task_id"] for t in stored.structure["tasks"]} == {"a", "b"}

        write(folder / "fresh.py", dag_source("fresh", ["x"], schedule="@once"))
        await until(o, lambda: "fresh" in o.dagbag.dags)
        with anyio.fail_after(30):
            while not (runs := await o.store.list_runs("fresh")):  # noqa: ASYNC110 - the scheduler creates it in its own time
                await anyio.sleep(0.05)
        assert runs[0].run_type == "scheduled"


async def test_a_broken_edit_keeps_the_last_good_dag_and_records_the_error(
    folder: Path, home: Path
) -> None:
    path = folder / "flaky.py"
    write(path, dag_source("flaky", ["a"]))
    async with Orchestrator(folder, home=home) as o:
        write(path, dag_source("flaky", ["a"]) + "\n1 / 0\n")
        await until(o, lambda: str(path) in o.dagbag.import_errors)
        assert "flaky" in o.dagbag.dags
        errors = await o.store.list_import_errors()
        assert [e.filename for e in errors] == [str(path)]
        assert "ZeroDivisionError" in errors[0].message

        write(path, dag_source("flaky", ["a", "fixed"]))
        await until(o, lambda: not o.dagbag.import_errors)
        assert "fixed" in o.dagbag.dags["flaky"].task_dict
        assert await o.store.list_import_errors() == []


async def test_deleting_a_file_deactivates_its_dag(folder: Path, home: Path) -> None:
    write(folder / "keep.py", dag_source("keep", ["a"]))
    write(folder / "gone.py", dag_source("gone", ["a"], schedule="@daily"))
    async with Orchestrator(folder, home=home) as o:
        remove(folder / "gone.py")
        await until(o, lambda: "gone" not in o.dagbag.dags)
        gone = await o.store.get_dag("gone")
        keep = await o.store.get_dag("keep")
        assert gone is not None and not gone.is_active
        assert keep is not None and keep.is_active

    # A restart does not bring it back; its file coming back does.
    async with Orchestrator(folder, home=home, watch_dags=False) as o:
        gone = await o.store.get_dag("gone")
        assert gone is not None and not gone.is_active
    write(folder / "gone.py", dag_source("gone", ["a"]))
    async with Orchestrator(folder, home=home, watch_dags=False) as o:
        gone = await o.store.get_dag("gone")
        assert gone is not None and gone.is_active

"""CLI commands that read the DAG folder survive a DAG file that hangs or crashes at import."""

from __future__ import annotations

import textwrap
from pathlib import Path

from tests.acceptance.conftest import CLI

GOOD = """
from datetime import datetime, UTC
from aflow import DAG, PythonOperator

with DAG("good", start_date=datetime(2024, 1, 1, tzinfo=UTC)):
    PythonOperator(task_id="hello", python_callable=lambda: "hi")
"""


def test_a_hanging_and_a_crashing_file_are_import_errors_not_a_hung_command(
    cli: CLI, tmp_path: Path
) -> None:
    folder = tmp_path / "dags"
    folder.mkdir()
    (folder / "good.py").write_text(textwrap.dedent(GOOD))
    (folder / "hangs.py").write_text("import time\ntime.sleep(3600)\n")
    (folder / "dies.py").write_text("import os\nos._exit(3)\n")
    cli.env["AFLOW__DAG_PROCESSOR__PARSE_TIMEOUT_SECONDS"] = "2"
    cli.env["AFLOW__CORE__DAGS_FOLDER"] = str(folder)

    dags = cli.json("dags", "list")
    assert [d["dag_id"] for d in dags] == ["good"]
    errors = {Path(e["filename"]).name: e["error"] for e in cli.json("dags", "list-import-errors")}
    assert set(errors) == {"hangs.py", "dies.py"}
    assert "timed out after 2" in errors["hangs.py"]
    assert "died" in errors["dies.py"]
    # a command that runs tasks loads the folder the same way and still runs the good DAG
    cli.ok("dags", "test", "good")

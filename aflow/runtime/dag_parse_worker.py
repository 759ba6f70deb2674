"""A DAG-file parser process: `python -m aflow.runtime.dag_parse_worker`.

The DagProcessor (aflow.runtime.dag_processor) runs a few of these. Each reads one JSON
request per line on stdin (`{"path": "/abs/file.py"}`), imports that file in this
process, validates the DAGs it defines and answers one JSON line:

    {"path": ..., "sha1": <of the bytes imported>, "dags": [{"dag_id": ..., "tasks": N}],
     "error": null | "file:line: ErrorType: message\\n<traceback>"}

It first writes `{"ready": true}` once it has imported aflow. A file that hangs or kills
this process is the parent's to time out or notice (it kills and replaces the process).
With `--stack-file PATH`, SIGUSR1 makes the process write its Python stack to PATH
(faulthandler: it works even while the import is stuck in C code), which the parent asks
for before killing a file that hangs, to say where it hung.

The protocol has the process's original stdout to itself: file descriptor 1 (and
`sys.stdout`) point at stderr while user code runs, so a DAG file's prints cannot
corrupt an answer.
"""

from __future__ import annotations

import faulthandler
import hashlib
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any, TextIO


def _protocol_stream() -> TextIO:
    out = os.fdopen(os.dup(1), "w", encoding="utf-8")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    return out


def parse_one(path: Path) -> dict[str, Any]:
    from aflow.runtime.dag_loader import describe_import_error, load_file

    try:
        digest = hashlib.sha1(path.read_bytes()).hexdigest()
    except OSError as exc:
        return {"path": str(path), "sha1": None, "dags": [], "error": f"{path}: {exc}"}
    try:
        dags = load_file(path)
        seen: set[str] = set()
        for dag in dags:
            dag.validate()
            if dag.dag_id in seen:
                raise ValueError(f"DAG id {dag.dag_id!r} is defined twice in {path}")
            seen.add(dag.dag_id)
        result = [{"dag_id": d.dag_id, "tasks": len(d.task_dict)} for d in dags]
        return {"path": str(path), "sha1": digest, "dags": result, "error": None}
    except Exception as exc:  # noqa: BLE001 - a user file may raise anything
        return {
            "path": str(path),
            "sha1": digest,
            "dags": [],
            "error": describe_import_error(path, exc),
        }
    except SystemExit as exc:
        return {
            "path": str(path),
            "sha1": digest,
            "dags": [],
            "error": f"{path}: the file called sys.exit({exc.code})",
        }
    finally:
        # Forget the module, so a long-lived worker does not keep every file it parsed.
        from aflow.runtime.dag_loader import module_name_for

        sys.modules.pop(module_name_for(path), None)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) == 2 and args[0] == "--stack-file":
        stack_file = open(args[1], "w", encoding="utf-8")  # noqa: SIM115 - open for life
        faulthandler.register(signal.SIGUSR1, file=stack_file, all_threads=True)
    out = _protocol_stream()
    import aflow.runtime.dag_loader  # noqa: F401 - imported before "ready", not per file

    out.write(json.dumps({"ready": True}) + "\n")
    out.flush()
    for line in sys.stdin:
        line = line.strip()
        if not line:
            continue
        request = json.loads(line)
        answer = parse_one(Path(request["path"]))
        out.write(json.dumps(answer) + "\n")
        out.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())

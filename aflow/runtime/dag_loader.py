"""Loading DAG files: each file in isolation, so a broken one becomes an import error
that names the file, the line and what is wrong, while all the others still load."""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import sys
import traceback
from dataclasses import dataclass, field
from pathlib import Path

from aflow.authoring.dag import DAG, collect_dags_into, stop_collecting
from aflow.exceptions import AflowError, DagDefinitionError, DagNotFound

log = logging.getLogger(__name__)


@dataclass
class DagBag:
    """The DAGs found in a folder (or given directly) and the files that failed."""

    dags: dict[str, DAG] = field(default_factory=dict)
    import_errors: dict[str, str] = field(default_factory=dict)
    files: dict[str, list[str]] = field(default_factory=dict)  # file -> dag ids

    def get_dag(self, dag_id: str) -> DAG:
        try:
            return self.dags[dag_id]
        except KeyError:
            hint = ""
            if self.import_errors:
                hint = f" ({len(self.import_errors)} DAG file(s) failed to import: see import errors)"
            raise DagNotFound(f"no DAG named {dag_id!r}{hint}") from None

    def add_dag(self, dag: DAG, source: str) -> None:
        dag.validate()
        if dag.dag_id in self.dags and self.dags[dag.dag_id] is not dag:
            other = self.dags[dag.dag_id].fileloc
            raise DagDefinitionError(f"DAG id {dag.dag_id!r} is already defined in {other}")
        self.dags[dag.dag_id] = dag
        self.files.setdefault(source, []).append(dag.dag_id)


def dag_files(folder: Path) -> list[Path]:
    """Python files under `folder`, skipping hidden and private (`_`-prefixed) names."""
    if folder.is_file():
        return [folder]
    out: list[Path] = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith((".", "_")))
        for name in sorted(files):
            if name.endswith(".py") and not name.startswith((".", "_")):
                out.append(Path(root) / name)
    return out


def module_name_for(path: Path) -> str:
    digest = hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:10]
    return f"aflow_dagfile_{digest}_{path.stem}"


def load_file(path: Path) -> list[DAG]:
    """Import one DAG file and return the DAGs it defines; raises what the file raised."""
    return load_source(path, path.read_bytes())


def load_source(path: Path, source: bytes) -> list[DAG]:
    """Import `source` as the DAG file `path` (the bytes a parser process checked) and
    return the DAGs it defines; raises what the file raised."""
    name = module_name_for(path)
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None:
        raise DagDefinitionError(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    found: list[DAG] = []
    token = collect_dags_into(found)
    sys.modules[name] = module
    try:
        exec(compile(source, str(path), "exec"), module.__dict__)  # noqa: S102 - a DAG file
    except BaseException:
        sys.modules.pop(name, None)
        raise
    finally:
        stop_collecting(token)
    for value in list(vars(module).values()):
        if isinstance(value, DAG) and value not in found:
            found.append(value)
    for dag in found:
        dag.fileloc = str(path)
    return found


def describe_import_error(path: Path, exc: BaseException) -> str:
    """'file:line: ErrorType: message' plus the traceback frames inside the DAG file."""
    if isinstance(exc, SyntaxError):
        where = f"{exc.filename or path}:{exc.lineno}"
        detail = f"{where}: SyntaxError: {exc.msg}"
        if exc.text:
            detail += f"\n    {exc.text.rstrip()}"
        return detail
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename == str(path)]
    line = frames[-1].lineno if frames else None
    where = f"{path}:{line}" if line else str(path)
    head = f"{where}: {type(exc).__name__}: {exc}"
    if isinstance(exc, AflowError):
        return head
    tb = exc.__traceback__  # from the DAG file's own frame on: the loader's are noise
    while tb is not None and tb.tb_frame.f_code.co_filename != str(path):
        tb = tb.tb_next
    text = "".join(traceback.format_exception(type(exc), exc, tb or exc.__traceback__))
    return f"{head}\n{text.rstrip()}"


def load_folder(folder: Path) -> DagBag:
    """Load every DAG file of `folder`; one bad file never stops the others."""
    bag = DagBag()
    for path in dag_files(folder):
        try:
            dags = load_file(path)
            for dag in dags:
                bag.add_dag(dag, str(path))
        except Exception as exc:  # noqa: BLE001 - a user file may raise anything
            for dag_id in bag.files.pop(str(path), []):
                bag.dags.pop(dag_id, None)
            bag.import_errors[str(path)] = describe_import_error(path, exc)
            log.warning("DAG file failed to import: %s", bag.import_errors[str(path)].splitlines()[0])
        except SystemExit as exc:
            bag.import_errors[str(path)] = f"{path}: the file called sys.exit({exc.code})"
    return bag


def bag_from_dags(dags: list[DAG]) -> DagBag:
    bag = DagBag()
    for dag in dags:
        bag.add_dag(dag, dag.fileloc or "<memory>")
    return bag

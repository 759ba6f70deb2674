"""The DagProcessor: parses DAG files in isolation and keeps a DagBag in step with a live
folder.

Isolation. Every file is first parsed by a parser process (`python -m
aflow.runtime.dag_parse_worker`; `processes` of them, started on first use and replaced
when one is killed or dies) with a per-file timeout. A file that raises, defines a cycle,
hangs past `timeout_s` ("file:line: timed out after Ns", the line where it hung, with
the stack of that moment) or kills its interpreter (`os._exit`, a
segfault: "the parser process died") becomes an import error; the others still load.
Plain subprocesses rather than a `multiprocessing`/`concurrent.futures` pool: one that
hangs can be killed alone and replaced, a crash does not break a shared pool, nothing is
pickled, and the child's environment is explicit (the parent's `sys.path`).

The parent needs the DAG objects themselves (tasks are Python callables), so it then
imports each file that parsed cleanly — the exact bytes the child parsed (their SHA-1 is
compared; a file changed in between is parsed again) — in a worker thread, one file at a
time, so the event loop keeps running tasks meanwhile. The trade-off: a file is imported
twice, and a file whose import behaves differently the second time (it hangs only
sometimes, it reads the network) can still misbehave in the parent; a file that hangs or
crashes every time never reaches it.

Live folder. `watch()` follows the folder with watchfiles' notifier (inotify where the
system has it), debounced by 50 ms: a saved file is parsed again within a second. The
DagBag is updated in place: a new file's DAGs appear, a changed file's DAGs are replaced
(new runs use the new structure; runs already being driven keep the DAG object they were
started with until they end), a deleted file's DAGs leave the bag (their scheduling stops
and the store marks them inactive). A file that turns broken keeps its last good DAGs
loaded (as Airflow keeps the last serialized DAG) while its import error is shown.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

import anyio
import anyio.to_thread
from anyio.abc import Process, TaskStatus
from anyio.streams.buffered import BufferedByteReceiveStream

from aflow.authoring.dag import DAG
from aflow.runtime.dag_loader import DagBag, dag_files, describe_import_error, load_source

log = logging.getLogger(__name__)

DEFAULT_PARSE_TIMEOUT_S = 30.0
DEFAULT_PARSE_PROCESSES = max(1, min(4, (os.cpu_count() or 2) - 1))
WORKER_START_TIMEOUT_S = 60.0
STACK_DUMP_WAIT_S = 1.0  # how long a hung parser gets to write where it is
MAX_ANSWER_BYTES = 64 * 1024 * 1024
WATCH_DEBOUNCE_MS = 50
WATCH_STEP_MS = 10
WATCH_TIMEOUT_MS = 1000
_DELETED = 3  # watchfiles' Change.deleted


@dataclass(frozen=True)
class ParseResult:
    """What a parser process found in one file."""

    path: str
    sha1: str | None
    dag_ids: tuple[str, ...] = ()
    error: str | None = None


@dataclass
class BagChange:
    """What one refresh changed in the DagBag."""

    loaded: set[str] = field(default_factory=set)  # DAG ids added or replaced
    removed: set[str] = field(default_factory=set)  # DAG ids gone with their file

    def __bool__(self) -> bool:
        return bool(self.loaded or self.removed)


class _ParserProcess:
    """One parser process, started on first use; killed and forgotten when it misbehaves."""

    def __init__(self) -> None:
        self._proc: Process | None = None
        self._out: BufferedByteReceiveStream | None = None
        self._stack_file: str | None = None

    async def _start(self) -> None:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
        fd, self._stack_file = tempfile.mkstemp(prefix="aflow-parser-", suffix=".stack")
        os.close(fd)
        proc = await anyio.open_process(
            [sys.executable, "-m", "aflow.runtime.dag_parse_worker",
             "--stack-file", self._stack_file],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=None,  # the files' prints and warnings go where this process's go
            env=env,
        )
        self._proc = proc
        assert proc.stdout is not None
        self._out = BufferedByteReceiveStream(proc.stdout)
        try:
            with anyio.fail_after(WORKER_START_TIMEOUT_S):
                await self._out.receive_until(b"\n", MAX_ANSWER_BYTES)
        except BaseException:
            await self.kill()
            raise

    async def parse(self, path: str, timeout_s: float) -> ParseResult:
        if self._proc is None:
            await self._start()
        assert self._proc is not None and self._proc.stdin is not None and self._out
        try:
            await self._proc.stdin.send(json.dumps({"path": path}).encode() + b"\n")
            with anyio.fail_after(timeout_s):
                line = await self._out.receive_until(b"\n", MAX_ANSWER_BYTES)
        except TimeoutError:
            stack = await self._stack_of_hung_parser()
            await self.kill()
            return ParseResult(path, None, error=hang_error(path, timeout_s, stack))
        except (anyio.EndOfStream, anyio.IncompleteRead, anyio.BrokenResourceError,
                anyio.ClosedResourceError):
            code = await self.kill(exiting=True)
            return ParseResult(path, None, error=f"{path}: the parser process died while "
                               f"importing this file (exit code {code})")
        data = json.loads(line)
        return ParseResult(
            path=data["path"],
            sha1=data["sha1"],
            dag_ids=tuple(d["dag_id"] for d in data["dags"]),
            error=data["error"],
        )

    async def _stack_of_hung_parser(self) -> str:
        """Ask the hung parser for its Python stack (SIGUSR1, see dag_parse_worker)."""
        proc, stack_file = self._proc, self._stack_file
        if proc is None or stack_file is None or proc.returncode is not None:
            return ""
        proc.send_signal(signal.SIGUSR1)
        text = ""
        with anyio.move_on_after(STACK_DUMP_WAIT_S):
            while "most recent call first" not in text or not text.endswith("\n"):  # noqa: ASYNC110 - the child writes a file
                await anyio.sleep(0.02)
                text = await anyio.Path(stack_file).read_text(errors="replace")
        return text

    async def kill(self, *, exiting: bool = False) -> int | None:
        """Stop the process (SIGKILL) and return its exit code. `exiting`: it closed its
        output because it is dying; let it finish first, so its own exit code is kept
        (signalling makes Popen reap it behind asyncio's child watcher, which then only
        knows 255)."""
        proc, self._proc, self._out = self._proc, None, None
        stack_file, self._stack_file = self._stack_file, None
        if stack_file is not None:
            with contextlib.suppress(OSError):
                os.unlink(stack_file)
        if proc is None:
            return None
        with anyio.CancelScope(shield=True):
            if exiting:
                with anyio.move_on_after(2):
                    await proc.wait()
            if proc.returncode is None:
                proc.kill()
            with anyio.move_on_after(5):
                await proc.wait()
            await proc.aclose()
        return proc.returncode


class DagProcessor:
    """Parses the DAG files of `folder` into a DagBag and keeps it up to date (see the
    module doc). An async context manager: leaving it stops its parser processes."""

    def __init__(
        self,
        folder: str | os.PathLike[str],
        *,
        processes: int = DEFAULT_PARSE_PROCESSES,
        timeout_s: float = DEFAULT_PARSE_TIMEOUT_S,
    ) -> None:
        self.folder = Path(folder).resolve()
        self.timeout_s = timeout_s
        self._workers = [_ParserProcess() for _ in range(max(1, processes))]
        self._lock = anyio.Lock()
        self._seen: dict[str, tuple[int, int]] = {}  # file -> (mtime_ns, size) when parsed
        self._import_limiter = anyio.CapacityLimiter(1)
        self.parses = 0  # files parsed by a parser process (for tests and stats)

    async def __aenter__(self) -> DagProcessor:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        for worker in self._workers:
            await worker.kill()

    # -- parsing --------------------------------------------------------------------------
    async def parse_files(self, paths: Iterable[str]) -> list[ParseResult]:
        """Parse files in the parser processes, several at once; in the order given."""
        todo = list(paths)
        results: dict[str, ParseResult] = {}
        feed: Iterator[str] = iter(todo)

        async def drain(worker: _ParserProcess) -> None:
            for path in feed:
                results[path] = await worker.parse(path, self.timeout_s)
                self.parses += 1

        async with anyio.create_task_group() as tg:
            for worker in self._workers[: len(todo)]:
                tg.start_soon(drain, worker)
        return [results[p] for p in todo]

    async def load(self, bag: DagBag) -> BagChange:
        """Parse every file of the folder into `bag` (the first load)."""
        files = await anyio.to_thread.run_sync(dag_files, self.folder)
        return await self.refresh(bag, [str(p) for p in files], [])

    async def refresh(
        self, bag: DagBag, changed: Iterable[str], deleted: Iterable[str]
    ) -> BagChange:
        """Parse `changed` files again and drop `deleted` ones (files or folders)."""
        async with self._lock:
            change = BagChange()
            for gone in deleted:
                prefix = gone.rstrip(os.sep) + os.sep
                for path in [f for f in bag.files if f == gone or f.startswith(prefix)]:
                    change.removed.update(bag.files.pop(path, []))
                for path in [f for f in bag.import_errors if f == gone or f.startswith(prefix)]:
                    del bag.import_errors[path]
                for path in [f for f in self._seen if f == gone or f.startswith(prefix)]:
                    del self._seen[path]
            for dag_id in change.removed:
                bag.dags.pop(dag_id, None)
            todo = list(dict.fromkeys(changed))
            for _ in range(3):  # a file saved again between its parse and its import
                if not todo:
                    break
                for path, st in zip(
                    todo, await anyio.to_thread.run_sync(_stats, todo), strict=True
                ):
                    self._seen[path] = st
                results = await self.parse_files(todo)
                todo = []
                for result in results:
                    if not await self._apply(bag, result, change):
                        todo.append(result.path)
            change.removed -= set(bag.dags)
            return change

    async def _apply(self, bag: DagBag, result: ParseResult, change: BagChange) -> bool:
        """Import a cleanly parsed file here and put its DAGs into `bag`; record an error
        otherwise. False if the file changed since it was parsed."""
        path = result.path
        if result.error is not None:
            bag.import_errors[path] = result.error
            log.warning("DAG file failed to import: %s", result.error.splitlines()[0])
            return True  # its last good DAGs, if any, stay loaded
        try:
            source = await anyio.to_thread.run_sync(Path(path).read_bytes)
        except OSError:
            return True  # deleted meanwhile: the watcher reports it
        if hashlib.sha1(source).hexdigest() != result.sha1:
            return False
        try:
            dags = await anyio.to_thread.run_sync(
                _import_and_validate, Path(path), source, limiter=self._import_limiter
            )
        except Exception as exc:  # noqa: BLE001 - a user file may raise anything
            bag.import_errors[path] = describe_import_error(Path(path), exc)
            return True
        except SystemExit as exc:
            bag.import_errors[path] = f"{path}: the file called sys.exit({exc.code})"
            return True
        old = bag.files.pop(path, [])
        for dag_id in old:
            bag.dags.pop(dag_id, None)
        error = None
        for dag in dags:
            other = bag.dags.get(dag.dag_id)
            if other is not None:
                error = (f"{path}: DAG id {dag.dag_id!r} is already defined in "
                         f"{other.fileloc}")
                continue
            bag.dags[dag.dag_id] = dag
            bag.files.setdefault(path, []).append(dag.dag_id)
            change.loaded.add(dag.dag_id)
        change.removed.update(set(old) - {d.dag_id for d in dags})
        if error is not None:
            bag.import_errors[path] = error
        else:
            bag.import_errors.pop(path, None)
        return True

    # -- watching ---------------------------------------------------------------------------
    async def watch(
        self,
        bag: DagBag,
        on_change: Callable[[BagChange], Awaitable[None]],
        *,
        task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        """Follow the folder until cancelled, refreshing `bag` and calling `on_change`
        after each change (also for a change that only added or cleared import errors)."""
        from watchfiles._rust_notify import RustNotify  # the engine of watchfiles.awatch

        limiter = anyio.CapacityLimiter(1)  # our own thread, not a token of the default pool
        stop = threading.Event()
        notifier = await anyio.to_thread.run_sync(
            lambda: RustNotify([str(self.folder)], False, False, 300, True, True),
            limiter=limiter,
        )
        try:
            task_status.started()
            # Anything saved between the first load and the notifier being armed:
            changed, deleted = await anyio.to_thread.run_sync(self._rescan)
            if changed or deleted:
                await on_change(await self.refresh(bag, changed, deleted))
            while True:
                raw = await anyio.to_thread.run_sync(
                    notifier.watch, WATCH_DEBOUNCE_MS, WATCH_STEP_MS, WATCH_TIMEOUT_MS, stop,
                    limiter=limiter, abandon_on_cancel=True,
                )
                if not isinstance(raw, set):
                    continue  # "timeout"
                changed, deleted = await anyio.to_thread.run_sync(self._classify, raw)
                if changed or deleted:
                    await on_change(await self.refresh(bag, changed, deleted))
        finally:
            stop.set()  # an abandoned watch() returns within a step

    def _classify(self, raw: set[tuple[int, str]]) -> tuple[list[str], list[str]]:
        changed: list[str] = []
        deleted: list[str] = []
        for kind, path in sorted(raw, key=lambda c: c[1]):
            p = Path(path)
            if kind == _DELETED and not p.exists():
                deleted.append(path)
            elif p.is_file() and _is_dag_file(self.folder, p):
                changed.append(path)
            elif p.is_dir() and _is_dag_file(self.folder, p / "x.py"):
                changed.extend(str(f) for f in dag_files(p))  # a folder moved in
        return list(dict.fromkeys(changed)), deleted

    def _rescan(self) -> tuple[list[str], list[str]]:
        """Files whose (mtime, size) differ from when they were parsed, and files gone."""
        now = {str(p) for p in dag_files(self.folder)}
        changed = [p for p in sorted(now) if self._seen.get(p) != _stat(p)]
        deleted = [p for p in self._seen if p not in now]
        return changed, deleted


def hang_error(path: str, timeout_s: float, stack: str) -> str:
    """The import error of a file that hung: 'file:line: timed out ...' (the line of the
    file where it hung, when the parser's stack dump names it) and the dump's frames."""
    frames = [ln.strip() for ln in stack.splitlines() if ln.strip().startswith("File ")]
    line = None
    for frame in frames:  # most recent call first: the innermost frame of the file
        if frame.startswith(f'File "{path}", line '):
            line = frame.split(", line ", 1)[1].split()[0]
            break
    where = f"{path}:{line}" if line else path
    head = f"{where}: timed out after {timeout_s:g}s while importing (the parser process was killed)"
    own = f'File "{Path(__file__).parent}{os.sep}'  # the loader's frames are noise
    shown = [f for f in frames if "<frozen " not in f and not f.startswith(own)]
    if not shown:
        return head
    return head + "\nStack when it was stopped (most recent call first):\n" + "\n".join(
        f"  {f}" for f in shown
    )


def _stats(paths: list[str]) -> list[tuple[int, int]]:
    return [_stat(p) for p in paths]


def _stat(path: str) -> tuple[int, int]:
    try:
        st = os.stat(path)
    except OSError:
        return (-1, -1)
    return (st.st_mtime_ns, st.st_size)


def _is_dag_file(folder: Path, path: Path) -> bool:
    """The rule of dag_files(): .py, no hidden or private name on the way from `folder`."""
    if folder.is_file():
        return path == folder
    try:
        parts = path.relative_to(folder).parts
    except ValueError:
        return False
    return (
        bool(parts)
        and parts[-1].endswith(".py")
        and not any(part.startswith((".", "_")) for part in parts)
    )


def _import_and_validate(path: Path, source: bytes) -> list[DAG]:
    dags = load_source(path, source)
    for dag in dags:
        dag.validate()
    return dags

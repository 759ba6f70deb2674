"""Per-try task logs, routed by context.

Many tasks run concurrently in one process, so a task's output is routed through a
context variable that holds its `TaskLog`: the logging handler and the stdout/stderr
proxies write to the log of whichever task is running in the current context (asyncio
tasks and anyio worker threads each carry their own copy of the context). The value can
also be a `TaskLogRouter`, which finds the log from the running asyncio task (the
triggerer's parked triggers).

A log file is created on its first write, so a silent task costs no file I/O. Writes are
small appends to a buffered file, flushed per line: microseconds, not a blocking wait.
"""

from __future__ import annotations

import contextvars
import io
import logging
import os
import sys
import threading
import traceback
from typing import Any, TextIO

from aflow.secrets import masking

_current: contextvars.ContextVar[TaskLog | TaskLogRouter | None] = contextvars.ContextVar(
    "aflow_task_log", default=None
)

_FORMAT = logging.Formatter(
    "[%(asctime)s] {%(name)s} %(levelname)s - %(message)s", datefmt="%Y-%m-%dT%H:%M:%S%z"
)


def log_path(
    base: str | os.PathLike[str],
    dag_id: str,
    run_id: str,
    task_id: str,
    try_number: int,
    map_index: int = -1,
) -> str:
    """Airflow's layout: dag_id=…/run_id=…/task_id=…/[map_index=…/]attempt=N.log"""
    mapped = f"/map_index={map_index}" if map_index >= 0 else ""
    return (
        f"{os.fspath(base)}/dag_id={dag_id}/run_id={run_id}/task_id={task_id}"
        f"{mapped}/attempt={try_number}.log"
    )


_WRITE_LOCK = threading.Lock()
"""Serializes writes to task logs (thread-run tasks write from worker threads). One lock
for all: a write is a short buffered call, and a lock per log would cost more memory than
the log itself while 100,000 deferred tasks each hold an unopened one."""


class TaskLog:
    """The log of one try of one task instance."""

    __slots__ = ("_file", "path")

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        self._file: TextIO | None = None

    def write(self, text: str) -> None:
        if not text:
            return
        if masking._ordered:  # a secret is known: it never reaches the file
            text = masking.mask(text)
        with _WRITE_LOCK:
            if self._file is None:
                os.makedirs(os.path.dirname(self.path), exist_ok=True)
                self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115
            self._file.write(text)
            if "\n" in text:
                self._file.flush()

    def write_line(self, text: str) -> None:
        self.write(text if text.endswith("\n") else text + "\n")

    def active(self) -> TaskLog | None:
        """The log that what is written now goes to (see TaskLogRouter)."""
        return self

    def exception(self, exc: BaseException, header: str = "Task failed with exception") -> None:
        lines = traceback.format_exception(exc)
        self.write_line(header + "\n" + "".join(lines).rstrip("\n"))

    def ensure_file(self) -> None:
        """Create the (possibly empty) file now, e.g. for a child process to append to."""
        self.write("")
        with _WRITE_LOCK:
            if self._file is None:
                os.makedirs(os.path.dirname(self.path), exist_ok=True)
                self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115
            self._file.flush()

    def close(self) -> None:
        with _WRITE_LOCK:
            if self._file is not None:
                self._file.close()
                self._file = None


class TaskLogRouter:
    """A context value that stands for the log of whichever task is running now: set once
    in a context that many tasks copy, instead of a context variable set in each task
    (about 200 B a task: 20 MiB for 100,000 parked triggers)."""

    __slots__ = ()

    def active(self) -> TaskLog | None:
        """The log of the task running now, or None (what it writes is not a task's)."""
        raise NotImplementedError


def current_task_log() -> TaskLog | None:
    log = _current.get()
    return None if log is None else log.active()


def set_task_log(log: TaskLog | TaskLogRouter | None) -> contextvars.Token[TaskLog | TaskLogRouter | None]:
    return _current.set(log)


def reset_task_log(token: contextvars.Token[TaskLog | TaskLogRouter | None]) -> None:
    _current.reset(token)


class _TaskLogHandler(logging.Handler):
    """Sends log records made inside a task's context to that task's log."""

    def emit(self, record: logging.LogRecord) -> None:
        log = current_task_log()
        if log is None:
            return
        try:
            log.write_line(_FORMAT.format(record))
        except Exception:  # noqa: BLE001 - logging must never break the task
            self.handleError(record)


class OutsideTaskFilter(logging.Filter):
    """For console handlers: drop records made inside a task (they go to its log)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return current_task_log() is None


class _StreamProxy(io.TextIOBase):
    """A text stream that stands in for `original` (sys.stdout/sys.stderr), passing on
    everything but what a subclass changes about `write`."""

    def __init__(self, original: TextIO) -> None:
        self.original = original

    def flush(self) -> None:
        self.original.flush()

    def fileno(self) -> int:
        return self.original.fileno()

    def isatty(self) -> bool:
        return self.original.isatty()

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return getattr(self.original, "encoding", "utf-8")

    def __getattr__(self, name: str) -> Any:
        return getattr(self.original, name)


class _RoutingStream(_StreamProxy):
    """Stands in for sys.stdout/sys.stderr: inside a task, writes go to the task's log."""

    def write(self, text: str) -> int:  # type: ignore[override]
        log = current_task_log()
        if log is None:
            return self.original.write(text)
        log.write(text)
        return len(text)

    def flush(self) -> None:
        if current_task_log() is None:
            self.original.flush()


class _Routing:
    """Process-wide install of the handler and stream proxies, reference-counted."""

    def __init__(self) -> None:
        self.users = 0
        self.handler = _TaskLogHandler(level=logging.DEBUG)
        self.saved: tuple[Any, Any] | None = None
        self.saved_level = logging.NOTSET
        self.console: logging.Handler | None = None
        self.lock = threading.Lock()

    def install(self) -> None:
        with self.lock:
            self.users += 1
            if self.users > 1:
                return
            root = logging.getLogger()
            if not root.handlers:
                # Keep what logging's last-resort handler did: warnings outside tasks on stderr.
                self.console = logging.StreamHandler(sys.stderr)
                self.console.setLevel(logging.WARNING)
                self.console.addFilter(OutsideTaskFilter())
                root.addHandler(self.console)
            root.addHandler(self.handler)
            # Tasks' INFO records must reach their logs, as Airflow users expect.
            self.saved_level = root.level
            if root.level > logging.INFO or root.level == logging.NOTSET:
                root.setLevel(logging.INFO)
            self.saved = (sys.stdout, sys.stderr)
            sys.stdout = _RoutingStream(sys.stdout)  # type: ignore[assignment]
            sys.stderr = _RoutingStream(sys.stderr)  # type: ignore[assignment]

    def uninstall(self) -> None:
        with self.lock:
            self.users -= 1
            if self.users > 0:
                return
            root = logging.getLogger()
            root.removeHandler(self.handler)
            if self.console is not None:
                root.removeHandler(self.console)
                self.console = None
            root.setLevel(self.saved_level)
            if self.saved is not None:
                out, err = self.saved
                if isinstance(sys.stdout, _RoutingStream):
                    sys.stdout = out
                if isinstance(sys.stderr, _RoutingStream):
                    sys.stderr = err
                self.saved = None


_routing = _Routing()


def install_log_routing() -> None:
    _routing.install()


def uninstall_log_routing() -> None:
    _routing.uninstall()


def read_log(
    path: str | os.PathLike[str], offset: int = 0, limit: int | None = None
) -> tuple[str, int]:
    """The log text from byte `offset` (at most `limit` bytes), and the offset to go on
    from. A character cut in two at the end (a line being written, or the limit) is left
    for the next read, whole."""
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            data = f.read() if limit is None else f.read(limit)
    except FileNotFoundError:
        return "", offset
    end = _complete_prefix(data) or len(data)  # (a limit under 4 bytes must still advance)
    return data[:end].decode("utf-8", errors="replace"), offset + end


def _complete_prefix(data: bytes) -> int:
    """The length of the longest prefix of `data` that does not end inside a UTF-8
    character."""
    for back in range(1, min(4, len(data)) + 1):
        byte = data[-back]
        if byte < 0x80:
            return len(data)
        if byte >= 0xC0:  # the lead byte of the last character: is it whole?
            need = 2 if byte < 0xE0 else 3 if byte < 0xF0 else 4
            return len(data) if back >= need else len(data) - back
    return len(data)


class MaskingStream(_StreamProxy):
    """In a task child process: sys.stdout/sys.stderr, with known secrets masked before
    the text reaches the log file (the streams write straight to it)."""

    def write(self, text: str) -> int:  # type: ignore[override]
        self.original.write(masking.mask(text))
        return len(text)


def redirect_fds_to(path: str) -> None:
    """In a task child process: send fd 1 and 2 (C-level output too) to the log file."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)

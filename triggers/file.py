"""File triggers: a path or glob exists (optionally: has stopped changing).

`FileTrigger(filepath)` fires `TriggerEvent({"path": first_match})` when a path that
exists matches `filepath` (a path or a glob; `recursive=True` lets `**` span directories, as in
`glob.glob`). With `stable_for_s`, it fires only once the match's size and mtime have not
changed for that long (a file whose mtime is already older than that counts as stable).

Waiting is push-based: all triggers whose pattern lives under one directory share ONE
`DirectoryWatcher` (per `Resources`, keyed by directory and recursiveness). The watcher
runs watchfiles' Rust notifier (inotify on Linux) in a worker thread, so the loop never
blocks, and fans each batch of changes out to the waiters whose path or glob matches;
a woken waiter re-checks the file system, which stays the only source of truth. A waiter
registers first and then checks, and the watcher wakes every waiter once each time it
(re)arms, so a file that appears in between is never missed.

Where watching is impossible (the directory does not exist yet, or the notifier fails,
e.g. the inotify instance limit is reached), the watcher polls, once per directory for
all its waiters, with a backoff from `POLL_START_S` up to the smallest `poke_interval`
of its waiters, and arms the notifier as soon as it can. A watcher with no waiters stops
its thread and releases its notifier.

The watched directory is the deepest directory of `filepath` without glob characters: a
plain path watches its parent; `/d/*.csv` watches `/d`; `/d/*/x.csv` or `/d/**/x.csv`
(with `recursive=True`) watch `/d` recursively.

A match is any existing path, as `os.path.exists` (and aflow's FileSensor in poke mode)
sees it: a file, or a directory (Airflow's FileTrigger wants a directory to hold files).
"""

from __future__ import annotations

import fnmatch
import glob
import logging
import math
import os
import re
import stat
import time
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from typing import Any

import anyio
import anyio.to_thread
from watchfiles import Change
from watchfiles._rust_notify import RustNotify  # the engine of watchfiles.awatch

from triggers.base import BaseTrigger, TriggerEvent, classpath_of
from triggers.shared import Resources, current_resources
from triggers.temporal import Wakeup

log = logging.getLogger(__name__)

WATCH_DEBOUNCE_MS = 50
"""Longest time the notifier groups a burst of changes before handing them over."""
WATCH_STEP_MS = 20
"""The notifier hands changes over after one quiet step: a new file is seen in about two
steps (well under 100 ms). Each watched directory's thread wakes once per step (about
0.07 % of a core at 20 ms)."""
WATCH_TIMEOUT_MS = 1000
"""How often an idle watcher returns to check that its directory is still the same one."""
POLL_START_S = 0.05
"""First polling interval when watching is impossible; doubles up to the poke_interval."""

_MAGIC = re.compile(r"[*?[]")
_DELETED = int(Change.deleted)

Match = tuple[str, int, int]  # (path, size, mtime_ns)


@dataclass(frozen=True, slots=True)
class PathSpec:
    """What one FileTrigger waits for, resolved against the current directory."""

    pattern: str  # absolute path or glob
    recursive: bool  # glob's recursive flag (`**` spans directories)
    directory: str  # the directory to watch
    watch_recursive: bool
    exact: bool  # no glob characters: the pattern is one path
    regex: re.Pattern[str] | None = field(default=None, compare=False)
    prefixes: tuple[re.Pattern[str], ...] = field(default=(), compare=False)

    @classmethod
    def parse(cls, filepath: str, recursive: bool) -> PathSpec:
        path = os.path.abspath(filepath)
        parts = path.split(os.sep)
        first = next((i for i, part in enumerate(parts) if _MAGIC.search(part)), None)
        if first is None:
            return cls(path, recursive, os.path.dirname(path), False, True)
        directory = os.sep.join(parts[:first]) or os.sep
        rest = parts[first:]
        watch_recursive = len(rest) > 1 or (recursive and any("**" in part for part in rest))
        # fnmatch's `*` also matches `/`, so these regexes match a superset of what glob
        # finds: a wake-up hint; glob itself decides.
        regex = re.compile(fnmatch.translate(path))
        prefixes = tuple(
            re.compile(fnmatch.translate(os.sep.join(parts[:k])))
            for k in range(first + 1, len(parts))
        )
        return cls(path, recursive, directory, watch_recursive, False, regex, prefixes)

    def may_concern(self, changed: str) -> bool:
        """Whether a change at `changed` may create or alter a match (for glob specs)."""
        if self.exact:
            return changed == self.pattern
        assert self.regex is not None
        if self.regex.match(changed):
            return True
        # a directory on the way to a match (created, or moved in with its files)
        return any(prefix.match(changed) for prefix in self.prefixes)

    def scan_exact(self) -> list[Match]:
        try:
            st = os.stat(self.pattern)
        except (OSError, ValueError):
            return []
        return [(self.pattern, st.st_size, st.st_mtime_ns)]

    def scan_glob(self) -> list[Match]:
        found: list[Match] = []
        for path in sorted(glob.glob(self.pattern, recursive=self.recursive)):
            try:
                st = os.stat(path)
            except OSError:  # gone since, or a dangling symlink
                continue
            found.append((path, st.st_size, st.st_mtime_ns))
        return found

    async def scan(self) -> list[Match]:
        """Existing paths that match, sorted by path. A plain path costs one stat on the
        loop; a glob lists directories, so it runs in a worker thread."""
        if self.exact:
            return self.scan_exact()
        return await anyio.to_thread.run_sync(self.scan_glob)


class FileWaiter:
    """One FileTrigger's registration with a DirectoryWatcher."""

    __slots__ = ("spec", "poke_interval", "_wakeup")

    def __init__(self, spec: PathSpec, poke_interval: float) -> None:
        self.spec = spec
        self.poke_interval = poke_interval
        self._wakeup = Wakeup()

    def wake(self) -> None:
        self._wakeup.set()

    async def wait(self, timeout: float | None = None) -> None:  # noqa: ASYNC109
        """Until woken (or `timeout` seconds); a wake-up that came before this call counts."""
        try:
            if timeout is None:  # the common case: no cancel scope (memory, x100,000 waiters)
                await self._wakeup.wait()
            else:
                with anyio.move_on_after(timeout):
                    await self._wakeup.wait()
        finally:
            self._wakeup = Wakeup()


def _remove(index: dict[Any, list[FileWaiter]], key: Any, waiter: FileWaiter) -> bool:
    waiters = index.get(key)
    if waiters is None or waiter not in waiters:
        return False
    waiters.remove(waiter)
    if not waiters:
        del index[key]
    return True


def _identity(directory: str) -> tuple[int, int] | None:
    try:
        st = os.stat(directory)
    except (OSError, ValueError):
        return None
    return (st.st_dev, st.st_ino) if stat.S_ISDIR(st.st_mode) else None


def _open_notifier(directory: str, recursive: bool) -> RustNotify:
    # (paths, debug, force_polling, poll_delay_ms, recursive, ignore_permission_denied)
    return RustNotify([directory], False, False, 300, recursive, True)


class DirectoryWatcher:
    """One notifier for one directory, shared by every FileTrigger waiting under it.

    `mode` is "idle" (no waiters: no thread, no notifier), "starting", "watch" (armed),
    "poll" (the directory exists but cannot be watched) or "missing" (it does not exist
    yet; polled with backoff until it does).
    """

    def __init__(self, resources: Resources, directory: str, recursive: bool) -> None:
        self.directory = directory
        self.recursive = recursive
        self._resources = resources
        self._exact: dict[str, list[FileWaiter]] = {}
        self._globs: dict[PathSpec, list[FileWaiter]] = {}
        self._count = 0
        self._poll_cap = math.inf
        self._stop: anyio.Event | None = None
        self._generation = 0
        self._closed = False
        self.mode = "idle"
        self.arms = 0  # how many times a notifier was armed (for tests and health)

    @classmethod
    async def shared(cls, directory: str, recursive: bool, resources: Resources | None = None
                     ) -> DirectoryWatcher:
        """The watcher of `directory` in `resources` (default: the current ones)."""
        resources = resources if resources is not None else current_resources()
        registry = await _registry(resources)  # first: Resources.get does not nest

        async def create(res: Resources) -> DirectoryWatcher:
            watcher = cls(res, directory, recursive)
            res.push_async_callback(watcher.aclose)
            registry[(directory, recursive)] = watcher
            return watcher

        return await resources.get((cls, directory, recursive), create)

    def __len__(self) -> int:
        """Registered waiters."""
        return self._count

    # -- waiters -----------------------------------------------------------------------

    def register(self, waiter: FileWaiter) -> None:
        spec = waiter.spec
        if spec.exact:
            self._exact.setdefault(spec.pattern, []).append(waiter)
        else:
            self._globs.setdefault(spec, []).append(waiter)
        self._count += 1
        self._poll_cap = min(self._poll_cap, waiter.poke_interval)
        if self._stop is None and not self._closed:
            self._start()

    def unregister(self, waiter: FileWaiter) -> None:
        """Forget `waiter` (no-op if it is not registered); the last one stops the watch."""
        spec = waiter.spec
        if spec.exact:
            removed = _remove(self._exact, spec.pattern, waiter)
        else:
            removed = _remove(self._globs, spec, waiter)
        if not removed:
            return
        self._count -= 1
        if self._count == 0:
            self._poll_cap = math.inf
            if self._stop is not None:
                self._stop.set()
                self._stop = None
                self.mode = "idle"

    def _all_waiters(self) -> Iterable[FileWaiter]:
        for waiters in self._exact.values():
            yield from waiters
        for waiters in self._globs.values():
            yield from waiters

    def _wake_all(self) -> None:
        for waiter in self._all_waiters():
            waiter.wake()

    def _dispatch(self, changes: set[tuple[int, str]]) -> None:
        paths = {path for _, path in changes}
        if self._exact:
            for path in paths:
                for waiter in self._exact.get(path, ()):
                    waiter.wake()
        for spec, waiters in self._globs.items():
            if any(spec.may_concern(path) for path in paths):
                for waiter in waiters:
                    waiter.wake()

    # -- the background task ---------------------------------------------------------

    def _start(self) -> None:
        self._generation += 1
        self._stop = anyio.Event()
        self.mode = "starting"
        self._resources.task_group.start_soon(
            self._run, self._generation, self._stop, name=f"triggers.file.watch {self.directory}"
        )

    def _set_mode(self, generation: int, mode: str) -> None:
        if generation == self._generation and self._stop is not None:
            self.mode = mode

    async def aclose(self) -> None:
        """Stop for good (the resources are closing): the notifier thread returns within
        one step."""
        self._closed = True
        if self._stop is not None:
            self._stop.set()
            self._stop = None
        self.mode = "idle"

    async def _run(self, generation: int, stop: anyio.Event) -> None:
        limiter = anyio.CapacityLimiter(1)  # our own thread: not a token of the default pool
        backoff = POLL_START_S
        warned = False
        while not stop.is_set():
            identity = _identity(self.directory)
            notifier: RustNotify | None = None
            if identity is not None:
                try:
                    notifier = await anyio.to_thread.run_sync(
                        _open_notifier, self.directory, self.recursive, limiter=limiter
                    )
                except Exception as exc:  # any failure means: poll instead
                    if not warned:
                        log.warning("cannot watch %s (%s); polling it", self.directory, exc)
                        warned = True
            if notifier is not None:
                try:
                    failed = await self._watch(generation, stop, notifier, identity, limiter)
                finally:
                    notifier.close()
                if not failed:
                    backoff = POLL_START_S
                    continue
            elif identity is not None:
                self._set_mode(generation, "poll")
                self._wake_all()  # waiters re-check on every poll
            else:
                self._set_mode(generation, "missing")  # nothing can match until it exists
            with anyio.move_on_after(backoff):
                await stop.wait()
            backoff = min(backoff * 2, max(self._poll_cap, POLL_START_S))

    async def _watch(
        self,
        generation: int,
        stop: anyio.Event,
        notifier: RustNotify,
        identity: tuple[int, int] | None,
        limiter: anyio.CapacityLimiter,
    ) -> bool:
        """Deliver changes until stopped or the directory is replaced or removed (then
        False: re-arm at once) or the notifier fails (then True: back off first)."""
        if stop.is_set():  # stopped while the notifier was being made
            return False
        self._set_mode(generation, "watch")
        self.arms += 1
        self._wake_all()  # armed now: whatever appeared before is found by a re-check
        while not stop.is_set():
            try:
                raw = await anyio.to_thread.run_sync(
                    notifier.watch, WATCH_DEBOUNCE_MS, WATCH_STEP_MS, WATCH_TIMEOUT_MS, stop,
                    limiter=limiter,
                )
            except Exception as exc:
                log.warning("watching %s failed (%s); re-arming", self.directory, exc)
                self._wake_all()
                return True
            if isinstance(raw, set):
                self._dispatch(raw)
                if any(c == _DELETED and path == self.directory for c, path in raw):
                    break  # the directory itself was removed (its inode may come back)
            elif raw == "stop":
                break
            if _identity(self.directory) != identity:
                break  # removed or replaced: re-arm on the new one, or poll for it
        return False


async def _registry(resources: Resources) -> dict[tuple[str, bool], DirectoryWatcher]:
    async def create(_: Resources) -> dict[tuple[str, bool], DirectoryWatcher]:
        return {}

    return await resources.get("triggers.file.watchers", create)


async def directory_watchers(resources: Resources | None = None) -> list[DirectoryWatcher]:
    """Every DirectoryWatcher made in `resources` (default: the current ones)."""
    resources = resources if resources is not None else current_resources()
    return list((await _registry(resources)).values())


class FileTrigger(BaseTrigger):
    """Fire `TriggerEvent({"path": first_match})` when an existing path matches `filepath`.

    `filepath` is a path or a glob (relative paths resolve against the triggerer's
    current directory); `recursive` lets `**` span directories; `poke_interval` bounds the
    polling backoff used only where the directory cannot be watched; `stable_for_s`, if
    set, waits until the match's size and mtime have not changed for that many seconds.
    """

    def __init__(
        self,
        filepath: str,
        recursive: bool = False,
        poke_interval: float = 5.0,
        stable_for_s: float | None = None,
        ignore: list[str] | None = None,
    ) -> None:
        super().__init__()
        if ignore is not None and (
            not isinstance(ignore, list) or not all(isinstance(p, str) for p in ignore)
        ):
            raise ValueError(f"FileTrigger: ignore must be a list of paths, not {ignore!r}")
        if not isinstance(filepath, str) or not filepath:
            raise ValueError("FileTrigger: filepath must be a non-empty string")
        if isinstance(poke_interval, bool) or not isinstance(poke_interval, int | float) \
                or not poke_interval > 0:
            raise ValueError(f"FileTrigger: poke_interval must be > 0, not {poke_interval!r}")
        if stable_for_s is not None and (
            isinstance(stable_for_s, bool) or not isinstance(stable_for_s, int | float)
            or not stable_for_s >= 0
        ):
            raise ValueError(f"FileTrigger: stable_for_s must be >= 0, not {stable_for_s!r}")
        self.filepath = filepath
        self.recursive = bool(recursive)
        self.poke_interval = float(poke_interval)
        self.stable_for_s = None if stable_for_s is None else float(stable_for_s)
        # (empty tuples are shared: a parked sensor's trigger allocates nothing for these)
        self.ignore: tuple[str, ...] = tuple(sorted(set(ignore))) if ignore else ()
        self._ignored_present: tuple[str, ...] = ()  # of `ignore`, those the last scan found
        self._registration: tuple[DirectoryWatcher, FileWaiter] | None = None

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return classpath_of(FileTrigger), {
            "filepath": self.filepath,
            "recursive": self.recursive,
            "poke_interval": self.poke_interval,
            "stable_for_s": self.stable_for_s,
            **({"ignore": list(self.ignore)} if self.ignore else {}),
        }

    def next_watch(self, payload: Any) -> BaseTrigger | None:
        """Watching an asset: wait for a match other than the ones reported already and
        still there (a reported file that is removed and lands again is new again)."""
        path = payload.get("path") if isinstance(payload, dict) else None
        if not isinstance(path, str):
            return None
        _, kwargs = self.serialize()
        kwargs["ignore"] = sorted({*self._ignored_present, path})
        return FileTrigger(**kwargs)

    async def run(self) -> AsyncIterator[TriggerEvent]:
        spec = PathSpec.parse(self.filepath, self.recursive)
        watcher = await DirectoryWatcher.shared(spec.directory, spec.watch_recursive)
        waiter = FileWaiter(spec, self.poke_interval)
        watcher.register(waiter)  # before the first check, so no change falls in between
        self._registration = (watcher, waiter)
        try:
            path = await self._wait_for_match(spec, waiter)
        finally:
            self._unregister()
        yield TriggerEvent({"path": path})

    async def _wait_for_match(self, spec: PathSpec, waiter: FileWaiter) -> str:
        stable_for = self.stable_for_s
        seen: dict[str, tuple[int, int, float]] = {}  # path -> (size, mtime_ns, stable since)
        ignore = set(self.ignore) if self.ignore else None  # (a set per watcher, not per sensor)
        while True:
            matches = await spec.scan()
            if ignore:  # reported before: ignored while it stays; gone, it is new again
                ignore &= {m[0] for m in matches}
                self._ignored_present = tuple(sorted(ignore))
                matches = [m for m in matches if m[0] not in ignore]
            timeout: float | None = None
            if matches:
                if stable_for is None:
                    return matches[0][0]
                now, wall = anyio.current_time(), time.time()
                current: dict[str, tuple[int, int, float]] = {}
                for path, size, mtime_ns in matches:
                    before = seen.get(path)
                    if before is not None and before[:2] == (size, mtime_ns):
                        since = before[2]
                    else:  # new or changed: stable since its last modification at best
                        since = now - min(max(wall - mtime_ns / 1e9, 0.0), stable_for)
                    current[path] = (size, mtime_ns, since)
                seen = current
                for path, _, _ in matches:
                    if now - seen[path][2] >= stable_for:
                        return path
                timeout = max(min(since + stable_for - now for _, _, since in seen.values()), 0.0)
            await waiter.wait(timeout)

    def _unregister(self) -> None:
        if self._registration is not None:
            watcher, waiter = self._registration
            self._registration = None
            watcher.unregister(waiter)

    async def cleanup(self) -> None:
        self._unregister()

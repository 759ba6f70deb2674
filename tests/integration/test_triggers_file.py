"""FileTrigger against real files in tmp_path, with the real watchfiles notifier (inotify).

No mocks and no wall-clock assertions: every wait has an anyio.fail_after deadline.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import anyio
import pytest

from triggers.base import BaseTrigger, TriggerEvent, check_kwargs, load_trigger
from triggers.file import DirectoryWatcher, FileTrigger, PathSpec, directory_watchers
from triggers.shared import Resources, default_resources

pytestmark = pytest.mark.anyio


async def until(condition: Callable[[], bool], timeout: float = 10.0) -> None:  # noqa: ASYNC109
    with anyio.fail_after(timeout):
        while not condition():  # noqa: ASYNC110 - polls bookkeeping that has no event
            await anyio.sleep(0.005)


async def first_event(trigger: BaseTrigger) -> TriggerEvent:
    try:
        async for event in trigger.run():
            return event
    finally:
        await trigger.cleanup()
    raise AssertionError("run() ended without an event")


class Running:
    """Triggers running in a task group; their events by trigger."""

    def __init__(self, tg: anyio.abc.TaskGroup) -> None:
        self.tg = tg
        self.events: dict[int, TriggerEvent] = {}

    def start(self, trigger: BaseTrigger) -> BaseTrigger:
        async def run() -> None:
            try:
                async for event in trigger.run():
                    self.events[id(trigger)] = event
                    return
            finally:
                await trigger.cleanup()

        self.tg.start_soon(run)
        return trigger

    async def event(self, trigger: BaseTrigger, timeout: float = 10.0) -> TriggerEvent:  # noqa: ASYNC109
        await until(lambda: id(trigger) in self.events, timeout)
        return self.events[id(trigger)]


async def watcher_for(resources: Resources, filepath: str, recursive: bool = False
                      ) -> DirectoryWatcher:
    spec = PathSpec.parse(filepath, recursive)
    return await DirectoryWatcher.shared(spec.directory, spec.watch_recursive, resources)


async def test_a_file_created_after_the_trigger_started_fires(tmp_path: Path) -> None:
    target = tmp_path / "landing" / "data.csv"
    target.parent.mkdir()
    async with default_resources() as resources, anyio.create_task_group() as tg:
        running = Running(tg)
        trigger = running.start(FileTrigger(str(target)))
        watcher = await watcher_for(resources, str(target))
        await until(lambda: len(watcher) == 1 and watcher.mode == "watch")
        target.write_text("a,b\n")
        event = await running.event(trigger)
        assert event == TriggerEvent({"path": str(target)})
        assert watcher.mode == "idle" and len(watcher) == 0
        assert watcher.arms == 1  # seen through the notifier, not by polling


async def test_an_existing_file_fires_at_once(tmp_path: Path) -> None:
    target = tmp_path / "ready.txt"
    target.write_text("x")
    async with default_resources():
        with anyio.fail_after(5):
            event = await first_event(FileTrigger(str(target)))
    assert event.payload == {"path": str(target)}


async def test_a_directory_counts_as_existing_like_the_poke_mode(tmp_path: Path) -> None:
    target = tmp_path / "partition=2024-06-01"
    async with default_resources() as resources, anyio.create_task_group() as tg:
        running = Running(tg)
        trigger = running.start(FileTrigger(str(target)))
        watcher = await watcher_for(resources, str(target))
        await until(lambda: len(watcher) == 1 and watcher.mode == "watch")
        target.mkdir()
        assert (await running.event(trigger)).payload == {"path": str(target)}


async def test_relative_paths_and_globs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "notes.txt").write_text("not a csv")
    async with default_resources() as resources, anyio.create_task_group() as tg:
        running = Running(tg)
        trigger = running.start(FileTrigger("in/*.csv"))
        watcher = await watcher_for(resources, "in/*.csv")
        assert watcher.directory == str(tmp_path / "in") and not watcher.recursive
        await until(lambda: len(watcher) == 1 and watcher.mode == "watch")
        (tmp_path / "in" / "other.json").write_text("{}")
        (tmp_path / "in" / "b.csv").write_text("1")
        event = await running.event(trigger)
        assert event.payload == {"path": str(tmp_path / "in" / "b.csv")}


async def test_a_recursive_glob_sees_new_subdirectories(tmp_path: Path) -> None:
    pattern = str(tmp_path / "drop" / "**" / "_SUCCESS")
    (tmp_path / "drop").mkdir()
    async with default_resources() as resources, anyio.create_task_group() as tg:
        running = Running(tg)
        trigger = running.start(FileTrigger(pattern, recursive=True))
        watcher = await watcher_for(resources, pattern, recursive=True)
        assert watcher.recursive
        await until(lambda: len(watcher) == 1 and watcher.mode == "watch")
        deep = tmp_path / "drop" / "2024" / "06" / "01"
        deep.mkdir(parents=True)
        (deep / "part-0.parquet").write_text("data")
        (deep / "_SUCCESS").write_text("")
        event = await running.event(trigger)
        assert event.payload == {"path": str(deep / "_SUCCESS")}


async def test_a_directory_moved_in_with_its_files_fires(tmp_path: Path) -> None:
    (tmp_path / "staging" / "batch7").mkdir(parents=True)
    (tmp_path / "staging" / "batch7" / "manifest.json").write_text("{}")
    (tmp_path / "landing").mkdir()
    pattern = str(tmp_path / "landing" / "*" / "manifest.json")
    async with default_resources() as resources, anyio.create_task_group() as tg:
        running = Running(tg)
        trigger = running.start(FileTrigger(pattern))
        watcher = await watcher_for(resources, pattern)
        await until(lambda: len(watcher) == 1 and watcher.mode == "watch")
        os.rename(tmp_path / "staging" / "batch7", tmp_path / "landing" / "batch7")
        event = await running.event(trigger)
        assert event.payload == {"path": str(tmp_path / "landing" / "batch7" / "manifest.json")}


async def test_two_hundred_triggers_on_one_directory_share_one_watcher(tmp_path: Path) -> None:
    landing = tmp_path / "landing"
    landing.mkdir()
    async with default_resources() as resources, anyio.create_task_group() as tg:
        running = Running(tg)
        triggers = [running.start(FileTrigger(str(landing / f"f{i:03}.csv"))) for i in range(190)]
        triggers += [running.start(FileTrigger(str(landing / f"g{i:02}_*.csv"))) for i in range(10)]
        watcher = await watcher_for(resources, str(landing / "any"))
        await until(lambda: len(watcher) == 200 and watcher.mode == "watch")
        assert await directory_watchers(resources) == [watcher]
        assert watcher.directory == str(landing)
        for i in range(190):
            (landing / f"f{i:03}.csv").write_text(str(i))
        for i in range(10):
            (landing / f"g{i:02}_x.csv").write_text(str(i))
        for trigger in triggers:
            await running.event(trigger)
        assert {e.payload["path"] for e in running.events.values()} == {
            str(p) for p in landing.iterdir()
        }
        assert len(watcher) == 0 and watcher.mode == "idle"
        assert watcher.arms == 1
        assert await directory_watchers(resources) == [watcher]


async def test_stable_for_waits_until_writes_stop(tmp_path: Path) -> None:
    target = tmp_path / "big.bin"
    async with default_resources() as resources, anyio.create_task_group() as tg:
        running = Running(tg)
        trigger = running.start(FileTrigger(str(target), stable_for_s=0.5))
        watcher = await watcher_for(resources, str(target))
        await until(lambda: len(watcher) == 1 and watcher.mode == "watch")
        writes = 0
        with target.open("wb") as f:
            for _ in range(30):
                f.write(b"x" * 1000)
                f.flush()
                writes += 1
                await anyio.sleep(0.03)
                assert id(trigger) not in running.events, "fired while the file still grew"
        event = await running.event(trigger)
        assert event.payload == {"path": str(target)}
        assert target.stat().st_size == 30_000 and writes == 30


async def test_stable_for_an_old_file_fires_at_once(tmp_path: Path) -> None:
    target = tmp_path / "old.bin"
    target.write_bytes(b"done")
    os.utime(target, (1_000_000_000, 1_000_000_000))  # modified long ago
    async with default_resources():
        with anyio.fail_after(5):
            event = await first_event(FileTrigger(str(target), stable_for_s=3600))
    assert event.payload == {"path": str(target)}


async def test_a_directory_created_later_is_picked_up(tmp_path: Path) -> None:
    later = tmp_path / "later" / "deeper"
    target = later / "x.csv"
    async with default_resources() as resources, anyio.create_task_group() as tg:
        running = Running(tg)
        trigger = running.start(FileTrigger(str(target), poke_interval=0.2))
        watcher = await watcher_for(resources, str(target))
        await until(lambda: len(watcher) == 1 and watcher.mode == "missing")
        later.mkdir(parents=True)
        target.write_text("1")  # at once: the re-check after arming finds it
        event = await running.event(trigger)
        assert event.payload == {"path": str(target)}

        # and then the watch itself: a second file after the directory was picked up
        second = later / "y.csv"
        trigger2 = running.start(FileTrigger(str(second), poke_interval=0.2))
        await until(lambda: len(watcher) == 1 and watcher.mode == "watch")
        second.write_text("2")
        assert (await running.event(trigger2)).payload == {"path": str(second)}


async def test_a_replaced_directory_is_watched_again(tmp_path: Path) -> None:
    folder = tmp_path / "spool"
    folder.mkdir()
    target = folder / "job.done"
    async with default_resources() as resources, anyio.create_task_group() as tg:
        running = Running(tg)
        trigger = running.start(FileTrigger(str(target), poke_interval=0.2))
        watcher = await watcher_for(resources, str(target))
        await until(lambda: len(watcher) == 1 and watcher.mode == "watch")
        arms = watcher.arms
        folder.rmdir()
        folder.mkdir()
        await until(lambda: watcher.arms > arms and watcher.mode == "watch")
        target.write_text("ok")
        assert (await running.event(trigger)).payload == {"path": str(target)}


async def test_cleanup_removes_waiters_and_stops_the_watch(tmp_path: Path) -> None:
    async with default_resources() as resources:
        async with anyio.create_task_group() as tg:
            running = Running(tg)
            triggers = [running.start(FileTrigger(str(tmp_path / f"never{i}"))) for i in range(50)]
            triggers.append(running.start(FileTrigger(str(tmp_path / "never*.csv"))))
            watcher = await watcher_for(resources, str(tmp_path / "x"))
            await until(lambda: len(watcher) == 51 and watcher.mode == "watch")
            tg.cancel_scope.cancel()
        assert len(watcher) == 0 and watcher.mode == "idle"
        for trigger in triggers:
            await trigger.cleanup()  # idempotent
        assert len(watcher) == 0

        # cleanup() alone (a trigger handed to another triggerer) releases its waiter too
        trigger = FileTrigger(str(tmp_path / "never.txt"))
        agen = trigger.run()
        async with anyio.create_task_group() as tg:

            async def step() -> None:
                await agen.__anext__()

            tg.start_soon(step)
            await until(lambda: len(watcher) == 1)
            await trigger.cleanup()
            assert len(watcher) == 0 and watcher.mode == "idle"
            tg.cancel_scope.cancel()
        await agen.aclose()
        assert len(watcher) == 0


async def test_resources_close_promptly_with_an_armed_watch(tmp_path: Path) -> None:
    with anyio.fail_after(5):  # the notifier thread is told to stop, not waited out
        async with default_resources() as resources, anyio.create_task_group() as tg:
            running = Running(tg)
            running.start(FileTrigger(str(tmp_path / "never")))
            watcher = await watcher_for(resources, str(tmp_path / "never"))
            await until(lambda: watcher.mode == "watch")
            tg.cancel_scope.cancel()


def test_serialize_round_trip_and_validation() -> None:
    trigger = FileTrigger("/data/in/**/*.csv", recursive=True, poke_interval=2, stable_for_s=10)
    classpath, kwargs = trigger.serialize()
    assert classpath == "triggers.file.FileTrigger"
    assert kwargs == {
        "filepath": "/data/in/**/*.csv", "recursive": True, "poke_interval": 2.0,
        "stable_for_s": 10.0,
    }
    rebuilt = load_trigger(classpath, json.loads(check_kwargs(classpath, kwargs)))
    assert isinstance(rebuilt, FileTrigger) and rebuilt.serialize() == (classpath, kwargs)
    assert FileTrigger("/x").serialize()[1] == {
        "filepath": "/x", "recursive": False, "poke_interval": 5.0, "stable_for_s": None,
    }
    with pytest.raises(ValueError, match="filepath"):
        FileTrigger("")
    with pytest.raises(ValueError, match="poke_interval"):
        FileTrigger("/x", poke_interval=0)
    with pytest.raises(ValueError, match="stable_for_s"):
        FileTrigger("/x", stable_for_s=-1)


def test_watched_directory_of_a_pattern() -> None:
    assert PathSpec.parse("/d/x.csv", False).directory == "/d"
    spec = PathSpec.parse("/d/*.csv", False)
    assert (spec.directory, spec.watch_recursive, spec.exact) == ("/d", False, False)
    spec = PathSpec.parse("/d/sub/*/x.csv", False)
    assert (spec.directory, spec.watch_recursive) == ("/d/sub", True)
    spec = PathSpec.parse("/d/**", True)
    assert (spec.directory, spec.watch_recursive) == ("/d", True)
    assert PathSpec.parse("/d/**", False).watch_recursive is False

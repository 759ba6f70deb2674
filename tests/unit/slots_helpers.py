"""What the Slots unit tests share: holders of pool slots, and tries that wait on their
own gate and count themselves under every key they name while they run."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import anyio
import anyio.lowlevel


class Holder:
    def __init__(self) -> None:
        self.pool_hold: Any = None


async def until(predicate: Any) -> None:
    with anyio.fail_after(10):
        while not predicate():  # noqa: ASYNC110 - polls in-memory state
            await anyio.lowlevel.checkpoint()


class Tracker:
    def __init__(self) -> None:
        self.now: dict[str, int] = defaultdict(int)
        self.peak: dict[str, int] = defaultdict(int)
        self.started: list[str] = []
        self.gates: dict[str, anyio.Event] = defaultdict(anyio.Event)
        self.done = 0

    def start(self, name: str, *keys: str, slots: int = 1, keep: bool = False) -> Any:
        """A try named `name` that counts `slots` under each of `keys` while it runs;
        it returns `keep` (whether it keeps its pool slots, as a deferred TI may)."""

        async def run() -> bool:
            self.started.append(name)
            for key in keys:
                self.now[key] += slots
                self.peak[key] = max(self.peak[key], self.now[key])
            await self.gates[name].wait()
            for key in keys:
                self.now[key] -= slots
            self.done += 1
            return keep

        return run

    async def release_in_turn(self, *steps: tuple[str, list[str]]) -> None:
        """For each (name, started): let `name` end, wait until as many tries have started
        as `started` lists, and check they are those, in that order."""
        for done, expected in steps:
            self.gates[done].set()
            await until(lambda: len(self.started) == len(expected))  # noqa: B023
            assert self.started == expected

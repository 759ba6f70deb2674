"""FileSensor: wait for a file (or a glob) to exist. Deferrable by default: the
triggerer's FileTrigger wakes on inotify through one shared watcher per directory."""

from __future__ import annotations

import glob
import os
from collections.abc import Sequence
from typing import Any

from aflow.authoring.baseoperator import loop_safe
from aflow.authoring.sensors.base import BaseSensorOperator, PokeReturnValue


class FileSensor(BaseSensorOperator):
    template_fields: Sequence[str] = ("filepath",)
    ui_color = "#91818a"

    def __init__(
        self,
        *,
        filepath: str,
        recursive: bool = False,
        stable_for_s: float | None = None,
        deferrable: bool = True,
        **kwargs: Any,
    ) -> None:
        self.filepath = filepath
        self.recursive = recursive
        self.stable_for_s = stable_for_s
        kwargs.setdefault("poke_interval", 5.0)
        super().__init__(deferrable=deferrable, **kwargs)

    def matches(self) -> list[str]:
        if glob.has_magic(self.filepath):
            return sorted(glob.glob(self.filepath, recursive=self.recursive))
        return [self.filepath] if os.path.exists(self.filepath) else []

    def poke(self, context: dict[str, Any]) -> PokeReturnValue:
        found = self.matches()
        return PokeReturnValue(bool(found), {"path": found[0]} if found else None)

    @loop_safe
    def trigger_for(self, context: dict[str, Any]) -> Any:
        from triggers.file import FileTrigger

        return FileTrigger(
            filepath=self.filepath,
            recursive=self.recursive,
            poke_interval=self.poke_interval,
            stable_for_s=self.stable_for_s,
        )

    @loop_safe
    def execute_complete(self, context: dict[str, Any], event: Any = None) -> Any:
        return event

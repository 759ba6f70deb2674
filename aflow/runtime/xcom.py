"""XCom values: JSON only (no pickle), checked when pushed, read from the run's view."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

from aflow.exceptions import XComValueError

RETURN_KEY = "return_value"


def check_json(value: Any, *, task_id: str, key: str) -> Any:
    """Return `value` as it will read back from the store (a JSON round trip), or raise
    XComValueError naming the task, the key and the offending type."""
    kind = type(value)
    if kind is int or kind is str or kind is bool or value is None:
        return value  # reads back as it is (the common case: no round trip)
    try:
        return json.loads(json.dumps(value, allow_nan=False))
    except (TypeError, ValueError) as exc:
        raise XComValueError(
            f"task {task_id!r}: XCom {key!r} is not JSON-serializable "
            f"({type(value).__name__}: {exc}); aflow stores XCom as JSON and never pickles — "
            "return plain data (dict, list, str, int, float, bool, None)"
        ) from None


class XComView:
    """The committed XComs of one run: (task_id, map_index) -> {key: value}. A mapped
    task's values read as one list (map-index order) at map index -1, as Airflow's."""

    def __init__(self, values: Mapping[tuple[str, int], dict[str, Any]] | None = None) -> None:
        self._values: dict[tuple[str, int], dict[str, Any]] = {
            k: dict(v) for k, v in (values or {}).items()
        }
        self._mapped: dict[str, int] = {}  # mapped task id -> its number of instances

    def set_mapped(self, task_id: str, length: int | None) -> None:
        """`task_id` is mapped into `length` instances (None: no longer expanded)."""
        if length is None:
            self._mapped.pop(task_id, None)
        else:
            self._mapped[task_id] = length

    @property
    def mapped(self) -> dict[str, int]:
        return dict(self._mapped)

    def set_task(self, task_id: str, map_index: int, values: Mapping[str, Any]) -> None:
        """Replace everything the TI pushed (a new successful try replaces older values)."""
        if values:
            self._values[(task_id, map_index)] = dict(values)
        else:
            self._values.pop((task_id, map_index), None)

    def set_one(self, task_id: str, map_index: int, key: str, value: Any) -> None:
        self._values.setdefault((task_id, map_index), {})[key] = value

    def get(
        self, task_id: str, key: str = RETURN_KEY, map_index: int = -1, default: Any = None
    ) -> Any:
        if map_index == -1 and task_id in self._mapped:
            return self.collected(task_id, key)
        return self._values.get((task_id, map_index), {}).get(key, default)

    def collected(self, task_id: str, key: str = RETURN_KEY) -> list[Any]:
        """The values a mapped task's instances pushed under `key`, in map-index order
        (an instance that pushed none is left out)."""
        out: list[Any] = []
        values = self._values
        for i in range(self._mapped.get(task_id, 0)):
            pushed = values.get((task_id, i))
            if pushed is not None and key in pushed:
                out.append(pushed[key])
        return out

    def as_list(self, without: str | None = None) -> list[list[Any]]:
        """Every value as [task_id, map_index, key, value] (those of task `without` left
        out: a mapped task's instance is sent its run's XComs, not its siblings')."""
        return [[t, m, k, v] for (t, m), kv in self._values.items() if t != without
                for k, v in kv.items()]

    @classmethod
    def from_list(cls, rows: Iterable[list[Any]], mapped: Mapping[str, int] | None = None) -> XComView:
        view = cls()
        for t, m, k, v in rows:
            view.set_one(t, m, k, v)
        for task_id, length in (mapped or {}).items():
            view.set_mapped(task_id, length)
        return view

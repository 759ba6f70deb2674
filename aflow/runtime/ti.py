"""The `ti` that task code sees in its context: identity, try number and XCom access."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from datetime import datetime
from typing import Any

from aflow.runtime.xcom import RETURN_KEY, XComView, check_json

log = logging.getLogger("aflow.task")


class RuntimeTaskInstance:
    def __init__(
        self,
        *,
        dag_id: str,
        run_id: str,
        task_id: str,
        map_index: int,
        try_number: int,
        max_tries: int,
        start_date: datetime | None,
        hostname: str,
        xcoms: XComView,
        upstream_task_ids: Iterable[str] = (),
        log_url: str | None = None,
    ) -> None:
        self.dag_id = dag_id
        self.run_id = run_id
        self.task_id = task_id
        self.map_index = map_index
        self.try_number = try_number
        self.max_tries = max_tries
        self.start_date = start_date
        self.hostname = hostname
        self.state = "running"
        self.log = log
        self.log_url = log_url
        self._xcoms = xcoms
        self._upstream = upstream_task_ids
        self.pushed: dict[str, Any] = {}

    def xcom_push(self, key: str, value: Any) -> None:
        """Push a JSON value; it is committed with the task's success (not on failure)."""
        if not isinstance(key, str) or not key:
            raise ValueError("XCom key must be a non-empty string")
        self.pushed[key] = check_json(value, task_id=self.task_id, key=key)

    def xcom_pull(
        self,
        task_ids: str | Iterable[str] | None = None,
        key: str = RETURN_KEY,
        default: Any = None,
        map_indexes: int | None = None,
    ) -> Any:
        """Pull from tasks of this run. A single task id gives its value; a list gives a
        list in the same order; None means this task's upstream tasks (a list)."""
        map_index = -1 if map_indexes is None else map_indexes
        if isinstance(task_ids, str):
            return self._xcoms.get(task_ids, key, map_index, default)
        ids = sorted(self._upstream) if task_ids is None else list(task_ids)
        return [self._xcoms.get(t, key, map_index, default) for t in ids]

    async def axcom_pull(
        self,
        task_ids: str | Iterable[str] | None = None,
        key: str = RETURN_KEY,
        default: Any = None,
        map_indexes: int | None = None,
    ) -> Any:
        """Async form; XComs of the run are already in memory, so this never blocks."""
        return self.xcom_pull(task_ids, key, default, map_indexes)

    def __repr__(self) -> str:
        return f"<TaskInstance {self.dag_id}.{self.task_id} {self.run_id} try {self.try_number}>"

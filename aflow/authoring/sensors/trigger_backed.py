"""Sensors whose condition is a trigger's: in deferrable mode the triggerer runs the
trigger; in poke and reschedule modes each poke runs the same trigger for one check.
The same code decides in every mode, so the modes cannot disagree."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import anyio

from aflow.authoring.baseoperator import loop_safe
from aflow.authoring.sensors.base import BaseSensorOperator, PokeReturnValue
from aflow.runtime.services import connection_uri
from triggers.shared import Resources, use_resources


class TriggerBackedSensor(BaseSensorOperator):
    """Subclasses implement `trigger_for(context)`; the sensor's XCom is the event payload."""

    #: how long one poke lets the trigger make its first check
    first_check_s: float = 30.0

    async def poke(self, context: dict[str, Any]) -> PokeReturnValue:
        trigger = self.trigger_for(context)
        # Connection ids resolve as in the triggerer (AFLOW_CONN_<ID>, backends, the store).
        async with Resources(resolve_connection=connection_uri) as resources:
            with use_resources(resources):
                events = trigger.run()
                try:
                    with anyio.move_on_after(self.first_check_s):
                        async for event in events:
                            return PokeReturnValue(True, event.payload)
                finally:
                    await events.aclose()
                    await trigger.cleanup()
        return PokeReturnValue(False)

    @loop_safe
    def execute_complete(self, context: dict[str, Any], event: Any = None) -> Any:
        return event


class HttpSensor(TriggerBackedSensor):
    """Wait until an HTTP endpoint answers with an expected status and, optionally, a
    JSON value at `json_path` equal to `json_equals` or a body matching `body_regex`.
    `http_conn_id` names an aflow Connection (AFLOW_CONN_<ID> or the store) whose secrets
    stay out of the trigger row. The XCom is {"status", "body"}."""

    template_fields: Sequence[str] = ("endpoint", "url", "headers", "json_equals")
    ui_color = "#f4a460"

    def __init__(
        self,
        *,
        url: str | None = None,
        http_conn_id: str | None = None,
        endpoint: str = "",
        method: str = "GET",
        headers: dict[str, str] | None = None,
        expected_status: int | list[int] = 200,
        json_path: str | None = None,
        json_equals: Any = None,
        body_regex: str | None = None,
        request_timeout_s: float = 10.0,
        deferrable: bool = True,
        **kwargs: Any,
    ) -> None:
        self.url = url
        self.http_conn_id = http_conn_id
        self.endpoint = endpoint
        self.method = method
        self.headers = headers
        self.expected_status = expected_status
        self.json_path = json_path
        self.json_equals = json_equals
        self.body_regex = body_regex
        self.request_timeout_s = request_timeout_s
        kwargs.setdefault("poke_interval", 30.0)
        super().__init__(deferrable=deferrable, **kwargs)
        self.first_check_s = request_timeout_s + 1.0

    @loop_safe
    def trigger_for(self, context: dict[str, Any]) -> Any:
        from triggers.http import HttpTrigger

        return HttpTrigger(
            self.url,
            conn_id=self.http_conn_id,
            endpoint=self.endpoint,
            method=self.method,
            headers=self.headers,
            expected_status=self.expected_status,
            json_path=self.json_path,
            json_equals=self.json_equals,
            body_regex=self.body_regex,
            poke_interval=self.poke_interval,
            timeout_s=self.request_timeout_s,
        )


class SqlSensor(TriggerBackedSensor):
    """Wait until the first cell of `sql`'s first row is truthy, on SQLite or PostgreSQL
    (`conn_id` names an aflow Connection: AFLOW_CONN_<ID> or the store; or give `dsn`).
    Parameters are bound, never formatted into the SQL. With `listen_channel` (PostgreSQL), the wait
    wakes on NOTIFY instead of polling. The XCom is {"value": first_cell}."""

    template_fields: Sequence[str] = ("sql", "parameters")
    ui_color = "#7c7287"

    def __init__(
        self,
        *,
        sql: str,
        conn_id: str | None = None,
        dsn: str | None = None,
        parameters: list[Any] | dict[str, Any] | None = None,
        listen_channel: str | None = None,
        deferrable: bool = True,
        **kwargs: Any,
    ) -> None:
        self.sql = sql
        self.conn_id = conn_id
        self.dsn = dsn
        self.parameters = parameters
        self.listen_channel = listen_channel
        kwargs.setdefault("poke_interval", 30.0)
        super().__init__(deferrable=deferrable, **kwargs)
        self.first_check_s = 10.0

    @loop_safe
    def trigger_for(self, context: dict[str, Any]) -> Any:
        from triggers.sql import SqlTrigger

        return SqlTrigger(
            self.sql,
            dsn=self.dsn,
            conn_id=self.conn_id,
            parameters=self.parameters,
            poke_interval=self.poke_interval,
            listen_channel=self.listen_channel if self.deferrable else None,
        )

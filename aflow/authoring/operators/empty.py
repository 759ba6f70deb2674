"""EmptyOperator: does nothing; useful as a join or a start marker."""

from __future__ import annotations

from typing import Any

from aflow.authoring.baseoperator import BaseOperator


class EmptyOperator(BaseOperator):
    ui_color = "#e8f7e4"

    async def execute(self, context: dict[str, Any]) -> None:
        return None

"""`a >> b` and `a << b` for anything with set_downstream/set_upstream: tasks, task
groups and XComArgs (and lists of them on the other side, through the reflected forms)."""

from __future__ import annotations

from typing import Any, Self


class Linkable:
    def set_downstream(self, other: Any) -> None:
        raise NotImplementedError

    def set_upstream(self, other: Any) -> None:
        raise NotImplementedError

    def __rshift__(self, other: Any) -> Any:
        self.set_downstream(other)
        return other

    def __lshift__(self, other: Any) -> Any:
        self.set_upstream(other)
        return other

    def __rrshift__(self, other: Any) -> Self:
        self.set_upstream(other)
        return self

    def __rlshift__(self, other: Any) -> Self:
        self.set_downstream(other)
        return self

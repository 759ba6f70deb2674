"""The public API is exactly what `aflow.__all__` lists, sorted, and every name imports."""

from __future__ import annotations

import aflow


def test_all_is_sorted_and_complete() -> None:
    assert aflow.__all__ == sorted(aflow.__all__)
    public = {
        name
        for name, value in vars(aflow).items()
        if not name.startswith("_") and not isinstance(value, type(aflow))
    }
    assert public == set(aflow.__all__)


def test_every_name_resolves() -> None:
    for name in aflow.__all__:
        assert getattr(aflow, name) is not None

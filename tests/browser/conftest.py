"""Browser tests: the real UI in headless Chromium (Debian's `chromium` package, driven by
Playwright). Screenshots are kept in test-artifacts/ (or $AFLOW_TEST_ARTIFACTS)."""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

ARTIFACTS = Path(os.environ.get("AFLOW_TEST_ARTIFACTS", Path(__file__).parents[2] / "test-artifacts"))


def chromium_path() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


@pytest.fixture
async def browser() -> AsyncIterator[Any]:
    path = chromium_path()
    if path is None:
        message = ("no Chromium: install Debian's `chromium` package "
                   "(tests/install_browser.sh does it)")
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    from playwright.async_api import async_playwright

    async with async_playwright() as p:
        b = await p.chromium.launch(executable_path=path, args=["--no-sandbox"])
        try:
            yield b
        finally:
            await b.close()


@pytest.fixture
def shots(request: pytest.FixtureRequest) -> Any:
    """`await shots(page, "name")` saves a full-page screenshot for this test."""
    folder = ARTIFACTS / request.node.name
    folder.mkdir(parents=True, exist_ok=True)
    count = [0]

    async def take(page: Any, name: str) -> Path:
        count[0] += 1
        path = folder / f"{count[0]:02d}-{name}.png"
        await page.screenshot(path=str(path), full_page=True)
        return path

    return take

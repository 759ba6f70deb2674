"""ruff runs with the suite, so CI fails on lint errors (rules in pyproject.toml)."""

from __future__ import annotations

import shutil
import subprocess
import sys

from tests.conftest import REPO


def test_ruff_finds_nothing() -> None:
    ruff = shutil.which("ruff", path=str(REPO / ".venv" / "bin")) or shutil.which("ruff")
    cmd = [ruff, "check", "."] if ruff else [sys.executable, "-m", "ruff", "check", "."]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr

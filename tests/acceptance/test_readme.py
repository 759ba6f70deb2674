"""The README's embedding snippet runs as written."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO

MARKER = "# readme-embed-example"


def readme_snippet() -> str:
    text = (REPO / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    matching = [b for b in blocks if b.startswith(MARKER)]
    assert len(matching) == 1, "the README must have exactly one embedding example"
    return matching[0]


def test_embedding_snippet_runs(tmp_path: Path) -> None:
    script = tmp_path / "embed.py"
    script.write_text(readme_snippet())
    proc = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "success {'greet': 'success', 'shout': 'success'}"
    assert (tmp_path / "hello.db").exists()


def test_readme_quickstart_commands_match_ci() -> None:
    text = (REPO / "README.md").read_text()
    ci = (REPO / ".ci" / "run").read_text()
    test_cmd = ci.strip().splitlines()[-1]
    assert test_cmd in text, "the README's test command must be the one .ci/run runs"

"""The README's quick start (examples/quickstart.py) runs as written, on the backend under test."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import shared

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "quickstart.py"


def test_quickstart_runs_and_executes_the_order_once() -> None:
    env = {**os.environ, "SHARED_BACKEND": shared.BACKEND}
    done = subprocess.run(
        [sys.executable, str(EXAMPLE)], capture_output=True, text=True, timeout=60, env=env
    )
    assert done.returncode == 0, done.stderr
    assert "order filled, replayed equal: True, executions: 1" in done.stdout


def test_the_readme_shows_the_quickstart_as_it_is() -> None:
    readme = (EXAMPLE.parents[1] / "README.md").read_text()
    body = EXAMPLE.read_text().split('"""', 2)[2].strip()
    assert body in readme

"""The public API: what each package exports is exactly what the README's
"Public API" section lists, and the typed API passes ``mypy --strict`` as users
would write it (``tests/typing/public_api.py``)."""

from __future__ import annotations

import importlib
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.backend_independent

ROOT = Path(__file__).resolve().parent.parent
MODULES = (
    "shared",
    "shared.resilience",
    "shared.resilience.idempotency",
    "shared.health",
    "shared.lifecycle",
    "shared.observability",
    "shared.config",
    "shared.testing",
)


def documented_api() -> dict[str, set[str]]:
    """``{module: names}`` from the README's "Public API" section."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("\n## Public API\n", 1)[1].split("\n## ", 1)[0]
    items: list[str] = []
    for line in section.splitlines():
        if line.startswith("- `"):
            items.append(line[2:])
        elif line.startswith("  ") and items:
            items[-1] += " " + line.strip()
    api: dict[str, set[str]] = {}
    for item in items:
        module, _, names = item.partition(":")
        api[module.strip("`")] = set(re.findall(r"`([^`]+)`", names))
    return api


def test_the_readme_lists_every_public_module() -> None:
    assert set(documented_api()) == set(MODULES)


@pytest.mark.parametrize("module", MODULES)
def test_all_is_exactly_the_documented_api(module: str) -> None:
    exported = importlib.import_module(module).__all__
    assert len(exported) == len(set(exported)), f"{module}.__all__ repeats a name"
    assert set(exported) == documented_api()[module]
    mod = importlib.import_module(module)
    assert all(hasattr(mod, name) for name in exported)


def test_the_public_api_type_checks_strictly() -> None:
    """``assert_type`` in the file fails on ``Any``, so this proves users get
    real types (an ``Any`` base class would type every call as ``Any``)."""
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy",
            "--strict",
            "--no-incremental",
            "--config-file",
            str(ROOT / "pyproject.toml"),
            str(ROOT / "tests" / "typing" / "public_api.py"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Success: no issues found in 1 source file" in result.stdout

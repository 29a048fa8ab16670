"""``__version__`` has one source: Cargo.toml, through the package metadata."""

from __future__ import annotations

import importlib.metadata
import tomllib
from pathlib import Path

import pytest

import shared
from shared import _version
from shared._backend import core

pytestmark = pytest.mark.backend_independent

CARGO_TOML = Path(__file__).resolve().parent.parent / "Cargo.toml"


def test_the_version_is_the_installed_metadata() -> None:
    assert shared.__version__ == importlib.metadata.version("shared")
    assert shared.__version__ == shared.backend_info()["version"] == core.__version__


def test_the_metadata_comes_from_cargo_toml() -> None:
    if not CARGO_TOML.exists():
        pytest.skip("not a source checkout")
    with CARGO_TOML.open("rb") as file:
        assert tomllib.load(file)["package"]["version"] == shared.__version__


def test_a_source_checkout_that_was_never_installed_reads_cargo_toml(tmp_path: Path) -> None:
    cargo = tmp_path / "Cargo.toml"
    cargo.write_text('[package]\nname = "shared"\nversion = "9.8.7"\n', encoding="utf-8")
    missing = "shared-not-installed-anywhere"
    assert _version.find_version(missing, cargo) == "9.8.7"
    assert _version.find_version(missing, tmp_path / "absent.toml") == "0+unknown"
    cargo.write_text("not toml [", encoding="utf-8")
    assert _version.find_version(missing, cargo) == "0+unknown"

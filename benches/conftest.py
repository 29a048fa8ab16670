"""Benchmarks: shared on Rust, shared's pure twin, and peers, side by side in one run.

Each benchmark is named ``test_<operation>[<implementation>]`` and grouped by
operation; ``benches/gate.py`` compares medians of the same run by the rules in
``benches/thresholds.toml``. Run with ``make bench`` (full) or ``make bench-ci``.
"""

from __future__ import annotations

import importlib
from types import ModuleType

import pytest


@pytest.fixture(scope="session")
def native() -> ModuleType:
    """The Rust core; benchmarks need it (they compare it against everything else)."""
    return importlib.import_module("shared._native")


@pytest.fixture(scope="session")
def pure() -> ModuleType:
    """The pure-Python twin."""
    return importlib.import_module("shared._pure")

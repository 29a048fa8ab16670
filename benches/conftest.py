"""Benchmarks: shared on Rust, shared's pure twin, and peers, side by side in one run.

Each benchmark is named ``test_<operation>_<implementation>`` and grouped by
operation. The gate (``benches/gate.py``, rules in ``benches/thresholds.toml``)
reads only the paired benchmarks (``bench_paired.py``, the thread and the Redis
paired ones); the others are for pytest-benchmark's tables. Run with ``make
bench`` (full) or ``make bench-ci``.
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

"""Paired rounds of every group the gate judges (``benches/subjects.py``).

One benchmark per group: each round runs every member (shared on Rust, the
pure twin, the peers, the floors) back to back, ``benches/_paired.py`` says how.
The gate's wall-clock rules read the rounds from ``extra_info``; the medians
per call there are the figures ``benches/README.md`` publishes.
"""

from __future__ import annotations

from typing import Any

import pytest

from _paired import run_paired
from subjects import GROUPS


@pytest.mark.parametrize("group", list(GROUPS))
def test_paired(benchmark: Any, group: str) -> None:
    spec = GROUPS[group]
    benchmark.group = f"paired: {group}"
    run_paired(benchmark, spec.build(), spec.timed_ops, in_worker_thread=spec.in_worker_thread)

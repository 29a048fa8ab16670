"""Registry lookup latency at the tail while the table grows and while it evicts.

One benchmark per phase of ``benches/registry_latency.py`` (over 200,000 keys
here; the script defaults to 1,000,000): the whole phase is timed by
pytest-benchmark, and its per-call percentiles (p50, p99, p99.9, max, in ns)
and the bytes per key go to ``extra_info``. No rule of the gate reads them:
tail latency on a shared 2-core host measures the host more than the table.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

import pytest

import registry_latency

KEYS = 200_000


@pytest.fixture(scope="module")
def figures(native: ModuleType) -> dict[str, Any]:
    return registry_latency.measure(KEYS)


@pytest.mark.benchmark(group="registry latency")
@pytest.mark.parametrize("phase", ["grow", "evict", "steady"])
def test_registry_latency_rust(benchmark: Any, figures: dict[str, Any], phase: str) -> None:
    benchmark.extra_info.update(
        {
            "keys": KEYS,
            "percentiles_ns": figures[phase],
            "rss_bytes_per_key": figures["rss_bytes_per_key"],
            "table_bytes_per_key": figures["table_bytes_per_key"],
        }
    )
    # The benchmark itself: one more round of the phase's lookups, timed as a whole.
    registry = figures["registry"]
    held = figures["held"]
    try_acquire = registry.try_acquire

    def lookups() -> int:
        granted = 0
        for key in held:
            granted += try_acquire(key)
        return granted

    assert benchmark(lookups) == len(held)
    assert figures[phase]["lookup"]["p50"] <= figures[phase]["lookup"]["max"]

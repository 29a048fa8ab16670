"""Registry lookup latency while the table grows and while it evicts, and bytes per key.

Usage: python benches/registry_latency.py [--keys N] [--json OUT]

Each call is timed on its own (``time.perf_counter_ns`` around it, minus the
median cost of timing nothing), so the tail shows the calls that paid for a
growth or an eviction. Three phases on the Rust backend:

- **grow**: ``try_acquire(new_key)`` for N new keys (each one inserts, some
  grow the slot segments or start growing the index), each followed by a
  lookup of a random key already held (``try_acquire(old_key)``);
- **evict**: the registry is full (``max_keys = N``); N more new keys, each
  evicting the least recently used one, each followed by a lookup;
- **steady**: N lookups of random held keys (nothing grows or is evicted), the
  reference for the other two.

Percentiles (p50, p99, p99.9, max) are printed per phase and kind of call,
with RSS bytes per key after the grow phase and the table's own reserve
(slots + index) per key.
"""

from __future__ import annotations

import argparse
import array
import gc
import json
import os
import random
import sys
import time
from collections.abc import Callable
from typing import Any

PERCENTILES = (50.0, 99.0, 99.9)


def rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def samples(count: int) -> array.array[int]:
    """Room for ``count`` timings, allocated (and touched) before RSS is read."""
    return array.array("q", bytes(8 * count))


def percentiles(samples: array.array[int]) -> dict[str, float]:
    ordered = sorted(samples)
    result = {
        f"p{p:g}": float(ordered[min(len(ordered) - 1, int(len(ordered) * p / 100))])
        for p in PERCENTILES
    }
    result["max"] = float(ordered[-1])
    return result


def timing_floor(clock: Callable[[], int]) -> int:
    """The median cost of two clock reads around nothing."""
    samples = []
    for _ in range(20_000):
        start = clock()
        samples.append(clock() - start)
    samples.sort()
    return samples[len(samples) // 2]


def measure(keys: int, seed: int = 0) -> dict[str, Any]:
    from shared._native import RateLimiterRegistry
    from shared.resilience import RateLimitConfig

    clock = time.perf_counter_ns
    floor = timing_floor(clock)
    rng = random.Random(seed)
    config = RateLimitConfig(tokens_per_second=1e6, burst_size=1e6)
    registry = RateLimiterRegistry(config, max_keys=keys)
    try_acquire = registry.try_acquire
    names = [f"user_{i}" for i in range(keys)]
    fresh = [f"new_{i}" for i in range(keys)]
    results: dict[str, Any] = {"keys": keys, "timing_floor_ns": floor}
    gc.disable()
    try:
        try_acquire("warm-up")
        registry.remove_limiter("warm-up")
        inserts, lookups = samples(keys), samples(keys)
        picks = [rng.randrange(i + 1) for i in range(keys)]
        before = rss_bytes()
        for i, name in enumerate(names):
            start = clock()
            try_acquire(name)
            inserts[i] = clock() - start - floor
            held = names[picks[i]]
            start = clock()
            try_acquire(held)
            lookups[i] = clock() - start - floor
        results["rss_bytes_per_key"] = (rss_bytes() - before) / keys
        results["table_bytes_per_key"] = registry._table_bytes() / keys
        results["grow"] = {"insert": percentiles(inserts), "lookup": percentiles(lookups)}

        steady = samples(keys)
        for i in range(keys):
            held = names[rng.randrange(keys)]
            start = clock()
            try_acquire(held)
            steady[i] = clock() - start - floor
        results["steady"] = {"lookup": percentiles(steady)}

        for i, name in enumerate(fresh):
            start = clock()
            try_acquire(name)  # evicts the least recently used key
            inserts[i] = clock() - start - floor
            # A key still held: one of the newest (old ones are being evicted).
            held = fresh[i - rng.randrange(min(i + 1, keys // 2))]
            start = clock()
            try_acquire(held)
            lookups[i] = clock() - start - floor
        assert len(registry) == keys
        results["evict"] = {"insert": percentiles(inserts), "lookup": percentiles(lookups)}
        # For benches/bench_registry_latency.py: the registry and 1,000 keys it holds.
        results["registry"] = registry
        results["held"] = fresh[-1000:]
    finally:
        gc.enable()
    return results


def report(results: dict[str, Any]) -> str:
    lines = [
        f"registry latency over {results['keys']:,} keys (ns per call; timing floor"
        f" {results['timing_floor_ns']} ns subtracted)",
        f"{'phase':<8} {'call':<7} " + " ".join(f"{k:>8}" for k in ("p50", "p99", "p99.9", "max")),
    ]
    for phase in ("grow", "evict", "steady"):
        for call, figures in results[phase].items():
            lines.append(
                f"{phase:<8} {call:<7} "
                + " ".join(f"{figures[k]:>8.0f}" for k in ("p50", "p99", "p99.9", "max"))
            )
    lines.append(
        f"bytes per key: {results['rss_bytes_per_key']:.1f} RSS,"
        f" {results['table_bytes_per_key']:.1f} reserved by the table (slots + index)"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keys", type=int, default=1_000_000)
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args(argv)
    results = measure(args.keys)
    print(report(results))
    if args.json:
        figures = {k: v for k, v in results.items() if k not in ("registry", "held")}
        with open(args.json, "w") as out:
            json.dump(figures, out, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())

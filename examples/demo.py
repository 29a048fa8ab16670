"""A small runnable example: which backend the cores use, and the native clock at work.

The demo service of the demo issue replaces this once it exists.
"""

from __future__ import annotations

import json
import time

import shared
from shared import _backend


def main() -> None:
    print(f"shared {shared.__version__} on the {shared.BACKEND} backend")
    print(json.dumps(shared.backend_info(), indent=2))
    n = 200_000
    now_ns = _backend.core.monotonic_ns
    start = time.perf_counter_ns()
    for _ in range(n):
        now_ns()
    per_call = (time.perf_counter_ns() - start) / n
    print(f"{_backend.BACKEND} monotonic_ns(): {per_call:.0f} ns per call over {n:,} calls")
    drift_us = abs(now_ns() - time.monotonic_ns()) / 1e3
    print(f"native and Python monotonic timelines agree within {drift_us:.1f} us")


if __name__ == "__main__":
    main()

"""Time for the pure-Python cores, as ``rust/clock.rs`` gives it to the native ones."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Protocol


class NanosecondClock(Protocol):
    """Anything with ``now_ns()``, such as ``shared.testing.ManualClock``."""

    def now_ns(self) -> int: ...


def monotonic_ns() -> int:
    """The monotonic clock in nanoseconds (the timeline of ``time.monotonic_ns()``)."""
    return time.monotonic_ns()


def time_source(clock: NanosecondClock | None) -> Callable[[], int]:
    """The ``now_ns`` function a core reads: the monotonic clock, or ``clock.now_ns``."""
    if clock is None:
        return time.monotonic_ns
    now_ns = getattr(clock, "now_ns", None)
    if not callable(now_ns):
        raise TypeError(
            "clock must have a now_ns() method (for example shared.testing.ManualClock)"
        )
    return now_ns  # type: ignore[no-any-return]


def secs_to_ns(seconds: float) -> int:
    """Seconds to nanoseconds, truncating and saturating like the native core.

    NaN and values <= 0 give 0.
    """
    if seconds != seconds or seconds <= 0.0:
        return 0
    if seconds >= _U64_MAX / 1e9:
        return _U64_MAX
    return int(seconds * 1e9)


def ns_to_secs(ns: int) -> float:
    """Nanoseconds to seconds."""
    return ns / 1e9


_U64_MAX = 2**64 - 1

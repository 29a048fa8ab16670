"""Helpers for tests, ours and our users'.

``ManualClock`` is a clock that moves only when told to. Pass it as ``clock=``
to a core (circuit breaker, token bucket, limiter registry, ...) and it drives
the Rust core and its pure-Python twin alike: both read ``now_ns()`` from the
same object, so a test advances time for both at once and never sleeps.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import threading
from collections.abc import Iterator

__all__ = ["ManualClock", "instant_retries"]


class ManualClock:
    """A monotonic clock that moves only when told to, in integer nanoseconds.

    Args:
        start: the initial reading in seconds (default 0).

    ``sleep`` and ``sleep_async`` advance the clock instead of waiting, so code
    that takes an injected sleep runs through its waits instantly and exactly.
    Thread-safe.
    """

    __slots__ = ("__weakref__", "_lock", "_now_ns")

    def __init__(self, start: float = 0.0) -> None:
        self._lock = threading.Lock()
        self._now_ns = _to_ns(start, "start")

    def now_ns(self) -> int:
        """The current reading in nanoseconds (what the cores read)."""
        return self._now_ns

    def monotonic(self) -> float:
        """The current reading in seconds, like ``time.monotonic()``."""
        return self._now_ns / 1e9

    def advance(self, seconds: float) -> None:
        """Moves the clock forward by ``seconds`` (>= 0)."""
        delta = _to_ns(seconds, "seconds")
        with self._lock:
            self._now_ns += delta

    def advance_ns(self, nanoseconds: int) -> None:
        """Moves the clock forward by ``nanoseconds`` (an int >= 0)."""
        if not isinstance(nanoseconds, int) or isinstance(nanoseconds, bool) or nanoseconds < 0:
            raise ValueError(f"nanoseconds must be an int >= 0, got {nanoseconds!r}")
        with self._lock:
            self._now_ns += nanoseconds

    def sleep(self, seconds: float) -> None:
        """Advances the clock by ``seconds`` instead of sleeping (an injectable ``sleep``)."""
        self.advance(max(0.0, seconds))

    async def sleep_async(self, seconds: float) -> None:
        """Advances the clock by ``seconds`` and yields to the event loop once."""
        self.advance(max(0.0, seconds))
        await asyncio.sleep(0)

    def __repr__(self) -> str:
        return f"ManualClock(now={self.monotonic():.9f}s)"


def _to_ns(seconds: float, name: str) -> int:
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)):
        raise TypeError(f"{name} must be a number of seconds, got {type(seconds).__name__}")
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"{name} must be a finite number of seconds >= 0, got {seconds!r}")
    return int(seconds * 1e9)


@contextlib.contextmanager
def instant_retries() -> Iterator[list[float]]:
    """Within the block, retries skip their backoff sleeps; yields the delays they would sleep.

    For users' tests of code that uses ``Retry`` or ``@with_retry``: attempts,
    budgets and statistics behave as usual, only the waiting is skipped.
    """
    from shared.resilience.retry import instant_retries as switch

    with switch() as delays:
        yield delays

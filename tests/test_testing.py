"""shared.testing.ManualClock: the one clock both backends read in tests."""

from __future__ import annotations

import asyncio
import math
import threading

import pytest

from shared.testing import ManualClock

pytestmark = pytest.mark.backend_independent


def test_starts_where_told_and_moves_only_when_told() -> None:
    """The reading is the start value until advanced, in ns and in seconds."""
    clock = ManualClock(start=5.0)
    assert clock.now_ns() == 5_000_000_000
    assert clock.now_ns() == 5_000_000_000
    clock.advance(0.25)
    assert clock.now_ns() == 5_250_000_000
    assert clock.monotonic() == pytest.approx(5.25)
    clock.advance_ns(7)
    assert clock.now_ns() == 5_250_000_007


def test_sleep_advances_instead_of_waiting() -> None:
    """sleep() is an injectable sleep that moves time exactly."""
    clock = ManualClock()
    clock.sleep(3.5)
    assert clock.now_ns() == 3_500_000_000
    clock.sleep(-1.0)  # a negative sleep is a no-op, like time.sleep(0)
    assert clock.now_ns() == 3_500_000_000


async def test_sleep_async_advances_and_yields() -> None:
    """sleep_async() advances time and lets other tasks run."""
    clock = ManualClock()
    ran = []

    async def other() -> None:
        ran.append(clock.now_ns())

    task = asyncio.create_task(other())
    await clock.sleep_async(1.0)
    await task
    assert clock.now_ns() == 1_000_000_000
    assert ran == [1_000_000_000]


@pytest.mark.parametrize("bad", [-1.0, math.nan, math.inf])
def test_rejects_bad_seconds(bad: float) -> None:
    """Negative, NaN and infinite values are errors naming the parameter."""
    with pytest.raises(ValueError, match="seconds"):
        ManualClock().advance(bad)
    with pytest.raises(ValueError, match="start"):
        ManualClock(start=bad)


def test_rejects_non_numbers() -> None:
    """A string or bool is a TypeError, not a silent zero."""
    with pytest.raises(TypeError, match="seconds"):
        ManualClock().advance("1")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="start"):
        ManualClock(start=True)
    with pytest.raises(ValueError, match="nanoseconds"):
        ManualClock().advance_ns(-1)


def test_concurrent_advances_add_up() -> None:
    """Advancing from 8 threads loses no nanosecond."""
    clock = ManualClock()

    def worker() -> None:
        for _ in range(10_000):
            clock.advance_ns(1)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert clock.now_ns() == 80_000


def test_time_source_reads_the_manual_clock(pure: object) -> None:
    """The twin's time source reads now_ns() from the clock it is given."""
    from shared._pure.clock import time_source

    clock = ManualClock(start=2.0)
    now = time_source(clock)
    assert now() == 2_000_000_000
    clock.advance(1.0)
    assert now() == 3_000_000_000
    with pytest.raises(TypeError, match="now_ns"):
        time_source(object())  # type: ignore[arg-type]

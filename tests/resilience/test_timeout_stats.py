"""timeout_stats(): every deadline that fires is counted once, wherever it fires."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import threading
import time

import pytest

from shared.resilience import TimeoutContext, TimeoutError, shield, with_timeout
from shared.resilience.timeout import timeout_stats


def spin(seconds: float) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        pass


def fired() -> int:
    return timeout_stats()["fired"]


def test_blocks_that_finish_in_time_count_nothing() -> None:
    before = fired()
    for _ in range(100):
        with TimeoutContext(5.0):
            pass
    assert with_timeout(5.0)(lambda: 1)() == 1
    assert fired() == before


@pytest.mark.skipif(not hasattr(signal, "setitimer"), reason="no SIGALRM on this platform")
def test_main_thread_timeout_counts_once() -> None:
    before = fired()
    with pytest.raises(TimeoutError), TimeoutContext(0.02):
        time.sleep(2.0)
    assert fired() == before + 1


def test_each_kind_of_firing_counts_once() -> None:
    before = fired()

    def worker() -> list[str]:
        seen = []
        try:  # the scheduler interrupts a busy worker
            with TimeoutContext(0.02):
                spin(2.0)
        except TimeoutError:
            seen.append("interrupted")
        try:  # passes inside a shield: fires as the shield ends
            with TimeoutContext(0.02), shield():
                spin(0.05)
        except TimeoutError:
            seen.append("after shield")
        return seen

    result: list[list[str]] = []
    thread = threading.Thread(target=lambda: result.append(worker()))
    thread.start()
    thread.join(10)
    assert result == [["interrupted", "after shield"]]

    async def task() -> None:
        async with TimeoutContext(0.02):
            await asyncio.sleep(2.0)

    with pytest.raises(TimeoutError):
        asyncio.run(task())
    assert fired() == before + 3


def test_counts_from_many_threads_are_not_lost() -> None:
    before = fired()

    @with_timeout(0.005)
    def slow() -> None:
        spin(1.0)

    def worker() -> None:
        for _ in range(5):
            with contextlib.suppress(TimeoutError):
                slow()

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(20)
    assert fired() == before + 20
    stats = timeout_stats()
    assert set(stats) == {"fired", "abandoned"}
    assert all(isinstance(value, int) for value in stats.values())

"""Firing accuracy of a 50 ms deadline (benches/README.md, "Timeout protection").

Three places, 20 blocks each, on the backend SHARED_BACKEND selects:

- the main thread, blocked in ``time.sleep(5)`` (SIGALRM from the scheduler);
- a worker thread, in a Python loop (an asynchronous exception);
- an asyncio task, in ``asyncio.sleep(5)`` (the task is cancelled).

Prints the median and the maximum time from entering the block to catching
``TimeoutError``. Usage: ``SHARED_BACKEND=rust python benches/timeout_accuracy.py``.
"""

from __future__ import annotations

import asyncio
import statistics
import threading
import time
from collections.abc import Callable

import shared
from shared.resilience import TimeoutContext, TimeoutError

SECONDS = 0.05
RUNS = 20


def main_thread_sleep() -> float:
    started = time.perf_counter()
    try:
        with TimeoutContext(SECONDS):
            time.sleep(5)
    except TimeoutError:
        return time.perf_counter() - started
    raise AssertionError("the deadline did not fire")


def worker_loop() -> float:
    elapsed: list[float] = []

    def run() -> None:
        started = time.perf_counter()
        try:
            with TimeoutContext(SECONDS):
                while True:
                    pass
        except TimeoutError:
            elapsed.append(time.perf_counter() - started)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(10)
    return elapsed[0]


def task_sleep() -> float:
    async def run() -> float:
        started = time.perf_counter()
        try:
            async with TimeoutContext(SECONDS):
                await asyncio.sleep(5)
        except TimeoutError:
            return time.perf_counter() - started
        raise AssertionError("the deadline did not fire")

    return asyncio.run(run())


def measure(scenario: Callable[[], float]) -> tuple[float, float]:
    times = [scenario() for _ in range(RUNS)]
    return statistics.median(times) * 1000, max(times) * 1000


def main() -> None:
    print(f"backend: {shared.BACKEND}; a {SECONDS * 1000:g} ms deadline, median (max) of {RUNS}")
    for name, scenario in [
        ("main thread, in time.sleep(5)", main_thread_sleep),
        ("worker thread, in a Python loop", worker_loop),
        ("task, in asyncio.sleep(5)", task_sleep),
    ]:
        median, worst = measure(scenario)
        print(f"{name}: {median:.1f} ms ({worst:.1f})")


if __name__ == "__main__":
    main()

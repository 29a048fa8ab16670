"""Timeout races: deadlines that fall as a block ends, and many threads on one scheduler."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from typing import Any

import pytest

from shared.resilience import TimeoutContext, TimeoutError, _deadlines, with_timeout

SCHEDULER_NAME = "shared-timeout-scheduler"


@pytest.fixture
def fine_switching() -> Any:
    """A 0.1 ms GIL switch interval, so the scheduler thread can act within a 0.8 ms block.

    (A CPU-bound worker holds the GIL for up to the switch interval, 5 ms by default:
    that is the resolution of deadlines in worker threads.)
    """
    previous = sys.getswitchinterval()
    sys.setswitchinterval(0.0001)
    yield
    sys.setswitchinterval(previous)


def spin(seconds: float) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        pass


def run_in_thread(target: Any, *args: Any) -> Any:
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["result"] = target(*args)
        except BaseException as exc:  # handed back to the test's thread
            outcome["error"] = exc

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(20)
    assert not thread.is_alive()
    if "error" in outcome:
        raise outcome["error"]
    return outcome["result"]


def blocks_at_the_edge(rounds: int) -> tuple[int, int]:
    """Runs blocks whose work ends about when their deadline falls; returns the outcomes.

    Every TimeoutError must come out of a ``with`` statement (caught right here),
    be the public class, and nothing may arrive after the last block.
    """
    errors = [
        one_block_at_the_edge(0.0004 + (i % 9) * 0.0002, nested=i % 3 == 0) for i in range(rounds)
    ]
    timeouts = [error for error in errors if error is not None]
    assert {type(error) for error in timeouts} <= {TimeoutError}
    assert {str(error) for error in timeouts} <= {
        "operation timed out after 0.0008 seconds",
        "operation timed out after 0.002 seconds",
    }
    spin(0.03)  # a stale interruption would land here and fail the test
    state = _deadlines._local.state
    assert state.blocks == []
    assert state.armed is None
    assert state.pending is None
    return len(timeouts), rounds - len(timeouts)


def one_block_at_the_edge(work: float, *, nested: bool) -> TimeoutError | None:
    """A block with ``work`` seconds of work and a 0.0008 s deadline; its timeout or None.

    ``nested``: inside an outer 0.002 s block that works on a little after it.
    """
    try:
        if nested:
            with TimeoutContext(seconds=0.002):
                with contextlib.suppress(TimeoutError), TimeoutContext(seconds=0.0008):
                    spin(work)
                spin(work / 2)
        else:
            with TimeoutContext(seconds=0.0008):
                spin(work)
    except TimeoutError as exc:
        return exc
    return None


def test_no_stale_exception_after_blocks_at_the_edge_in_a_worker(fine_switching: None) -> None:
    """Worker: hundreds of blocks ending at their deadline leak nothing after they leave."""
    timed_out, finished = run_in_thread(blocks_at_the_edge, 300)
    assert timed_out + finished == 300
    assert timed_out > 0


def test_no_stale_exception_with_several_busy_workers(fine_switching: None) -> None:
    """Three workers racing their deadlines at once, plus the main thread: nothing leaks."""
    outcomes: list[Any] = []

    def worker() -> None:
        try:
            outcomes.append(blocks_at_the_edge(200))
        except BaseException as exc:  # reported by the assertion below
            outcomes.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(3)]
    for thread in threads:
        thread.start()
    main_outcome = blocks_at_the_edge(200)
    for thread in threads:
        thread.join(20)
    assert [type(outcome) for outcome in outcomes] == [tuple] * 3, outcomes
    assert sum(main_outcome) == 200


@pytest.mark.skipif(not hasattr(signal, "setitimer"), reason="no SIGALRM here")
def test_no_stale_alarm_after_blocks_at_the_edge_on_the_main_thread() -> None:
    """Main thread: the same, and the handler and itimer are back as they were."""
    handler_before = signal.getsignal(signal.SIGALRM)
    timer_before = signal.getitimer(signal.ITIMER_REAL)
    timed_out, finished = blocks_at_the_edge(300)
    assert timed_out + finished == 300
    assert timed_out > 0
    assert signal.getsignal(signal.SIGALRM) is handler_before
    assert abs(signal.getitimer(signal.ITIMER_REAL)[0] - timer_before[0]) < 2.0


def test_decorated_calls_at_the_edge_leak_nothing(fine_switching: None) -> None:
    """The decorator under the same race: results or TimeoutError, then silence."""

    @with_timeout(0.0008)
    def job(work: float) -> str:
        spin(work)
        return "done"

    def one(work: float) -> str:
        try:
            return job(work)
        except TimeoutError:
            return "timeout"

    def many() -> list[str]:
        results = [one(0.0004 + (i % 9) * 0.0002) for i in range(200)]
        spin(0.03)
        return results

    results = run_in_thread(many)
    assert set(results) == {"done", "timeout"}


def test_many_threads_each_with_its_own_deadline() -> None:
    """Eight threads, eight deadlines: each fires at its own time, from one scheduler."""
    results: dict[int, tuple[str, float]] = {}
    barrier = threading.Barrier(8)

    def work(index: int) -> None:
        seconds = 0.02 + index * 0.01
        barrier.wait()
        started = time.monotonic()
        try:
            with TimeoutContext(seconds=seconds):
                spin(5.0)
        except TimeoutError as exc:
            results[index] = (str(exc), time.monotonic() - started)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert sorted(results) == list(range(8))
    for index, (message, elapsed) in results.items():
        seconds = 0.02 + index * 0.01
        assert message == f"operation timed out after {seconds:g} seconds"
        assert seconds * 0.9 <= elapsed < seconds + 1.0
    schedulers = [t for t in threading.enumerate() if t.name == SCHEDULER_NAME]
    assert len(schedulers) == 1


def test_thread_count_does_not_grow_per_call() -> None:
    """Thousands of bounded calls add no thread: one scheduler serves them all."""

    @with_timeout(5.0)
    def fast(x: int) -> int:
        return x + 1

    def calls() -> tuple[int, int, int]:
        fast(0)  # starts the scheduler if this is the first worker-thread block
        before = threading.active_count()
        for i in range(5000):
            fast(i)
        return before, threading.active_count(), len(_deadlines._scheduler.heap)

    before, after, heap_size = run_in_thread(calls)
    assert after == before
    assert heap_size <= 130  # bounded by the live threads, not by the calls
    assert len([t for t in threading.enumerate() if t.name == SCHEDULER_NAME]) == 1


FORK_CHILD_SCRIPT = """
import os, threading, time, warnings
warnings.simplefilter("ignore", DeprecationWarning)  # fork with threads: that is the point
from shared.resilience import TimeoutContext, TimeoutError

def spin(seconds):
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        pass

def bounded(result):
    try:
        with TimeoutContext(seconds=0.05):
            spin(3.0)
    except TimeoutError:
        result.append("timeout")

def in_thread():
    result = []
    thread = threading.Thread(target=bounded, args=(result,))
    thread.start()
    thread.join()
    return result

def fork_inside_a_block(codes):
    # The forking thread is inside a block: the child's copy of it must still time out.
    try:
        with TimeoutContext(seconds=0.2):
            pid = os.fork()
            if pid == 0:
                spin(3.0)
                os._exit(1)
    except TimeoutError:
        os._exit(0)
    _, status = os.waitpid(pid, 0)
    codes.append(os.waitstatus_to_exitcode(status))

assert in_thread() == ["timeout"]  # the parent's scheduler thread is running
pid = os.fork()
if pid == 0:
    os._exit(0 if in_thread() == ["timeout"] else 1)
_, status = os.waitpid(pid, 0)
assert os.waitstatus_to_exitcode(status) == 0, "child of the main thread"
codes = []
thread = threading.Thread(target=fork_inside_a_block, args=(codes,))
thread.start()
thread.join()
assert codes == [0], "child of a thread inside a block"
"""


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork on this platform")
def test_worker_timeouts_work_in_a_forked_child() -> None:
    """After fork the child gets its own scheduler thread and keeps the forking thread's blocks."""
    child = subprocess.run(
        [sys.executable, "-c", FORK_CHILD_SCRIPT], capture_output=True, text=True, timeout=30
    )
    assert child.returncode == 0, child.stderr

"""Timeout races: deadlines that fall as a block ends, and many threads on one scheduler."""

from __future__ import annotations

import contextlib
import gc
import os
import signal
import subprocess
import sys
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import shared
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


def handler_chains(handler: Any) -> bool:
    """The SIGALRM handler is ``handler``, or ours calling ``handler`` for foreign alarms."""
    current = signal.getsignal(signal.SIGALRM)
    return current is handler or getattr(current, "previous", None) is handler


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
    state = _deadlines.current_thread_state()
    assert state.blocks == []
    assert state.earliest_unfired() is None
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


# The pure-Python twin's enter and exit are Python code: when the OS preempts the
# scheduler between its check and its raise, the exception can land inside that
# code. Since threads reach the scheduler without a lock (the scheduler's livelock
# was behind the failures CI showed here), these tests did not fail in 100 separate
# runs on each of CPython 3.11, 3.12 and 3.13 with two CPU-bound processes loading a
# 2-core machine, and failed once in about 20 on 3.13 under heavier load (eight busy
# processes). The native enter/exit closes the window; on the twin it is a known
# limit (README, "Timeout protection"), so a failure there does not fail the run.
pure_twin_window = pytest.mark.xfail(
    shared.BACKEND == "python",
    reason="pure twin: a raise delayed by OS preemption can land in its Python enter/exit",
    strict=False,
)


@pure_twin_window
def test_no_stale_exception_after_blocks_at_the_edge_in_a_worker(fine_switching: None) -> None:
    """Worker: hundreds of blocks ending at their deadline leak nothing after they leave."""
    timed_out, finished = run_in_thread(blocks_at_the_edge, 300)
    assert timed_out + finished == 300
    assert timed_out > 0


@pure_twin_window
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


@pytest.mark.skipif(
    not hasattr(signal, "setitimer"), reason="the platform has no SIGALRM/setitimer (Windows)"
)
def test_no_stale_alarm_after_blocks_at_the_edge_on_the_main_thread() -> None:
    """Main thread: the same; the application's handler is chained and its itimer untouched."""
    handler_before = signal.getsignal(signal.SIGALRM)
    timer_before = signal.getitimer(signal.ITIMER_REAL)[0]
    started = time.monotonic()
    timed_out, finished = blocks_at_the_edge(300)
    elapsed = time.monotonic() - started
    assert timed_out + finished == 300
    assert timed_out > 0
    assert handler_chains(handler_before)
    # The application's itimer (pytest-timeout's, if any) ran on untouched.
    timer_after = signal.getitimer(signal.ITIMER_REAL)[0]
    if timer_before == 0.0:
        assert timer_after == 0.0
    else:
        assert abs((timer_before - timer_after) - elapsed) < 0.5


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
        # Interrupted, well before the 5 s spin ends (firing is slow on a loaded machine).
        assert seconds * 0.9 <= elapsed < seconds + 3.0
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


# -- deadlines that fall where CPython swallows exceptions -----------------------------

CLEANUP_KINDS = ["weakref callback", "__del__", "gc callback"]


@contextlib.contextmanager
def recording_unraisable_hook() -> Iterator[list[Any]]:
    """Makes ``sys.unraisablehook`` record what it gets; puts the previous hook back."""
    recorded: list[Any] = []
    previous = sys.unraisablehook
    sys.unraisablehook = recorded.append
    try:
        yield recorded
    finally:
        sys.unraisablehook = previous


class Referent:
    """Something to hold a weak reference to."""


class SlowToDie:
    """Runs ``cleanup`` in ``__del__``."""

    def __init__(self, cleanup: Callable[[], None]) -> None:
        self.cleanup = cleanup

    def __del__(self) -> None:
        self.cleanup()


class RaisesWhenCollected:
    """``__del__`` raises ValueError: an unraisable that is none of ours."""

    def __del__(self) -> None:
        raise ValueError("not a deadline")


def interrupted_in_cleanup(kind: str, *, nested: bool = False) -> list[str]:
    """A 0.01 s block whose deadline falls in cleanup code CPython runs for it.

    The cleanup (``kind``) spins until something interrupts it (5 s at most);
    then the block spins for up to 2 s itself. Returns what happened, in order.
    ``nested``: inside an outer 5 s block, which must not be the one that fires.
    A round where the deadline fell before the cleanup started (the thread was
    descheduled for 10 ms on a loaded machine) proves nothing: it is run again.
    """
    for _ in range(5):
        events = interrupted_in_cleanup_once(kind, nested=nested)
        if events[:1] == ["cleanup started"]:
            break
    return events


def interrupted_in_cleanup_once(kind: str, *, nested: bool) -> list[str]:
    events: list[str] = []
    inside = [False]

    def cleanup() -> None:
        if not inside[0]:
            return  # the block has already left: nothing for a deadline to interrupt
        events.append("cleanup started")
        spin(5.0)
        events.append("cleanup finished")

    def on_gc(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            cleanup()

    if kind == "gc callback":
        # Earlier tests' garbage out of the way first: finalizers that catch Exception
        # themselves (redis-py's __del__) would swallow the deadline fired again, unseen.
        gc.collect()
    # The cleanup's trigger is ready before the block starts: inside it, one statement.
    referent: Referent | None = Referent()
    reference = weakref.ref(referent, lambda _: cleanup())
    victim: SlowToDie | None = SlowToDie(cleanup)
    if kind != "weakref callback":
        referent = None
    if kind != "__del__":
        victim = None
    started = time.monotonic()
    try:
        outer = TimeoutContext(seconds=5.0) if nested else contextlib.nullcontext()
        with outer, TimeoutContext(seconds=0.01):
            inside[0] = True
            if kind == "weakref callback":
                referent = None
                assert reference() is None
            elif kind == "__del__":
                victim = None
            else:
                gc.callbacks.append(on_gc)
                try:
                    gc.collect()
                finally:
                    gc.callbacks.remove(on_gc)
            events.append("block goes on")
            spin(2.0)
            events.append("block finished")
    except TimeoutError as exc:
        events.append(f"{type(exc).__name__}: {exc}")
    finally:
        inside[0] = False
    # the block spins for 2 s: the bound leaves room for a loaded 2-core host
    assert time.monotonic() - started < 1.6, events
    del referent, victim
    return events


SWALLOWED_THEN_REFIRED = [
    "cleanup started",  # and interrupted: it never finished
    "block goes on",
    "TimeoutError: operation timed out after 0.01 seconds",
]


@pytest.mark.skipif(
    not hasattr(signal, "setitimer"), reason="the platform has no SIGALRM/setitimer (Windows)"
)
@pytest.mark.parametrize("nested", [False, True])
@pytest.mark.parametrize("kind", CLEANUP_KINDS)
def test_deadline_swallowed_in_cleanup_fires_again_on_the_main_thread(
    kind: str, nested: bool
) -> None:
    """Main thread: a deadline lost in a weakref callback, __del__ or gc callback fires again."""
    handler_before = signal.getsignal(signal.SIGALRM)
    with recording_unraisable_hook() as recorded:
        events = interrupted_in_cleanup(kind, nested=nested)
    # The deadline fires again at the main thread's next check after the scheduler sends
    # SIGALRM: in the block's own code, possibly before it appends "block goes on".
    assert events in (
        SWALLOWED_THEN_REFIRED,
        [SWALLOWED_THEN_REFIRED[0], SWALLOWED_THEN_REFIRED[2]],
    )
    assert recorded == []  # our exception was not reported as unraisable
    assert handler_chains(handler_before)
    assert _deadlines._alarm_raised is None or _deadlines._alarm_raised[1].state == 0


@pytest.mark.parametrize("nested", [False, True])
@pytest.mark.parametrize("kind", CLEANUP_KINDS)
def test_deadline_swallowed_in_cleanup_fires_again_in_a_worker(kind: str, nested: bool) -> None:
    """Worker: the scheduler's exception lost in cleanup code is delivered again to the block."""

    def in_worker() -> tuple[list[str], Any]:
        events = interrupted_in_cleanup(kind, nested=nested)
        spin(0.03)  # a second, stale interruption would land here
        return events, _deadlines.current_thread_state().pending

    with recording_unraisable_hook() as recorded:
        events, pending = run_in_thread(in_worker)
    # Fired again at once: in the block's own code, possibly before "block goes on".
    assert events in (
        SWALLOWED_THEN_REFIRED,
        [SWALLOWED_THEN_REFIRED[0], SWALLOWED_THEN_REFIRED[2]],
    )
    assert recorded == []
    assert pending is None


def test_other_unraisables_reach_the_hook_that_was_there_unchanged() -> None:
    """Our hook passes every other unraisable to the hook it wraps, even one set after ours."""
    with recording_unraisable_hook() as first:
        assert run_in_thread(interrupted_in_cleanup, "__del__") == SWALLOWED_THEN_REFIRED
        RaisesWhenCollected()
        with recording_unraisable_hook() as second:  # someone replaces our hook
            RaisesWhenCollected()
            assert run_in_thread(interrupted_in_cleanup, "__del__") == SWALLOWED_THEN_REFIRED
            RaisesWhenCollected()
    for unraisable in [*first, *second]:
        assert type(unraisable.exc_value) is ValueError
        assert str(unraisable.exc_value) == "not a deadline"
        assert unraisable.object is RaisesWhenCollected.__del__
    assert (len(first), len(second)) == (1, 2)

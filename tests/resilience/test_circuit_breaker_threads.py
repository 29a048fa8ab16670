"""CircuitBreaker under threads: exact counts, one probe at a time, calls run in parallel."""

from __future__ import annotations

import contextlib
import random
import threading
import time

import pytest

import shared
from shared.resilience import (
    CircuitBreaker,
    CircuitBreakerConfig,
    CircuitBreakerOpenError,
    CircuitBreakerState,
)
from shared.testing import ManualClock

THREADS = 8
CALLS = 10_000


def run_in_threads(count: int, target: object) -> None:
    barrier = threading.Barrier(count)

    def start() -> None:
        barrier.wait(timeout=10)
        target()  # type: ignore[operator]

    threads = [threading.Thread(target=start) for _ in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not any(t.is_alive() for t in threads)


def test_mixed_calls_from_8_threads_add_up_exactly() -> None:
    """8 threads x 10,000 calls: successes, failures and neutral calls are all counted."""
    breaker = CircuitBreaker(
        "threads",
        CircuitBreakerConfig(failure_threshold=1_000_000, expected_exceptions=(ConnectionError,)),
        registry=None,
    )
    errors = (ConnectionError("down"), KeyError("neutral"))

    def ok() -> int:
        return 1

    def failing(i: int) -> None:
        raise errors[i % 2]

    def worker() -> None:
        for i in range(CALLS):
            if i % 4 == 0:
                with contextlib.suppress(ConnectionError, KeyError):
                    breaker.call(failing, i // 4)
            else:
                breaker.call(ok)

    run_in_threads(THREADS, worker)
    total = THREADS * CALLS
    counters = breaker.counters()
    assert counters["calls_succeeded"] == breaker.success_count == total * 3 // 4
    assert counters["calls_failed"] == breaker.failure_count == total // 8
    assert counters["calls_ignored"] == total // 8
    assert breaker.state is CircuitBreakerState.CLOSED


def test_half_open_admits_exactly_one_probe_at_a_time() -> None:
    """With half_open_max_calls=1, concurrent callers never run two probes at once."""
    clock = ManualClock()
    breaker = CircuitBreaker(
        "probe",
        CircuitBreakerConfig(failure_threshold=1, success_threshold=1_000, timeout=1.0),
        clock=clock,
        registry=None,
    )
    with pytest.raises(ConnectionError):
        breaker.call(lambda: (_ for _ in ()).throw(ConnectionError()))
    clock.advance(1)
    lock = threading.Lock()
    running = [0]
    most = [0]
    admitted = [0]
    rejected: list[float] = []

    def probe() -> None:
        with lock:
            running[0] += 1
            admitted[0] += 1
            most[0] = max(most[0], running[0])
        time.sleep(0.002)
        with lock:
            running[0] -= 1

    def attempt() -> None:
        try:
            breaker.call(probe)
        except CircuitBreakerOpenError as exc:
            with lock:
                rejected.append(exc.retry_after)

    def worker() -> None:
        for _ in range(50):
            attempt()

    run_in_threads(4, worker)
    assert most[0] == 1
    assert admitted[0] >= 1
    assert admitted[0] + len(rejected) == 200
    assert set(rejected) <= {1.0}  # the clock stands still: a whole lease (probe_timeout) left
    assert breaker.state is CircuitBreakerState.HALF_OPEN


def test_a_sleeping_protected_function_runs_in_two_threads_at_once() -> None:
    """The breaker holds no lock (and the core keeps no GIL) while the function sleeps."""
    breaker = CircuitBreaker("parallel", registry=None)
    inside = threading.Barrier(2)

    @breaker.protect
    def work() -> None:
        # Both calls must be inside at the same time, or the barrier times out.
        inside.wait(timeout=5)
        time.sleep(0.05)

    started = time.monotonic()
    run_in_threads(2, work)
    assert time.monotonic() - started < 5
    assert breaker.success_count == 2


def test_counters_match_what_8_threads_saw_through_every_state() -> None:
    """8 threads with ``call`` and ``with``: every outcome and rejection a caller saw is
    counted once, while the breaker opens, probes and closes under them."""
    breaker = CircuitBreaker(
        "seen",
        CircuitBreakerConfig(
            failure_threshold=3,
            success_threshold=2,
            timeout=0.0005,
            half_open_max_calls=2,
            expected_exceptions=(ConnectionError,),
        ),
        registry=None,
    )
    seen = {"succeeded": 0, "failed": 0, "ignored": 0, "rejected": 0}
    lock = threading.Lock()

    def body(kind: int) -> None:
        if kind == 0:
            raise ConnectionError("down")
        if kind == 1:
            raise KeyError("neutral")

    def worker(index: int) -> None:
        mine = dict.fromkeys(seen, 0)
        for i in range(3_000):
            # 0 fails, 1 is neutral, others succeed; a stretch of failures now and then.
            kind = 0 if (i // 40) % 3 == 0 else (i * 7 + index) % 5
            try:
                if i % 2:
                    breaker.call(body, kind)
                else:
                    with breaker:
                        body(kind)
            except ConnectionError:
                mine["failed"] += 1
            except KeyError:
                mine["ignored"] += 1
            except CircuitBreakerOpenError:
                mine["rejected"] += 1
            else:
                mine["succeeded"] += 1
        with lock:
            for key, value in mine.items():
                seen[key] += value

    run_in_threads(THREADS, lambda: worker(threading.get_ident() % 1000))
    counters = breaker.counters()
    assert sum(seen.values()) == THREADS * 3_000
    assert counters["calls_succeeded"] == seen["succeeded"]
    assert counters["calls_failed"] == seen["failed"]
    assert counters["calls_ignored"] == seen["ignored"]
    assert counters["calls_rejected"] == seen["rejected"]
    assert counters["transitions_to_open"] > 1
    assert counters["transitions_to_half_open"] > 1


def phase_of(permit: int) -> int:
    """The state and epoch a permit was admitted in (the layouts of the two cores differ)."""
    word = permit & ((1 << 64) - 1)
    return word >> 42 if shared.BACKEND == "rust" else word >> 2


def test_at_most_half_open_max_calls_probes_at_once_over_many_phases() -> None:
    """8 threads; hundreds of half-open phases; never more than 3 probes of a phase at once."""
    breaker = CircuitBreaker(
        "probes",
        CircuitBreakerConfig(
            failure_threshold=1, success_threshold=4, timeout=0.0002, half_open_max_calls=3
        ),
        registry=None,
    )
    lock = threading.Lock()
    running: dict[int, int] = {}
    most = [0]
    phases: set[int] = set()

    def worker() -> None:
        rng = random.Random(threading.get_ident())
        for _ in range(2_000):
            try:
                permit = breaker._admit()
            except CircuitBreakerOpenError:
                time.sleep(0.0001)
                continue
            if permit & 3 != 2:  # admitted while closed: not a probe
                breaker._record_error(permit, ConnectionError("down"))
                continue
            phase = phase_of(permit)
            with lock:
                running[phase] = running.get(phase, 0) + 1
                most[0] = max(most[0], running[phase])
                phases.add(phase)
            time.sleep(rng.choice((0, 0.0001)))
            with lock:
                running[phase] -= 1
            if rng.random() < 0.3:
                breaker._record_error(permit, ConnectionError("still down"))
            else:
                breaker._record_success(permit)

    run_in_threads(THREADS, worker)
    assert len(phases) >= 50
    assert 2 <= most[0] <= 3
    assert all(count == 0 for count in running.values())

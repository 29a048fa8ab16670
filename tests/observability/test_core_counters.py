"""The counters the cores keep for metrics (both backends): limiters, retries, timeouts."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import gc
import pickle
import threading
import time
from types import ModuleType
from typing import Any

import pytest

from shared import _instances
from shared.resilience import (
    RateLimitConfig,
    RateLimiterRegistry,
    RateLimitExceeded,
    Retry,
    RetryBudget,
    RetryConfig,
    TimeoutContext,
    TokenBucket,
    with_retry,
    with_timeout,
)
from shared.resilience import TimeoutError as SharedTimeoutError
from shared.resilience.retry import instant_retries
from shared.resilience.timeout import timeout_stats
from shared.testing import ManualClock


class Flaky:
    """Raises ``failures`` times (``error`` instances), then returns "ok"."""

    def __init__(self, failures: int, error: type[BaseException] = ConnectionError) -> None:
        self.failures = failures
        self.error = error

    def __call__(self) -> str:
        if self.failures > 0:
            self.failures -= 1
            raise self.error("boom")
        return "ok"


# -- limiters ------------------------------------------------------------------------------


def test_token_bucket_counts_granted_rejected_and_waits() -> None:
    """try_acquire and reserve count decisions; waits add up; reset clears nothing."""
    clock = ManualClock()
    bucket = TokenBucket(RateLimitConfig(tokens_per_second=10, burst_size=2), clock=clock)
    assert bucket.counters() == {"granted": 0, "rejected": 0, "waited_ns": 0}
    assert bucket.try_acquire()
    assert bucket.try_acquire()
    assert not bucket.try_acquire()
    wait, _ = bucket.reserve(1.0, timeout=1.0)  # 0.1 s away
    assert wait == pytest.approx(0.1)
    with pytest.raises(RateLimitExceeded):
        bucket.reserve(1.0, timeout=0.05)  # would wait 0.2 s
    bucket.reset()
    assert bucket.counters() == {"granted": 3, "rejected": 2, "waited_ns": 100_000_000}


def test_registry_counts_all_keys_together() -> None:
    """A registry keeps one set of counters for all its keys; reset_all clears nothing."""
    clock = ManualClock()
    registry = RateLimiterRegistry(RateLimitConfig(tokens_per_second=1, burst_size=1), clock=clock)
    for key in ("a", "b", "c"):
        limiter = registry.get_limiter(key)
        assert limiter.try_acquire()
        assert not limiter.try_acquire()
    wait, _ = registry.get_limiter("d").reserve(1.0)
    assert wait == 0.0
    with pytest.raises(RateLimitExceeded):
        registry.get_limiter("d").reserve(1.0, timeout=0.5)
    registry.reset_all()
    assert registry.counters() == {"granted": 4, "rejected": 4, "waited_ns": 0}


def test_limiter_counters_are_exact_under_threads() -> None:
    """Four threads deciding at once lose no count."""
    bucket = TokenBucket(RateLimitConfig(tokens_per_second=1e-6, burst_size=1000))
    registry = RateLimiterRegistry(RateLimitConfig(tokens_per_second=1e-6, burst_size=1000))

    def work(index: int) -> None:
        limiter = registry.get_limiter(f"k{index % 2}")
        for _ in range(2000):
            bucket.try_acquire()
            limiter.try_acquire()

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    counters = bucket.counters()
    assert counters["granted"] == 1000
    assert counters["granted"] + counters["rejected"] == 8000
    registry_counters = registry.counters()
    assert registry_counters["granted"] == 2000  # two keys of 1000 tokens
    assert registry_counters["granted"] + registry_counters["rejected"] == 8000


def test_acquire_counts_its_wait() -> None:
    """A blocking acquire is a granted decision with its wait in waited_ns."""
    clock = ManualClock()  # its sleep advances it
    bucket = TokenBucket(RateLimitConfig(tokens_per_second=4, burst_size=1), clock=clock)
    bucket.acquire()
    bucket.acquire()
    assert clock.monotonic() == pytest.approx(0.25)
    assert bucket.counters() == {"granted": 2, "rejected": 0, "waited_ns": 250_000_000}


def test_limiter_names_are_checked_and_defaulted() -> None:
    """name= is a non-empty str or None (a default), checked at construction."""
    assert TokenBucket(RateLimitConfig()).name == "token_bucket"
    assert RateLimiterRegistry().name == "rate_limiter_registry"
    assert TokenBucket(RateLimitConfig(), name="orders").name == "orders"
    with pytest.raises(TypeError, match="name"):
        TokenBucket(RateLimitConfig(), name=3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="name"):
        RateLimiterRegistry(name="")


# -- retries -------------------------------------------------------------------------------


def _counters(retry: Retry) -> dict[str, int]:
    counters = retry.counters()
    assert counters["calls"] == retry.calls
    assert retry.give_ups == sum(v for k, v in counters.items() if k.startswith("give_ups_"))
    return {k: v for k, v in counters.items() if v}


def test_retry_counts_calls_by_outcome() -> None:
    """Success without and with a retry, failure without and with a retry, give-ups."""
    retry = Retry("orders", RetryConfig(max_attempts=3, retry_on=(ConnectionError,)))
    with instant_retries():
        assert retry.execute(Flaky(0)) == "ok"
        assert retry.execute(Flaky(2)) == "ok"
        with pytest.raises(ValueError, match="boom"):
            retry.execute(Flaky(1, ValueError))  # not retryable
        with pytest.raises(ConnectionError):
            retry.execute(Flaky(5))  # gives up after 3 attempts
    assert _counters(retry) == {
        "calls": 4,
        "succeeded_without_retry": 1,
        "succeeded_with_retry": 1,
        "failed_without_retry": 1,
        "failed_with_retry": 1,
        "retries": 4,
        "give_ups_max_attempts": 1,
    }


def test_retry_counts_give_ups_by_reason() -> None:
    """max_attempts, the deadline and the budget are told apart."""
    clock = ManualClock()
    deadline = Retry("deadline", RetryConfig(initial_delay=10.0, max_total_time=1.0), clock=clock)
    budget = RetryBudget(ratio=0.0, min_retries_per_second=0.0, clock=clock)
    budgeted = Retry("budget", RetryConfig(budget=budget))
    single = Retry("single", RetryConfig(max_attempts=1))
    with instant_retries():
        for retry in (deadline, budgeted, single):
            with pytest.raises(ConnectionError):
                retry.execute(Flaky(5))
    assert _counters(deadline) == {
        "calls": 1,
        "failed_without_retry": 1,
        "give_ups_deadline": 1,
    }
    assert _counters(budgeted) == {"calls": 1, "failed_without_retry": 1, "give_ups_budget": 1}
    assert _counters(single) == {
        "calls": 1,
        "failed_without_retry": 1,
        "give_ups_max_attempts": 1,
    }


def test_decorated_function_counts_like_execute() -> None:
    """@with_retry's native call path counts the same outcomes."""
    flaky = Flaky(1)

    @with_retry(max_attempts=2)
    def call() -> str:
        return flaky()

    with instant_retries():
        assert call() == "ok"
        assert call() == "ok"
    assert _counters(call.retry) == {  # type: ignore[attr-defined]
        "calls": 2,
        "succeeded_without_retry": 1,
        "succeeded_with_retry": 1,
        "retries": 1,
    }


async def test_async_retry_counts_outcomes_and_cancellation() -> None:
    """execute_async counts the same outcomes; a cancel between attempts is a failure."""
    retry = Retry("async", RetryConfig(max_attempts=3, initial_delay=60.0))

    async def flaky_async(flaky: Flaky) -> str:
        return flaky()

    with instant_retries():
        assert await retry.execute_async(flaky_async, Flaky(0)) == "ok"
        assert await retry.execute_async(flaky_async, Flaky(1)) == "ok"
        with pytest.raises(ConnectionError):
            await retry.execute_async(flaky_async, Flaky(9))
    task = asyncio.ensure_future(retry.execute_async(flaky_async, Flaky(9)))
    await asyncio.sleep(0.01)  # first attempt failed; sleeping 60 s before the next
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert _counters(retry) == {
        "calls": 4,
        "succeeded_without_retry": 1,
        "succeeded_with_retry": 1,
        "failed_with_retry": 2,
        "retries": 4,
        "give_ups_max_attempts": 1,
    }


def test_retry_counters_are_exact_under_threads() -> None:
    """Four threads through one retry lose no count."""
    retry = Retry("threads", RetryConfig(max_attempts=2))

    def work() -> None:
        with instant_retries():
            for index in range(1000):
                retry.execute(Flaky(index % 2))

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert _counters(retry) == {
        "calls": 4000,
        "succeeded_without_retry": 2000,
        "succeeded_with_retry": 2000,
        "retries": 2000,
    }


def test_record_give_up_rejects_an_unknown_reason() -> None:
    """The give-up reason is 0, 1 or 2."""
    with pytest.raises((ValueError, OverflowError)):
        Retry("x").record_give_up(7)


# -- timeouts ------------------------------------------------------------------------------


def test_fired_timeouts_are_counted_on_every_path() -> None:
    """A main-thread block, a worker-thread block and a decorated function each count one."""
    before = timeout_stats()["fired"]
    with pytest.raises(SharedTimeoutError), TimeoutContext(0.02):
        time.sleep(1.0)
    assert timeout_stats()["fired"] == before + 1

    errors: list[BaseException] = []

    def worker() -> None:
        try:
            with TimeoutContext(0.02):
                for _ in range(10_000_000):
                    time.sleep(0.001)
        except SharedTimeoutError as error:
            errors.append(error)

    thread = threading.Thread(target=worker)
    thread.start()
    thread.join(5.0)
    assert len(errors) == 1
    assert timeout_stats()["fired"] == before + 2

    @with_timeout(0.02)
    def slow() -> None:
        time.sleep(1.0)

    with pytest.raises(SharedTimeoutError):
        slow()
    with TimeoutContext(1.0):
        pass  # a block that does not fire counts nothing
    assert timeout_stats()["fired"] == before + 3


async def test_fired_async_timeouts_are_counted() -> None:
    """An async block that fires counts one."""
    before = timeout_stats()["fired"]
    with pytest.raises(SharedTimeoutError):
        async with TimeoutContext(0.01):
            await asyncio.sleep(1.0)
    assert timeout_stats()["fired"] == before + 1


# -- weak instance registries ---------------------------------------------------------------


def test_instances_are_tracked_weakly() -> None:
    """Constructors register every pattern instance; collected ones disappear."""
    bucket = TokenBucket(RateLimitConfig(), name="weak-bucket")
    registry = RateLimiterRegistry(name="weak-registry")
    retry = Retry("weak-retry")
    assert bucket in _instances.token_buckets.snapshot()
    assert registry in _instances.rate_limiter_registries.snapshot()
    assert retry in _instances.retries.snapshot()
    del bucket, registry, retry
    gc.collect()
    names = [b.name for b in _instances.token_buckets.snapshot()]
    names += [r.name for r in _instances.rate_limiter_registries.snapshot()]
    names += [r.name for r in _instances.retries.snapshot()]
    assert not {"weak-bucket", "weak-registry", "weak-retry"} & set(names)


def test_weak_registry_stays_bounded_without_snapshots() -> None:
    """Many short-lived instances, never scraped, do not grow the registry without bound."""
    registry: _instances.WeakInstances[Any] = _instances.WeakInstances()

    class Thing:
        pass

    for _ in range(10_000):
        registry.add(Thing())
    assert len(registry._refs) < 200
    keep = [Thing() for _ in range(3)]
    for thing in keep:
        registry.add(thing)
    assert registry.snapshot()[-3:] == keep


# -- parity of the counters -------------------------------------------------------------------


def test_limiter_counters_parity(native: ModuleType, pure: ModuleType) -> None:
    """The same decisions on one clock give the same counters on both cores."""
    config = RateLimitConfig(tokens_per_second=3, burst_size=2)
    results = []
    for core in (native, pure):
        clock = ManualClock()
        bucket = core.TokenBucket(config, clock=clock)
        registry = core.RateLimiterRegistry(config, clock=clock)
        for step in range(12):
            for limiter in (bucket, registry.get_limiter(f"k{step % 3}")):
                limiter.try_acquire()
                with contextlib.suppress(RateLimitExceeded):
                    limiter.reserve(1.0, 0.2)
            clock.advance(0.1)
        results.append((bucket.counters(), registry.counters()))
    assert results[0] == results[1]
    assert results[0][0]["rejected"] > 0
    assert results[0][0]["waited_ns"] > 0


def test_retry_counters_parity(native: ModuleType, pure: ModuleType) -> None:
    """The retry cores count the same events into the same keys."""
    results = []
    for core in (native, pure):

        class Core(core.RetryCore):  # type: ignore[misc,name-defined]
            def _retry(self, func: Any, args: Any, kwargs: Any, exc: Any, start: int) -> Any:
                self.record_failure(False)
                raise exc

        retry = Core()
        retry.execute(lambda: 1)
        with pytest.raises(KeyError):
            retry.execute({}.__getitem__, "missing")
        retry.record_success(True)
        retry.record_failure(True)
        retry.record_first_failure()
        retry.record_retry()
        for reason in (0, 1, 1, 2, 2, 2):
            retry.record_give_up(reason)
        results.append((retry.counters(), retry.calls, retry.give_ups))
    assert results[0] == results[1]
    assert results[0][0]["give_ups_budget"] == 3


def test_copies_of_a_timeout_error_are_not_counted() -> None:
    """Making, pickling or copying a TimeoutError keeps its message and counts nothing."""
    error = SharedTimeoutError("operation timed out after 1 seconds")
    error.detail = "kept"  # type: ignore[attr-defined]
    before = timeout_stats()["fired"]
    for clone in (pickle.loads(pickle.dumps(error)), copy.copy(error), copy.deepcopy(error)):
        assert type(clone) is SharedTimeoutError
        assert str(clone) == "operation timed out after 1 seconds"
        assert clone.detail == "kept"  # type: ignore[attr-defined]
    assert timeout_stats()["fired"] == before

"""Rate limiting: shared's token bucket and registry against limits, pyrate-limiter,
aiolimiter and a naive locked pure-Python bucket.

Single operations (``try_acquire``) are timed per call. Registry lookups are
timed per batch (``BATCH`` operations per call), against the same batch of bare
``try_acquire`` calls, so the ratios compare per-operation costs with the loop
overhead on both sides. Two threads on one bucket: ``bench_threads.py``.
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
from collections.abc import Callable
from types import ModuleType
from typing import Any

import aiolimiter
import pytest
from limits import RateLimitItemPerHour, RateLimitItemPerSecond, storage, strategies
from pyrate_limiter import Duration, InMemoryBucket, Limiter, Rate

from shared.resilience import RateLimitConfig, TokenBucket

BATCH = 1000
MANY_KEYS = 1_000_000

# Allowed: a rate no benchmark can exhaust. Denied: an empty bucket that refills hourly.
ALLOWED = RateLimitConfig(tokens_per_second=1e9, burst_size=1e9)
DENIED = RateLimitConfig(tokens_per_second=1 / 3600, burst_size=1, initial_tokens=0)


class NaiveLockedBucket:
    """The textbook pure-Python token bucket: a lock, a float and a clock read."""

    def __init__(self, rate: float, burst: float, tokens: float) -> None:
        self.rate, self.burst, self.tokens = rate, burst, tokens
        self.last = time.monotonic()
        self.lock = threading.Lock()

    def try_acquire(self, tokens: float = 1.0) -> bool:
        with self.lock:
            now = time.monotonic()
            self.tokens = min(self.burst, self.tokens + (now - self.last) * self.rate)
            self.last = now
            if self.tokens >= tokens:
                self.tokens -= tokens
                return True
            return False


def _limits_hit(item: Any) -> Callable[[], bool]:
    limiter = strategies.FixedWindowRateLimiter(storage.MemoryStorage())
    return lambda: limiter.hit(item, "key")


def _pyrate(rate: Rate) -> Callable[[], Any]:
    limiter = Limiter(InMemoryBucket([rate]))
    return lambda: limiter.try_acquire("key", blocking=False)


# -- try_acquire, allowed ---------------------------------------------------------


@pytest.mark.benchmark(group="try_acquire allowed")
def test_try_acquire_allowed_rust(benchmark: Any, native: ModuleType) -> None:
    assert benchmark(native.TokenBucket(ALLOWED).try_acquire) is True


@pytest.mark.benchmark(group="try_acquire allowed")
def test_try_acquire_allowed_python(benchmark: Any, pure: ModuleType) -> None:
    assert benchmark(pure.TokenBucket(ALLOWED).try_acquire) is True


@pytest.mark.benchmark(group="try_acquire allowed")
def test_try_acquire_allowed_naive_locked(benchmark: Any) -> None:
    assert benchmark(NaiveLockedBucket(1e9, 1e9, 1e9).try_acquire) is True


@pytest.mark.benchmark(group="try_acquire allowed")
def test_try_acquire_allowed_limits(benchmark: Any) -> None:
    assert benchmark(_limits_hit(RateLimitItemPerSecond(10**9))) is True


@pytest.mark.benchmark(group="try_acquire allowed")
def test_try_acquire_allowed_pyrate_limiter(benchmark: Any) -> None:
    # A rate that lets every call of a quick run through without keeping a billion items.
    assert benchmark(_pyrate(Rate(10**6, Duration.SECOND))) is True


# -- try_acquire, denied ----------------------------------------------------------


@pytest.mark.benchmark(group="try_acquire denied")
def test_try_acquire_denied_rust(benchmark: Any, native: ModuleType) -> None:
    assert benchmark(native.TokenBucket(DENIED).try_acquire) is False


@pytest.mark.benchmark(group="try_acquire denied")
def test_try_acquire_denied_python(benchmark: Any, pure: ModuleType) -> None:
    assert benchmark(pure.TokenBucket(DENIED).try_acquire) is False


@pytest.mark.benchmark(group="try_acquire denied")
def test_try_acquire_denied_naive_locked(benchmark: Any) -> None:
    assert benchmark(NaiveLockedBucket(1 / 3600, 1.0, 0.0).try_acquire) is False


@pytest.mark.benchmark(group="try_acquire denied")
def test_try_acquire_denied_limits(benchmark: Any) -> None:
    hit = _limits_hit(RateLimitItemPerHour(1))
    hit()
    assert benchmark(hit) is False


@pytest.mark.benchmark(group="try_acquire denied")
def test_try_acquire_denied_pyrate_limiter(benchmark: Any) -> None:
    acquire = _pyrate(Rate(1, Duration.HOUR))
    acquire()
    assert benchmark(acquire) is False


# -- registry: get_limiter(key).try_acquire() --------------------------------------


def _bare_batch(bucket: Any) -> Callable[[], int]:
    try_acquire = bucket.try_acquire

    def run() -> int:
        granted = 0
        for _ in range(BATCH):
            granted += try_acquire()
        return granted

    return run


def _registry_batch(registry: Any, keys: list[str]) -> Callable[[], int]:
    get_limiter = registry.get_limiter
    chunks = [keys[i : i + BATCH] for i in range(0, len(keys), BATCH)]
    state = {"next": 0}

    def run() -> int:
        chunk = chunks[state["next"] % len(chunks)]
        state["next"] += 1
        granted = 0
        for key in chunk:
            granted += get_limiter(key).try_acquire()
        return granted

    return run


@pytest.fixture(scope="module")
def many_keys() -> list[str]:
    """A million keys, in the order they were created (so reading the next key
    string is as cheap as in a service, where it was just parsed)."""
    return [f"user_{i}" for i in range(MANY_KEYS)]


class _ClockRead:
    """A "bucket" whose try_acquire only reads the monotonic clock (a C builtin
    call): the floor of any limiter, since each decision needs the time. On this
    VM the clock read alone costs about 50 ns, as much as a bare call and more."""

    def __init__(self) -> None:
        self.try_acquire = time.monotonic_ns


@pytest.mark.benchmark(group="registry x1000")
def test_clock_read_x1000(benchmark: Any) -> None:
    assert benchmark(_bare_batch(_ClockRead())) > BATCH


@pytest.mark.benchmark(group="registry x1000")
def test_try_acquire_x1000_rust(benchmark: Any, native: ModuleType) -> None:
    assert benchmark(_bare_batch(native.TokenBucket(ALLOWED))) == BATCH


@pytest.mark.benchmark(group="registry x1000")
def test_registry_hot_key_x1000_rust(benchmark: Any, native: ModuleType) -> None:
    registry = native.RateLimiterRegistry(ALLOWED)
    assert benchmark(_registry_batch(registry, ["user_1"] * BATCH)) == BATCH


@pytest.mark.benchmark(group="registry x1000")
def test_registry_hot_key_x1000_python(benchmark: Any, pure: ModuleType) -> None:
    registry = pure.RateLimiterRegistry(ALLOWED)
    assert benchmark(_registry_batch(registry, ["user_1"] * BATCH)) == BATCH


@pytest.mark.benchmark(group="registry x1000")
def test_registry_hot_key_x1000_dict_of_buckets(benchmark: Any) -> None:
    buckets: dict[str, NaiveLockedBucket] = {}

    class DictRegistry:
        def get_limiter(self, key: str) -> NaiveLockedBucket:
            bucket = buckets.get(key)
            if bucket is None:
                bucket = buckets[key] = NaiveLockedBucket(1e9, 1e9, 1e9)
            return bucket

    assert benchmark(_registry_batch(DictRegistry(), ["user_1"] * BATCH)) == BATCH


@pytest.mark.benchmark(group="registry x1000")
def test_registry_1m_keys_x1000_rust(
    benchmark: Any, native: ModuleType, many_keys: list[str]
) -> None:
    registry = native.RateLimiterRegistry(ALLOWED, max_keys=MANY_KEYS)
    # Created in random order: the registry's memory is visited at random.
    for key in random.Random(0).sample(many_keys, len(many_keys)):
        registry.get_limiter(key)
    assert len(registry) == MANY_KEYS
    assert benchmark(_registry_batch(registry, many_keys)) == BATCH


# -- registry, one call per decision: registry.try_acquire(key) ---------------------


def _one_call_batch(decide: Callable[[str], Any], keys: list[str]) -> Callable[[], int]:
    chunks = [keys[i : i + BATCH] for i in range(0, len(keys), BATCH)]
    state = {"next": 0}

    def run() -> int:
        chunk = chunks[state["next"] % len(chunks)]
        state["next"] += 1
        granted = 0
        for key in chunk:
            granted += decide(key) is not False
        return granted

    return run


@pytest.mark.benchmark(group="registry one call x1000")
def test_registry_one_call_hot_key_x1000_rust(benchmark: Any, native: ModuleType) -> None:
    registry = native.RateLimiterRegistry(ALLOWED)
    assert benchmark(_one_call_batch(registry.try_acquire, ["user_1"] * BATCH)) == BATCH


@pytest.mark.benchmark(group="registry one call x1000")
def test_registry_one_call_hot_key_x1000_python(benchmark: Any, pure: ModuleType) -> None:
    registry = pure.RateLimiterRegistry(ALLOWED)
    assert benchmark(_one_call_batch(registry.try_acquire, ["user_1"] * BATCH)) == BATCH


@pytest.mark.benchmark(group="registry one call x1000")
def test_registry_one_call_hot_key_x1000_floodgate(benchmark: Any) -> None:
    from datetime import timedelta

    from floodgate import FixedMapping

    mapping: Any = FixedMapping(10**9, timedelta(hours=1))
    assert benchmark(_one_call_batch(mapping.trigger, ["user_1"] * BATCH)) == BATCH


# -- async acquire (aiolimiter has no non-blocking acquire) ----------------------------


def _async_batch(benchmark: Any, acquire: Callable[[], Any]) -> None:
    loop = asyncio.new_event_loop()

    async def batch() -> None:
        for _ in range(BATCH):
            await acquire()

    try:
        benchmark(lambda: loop.run_until_complete(batch()))
    finally:
        loop.close()


@pytest.mark.benchmark(group="acquire_async allowed x1000")
def test_acquire_async_x1000_rust(benchmark: Any, native: ModuleType) -> None:
    bucket = TokenBucket(ALLOWED)
    assert isinstance(bucket, native.TokenBucket)
    _async_batch(benchmark, bucket.acquire_async)


@pytest.mark.benchmark(group="acquire_async allowed x1000")
def test_acquire_async_x1000_aiolimiter(benchmark: Any) -> None:
    _async_batch(benchmark, aiolimiter.AsyncLimiter(1e9, 1.0).acquire)

"""The limiter registry: LRU eviction (the default) or refusal when full, growth,
one-call decisions, equal handles and decision counts, on a ManualClock."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable

import pytest

from shared.resilience import RateLimitConfig, RateLimiterRegistry, RateLimitExceeded
from shared.testing import ManualClock

ONE_PER_SECOND = RateLimitConfig(tokens_per_second=1.0, burst_size=2)


def registry(
    max_keys: int = 3, on_full: str = "evict", idle_ttl: float = 1.0
) -> tuple[RateLimiterRegistry, ManualClock]:
    clock = ManualClock()
    reg = RateLimiterRegistry(
        ONE_PER_SECOND, max_keys=max_keys, idle_ttl=idle_ttl, clock=clock, on_full=on_full
    )
    return reg, clock


# -- configuration -------------------------------------------------------------


def test_on_full_defaults_to_evict_and_is_validated_by_name() -> None:
    assert RateLimiterRegistry().on_full == "evict"
    assert RateLimiterRegistry(on_full="reject").on_full == "reject"
    with pytest.raises(ValueError, match="on_full must be 'evict' or 'reject', got 'drop'"):
        RateLimiterRegistry(on_full="drop")
    with pytest.raises(TypeError, match="on_full must be a str, got NoneType"):
        RateLimiterRegistry(on_full=None)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="on_full must be a str, got int"):
        RateLimiterRegistry(on_full=1)  # type: ignore[arg-type]


# -- eviction ------------------------------------------------------------------


def test_a_full_registry_evicts_the_least_recently_used_key() -> None:
    """Every lookup counts as a use: get_limiter, a handle's call, the one-call API."""
    reg, _ = registry(max_keys=3)
    a = reg.get_limiter("a")
    assert reg.try_acquire("b")
    reg.get_limiter("c")
    assert reg._eviction_order() == ["a", "b", "c"]
    assert a.try_acquire()  # "a" is now the newest: "b" is the oldest
    assert reg._eviction_order() == ["b", "c", "a"]
    assert reg.try_acquire("d")  # never refused: evicts "b"
    assert "b" not in reg
    assert reg._eviction_order() == ["c", "a", "d"]
    assert "c" in reg  # `in` is no use
    assert reg.try_acquire("e")
    assert reg._eviction_order() == ["a", "d", "e"]
    assert len(reg) == 3


def test_an_evicted_key_comes_back_with_a_fresh_bucket() -> None:
    """Forgetting the oldest key forgets its spent tokens (it has had the longest to refill)."""
    reg, _ = registry(max_keys=1)
    held = reg.get_limiter("a")
    assert held.try_acquire()
    assert held.try_acquire()
    assert not held.try_acquire()
    assert reg.try_acquire("b")  # evicts "a"
    assert "a" not in reg
    assert held.available_tokens == 2.0  # recreated (evicting "b")
    assert "b" not in reg


def test_keys_with_their_own_configuration_are_never_evicted() -> None:
    reg, clock = registry(max_keys=2)
    premium = RateLimitConfig(tokens_per_second=50.0)
    reg.set_limiter("premium", premium)
    for key in ("a", "b", "c"):
        assert reg.try_acquire(key)
    assert "premium" in reg
    assert len(reg) == 2
    assert reg._eviction_order() == ["c"]
    reg.set_limiter("c", premium)
    # Every key has its own configuration: nothing can be evicted.
    with pytest.raises(RateLimitExceeded):
        reg.try_acquire("d")
    clock.advance(1000.0)
    with pytest.raises(RateLimitExceeded):
        reg.get_limiter("d")
    assert reg.remove_limiter("c")
    assert reg.try_acquire("d")


def test_reject_mode_refuses_until_a_key_is_idle() -> None:
    reg, clock = registry(max_keys=2, on_full="reject", idle_ttl=1.0)
    assert reg.try_acquire("a")
    assert reg.try_acquire("b")
    with pytest.raises(RateLimitExceeded) as info:
        reg.try_acquire("c")
    # "a" has 1 token of 2: refilled at 1 s, idle at 2 s.
    assert info.value.retry_after == pytest.approx(2.0)
    clock.advance(2.0)
    assert reg.try_acquire("c")
    assert "a" not in reg
    assert "b" in reg


def test_eviction_is_bounded_work_for_many_keys() -> None:
    """A stream of new keys through a small registry: each evicts exactly one key."""
    reg, _ = registry(max_keys=100)
    for i in range(5_000):
        assert reg.try_acquire(f"user_{i}")
        assert len(reg) == min(i + 1, 100)
    assert reg._eviction_order() == [f"user_{i}" for i in range(4_900, 5_000)]


# -- growth --------------------------------------------------------------------


def test_growth_keeps_every_key_and_its_bucket() -> None:
    """Keys added across many segment and index growths stay findable at every step."""
    reg, _ = registry(max_keys=1_000_000)
    keys = [f"k{i}" for i in range(20_000)]
    for i, key in enumerate(keys):
        assert reg.try_acquire(key, 2)
        if i % 997 == 0:  # checked while the index is being moved
            assert all(k in reg for k in keys[: i + 1 : 37])
    assert len(reg) == len(keys)
    assert not any(reg.try_acquire(key) for key in keys)  # every bucket is the key's own
    assert reg.decision_counts() == (20_000, 20_000)


# -- one call per decision -----------------------------------------------------


def test_one_call_try_acquire_matches_the_handle() -> None:
    reg, clock = registry(max_keys=10)
    assert reg.try_acquire("a")
    assert reg.try_acquire("a", tokens=1.0)
    assert not reg.try_acquire("a")
    assert reg.get_limiter("a").retry_after() == pytest.approx(1.0)
    clock.advance(1.0)
    assert reg.try_acquire(key="a")
    with pytest.raises(ValueError, match="tokens"):
        reg.try_acquire("a", 3.0)  # more than the burst
    with pytest.raises(TypeError, match="tokens must be a number"):
        reg.try_acquire("a", "1")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="key must be a str, got int"):
        reg.try_acquire(1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="key must be valid text"):
        reg.try_acquire("\ud800")


def test_one_call_acquire_waits_and_times_out() -> None:
    reg, clock = registry(max_keys=10)
    reg.acquire("a", 2.0)
    start = clock.monotonic()
    reg.acquire("a")  # sleeps the ManualClock one second
    assert clock.monotonic() - start == pytest.approx(1.0)
    with pytest.raises(RateLimitExceeded) as info:
        reg.acquire("a", 2.0, timeout=0.5)
    assert info.value.retry_after == pytest.approx(2.0)
    assert reg.get_limiter("a").available_tokens == 0.0  # the refusal took nothing


def test_one_call_acquire_async() -> None:
    reg, clock = registry(max_keys=10)

    async def main() -> None:
        await reg.acquire_async("a", 2.0)
        start = clock.monotonic()
        await reg.acquire_async("a", timeout=5.0)
        assert clock.monotonic() - start == pytest.approx(1.0)
        with pytest.raises(RateLimitExceeded):
            await reg.acquire_async("a", 2.0, timeout=0.1)

    asyncio.run(asyncio.wait_for(main(), timeout=10))


def test_decision_counts_add_up() -> None:
    reg, _ = registry(max_keys=10)
    assert reg.decision_counts() == (0, 0)
    results = [reg.try_acquire("a") for _ in range(3)]
    results += [reg.get_limiter("b").try_acquire() for _ in range(3)]
    assert results == [True, True, False] * 2
    assert reg.decision_counts() == (4, 2)
    with pytest.raises(RateLimitExceeded):
        reg.acquire("a", timeout=0.1)  # a refused reservation
    reg.get_limiter("c").reserve(1.0)
    assert reg.decision_counts() == (5, 3)
    with pytest.raises(ValueError, match="tokens"):
        reg.try_acquire("a", 0.0)  # no decision
    assert reg.decision_counts() == (5, 3)


# -- handles -------------------------------------------------------------------


def test_handles_of_one_key_are_equal_and_hash_equal() -> None:
    reg, _ = registry(max_keys=10)
    first, second = reg.get_limiter("a"), reg.get_limiter("a")
    assert first == second
    assert not first != second  # noqa: SIM202 (the != operator itself)
    assert hash(first) == hash(second)
    assert len({first, second, reg.get_limiter("a")}) == 1
    assert reg.get_limiter("a") != reg.get_limiter("b")
    other, _ = registry(max_keys=10)
    assert other.get_limiter("a") != first
    assert first != "a"
    assert reg.set_limiter("p", ONE_PER_SECOND) == reg.get_limiter("p")
    seen = {first: 1}
    assert seen[reg.get_limiter("a")] == 1


# -- threads -------------------------------------------------------------------


def run_threads(work: Callable[[int], None], count: int = 8) -> None:
    barrier = threading.Barrier(count)
    errors: list[BaseException] = []

    def run(n: int) -> None:
        try:
            barrier.wait(timeout=10)
            work(n)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(n,)) for n in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not any(thread.is_alive() for thread in threads)
    assert not errors


def test_eight_threads_never_overgrant() -> None:
    """8 threads decide on 8 shared keys, by one call and by handle, with the
    clock standing still: exactly the burst of each key is granted."""
    clock = ManualClock()
    reg = RateLimiterRegistry(RateLimitConfig(tokens_per_second=1.0, burst_size=5), clock=clock)
    keys = [f"hot_{i}" for i in range(8)]
    granted = [0] * 8
    calls = 1_000

    def work(n: int) -> None:
        handle = reg.get_limiter(keys[n])
        for i in range(calls):
            if i % 2:
                granted[n] += reg.try_acquire(keys[i % 8])
            else:
                granted[n] += handle.try_acquire()

    run_threads(work)
    assert sum(granted) == 8 * 5
    assert reg.decision_counts() == (8 * 5, 8 * calls - 8 * 5)


def test_eight_threads_evicting_keep_the_registry_consistent() -> None:
    """8 threads add new keys to a full registry (each eviction relinks the
    recency list) while reading hot keys: the registry stays bounded and its
    recency list holds exactly the keys it holds, each once."""
    clock = ManualClock()
    reg = RateLimiterRegistry(ONE_PER_SECOND, max_keys=64, clock=clock)
    calls = 1_000

    def work(n: int) -> None:
        for i in range(calls):
            assert reg.try_acquire(f"cold_{n}_{i}")  # new: a full bucket
            reg.get_limiter(f"hot_{n}").available_tokens  # noqa: B018 (a use)

    run_threads(work)
    order = reg._eviction_order()
    assert len(reg) == 64
    assert len(order) == 64
    assert len(set(order)) == 64
    assert all(key in reg for key in order)
    assert reg.decision_counts() == (8 * calls, 0)

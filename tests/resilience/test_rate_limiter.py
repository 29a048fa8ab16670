"""The public rate-limiting API: the document's examples and our semantics, on a ManualClock."""

from __future__ import annotations

import asyncio
import gc
import math
import threading

import pytest

from shared.resilience import (
    RateLimitConfig,
    RateLimiterRegistry,
    RateLimitExceeded,
    TokenBucket,
    rate_limited,
)
from shared.testing import ManualClock


def bucket(
    rate: float = 10.0, burst: float | None = 20, initial: float | None = None
) -> tuple[TokenBucket, ManualClock]:
    clock = ManualClock()
    config = RateLimitConfig(tokens_per_second=rate, burst_size=burst, initial_tokens=initial)
    return TokenBucket(config, clock=clock), clock


# -- the document ------------------------------------------------------------


def test_document_configuration_and_algorithm() -> None:
    """20 tokens, consume 5 leaves 15, one second refills 10, capped at 20."""
    config = RateLimitConfig(
        tokens_per_second=10.0,  # 10 requests per second
        burst_size=20,  # Allow bursts up to 20
        initial_tokens=20,  # Start with full bucket
    )
    clock = ManualClock()
    limiter = TokenBucket(config, clock=clock)
    assert limiter.config is config
    assert limiter.available_tokens == 20.0
    for _ in range(5):
        assert limiter.try_acquire(tokens=1.0)
    assert limiter.available_tokens == 15.0
    clock.advance(1.0)
    assert limiter.available_tokens == 20.0
    clock.advance(1.0)
    assert limiter.available_tokens == 20.0


def test_document_usage() -> None:
    """try_acquire, blocking acquire, acquire with timeout and available_tokens as shown."""
    limiter, clock = bucket(rate=10.0, burst=20)
    calls = []
    if limiter.try_acquire(tokens=1.0):
        calls.append("api")
    limiter.acquire(tokens=1.0)
    calls.append("api")
    try:
        limiter.acquire(tokens=1.0, timeout=5.0)
        calls.append("api")
    except RateLimitExceeded as e:  # pragma: no cover - tokens are there
        pytest.fail(f"rate limited, retry after {e.retry_after}s")
    assert calls == ["api"] * 3
    assert limiter.available_tokens == 17.0
    assert clock.now_ns() == 0


async def test_document_async_usage() -> None:
    """await limiter.acquire_async(tokens=1.0) takes a token."""
    limiter, _ = bucket()
    await limiter.acquire_async(tokens=1.0)
    assert limiter.available_tokens == 19.0


def test_document_registry() -> None:
    """get_limiter, set_limiter, reset_all and remove_limiter as the document shows."""
    clock = ManualClock()
    registry = RateLimiterRegistry(
        default_config=RateLimitConfig(tokens_per_second=5.0), clock=clock
    )
    user_limiter = registry.get_limiter("user_123")
    user_limiter.acquire()
    assert user_limiter.available_tokens == 4.0
    premium_config = RateLimitConfig(tokens_per_second=50.0)
    registry.set_limiter("premium_user_456", premium_config)
    assert registry.get_limiter("premium_user_456").config is premium_config
    assert registry.get_limiter("premium_user_456").available_tokens == 50.0
    registry.reset_all()
    assert registry.get_limiter("user_123").available_tokens == 5.0
    assert registry.remove_limiter("user_123")
    assert "user_123" not in registry
    assert len(registry) == registry.len() == 1


async def test_document_api_endpoint() -> None:
    """The document's step 5: per-user try_acquire answering 429 past the burst."""
    limiters = RateLimiterRegistry(
        default_config=RateLimitConfig(tokens_per_second=10.0, burst_size=20),
        clock=ManualClock(),
    )

    async def handle_request(user_id: str) -> int:
        limiter = limiters.get_limiter(user_id)
        if not limiter.try_acquire():
            return 429
        return 200

    statuses = [await handle_request("alice") for _ in range(21)]
    assert statuses == [200] * 20 + [429]
    assert await handle_request("bob") == 200


# -- bucket semantics -----------------------------------------------------------


def test_refill_is_continuous_and_capped() -> None:
    """Tokens come back at the rate, in fractions, up to the burst and no further."""
    limiter, clock = bucket(rate=4.0, burst=2, initial=0)
    assert limiter.available_tokens == 0.0
    clock.advance(0.125)
    assert limiter.available_tokens == pytest.approx(0.5)
    clock.advance(10.0)
    assert limiter.available_tokens == 2.0


def test_initial_tokens_default_to_a_full_bucket() -> None:
    """Without initial_tokens the bucket starts full; with it, it starts there."""
    assert bucket(rate=3.0, burst=None)[0].available_tokens == 3.0
    assert bucket(rate=3.0, burst=7, initial=2)[0].available_tokens == 2.0


def test_burst_cap() -> None:
    """A full bucket grants exactly burst_size tokens at one instant."""
    limiter, _ = bucket(rate=3.0, burst=5)
    assert sum(limiter.try_acquire() for _ in range(10)) == 5


def test_retry_after_is_exact() -> None:
    """retry_after is the wait until the tokens are there; 0.0 when they are now."""
    limiter, clock = bucket(rate=10.0, burst=2, initial=0)
    assert limiter.retry_after() == pytest.approx(0.1)
    assert limiter.retry_after(2.0) == pytest.approx(0.2)
    clock.advance(0.1)
    assert limiter.retry_after() == 0.0
    assert limiter.try_acquire()
    assert not limiter.try_acquire()


def test_fractional_tokens() -> None:
    """Fractions of tokens are granted and refilled exactly."""
    limiter, clock = bucket(rate=1.0, burst=1)
    assert limiter.try_acquire(0.25)
    assert limiter.try_acquire(0.75)
    assert not limiter.try_acquire(0.25)
    clock.advance(0.25)
    assert limiter.try_acquire(0.25)


def test_reset_restores_the_initial_tokens() -> None:
    """reset() puts the bucket back as configured."""
    limiter, _ = bucket(rate=1.0, burst=3, initial=1)
    assert limiter.try_acquire()
    limiter.reset()
    assert limiter.available_tokens == 1.0


def test_blocking_acquire_sleeps_exactly_the_wait() -> None:
    """acquire reserves and sleeps once, exactly until its tokens are due."""
    sleeps: list[float] = []

    class Clock(ManualClock):
        def sleep(self, seconds: float) -> None:
            sleeps.append(seconds)
            super().sleep(seconds)

    clock = Clock()
    limiter = TokenBucket(RateLimitConfig(tokens_per_second=10.0, burst_size=1), clock=clock)
    limiter.acquire()
    limiter.acquire()
    limiter.acquire()
    assert sleeps == [pytest.approx(0.1), pytest.approx(0.1)]
    assert clock.now_ns() == 200_000_000


def test_acquire_timeout_raises_at_once_and_reserves_nothing() -> None:
    """A wait longer than timeout raises with the true retry_after, and takes nothing."""
    limiter, clock = bucket(rate=2.0, burst=4, initial=0)
    with pytest.raises(RateLimitExceeded) as info:
        limiter.acquire(tokens=3.0, timeout=1.0)
    assert info.value.retry_after == pytest.approx(1.5)
    assert clock.now_ns() == 0
    assert limiter.retry_after(3.0) == pytest.approx(1.5)
    limiter.acquire(tokens=3.0, timeout=1.5)
    assert clock.now_ns() == 1_500_000_000


def test_reserved_tokens_are_not_available() -> None:
    """While an acquire waits for its tokens, others see none and queue behind it."""
    limiter, _ = bucket(rate=1.0, burst=1, initial=0)
    wait, _ = limiter.reserve()
    assert wait == pytest.approx(1.0)
    assert limiter.available_tokens == 0.0
    assert limiter.retry_after() == pytest.approx(2.0)


class InterruptedSleep(ManualClock):
    """A ManualClock whose sleep is interrupted (like KeyboardInterrupt or a signal)."""

    def sleep(self, seconds: float) -> None:
        raise KeyboardInterrupt


@pytest.mark.parametrize("keyed", [False, True])
def test_interrupted_blocking_acquire_gives_its_reservation_back(keyed: bool) -> None:
    """An acquire interrupted in its sleep withdraws its reservation: nothing consumed."""
    config = RateLimitConfig(tokens_per_second=1.0, burst_size=2, initial_tokens=0)
    clock = InterruptedSleep()
    limiter = (
        RateLimiterRegistry(config, clock=clock).get_limiter("k")
        if keyed
        else TokenBucket(config, clock=clock)
    )
    with pytest.raises(KeyboardInterrupt):
        limiter.acquire(2.0)
    assert limiter.retry_after(2.0) == pytest.approx(2.0)


def test_cancelled_reservation_with_later_ones_stays_consumed() -> None:
    """A reservation with others after it cannot be withdrawn: those keep their place."""
    limiter, _ = bucket(rate=1.0, burst=1, initial=0)
    _, first = limiter.reserve()
    _, second = limiter.reserve()
    assert not limiter.cancel_reservation(1.0, first)
    assert limiter.cancel_reservation(1.0, second)
    assert limiter.retry_after() == pytest.approx(2.0)


# -- async ---------------------------------------------------------------------


class CountingClock(ManualClock):
    """A ManualClock that counts the async sleeps it is asked for."""

    def __init__(self) -> None:
        super().__init__()
        self.async_sleeps = 0

    async def sleep_async(self, seconds: float) -> None:
        self.async_sleeps += 1
        await super().sleep_async(seconds)


class GatedClock(ManualClock):
    """A ManualClock whose async sleeps end only when the test advances it."""

    async def sleep_async(self, seconds: float) -> None:
        due = self.now_ns() + int(seconds * 1e9)
        for _ in range(100_000):
            if self.now_ns() >= due:
                return
            await asyncio.sleep(0)
        raise AssertionError("the test never advanced the clock")


async def settle() -> None:
    for _ in range(20):
        await asyncio.sleep(0)


async def test_async_waiters_are_served_in_order_and_only_the_head_sleeps() -> None:
    """Five waiters finish first come, first served, with one sleep each."""
    clock = CountingClock()
    limiter = TokenBucket(
        RateLimitConfig(tokens_per_second=10.0, burst_size=1, initial_tokens=0), clock=clock
    )
    finished: list[tuple[int, int]] = []

    async def waiter(i: int) -> None:
        await limiter.acquire_async()
        finished.append((i, clock.now_ns()))

    await asyncio.gather(*(waiter(i) for i in range(5)))
    assert [i for i, _ in finished] == list(range(5))
    assert [t for _, t in finished] == [100_000_000 * (i + 1) for i in range(5)]
    assert clock.async_sleeps == 5


async def test_cancelled_async_waiter_consumes_nothing() -> None:
    """Cancelling the sleeping head leaves the bucket as it was; the next waiter moves up."""
    clock = GatedClock()
    limiter = TokenBucket(
        RateLimitConfig(tokens_per_second=1.0, burst_size=1, initial_tokens=0), clock=clock
    )
    head = asyncio.create_task(limiter.acquire_async())
    second = asyncio.create_task(limiter.acquire_async())
    await settle()
    head.cancel()
    await settle()
    assert head.cancelled()
    assert limiter.retry_after() == pytest.approx(1.0)
    clock.advance(1.0)
    await asyncio.wait_for(second, 5)
    assert limiter.available_tokens == 0.0
    assert limiter.retry_after() == pytest.approx(1.0)


async def test_cancelled_queued_waiter_consumes_nothing() -> None:
    """Cancelling a waiter in the middle of the queue skips it; the rest keep their order."""
    clock = GatedClock()
    limiter = TokenBucket(
        RateLimitConfig(tokens_per_second=1.0, burst_size=1, initial_tokens=0), clock=clock
    )
    tasks = [asyncio.create_task(limiter.acquire_async()) for _ in range(3)]
    await settle()
    tasks[1].cancel()
    clock.advance(1.0)
    await asyncio.wait_for(tasks[0], 5)
    await settle()
    assert not tasks[2].done()
    clock.advance(1.0)
    await asyncio.wait_for(tasks[2], 5)
    assert tasks[1].cancelled()
    assert limiter.available_tokens == 0.0


async def test_async_timeout_raises_at_once() -> None:
    """acquire_async raises at once when the queue ahead makes the wait exceed timeout."""
    clock = GatedClock()
    limiter = TokenBucket(
        RateLimitConfig(tokens_per_second=1.0, burst_size=1, initial_tokens=0), clock=clock
    )
    with pytest.raises(RateLimitExceeded) as info:
        await limiter.acquire_async(timeout=0.5)
    assert info.value.retry_after == pytest.approx(1.0)
    head = asyncio.create_task(limiter.acquire_async())
    await settle()
    with pytest.raises(RateLimitExceeded) as info:
        await limiter.acquire_async(timeout=1.5)
    assert info.value.retry_after == pytest.approx(2.0)
    clock.advance(1.0)
    await asyncio.wait_for(head, 5)


async def test_registry_limiter_async_fifo() -> None:
    """A registry's limiter queues async waiters per key."""
    clock = CountingClock()
    registry = RateLimiterRegistry(
        RateLimitConfig(tokens_per_second=10.0, burst_size=1, initial_tokens=0), clock=clock
    )
    order: list[str] = []

    async def waiter(name: str) -> None:
        await registry.get_limiter("k").acquire_async()
        order.append(name)

    await asyncio.gather(waiter("a"), waiter("b"), waiter("c"))
    assert order == ["a", "b", "c"]
    assert clock.now_ns() == 300_000_000


# -- decorator -----------------------------------------------------------------


def test_rate_limited_sync_waits_for_tokens() -> None:
    """@rate_limited(bucket) takes a token per call and sleeps when there is none."""
    limiter, clock = bucket(rate=2.0, burst=1)

    @rate_limited(limiter)
    def call(x: int) -> int:
        return x * 2

    assert [call(1), call(2), call(3)] == [2, 4, 6]
    assert clock.now_ns() == 1_000_000_000
    assert call.limiter is limiter  # type: ignore[attr-defined]


async def test_rate_limited_async_and_timeout() -> None:
    """An async function is limited with acquire_async; timeout=0 fails fast."""
    limiter, _ = bucket(rate=1.0, burst=1)

    @rate_limited(limiter, timeout=0)
    async def call() -> str:
        return "ok"

    assert await call() == "ok"
    with pytest.raises(RateLimitExceeded):
        await call()


def test_rate_limited_per_key_with_a_registry() -> None:
    """With a registry and key=, each caller has its own bucket."""
    registry = RateLimiterRegistry(
        RateLimitConfig(tokens_per_second=1.0, burst_size=1), clock=ManualClock()
    )

    @rate_limited(registry, key=lambda user, **_: user, timeout=0)
    def fetch(user: str) -> str:
        return user

    assert fetch("a") == "a"
    assert fetch("b") == "b"
    with pytest.raises(RateLimitExceeded):
        fetch("a")


def test_rate_limited_bare_and_config() -> None:
    """@rate_limited without arguments and @rate_limited(config) make their own bucket."""

    @rate_limited
    def one() -> int:
        return 1

    @rate_limited(RateLimitConfig(tokens_per_second=100.0))
    def two() -> int:
        return 2

    assert one() + two() == 3
    assert isinstance(one.limiter, TokenBucket)  # type: ignore[attr-defined]


def test_rate_limited_bad_arguments() -> None:
    """Bad decorator arguments are errors naming them."""
    with pytest.raises(ValueError, match="tokens"):
        rate_limited(tokens=0)
    with pytest.raises(ValueError, match="timeout"):
        rate_limited(timeout=-1)
    with pytest.raises(TypeError, match="key"):
        rate_limited(RateLimiterRegistry())
    with pytest.raises(TypeError, match="limiter"):
        rate_limited(42)


# -- bad input ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"tokens_per_second": 0}, "tokens_per_second"),
        ({"tokens_per_second": -1.0}, "tokens_per_second"),
        ({"tokens_per_second": math.nan}, "tokens_per_second"),
        ({"tokens_per_second": math.inf}, "tokens_per_second"),
        ({"burst_size": 0.5}, "burst_size"),
        ({"burst_size": math.inf}, "burst_size"),
        ({"burst_size": 2, "initial_tokens": 3}, "initial_tokens"),
        ({"initial_tokens": -1}, "initial_tokens"),
    ],
)
def test_bad_config_names_the_field(kwargs: dict[str, float], field: str) -> None:
    """Invalid configuration values raise ValueError naming the field."""
    with pytest.raises(ValueError, match=field):
        RateLimitConfig(**kwargs)


@pytest.mark.parametrize("tokens", [0, -1.0, math.nan, math.inf, 2.5])
async def test_bad_tokens_name_the_argument(tokens: float) -> None:
    """tokens <= 0, NaN, inf or above the burst raise ValueError naming tokens, everywhere."""
    limiter, _ = bucket(rate=1.0, burst=2)
    registry = RateLimiterRegistry(RateLimitConfig(tokens_per_second=1.0, burst_size=2))
    for target in (limiter, registry.get_limiter("k")):
        for call in (target.try_acquire, target.acquire, target.retry_after, target.reserve):
            with pytest.raises(ValueError, match="tokens"):
                call(tokens)
        with pytest.raises(ValueError, match="tokens"):
            await target.acquire_async(tokens)
    assert limiter.available_tokens == 2.0


def test_bad_timeout_and_registry_arguments() -> None:
    """Negative timeouts, max_keys < 1, idle_ttl < 0 and non-str keys are rejected by name."""
    limiter, _ = bucket()
    with pytest.raises(ValueError, match="timeout"):
        limiter.acquire(timeout=-1.0)
    with pytest.raises(ValueError, match="max_keys"):
        RateLimiterRegistry(max_keys=0)
    with pytest.raises(TypeError, match="max_keys"):
        RateLimiterRegistry(max_keys=1.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="idle_ttl"):
        RateLimiterRegistry(idle_ttl=-1.0)
    with pytest.raises(TypeError, match="key"):
        RateLimiterRegistry().get_limiter(123)  # type: ignore[arg-type]


# -- registry -------------------------------------------------------------------


def test_registry_limiters_of_one_key_share_one_bucket() -> None:
    """Every handle of a key acts on the same bucket."""
    registry = RateLimiterRegistry(
        RateLimitConfig(tokens_per_second=1.0, burst_size=3), clock=ManualClock()
    )
    assert [registry.get_limiter("k").try_acquire() for _ in range(4)] == [True] * 3 + [False]
    assert registry.get_limiter("other").try_acquire()
    assert registry.get_limiter("k").key == "k"


def test_registry_evicts_idle_keys_and_stays_bounded() -> None:
    """With on_full="reject", a full registry evicts keys whose bucket has been
    full for idle_ttl, never more keys."""
    clock = ManualClock()
    registry = RateLimiterRegistry(
        RateLimitConfig(tokens_per_second=10.0, burst_size=1),
        max_keys=10,
        idle_ttl=1.0,
        clock=clock,
        on_full="reject",
    )
    for i in range(100):
        retry_after = 0.0
        try:
            registry.get_limiter(f"user_{i}").try_acquire()
        except RateLimitExceeded as exc:
            retry_after = exc.retry_after
        if retry_after:
            assert 0.0 < retry_after <= 1.1
            clock.advance(retry_after)
            assert registry.get_limiter(f"user_{i}").try_acquire()
        assert len(registry) <= 10
        clock.advance(0.05)


def test_registry_full_of_active_keys_refuses_new_ones() -> None:
    """With on_full="reject", when no key can be evicted, a new key raises
    RateLimitExceeded with the wait."""
    clock = ManualClock()
    registry = RateLimiterRegistry(
        RateLimitConfig(tokens_per_second=1.0, burst_size=1),
        max_keys=2,
        idle_ttl=0.0,
        clock=clock,
        on_full="reject",
    )
    assert registry.get_limiter("a").try_acquire()
    assert registry.get_limiter("b").try_acquire()
    with pytest.raises(RateLimitExceeded) as info:
        registry.get_limiter("c")
    assert info.value.retry_after == pytest.approx(1.0)
    clock.advance(1.0)
    assert registry.get_limiter("c").try_acquire()


def test_registry_keeps_custom_configs() -> None:
    """Keys given their own config are never evicted; remove_limiter forgets them."""
    clock = ManualClock()
    registry = RateLimiterRegistry(max_keys=1, idle_ttl=0.0, clock=clock)
    premium = RateLimitConfig(tokens_per_second=50.0)
    assert registry.set_limiter("premium", premium).config is premium
    clock.advance(100.0)
    with pytest.raises(RateLimitExceeded):
        registry.get_limiter("other")
    assert registry.get_limiter("premium").config is premium
    assert registry.remove_limiter("premium")
    assert not registry.remove_limiter("premium")
    assert registry.get_limiter("other").config is registry.default_config


def test_handle_survives_eviction_of_its_key() -> None:
    """A handle whose key was evicted finds (recreates) the key instead of another's bucket."""
    clock = ManualClock()
    registry = RateLimiterRegistry(
        RateLimitConfig(tokens_per_second=1.0, burst_size=2), max_keys=1, idle_ttl=0.0, clock=clock
    )
    a = registry.get_limiter("a")
    b = registry.get_limiter("b")  # evicts "a" (full, idle)
    assert b.try_acquire()
    assert b.try_acquire()
    clock.advance(2.0)
    assert a.try_acquire()
    assert "a" in registry
    assert "b" not in registry
    assert a.available_tokens == 1.0


def test_held_handles_are_never_repointed_to_another_key() -> None:
    """However a handle is held (a name, a container, a bound method, the collector's
    view of the registry), later get_limiter calls for other keys never change it."""
    registry = RateLimiterRegistry(
        RateLimitConfig(tokens_per_second=1.0, burst_size=2), clock=ManualClock()
    )
    held = registry.get_limiter("held")
    in_list = [registry.get_limiter("in_list")]
    in_dict = {"k": registry.get_limiter("in_dict")}
    bound = registry.get_limiter("bound").try_acquire
    seen_by_gc = [
        obj
        for obj in gc.get_referents(registry.get_limiter("via_gc").registry)
        if type(obj).__name__ == "KeyedLimiter"
    ]
    for i in range(50):
        # Fresh keys (each asked once), with and without keeping their handle.
        assert registry.get_limiter(f"other_{i}").key == f"other_{i}"
        registry.get_limiter(f"dropped_{i}").try_acquire()
    assert held.key == "held"
    assert in_list[0].key == "in_list"
    assert in_dict["k"].key == "in_dict"
    assert [bound(), bound(), bound()] == [True, True, False]  # its own bucket of 2
    assert registry.get_limiter("bound").available_tokens == 0.0
    assert registry.get_limiter("held").available_tokens == 2.0
    for handle in seen_by_gc:
        key = handle.key
        for i in range(5):
            registry.get_limiter(f"again_{key}_{i}")
        assert handle.key == key


def test_handle_of_a_dropped_key_acts_on_its_own_bucket() -> None:
    """A handle used and dropped at once, key after key, always acts on its key's bucket."""
    registry = RateLimiterRegistry(
        RateLimitConfig(tokens_per_second=1.0, burst_size=1), clock=ManualClock()
    )
    for i in range(100):
        assert registry.get_limiter(f"k{i}").try_acquire()
    for i in range(100):
        limiter = registry.get_limiter(f"k{i}")
        assert limiter.key == f"k{i}"
        assert not limiter.try_acquire()
        assert repr(limiter) == f"KeyedLimiter(key='k{i}')"


def test_threads_holding_handles_keep_their_keys() -> None:
    """Threads that hold a handle while other threads ask for other keys keep theirs."""
    registry = RateLimiterRegistry(
        RateLimitConfig(tokens_per_second=1.0, burst_size=1000), clock=ManualClock()
    )
    start = threading.Barrier(4)
    wrong: list[str] = []

    def worker(t: int) -> None:
        start.wait(timeout=10)
        for n in range(2000):
            key = f"t{t}_{n % 300}"
            limiter = registry.get_limiter(key)
            registry.get_limiter(f"t{t}_other_{n}").try_acquire()
            limiter.try_acquire()
            if limiter.key != key:
                wrong.append(f"{key} -> {limiter.key}")

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=60)
    assert wrong == []
    # Each key's bucket saw exactly its own acquisitions: 7 for keys 0-199, 6 for the rest.
    for t in range(4):
        tokens = [registry.get_limiter(f"t{t}_{k}").available_tokens for k in range(300)]
        assert tokens == [993.0] * 200 + [994.0] * 100


def test_concurrent_get_limiter_gives_one_bucket_per_key() -> None:
    """Threads racing get_limiter on the same keys share one bucket per key."""
    registry = RateLimiterRegistry(RateLimitConfig(tokens_per_second=1e-3, burst_size=100))
    start = threading.Barrier(8)
    granted = [0] * 8

    def worker(i: int) -> None:
        start.wait(timeout=10)
        for n in range(200):
            granted[i] += registry.get_limiter(f"key_{n % 5}").try_acquire()

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert sum(granted) == 5 * 100
    assert len(registry) == 5


def test_waiters_on_other_event_loops_are_served_in_turn() -> None:
    """Waiters from two threads' event loops share one FIFO queue and all get their token."""
    limiter = TokenBucket(RateLimitConfig(tokens_per_second=200.0, burst_size=1, initial_tokens=0))
    done: list[int] = []

    def run(i: int) -> None:
        asyncio.run(asyncio.wait_for(limiter.acquire_async(), 5))
        done.append(i)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=10)
    assert sorted(done) == [0, 1, 2, 3]


def test_the_waiting_helpers_live_in_a_leaf_module() -> None:
    """The waits the native ``KeyedLimiter`` calls import no limiter module (no
    cycle); ``rate_limiter`` re-exports the names the native module looks up."""
    import ast
    import inspect

    from shared.resilience import _waiting, rate_limiter

    tree = ast.parse(inspect.getsource(_waiting))
    imported = {
        node.module if isinstance(node, ast.ImportFrom) else alias.name
        for node in ast.walk(tree)
        if isinstance(node, (ast.Import, ast.ImportFrom))
        for alias in node.names
    }
    ours = {name for name in imported if name and name.split(".")[0] == "shared"}
    assert ours == {"shared", "shared.observability", "shared.resilience.exceptions"}
    assert rate_limiter._acquire is _waiting._acquire
    assert rate_limiter._acquire_async is _waiting._acquire_async

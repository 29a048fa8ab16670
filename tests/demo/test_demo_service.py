"""OrderService: the patterns on the order path, on the backend under test."""

from __future__ import annotations

import asyncio

import pytest

from shared.demo.exchange import ExchangeProfile, Order, SimulatedExchange
from shared.demo.service import OrderService, ServiceStoppingError
from shared.demo.stats import Stats
from shared.demo.store import IdempotentOrders
from shared.demo.wiring import _InProcessLimiters
from shared.lifecycle import GracefulShutdown, ShutdownConfig
from shared.resilience import (
    CircuitBreakerConfig,
    CircuitBreakerOpenError,
    CircuitBreakerState,
    RateLimitConfig,
    RateLimitExceeded,
    RetryBudget,
    RetryConfig,
)
from shared.resilience.idempotency import InMemoryIdempotencyStore

CALM = ExchangeProfile(
    base_latency=0.0, latency_jitter=0.0, spike_probability=0.0, error_rate=0.0, outage_start=1e6
)


async def _nothing() -> None:
    return None


def make_service(
    profile: ExchangeProfile = CALM,
    rate: float = 1000.0,
    burst: float = 1000.0,
    shutdown: GracefulShutdown | None = None,
) -> OrderService:
    """A service on the in-memory store (the order path; the durable stores run end to end)."""
    store = IdempotentOrders(InMemoryIdempotencyStore(), "in memory", _nothing)
    return OrderService(
        SimulatedExchange(profile),
        store,
        _InProcessLimiters(RateLimitConfig(rate, burst), 1),
        Stats(),
        breaker_config=CircuitBreakerConfig(
            failure_threshold=2, timeout=60.0, expected_exceptions=(ConnectionError, TimeoutError)
        ),
        retry_config=RetryConfig(
            max_attempts=3,
            initial_delay=0.0,
            max_delay=0.0,
            retry_on=(ConnectionError, TimeoutError),
            budget=RetryBudget(ratio=0.5, min_retries_per_second=100.0),
        ),
        attempt_timeout=0.05,
        critical=None if shutdown is None else shutdown.critical,
    )


def order(key: str, user: str = "u1") -> Order:
    return Order(user, key, "BTC-USD", "buy", 1)


async def test_duplicates_are_replayed_with_the_first_fill() -> None:
    """Concurrent and later duplicates get the same fill; the exchange executed once."""
    service = make_service()
    results = await asyncio.gather(*(service.place_order(order("k1")) for _ in range(5)))
    again = await service.place_order(order("k1"))
    assert {r.fill.fill_id for r in [*results, again]} == {1}
    assert [r.replayed for r in results].count(False) == 1
    assert again.replayed
    assert service.exchange.executions == {"k1": 1}
    assert service.stats.replayed == 5


async def test_the_per_user_limit_rejects_with_a_wait() -> None:
    """Past its burst a user gets RateLimitExceeded with retry_after; others are unaffected."""
    service = make_service(rate=1.0, burst=2.0)
    await service.place_order(order("a"))
    await service.place_order(order("b"))
    with pytest.raises(RateLimitExceeded) as info:
        await service.place_order(order("c"))
    assert 0.0 < info.value.retry_after <= 1.0
    await service.place_order(order("d", user="u2"))
    assert service.stats.rate_limited == 1
    assert "c" not in service.exchange.executions


async def test_a_slow_exchange_times_out_retries_then_opens_the_breaker() -> None:
    """Each attempt is cut by the timeout; the retry stops at the open breaker."""
    slow = ExchangeProfile(
        base_latency=1.0,
        latency_jitter=0.0,
        spike_probability=0.0,
        error_rate=0.0,
        outage_start=1e6,
    )
    service = make_service(slow)
    with pytest.raises(CircuitBreakerOpenError):
        await service.place_order(order("k"))
    assert service.breaker.state is CircuitBreakerState.OPEN
    assert service.breaker.counters()["calls_failed"] == 2
    assert service.retry.statistics["retries"] == 2
    assert not service.exchange.executions
    # Nothing was executed, so the key is free: a later attempt would run it.
    with pytest.raises(CircuitBreakerOpenError):
        await service.place_order(order("k"))
    assert service.in_flight == 0


async def test_a_stopping_service_takes_no_new_orders() -> None:
    """After accepting is turned off, place_order refuses at once."""
    service = make_service()
    service.accepting = False
    with pytest.raises(ServiceStoppingError):
        await service.place_order(order("k"))
    assert service.stats.requests == 0


async def test_an_execution_holds_a_critical_section_a_replay_does_not() -> None:
    """A graceful shutdown waits for the order being executed; replays open no section."""
    shutdown = GracefulShutdown(ShutdownConfig(signal_handlers=()))
    slow = ExchangeProfile(
        base_latency=0.05,
        latency_jitter=0.0,
        spike_probability=0.0,
        error_rate=0.0,
        outage_start=1e6,
    )
    service = make_service(slow, shutdown=shutdown)
    service.attempt_timeout = 1.0
    task = asyncio.create_task(service.place_order(order("k")))
    for _ in range(100):
        if shutdown._critical_count:
            break
        await asyncio.sleep(0.002)
    assert shutdown._critical == {"order": 1}
    await task
    assert shutdown._critical_count == 0
    replay = await service.place_order(order("k"))
    assert replay.replayed
    assert shutdown._critical_count == 0


async def test_a_reused_key_for_another_order_is_refused() -> None:
    """The same key with other order fields raises IdempotencyMismatchError, executes nothing."""
    from shared.resilience.exceptions import IdempotencyMismatchError

    service = make_service()
    await service.place_order(order("k"))
    with pytest.raises(IdempotencyMismatchError):
        await service.place_order(Order("u1", "k", "ETH-USD", "sell", 3))
    assert service.exchange.executions == {"k": 1}

"""The simulated exchange: outage schedule, and nothing executed by a cancelled call."""

from __future__ import annotations

import asyncio

import pytest

from shared.demo.exchange import (
    ExchangeError,
    ExchangeOutageError,
    ExchangeProfile,
    Order,
    SimulatedExchange,
)

pytestmark = pytest.mark.backend_independent

ORDER = Order("u", "key-1", "BTC-USD", "buy", 1)


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_outage_window_of_a_timed_run() -> None:
    """A timed run has one outage from 40% to 60% of its duration."""
    clock = FakeClock()
    exchange = SimulatedExchange(ExchangeProfile.for_duration(10.0), clock=clock)
    seen = {}
    for t in (0.0, 3.9, 4.0, 5.9, 6.0, 9.0, 25.0):
        clock.now = t
        seen[t] = exchange.in_outage()
    assert seen == {
        0.0: False,
        3.9: False,
        4.0: True,
        5.9: True,
        6.0: False,
        9.0: False,
        25.0: False,
    }


def test_outages_repeat_without_an_end() -> None:
    """Without a duration the outage comes back every 30 s."""
    clock = FakeClock()
    exchange = SimulatedExchange(ExchangeProfile.for_duration(None), clock=clock)
    for t, expected in ((11.9, False), (12.0, True), (17.9, True), (18.0, False), (42.5, True)):
        clock.now = t
        assert exchange.in_outage() is expected, t


async def test_outage_and_errors_raise_connection_errors() -> None:
    """Outage and transient errors are ConnectionErrors and record no execution."""
    clock = FakeClock()
    profile = ExchangeProfile(base_latency=0.0, latency_jitter=0.0, error_rate=1.0, outage_start=5)
    exchange = SimulatedExchange(profile, clock=clock)
    with pytest.raises(ExchangeError):
        await exchange.execute(ORDER)
    clock.now = 5.0
    with pytest.raises(ExchangeOutageError):
        await exchange.execute(ORDER)
    assert not exchange.executions
    assert (exchange.calls, exchange.errors, exchange.outage_rejections) == (2, 1, 1)


async def test_a_call_cancelled_before_the_fill_executes_nothing() -> None:
    """A timeout that cancels the call during its latency leaves the ledger empty."""
    profile = ExchangeProfile(
        base_latency=1.0, latency_jitter=0.0, error_rate=0.0, outage_start=1e6
    )
    exchange = SimulatedExchange(profile)
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(exchange.execute(ORDER), 0.01)
    assert not exchange.executions
    fast = SimulatedExchange(
        ExchangeProfile(base_latency=0.0, latency_jitter=0.0, error_rate=0.0, spike_probability=0.0)
    )
    fill = await fast.execute(ORDER)
    assert fast.executions == {"key-1": 1}
    assert (fill.key, fill.fill_id, fill.quantity) == ("key-1", 1, 1)


def test_fingerprint_covers_the_order_not_the_key() -> None:
    """Duplicates of one order match; the same key with another quantity does not."""
    same = Order("u", "other-key", "BTC-USD", "buy", 1)
    different = Order("u", "key-1", "BTC-USD", "buy", 2)
    assert ORDER.fingerprint() == same.fingerprint()
    assert ORDER.fingerprint() != different.fingerprint()

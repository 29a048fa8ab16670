"""Reservations are cancelled once, for what they took; removing a key in use never
refills it; rates and arguments that do not fit are refused (on both backends)."""

from __future__ import annotations

import math
from typing import Any

import pytest

from shared.resilience import RateLimitConfig, RateLimiterRegistry, TokenBucket
from shared.testing import ManualClock


def drained_bucket(burst: float = 5.0) -> TokenBucket:
    limiter = TokenBucket(
        RateLimitConfig(tokens_per_second=1.0, burst_size=burst), clock=ManualClock()
    )
    assert limiter.try_acquire(burst)
    return limiter


@pytest.fixture(params=["bucket", "keyed"])
def drained(request: pytest.FixtureRequest) -> Any:
    """A drained burst-5 limiter: a TokenBucket, or one key of a registry."""
    if request.param == "bucket":
        return drained_bucket()
    registry = RateLimiterRegistry(
        RateLimitConfig(tokens_per_second=1.0, burst_size=5), clock=ManualClock()
    )
    limiter = registry.get_limiter("k")
    assert limiter.try_acquire(5.0)
    return limiter


def test_cancelling_with_more_tokens_than_reserved_is_an_error(drained: Any) -> None:
    """Reserve 1, cancel 5: refused, and no token appears."""
    _, ticket = drained.reserve(1)
    with pytest.raises(ValueError, match=r"tokens must be the tokens reserved with this ticket"):
        drained.cancel_reservation(5, ticket)
    assert drained.try_acquire() is False
    assert drained.cancel_reservation(1, ticket) is True
    assert drained.available_tokens == 0.0
    assert drained.try_acquire() is False


def test_a_reservation_is_cancelled_once(drained: Any) -> None:
    """A second cancellation is an error, even when the same state came back."""
    _, first = drained.reserve(1)
    assert drained.cancel_reservation(1, first) is True
    _, second = drained.reserve(1)  # leaves the bucket exactly as `first` did
    with pytest.raises(ValueError, match="already cancelled"):
        drained.cancel_reservation(1, first)
    assert drained.retry_after() == pytest.approx(2.0)  # `second` is still reserved
    assert drained.cancel_reservation(1, second) is True


def test_tickets_belong_to_their_limiter() -> None:
    """A ticket cancels only on its own limiter; anything but a ticket is a TypeError."""
    one, other = drained_bucket(), drained_bucket()
    _, ticket = one.reserve(1)
    other.reserve(1)
    with pytest.raises(ValueError, match="of this limiter"):
        other.cancel_reservation(1, ticket)
    for not_a_ticket in (-1, 0, 2**64, "t", None):
        with pytest.raises(TypeError, match="ticket must be a ticket returned by reserve"):
            one.cancel_reservation(1, not_a_ticket)
    assert one.cancel_reservation(1, ticket) is True
    assert repr(ticket) == "Reservation(tokens=1.0)"


def test_removing_a_key_in_use_does_not_refill_it() -> None:
    """remove_limiter on a drained key: live handles and new handles continue from the
    spent state, so removing and using in a loop grants no more than the limit."""
    clock = ManualClock()
    registry = RateLimiterRegistry(
        RateLimitConfig(tokens_per_second=1.0, burst_size=5), clock=clock
    )
    live = registry.get_limiter("user")
    granted = 0
    for _ in range(1000):
        granted += live.try_acquire()
        registry.remove_limiter("user")
    assert granted == 5
    assert registry.get_limiter("user").try_acquire() is False
    clock.advance(1.0)
    assert live.try_acquire() is True
    assert live.try_acquire() is False
    # Once it would have refilled, a removed key is forgotten entirely.
    registry.remove_limiter("user")
    clock.advance(10.0)
    assert registry.get_limiter("user").available_tokens == 5.0


def test_removed_keys_are_forgotten_once_refilled() -> None:
    """The memory of removed keys is purged as their buckets refill."""
    clock = ManualClock()
    registry = RateLimiterRegistry(
        RateLimitConfig(tokens_per_second=1.0, burst_size=1), clock=clock
    )
    for round_ in range(20):
        for index in range(100):
            key = f"{round_}:{index}"
            assert registry.get_limiter(key).try_acquire()
            registry.remove_limiter(key)
        clock.advance(2.0)
    assert len(registry) == 0
    # Still correct for a key removed just now.
    assert registry.get_limiter("fresh").try_acquire()
    registry.remove_limiter("fresh")
    assert registry.get_limiter("fresh").try_acquire() is False


def test_reset_all_forgets_removed_keys_too() -> None:
    """After reset_all a removed key starts from a full bucket again."""
    registry = RateLimiterRegistry(
        RateLimitConfig(tokens_per_second=1.0, burst_size=1), clock=ManualClock()
    )
    assert registry.get_limiter("k").try_acquire()
    registry.remove_limiter("k")
    registry.reset_all()
    assert registry.get_limiter("k").try_acquire() is True


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"tokens_per_second": 1e-12}, "tokens_per_second"),
        ({"tokens_per_second": 5e-10}, "tokens_per_second"),
        ({"tokens_per_second": 2e9}, "tokens_per_second"),
        ({"tokens_per_second": 2**1024}, "tokens_per_second"),
        ({"tokens_per_second": 1e-3, "burst_size": 1e7}, "burst_size"),
        ({"tokens_per_second": 1.0, "burst_size": 2**1024}, "burst_size"),
        ({"tokens_per_second": 1.0, "initial_tokens": 2**1024}, "initial_tokens"),
    ],
)
def test_rates_whose_interval_does_not_fit_are_refused(kwargs: dict, field: str) -> None:
    """No configuration is silently rounded or saturated: the field is named."""
    with pytest.raises(ValueError, match=field):
        RateLimitConfig(**kwargs)


def test_the_extreme_rates_that_fit_are_exact() -> None:
    """One token per 1e9 s and one per nanosecond are represented exactly."""
    clock = ManualClock()
    slowest = TokenBucket(RateLimitConfig(tokens_per_second=1e-9, burst_size=1), clock=clock)
    assert slowest.try_acquire()
    assert slowest.retry_after() == pytest.approx(1e9)
    fastest = TokenBucket(RateLimitConfig(tokens_per_second=1e9, burst_size=1e9), clock=clock)
    assert fastest.try_acquire(1e9)
    clock.advance_ns(1)
    assert fastest.available_tokens == 1.0


@pytest.mark.parametrize(
    ("tokens", "error", "message"),
    [
        ("5", TypeError, "tokens must be a number, got str"),
        (True, TypeError, "tokens must be a number, got bool"),
        (2**1024, ValueError, "tokens must be a finite number, got an int of 1025 bits"),
        (math.nan, ValueError, r"tokens must be a finite number > 0 and <= burst_size \(5.0\)"),
        (6, ValueError, r"got 6.0"),
    ],
)
def test_bad_tokens_are_refused_everywhere(tokens: Any, error: type, message: str) -> None:
    """The same error from every method that takes tokens, and nothing is granted."""
    registry = RateLimiterRegistry(RateLimitConfig(tokens_per_second=1.0, burst_size=5))
    for limiter in (drained_bucket(), registry.get_limiter("k")):
        for call in (limiter.try_acquire, limiter.reserve, limiter.retry_after, limiter.acquire):
            with pytest.raises(error, match=message):
                call(tokens)
    assert registry.get_limiter("k").available_tokens == 5.0


def test_keys_that_are_not_valid_text_are_refused_consistently() -> None:
    """A lone surrogate is a ValueError for every method, and not `in` the registry."""
    registry = RateLimiterRegistry()
    for method in (registry.get_limiter, registry.remove_limiter):
        with pytest.raises(ValueError, match="key must be valid text"):
            method("\ud800")
    with pytest.raises(ValueError, match="key must be valid text"):
        registry.set_limiter("\ud800", RateLimitConfig())
    assert ("\ud800" in registry) is False
    assert ("é" in registry) is False
    registry.get_limiter("é")
    assert "é" in registry


def test_max_keys_out_of_range_names_the_field() -> None:
    """max_keys beyond 2**32 - 2 (or a bool) is refused naming max_keys, not an OverflowError."""
    for bad in (2**64, 2**32, 0):
        with pytest.raises(ValueError, match=r"max_keys must be an int in \[1, 4294967294\]"):
            RateLimiterRegistry(max_keys=bad)
    with pytest.raises(TypeError, match="max_keys must be an int, got bool"):
        RateLimiterRegistry(max_keys=True)

"""Parity of the backoff calculator and the retry budget: Rust core against the pure twin."""

from __future__ import annotations

from collections.abc import Callable
from types import ModuleType
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shared.testing import ManualClock

# The Rust core and its twin side by side in every run: the backend the run
# selected plays no part.
pytestmark = pytest.mark.backend_independent

STRATEGIES = ("exponential", "linear", "constant")
JITTERS = ("none", "equal", "full", "decorrelated")
U64 = 2**64 - 1

attempts = st.one_of(
    st.integers(1, 64),
    st.integers(1, 5000),
    st.integers(1, U64),
    st.sampled_from([1, 1023, 1024, 1025, 2**53, 2**53 + 1, U64]),
)

delays = st.floats(0.0, 1e6, allow_nan=False, allow_infinity=False)


def outcome(call: Callable[[], Any]) -> tuple[str, Any]:
    """A result or an exception type, comparable across backends."""
    try:
        return "ok", call()
    except Exception as exc:
        return "error", type(exc).__name__


@given(
    strategy=st.sampled_from(STRATEGIES),
    jitter=st.sampled_from(JITTERS),
    initial=st.one_of(st.just(0.0), st.floats(1e-9, 100.0), st.floats(0.0, 1e6)),
    extra=st.floats(0.0, 1e9),
    base=st.one_of(st.just(1.0), st.floats(1.0, 10.0), st.floats(1.0, 1e6)),
    seed=st.integers(0, U64),
    calls=st.lists(st.tuples(attempts, delays), min_size=1, max_size=20),
)
def test_delays_match_bit_for_bit(
    native: ModuleType,
    pure: ModuleType,
    strategy: str,
    jitter: str,
    initial: float,
    extra: float,
    base: float,
    seed: int,
    calls: list[tuple[int, float]],
) -> None:
    """Same config and seed: the same delay sequence, for any attempt (huge ones capped)."""
    cap = initial + extra
    rust = native.Backoff(strategy, initial, cap, base, jitter, seed)
    twin = pure.Backoff(strategy, initial, cap, base, jitter, seed)
    for attempt, previous in calls:
        r, p = rust.delay(attempt, previous), twin.delay(attempt, previous)
        assert r == p, (attempt, previous)
        assert 0.0 <= r <= cap


@given(
    args=st.tuples(
        st.sampled_from([*STRATEGIES, "quadratic"]),
        st.sampled_from([-1.0, 0.0, 1.0, float("nan"), float("inf")]),
        st.sampled_from([0.5, 60.0, float("inf"), float("nan")]),
        st.sampled_from([0.0, 0.99, 1.0, 2.0, float("inf")]),
        st.sampled_from([*JITTERS, "partial"]),
        st.sampled_from([None, 0, U64, U64 + 1, -1]),
    ),
    attempt=st.sampled_from([0, 1, U64, U64 + 1, -1, 1.5]),
    previous=st.sampled_from([0.0, -1.0, float("nan"), float("inf"), 2.0]),
)
def test_errors_match(
    native: ModuleType, pure: ModuleType, args: tuple, attempt: Any, previous: float
) -> None:
    """Invalid configs and arguments fail with the same exception type in both."""
    rust, twin = outcome(lambda: native.Backoff(*args)), outcome(lambda: pure.Backoff(*args))
    assert rust[0] == twin[0]
    if rust[0] == "error":
        assert rust == twin
        return
    rust_delay = outcome(lambda: rust[1].delay(attempt, previous))
    twin_delay = outcome(lambda: twin[1].delay(attempt, previous))
    if args[5] is None and rust_delay[0] == "ok":  # unseeded: each draws its own jitter
        assert twin_delay[0] == "ok"
    else:
        assert rust_delay == twin_delay


@given(
    ratio=st.floats(0.0, 2.0),
    per_second=st.floats(0.0, 5.0),
    ttl=st.floats(0.01, 100.0),
    operations=st.lists(
        st.one_of(
            st.tuples(st.just("call"), st.just(0.0)),
            st.tuples(st.just("retry"), st.just(0.0)),
            st.tuples(st.just("advance"), st.floats(0.0, 30.0)),
        ),
        max_size=200,
    ),
)
def test_budget_decisions_match(
    native: ModuleType,
    pure: ModuleType,
    ratio: float,
    per_second: float,
    ttl: float,
    operations: list[tuple[str, float]],
) -> None:
    """Driven by one ManualClock, both budgets allow exactly the same retries."""
    clock = ManualClock()
    rust = native.RetryBudget(ratio, per_second, ttl, clock=clock)
    twin = pure.RetryBudget(ratio, per_second, ttl, clock=clock)
    for operation, seconds in operations:
        if operation == "call":
            rust.record_call()
            twin.record_call()
        elif operation == "retry":
            assert rust.try_retry() == twin.try_retry()
        else:
            clock.advance(seconds)
        assert rust.available() == twin.available()

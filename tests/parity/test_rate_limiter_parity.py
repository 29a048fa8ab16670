"""The Rust token bucket and registry against their pure twin: same operations, same results."""

from __future__ import annotations

import math
from collections.abc import Callable
from types import ModuleType
from typing import Any

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from shared.resilience import RateLimitConfig, RateLimitExceeded
from shared.testing import ManualClock

configs = st.builds(
    RateLimitConfig,
    tokens_per_second=st.one_of(
        st.sampled_from([0.5, 1.0, 3.0, 10.0, 7e8]),
        st.floats(min_value=1e-3, max_value=1e9, allow_nan=False),
    ),
    burst_size=st.one_of(st.none(), st.floats(min_value=1.0, max_value=1e4)),
)
tokens = st.one_of(
    st.sampled_from([1.0, 0.5, 2.0, 0.0, -1.0, math.nan, math.inf, 1e9]),
    st.floats(min_value=1e-3, max_value=100.0),
)
timeouts = st.one_of(st.none(), st.floats(min_value=0.0, max_value=10.0), st.just(-1.0))
advances = st.one_of(st.integers(0, 10), st.integers(0, 2_000_000_000))
keys = st.sampled_from(["a", "b", "c", "d", "a-key-longer-than-twenty-two-bytes"])


def outcome(call: Callable[[], Any]) -> tuple[str, Any]:
    """A call's result, or its exception type and (for rate limits) retry_after."""
    try:
        return ("ok", call())
    except RateLimitExceeded as exc:
        return ("RateLimitExceeded", exc.retry_after)
    except (ValueError, TypeError) as exc:
        return (type(exc).__name__, None)


def same(a: tuple[str, Any], b: tuple[str, Any]) -> None:
    assert a[0] == b[0], (a, b)
    if isinstance(a[1], float) and math.isnan(a[1]):
        assert math.isnan(b[1])
    else:
        assert a[1] == b[1], (a, b)


@pytest.fixture
def cores(native: ModuleType, pure: ModuleType) -> tuple[ModuleType, ModuleType]:
    return native, pure


class BucketParity(RuleBasedStateMachine):
    """One ManualClock drives a native and a pure TokenBucket through the same steps."""

    native: ModuleType
    pure: ModuleType

    @initialize(config=configs)
    def create(self, config: RateLimitConfig) -> None:
        self.clock = ManualClock()
        self.buckets = [m.TokenBucket(config, clock=self.clock) for m in (self.native, self.pure)]
        self.tickets: list[tuple[float, int]] = []

    @rule(ns=advances)
    def advance(self, ns: int) -> None:
        self.clock.advance_ns(ns)

    @rule(n=tokens)
    def try_acquire(self, n: float) -> None:
        same(*(outcome(lambda b=b: b.try_acquire(n)) for b in self.buckets))

    @rule(n=tokens, timeout=timeouts)
    def reserve(self, n: float, timeout: float | None) -> None:
        results = [outcome(lambda b=b: b.reserve(n, timeout)) for b in self.buckets]
        same(*results)
        if results[0][0] == "ok":
            self.tickets.append((n, results[0][1][1]))

    @rule(data=st.data())
    def cancel_reservation(self, data: st.DataObject) -> None:
        if self.tickets:
            n, ticket = data.draw(st.sampled_from(self.tickets))
            same(*(outcome(lambda b=b: b.cancel_reservation(n, ticket)) for b in self.buckets))

    @rule(n=tokens)
    def retry_after(self, n: float) -> None:
        same(*(outcome(lambda b=b: b.retry_after(n)) for b in self.buckets))

    @rule()
    def reset(self) -> None:
        for b in self.buckets:
            b.reset()

    @invariant()
    def same_tokens(self) -> None:
        if hasattr(self, "buckets"):
            native, pure = self.buckets
            assert native.available_tokens == pure.available_tokens


class RegistryParity(RuleBasedStateMachine):
    """A small native and pure registry (eviction, pinning, handles) in lockstep."""

    native: ModuleType
    pure: ModuleType

    @initialize(
        config=configs,
        max_keys=st.integers(1, 4),
        idle_ttl=st.sampled_from([0.0, 0.5, 3.0]),
    )
    def create(self, config: RateLimitConfig, max_keys: int, idle_ttl: float) -> None:
        self.clock = ManualClock()
        self.registries = [
            m.RateLimiterRegistry(config, max_keys=max_keys, idle_ttl=idle_ttl, clock=self.clock)
            for m in (self.native, self.pure)
        ]
        # Handles kept across steps, to check that stale ones behave the same.
        self.handles: dict[str, list[Any]] = {}

    def limiters(self, key: str, fresh: bool) -> list[tuple[str, Any]]:
        if fresh or key not in self.handles:
            results = [outcome(lambda r=r: r.get_limiter(key)) for r in self.registries]
            assert results[0][0] == results[1][0], results
            if results[0][0] != "ok":
                same(*results)
                return []
            self.handles[key] = [result[1] for result in results]
        return self.handles[key]

    @rule(ns=advances)
    def advance(self, ns: int) -> None:
        self.clock.advance_ns(ns)

    @rule(key=keys, n=tokens, fresh=st.booleans())
    def try_acquire(self, key: str, n: float, fresh: bool) -> None:
        handles = self.limiters(key, fresh)
        if handles:
            same(*(outcome(lambda h=h: h.try_acquire(n)) for h in handles))

    @rule(key=keys, n=tokens, timeout=timeouts, cancel=st.booleans())
    def reserve(self, key: str, n: float, timeout: float | None, cancel: bool) -> None:
        handles = self.limiters(key, False)
        if handles:
            results = [outcome(lambda h=h: h.reserve(n, timeout)) for h in handles]
            same(*results)
            if cancel and results[0][0] == "ok":
                ticket = results[0][1][1]
                same(*(outcome(lambda h=h: h.cancel_reservation(n, ticket)) for h in handles))

    @rule(key=keys, n=tokens)
    def retry_after_and_tokens(self, key: str, n: float) -> None:
        handles = self.limiters(key, False)
        if handles:
            same(*(outcome(lambda h=h: h.retry_after(n)) for h in handles))
            same(*(outcome(lambda h=h: h.available_tokens) for h in handles))

    @rule(key=keys, config=configs)
    def set_limiter(self, key: str, config: RateLimitConfig) -> None:
        same(
            *(
                outcome(lambda r=r: r.set_limiter(key, config).config is config)
                for r in self.registries
            )
        )

    @rule(key=keys)
    def remove_limiter(self, key: str) -> None:
        same(*(outcome(lambda r=r: r.remove_limiter(key)) for r in self.registries))

    @rule()
    def reset_all(self) -> None:
        for r in self.registries:
            r.reset_all()

    @invariant()
    def same_keys(self) -> None:
        if hasattr(self, "registries"):
            native, pure = self.registries
            assert len(native) == len(pure)
            for key in ["a", "b", "c", "d", "a-key-longer-than-twenty-two-bytes"]:
                assert (key in native) == (key in pure)


def test_token_bucket_parity(cores: tuple[ModuleType, ModuleType]) -> None:
    """Native and pure buckets agree on every result, error and token count."""
    BucketParity.native, BucketParity.pure = cores
    BucketParity.TestCase.settings = settings(max_examples=60, stateful_step_count=40)
    BucketParity.TestCase().runTest()


def test_registry_parity(cores: tuple[ModuleType, ModuleType]) -> None:
    """Native and pure registries agree on results, errors, evictions and keys held."""
    RegistryParity.native, RegistryParity.pure = cores
    RegistryParity.TestCase.settings = settings(max_examples=60, stateful_step_count=40)
    RegistryParity.TestCase().runTest()

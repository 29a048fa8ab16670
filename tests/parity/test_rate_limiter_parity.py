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

# The Rust core and its twin side by side in every run: the backend the run
# selected plays no part.
pytestmark = pytest.mark.backend_independent

configs = st.builds(
    RateLimitConfig,
    tokens_per_second=st.one_of(
        st.sampled_from([0.5, 1.0, 3.0, 10.0, 7e8]),
        st.floats(min_value=1e-3, max_value=1e9, allow_nan=False),
    ),
    burst_size=st.one_of(st.none(), st.floats(min_value=1.0, max_value=1e4)),
)

# Bad values of every kind: wrong types, bools, ints too large for a float, out of range.
bad_numbers = st.sampled_from(["5", b"1", True, False, [], 2**1024, -(2**1024), object()])
tokens = st.one_of(
    st.sampled_from([1.0, 0.5, 2.0, 0.0, -1.0, math.nan, math.inf, 1e9, 1e300, 2, 3]),
    st.floats(min_value=1e-3, max_value=100.0),
    bad_numbers,
)
timeouts = st.one_of(
    st.none(),
    st.floats(min_value=0.0, max_value=10.0),
    st.sampled_from([-1.0, math.nan, math.inf, 1e300, 2]),
    bad_numbers,
)
advances = st.one_of(st.integers(0, 10), st.integers(0, 2_000_000_000))
KEYS = ["a", "b", "c", "d", "a-key-longer-than-twenty-two-bytes", "\ud800", "é"]
keys = st.sampled_from(KEYS)


def outcome(call: Callable[[], Any]) -> tuple[str, Any]:
    """A call's result (a reservation ticket as its tokens), or its exception type
    and message (for rate limits, retry_after)."""
    try:
        result = call()
    except RateLimitExceeded as exc:
        return ("RateLimitExceeded", exc.retry_after)
    except Exception as exc:  # the type and the message must match across backends
        return (type(exc).__name__, str(exc))
    if isinstance(result, tuple) and len(result) == 2 and hasattr(result[1], "tokens"):
        return ("ok", (result[0], result[1].tokens))
    return ("ok", result)


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
        self.tickets: list[tuple[Any, list[Any]]] = []

    @rule(ns=advances)
    def advance(self, ns: int) -> None:
        self.clock.advance_ns(ns)

    @rule(n=tokens)
    def try_acquire(self, n: float) -> None:
        same(*(outcome(lambda b=b: b.try_acquire(n)) for b in self.buckets))

    @rule(n=tokens, timeout=timeouts)
    def reserve(self, n: float, timeout: float | None) -> None:
        raw: list[Any] = []

        def reserve(b: Any) -> Any:
            raw.append(b.reserve(n, timeout))
            return raw[-1]

        results = [outcome(lambda b=b: reserve(b)) for b in self.buckets]
        same(*results)
        if results[0][0] == "ok":
            self.tickets.append((n, [wait_and_ticket[1] for wait_and_ticket in raw]))

    @rule(data=st.data(), other_tokens=st.one_of(st.none(), tokens))
    def cancel_reservation(self, data: st.DataObject, other_tokens: Any) -> None:
        """Cancels a ticket (perhaps again, perhaps with other tokens, perhaps a ticket
        of the other backend's bucket, perhaps not a ticket at all)."""
        if self.tickets:
            n, tickets = data.draw(st.sampled_from(self.tickets))
            n = n if other_tokens is None else other_tokens
            swap = data.draw(st.sampled_from(["own", "other", "int"]))
            for_bucket = {"own": tickets, "other": tickets[::-1], "int": [-1, -1]}[swap]
            same(
                *(
                    outcome(lambda b=b, t=t: b.cancel_reservation(n, t))
                    for b, t in zip(self.buckets, for_bucket, strict=True)
                )
            )

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
        on_full=st.sampled_from(["evict", "reject"]),
    )
    def create(self, config: RateLimitConfig, max_keys: int, idle_ttl: float, on_full: str) -> None:
        self.clock = ManualClock()
        self.registries = [
            m.RateLimiterRegistry(
                config, max_keys=max_keys, idle_ttl=idle_ttl, clock=self.clock, on_full=on_full
            )
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

    @rule(key=st.one_of(keys, st.sampled_from([5, None, b"a"])), n=tokens)
    def try_acquire_one_call(self, key: Any, n: float) -> None:
        same(*(outcome(lambda r=r: r.try_acquire(key, n)) for r in self.registries))

    @rule(key=keys, n=tokens, timeout=timeouts, cancel=st.booleans())
    def reserve(self, key: str, n: float, timeout: float | None, cancel: bool) -> None:
        handles = self.limiters(key, False)
        if handles:
            raw: list[Any] = []

            def reserve(h: Any) -> Any:
                raw.append(h.reserve(n, timeout))
                return raw[-1]

            results = [outcome(lambda h=h: reserve(h)) for h in handles]
            same(*results)
            if cancel and results[0][0] == "ok":
                for _ in range(2):  # the second cancellation is an error on both
                    same(
                        *(
                            outcome(lambda h=h, r=r: h.cancel_reservation(n, r[1]))
                            for h, r in zip(handles, raw, strict=True)
                        )
                    )

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
            for key in [*KEYS, 5, None]:
                assert (key in native) == (key in pure)
            # The same keys in the same recency order: evictions agree.
            assert native._eviction_order() == pure._eviction_order()
            assert native.decision_counts() == pure.decision_counts()


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


def test_registry_eviction_step_by_step(cores: tuple[ModuleType, ModuleType]) -> None:
    """One ManualClock, both cores, a scripted sequence: every result, the
    recency order and the decision counts agree at each step, in both modes."""
    config = RateLimitConfig(tokens_per_second=1.0, burst_size=2.0)
    steps: list[Callable[[Any], Any] | float] = [
        lambda r: r.try_acquire("a"),
        lambda r: r.try_acquire("b"),
        lambda r: r.try_acquire("c", 2),
        lambda r: r.get_limiter("a").try_acquire(),
        lambda r: r.try_acquire("d"),  # full: evicts "b" / refuses
        2.5,  # seconds on the clock
        lambda r: r.try_acquire("e"),  # an idle key can go now
        lambda r: r.set_limiter("a", config) is not None,
        lambda r: r.try_acquire("f"),
        lambda r: r.remove_limiter("a"),
        lambda r: r.try_acquire("g", 3),
        lambda r: r.get_limiter("c").reserve(1.0, 0.0)[0],
        lambda r: r.get_limiter("c").reserve(5.0, 0.0),
        lambda r: r.get_limiter("c").reserve(2.0, 0.0),
        0.25,
        lambda r: r.try_acquire("h"),
    ]
    for on_full in ("evict", "reject"):
        clock = ManualClock()
        registries = [
            m.RateLimiterRegistry(config, max_keys=3, idle_ttl=1.0, clock=clock, on_full=on_full)
            for m in cores
        ]
        native, pure = registries
        for number, step in enumerate(steps):
            if isinstance(step, float):
                clock.advance(step)
                continue
            same(*(outcome(lambda r=r, step=step: step(r)) for r in registries))
            assert native._eviction_order() == pure._eviction_order(), (on_full, number)
            assert native.decision_counts() == pure.decision_counts(), (on_full, number)
            assert len(native) == len(pure), (on_full, number)
        granted, rejected = native.decision_counts()
        assert granted > 0
        assert rejected > 0

"""The Rust idempotency LRU against its pure twin: same steps on one clock, same answers."""

from __future__ import annotations

import math
from collections.abc import Callable
from types import ModuleType
from typing import Any

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from shared.testing import ManualClock

# Both cores are compared whichever backend the run selected: once per install.
pytestmark = pytest.mark.backend_independent

# Mostly valid arguments (so that entries live, expire and get evicted), some bad ones.
GOOD_KEYS = st.sampled_from(["a", "b", "c", "d", "e"])
keys = st.one_of(
    GOOD_KEYS,
    GOOD_KEYS,
    GOOD_KEYS,
    st.sampled_from(["a-key-longer-than-twenty-two-bytes", "é", "\ud800", "", 1, None, b"a"]),
)
GOOD_FINGERPRINTS = st.sampled_from(["f1", "f1", "f1", "f2", ""])
fingerprints = st.one_of(
    GOOD_FINGERPRINTS, GOOD_FINGERPRINTS, GOOD_FINGERPRINTS, st.sampled_from([None, 3])
)
GOOD_DURATIONS = st.one_of(
    st.sampled_from([0.5, 1.0, 2.0, 5.0, 1e-9, 1e9]), st.floats(min_value=1e-6, max_value=10.0)
)
durations = st.one_of(
    GOOD_DURATIONS,
    GOOD_DURATIONS,
    GOOD_DURATIONS,
    st.sampled_from([0, -1.0, math.nan, math.inf, 1e10, "1", True, 3]),
)
GOOD_OWNERS = st.integers(0, 1)
owners = st.one_of(
    GOOD_OWNERS, GOOD_OWNERS, GOOD_OWNERS, st.sampled_from([-1, 2**64, True, "1", 1.0])
)
values = st.sampled_from(["r1", "r2", None, 7, ("t",)])
advances = st.one_of(st.integers(0, 3), st.integers(0, 3_000_000_000))


def outcome(call: Callable[[], Any]) -> tuple[str, Any]:
    """A call's result, or its exception type and message."""
    try:
        return ("ok", call())
    except Exception as exc:  # type and message must match across backends
        return (type(exc).__name__, str(exc))


class LruParity(RuleBasedStateMachine):
    """One ManualClock drives a native and a pure IdempotencyLru through the same steps."""

    native: ModuleType
    pure: ModuleType

    @initialize(capacity=st.integers(1, 4))
    def create(self, capacity: int) -> None:
        self.clock = ManualClock(100.0)
        self.cores = [
            m.IdempotencyLru(capacity, clock=self.clock) for m in (self.native, self.pure)
        ]

    def both(self, method: str, *args: Any) -> Any:
        rust, py = (outcome(lambda c=c: getattr(c, method)(*args)) for c in self.cores)
        assert rust == py, (method, args, rust, py)
        return rust

    @rule(key=keys, fp=fingerprints, lease=durations, owner=owners)
    def claim(self, key: Any, fp: Any, lease: Any, owner: Any) -> None:
        self.both("claim", key, fp, lease, owner)

    @rule(key=GOOD_KEYS, fp=GOOD_FINGERPRINTS, lease=GOOD_DURATIONS, owner=GOOD_OWNERS)
    def claim_valid(self, key: str, fp: str, lease: float, owner: int) -> None:
        self.both("claim", key, fp, lease, owner)

    @rule(key=GOOD_KEYS, owner=GOOD_OWNERS, value=values, ttl=GOOD_DURATIONS)
    def complete_valid(self, key: str, owner: int, value: Any, ttl: float) -> None:
        self.both("complete", key, owner, value, ttl)

    @rule(key=keys, owner=owners, value=values, ttl=durations)
    def complete(self, key: Any, owner: Any, value: Any, ttl: Any) -> None:
        self.both("complete", key, owner, value, ttl)

    @rule(key=keys, owner=owners, value=values, ttl=durations)
    def fail(self, key: Any, owner: Any, value: Any, ttl: Any) -> None:
        self.both("fail", key, owner, value, ttl)

    @rule(key=keys, owner=owners)
    def release(self, key: Any, owner: Any) -> None:
        self.both("release", key, owner)

    @rule(key=keys, owner=owners, lease=durations)
    def extend(self, key: Any, owner: Any, lease: Any) -> None:
        self.both("extend", key, owner, lease)

    @rule(key=keys)
    def delete(self, key: Any) -> None:
        self.both("delete", key)

    @rule(key=keys)
    def get(self, key: Any) -> None:
        self.both("get", key)

    @rule(key=keys, value=values, ttl=durations)
    def set(self, key: Any, value: Any, ttl: Any) -> None:
        self.both("set", key, value, ttl)

    @rule(key=keys)
    def exists(self, key: Any) -> None:
        self.both("exists", key)

    @rule(key=keys)
    def state(self, key: Any) -> None:
        self.both("state", key)

    @rule(key=GOOD_KEYS, value=values, ttl=GOOD_DURATIONS)
    def set_valid(self, key: str, value: Any, ttl: float) -> None:
        self.both("set", key, value, ttl)

    @rule(key=GOOD_KEYS)
    def get_valid(self, key: str) -> None:
        self.both("get", key)

    @rule(
        key=GOOD_KEYS,
        owner=GOOD_OWNERS,
        lease=GOOD_DURATIONS,
        wait=GOOD_DURATIONS,
        op=st.sampled_from(["complete", "fail", "extend", "release", "claim"]),
    )
    def claim_wait_settle(self, key: str, owner: int, lease: float, wait: float, op: str) -> None:
        # Straight to the boundaries of a lease: claim, wait, then act as the owner.
        self.both("claim", key, "f1", lease, owner)
        self.clock.advance(wait)
        args = {
            "complete": (key, owner, "r", 5.0),
            "fail": (key, owner, "e", 5.0),
            "extend": (key, owner, 1.0),
            "release": (key, owner),
            "claim": (key, "f1", 1.0, owner + 1),
        }[op]
        self.both(op, *args)

    @rule()
    def snapshot(self) -> None:
        # Every key's state (state() does not touch the LRU order, but drops
        # expired entries, so it is a step, not an invariant).
        for key in "abcde":
            self.both("state", key)

    @rule(ns=advances)
    def advance(self, ns: int) -> None:
        self.clock.advance_ns(ns)

    @rule()
    def advance_past_short_leases(self) -> None:
        self.clock.advance(10.5)

    @invariant()
    def same_size_and_evictions(self) -> None:
        if not hasattr(self, "cores"):
            return
        rust, py = self.cores
        assert len(rust) == len(py) <= rust.capacity
        assert rust.evictions == py.evictions
        assert rust.capacity == py.capacity
        assert rust.clock is py.clock is self.clock


@pytest.mark.parametrize("machine", [LruParity])
def test_lru_parity(
    machine: type[RuleBasedStateMachine], native: ModuleType, pure: ModuleType
) -> None:
    """Claims, completions, failures, expiries and evictions agree step by step."""
    machine.native, machine.pure = native, pure  # type: ignore[attr-defined]
    machine.TestCase.settings = settings(max_examples=80, stateful_step_count=50)
    machine.TestCase().runTest()


def test_clear(native: ModuleType, pure: ModuleType) -> None:
    """clear() forgets every entry in both cores."""
    for core in (native, pure):
        lru = core.IdempotencyLru(3, clock=ManualClock())
        assert lru.set("a", 1, 10.0)
        assert lru.claim("b", "f", 10.0, 1) == (0, None)
        lru.clear()
        assert len(lru) == 0
        assert lru.get("a") is None
        assert lru.claim("b", "f", 10.0, 2) == (0, None)


@pytest.mark.parametrize("capacity", [0, -1, True, 2**32, "10", 1.5])
def test_bad_capacity(native: ModuleType, pure: ModuleType, capacity: Any) -> None:
    """Both cores refuse a bad capacity with the same error."""
    assert outcome(lambda: native.IdempotencyLru(capacity)) == outcome(
        lambda: pure.IdempotencyLru(capacity)
    )
    with pytest.raises((TypeError, ValueError), match="capacity"):
        pure.IdempotencyLru(capacity)


def test_bad_clock(native: ModuleType, pure: ModuleType) -> None:
    """A clock without now_ns() is a TypeError in both."""
    for core in (native, pure):
        with pytest.raises(TypeError, match="now_ns"):
            core.IdempotencyLru(clock=object())

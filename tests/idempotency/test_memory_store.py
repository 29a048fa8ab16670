"""InMemoryIdempotencyStore specifics: its bound, what it evicts, what it never evicts."""

from __future__ import annotations

import pytest

from shared.resilience import IdempotencyStoreError, InMemoryIdempotencyStore
from shared.resilience.idempotency import ClaimState
from shared.testing import ManualClock


def test_full_store_evicts_the_least_recently_used_result_only() -> None:
    """A new key in a full store evicts the LRU completed result, never a claim."""
    clock = ManualClock()
    store = InMemoryIdempotencyStore(capacity=3, clock=clock)
    store.set("old", "a", 60)
    store.set("recent", "b", 60)
    held = store.claim("held", "fp", 60)
    assert store.get("old") == "a"  # "old" is now more recent than "recent"
    assert store.claim("new", "fp", 60).state is ClaimState.CLAIMED
    assert store.evictions == 1
    assert store.exists("old")
    assert not store.exists("recent")
    assert store.claim("held", "fp", 60).state is ClaimState.IN_PROGRESS
    assert store.complete(held.token, "done", 60)
    assert len(store) == 3


def test_a_store_full_of_claims_refuses_new_keys_until_a_lease_ends() -> None:
    """Full of in-progress (or failed) keys: a clear error, nothing evicted, nothing executed."""
    clock = ManualClock()
    store = InMemoryIdempotencyStore(capacity=2, clock=clock)
    first = store.claim("a", "fp", 10)
    failed = store.claim("b", "fp", 10)
    assert store.fail(failed.token, "kept", 60)
    with pytest.raises(IdempotencyStoreError, match="full") as info:
        store.claim("c", "fp", 10)
    assert info.value.executed is False
    with pytest.raises(IdempotencyStoreError, match="full"):
        store.set("c", "v", 10)
    assert store.claim("a", "fp", 10).state is ClaimState.IN_PROGRESS
    clock.advance(10.5)  # "a"'s lease ends: its place is free again
    assert store.claim("c", "fp", 10).state is ClaimState.CLAIMED
    assert store.claim("b", "fp", 10).state is ClaimState.FAILED
    assert store.complete(first.token, "late", 60) is False


def test_construction_is_checked() -> None:
    """A bad capacity, clock or name is refused at construction, naming it."""
    with pytest.raises(ValueError, match="capacity"):
        InMemoryIdempotencyStore(capacity=0)
    with pytest.raises(TypeError, match="capacity"):
        InMemoryIdempotencyStore(capacity=1.5)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="now_ns"):
        InMemoryIdempotencyStore(clock=object())  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="name"):
        InMemoryIdempotencyStore(name="")


def test_tokens_of_other_stores_do_not_work() -> None:
    """A token from another store (or a forged one) settles nothing."""
    one, two = InMemoryIdempotencyStore(), InMemoryIdempotencyStore()
    token = one.claim("k", "fp", 10).token
    assert two.claim("k", "fp", 10).state is ClaimState.CLAIMED
    assert two.complete(token, "x", 60) is False
    with pytest.raises(TypeError, match="OwnerToken"):
        one.complete(("k", token.owner), "x", 60)  # type: ignore[arg-type]
    assert one.complete(token, "x", 60) is True
    assert repr(one).startswith("InMemoryIdempotencyStore(name='memory', keys=1")

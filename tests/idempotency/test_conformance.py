"""The conformance suite every idempotency store passes (see conftest.py for the contract)."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import enum
import math
import threading
import uuid
from decimal import Decimal
from typing import Any

import pytest

from shared.resilience.idempotency import (
    OUTCOMES,
    AtomicIdempotencyStore,
    ClaimState,
    IdempotencyStore,
    OwnerToken,
)

LEASE = 0.3  # seconds: short, for stores on real time


def new_key(prefix: str = "k") -> str:
    return f"conf-{prefix}-{uuid.uuid4().hex}"


class Side(enum.Enum):
    BUY = "buy"
    SELL = "sell"


@dataclasses.dataclass(frozen=True)
class Fill:
    order_id: str
    price: Decimal
    side: Side


RESULTS: list[Any] = [
    None,
    "text é",
    42,
    1.5,
    True,
    [1, "a", None],
    {"tx": "0xabc", "amount": 1000, "nested": {"ok": True}},
    Decimal("1000.000000000000000001"),
    datetime.datetime(
        2026, 1, 2, 3, 4, 5, 678901, tzinfo=datetime.timezone(datetime.timedelta(hours=-5))
    ),
    datetime.date(2026, 1, 2),
    uuid.UUID("12345678-1234-5678-1234-567812345678"),
    Side.SELL,
    Fill("o1", Decimal("0.1"), Side.BUY),
    ("a", 1),
]


def test_the_store_implements_both_protocols(store_case: Any) -> None:
    """Every store is an AtomicIdempotencyStore, an IdempotencyStore, and counts outcomes."""
    store = store_case.store
    assert isinstance(store, AtomicIdempotencyStore)
    assert isinstance(store, IdempotencyStore)
    assert isinstance(store.name, str)
    assert store.name
    assert set(store.outcome_counts()) == set(OUTCOMES)
    assert all(v == 0 for v in store.outcome_counts().values())


def test_one_claim_then_in_progress_then_completed(store_case: Any) -> None:
    """The first claim owns the key; others see it in progress, then its result."""
    store, key = store_case.store, new_key()
    first = store.claim(key, "fp", LEASE)
    assert first.state is ClaimState.CLAIMED
    assert isinstance(first.token, OwnerToken)
    assert first.token.key == key
    second = store.claim(key, "fp", LEASE)
    assert second.state is ClaimState.IN_PROGRESS
    assert second.token is None
    assert 0 < second.retry_after <= LEASE
    assert not store.exists(key)
    assert store.get(key) is None
    assert store.complete(first.token, {"ok": 1}, 60)
    done = store.claim(key, "fp", LEASE)
    assert done.state is ClaimState.COMPLETED
    assert done.result == {"ok": 1}
    assert store.get(key) == {"ok": 1}
    assert store.exists(key)


def test_another_fingerprint_is_a_mismatch(store_case: Any) -> None:
    """The same key with other arguments is a mismatch, in progress or completed."""
    store, key = store_case.store, new_key()
    claim = store.claim(key, "fp-a", LEASE)
    assert store.claim(key, "fp-b", LEASE).state is ClaimState.MISMATCH
    assert store.complete(claim.token, 1, 60)
    assert store.claim(key, "fp-b", LEASE).state is ClaimState.MISMATCH
    assert store.claim(key, "fp-a", LEASE).state is ClaimState.COMPLETED


def test_only_the_owner_settles(store_case: Any) -> None:
    """A foreign token completes, fails, releases and extends nothing."""
    store, key = store_case.store, new_key()
    claim = store.claim(key, "fp", LEASE)
    for foreign in (
        OwnerToken(key, "not-the-owner"),
        OwnerToken(key, "0"),
        OwnerToken(new_key(), claim.token.owner),
    ):
        assert store.complete(foreign, "x", 60) is False
        assert store.fail(foreign, "x", 60) is False
        assert store.release(foreign) is False
        assert store.extend(foreign, LEASE) is False
    assert store.claim(key, "fp", LEASE).state is ClaimState.IN_PROGRESS
    assert store.complete(claim.token, "mine", 60) is True
    assert store.complete(claim.token, "again", 60) is False
    assert store.get(key) == "mine"


def test_release_frees_the_key_and_voids_the_token(store_case: Any) -> None:
    """After a release the next claim executes; the old token is worthless."""
    store, key = store_case.store, new_key()
    old = store.claim(key, "fp", LEASE).token
    assert store.release(old) is True
    assert store.release(old) is False
    new = store.claim(key, "fp", LEASE)
    assert new.state is ClaimState.CLAIMED
    assert new.token != old
    assert store.complete(old, "stale", 60) is False
    assert store.complete(new.token, "fresh", 60) is True
    assert store.get(key) == "fresh"


def test_a_failed_key_stays_failed_until_deleted(store_case: Any) -> None:
    """fail() keeps the key (with the error) until delete()."""
    store, key = store_case.store, new_key()
    claim = store.claim(key, "fp", LEASE)
    assert store.fail(claim.token, "ConnectionError: node down", 60) is True
    failed = store.claim(key, "fp", LEASE)
    assert failed.state is ClaimState.FAILED
    assert "node down" in str(failed.result)
    assert not store.exists(key)
    assert store.delete(key) is True
    assert store.delete(key) is False
    assert store.claim(key, "fp", LEASE).state is ClaimState.CLAIMED


def test_an_expired_lease_frees_the_key(store_case: Any) -> None:
    """A crashed holder's key is claimable after its lease; its token is void."""
    store, key = store_case.store, new_key()
    old = store.claim(key, "fp", LEASE).token
    store_case.advance(LEASE * 1.5)
    assert store.complete(old, "late", 60) is False
    assert store.extend(old, LEASE) is False
    new = store.claim(key, "fp", LEASE)
    assert new.state is ClaimState.CLAIMED
    assert store.complete(old, "late", 60) is False
    assert store.release(old) is False
    assert store.complete(new.token, "ok", 60) is True


def test_extend_keeps_the_claim(store_case: Any) -> None:
    """A renewed lease outlives the first one."""
    store, key = store_case.store, new_key()
    token = store.claim(key, "fp", LEASE).token
    store_case.advance(LEASE * 0.6)
    assert store.extend(token, LEASE) is True
    store_case.advance(LEASE * 0.6)
    assert store.claim(key, "fp", LEASE).state is ClaimState.IN_PROGRESS
    assert store.complete(token, "ok", 60) is True


def test_a_result_expires_after_its_ttl(store_case: Any) -> None:
    """After the TTL the key executes again."""
    store, key = store_case.store, new_key()
    token = store.claim(key, "fp", LEASE).token
    assert store.complete(token, "v", LEASE)
    assert store.get(key) == "v"
    store_case.advance(LEASE * 1.5)
    assert store.get(key) is None
    assert not store.exists(key)
    assert store.claim(key, "fp", LEASE).state is ClaimState.CLAIMED


def test_the_documents_get_set_exists(store_case: Any) -> None:
    """set stores (and overwrites) a result; get/exists see it; get of a missing key is None."""
    store, key = store_case.store, new_key()
    assert store.get(key) is None
    assert store.exists(key) is False
    store.set(key, {"v": 1}, 60)
    assert store.exists(key) is True
    assert store.get(key) == {"v": 1}
    store.set(key, {"v": 2}, 60)
    assert store.get(key) == {"v": 2}
    # A result stored by set() replays to any fingerprint.
    assert store.claim(key, "any", LEASE).state is ClaimState.COMPLETED


async def test_the_async_forms(store_case: Any) -> None:
    """Every method has an _async form with the same answers."""
    store, key = store_case.store, new_key()
    claim = await store.claim_async(key, "fp", LEASE)
    assert claim.state is ClaimState.CLAIMED
    assert (await store.claim_async(key, "fp", LEASE)).state is ClaimState.IN_PROGRESS
    assert await store.extend_async(claim.token, LEASE) is True
    assert await store.complete_async(claim.token, [1, 2], 60) is True
    assert await store.get_async(key) == [1, 2]
    assert await store.exists_async(key) is True
    other = new_key()
    token = (await store.claim_async(other, "fp", LEASE)).token
    assert await store.release_async(token) is True
    token = (await store.claim_async(other, "fp", LEASE)).token
    assert await store.fail_async(token, "boom", 60) is True
    assert (await store.claim_async(other, "fp", LEASE)).state is ClaimState.FAILED
    assert await store.delete_async(other) is True
    await store.set_async(other, "manual", 60)
    assert await store.get_async(other) == "manual"


@pytest.mark.parametrize("result", RESULTS, ids=lambda r: type(r).__name__)
def test_results_round_trip(store_case: Any, result: Any) -> None:
    """A replayed result is equal to the original and of the same type."""
    store, key = store_case.store, new_key()
    token = store.claim(key, "fp", LEASE).token
    assert store.complete(token, result, 60)
    replayed = store.claim(key, "fp", LEASE).result
    assert replayed == result
    assert type(replayed) is type(result)
    if isinstance(result, datetime.datetime):
        assert replayed.utcoffset() == result.utcoffset()


def test_sixteen_threads_one_claim(store_case: Any) -> None:
    """16 threads claiming one key at once: exactly one owns it."""
    store, key = store_case.store, new_key()
    barrier = threading.Barrier(16)
    states: list[ClaimState] = []
    lock = threading.Lock()

    def worker() -> None:
        barrier.wait(timeout=10)
        state = store.claim(key, "fp", 30).state
        with lock:
            states.append(state)

    threads = [threading.Thread(target=worker) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=20)
    assert len(states) == 16
    assert states.count(ClaimState.CLAIMED) == 1
    assert states.count(ClaimState.IN_PROGRESS) == 15


async def test_eight_tasks_one_claim(store_case: Any) -> None:
    """8 asyncio tasks claiming one key at once: exactly one owns it."""
    store, key = store_case.store, new_key()
    claims = await asyncio.gather(*(store.claim_async(key, "fp", 30) for _ in range(8)))
    states = [c.state for c in claims]
    assert states.count(ClaimState.CLAIMED) == 1
    assert states.count(ClaimState.IN_PROGRESS) == 7


@pytest.mark.parametrize("bad", [0, -1.0, math.nan, math.inf, "5", None])
def test_bad_lease_and_ttl(store_case: Any, bad: Any) -> None:
    """A lease or TTL that is not a finite number > 0 is refused, naming it."""
    store, key = store_case.store, new_key()
    with pytest.raises((ValueError, TypeError), match="lease"):
        store.claim(key, "fp", bad)
    token = store.claim(key, "fp", LEASE).token
    with pytest.raises((ValueError, TypeError), match="ttl"):
        store.complete(token, "v", bad)
    with pytest.raises((ValueError, TypeError), match="ttl"):
        store.set(key, "v", bad)
    assert store.claim(key, "fp", LEASE).state is ClaimState.IN_PROGRESS


def test_bad_keys(store_case: Any) -> None:
    """A non-str key is a TypeError, an empty key a ValueError."""
    store = store_case.store
    with pytest.raises(TypeError, match="key"):
        store.claim(123, "fp", LEASE)
    with pytest.raises(ValueError, match="key"):
        store.claim("", "fp", LEASE)
    with pytest.raises(TypeError, match="key"):
        store.get(None)
    with pytest.raises(ValueError, match="key"):
        store.set("", "v", 60)

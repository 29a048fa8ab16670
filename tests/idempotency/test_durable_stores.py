"""The contract every durable store keeps (SQLite, Redis, PostgreSQL), store by store.

The conformance suite runs the full contract over every store; these tests pin
what the durable stores add: expiry on their own clocks, threads, asyncio tasks
and processes racing on one key, a SIGKILLed holder, and results surviving the
store object (a new store on the same file/server/table reads them).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import _processes
import pytest
from durable_stores import DURABLE_STORE_FACTORIES, StoreCase

from shared.resilience.idempotency.codec import ResultNotStorableError
from shared.resilience.idempotency.store import (
    AtomicIdempotencyStore,
    ClaimState,
    IdempotencyStore,
    OwnerToken,
)
from shared.testing import ManualClock

pytestmark = pytest.mark.backend_independent

KINDS = [
    pytest.param("sqlite", id="sqlite"),
    pytest.param("redis", id="redis", marks=pytest.mark.redis),
    pytest.param("postgres", id="postgres", marks=pytest.mark.postgres),
]
SHORT_LEASE = 0.2  # real seconds, for the stores whose clock is the server's


@pytest.fixture(params=KINDS)
def case(request: pytest.FixtureRequest) -> Iterator[tuple[str, StoreCase]]:
    made = DURABLE_STORE_FACTORIES[request.param](ManualClock(1000.0))
    try:
        yield request.param, made
    finally:
        made.cleanup()


def _expire(made: StoreCase, seconds: float) -> None:
    """Lets ``seconds`` pass on the store's clock."""
    if made.clock is not None:
        made.clock.advance(seconds + 0.001)
    else:
        time.sleep(seconds + 0.05)


def test_implements_both_protocols(case: tuple[str, StoreCase]) -> None:
    """Every durable store is an AtomicIdempotencyStore and the document's IdempotencyStore."""
    store = case[1].store
    assert isinstance(store, AtomicIdempotencyStore)
    assert isinstance(store, IdempotencyStore)
    assert isinstance(store.name, str)
    assert store.name


def test_claim_answers_each_state(case: tuple[str, StoreCase]) -> None:
    """claimed, then in progress (same args), mismatch (other args), completed with the result."""
    store = case[1].store
    first = store.claim("k", "fp-1", 30)
    assert first.state is ClaimState.CLAIMED
    assert first.token == OwnerToken("k", first.token.owner)
    busy = store.claim("k", "fp-1", 30)
    assert busy.state is ClaimState.IN_PROGRESS
    assert 0 < busy.retry_after <= 30
    assert store.claim("k", "fp-2", 30).state is ClaimState.MISMATCH
    assert not store.exists("k")
    assert store.get("k") is None
    result = {"amount": Decimal("1000.10"), "fills": (1, 2)}
    assert store.complete(first.token, result, 60)
    done = store.claim("k", "fp-1", 30)
    assert (done.state, done.result, done.token) == (ClaimState.COMPLETED, result, None)
    assert store.claim("k", "fp-2", 30).state is ClaimState.MISMATCH
    assert store.exists("k")
    assert store.get("k") == result


def test_owner_checks(case: tuple[str, StoreCase]) -> None:
    """Only the owner's live token completes, fails, releases or extends; once only."""
    store = case[1].store
    token = store.claim("k", "", 30).token
    stranger = OwnerToken("k", "0" * 32)
    assert not store.complete(stranger, 1, 60)
    assert not store.fail(stranger, "boom", 60)
    assert not store.release(stranger)
    assert not store.extend(stranger, 60)
    assert store.claim("k", "", 30).state is ClaimState.IN_PROGRESS
    assert store.extend(token, 30)
    assert store.complete(token, "done", 60)
    assert not store.complete(token, "again", 60)
    assert not store.release(token)
    assert not store.extend(token, 30)
    assert store.get("k") == "done"


def test_release_frees_and_fail_keeps(case: tuple[str, StoreCase]) -> None:
    """release lets the next claim run; fail keeps the key FAILED with the error."""
    store = case[1].store
    token = store.claim("a", "", 30).token
    assert store.release(token)
    again = store.claim("a", "", 30)
    assert again.state is ClaimState.CLAIMED
    assert store.fail(again.token, "insufficient funds", 60)
    failed = store.claim("a", "", 30)
    assert (failed.state, failed.result) == (ClaimState.FAILED, "insufficient funds")
    assert not store.exists("a")
    assert store.get("a") is None
    assert store.delete("a")
    assert not store.delete("a")
    assert store.claim("a", "", 30).state is ClaimState.CLAIMED


def test_lease_expiry_frees_the_key_and_voids_the_old_token(case: tuple[str, StoreCase]) -> None:
    """After the lease a new claim wins; the old token can no longer complete it."""
    store = case[1].store
    old = store.claim("k", "", SHORT_LEASE).token
    _expire(case[1], SHORT_LEASE)
    new = store.claim("k", "", 30)
    assert new.state is ClaimState.CLAIMED
    assert new.token != old
    assert not store.complete(old, "late", 60)
    assert not store.release(old)
    assert store.complete(new.token, "fresh", 60)
    assert store.get("k") == "fresh"


def test_extend_keeps_the_claim_past_its_first_lease(case: tuple[str, StoreCase]) -> None:
    """A long call extends its lease, and the key stays in progress past the first lease."""
    store = case[1].store
    token = store.claim("k", "", SHORT_LEASE).token
    assert store.extend(token, 30)
    _expire(case[1], SHORT_LEASE)
    assert store.claim("k", "", 30).state is ClaimState.IN_PROGRESS
    assert store.complete(token, 7, 60)


def test_ttl_expiry_forgets_a_completed_key(case: tuple[str, StoreCase]) -> None:
    """A completed key is replayed for its TTL, then executes again."""
    store = case[1].store
    token = store.claim("k", "", 30).token
    assert store.complete(token, "r", SHORT_LEASE)
    assert store.claim("k", "", 30).state is ClaimState.COMPLETED
    _expire(case[1], SHORT_LEASE)
    assert not store.exists("k")
    assert store.claim("k", "", 30).state is ClaimState.CLAIMED


def test_document_protocol_set_get_exists(case: tuple[str, StoreCase]) -> None:
    """The manual pattern: set, exists, get (and a set key replays to a claim)."""
    store = case[1].store
    assert not store.exists("trade_1")
    assert store.get("trade_1") is None
    store.set("trade_1", {"tx": "0xabc", "qty": Decimal("0.5")}, 60)
    assert store.exists("trade_1")
    assert store.get("trade_1") == {"tx": "0xabc", "qty": Decimal("0.5")}
    replay = store.claim("trade_1", "any", 30)
    assert (replay.state, replay.result) == (ClaimState.COMPLETED, store.get("trade_1"))


async def test_async_forms(case: tuple[str, StoreCase]) -> None:
    """Every _async form does what its sync twin does."""
    store = case[1].store
    claim = await store.claim_async("k", "fp", 30)
    assert claim.state is ClaimState.CLAIMED
    assert (await store.claim_async("k", "fp", 30)).state is ClaimState.IN_PROGRESS
    assert (await store.claim_async("k", "zz", 30)).state is ClaimState.MISMATCH
    assert await store.extend_async(claim.token, 30)
    assert await store.complete_async(claim.token, [1, "two"], 60)
    assert not await store.release_async(claim.token)
    assert await store.exists_async("k")
    assert await store.get_async("k") == [1, "two"]
    other = await store.claim_async("f", "", 30)
    assert await store.fail_async(other.token, "nope", 60)
    assert (await store.claim_async("f", "", 30)).state is ClaimState.FAILED
    third = await store.claim_async("r", "", 30)
    assert await store.release_async(third.token)
    await store.set_async("s", b"\x00raw", 60)
    assert await store.get_async("s") == b"\x00raw"
    assert await store.delete_async("s")
    assert not await store.exists_async("s")


def test_bad_input_names_the_parameter(case: tuple[str, StoreCase]) -> None:
    """Empty or non-str keys, bad leases and TTLs, foreign tokens: errors naming them."""
    store = case[1].store
    with pytest.raises(ValueError, match="key"):
        store.claim("", "", 30)
    with pytest.raises(TypeError, match="key"):
        store.claim(42, "", 30)
    with pytest.raises(TypeError, match="fingerprint"):
        store.claim("k", None, 30)
    for lease in (0, -1, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="lease"):
            store.claim("k", "", lease)
    with pytest.raises(TypeError, match="lease"):
        store.claim("k", "", "30")
    token = store.claim("k", "", 30).token
    with pytest.raises(ValueError, match="ttl"):
        store.complete(token, 1, 0)
    with pytest.raises(TypeError, match="token"):
        store.complete(("k", token.owner), 1, 60)
    with pytest.raises(ValueError, match="ttl"):
        store.set("k2", 1, float("inf"))
    assert store.complete(token, 1, 60)  # nothing above touched the claim


def test_unstorable_result_changes_nothing(case: tuple[str, StoreCase]) -> None:
    """A result the codec cannot store raises before any write: the claim stays held."""
    store = case[1].store
    token = store.claim("k", "", 30).token
    with pytest.raises(ResultNotStorableError, match="object"):
        store.complete(token, {"x": object()}, 60)
    assert store.claim("k", "", 30).state is ClaimState.IN_PROGRESS
    assert store.fail(token, "result not storable: object", 60)
    assert store.claim("k", "", 30).state is ClaimState.FAILED


def test_results_outlive_the_store_object(case: tuple[str, StoreCase]) -> None:
    """A second store on the same file/prefix/table replays what the first completed."""
    kind, made = case
    store = made.store
    token = store.claim("k", "", 30).token
    assert store.complete(token, {"id": 7}, 60)
    from _claimant import make_store

    reopened = make_store(kind, _processes.target_of(kind, store))
    if made.clock is not None:  # SQLite on a manual clock: read the same clock
        reopened._clock = made.clock.monotonic
    try:
        replay = reopened.claim("k", "", 30)
        assert (replay.state, replay.result) == (ClaimState.COMPLETED, {"id": 7})
    finally:
        if hasattr(reopened, "close"):
            reopened.close()


def test_16_threads_one_key_one_claim(case: tuple[str, StoreCase]) -> None:
    """16 threads claim one key at once: exactly one is CLAIMED, the rest IN_PROGRESS."""
    store = case[1].store
    barrier = threading.Barrier(16)
    answers: list[Any] = []
    lock = threading.Lock()

    def claimant() -> None:
        barrier.wait(timeout=10)
        claim = store.claim("hot", "fp", 30)
        with lock:
            answers.append(claim)

    threads = [threading.Thread(target=claimant) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=20)
    assert len(answers) == 16
    states = [claim.state for claim in answers]
    assert states.count(ClaimState.CLAIMED) == 1
    assert states.count(ClaimState.IN_PROGRESS) == 15


async def test_8_tasks_one_key_one_claim(case: tuple[str, StoreCase]) -> None:
    """8 asyncio tasks claim one key at once: exactly one is CLAIMED."""
    store = case[1].store
    answers = await asyncio.wait_for(
        asyncio.gather(*(store.claim_async("hot", "fp", 30) for _ in range(8))), 20
    )
    states = [claim.state for claim in answers]
    assert states.count(ClaimState.CLAIMED) == 1
    assert states.count(ClaimState.IN_PROGRESS) == 7


@pytest.fixture
def every_store() -> Iterator[dict[str, Any]]:
    """One wall-clock store of each kind whose server is up (in CI: all three, or fail)."""
    stores: dict[str, Any] = {}
    cleanups = []
    for kind in ("sqlite", "redis", "postgres"):
        try:
            made = DURABLE_STORE_FACTORIES[kind](ManualClock())
        except pytest.skip.Exception:
            continue
        cleanups.append(made.cleanup)
        if kind == "sqlite":  # processes share the wall clock, not a ManualClock
            from shared.resilience.idempotency.sqlite_store import SQLiteIdempotencyStore

            wall = SQLiteIdempotencyStore(made.store._path)
            cleanups.insert(0, wall.close)
            stores[kind] = wall
        else:
            stores[kind] = made.store
    try:
        yield stores
    finally:
        for cleanup in cleanups:
            cleanup()


def _targets(stores: dict[str, Any]) -> list[tuple[str, str]]:
    return [(kind, _processes.target_of(kind, store)) for kind, store in stores.items()]


def test_8_processes_one_key_one_execution(every_store: dict[str, Any], tmp_path: Path) -> None:
    """8 processes claim one key at once on each store: one side effect per store; the
    others see it in progress or completed with the winner's result."""
    answers = _processes.race(_targets(every_store), "hot", 8, tmp_path)
    for kind, store in every_store.items():
        winners = _processes.effects(tmp_path, kind)
        assert len(winners) == 1, kind
        states = [answer["state"] for answer in answers[kind]]
        assert states.count("claimed") == 1, (kind, states)
        for answer in answers[kind]:
            assert answer["state"] in ("claimed", "in_progress", "completed"), kind
            if answer["state"] == "completed":
                assert answer["result"] == {"by": int(winners[0])}, kind
        replay = store.claim("hot", "fingerprint", 30)
        assert (replay.state, replay.result) == (ClaimState.COMPLETED, {"by": int(winners[0])})


def test_sigkilled_holder_frees_the_key_after_its_lease(
    every_store: dict[str, Any], tmp_path: Path
) -> None:
    """A holder killed with SIGKILL: in progress until its lease ends, then the next
    caller claims and completes once; the dead holder's token cannot complete."""
    lease = 0.6
    owners = _processes.killed_holder(_targets(every_store), "crash", lease, tmp_path)
    waits = []
    for store in every_store.values():
        busy = store.claim("crash", "fingerprint", 30)
        assert busy.state is ClaimState.IN_PROGRESS
        assert 0 < busy.retry_after <= lease
        waits.append(busy.retry_after)
    time.sleep(max(waits) + 0.05)
    for kind, store in every_store.items():
        fresh = store.claim("crash", "fingerprint", 30)
        assert fresh.state is ClaimState.CLAIMED, kind
        assert not store.complete(OwnerToken("crash", owners[kind]), "ghost", 60)
        assert store.complete(fresh.token, "once", 60)
        replay = store.claim("crash", "fingerprint", 30)
        assert (replay.state, replay.result) == (ClaimState.COMPLETED, "once")
        assert len(_processes.effects(tmp_path, kind)) == 1  # only the dead holder ran it

"""@idempotent on the in-memory store: one execution per key, replays, waits, errors."""

from __future__ import annotations

import asyncio
import gc
import logging
import math
import threading
import time
import warnings
import weakref
from typing import Any

import pytest

from shared.resilience import (
    DuplicateRequestError,
    IdempotencyFailedError,
    IdempotencyInProgressError,
    IdempotencyMismatchError,
    InMemoryIdempotencyStore,
    idempotent,
)
from shared.resilience.idempotency import ClaimState, OwnerToken, decorator


@pytest.fixture
def store() -> InMemoryIdempotencyStore:
    return InMemoryIdempotencyStore()


class Calls:
    """Counts executions (the side effect that must happen once)."""

    def __init__(self) -> None:
        self.n = 0
        self.lock = threading.Lock()

    def hit(self) -> int:
        with self.lock:
            self.n += 1
            return self.n


def test_executes_once_and_replays(store: InMemoryIdempotencyStore) -> None:
    """The second call with a key returns the first result without executing."""
    calls = Calls()

    @idempotent(key_param="request_id", store=store)
    def pay(amount: int, request_id: str) -> dict[str, Any]:
        return {"paid": amount, "n": calls.hit()}

    first = pay(100, request_id="r1")
    assert pay(100, request_id="r1") == first
    assert pay(100, "r1") == first  # the key by position
    assert pay(amount=100, request_id="r1") == first
    assert calls.n == 1
    assert pay(100, "r2")["n"] == 2
    assert store.outcome_counts()["executed"] == 2
    assert store.outcome_counts()["replayed"] == 3


def test_raise_on_duplicate(store: InMemoryIdempotencyStore) -> None:
    """raise_on_duplicate=True raises DuplicateRequestError carrying the cached result."""

    @idempotent(key_param="request_id", store=store, raise_on_duplicate=True)
    def pay(amount: int, request_id: str) -> int:
        return amount * 2

    assert pay(5, request_id="r") == 10
    with pytest.raises(DuplicateRequestError) as info:
        pay(5, request_id="r")
    assert info.value.key == "r"
    assert info.value.cached_result == 10


def test_other_arguments_are_a_mismatch(store: InMemoryIdempotencyStore) -> None:
    """The same key with different arguments raises, and does not execute."""
    calls = Calls()

    @idempotent(key_param="request_id", store=store)
    def pay(amount: int, request_id: str, memo: str = "") -> int:
        calls.hit()
        return amount

    pay(5, "r")
    assert pay(5, "r", memo="") == 5  # a default given explicitly is the same call
    with pytest.raises(IdempotencyMismatchError):
        pay(6, "r")
    with pytest.raises(IdempotencyMismatchError):
        pay(5, "r", memo="x")
    assert calls.n == 1
    assert store.outcome_counts()["mismatch"] == 2


def test_an_exception_releases_the_key_by_default(store: InMemoryIdempotencyStore) -> None:
    """After a failure the key is free: a retry executes."""
    calls = Calls()

    @idempotent(key_param="request_id", store=store)
    def flaky(request_id: str) -> str:
        if calls.hit() == 1:
            raise ConnectionError("down")
        return "ok"

    with pytest.raises(ConnectionError):
        flaky("r")
    assert flaky("r") == "ok"
    assert calls.n == 2
    assert store.outcome_counts()["errors"] == 1


def test_on_error_keep_blocks_reexecution(store: InMemoryIdempotencyStore) -> None:
    """on_error='keep' records the failure; nothing re-executes until the key is deleted."""
    calls = Calls()

    @idempotent(key_param="request_id", store=store, on_error="keep")
    def withdraw(request_id: str) -> str:
        if calls.hit() == 1:
            raise TimeoutError("no answer from the bank")
        return "sent"

    with pytest.raises(TimeoutError):
        withdraw("w1")
    with pytest.raises(IdempotencyFailedError) as info:
        withdraw("w1")
    assert "no answer from the bank" in info.value.error
    assert calls.n == 1
    assert store.delete("w1")
    assert withdraw("w1") == "sent"


def test_sixteen_threads_one_execution(store: InMemoryIdempotencyStore) -> None:
    """16 concurrent duplicates: one execution, every caller gets its result."""
    calls = Calls()
    barrier = threading.Barrier(16)

    @idempotent(key_param="request_id", store=store, wait_timeout=10)
    def deposit(amount: int, request_id: str) -> dict[str, int]:
        calls.hit()
        time.sleep(0.05)
        return {"amount": amount}

    results: list[Any] = []
    lock = threading.Lock()

    def worker() -> None:
        barrier.wait(timeout=10)
        value = deposit(7, request_id="dep-1")
        with lock:
            results.append(value)

    threads = [threading.Thread(target=worker) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=20)
    assert calls.n == 1
    assert results == [{"amount": 7}] * 16
    counts = store.outcome_counts()
    assert counts["executed"] == 1
    assert counts["replayed"] == 15


def test_a_concurrent_duplicate_times_out_in_progress(store: InMemoryIdempotencyStore) -> None:
    """A duplicate waits wait_timeout for the holder, then raises IdempotencyInProgressError."""
    started, finish = threading.Event(), threading.Event()

    @idempotent(key_param="request_id", store=store, wait_timeout=0.1)
    def slow(request_id: str) -> str:
        started.set()
        finish.wait(5)
        return "done"

    holder = threading.Thread(target=slow, args=("r",))
    holder.start()
    assert started.wait(5)
    t0 = time.monotonic()
    with pytest.raises(IdempotencyInProgressError) as info:
        slow("r")
    assert 0.09 <= time.monotonic() - t0 < 2.0
    assert 0 < info.value.retry_after <= 60
    finish.set()
    holder.join(5)
    assert slow("r") == "done"
    assert store.outcome_counts()["in_progress"] == 1


def test_a_waiting_duplicate_executes_when_the_holder_fails(
    store: InMemoryIdempotencyStore,
) -> None:
    """When the first call fails and releases, a waiting duplicate takes over."""
    started, finish = threading.Event(), threading.Event()
    calls = Calls()

    @idempotent(key_param="request_id", store=store, wait_timeout=5)
    def job(request_id: str) -> int:
        n = calls.hit()
        if n == 1:
            started.set()
            finish.wait(5)
            raise RuntimeError("first fails")
        return n

    def first() -> None:
        with pytest.raises(RuntimeError):
            job("r")

    holder = threading.Thread(target=first)
    holder.start()
    assert started.wait(5)
    threading.Timer(0.05, finish.set).start()
    assert job("r") == 2
    holder.join(5)


def test_a_long_call_renews_its_lease(store: InMemoryIdempotencyStore) -> None:
    """A call longer than its lease keeps the key: a duplicate never executes meanwhile."""
    calls = Calls()

    @idempotent(key_param="request_id", store=store, lease=0.4, wait_timeout=0)
    def long(request_id: str) -> str:
        calls.hit()
        time.sleep(0.9)
        return "done"

    holder = threading.Thread(target=long, args=("r",))
    holder.start()
    deadline = time.monotonic() + 0.8
    time.sleep(0.05)
    while time.monotonic() < deadline:
        with pytest.raises(IdempotencyInProgressError):
            long("r")
        time.sleep(0.05)
    holder.join(5)
    assert calls.n == 1
    assert long("r") == "done"


def test_a_lost_lease_is_logged_and_counted(
    store: InMemoryIdempotencyStore, caplog: pytest.LogCaptureFixture
) -> None:
    """If the claim is gone when the result is recorded, ERROR is logged and counted."""

    @idempotent(key_param="request_id", store=store)
    def job(request_id: str) -> str:
        store.delete(request_id)  # as if the lease ran out and the entry vanished
        return "done"

    with caplog.at_level(logging.ERROR, logger="shared.resilience.idempotency"):
        assert job("r") == "done"
    assert store.outcome_counts()["lost_leases"] == 1
    assert any("lease lost" in r.getMessage() for r in caplog.records)


def test_the_renewer_notices_a_lost_lease(
    store: InMemoryIdempotencyStore, caplog: pytest.LogCaptureFixture
) -> None:
    """The background renewer logs at ERROR once extend() fails, and counts it once."""
    stolen = threading.Event()

    @idempotent(key_param="request_id", store=store, lease=0.09)
    def job(request_id: str) -> str:
        store.delete(request_id)
        assert store.claim(request_id, "someone-else", 30).state is ClaimState.CLAIMED
        stolen.set()
        time.sleep(0.2)
        return "done"

    with caplog.at_level(logging.ERROR, logger="shared.resilience.idempotency"):
        assert job("r") == "done"
    assert store.outcome_counts()["lost_leases"] == 1
    assert sum("lease lost" in r.getMessage() for r in caplog.records) == 1


def test_a_finished_call_leaves_nothing_of_its_store_to_the_renewer() -> None:
    """Once a call ends, the renewer holds neither its store nor its token.

    Its lease's entry stays queued until due (lease / 3): it must not keep a
    dropped store (and so its metrics series) alive, nor pile up under a burst.
    """
    store = InMemoryIdempotencyStore()
    dropped = weakref.ref(store)

    # 30 s lease: renewal due in 10 s, long after the call and the checks below.
    @idempotent(key_param="request_id", store=store, lease=30)
    def job(request_id: str) -> str:
        time.sleep(0.05)  # the renewer wakes for the new lease and waits for it
        return "done"

    assert job("r") == "done"
    del job, store
    gc.collect()
    assert dropped() is None

    burst = InMemoryIdempotencyStore()

    @idempotent(key_param="request_id", store=burst, lease=30)
    def quick(request_id: str) -> str:
        return request_id

    for i in range(1000):
        quick(f"k-{i}")
    queued = len(decorator._renewer._heap)
    assert queued <= 200, queued  # compacted: not one entry per finished call


def test_methods_and_positional_keys(store: InMemoryIdempotencyStore) -> None:
    """Methods work; self is not fingerprinted, so two instances share a key's result."""
    calls = Calls()

    class Service:
        @idempotent(key_param="key", store=store)
        def run(self, key: str, amount: int) -> int:
            calls.hit()
            return amount

    assert Service().run("m1", 3) == 3
    assert Service().run(key="m1", amount=3) == 3
    assert calls.n == 1


def test_kwargs_functions(store: InMemoryIdempotencyStore) -> None:
    """A key passed through **kwargs is found too."""
    calls = Calls()

    @idempotent(key_param="request_id", store=store)
    def handler(*args: Any, **kwargs: Any) -> int:
        calls.hit()
        return len(args)

    assert handler(1, 2, request_id="k") == 2
    assert handler(1, 2, request_id="k") == 2
    assert calls.n == 1
    with pytest.raises(IdempotencyMismatchError):
        handler(1, request_id="k")


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"ttl": 0}, ValueError, "ttl"),
        ({"ttl": -1}, ValueError, "ttl"),
        ({"ttl": math.nan}, ValueError, "ttl"),
        ({"ttl": math.inf}, ValueError, "ttl"),
        ({"ttl": "1"}, TypeError, "ttl"),
        ({"lease": 0}, ValueError, "lease"),
        ({"lease": math.inf}, ValueError, "lease"),
        ({"wait_timeout": -1}, ValueError, "wait_timeout"),
        ({"on_error": "ignore"}, ValueError, "on_error"),
        ({"key_param": ""}, TypeError, "key_param"),
        ({"key_param": 3}, TypeError, "key_param"),
        ({"key_param": "missing"}, TypeError, "missing"),
        ({"raise_on_duplicate": "yes"}, TypeError, "raise_on_duplicate"),
        ({"store": None}, TypeError, "store"),
        ({"store": object()}, TypeError, "store"),
    ],
)
def test_bad_arguments_at_decoration(
    store: InMemoryIdempotencyStore, kwargs: dict[str, Any], error: type, match: str
) -> None:
    """Bad settings raise at decoration, naming the parameter."""
    settings: dict[str, Any] = {"key_param": "request_id", "store": store, **kwargs}
    with pytest.raises(error, match=match):

        @idempotent(**settings)
        def f(request_id: str) -> None: ...


@pytest.mark.parametrize(
    ("key", "error"), [("", ValueError), (123, TypeError), (None, TypeError), (b"k", TypeError)]
)
def test_bad_keys_at_call_time(store: InMemoryIdempotencyStore, key: Any, error: type) -> None:
    """A bad key raises before anything runs, naming key_param."""
    calls = Calls()

    @idempotent(key_param="request_id", store=store)
    def f(request_id: Any) -> None:
        calls.hit()

    with pytest.raises(error, match="request_id"):
        f(key)
    with pytest.raises(TypeError):
        f()  # missing argument: Python's own TypeError, before claiming
    assert calls.n == 0
    assert len(store) == 0


def test_replays_call_the_tracing_hook(
    store: InMemoryIdempotencyStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every replay calls decorator._on_replay(key) (the tracing hook)."""
    seen: list[str] = []
    monkeypatch.setattr(decorator, "_on_replay", seen.append)

    @idempotent(key_param="k", store=store)
    def f(k: str) -> int:
        return 1

    f("a")
    f("a")
    f("a")
    assert seen == ["a", "a"]


class BrokenStore(InMemoryIdempotencyStore):
    """Refuses results it cannot serialise, like a durable store."""

    def complete(self, token: OwnerToken, result: Any, ttl: float = 86400) -> bool:
        if isinstance(result, set):
            raise TypeError(f"a result of type {type(result).__name__} cannot be stored")
        return super().complete(token, result, ttl)


def test_an_unstorable_result_releases_the_key() -> None:
    """A result the store cannot hold raises a TypeError naming its type, key released."""
    store = BrokenStore()

    @idempotent(key_param="k", store=store)
    def f(k: str) -> set[int]:
        return {1}

    with pytest.raises(TypeError, match="set"):
        f("a")
    assert store.claim("a", "x", 1).state is ClaimState.CLAIMED


# -- async ------------------------------------------------------------------------------


async def test_async_executes_once(store: InMemoryIdempotencyStore) -> None:
    """Async functions: 8 concurrent tasks with one key execute once, all get the result."""
    calls = Calls()

    @idempotent(key_param="request_id", store=store)
    async def create(user: str, request_id: str) -> dict[str, str]:
        calls.hit()
        await asyncio.sleep(0.02)
        return {"user": user}

    results = await asyncio.gather(*(create("u", request_id="a1") for _ in range(8)))
    assert results == [{"user": "u"}] * 8
    assert calls.n == 1


async def test_async_cancellation_releases_the_claim(store: InMemoryIdempotencyStore) -> None:
    """A cancelled call frees its key: the next call executes."""
    calls = Calls()
    started = asyncio.Event()

    @idempotent(key_param="request_id", store=store)
    async def job(request_id: str) -> int:
        n = calls.hit()
        if n == 1:
            started.set()
            await asyncio.sleep(30)
        return n

    task = asyncio.create_task(job("c1"))
    await asyncio.wait_for(started.wait(), 5)
    assert store.claim("c1", "probe", 1).state is ClaimState.MISMATCH  # held
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await asyncio.wait_for(job("c1"), 5) == 2


async def test_async_keep_and_in_progress(store: InMemoryIdempotencyStore) -> None:
    """Async: on_error='keep' and the in-progress timeout behave as in sync code."""
    release = asyncio.Event()

    @idempotent(key_param="k", store=store, on_error="keep", wait_timeout=0.05)
    async def job(k: str, fail: bool = False) -> str:
        await release.wait()
        if fail:
            raise ValueError("rejected")
        return "ok"

    first = asyncio.create_task(job("x"))
    await asyncio.sleep(0.01)
    with pytest.raises(IdempotencyInProgressError):
        await job("x")
    release.set()
    assert await first == "ok"
    with pytest.raises(ValueError, match="rejected"):
        await job("y", fail=True)
    with pytest.raises(IdempotencyFailedError):
        await job("y", fail=True)


async def test_async_lease_renewal(store: InMemoryIdempotencyStore) -> None:
    """An async call longer than its lease keeps the key."""
    calls = Calls()

    @idempotent(key_param="k", store=store, lease=0.4, wait_timeout=0)
    async def job(k: str) -> str:
        calls.hit()
        await asyncio.sleep(0.9)
        return "done"

    task = asyncio.create_task(job("z"))
    for _ in range(6):
        await asyncio.sleep(0.13)
        with pytest.raises(IdempotencyInProgressError):
            await job("z")
    assert await task == "done"
    assert calls.n == 1


# -- stores with only the document's protocol ---------------------------------------------


class DictStore:
    """The document's protocol and nothing else (sync and async)."""

    def __init__(self) -> None:
        self.data: dict[str, Any] = {}

    def get(self, key: str) -> Any:
        return self.data.get(key)

    def set(self, key: str, value: Any, ttl: float) -> None:
        self.data[key] = value

    def exists(self, key: str) -> bool:
        return key in self.data

    async def get_async(self, key: str) -> Any:
        return self.get(key)

    async def set_async(self, key: str, value: Any, ttl: float) -> None:
        self.set(key, value, ttl)

    async def exists_async(self, key: str) -> bool:
        return self.exists(key)


def test_check_then_set_stores_warn_once_and_work() -> None:
    """A get/set/exists store works, with one RuntimeWarning that says it is not atomic."""
    store = DictStore()
    calls = Calls()
    decorator._warned.discard(DictStore)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")

        @idempotent(key_param="k", store=store)
        def f(k: str, amount: int) -> dict[str, int]:
            calls.hit()
            return {"amount": amount}

        @idempotent(key_param="k", store=store, on_error="keep")
        def g(k: str) -> None:
            raise ValueError("no")

    messages = [str(w.message) for w in caught if w.category is RuntimeWarning]
    assert len(messages) == 1
    assert "not atomic" in messages[0] or "both execute" in messages[0]
    assert f("a", 1) == {"amount": 1}
    assert f("a", 1) == {"amount": 1}
    assert calls.n == 1
    with pytest.raises(IdempotencyMismatchError):
        f("a", 2)
    with pytest.raises(ValueError, match="no"):
        g("b")
    with pytest.raises(IdempotencyFailedError):
        g("b")


async def test_check_then_set_async() -> None:
    """Async functions use the store's _async forms."""
    store = DictStore()
    calls = Calls()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)

        @idempotent(key_param="k", store=store)
        async def f(k: str) -> list[int]:
            calls.hit()
            return [1, 2]

    assert await f("a") == [1, 2]
    assert await f("a") == [1, 2]
    assert calls.n == 1


def test_async_only_store_needs_an_async_function() -> None:
    """A store with only async methods cannot serve a sync function: a clear TypeError."""

    class AsyncOnly:
        async def get_async(self, key: str) -> Any: ...
        async def set_async(self, key: str, value: Any, ttl: float) -> None: ...
        async def exists_async(self, key: str) -> bool:
            return False

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        with pytest.raises(TypeError, match="async"):

            @idempotent(key_param="k", store=AsyncOnly())
            def f(k: str) -> None: ...

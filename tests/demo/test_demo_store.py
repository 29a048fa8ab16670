"""The in-process order store: one execution per key, replays, release on failure."""

from __future__ import annotations

import asyncio

import pytest

from shared.demo.store import FingerprintMismatchError, InProcessOrderStore

pytestmark = pytest.mark.backend_independent


async def test_concurrent_duplicates_execute_once_and_share_the_result() -> None:
    """50 concurrent requests for one key run the operation once; 49 are replays."""
    store = InProcessOrderStore()
    calls = 0

    async def operation() -> str:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.01)
        return "fill-1"

    outcomes = await asyncio.gather(*(store.execute_once("k", "fp", operation) for _ in range(50)))
    assert calls == 1
    assert [result for result, _ in outcomes] == ["fill-1"] * 50
    assert sum(replayed for _, replayed in outcomes) == 49
    assert await store.execute_once("k", "fp", operation) == ("fill-1", True)
    assert calls == 1


async def test_a_failure_releases_the_key_and_reaches_the_waiters() -> None:
    """The first caller's exception reaches concurrent duplicates; the key can run again."""
    store = InProcessOrderStore()
    attempts = 0

    async def flaky() -> str:
        nonlocal attempts
        attempts += 1
        await asyncio.sleep(0.01)
        if attempts == 1:
            raise ConnectionError("reset")
        return "fill"

    outcomes = await asyncio.gather(
        store.execute_once("k", "fp", flaky),
        store.execute_once("k", "fp", flaky),
        return_exceptions=True,
    )
    assert all(isinstance(outcome, ConnectionError) for outcome in outcomes)
    assert await store.execute_once("k", "fp", flaky) == ("fill", False)
    assert attempts == 2


async def test_a_cancelled_execution_releases_the_key() -> None:
    """Cancelling the executing caller leaves the key free, not stuck in progress."""
    store = InProcessOrderStore()
    started = asyncio.Event()

    async def slow() -> str:
        started.set()
        await asyncio.sleep(10)
        return "never"

    task = asyncio.create_task(store.execute_once("k", "fp", slow))
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    async def fast() -> str:
        return "fill"

    assert await store.execute_once("k", "fp", fast) == ("fill", False)


async def test_a_reused_key_with_another_order_is_refused() -> None:
    """Same key, different fingerprint: an error, and the first result stays."""
    store = InProcessOrderStore()

    async def operation() -> int:
        return 1

    await store.execute_once("k", "order-a", operation)
    with pytest.raises(FingerprintMismatchError, match="'k'"):
        await store.execute_once("k", "order-b", operation)
    assert len(store) == 1

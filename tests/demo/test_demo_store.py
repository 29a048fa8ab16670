"""Order placement through @idempotent on the demo's embedded SQLite store."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from shared.demo.exchange import Fill, Order
from shared.demo.store import IdempotentOrders
from shared.resilience.idempotency import SQLiteIdempotencyStore

pytestmark = pytest.mark.backend_independent

ORDER = Order("u", "k", "BTC-USD", "buy", 2)


def make_orders(path: Path) -> IdempotentOrders:
    store = SQLiteIdempotencyStore(path / "orders.sqlite3")

    async def close() -> None:
        store.close()

    return IdempotentOrders(store, "sqlite", close)


async def test_concurrent_duplicates_execute_once_and_replay_the_fill(tmp_path: Path) -> None:
    """20 concurrent copies run the execution once; 19 are told they replayed the same fill."""
    orders = make_orders(tmp_path)
    calls = 0

    async def execute(order: Order) -> Fill:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.02)
        return Fill(order.key, 7, 100.5, order.quantity)

    orders.bind(execute)
    outcomes = await asyncio.gather(*(orders.place(ORDER) for _ in range(20)))
    assert calls == 1
    assert {fill for fill, _ in outcomes} == {Fill("k", 7, 100.5, 2)}
    assert sorted(replayed for _, replayed in outcomes) == [False] + [True] * 19
    # A second store on the same file (another process would do the same) replays it.
    other = make_orders(tmp_path)
    other.bind(execute)
    assert await other.place(ORDER) == (Fill("k", 7, 100.5, 2), True)
    assert calls == 1
    assert orders.store.outcome_counts()["executed"] == 1
    await other.close()
    await orders.close()


async def test_a_failed_execution_frees_the_key_for_the_retry(tmp_path: Path) -> None:
    """The exception reaches the caller; the client's retry with the same key executes."""
    orders = make_orders(tmp_path)
    attempts = 0

    async def flaky(order: Order) -> Fill:
        nonlocal attempts
        attempts += 1
        if attempts == 1:
            raise ConnectionError("reset")
        return Fill(order.key, attempts, 1.0, order.quantity)

    orders.bind(flaky)
    with pytest.raises(ConnectionError):
        await orders.place(ORDER)
    assert await orders.place(ORDER) == (Fill("k", 2, 1.0, 2), False)
    assert await orders.place(ORDER) == (Fill("k", 2, 1.0, 2), True)
    await orders.close()

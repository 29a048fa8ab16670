"""Order placement through ``@idempotent``: one execution per key, on any store.

``IdempotentOrders`` decorates the service's execution with ``@idempotent``
(the design document's recommendation) on the store ``shared.demo.wiring``
picks: SQLite (embedded default, shared by the processes of one host), Redis or
PostgreSQL (shared by every replica). A completed duplicate gets the stored
fill; a concurrent duplicate waits for the first call's outcome (in this
process or another one); a failed execution releases the key so that the
client's retry executes.

Whether a call executed or replayed is told by a context variable the
executing body sets: ``@idempotent`` awaits the body in the caller's task, so
the caller sees it.
"""

from __future__ import annotations

import contextvars
from collections.abc import Awaitable, Callable
from typing import Any

from shared.demo.exchange import Fill, Order
from shared.resilience.idempotency import idempotent

__all__ = ["IdempotentOrders"]

_executed: contextvars.ContextVar[bool] = contextvars.ContextVar("shared_demo_executed")


class IdempotentOrders:
    """``place(order, execute)`` runs ``execute(order)`` at most once per ``order.key``.

    Args:
        store: an idempotency store with the atomic claim.
        description: what the summary says about it.
        close: releases the store's connections (called by ``close()``).
        ttl: seconds a fill is replayed (default 1 h: longer than any demo run).
        wait_timeout: seconds a concurrent duplicate waits for the first call.
    """

    def __init__(
        self,
        store: Any,
        description: str,
        close: Callable[[], Awaitable[None]],
        *,
        ttl: float = 3600.0,
        wait_timeout: float = 5.0,
    ) -> None:
        self.store = store
        self.description = description
        self._close = close
        self._execute: Callable[[Order], Awaitable[Fill]] | None = None

        @idempotent(key_param="key", store=store, ttl=ttl, wait_timeout=wait_timeout, lease=10.0)
        async def place(key: str, user: str, symbol: str, side: str, quantity: int) -> Fill:
            assert self._execute is not None
            _executed.set(True)
            return await self._execute(Order(user, key, symbol, side, quantity))

        self._place = place

    def bind(self, execute: Callable[[Order], Awaitable[Fill]]) -> None:
        """Sets what an execution does (the service's retry/breaker/timeout path)."""
        self._execute = execute

    async def place(self, order: Order) -> tuple[Fill, bool]:
        """``(fill, replayed)``; raises what the execution raised (the key is then free)."""
        token = _executed.set(False)
        try:
            fill: Fill = await self._place(
                order.key, order.user, order.symbol, order.side, order.quantity
            )
            return fill, not _executed.get()
        finally:
            _executed.reset(token)

    async def close(self) -> None:
        await self._close()

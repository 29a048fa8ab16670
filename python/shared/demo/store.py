"""Order deduplication: one execution per idempotency key.

``OrderStore`` is what the service needs from an idempotency layer:
``execute_once(key, fingerprint, operation)`` runs ``operation`` at most once
per key and says whether the answer is a replay. ``InProcessOrderStore``
does it for one process (asyncio: no await between the check and the claim,
so no race); the durable stores take its place through
``shared.demo.wiring.make_order_store``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, TypeVar

__all__ = ["FingerprintMismatchError", "InProcessOrderStore", "OrderStore"]

T = TypeVar("T")


class FingerprintMismatchError(ValueError):
    """The key was used before for a different order."""


class OrderStore(Protocol):
    description: str

    async def execute_once(
        self, key: str, fingerprint: str, operation: Callable[[], Awaitable[T]]
    ) -> tuple[T, bool]:
        """``(result, replayed)``: runs ``operation`` unless ``key`` ran or is running."""
        ...

    async def close(self) -> None: ...


class InProcessOrderStore:
    """Completed keys replay their result; a concurrent duplicate waits for the
    running execution and shares its outcome; a failed execution releases the
    key so the client may try again."""

    description = "in-process (one execution per key in this process)"

    def __init__(self) -> None:
        self._done: dict[str, tuple[str, Any]] = {}
        self._running: dict[str, tuple[str, asyncio.Future[Any]]] = {}

    def __len__(self) -> int:
        return len(self._done)

    @staticmethod
    def _check(key: str, stored: str, given: str) -> None:
        if stored != given:
            raise FingerprintMismatchError(f"idempotency key {key!r} was used for another order")

    async def execute_once(
        self, key: str, fingerprint: str, operation: Callable[[], Awaitable[T]]
    ) -> tuple[T, bool]:
        done = self._done.get(key)
        if done is not None:
            self._check(key, done[0], fingerprint)
            return done[1], True
        running = self._running.get(key)
        if running is not None:
            self._check(key, running[0], fingerprint)
            return await asyncio.shield(running[1]), True
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        # Waiters read the outcome; when there are none, this marks it retrieved.
        future.add_done_callback(lambda f: f.cancelled() or f.exception())
        self._running[key] = (fingerprint, future)
        try:
            result = await operation()
        except BaseException as exc:
            del self._running[key]
            if isinstance(exc, Exception):
                future.set_exception(exc)
            else:
                future.cancel()
            raise
        self._done[key] = (fingerprint, result)
        del self._running[key]
        future.set_result(result)
        return result, False

    async def close(self) -> None:
        return None

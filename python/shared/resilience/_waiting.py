"""The waits of the in-process limiters: blocking (``_acquire``) and asyncio
FIFO (``_acquire_async``).

A leaf module: it imports only the standard library and leaves of ``shared``
(validation, the event hooks, the exceptions), never the limiters' modules,
so the native ``KeyedLimiter``, the pure-Python twin and
``shared.resilience.rate_limiter`` can all call it without an import cycle.
Every limiter it is given has ``reserve``, ``cancel_reservation``,
``try_acquire``, ``retry_after``, ``config`` and ``clock``, and either a
``_waiters`` queue of its own or a ``registry`` that has one.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

from shared import _validation
from shared.observability import _events
from shared.resilience.exceptions import RateLimitExceeded

__all__ = ["WaitQueue", "acquire", "acquire_async"]


def _now_seconds(limiter: Any) -> float:
    clock = limiter.clock
    return time.monotonic() if clock is None else float(clock.now_ns()) / 1e9


def _sleep_of(limiter: Any) -> Callable[[float], Any]:
    sleep = getattr(limiter.clock, "sleep", None)
    return sleep if callable(sleep) else time.sleep


def _sleep_async_of(limiter: Any) -> Callable[[float], Awaitable[Any]]:
    sleep = getattr(limiter.clock, "sleep_async", None)
    return sleep if callable(sleep) else asyncio.sleep


def _check_timeout(timeout: float | None) -> None:
    _validation.timeout(timeout)


def _acquire(limiter: Any, tokens: float = 1.0, timeout: float | None = None) -> None:
    """Reserve, then sleep exactly the wait (shared by every limiter type).

    If the sleep is interrupted (KeyboardInterrupt, a timeout raised by a
    signal), the reservation is withdrawn when nothing was reserved after it.
    """
    _check_timeout(timeout)
    wait, ticket = limiter.reserve(tokens, timeout)
    if wait > 0.0:
        if _events.active:
            _events.rate_limit_wait(wait, tokens)
        try:
            _sleep_of(limiter)(wait)
        except BaseException:
            limiter.cancel_reservation(tokens, ticket)
            raise


class _Waiter:
    __slots__ = ("future", "tokens")

    def __init__(self, tokens: float, future: asyncio.Future[None]) -> None:
        self.tokens = tokens
        self.future = future


def _give_turn(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class _WaitQueue:
    """FIFO queues of async waiters, one per key (``None`` for a lone bucket)."""

    __slots__ = ("_lock", "_queues")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._queues: dict[Any, deque[_Waiter]] = {}

    def busy(self, key: Any) -> bool:
        return key in self._queues

    def join(self, key: Any, waiter: _Waiter) -> float:
        """Queues ``waiter``; the tokens queued ahead of it (0.0: it is the head)."""
        with self._lock:
            queue = self._queues.setdefault(key, deque())
            ahead = sum(w.tokens for w in queue)
            queue.append(waiter)
            return ahead

    def leave(self, key: Any, waiter: _Waiter) -> None:
        """Removes ``waiter``; if it was the head, the next waiter's turn begins."""
        while True:
            with self._lock:
                queue = self._queues[key]
                was_head = queue[0] is waiter
                queue.remove(waiter)
                following = queue[0] if was_head and queue else None
                if not queue:
                    del self._queues[key]
            if following is None:
                return
            try:
                following.future.get_loop().call_soon_threadsafe(_give_turn, following.future)
                return
            except RuntimeError:  # its event loop is closed: it will never run; skip it
                waiter = following


def _queue_of(limiter: Any) -> tuple[_WaitQueue, Any]:
    waiters = getattr(limiter, "_waiters", None)
    if isinstance(waiters, _WaitQueue):
        return waiters, None
    waiters = getattr(limiter.registry, "_waiters", None)
    if isinstance(waiters, _WaitQueue):
        return waiters, limiter.key
    raise TypeError("acquire_async needs a shared.resilience TokenBucket or RateLimiterRegistry")


async def _acquire_async(limiter: Any, tokens: float = 1.0, timeout: float | None = None) -> None:
    """FIFO async wait: only the head sleeps, and nothing is reserved while waiting,
    so a cancelled or timed-out waiter consumes nothing."""
    _check_timeout(timeout)
    queues, key = _queue_of(limiter)
    if not queues.busy(key) and limiter.try_acquire(tokens):
        return
    retry_after = limiter.retry_after(tokens)  # validates tokens
    waiter = _Waiter(tokens, asyncio.get_running_loop().create_future())
    ahead = queues.join(key, waiter)
    try:
        start = _now_seconds(limiter)
        estimate = retry_after + ahead / limiter.config.tokens_per_second
        if timeout is not None and estimate > timeout:
            raise RateLimitExceeded(estimate)
        deadline = None if timeout is None else start + timeout
        if _events.active:
            _events.rate_limit_wait(estimate, tokens)
        if ahead:
            await _wait_for_turn(limiter, waiter, deadline)
        sleep = _sleep_async_of(limiter)
        while not limiter.try_acquire(tokens):
            wait = limiter.retry_after(tokens)
            if deadline is not None and _now_seconds(limiter) + wait > deadline:
                raise RateLimitExceeded(wait)
            await sleep(wait)
    finally:
        queues.leave(key, waiter)


async def _wait_for_turn(limiter: Any, waiter: _Waiter, deadline: float | None) -> None:
    if deadline is None:
        await waiter.future
        return
    remaining = max(0.0, deadline - _now_seconds(limiter))
    try:
        await asyncio.wait_for(waiter.future, remaining)
    except TimeoutError:
        raise RateLimitExceeded(limiter.retry_after(waiter.tokens)) from None


# The public names of this module (the underscored ones are what the native
# ``KeyedLimiter`` looks up, through ``shared.resilience.rate_limiter``).
acquire = _acquire
acquire_async = _acquire_async
WaitQueue = _WaitQueue

"""The order-execution service: every pattern on the path of one order.

``place_order`` checks the user's rate limit, then executes the order at most
once per idempotency key (``@idempotent``, ``IdempotentOrders``); the
execution runs inside a graceful-shutdown critical section and a span, and is a retry with
a shared budget around a circuit breaker around a per-attempt timeout around
the exchange call, the order the design document recommends (a retry never
hammers an open breaker: ``CircuitBreakerOpenError`` is never retried).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from opentelemetry import trace as otel_trace

from shared.demo.exchange import Fill, Order, SimulatedExchange
from shared.demo.stats import Stats
from shared.demo.store import IdempotentOrders
from shared.observability import trace_span
from shared.resilience import (
    CircuitBreaker,
    CircuitBreakerConfig,
    RateLimitExceeded,
    Retry,
    RetryConfig,
    TimeoutContext,
)

__all__ = ["OrderService", "ServiceStoppingError", "UserLimiters"]


class ServiceStoppingError(Exception):
    """The service is shutting down and takes no new orders (HTTP 503)."""


class UserLimiters(Protocol):
    """Per-user rate limits (in-process registry, or Redis shared by replicas)."""

    description: str

    async def allow(self, user: str) -> float | None:
        """None when granted, else the seconds to wait before retrying."""
        ...

    async def close(self) -> None: ...


@dataclass
class OrderResult:
    fill: Fill
    replayed: bool


class OrderService:
    def __init__(
        self,
        exchange: SimulatedExchange,
        store: IdempotentOrders,
        limiters: UserLimiters,
        stats: Stats,
        *,
        breaker_config: CircuitBreakerConfig,
        retry_config: RetryConfig,
        attempt_timeout: float,
        critical: Callable[[str], contextlib.AbstractAsyncContextManager[Any]] | None = None,
    ) -> None:
        self.exchange = exchange
        self.store = store
        self.limiters = limiters
        self.stats = stats
        self.breaker = CircuitBreaker("exchange", breaker_config, registry=None)
        self.retry = Retry("exchange", retry_config)
        self.attempt_timeout = attempt_timeout
        self.in_flight = 0
        self.accepting = True
        self.started = False
        self.spans = 0
        self._critical = critical
        store.bind(self._execute_order)

    async def place_order(self, order: Order) -> OrderResult:
        """Rate limit, then one execution per key (a duplicate gets the first fill)."""
        if not self.accepting:
            raise ServiceStoppingError("shutting down")
        self.stats.requests += 1
        wait = await self.limiters.allow(order.user)
        if wait is not None:
            self.stats.rate_limited += 1
            raise RateLimitExceeded(wait)
        self.in_flight += 1
        start = time.monotonic()
        try:
            fill, replayed = await self.store.place(order)
        finally:
            self.in_flight -= 1
            if self.stats.stopping:
                self.stats.finished_after_stop += 1
        self.stats.record_ack(order.key, fill.fill_id, time.monotonic() - start, replayed)
        return OrderResult(fill, replayed)

    @trace_span("order.execute")
    async def _execute_order(self, order: Order) -> Fill:
        """One execution (a first call for its key): a span, inside a critical section
        (a graceful shutdown waits for it), retry around breaker around timeout."""
        span = otel_trace.get_current_span()
        if span.is_recording():
            self.spans += 1
            span.set_attributes(
                {"order.key": order.key, "order.user": order.user, "order.symbol": order.symbol}
            )
        section = contextlib.nullcontext() if self._critical is None else self._critical("order")
        async with section:
            fill: Fill = await self.retry.execute_async(
                self.breaker.call_async, self._attempt, order
            )
        return fill

    async def _attempt(self, order: Order) -> Fill:
        async with TimeoutContext(seconds=self.attempt_timeout):
            return await self.exchange.execute(order)

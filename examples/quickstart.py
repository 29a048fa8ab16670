"""Quick start: every pattern of shared in one small service, as the README shows it.

Run: python examples/quickstart.py (prints what each step did, exits 0).
"""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path

from shared.health import HealthCheck, HealthServer, HealthStatus
from shared.lifecycle import GracefulShutdown, ShutdownConfig
from shared.observability import MetricsServer, TracingConfig, setup_tracing, trace_span
from shared.resilience import (
    BackoffStrategy,
    CircuitBreaker,
    CircuitBreakerConfig,
    IdempotencyKey,
    RateLimitConfig,
    RateLimiterRegistry,
    RetryConfig,
    with_retry,
    with_timeout,
)
from shared.resilience.idempotency import SQLiteIdempotencyStore, idempotent

breaker = CircuitBreaker("exchange", CircuitBreakerConfig(failure_threshold=5, timeout=30.0))
limits = RateLimiterRegistry(RateLimitConfig(tokens_per_second=10.0, burst_size=20))
store = SQLiteIdempotencyStore(Path(tempfile.mkdtemp()) / "orders.db")
executions: list[str] = []


@idempotent(key_param="key", store=store, ttl=3600)
@with_retry(
    RetryConfig(
        max_attempts=3,
        initial_delay=0.01,
        backoff_strategy=BackoffStrategy.EXPONENTIAL,
        retry_on=(ConnectionError,),
    )
)
@with_timeout(2.0)
@trace_span("place_order")
async def place_order(key: str, user: str, amount: str) -> dict[str, str]:
    """Sends the order to the exchange once per key, behind breaker, retry and timeout."""
    async with breaker:
        executions.append(key)
        return {"order": key, "user": user, "amount": amount, "status": "filled"}


class ServiceHealth(HealthCheck):
    async def check(self) -> HealthStatus:
        return HealthStatus.HEALTHY if breaker.state.value == "closed" else HealthStatus.DEGRADED


async def main() -> None:
    setup_tracing(TracingConfig(service_name="quickstart", exporter_type="none"))
    health = HealthServer(ServiceHealth(), port=0)
    health.start_in_background()
    metrics = MetricsServer(host="127.0.0.1", port=0)
    metrics.start_in_background()
    shutdown = GracefulShutdown(ShutdownConfig(timeout=5.0, drain_delay=0.0, exit_process=False))

    key = IdempotencyKey.from_user_request(user_id="alice", action="withdraw", amount="100.00")
    if not limits.try_acquire("alice"):
        raise SystemExit("rate limited")
    first = await place_order(key, "alice", "100.00")
    replay = await place_order(key, "alice", "100.00")  # a client's retry: not executed again
    print(
        f"order {first['status']}, replayed equal: {replay == first}, executions: {len(executions)}"
    )

    @shutdown.on_shutdown
    async def close_store() -> None:
        store.close()

    shutdown.trigger()
    assert await shutdown.wait() == 0
    metrics.stop()
    health.stop()


if __name__ == "__main__":
    asyncio.run(main())

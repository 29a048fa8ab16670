"""Built-in checks: a circuit breaker's state, Redis PING and PostgreSQL SELECT 1 (real servers)."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator

import psycopg
import pytest
import redis
import redis.asyncio
from redis.backoff import NoBackoff
from redis.retry import Retry

from conftest import require_service
from shared.health import (
    HealthCheck,
    HealthStatus,
    circuit_breaker_check,
    postgres_check,
    redis_check,
)
from shared.lifecycle import graceful_shutdown
from shared.resilience import CircuitBreaker, CircuitBreakerConfig, CircuitBreakerState
from shared.testing import ManualClock

pytestmark = pytest.mark.backend_independent

REDIS_PORT = 6379
POSTGRES_PORT = 5432
CONNINFO = f"host=127.0.0.1 port={POSTGRES_PORT} user=postgres dbname=test connect_timeout=2"


@pytest.fixture(autouse=True)
def _no_shutdown_in_progress() -> Iterator[None]:
    graceful_shutdown._shutdown_started.clear()
    yield
    graceful_shutdown._shutdown_started.clear()


def _closed_port() -> int:
    """A loopback port nothing listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _failing_breaker(clock: ManualClock) -> CircuitBreaker:
    return CircuitBreaker(
        "health-test-upstream",
        CircuitBreakerConfig(failure_threshold=1, success_threshold=2, timeout=10.0),
        clock=clock,
        registry=None,
    )


def _fail(breaker: CircuitBreaker) -> None:
    def boom() -> None:
        raise ConnectionError("down")

    with pytest.raises(ConnectionError):
        breaker.call(boom)


def test_breaker_check_follows_the_state() -> None:
    """Closed is HEALTHY; open DEGRADED by default; half-open DEGRADED."""
    clock = ManualClock()
    breaker = _failing_breaker(clock)
    check = circuit_breaker_check(breaker)
    assert check() is HealthStatus.HEALTHY
    _fail(breaker)
    assert breaker.state is CircuitBreakerState.OPEN
    assert check() is HealthStatus.DEGRADED
    clock.advance(11)
    breaker.call(lambda: None)
    assert breaker.state is CircuitBreakerState.HALF_OPEN
    assert check() is HealthStatus.DEGRADED


def test_open_breaker_makes_readiness_unhealthy_when_configured() -> None:
    """``when_open=UNHEALTHY`` takes the service out of rotation; liveness is unaffected."""
    clock = ManualClock()
    breaker = _failing_breaker(clock)
    health = HealthCheck(cache_ttl=0)
    health.add_check(
        "payments_api", circuit_breaker_check(breaker, when_open=HealthStatus.UNHEALTHY)
    )
    assert health.readiness() is HealthStatus.HEALTHY
    _fail(breaker)
    report = health.report("readiness")
    assert report.status is HealthStatus.UNHEALTHY
    assert report.checks["payments_api"].output == "reported unhealthy"
    assert health.liveness() is HealthStatus.HEALTHY


def test_breaker_check_validation() -> None:
    """A non-breaker or a status that is not a HealthStatus is refused."""
    with pytest.raises(TypeError, match="breaker"):
        circuit_breaker_check(object())
    breaker = _failing_breaker(ManualClock())
    with pytest.raises(TypeError, match="when_open"):
        circuit_breaker_check(breaker, when_open="unhealthy")  # type: ignore[arg-type]


def test_redis_sync_and_async_against_the_server() -> None:
    """PING on the real server: sync client in a thread, asyncio client on the loop."""
    require_service("Redis", REDIS_PORT)
    client = redis.Redis(host="127.0.0.1", port=REDIS_PORT, socket_timeout=1)
    health = HealthCheck(cache_ttl=0)
    health.add_check("redis", redis_check(client))
    try:
        assert health.readiness() is HealthStatus.HEALTHY
    finally:
        client.close()

    async def main() -> HealthStatus:
        aclient = redis.asyncio.Redis(host="127.0.0.1", port=REDIS_PORT, socket_timeout=1)
        check = redis_check(aclient)
        assert asyncio.iscoroutinefunction(check)
        health = HealthCheck(cache_ttl=0)
        health.add_check("redis", check)
        try:
            return (await health.evaluate("readiness")).status
        finally:
            await aclient.aclose()

    assert asyncio.run(main()) is HealthStatus.HEALTHY


def test_redis_down_is_unhealthy() -> None:
    """A Redis that refuses connections: UNHEALTHY, the entry names the error type only."""
    client = redis.Redis(
        host="127.0.0.1",
        port=_closed_port(),
        socket_connect_timeout=1,
        retry=Retry(NoBackoff(), 0),  # redis-py retries refused connections by default
    )
    health = HealthCheck()
    health.add_check("redis", redis_check(client), timeout=2)
    try:
        entry = health.report("readiness").checks["redis"]
    finally:
        client.close()
    assert entry.status is HealthStatus.UNHEALTHY
    assert entry.output == "raised ConnectionError"


def test_postgres_conninfo_connection_and_async_connection() -> None:
    """SELECT 1 over a conninfo (reused connection), a Connection and an AsyncConnection."""
    require_service("PostgreSQL", POSTGRES_PORT)
    check = postgres_check(CONNINFO)
    health = HealthCheck(cache_ttl=0)
    health.add_check("postgres", check, timeout=3)
    assert health.readiness() is HealthStatus.HEALTHY
    first = check._connection  # type: ignore[attr-defined]
    assert health.readiness() is HealthStatus.HEALTHY
    assert check._connection is first  # type: ignore[attr-defined]
    first.close()
    with psycopg.connect(CONNINFO, autocommit=True) as connection:
        assert postgres_check(connection)() is True

    async def main() -> HealthStatus:
        connection = await psycopg.AsyncConnection.connect(CONNINFO, autocommit=True)
        try:
            check = postgres_check(connection)
            assert asyncio.iscoroutinefunction(check)
            health = HealthCheck(cache_ttl=0)
            health.add_check("postgres", check, timeout=3)
            return (await health.evaluate("readiness")).status
        finally:
            await connection.close()

    assert asyncio.run(main()) is HealthStatus.HEALTHY


def test_postgres_down_is_unhealthy_and_recovers() -> None:
    """A refused connection is UNHEALTHY (OperationalError); nothing is kept open."""
    conninfo = f"host=127.0.0.1 port={_closed_port()} user=postgres dbname=test"
    check = postgres_check(conninfo)
    health = HealthCheck()
    health.add_check("postgres", check, timeout=3)
    entry = health.report("readiness").checks["postgres"]
    assert entry.status is HealthStatus.UNHEALTHY
    assert entry.output == "raised OperationalError"
    assert check._connection is None  # type: ignore[attr-defined]


def test_client_validation() -> None:
    """Things that are not clients are refused at registration."""
    with pytest.raises(TypeError, match="Redis client"):
        redis_check(object())
    with pytest.raises(TypeError, match="conninfo"):
        postgres_check(42)

"""Built-in sub-checks for ``HealthCheck.add_check``: a circuit breaker, Redis, PostgreSQL.

Each factory returns a callable (async when the client is an asyncio one) to
register under a name::

    health.add_check("payments_api", circuit_breaker_check(breaker))
    health.add_check("redis", redis_check(redis_client), timeout=0.3)
    health.add_check("postgres", postgres_check("dbname=app"), timeout=0.5)
"""

from __future__ import annotations

import inspect
import threading
from collections.abc import Callable
from typing import Any

from shared.health.health_status import HealthStatus

__all__ = ["circuit_breaker_check", "postgres_check", "redis_check"]


def circuit_breaker_check(
    breaker: Any,
    *,
    when_open: HealthStatus = HealthStatus.DEGRADED,
    when_half_open: HealthStatus = HealthStatus.DEGRADED,
) -> Callable[[], HealthStatus]:
    """A check that reports a circuit breaker's state: closed is HEALTHY.

    Args:
        breaker: a ``shared.resilience.CircuitBreaker`` (anything with ``state``).
        when_open: the status while it is open (default DEGRADED: the service
            still answers, with a fallback; UNHEALTHY takes it out of rotation).
        when_half_open: the status while it probes (default DEGRADED).
    """
    from shared.resilience.circuit_breaker import CircuitBreakerState

    if not hasattr(breaker, "state"):
        raise TypeError(f"breaker must be a CircuitBreaker, got {type(breaker).__name__}")
    for label, value in (("when_open", when_open), ("when_half_open", when_half_open)):
        if not isinstance(value, HealthStatus):
            raise TypeError(f"{label} must be a HealthStatus, got {value!r}")

    def check() -> HealthStatus:
        state = breaker.state
        if state is CircuitBreakerState.OPEN:
            return when_open
        if state is CircuitBreakerState.HALF_OPEN:
            return when_half_open
        return HealthStatus.HEALTHY

    check.__qualname__ = f"circuit_breaker_check({getattr(breaker, 'name', '?')})"
    return check


def _is_asyncio_client(client: Any) -> bool:
    command = getattr(client, "execute_command", None)
    return command is not None and inspect.iscoroutinefunction(command)


def redis_check(client: Any) -> Callable[[], Any]:
    """A check that sends Redis ``PING`` (sync ``redis.Redis`` or ``redis.asyncio.Redis``).

    Bound it with the client's own ``socket_timeout`` too: the check's
    timeout stops waiting, the client's stops the socket. redis-py retries a
    refused connection with backoff by default, so a down Redis then reports
    "timed out" rather than "raised ConnectionError"; a client made with
    ``retry=Retry(NoBackoff(), 0)`` fails at once.
    """
    if not callable(getattr(client, "ping", None)):
        raise TypeError(f"client must be a Redis client, got {type(client).__name__}")
    if _is_asyncio_client(client):

        async def check_async() -> bool:
            return bool(await client.ping())

        return check_async

    def check() -> bool:
        return bool(client.ping())

    return check


def postgres_check(target: Any) -> Callable[[], Any]:
    """A check that runs ``SELECT 1`` on PostgreSQL with psycopg 3.

    Args:
        target: a conninfo string or URL (the check keeps one autocommit
            connection and reconnects after a failure), a ``psycopg.Connection``
            or a ``psycopg.AsyncConnection`` (used as they are).
    """
    if isinstance(target, str):
        return _ConninfoCheck(target)
    execute = getattr(target, "execute", None)
    if not callable(execute):
        raise TypeError(
            f"target must be a conninfo str or a psycopg connection, got {type(target).__name__}"
        )
    if inspect.iscoroutinefunction(execute):

        async def check_async() -> bool:
            cursor = await target.execute("SELECT 1")
            row = await cursor.fetchone()
            return bool(row and row[0] == 1)

        return check_async

    def check() -> bool:
        row = target.execute("SELECT 1").fetchone()
        return bool(row and row[0] == 1)

    return check


class _ConninfoCheck:
    """``SELECT 1`` over a connection of its own, opened on first use and after errors."""

    def __init__(self, conninfo: str, connect_timeout: int = 2) -> None:
        import psycopg  # noqa: F401 - fail at registration when psycopg is missing

        self._conninfo = conninfo
        self._connect_timeout = connect_timeout
        self._lock = threading.Lock()
        self._connection: Any = None
        self.__qualname__ = "postgres_check"

    def __call__(self) -> bool:
        import psycopg

        with self._lock:
            connection = self._connection
            self._connection = None
        try:
            if connection is None or connection.closed:
                connection = psycopg.connect(
                    self._conninfo, autocommit=True, connect_timeout=self._connect_timeout
                )
            row = connection.execute("SELECT 1").fetchone()
        except Exception:
            if connection is not None:
                connection.close()
            raise
        with self._lock:
            if self._connection is None:
                self._connection = connection
                connection = None
        if connection is not None:
            connection.close()
        return bool(row and row[0] == 1)

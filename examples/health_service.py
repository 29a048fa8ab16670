"""A service with Kubernetes probes and a graceful shutdown, as the design document shows.

Run it with Redis on 127.0.0.1:6379 and PostgreSQL on 127.0.0.1:5432 (database
``test``), then probe it and stop it:

    python examples/health_service.py &
    curl -s localhost:8080/health/ready            # 200 {"status": "healthy", ...}
    curl -s -H 'Accept: application/health+json' localhost:8080/health
    kill -TERM %1                                  # readiness 503, handlers, exit 0

``HEALTH_CHECK_PORT`` picks the port (0: any free one; the bound URL is
printed), ``DRAIN_DELAY`` the seconds readiness answers 503 before the
handlers run. Stop Redis while it runs and ``/health`` turns DEGRADED; stop
PostgreSQL and readiness turns 503 while liveness stays 200.
"""

from __future__ import annotations

import logging
import os
import signal
import time

import psycopg
import redis

from shared.health import HealthCheck, HealthServer, HealthStatus, circuit_breaker_check
from shared.lifecycle import GracefulShutdown, ShutdownConfig
from shared.resilience import CircuitBreaker, CircuitBreakerConfig

logger = logging.getLogger("health_service")


class MyServiceHealthCheck(HealthCheck):
    """Custom health check for your service (the document's, unchanged)."""

    def __init__(self, db, redis, config):
        self.db = db
        self.redis = redis
        self.config = config

    def check(self) -> HealthStatus:
        """Overall health check."""
        if not self._check_database():
            return HealthStatus.UNHEALTHY

        if not self._check_redis():
            return HealthStatus.DEGRADED

        return HealthStatus.HEALTHY

    def liveness(self) -> HealthStatus:
        """Liveness probe - is service alive?"""
        # Check if service can handle requests
        return HealthStatus.HEALTHY

    def readiness(self) -> HealthStatus:
        """Readiness probe - can service accept traffic?"""
        # Check dependencies
        if not self._check_database():
            return HealthStatus.UNHEALTHY

        return HealthStatus.HEALTHY

    def _check_database(self) -> bool:
        try:
            self.db.execute("SELECT 1")
            return True
        except Exception:
            return False

    def _check_redis(self) -> bool:
        try:
            self.redis.ping()
            return True
        except Exception:
            return False


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    db = psycopg.connect(
        "host=127.0.0.1 port=5432 user=postgres dbname=test", autocommit=True, connect_timeout=2
    )
    cache = redis.Redis(host="127.0.0.1", port=6379, socket_timeout=0.5)
    config = {"service": "example"}

    # Configure shutdown first: a SIGTERM during start-up is not lost.
    shutdown = GracefulShutdown(
        ShutdownConfig(
            timeout=30.0,  # Max 30s for shutdown
            signal_handlers=(signal.SIGTERM, signal.SIGINT),
            drain_delay=float(os.environ.get("DRAIN_DELAY", "0")),
        )
    )

    # Start health server (a registered check shows in the response's "checks").
    health_check = MyServiceHealthCheck(db, cache, config)
    payments = CircuitBreaker("payments_api", CircuitBreakerConfig(failure_threshold=5))
    health_check.add_check("payments_api", circuit_breaker_check(payments), timeout=0.1)
    health_server = HealthServer(health_check, port=int(os.environ.get("HEALTH_CHECK_PORT", 8080)))
    health_server.start_in_background()
    print(f"health server listening on {health_server.url}", flush=True)

    # Register cleanup handlers: they run in registration order.
    @shutdown.on_shutdown
    async def close_database():
        logger.info("Closing database connections...")
        db.close()
        logger.info("Database closed")

    @shutdown.on_shutdown
    async def close_redis():
        logger.info("Closing Redis connections...")
        cache.close()
        logger.info("Redis closed")

    # A money movement in flight is finished before the handlers run.
    with shutdown.critical("startup-ledger-sync"):
        time.sleep(0.01)

    # Wait for shutdown signal
    shutdown.wait_for_signal()  # Blocks until SIGTERM/SIGINT, then exits 0 (1 on failure)


if __name__ == "__main__":
    main()

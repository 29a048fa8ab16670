"""Health checks for Kubernetes probes and load balancers.

Modules (the design document's "Module Structure"): ``health_check`` (the
``HealthCheck`` base class, sub-check registration and results),
``health_status`` (the ``HealthStatus`` enum), ``health_server`` (the HTTP
probe server) and ``checks`` (built-in sub-checks: circuit breaker, Redis,
PostgreSQL).
"""

from __future__ import annotations

from shared.health.checks import circuit_breaker_check, postgres_check, redis_check
from shared.health.health_check import (
    PROBES,
    CheckResult,
    HealthCheck,
    HealthCheckProtocol,
    HealthReport,
)
from shared.health.health_server import HealthServer, render_report
from shared.health.health_status import HealthStatus

__all__ = [
    "PROBES",
    "CheckResult",
    "HealthCheck",
    "HealthCheckProtocol",
    "HealthReport",
    "HealthServer",
    "HealthStatus",
    "circuit_breaker_check",
    "postgres_check",
    "redis_check",
    "render_report",
]

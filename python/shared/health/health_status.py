"""The health status enum: ``HEALTHY``, ``DEGRADED``, ``UNHEALTHY``.

HEALTHY and DEGRADED answer HTTP 200 (the service can take traffic, perhaps
with a weaker dependency), UNHEALTHY answers 503. In the IETF health-check
format (``application/health+json``) they are ``pass``, ``warn`` and ``fail``.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable

__all__ = ["HealthStatus"]


class HealthStatus(enum.Enum):
    """How healthy a service, probe or sub-check is; ``worst()`` combines several."""

    HEALTHY = "healthy"
    DEGRADED = "degraded"
    UNHEALTHY = "unhealthy"

    @property
    def http_status(self) -> int:
        """200 for HEALTHY and DEGRADED, 503 for UNHEALTHY."""
        return 503 if self is HealthStatus.UNHEALTHY else 200

    @property
    def ietf_status(self) -> str:
        """``pass``, ``warn`` or ``fail`` (draft-inadarei-api-health-check)."""
        return _IETF[self]

    @property
    def severity(self) -> int:
        """0 (healthy), 1 (degraded) or 2 (unhealthy): larger is worse."""
        return _SEVERITY[self]

    @classmethod
    def worst(cls, statuses: Iterable[HealthStatus]) -> HealthStatus:
        """The worst status of an iterable of statuses; HEALTHY when it is empty."""
        result = cls.HEALTHY
        for status in statuses:
            if not isinstance(status, HealthStatus):
                raise TypeError(f"statuses must be HealthStatus values, got {status!r}")
            if _SEVERITY[status] > _SEVERITY[result]:
                result = status
        return result

    def __str__(self) -> str:
        return self.value


_IETF = {
    HealthStatus.HEALTHY: "pass",
    HealthStatus.DEGRADED: "warn",
    HealthStatus.UNHEALTHY: "fail",
}
_SEVERITY = {HealthStatus.HEALTHY: 0, HealthStatus.DEGRADED: 1, HealthStatus.UNHEALTHY: 2}

"""Service settings from the environment (the document's "Environment Variables").

``ServiceSettings.from_env()`` reads the service-wide variables
(``ENVIRONMENT``, ``LOG_LEVEL``, ``TRACE_SAMPLE_RATE``, the tracing endpoint,
``HEALTH_CHECK_PORT``, ``METRICS_PORT``, the shutdown timings); the pattern
configs read their own (``CircuitBreakerConfig.from_env()``,
``RateLimitConfig.from_env()``, ``RetryConfig.from_env()``). A bad value
raises ``EnvConfigError`` (a ``ValueError``) naming the variable.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from shared import _validation
from shared._env import EnvConfigError, EnvReader

__all__ = ["LOG_LEVELS", "EnvConfigError", "ServiceSettings"]

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def _port(name: str, value: Any) -> int:
    return _validation.int_in_range(name, value, 0, 65535)


@dataclass(frozen=True, kw_only=True)
class ServiceSettings:
    """What a service built on shared reads from its environment.

    Args:
        service_name: the service's name in traces and metrics
            (``OTEL_SERVICE_NAME``).
        environment: ``ENVIRONMENT`` (``production``, ``staging``, ...).
        log_level: ``LOG_LEVEL``: DEBUG, INFO, WARNING, ERROR or CRITICAL.
        trace_sample_rate: ``TRACE_SAMPLE_RATE``, in [0, 1].
        otlp_endpoint: where traces go over OTLP/HTTP (the collector's base
            URL; ``/v1/traces`` is appended by the exporter):
            ``OTEL_EXPORTER_OTLP_ENDPOINT`` or the document's
            ``JAEGER_ENDPOINT``; ``None``: traces stay in the process.
        health_check_port: ``HEALTH_CHECK_PORT`` (0: any free port).
        metrics_port: ``METRICS_PORT`` (0: any free port).
        shutdown_timeout: ``SHUTDOWN_TIMEOUT``, seconds for every shutdown
            handler together.
        drain_delay: ``SHUTDOWN_DRAIN_DELAY``, seconds readiness answers 503
            before the handlers run, so load balancers stop sending traffic.

    Invalid values raise ``ValueError`` or ``TypeError`` naming the field.
    """

    service_name: str = "shared-service"
    environment: str = "development"
    log_level: str = "INFO"
    trace_sample_rate: float = 1.0
    otlp_endpoint: str | None = None
    health_check_port: int = 8080
    metrics_port: int = 9090
    shutdown_timeout: float = 30.0
    drain_delay: float = 5.0

    def __post_init__(self) -> None:
        for name in ("service_name", "environment"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value:
                raise TypeError(f"{name} must be a non-empty str, got {value!r}")
        if self.log_level not in LOG_LEVELS:
            raise ValueError(
                f"log_level must be one of {', '.join(LOG_LEVELS)}, got {self.log_level!r}"
            )
        rate = _validation.number("trace_sample_rate", self.trace_sample_rate)
        if not (math.isfinite(rate) and 0.0 <= rate <= 1.0):
            raise ValueError(f"trace_sample_rate must be in [0, 1], got {self.trace_sample_rate!r}")
        object.__setattr__(self, "trace_sample_rate", rate)
        if self.otlp_endpoint is not None:
            parts = urlsplit(self.otlp_endpoint) if isinstance(self.otlp_endpoint, str) else None
            if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
                raise ValueError(
                    f"otlp_endpoint must be an http:// or https:// URL, got {self.otlp_endpoint!r}"
                )
        _port("health_check_port", self.health_check_port)
        _port("metrics_port", self.metrics_port)
        object.__setattr__(
            self,
            "shutdown_timeout",
            _validation.positive_finite("shutdown_timeout", self.shutdown_timeout),
        )
        object.__setattr__(
            self, "drain_delay", _validation.non_negative_finite("drain_delay", self.drain_delay)
        )

    @classmethod
    def from_env(
        cls, environ: Mapping[str, str] | None = None, *, prefix: str = "", **fields: Any
    ) -> ServiceSettings:
        """Settings from environment variables (each with ``prefix`` in front).

        ``fields`` are the values used where a variable is unset or blank.
        ``OTEL_EXPORTER_OTLP_ENDPOINT`` wins over ``JAEGER_ENDPOINT`` when both
        are set. A bad value raises ``EnvConfigError`` naming the variable.
        """
        env = EnvReader(environ, prefix)
        values = dict(fields)
        read: dict[str, Any] = {
            "service_name": env.get_str("OTEL_SERVICE_NAME", "service_name"),
            "environment": env.get_str("ENVIRONMENT", "environment"),
            "log_level": env.get_choice("LOG_LEVEL", LOG_LEVELS, "log_level"),
            "trace_sample_rate": env.get_float("TRACE_SAMPLE_RATE", "trace_sample_rate"),
            "otlp_endpoint": env.get_str("OTEL_EXPORTER_OTLP_ENDPOINT", "otlp_endpoint")
            or env.get_str("JAEGER_ENDPOINT", "otlp_endpoint"),
            "health_check_port": env.get_int("HEALTH_CHECK_PORT", "health_check_port"),
            "metrics_port": env.get_int("METRICS_PORT", "metrics_port"),
            "shutdown_timeout": env.get_float("SHUTDOWN_TIMEOUT", "shutdown_timeout"),
            "drain_delay": env.get_float("SHUTDOWN_DRAIN_DELAY", "drain_delay"),
        }
        values.update({field: value for field, value in read.items() if value is not None})
        return env.build(cls, values)

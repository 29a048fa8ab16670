"""Observability: ``metrics_server`` (Prometheus) and ``tracing`` (OpenTelemetry).

Not built yet: no issue for it is open. The package exists so that the
observability issue fills in these modules rather than inventing places.
"""

from __future__ import annotations

__all__: list[str] = []

# -- Prometheus metrics ------------------------------------------------------------------
from shared.observability.metrics_server import MetricsServer
from shared.observability.resilience_collector import (
    ResilienceCollector,
    register_idempotency_store,
    register_resilience_metrics,
    unregister_idempotency_store,
    unregister_resilience_metrics,
)

__all__ += [
    "MetricsServer",
    "ResilienceCollector",
    "register_idempotency_store",
    "register_resilience_metrics",
    "unregister_idempotency_store",
    "unregister_resilience_metrics",
]

"""Observability: Prometheus metrics (``metrics_server``, ``resilience_collector``)
and OpenTelemetry tracing (``tracing``).

Every name is imported on first use: the resilience modules import this package
for their span-event hooks (``_events``), and importing them must load neither
OpenTelemetry nor the metrics modules (which themselves import the resilience
modules).
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

# -- Prometheus metrics ------------------------------------------------------------------
_METRICS = {
    "MetricsServer": "metrics_server",
    "ResilienceCollector": "resilience_collector",
    "register_idempotency_store": "resilience_collector",
    "register_resilience_metrics": "resilience_collector",
    "unregister_idempotency_store": "resilience_collector",
    "unregister_resilience_metrics": "resilience_collector",
}

# -- tracing (OpenTelemetry) -------------------------------------------------------------
_TRACING = dict.fromkeys(
    (
        "TracingConfig",
        "add_span_attribute",
        "add_span_event",
        "continue_trace",
        "extract_trace_context",
        "flush_tracing",
        "get_tracer",
        "propagate_trace_context",
        "setup_tracing",
        "shutdown_tracing",
        "trace_span",
    ),
    "tracing",
)

_EXPORTS = {**_METRICS, **_TRACING}
__all__ = [
    "MetricsServer",
    "ResilienceCollector",
    "TracingConfig",
    "add_span_attribute",
    "add_span_event",
    "continue_trace",
    "extract_trace_context",
    "flush_tracing",
    "get_tracer",
    "propagate_trace_context",
    "register_idempotency_store",
    "register_resilience_metrics",
    "setup_tracing",
    "shutdown_tracing",
    "trace_span",
    "unregister_idempotency_store",
    "unregister_resilience_metrics",
]

if TYPE_CHECKING:
    from shared.observability.metrics_server import MetricsServer
    from shared.observability.resilience_collector import (
        ResilienceCollector,
        register_idempotency_store,
        register_resilience_metrics,
        unregister_idempotency_store,
        unregister_resilience_metrics,
    )
    from shared.observability.tracing import (
        TracingConfig,
        add_span_attribute,
        add_span_event,
        continue_trace,
        extract_trace_context,
        flush_tracing,
        get_tracer,
        propagate_trace_context,
        setup_tracing,
        shutdown_tracing,
        trace_span,
    )


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value

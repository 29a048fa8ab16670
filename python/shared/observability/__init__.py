"""Observability: ``metrics_server`` (Prometheus) and ``tracing`` (OpenTelemetry).

Not built yet: no issue for it is open. The package exists so that the
observability issue fills in these modules rather than inventing places.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__all__: list[str] = []

# -- tracing (OpenTelemetry): imported on first use, so that importing this package
# (the resilience modules' span-event hooks do) does not load OpenTelemetry.
_TRACING = (
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
)
__all__ += _TRACING
if TYPE_CHECKING:
    from shared.observability.tracing import (  # noqa: F401 - re-exported lazily
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
    if name in _TRACING:
        from shared.observability import tracing

        return getattr(tracing, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

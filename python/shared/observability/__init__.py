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
    from shared.observability.tracing import (
        TracingConfig as TracingConfig,
    )
    from shared.observability.tracing import (
        add_span_attribute as add_span_attribute,
    )
    from shared.observability.tracing import (
        add_span_event as add_span_event,
    )
    from shared.observability.tracing import (
        continue_trace as continue_trace,
    )
    from shared.observability.tracing import (
        extract_trace_context as extract_trace_context,
    )
    from shared.observability.tracing import (
        flush_tracing as flush_tracing,
    )
    from shared.observability.tracing import (
        get_tracer as get_tracer,
    )
    from shared.observability.tracing import (
        propagate_trace_context as propagate_trace_context,
    )
    from shared.observability.tracing import (
        setup_tracing as setup_tracing,
    )
    from shared.observability.tracing import (
        shutdown_tracing as shutdown_tracing,
    )
    from shared.observability.tracing import (
        trace_span as trace_span,
    )


def __getattr__(name: str) -> Any:
    if name in _TRACING:
        from shared.observability import tracing

        return getattr(tracing, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

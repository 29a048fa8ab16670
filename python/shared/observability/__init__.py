"""Observability: ``metrics_server`` (Prometheus) and ``tracing`` (OpenTelemetry).

Not built yet: no issue for it is open. The package exists so that the
observability issue fills in these modules rather than inventing places.
"""

from __future__ import annotations

__all__: list[str] = []

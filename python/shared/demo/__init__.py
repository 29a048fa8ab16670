"""An order-execution service that shows every pattern at work.

``python -m shared demo`` runs it: clients (that retry and send duplicates on
purpose) place orders through a per-user rate limiter and an idempotency
layer; each execution is a retry with a budget around a circuit breaker
around a per-attempt timeout around a simulated exchange with latency spikes,
errors and an outage window. Probes and Prometheus metrics are served while
it runs; SIGINT or SIGTERM stops it gracefully; the summary proves that
orders executed equal unique keys and that nothing was lost on the way out.

``shared.demo.wiring`` holds the plug points for the parts the library
provides (idempotency store, health and metrics servers, tracing, shutdown).
"""

from __future__ import annotations

from shared.demo.app import DemoOptions, run, run_async

__all__ = ["DemoOptions", "run", "run_async"]

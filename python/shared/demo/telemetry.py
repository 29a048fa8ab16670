"""The demo's health (a ``HealthCheck`` subclass) and its own Prometheus metrics.

``DemoHealthCheck`` is served by ``shared.health.HealthServer``: liveness never
depends on the exchange, readiness fails until the service has started (and,
through the health server, during a graceful shutdown), the overall check
reports the exchange as degraded while its breaker is not closed.
``DemoCollector`` is an extra collector beside the library's ``shared_*``
families, read at scrape time: nothing on the order path.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from shared.health import HealthCheck, HealthStatus, circuit_breaker_check
from shared.resilience import CircuitBreakerState

if TYPE_CHECKING:
    from shared.demo.service import OrderService

__all__ = ["DemoCollector", "DemoHealthCheck"]


class DemoHealthCheck(HealthCheck):
    """Startup and readiness follow the service; ``exchange`` reports its breaker."""

    cache_ttl = 0.1

    def __init__(self, service: OrderService) -> None:
        super().__init__()
        self.service = service
        # Readiness and the overall check: DEGRADED (200) while the breaker is not closed.
        self.add_check("exchange", circuit_breaker_check(service.breaker))

    def readiness(self) -> HealthStatus:
        """UNHEALTHY (503) until started and once the service takes no orders; the
        server combines it with the ``exchange`` check and answers 503 during a
        graceful shutdown from its first instant."""
        ready = self.service.started and self.service.accepting
        return HealthStatus.HEALTHY if ready else HealthStatus.UNHEALTHY

    def startup(self) -> HealthStatus:
        return HealthStatus.HEALTHY if self.service.started else HealthStatus.UNHEALTHY


class DemoCollector(Collector):
    """Reads the service's counters at scrape time: nothing on the order path."""

    def __init__(self, service: OrderService, ready: Callable[[], bool]) -> None:
        self.service = service
        self.ready = ready

    def collect(self) -> Iterator[Any]:
        service, stats = self.service, self.service.stats
        orders = CounterMetricFamily(
            "shared_demo_orders", "Order requests by outcome", labels=["outcome"]
        )
        orders.add_metric(["executed"], float(sum(service.exchange.executions.values())))
        orders.add_metric(["replayed"], float(stats.replayed))
        orders.add_metric(["rate_limited"], float(stats.rate_limited))
        orders.add_metric(["breaker_rejected"], float(stats.breaker_rejections))
        orders.add_metric(["failed"], float(stats.failures))
        yield orders
        requests = CounterMetricFamily("shared_demo_order_requests", "Order requests received")
        requests.add_metric([], float(stats.requests))
        yield requests
        breaker = service.breaker
        state = GaugeMetricFamily(
            "shared_demo_circuit_breaker_state",
            "1 for the breaker's current state",
            labels=["breaker", "state"],
        )
        for member in CircuitBreakerState:
            state.add_metric([breaker.name, member.value], 1.0 if breaker.state is member else 0.0)
        yield state
        counters = breaker.counters()
        calls = CounterMetricFamily(
            "shared_demo_circuit_breaker_calls",
            "Calls through the breaker by outcome",
            labels=["breaker", "outcome"],
        )
        for outcome in ("succeeded", "failed", "rejected"):
            calls.add_metric([breaker.name, outcome], float(counters[f"calls_{outcome}"]))
        yield calls
        retry = service.retry.statistics
        retries = CounterMetricFamily("shared_demo_retries", "Retries made", labels=["retry"])
        retries.add_metric([service.retry.name], float(retry["retries"]))
        yield retries
        give_ups = CounterMetricFamily(
            "shared_demo_retry_give_ups", "Calls that gave up", labels=["retry"]
        )
        give_ups.add_metric([service.retry.name], float(retry["give_ups"]))
        yield give_ups
        in_flight = GaugeMetricFamily("shared_demo_orders_in_flight", "Orders being executed")
        in_flight.add_metric([], float(service.in_flight))
        yield in_flight
        ready = GaugeMetricFamily("shared_demo_ready", "1 while the service takes traffic")
        ready.add_metric([], 1.0 if self.ready() else 0.0)
        yield ready

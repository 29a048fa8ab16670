"""The demo's health answers and Prometheus metrics, read from its state at request time."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from shared.demo.http import Response
from shared.resilience import CircuitBreakerState

if TYPE_CHECKING:
    from shared.demo.service import OrderService

__all__ = ["DemoCollector", "DemoHealth", "health_routes", "metrics_endpoint"]


def _json(status: int, body: dict[str, Any]) -> Response:
    return status, "application/json", (json.dumps(body) + "\n").encode()


class DemoHealth:
    """The demo's health, in the shape of the document's ``HealthCheck``
    (``check``, ``liveness``, ``readiness``, plus ``startup``), answering the
    ``HealthStatus`` values as strings: a ``HealthCheck`` subclass for
    ``shared.health.HealthServer`` is these four methods.

    Liveness never depends on the exchange; readiness fails while starting or
    stopping; the overall check reports the exchange as degraded while its
    breaker is not closed (the service still answers, degraded).
    """

    def __init__(self, service: OrderService, ready: Callable[[], bool]) -> None:
        self.service = service
        self.ready = ready

    def exchange(self) -> str:
        closed = self.service.breaker.state is CircuitBreakerState.CLOSED
        return HEALTHY if closed else DEGRADED

    def check(self) -> str:
        return self.exchange() if self.ready() else UNHEALTHY

    def liveness(self) -> str:
        return HEALTHY

    def readiness(self) -> str:
        return HEALTHY if self.ready() else UNHEALTHY

    def startup(self) -> str:
        return HEALTHY if self.service.started else UNHEALTHY


HEALTHY, DEGRADED, UNHEALTHY = "healthy", "degraded", "unhealthy"


def health_routes(health: DemoHealth) -> dict[str, Callable[[], Response]]:
    """``/health``, ``/health/live``, ``/health/ready``, ``/health/startup``: 200 for
    healthy and degraded, 503 for unhealthy, the document's JSON body."""

    def answer(status: str, checks: dict[str, str] | None = None) -> Response:
        body: dict[str, Any] = {
            "status": status,
            "timestamp": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        }
        if checks is not None:
            body["checks"] = checks
        return _json(503 if status == UNHEALTHY else 200, body)

    return {
        "/health": lambda: answer(health.check(), {"exchange": health.exchange()}),
        "/health/live": lambda: answer(health.liveness()),
        "/health/ready": lambda: answer(health.readiness()),
        "/health/startup": lambda: answer(health.startup()),
    }


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


def metrics_endpoint(collector: Collector) -> Callable[[], Response]:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)

    def scrape() -> Response:
        return 200, "text/plain; version=0.0.4; charset=utf-8", generate_latest(registry)

    return scrape

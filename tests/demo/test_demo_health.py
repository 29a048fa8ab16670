"""The demo's health answers: liveness never flaps, readiness follows start and stop."""

from __future__ import annotations

import json

import pytest
from prometheus_client.parser import text_string_to_metric_families
from test_demo_service import make_service

from shared.demo.telemetry import DemoCollector, DemoHealth, health_routes, metrics_endpoint

pytestmark = pytest.mark.backend_independent


def answers(
    ready: bool, breaker_open: bool = False, started: bool = True
) -> dict[str, tuple[int, dict]]:
    service = make_service()
    service.started = started
    if breaker_open:
        service.breaker.force_open()
    routes = health_routes(DemoHealth(service, lambda: ready))
    result = {}
    for path, route in routes.items():
        status, content_type, body = route()
        assert content_type == "application/json"
        result[path] = (status, json.loads(body))
    return result


def test_healthy_while_running() -> None:
    """Every endpoint is 200 healthy; /health lists the exchange check."""
    got = answers(ready=True)
    assert {path: status for path, (status, _) in got.items()} == dict.fromkeys(got, 200)
    assert got["/health"][1]["checks"] == {"exchange": "healthy"}
    assert got["/health"][1]["timestamp"].endswith("Z")


def test_an_open_breaker_degrades_but_does_not_fail_probes() -> None:
    """An exchange outage is degraded (200) overall; readiness and liveness stay 200."""
    got = answers(ready=True, breaker_open=True)
    assert got["/health"] == (200, {**got["/health"][1], "status": "degraded"})
    assert got["/health"][1]["checks"] == {"exchange": "degraded"}
    assert got["/health/ready"][0] == got["/health/live"][0] == 200


def test_stopping_fails_readiness_not_liveness() -> None:
    """Once stopping, /health/ready and /health are 503; /health/live stays 200."""
    got = answers(ready=False)
    assert got["/health/ready"] == (503, {**got["/health/ready"][1], "status": "unhealthy"})
    assert got["/health"][0] == 503
    assert got["/health/live"][0] == 200


def test_startup_fails_until_started() -> None:
    """/health/startup is 503 until the service has started."""
    assert answers(ready=False, started=False)["/health/startup"][0] == 503


def test_metrics_are_read_at_scrape_time() -> None:
    """The collector reports the service's counters and breaker state as they are now."""
    service = make_service()
    service.breaker.force_open()
    service.stats.replayed = 7
    status, _, body = metrics_endpoint(DemoCollector(service, lambda: True))()
    assert status == 200
    samples = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(body.decode())
        for sample in family.samples
    }
    assert samples[("shared_demo_orders_total", (("outcome", "replayed"),))] == 7
    open_state = (("breaker", "exchange"), ("state", "open"))
    assert samples[("shared_demo_circuit_breaker_state", open_state)] == 1
    assert samples[("shared_demo_ready", ())] == 1

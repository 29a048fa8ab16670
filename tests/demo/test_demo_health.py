"""The demo's HealthCheck on HealthServer and its collector on MetricsServer."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest
from prometheus_client.parser import text_string_to_metric_families
from test_demo_service import make_service, order

from shared.config import ServiceSettings
from shared.demo.service import OrderService
from shared.demo.telemetry import DemoCollector, DemoHealthCheck
from shared.demo.wiring import start_health, start_metrics
from shared.lifecycle import graceful_shutdown

pytestmark = pytest.mark.backend_independent

SETTINGS = ServiceSettings(health_check_port=0, metrics_port=0)


@pytest.fixture(autouse=True)
def _no_shutdown_in_progress() -> Iterator[None]:
    graceful_shutdown._shutdown_started.clear()
    yield
    graceful_shutdown._shutdown_started.clear()


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


async def answers(service: OrderService) -> dict[str, tuple[int, dict]]:
    server = await start_health(SETTINGS, DemoHealthCheck(service), "127.0.0.1")
    try:
        result = {}
        for path in ("/health", "/health/live", "/health/ready", "/health/startup"):
            status, body = await asyncio.to_thread(_get, server.url + path)
            result[path] = (status, json.loads(body))
        return result
    finally:
        await server.aclose()


async def test_healthy_while_running() -> None:
    """Every probe is 200 healthy; /health lists the exchange check."""
    service = make_service()
    service.started = True
    got = await answers(service)
    assert {path: status for path, (status, _) in got.items()} == dict.fromkeys(got, 200)
    assert got["/health"][1]["checks"] == {"exchange": "healthy"}


async def test_an_open_breaker_degrades_but_does_not_fail_probes() -> None:
    """An exchange outage is degraded (200); liveness is untouched."""
    service = make_service()
    service.started = True
    service.breaker.force_open()
    got = await answers(service)
    assert got["/health"][0] == 200
    assert got["/health"][1]["checks"]["exchange"] == "degraded"
    assert got["/health/ready"] == (200, {**got["/health/ready"][1], "status": "degraded"})
    assert got["/health/live"][0] == 200


async def test_not_started_or_not_accepting_fails_readiness_not_liveness() -> None:
    """Before start: startup and readiness 503; once orders stop: readiness 503, live 200."""
    service = make_service()
    got = await answers(service)
    assert got["/health/startup"][0] == got["/health/ready"][0] == 503
    service.started = True
    service.accepting = False
    got = await answers(service)
    assert got["/health/ready"][0] == 503
    assert got["/health/live"][0] == got["/health/startup"][0] == 200


async def test_a_graceful_shutdown_turns_readiness_503() -> None:
    """Once a GracefulShutdown has begun, readiness is 503 while the service still serves."""
    service = make_service()
    service.started = True
    graceful_shutdown._shutdown_started.set()
    got = await answers(service)
    assert got["/health/ready"][0] == 503
    assert got["/health/live"][0] == 200


async def test_metrics_server_serves_library_and_demo_families() -> None:
    """shared_* families, the store's outcomes and the demo's counters, promtool-clean."""
    service = make_service()
    await service.place_order(order("k"))
    await service.place_order(order("k"))
    service.breaker.force_open()
    server = await start_metrics(
        SETTINGS, DemoCollector(service, lambda: True), service.store, "127.0.0.1"
    )
    try:
        status, body = await asyncio.to_thread(_get, server.url)
    finally:
        await server.stop_async()
    assert status == 200
    samples = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(body)
        for sample in family.samples
    }
    assert samples[("shared_demo_orders_total", (("outcome", "replayed"),))] == 1
    assert samples[("shared_demo_orders_total", (("outcome", "executed"),))] == 1
    open_state = (("breaker", "exchange"), ("state", "open"))
    assert samples[("shared_demo_circuit_breaker_state", open_state)] == 1
    assert "shared_idempotency_requests_total" in body
    promtool = shutil.which("promtool")
    if promtool is not None:
        lint = await asyncio.to_thread(
            subprocess.run,
            [promtool, "check", "metrics"],
            input=body,
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert lint.returncode == 0, lint.stdout + lint.stderr

"""The graceful stop: in-flight orders finish; a second signal cuts the wait short."""

from __future__ import annotations

import asyncio

import pytest
from test_demo_service import make_service

from shared.config import ServiceSettings
from shared.demo.app import _drain

pytestmark = pytest.mark.backend_independent


async def _client(service: object, stop: asyncio.Event, order_time: float) -> None:
    while not stop.is_set():
        service.in_flight += 1  # type: ignore[attr-defined]
        try:
            await asyncio.sleep(order_time)  # an order in flight
        finally:
            service.in_flight -= 1  # type: ignore[attr-defined]


async def test_in_flight_orders_finish_within_the_timeout() -> None:
    """Clients stop placing orders; the ones in flight finish; nothing is cancelled."""
    service = make_service()
    stop, forced = asyncio.Event(), asyncio.Event()
    clients = [asyncio.create_task(_client(service, stop, 0.05)) for _ in range(3)]
    await asyncio.sleep(0.01)
    settings = ServiceSettings(drain_delay=0.0, shutdown_timeout=5.0)
    await _drain(service, clients, stop, forced, settings)
    assert all(task.done() and not task.cancelled() for task in clients)
    assert service.stats.in_flight_at_stop == 3
    assert service.stats.cancelled_at_stop == 0
    assert service.in_flight == 0


async def test_past_the_timeout_orders_are_cancelled_and_counted() -> None:
    """Orders that outlast the shutdown timeout are cancelled, and the summary says so."""
    service = make_service()
    stop, forced = asyncio.Event(), asyncio.Event()
    clients = [asyncio.create_task(_client(service, stop, 10.0)) for _ in range(2)]
    await asyncio.sleep(0.01)
    settings = ServiceSettings(drain_delay=0.0, shutdown_timeout=0.05)
    await _drain(service, clients, stop, forced, settings)
    assert all(task.cancelled() for task in clients)
    assert service.stats.cancelled_at_stop == 2
    summary = service.stats.summary({}, {})
    assert not summary["checks"]["nothing lost on shutdown"]


async def test_a_second_signal_cuts_the_drain_delay_and_the_wait_short() -> None:
    """With `forced` set, neither the drain delay nor the shutdown timeout is waited for."""
    service = make_service()
    stop, forced = asyncio.Event(), asyncio.Event()
    clients = [asyncio.create_task(_client(service, stop, 10.0))]
    await asyncio.sleep(0.01)
    forced.set()
    settings = ServiceSettings(drain_delay=30.0, shutdown_timeout=30.0)
    await asyncio.wait_for(_drain(service, clients, stop, forced, settings), 2.0)
    assert clients[0].cancelled()
    assert service.stats.cancelled_at_stop == 1


async def test_a_crashed_client_is_reported() -> None:
    """A client that died with an exception is listed, and fails the summary."""
    service = make_service()

    async def crash() -> None:
        raise RuntimeError("boom")

    clients = [asyncio.create_task(crash())]
    await asyncio.sleep(0)
    settings = ServiceSettings(drain_delay=0.0, shutdown_timeout=1.0)
    await _drain(service, clients, asyncio.Event(), asyncio.Event(), settings)
    assert service.stats.client_errors == ["RuntimeError('boom')"]
    assert not service.stats.summary({}, {})["checks"]["no client crashed"]

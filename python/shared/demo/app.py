"""Runs the demo service: clients, service, exchange, probes, live view, summary."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import shared
from shared.config import ServiceSettings
from shared.demo import wiring
from shared.demo.clients import ClientProfile, run_client
from shared.demo.exchange import ExchangeProfile, SimulatedExchange
from shared.demo.service import OrderService
from shared.demo.stats import Stats
from shared.demo.telemetry import DemoCollector, DemoHealth
from shared.demo.view import make_view
from shared.resilience import (
    CircuitBreakerConfig,
    RateLimitConfig,
    RetryBudget,
    RetryConfig,
)

__all__ = ["DemoOptions", "run", "run_async"]

_log = logging.getLogger("shared.demo")
UPDATE_INTERVAL = 0.25


@dataclass
class DemoOptions:
    """What ``python -m shared demo`` takes (see its ``--help``)."""

    duration: float | None = None
    clients: int = 8
    users: int = 4
    tui: bool | None = None
    redis_url: str | None = None
    postgres_url: str | None = None
    replicas: int = 1
    host: str = "127.0.0.1"
    health_port: int | None = None
    metrics_port: int | None = None
    seed: int = 1
    summary_json: str | None = None
    environ: Mapping[str, str] | None = None
    configure_logging: bool = True


@dataclass
class _Configs:
    settings: ServiceSettings
    breaker: CircuitBreakerConfig
    rate: RateLimitConfig
    retry: RetryConfig
    attempt_timeout: float
    exchange: ExchangeProfile


def _configs(options: DemoOptions) -> _Configs:
    """The environment's values where set, else defaults sized for a demo run."""
    env = options.environ
    settings = ServiceSettings.from_env(
        env, service_name="shared-demo", shutdown_timeout=10.0, drain_delay=0.5
    )
    if options.health_port is not None:  # an option wins over the environment
        settings = dataclasses.replace(settings, health_check_port=options.health_port)
    if options.metrics_port is not None:
        settings = dataclasses.replace(settings, metrics_port=options.metrics_port)
    exchange = ExchangeProfile.for_duration(options.duration)
    breaker = CircuitBreakerConfig.from_env(
        env,
        failure_threshold=5,
        success_threshold=2,
        timeout=min(max(exchange.outage_length / 4, 0.1), 2.0),
        expected_exceptions=(ConnectionError, TimeoutError),
    )
    rate = RateLimitConfig.from_env(env, tokens_per_second=50.0, burst_size=20.0)
    retry = RetryConfig.from_env(
        env,
        max_attempts=3,
        initial_delay=0.01,
        max_delay=0.1,
        jitter=True,
        retry_on=(ConnectionError, TimeoutError),
        budget=RetryBudget(ratio=0.2, min_retries_per_second=20.0, ttl=2.0),
    )
    return _Configs(settings, breaker, rate, retry, 0.1, exchange)


def _snapshot(service: OrderService, stats: Stats, users: int) -> dict[str, Any]:
    counters = service.breaker.counters()
    retry = service.retry.statistics
    return {
        "elapsed": stats.elapsed(),
        "executed": sum(service.exchange.executions.values()),
        "rate": stats.rate(),
        "replayed": stats.replayed,
        "rate_limited": stats.rate_limited,
        "breaker_state": service.breaker.state.name,
        "breaker_rejections": stats.breaker_rejections,
        "calls_succeeded": counters["calls_succeeded"],
        "calls_failed": counters["calls_failed"],
        "retries": retry["retries"],
        "retry_give_ups": retry["give_ups"],
        "in_flight": service.in_flight,
        "outage": service.exchange.in_outage(),
        "exchange_errors": service.exchange.errors,
        "users": users,
        "latency": stats.latency_percentiles(),
    }


def _print_summary(summary: dict[str, Any], out: TextIO) -> None:
    print("\n== summary", file=out)
    for name, passed in summary["checks"].items():
        print(f"  [{'ok' if passed else 'FAILED'}] {name}", file=out)
    keys = (
        "duration_s",
        "requests",
        "unique_keys_sent",
        "orders_executed",
        "unique_keys_acknowledged",
        "duplicate_executions",
        "duplicates_sent",
        "duplicates_replayed",
        "rate_limited",
        "breaker_rejections",
        "breaker_opened",
        "retries",
        "retry_give_ups",
        "client_retries",
        "keys_abandoned_unexecuted",
        "spans",
        "in_flight_at_stop",
        "finished_after_stop",
        "cancelled_at_stop",
        "latency_ms",
    )
    for key in keys:
        if key in summary:
            print(f"  {key.replace('_', ' ')}: {summary[key]}", file=out)
    print(f"  result: {'OK' if summary['ok'] else 'FAILED'}", file=out, flush=True)


async def _drain(
    service: OrderService,
    clients: list[asyncio.Task[None]],
    client_stop: asyncio.Event,
    forced: asyncio.Event,
    settings: ServiceSettings,
) -> None:
    """The graceful stop, once readiness answers 503: traffic is still served for
    the drain delay, then clients place no new orders and the orders in flight
    finish, within the shutdown timeout (a second signal cuts both short)."""
    stats = service.stats
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(forced.wait(), settings.drain_delay)
    stats.stopping = True
    stats.in_flight_at_stop = service.in_flight
    client_stop.set()
    all_done: asyncio.Future[Any] = asyncio.gather(*clients, return_exceptions=True)
    force: asyncio.Future[Any] = asyncio.ensure_future(forced.wait())
    await asyncio.wait(
        [all_done, force], timeout=settings.shutdown_timeout, return_when=asyncio.FIRST_COMPLETED
    )
    force.cancel()
    crashed = [
        task.exception()
        for task in clients
        if task.done() and not task.cancelled() and task.exception() is not None
    ]
    for error in crashed:
        _log.error("a client crashed", exc_info=error)
    stats.client_errors = [repr(error) for error in crashed]
    unfinished = [task for task in clients if not task.done()]
    if unfinished:
        stats.cancelled_at_stop = service.in_flight
        for task in unfinished:
            task.cancel()
        await asyncio.gather(*unfinished, return_exceptions=True)


async def run_async(options: DemoOptions, out: TextIO | None = None) -> dict[str, Any]:
    """Runs until ``duration`` passes or SIGINT/SIGTERM; returns the summary
    (``summary["ok"]``: it proves exactly-once and a clean stop). Raises
    ``UnsupportedOptionError`` or ``EnvConfigError`` (exit code 2 for the CLI)."""
    out = out or sys.stdout
    wiring.check_options(options)
    configs = _configs(options)
    settings = configs.settings
    view = make_view(options.tui, options.duration, "shared demo: order execution", out)
    if options.configure_logging:
        logging.basicConfig(level=settings.log_level, handlers=[view.log_handler()], force=True)
    loop = asyncio.get_running_loop()
    stats = Stats()
    exchange = SimulatedExchange(configs.exchange, seed=options.seed)
    store = wiring.make_order_store(options)
    limiters = await wiring.make_user_limiters(options, configs.rate)
    environ = os.environ if options.environ is None else options.environ
    console = environ.get("OTEL_TRACES_EXPORTER", "").strip().lower() == "console"
    tracing = wiring.setup_tracing(settings, console=console)
    service = OrderService(
        exchange,
        store,
        limiters,
        stats,
        breaker_config=configs.breaker,
        retry_config=configs.retry,
        attempt_timeout=configs.attempt_timeout,
        trace=tracing.trace,
    )
    opened = [0]
    service.breaker.add_listener(
        lambda breaker, old, new: opened.__setitem__(0, opened[0] + (new.name == "OPEN"))
    )
    stopping = asyncio.Event()
    forced = asyncio.Event()

    def ready() -> bool:
        return service.started and not stopping.is_set()

    health = metrics = None
    uninstall = None
    try:
        try:
            health = await wiring.start_health(settings, DemoHealth(service, ready), options.host)
        except OSError as exc:
            raise OSError(
                f"cannot serve health checks on {options.host}:{settings.health_check_port} "
                f"({exc.strerror or exc}); set HEALTH_CHECK_PORT or --health-port "
                "(0: any free port)"
            ) from exc
        try:
            metrics = await wiring.start_metrics(
                settings, DemoCollector(service, ready), options.host
            )
        except OSError as exc:
            raise OSError(
                f"cannot serve metrics on {options.host}:{settings.metrics_port} "
                f"({exc.strerror or exc}); set METRICS_PORT or --metrics-port (0: any free port)"
            ) from exc

        def on_signal(name: str) -> None:
            if stopping.is_set():
                print(f"{name} again: forcing the stop", file=out, flush=True)
                forced.set()
            else:
                print(f"{name}: stopping gracefully (again to force)", file=out, flush=True)
                stopping.set()

        uninstall = wiring.install_shutdown(loop, on_signal)
        print(
            f"shared {shared.__version__} demo on the {shared.BACKEND} backend: "
            f"{options.clients} clients, {options.users} users, "
            + (f"{options.duration:g} s" if options.duration else "until Ctrl-C or SIGTERM"),
            file=out,
        )
        print(
            f"  health:  {health.url('/health/ready')} (/health, /health/live, /health/startup)",
            file=out,
        )
        print(f"  metrics: {metrics.url('/metrics')}", file=out)
        print(f"  idempotency: {store.description}", file=out)
        print(f"  limiters: {limiters.description}", file=out)
        print(f"  tracing: {tracing.description}", file=out, flush=True)

        exchange.start()
        stats.started = time.monotonic()
        client_stop = asyncio.Event()
        profile = ClientProfile()
        clients = [
            asyncio.create_task(
                run_client(i, options.users, service, stats, client_stop, profile, options.seed),
                name=f"client-{i}",
            )
            for i in range(options.clients)
        ]
        service.started = True
        view.start()
        try:
            deadline = None if options.duration is None else loop.time() + options.duration
            while not stopping.is_set():
                timeout = UPDATE_INTERVAL
                if deadline is not None:
                    timeout = min(timeout, max(0.0, deadline - loop.time()))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stopping.wait(), timeout)
                view.update(_snapshot(service, stats, options.users))
                if deadline is not None and loop.time() >= deadline:
                    stopping.set()
            await _drain(service, clients, client_stop, forced, settings)
            service.accepting = False
            view.update(_snapshot(service, stats, options.users))
        finally:
            view.stop()
    finally:
        if uninstall is not None:
            uninstall()
        for server in (health, metrics):
            if server is not None:
                await server.close()
        await limiters.close()
        await store.close()
        await asyncio.to_thread(tracing.shutdown)

    retry = service.retry.statistics
    summary = stats.summary(
        dict(exchange.executions),
        {
            "breaker_opened": opened[0],
            "spans": tracing.spans,
            "retries": retry["retries"],
            "retry_give_ups": retry["give_ups"],
            "backend": shared.BACKEND,
            "idempotency_store": store.description,
            "limiters": limiters.description,
            "health_url": health.url("/health/ready"),
            "metrics_url": metrics.url("/metrics"),
        },
    )
    _print_summary(summary, out)
    return summary


def run(options: DemoOptions, out: TextIO | None = None) -> int:
    """Runs the demo; 0 when the summary proves exactly-once and a clean stop, else 1."""
    summary = asyncio.run(run_async(options, out))
    if options.summary_json:
        Path(options.summary_json).write_text(json.dumps(summary, indent=2), encoding="utf-8")
    return 0 if summary["ok"] else 1

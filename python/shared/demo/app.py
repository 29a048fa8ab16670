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
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import shared
from shared.config import ServiceSettings
from shared.demo import wiring
from shared.demo.clients import ClientProfile, Route, run_client
from shared.demo.exchange import ExchangeProfile, SimulatedExchange
from shared.demo.service import OrderService
from shared.demo.stats import Stats
from shared.demo.telemetry import DemoCollector, DemoHealthCheck
from shared.demo.view import make_view
from shared.health import HealthServer
from shared.lifecycle import GracefulShutdown
from shared.observability import shutdown_tracing
from shared.resilience import (
    CircuitBreakerConfig,
    RateLimitConfig,
    RetryBudget,
    RetryConfig,
)

__all__ = ["DemoOptions", "print_summary", "run", "run_async"]

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
    state_dir: str | None = None
    run_id: str | None = None
    replica: tuple[int, int] | None = None  # (index, count) in a replica process
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


def print_summary(summary: dict[str, Any], out: TextIO) -> None:
    print("\n== summary", file=out)
    for name, passed in summary["checks"].items():
        print(f"  [{'ok' if passed else 'FAILED'}] {name}", file=out)
    keys = (
        "replicas",
        "duration_s",
        "requests",
        "unique_keys_sent",
        "orders_executed",
        "unique_keys_acknowledged",
        "duplicate_executions",
        "duplicates_sent",
        "duplicates_replayed",
        "replays_across_replicas",
        "in_progress_timeouts",
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
        "idempotency_store",
        "limiters",
        "health_urls",
        "metrics_urls",
    )
    for key in keys:
        if key in summary:
            print(f"  {key.replace('_', ' ')}: {summary[key]}", file=out)
    print(f"  result: {'OK' if summary['ok'] else 'FAILED'}", file=out, flush=True)


async def _stop(
    service: OrderService,
    clients: list[asyncio.Task[None]],
    client_stop: asyncio.Event,
    shutdown: GracefulShutdown,
    drain_delay: float,
) -> int:
    """The graceful stop, once readiness answers 503: ``shutdown.wait()`` serves
    traffic for the drain delay, then waits for the orders in flight (critical
    sections) and runs the handler that lets the clients finish; clients place
    no new order once the drain delay is over."""
    stats = service.stats

    async def finish_clients() -> None:
        await asyncio.gather(*clients, return_exceptions=True)

    shutdown.on_shutdown(finish_clients, name="clients finish")

    sequence = asyncio.ensure_future(shutdown.wait())
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(asyncio.shield(sequence), drain_delay)
    stats.stopping = True
    stats.in_flight_at_stop = service.in_flight
    service.accepting = False
    client_stop.set()
    code = await sequence
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
    return code


async def run_async(options: DemoOptions, out: TextIO | None = None) -> dict[str, Any]:
    """Runs until ``duration`` passes or SIGINT/SIGTERM; returns the summary
    (``summary["ok"]``: it proves exactly-once and a clean stop). Raises
    ``UnsupportedOptionError`` or ``EnvConfigError`` (exit code 2 for the CLI).
    With ``replicas > 1`` this process runs the replicas (``run_replicas``)."""
    out = out or sys.stdout
    if options.replicas > 1 and options.replica is None:
        from shared.demo.replicas import run_replicas

        return await run_replicas(options, out)
    wiring.check_options(options)
    configs = _configs(options)
    settings = configs.settings
    run_id = options.run_id or uuid.uuid4().hex[:8]
    title = "shared demo: order execution"
    if options.replica is not None:
        title += f" (replica {options.replica[0]} of {options.replica[1]})"
    view = make_view(options.tui, options.duration, title, out)
    if options.configure_logging:
        logging.basicConfig(level=settings.log_level, handlers=[view.log_handler()], force=True)
    loop = asyncio.get_running_loop()
    stats = Stats()
    replica_index = 0 if options.replica is None else options.replica[0]
    exchange = SimulatedExchange(configs.exchange, seed=options.seed, fill_base=replica_index)
    environ = os.environ if options.environ is None else options.environ
    console = environ.get("OTEL_TRACES_EXPORTER", "").strip().lower() == "console"
    shutdown = wiring.install_shutdown(settings)
    lifecycle_log = logging.getLogger("shared.lifecycle")
    drain_filter: Any = None
    store = limiters = health = metrics = None
    tracing_on = False
    try:
        store = await wiring.make_order_store(options, run_id)
        limiters = await wiring.make_user_limiters(options, configs.rate, run_id)
        tracing = wiring.setup_tracing(settings, console=console)
        tracing_on = True
        service = OrderService(
            exchange,
            store,
            limiters,
            stats,
            breaker_config=configs.breaker,
            retry_config=configs.retry,
            attempt_timeout=configs.attempt_timeout,
            critical=shutdown.critical,
        )
        opened = [0]
        service.breaker.add_listener(
            lambda breaker, old, new: opened.__setitem__(0, opened[0] + (new.name == "OPEN"))
        )

        def drain_filter(record: logging.LogRecord) -> bool:
            # Orders keep coming during the drain delay, as they should: not a warning.
            return not (service.accepting and "entered during shutdown" in record.msg)

        lifecycle_log.addFilter(drain_filter)

        def ready() -> bool:
            return service.started and service.accepting and not shutdown.is_shutting_down

        try:
            health = await wiring.start_health(settings, DemoHealthCheck(service), options.host)
        except OSError as exc:
            raise OSError(
                f"cannot serve health checks on {options.host}:{settings.health_check_port} "
                f"({exc.strerror or exc}); set HEALTH_CHECK_PORT or --health-port "
                "(0: any free port)"
            ) from exc
        try:
            metrics = await wiring.start_metrics(
                settings, DemoCollector(service, ready), store, options.host
            )
        except OSError as exc:
            raise OSError(
                f"cannot serve metrics on {options.host}:{settings.metrics_port} "
                f"({exc.strerror or exc}); set METRICS_PORT or --metrics-port (0: any free port)"
            ) from exc

        print(
            f"shared {shared.__version__} demo on the {shared.BACKEND} backend: "
            f"{options.clients} clients, {options.users} users, "
            + (f"{options.duration:g} s" if options.duration else "until Ctrl-C or SIGTERM"),
            file=out,
        )
        print(
            f"  health:  {health.url}/health/ready (/health, /health/live, /health/startup)",
            file=out,
        )
        print(f"  metrics: {metrics.url}", file=out)
        print(f"  idempotency: {store.description}", file=out)
        print(f"  limiters: {limiters.description}", file=out)
        print(f"  tracing: {tracing}", file=out, flush=True)

        exchange.start()
        stats.started = time.monotonic()
        client_stop = asyncio.Event()
        profile = ClientProfile()
        route = Route(run_id, replica_index, 1 if options.replica is None else options.replica[1])
        clients = [
            asyncio.create_task(
                run_client(
                    i, options.users, service, stats, client_stop, profile, options.seed, route
                ),
                name=f"client-{i}",
            )
            for i in range(options.clients)
        ]
        service.started = True
        view.start()
        try:
            deadline = None if options.duration is None else loop.time() + options.duration
            while not shutdown.is_shutting_down:
                timeout = UPDATE_INTERVAL
                if deadline is not None:
                    timeout = min(timeout, max(0.0, deadline - loop.time()))
                await asyncio.sleep(timeout)
                view.update(_snapshot(service, stats, options.users))
                if deadline is not None and loop.time() >= deadline:
                    shutdown.trigger("the duration is over")
            print(f"{shutdown.reason}: stopping gracefully (again to force)", file=out, flush=True)
            code = await _stop(service, clients, client_stop, shutdown, settings.drain_delay)
            view.update(_snapshot(service, stats, options.users))
        finally:
            view.stop()
    finally:
        shutdown.close()
        if drain_filter is not None:
            lifecycle_log.removeFilter(drain_filter)
        for server in (health, metrics):
            if server is not None:
                with contextlib.suppress(Exception):
                    await (
                        server.aclose() if isinstance(server, HealthServer) else server.stop_async()
                    )
        if limiters is not None:
            await limiters.close()
        if store is not None:
            await store.close()
        if tracing_on:
            await asyncio.to_thread(shutdown_tracing, 2.0)

    retry = service.retry.statistics
    extra: dict[str, Any] = {
        "breaker_opened": opened[0],
        "spans": service.spans,
        "retries": retry["retries"],
        "retry_give_ups": retry["give_ups"],
        "shutdown_exit_code": code,
        "backend": shared.BACKEND,
        "idempotency_store": store.description,
        "store_outcomes": store.store.outcome_counts(),
        "limiters": limiters.description,
        "tracing": tracing,
        "health_url": f"{health.url}/health/ready",
        "metrics_url": metrics.url,
    }
    summary = stats.summary(dict(exchange.executions), extra)
    if code != 0:
        summary["checks"]["the graceful shutdown finished cleanly"] = False
        summary["ok"] = False
    if options.replica is not None:
        # A replica acknowledges keys that another replica executed: the parent
        # checks executions against acknowledgements over all of them.
        del summary["checks"]["orders executed == unique keys acknowledged"]
        summary["ok"] = all(summary["checks"].values())
        summary["ledger"] = stats.ledger(dict(exchange.executions))
    else:
        print_summary(summary, out)
    return summary


def run(options: DemoOptions, out: TextIO | None = None) -> int:
    """Runs the demo; 0 when the summary proves exactly-once and a clean stop, else 1."""
    summary = asyncio.run(run_async(options, out))
    if options.summary_json:
        Path(options.summary_json).write_text(json.dumps(summary, indent=2), encoding="utf-8")
    return 0 if summary["ok"] else 1

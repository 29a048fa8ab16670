"""The demo's plug points: one function per piece that another module provides.

Each function builds its piece from what this package has today and is the
one place to switch when the library's own module lands:

- ``make_order_store``: the idempotency layer (today: one execution per key
  in this process; then ``@idempotent`` on the SQLite, Redis or PostgreSQL
  store).
- ``make_user_limiters``: per-user limits (in-process registry, or the Redis
  registry with ``--redis``).
- ``start_health``: the probe server (today: ``shared.demo.http``; then
  ``shared.health.HealthServer``).
- ``start_metrics``: the Prometheus endpoint (today: ``shared.demo.http`` with
  the demo's collector; then ``shared.observability.MetricsServer``).
- ``setup_tracing``: spans (today: off; then ``shared.observability``).
- ``install_shutdown``: signals (today: asyncio signal handlers; then
  ``shared.lifecycle.GracefulShutdown``).
- ``check_options``: refuses what needs a piece that is not here yet.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from prometheus_client.registry import Collector

from shared.config import ServiceSettings
from shared.demo.http import SmallHttpServer
from shared.demo.service import UserLimiters
from shared.demo.store import InProcessOrderStore, OrderStore
from shared.demo.telemetry import DemoHealth, health_routes, metrics_endpoint
from shared.resilience import AsyncRedisRateLimiterRegistry, RateLimitConfig, RateLimiterRegistry

if TYPE_CHECKING:
    from shared.demo.app import DemoOptions

__all__ = [
    "Tracing",
    "UnsupportedOptionError",
    "check_options",
    "install_shutdown",
    "make_order_store",
    "make_user_limiters",
    "setup_tracing",
    "start_health",
    "start_metrics",
]


class UnsupportedOptionError(Exception):
    """An option needs a part of the library this build does not have (exit 2)."""


def check_options(options: DemoOptions) -> None:
    """Refuses options whose exactly-once claim needs a durable idempotency store."""
    if options.postgres_url is not None:
        raise UnsupportedOptionError(
            "--postgres needs the PostgreSQL idempotency store, which this build does not "
            "have yet; run without it (in-process store) or with --redis (limiters on Redis)"
        )
    if options.replicas > 1:
        raise UnsupportedOptionError(
            f"--replicas {options.replicas} needs a durable idempotency store shared by the "
            "processes (Redis or PostgreSQL), which this build does not have yet; "
            "exactly-once across processes cannot be shown with the in-process store"
        )


def make_order_store(options: DemoOptions) -> OrderStore:
    """The idempotency layer orders go through."""
    return InProcessOrderStore()


class _InProcessLimiters:
    def __init__(self, config: RateLimitConfig) -> None:
        self.registry = RateLimiterRegistry(config)
        self.description = (
            f"in-process RateLimiterRegistry ({config.tokens_per_second:g}/s, "
            f"burst {config.burst_size:g} per user)"
        )

    async def allow(self, user: str) -> float | None:
        limiter = self.registry.get_limiter(user)
        if limiter.try_acquire():
            return None
        wait: float = limiter.retry_after()
        return wait

    async def close(self) -> None:
        return None


class _RedisLimiters:
    def __init__(self, config: RateLimitConfig, client: Any, url: str) -> None:
        self.client = client
        # One namespace per run, so that runs (and tests) never share buckets.
        self.prefix = f"shared-demo:{os.getpid()}:{uuid.uuid4().hex[:8]}:"
        self.registry = AsyncRedisRateLimiterRegistry(
            config, client, key_prefix=self.prefix, on_unavailable="local"
        )
        self.description = (
            f"Redis at {url} ({config.tokens_per_second:g}/s, burst {config.burst_size:g} "
            "per user, shared by every process; falls back to in-process limits if Redis fails)"
        )

    async def allow(self, user: str) -> float | None:
        limiter = self.registry.get_limiter(user)
        if await limiter.try_acquire():
            return None
        wait: float = await limiter.retry_after()
        return wait

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self.registry.reset_all()
        await self.client.aclose()


async def make_user_limiters(options: DemoOptions, config: RateLimitConfig) -> UserLimiters:
    """Per-user limiters: on Redis with ``--redis`` (checked to answer), else in-process."""
    if options.redis_url is None:
        return _InProcessLimiters(config)
    try:
        import redis.asyncio
    except ImportError:
        raise UnsupportedOptionError(
            "--redis needs the redis extra: pip install 'shared[redis]'"
        ) from None
    client = redis.asyncio.from_url(
        options.redis_url, socket_timeout=1.0, socket_connect_timeout=1.0
    )
    try:
        await asyncio.wait_for(client.ping(), 2.0)
    except Exception as exc:
        await client.aclose()
        raise ConnectionError(f"Redis at {options.redis_url} does not answer: {exc}") from exc
    return _RedisLimiters(config, client, options.redis_url)


async def start_health(settings: ServiceSettings, health: DemoHealth, host: str) -> SmallHttpServer:
    """Serves ``/health``, ``/health/live``, ``/health/ready``, ``/health/startup``
    from ``health`` (the ``HealthCheck`` shape) on ``settings.health_check_port``."""
    server = SmallHttpServer(health_routes(health), host, settings.health_check_port)
    await server.start()
    return server


async def start_metrics(
    settings: ServiceSettings, collector: Collector, host: str
) -> SmallHttpServer:
    """Serves ``/metrics`` (Prometheus text format) from ``collector``, in a
    registry of its own, on ``settings.metrics_port``."""
    server = SmallHttpServer({"/metrics": metrics_endpoint(collector)}, host, settings.metrics_port)
    await server.start()
    return server


@dataclass
class Tracing:
    """Spans around order executions: ``trace`` wraps the service's execute coroutine."""

    description: str
    trace: Callable[[Callable[..., Any]], Callable[..., Any]] | None = None
    provider: Any = None
    counter: Any = None

    @property
    def spans(self) -> int:
        """Spans ended (sampled in) so far."""
        return 0 if self.counter is None else int(self.counter.ended)

    def shutdown(self) -> None:
        """Flushes and stops the exporter (bounded: an unreachable collector costs 2 s)."""
        if self.provider is not None:
            self.provider.force_flush(timeout_millis=2000)
            self.provider.shutdown()


def setup_tracing(settings: ServiceSettings, *, console: bool = False) -> Tracing:
    """A span per order execution, sampled at ``TRACE_SAMPLE_RATE``, exported over
    OTLP/HTTP when an endpoint is set, else printed to stderr with ``console``
    (``OTEL_TRACES_EXPORTER=console``), else counted in process. Uses the
    OpenTelemetry SDK directly, with a provider of its own (not the global one)."""
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

    class _Counter(SpanProcessor):
        ended = 0

        def on_end(self, span: ReadableSpan) -> None:
            self.ended += 1

    resource = Resource.create(
        {"service.name": settings.service_name, "deployment.environment": settings.environment}
    )
    provider = TracerProvider(
        resource=resource, sampler=ParentBased(TraceIdRatioBased(settings.trace_sample_rate))
    )
    counter = _Counter()
    provider.add_span_processor(counter)
    rate = f"sampling {settings.trace_sample_rate:g}"
    if settings.otlp_endpoint is not None:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        endpoint = settings.otlp_endpoint.rstrip("/") + "/v1/traces"
        provider.add_span_processor(
            BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint, timeout=2))
        )
        description = f"OTLP/HTTP to {endpoint}, {rate}"
    elif console:
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter(out=sys.stderr)))
        description = f"printed to stderr (OTEL_TRACES_EXPORTER=console), {rate}"
    else:
        description = f"spans counted in process, {rate} (OTEL_EXPORTER_OTLP_ENDPOINT exports them)"
    tracer = provider.get_tracer("shared.demo")

    def trace(execute: Callable[..., Any]) -> Callable[..., Any]:
        async def traced(order: Any) -> Any:
            with tracer.start_as_current_span(
                "order.execute",
                attributes={
                    "order.key": order.key,
                    "order.user": order.user,
                    "order.symbol": order.symbol,
                },
            ):
                return await execute(order)

        return traced

    return Tracing(description, trace, provider, counter)


def install_shutdown(
    loop: asyncio.AbstractEventLoop, on_signal: Callable[[str], None]
) -> Callable[[], None]:
    """Calls ``on_signal(name)`` on SIGINT or SIGTERM (a second one too: the caller
    decides to force); returns a function that restores the previous handlers."""
    installed: list[signal.Signals] = []
    previous: dict[signal.Signals, Any] = {}
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, on_signal, sig.name)
            installed.append(sig)
        except (NotImplementedError, RuntimeError):  # Windows, or not the main thread
            with contextlib.suppress(ValueError):
                previous[sig] = signal.signal(
                    sig,
                    lambda signum, frame: loop.call_soon_threadsafe(
                        on_signal, signal.Signals(signum).name
                    ),
                )

    def uninstall() -> None:
        for sig in installed:
            loop.remove_signal_handler(sig)
        for sig, handler in previous.items():
            signal.signal(sig, handler)

    return uninstall

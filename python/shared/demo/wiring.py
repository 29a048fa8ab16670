"""The demo's plug points: each builds one piece from the library's own module.

- ``make_order_store``: ``@idempotent`` order placement on the SQLite store
  (embedded default: a file in ``--state-dir`` or a temporary directory,
  shared by the processes of one host), ``RedisIdempotencyStore`` with
  ``--redis`` or ``PostgresIdempotencyStore`` with ``--postgres``.
- ``make_user_limiters``: per-user limits (the Redis registry with ``--redis``,
  shared by every replica; else an in-process registry per process).
- ``start_health``: ``shared.health.HealthServer`` with the demo's ``HealthCheck``.
- ``start_metrics``: ``shared.observability.MetricsServer`` with the
  ``shared_*`` families, the store's outcome counts and the demo's collector.
- ``setup_tracing``: ``shared.observability.setup_tracing`` (OTLP, console or none).
- ``install_shutdown``: ``shared.lifecycle.GracefulShutdown`` (SIGINT, SIGTERM).
- ``check_options``: refuses what needs an extra that is not installed.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry
from prometheus_client.registry import Collector

from shared.config import ServiceSettings
from shared.demo.service import UserLimiters
from shared.demo.store import IdempotentOrders
from shared.health import HealthCheck, HealthServer
from shared.lifecycle import GracefulShutdown, ShutdownConfig
from shared.observability import (
    MetricsServer,
    TracingConfig,
    register_idempotency_store,
    register_resilience_metrics,
)
from shared.observability import setup_tracing as _setup_tracing
from shared.resilience import AsyncRedisRateLimiterRegistry, RateLimitConfig, RateLimiterRegistry
from shared.resilience.idempotency import (
    PostgresIdempotencyStore,
    RedisIdempotencyStore,
    SQLiteIdempotencyStore,
)

if TYPE_CHECKING:
    from shared.demo.app import DemoOptions

__all__ = [
    "POSTGRES_TABLE",
    "UnsupportedOptionError",
    "check_options",
    "create_postgres_table",
    "install_shutdown",
    "make_order_store",
    "make_user_limiters",
    "setup_tracing",
    "start_health",
    "start_metrics",
]

#: The PostgreSQL table of the demo's idempotency records (keys carry the run id).
POSTGRES_TABLE = "shared_demo_idempotency"


class UnsupportedOptionError(Exception):
    """An option needs an optional extra that is not installed (exit 2)."""


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a module blocked in sys.modules
        return False


def check_options(options: DemoOptions) -> None:
    """Refuses ``--redis`` / ``--postgres`` without the client library they need."""
    if options.redis_url is not None and not _installed("redis"):
        raise UnsupportedOptionError("--redis needs the redis extra: pip install 'shared[redis]'")
    if options.postgres_url is not None and not (
        _installed("psycopg") and _installed("psycopg_pool")
    ):
        raise UnsupportedOptionError(
            "--postgres needs the postgres extra: pip install 'shared[postgres]'"
        )


async def _redis_client(url: str) -> Any:
    import redis.asyncio

    client = redis.asyncio.from_url(url, socket_timeout=2.0, socket_connect_timeout=1.0)
    try:
        await asyncio.wait_for(client.ping(), 2.0)
    except Exception as exc:
        await client.aclose()
        raise ConnectionError(f"Redis at {url} does not answer: {exc}") from exc
    return client


def create_postgres_table(url: str) -> None:
    """Creates the demo's table (once, before replicas start: concurrent CREATEs race)."""
    store = PostgresIdempotencyStore(url, table=POSTGRES_TABLE, min_size=0, max_size=1, timeout=3)
    try:
        store.create_table()
    except Exception as exc:
        raise ConnectionError(f"PostgreSQL at {url} does not answer: {exc}") from exc
    finally:
        store.close()


async def make_order_store(options: DemoOptions, run_id: str) -> IdempotentOrders:
    """``@idempotent`` placement on PostgreSQL (``--postgres``, even with ``--redis``:
    Redis then holds the limiters), Redis, or (default) a SQLite file."""
    if options.postgres_url is not None:
        url = options.postgres_url
        if options.replica is None:  # the parent of replicas created it already
            await asyncio.to_thread(create_postgres_table, url)
        store: Any = PostgresIdempotencyStore(url, table=POSTGRES_TABLE, name="demo-orders")

        async def close_postgres() -> None:
            await asyncio.to_thread(store.close)

        return IdempotentOrders(
            store,
            f"PostgresIdempotencyStore at {url}, table {POSTGRES_TABLE} (shared by every replica)",
            close_postgres,
        )
    if options.redis_url is not None:
        client = await _redis_client(options.redis_url)
        store = RedisIdempotencyStore(
            async_client=client, key_prefix=f"shared-demo:{run_id}:idem:", name="demo-orders"
        )
        return IdempotentOrders(
            store,
            f"RedisIdempotencyStore at {options.redis_url} (shared by every replica)",
            client.aclose,
        )
    created = options.state_dir is None
    if options.state_dir is None:
        directory = Path(tempfile.mkdtemp(prefix="shared-demo-"))
    else:
        directory = Path(options.state_dir)
        await asyncio.to_thread(directory.mkdir, parents=True, exist_ok=True)
    path = directory / "idempotency.sqlite3"
    store = SQLiteIdempotencyStore(path, name="demo-orders")

    async def close_sqlite() -> None:
        store.close()
        if created:
            shutil.rmtree(directory, ignore_errors=True)

    where = "a temporary file" if created else "--state-dir"
    return IdempotentOrders(
        store,
        f"SQLiteIdempotencyStore at {path} ({where}; shared by the processes of this host)",
        close_sqlite,
    )


class _InProcessLimiters:
    def __init__(self, config: RateLimitConfig, replicas: int) -> None:
        self.registry = RateLimiterRegistry(config)
        self.description = (
            f"in-process RateLimiterRegistry ({config.tokens_per_second:g}/s, "
            f"burst {config.burst_size:g} per user"
            + (
                f", in each of the {replicas} replicas: up to {replicas}x that in all; "
                "--redis shares one limit)"
                if replicas > 1
                else ")"
            )
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
    def __init__(
        self, config: RateLimitConfig, client: Any, url: str, run_id: str, owner: bool
    ) -> None:
        self.client = client
        self.owner = owner
        # One namespace per run, shared by its replicas: runs (and tests) never share buckets.
        self.registry = AsyncRedisRateLimiterRegistry(
            config, client, key_prefix=f"shared-demo:{run_id}:limits:", on_unavailable="local"
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
        if self.owner:  # a replica leaves the shared buckets to expire
            with contextlib.suppress(Exception):
                await self.registry.reset_all()
        await self.client.aclose()


async def make_user_limiters(
    options: DemoOptions, config: RateLimitConfig, run_id: str
) -> UserLimiters:
    """Per-user limiters: on Redis with ``--redis`` (checked to answer), else in-process."""
    if options.redis_url is None:
        replicas = 1 if options.replica is None else options.replica[1]
        return _InProcessLimiters(config, replicas)
    client = await _redis_client(options.redis_url)
    return _RedisLimiters(config, client, options.redis_url, run_id, options.replica is None)


async def start_health(settings: ServiceSettings, health: HealthCheck, host: str) -> HealthServer:
    """``HealthServer`` on ``settings.health_check_port`` (``/health``, ``/health/live``,
    ``/health/ready``: 503 during a graceful shutdown, ``/health/startup``)."""
    server = HealthServer(health, port=settings.health_check_port, host=host)
    await server.start()
    return server


async def start_metrics(
    settings: ServiceSettings, collector: Collector, orders: IdempotentOrders, host: str
) -> MetricsServer:
    """``MetricsServer`` on ``settings.metrics_port``, serving a registry of its own:
    the library's ``shared_*`` families (the idempotency store's outcomes among
    them) and the demo's collector."""
    registry = CollectorRegistry(auto_describe=False)
    register_resilience_metrics(registry)
    register_idempotency_store(orders.store)
    registry.register(collector)
    server = MetricsServer(host, settings.metrics_port, registry=registry)
    await server.start()
    return server


def setup_tracing(settings: ServiceSettings, *, console: bool = False) -> str:
    """``shared.observability.setup_tracing``: OTLP/HTTP when an endpoint is set, JSON
    on stdout with ``console`` (``OTEL_TRACES_EXPORTER=console``), else spans
    created and never exported; sampled at ``TRACE_SAMPLE_RATE``. Returns what
    the summary says about it."""
    rate = f"sampling {settings.trace_sample_rate:g}"
    if settings.otlp_endpoint is not None:
        exporter = "otlp"
        description = f"OTLP/HTTP to {settings.otlp_endpoint.rstrip('/')}/v1/traces, {rate}"
    elif console:
        exporter = "console"
        description = f"printed to stdout (OTEL_TRACES_EXPORTER=console), {rate}"
    else:
        exporter = "none"
        description = f"spans counted, not exported, {rate} (OTEL_EXPORTER_OTLP_ENDPOINT exports)"
    _setup_tracing(
        TracingConfig(
            service_name=settings.service_name,
            exporter_type=exporter,
            otlp_endpoint=settings.otlp_endpoint,
            environment=settings.environment,
            sample_rate=settings.trace_sample_rate,
        )
    )
    return description


def install_shutdown(settings: ServiceSettings) -> GracefulShutdown:
    """SIGINT/SIGTERM start the graceful shutdown (readiness 503, ``drain_delay``,
    open critical sections, handlers, all within ``shutdown_timeout``); a second
    signal exits at once. The caller runs it with ``await shutdown.wait()``."""
    return GracefulShutdown(
        ShutdownConfig(
            timeout=settings.shutdown_timeout,
            drain_delay=settings.drain_delay,
            exit_process=False,
        )
    )

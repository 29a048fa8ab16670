"""Scrape cost: 100 breakers, 100 limiters (one a registry of 100,000 keys) and 100 retries.

The collector reads each instance's counters at scrape time; a registry is one
series whatever its number of keys (the keys are never read). The duration of
``generate_latest`` over the collector alone, and of a whole HTTP scrape through
``MetricsServer`` (plain and gzipped), with the exposition's size in
``extra_info``. The per-call overhead of the collector on the hot paths is the
``metrics_overhead`` group of ``subjects.py`` (judged by the gate).
"""

from __future__ import annotations

import contextlib
import gzip
import urllib.request
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from shared.observability import MetricsServer, register_resilience_metrics
from shared.resilience import (
    CircuitBreaker,
    CircuitBreakerConfig,
    RateLimitConfig,
    RateLimiterRegistry,
    Retry,
    RetryConfig,
    TokenBucket,
)
from shared.resilience.retry import instant_retries

INSTANCES = 100
REGISTRY_KEYS = 100_000


def _fail() -> None:
    raise ConnectionError("down")


@pytest.fixture(scope="module")
def population() -> list[Any]:
    """100 breakers (a third open), 99 buckets and a 100,000-key registry, 100 retries."""
    keep: list[Any] = []
    for index in range(INSTANCES):
        breaker = CircuitBreaker(
            f"breaker-{index}", CircuitBreakerConfig(failure_threshold=1), registry=None
        )
        breaker.call(lambda: None)
        if index % 3 == 0:
            with contextlib.suppress(ConnectionError):
                breaker.call(_fail)
        keep.append(breaker)
    for index in range(INSTANCES - 1):
        bucket = TokenBucket(RateLimitConfig(100), name=f"bucket-{index}")
        bucket.try_acquire()
        keep.append(bucket)
    users = RateLimiterRegistry(RateLimitConfig(10), max_keys=REGISTRY_KEYS, name="users")
    for index in range(REGISTRY_KEYS):
        users.get_limiter(f"user-{index}").try_acquire()
    assert len(users) == REGISTRY_KEYS
    keep.append(users)
    with instant_retries():
        for index in range(INSTANCES):
            retry = Retry(f"retry-{index}", RetryConfig(max_attempts=2))
            retry.execute(lambda: 1)
            keep.append(retry)
    return keep


@pytest.fixture(scope="module")
def registry(population: list[Any]) -> CollectorRegistry:
    registry = CollectorRegistry()
    register_resilience_metrics(registry)
    return registry


def _check(text: str) -> int:
    """The number of series; each name appears, no key is a label value."""
    series = sum(len(f.samples) for f in text_string_to_metric_families(text))
    assert 'breaker="breaker-99"' in text
    assert 'limiter="users"' in text
    assert 'retry="retry-99"' in text
    assert "user-1" not in text
    return series


def test_scrape_collector_300_instances(benchmark: Any, registry: CollectorRegistry) -> None:
    """generate_latest over the collector: 300 instances, one a registry of 100,000 keys."""
    benchmark.group = "metrics: scrape"
    body = benchmark(generate_latest, registry)
    text = body.decode()
    benchmark.extra_info["bytes"] = len(body)
    benchmark.extra_info["gzip_bytes"] = len(gzip.compress(body, 6))
    benchmark.extra_info["series"] = _check(text)


@pytest.mark.parametrize("encoding", ["identity", "gzip"])
def test_scrape_http_300_instances(
    benchmark: Any, registry: CollectorRegistry, encoding: str
) -> None:
    """A whole scrape over HTTP through MetricsServer (loopback), as Prometheus makes it."""
    benchmark.group = "metrics: scrape"
    server = MetricsServer("127.0.0.1", 0, registry=registry).start_in_background()
    request = urllib.request.Request(server.url, headers={"Accept-Encoding": encoding})

    def scrape() -> bytes:
        with urllib.request.urlopen(request, timeout=30) as response:
            return bytes(response.read())

    try:
        body = benchmark(scrape)
    finally:
        server.stop()
    benchmark.extra_info["bytes_on_the_wire"] = len(body)
    text = (gzip.decompress(body) if encoding == "gzip" else body).decode()
    benchmark.extra_info["series"] = _check(text)

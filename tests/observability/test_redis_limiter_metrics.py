"""Redis-backed limiters in the metrics: decisions counted in-process, one series per registry."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator

import pytest
import redis
import redis.asyncio
import redis.backoff
import redis.retry
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from conftest import require_service
from shared.observability import register_resilience_metrics, unregister_resilience_metrics
from shared.resilience import (
    AsyncRedisRateLimiterRegistry,
    AsyncRedisTokenBucket,
    RateLimitConfig,
    RateLimitExceeded,
    RedisRateLimiterRegistry,
    RedisTokenBucket,
)

pytestmark = [pytest.mark.redis, pytest.mark.backend_independent]

PORT = 6379
CONFIG = RateLimitConfig(tokens_per_second=1e-6, burst_size=2)


@pytest.fixture
def prefix() -> str:
    return f"test:shared:metrics:{uuid.uuid4().hex}:"


@pytest.fixture
def client(prefix: str) -> Iterator[redis.Redis]:
    require_service("Redis", PORT)
    client = redis.Redis(host="127.0.0.1", port=PORT)
    yield client
    keys = list(client.scan_iter(match=prefix + "*", count=1000))
    if keys:
        client.delete(*keys)
    client.close()


@pytest.fixture
async def aclient(prefix: str) -> AsyncIterator[redis.asyncio.Redis]:
    require_service("Redis", PORT)
    client = redis.asyncio.Redis(host="127.0.0.1", port=PORT)
    yield client
    keys = [key async for key in client.scan_iter(match=prefix + "*", count=1000)]
    if keys:
        await client.delete(*keys)
    await client.aclose()


def decisions(limiter: str) -> dict[str, float]:
    registry = CollectorRegistry()
    register_resilience_metrics(registry)
    try:
        text = generate_latest(registry).decode()
    finally:
        unregister_resilience_metrics(registry)
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.labels.get("limiter") == limiter:
                key = sample.labels.get("decision", sample.name)
                found[key] = sample.value
    return found


def test_sync_bucket_and_registry(client: redis.Redis, prefix: str) -> None:
    """try_acquire and acquire decisions by Redis; a registry's keys are one series."""
    bucket = RedisTokenBucket(CONFIG, client, "k", key_prefix=prefix, name="redis-orders")
    assert [bucket.try_acquire() for _ in range(3)] == [True, True, False]
    with pytest.raises(RateLimitExceeded):
        bucket.acquire(timeout=0.01)
    assert bucket.counters() == {"granted": 2, "rejected": 2, "waited_ns": 0}
    users = RedisRateLimiterRegistry(CONFIG, client, key_prefix=prefix, name="redis-users")
    for index in range(10):
        users.get_limiter(f"user-{index}").try_acquire()
        users.get_limiter(f"user-{index}").acquire(timeout=1.0)
    assert decisions("redis-users") == {
        "granted": 20.0,
        "rejected": 0.0,
        "shared_rate_limiter_wait_seconds_total": 0.0,
    }
    assert decisions("redis-orders")["rejected"] == 2.0
    del bucket, users


def test_a_granted_wait_is_counted(client: redis.Redis, prefix: str) -> None:
    """acquire's wait handed out by Redis adds to waited_ns."""
    config = RateLimitConfig(tokens_per_second=20, burst_size=1)
    bucket = RedisTokenBucket(config, client, "w", key_prefix=prefix)
    bucket.acquire()
    bucket.acquire(timeout=1.0)  # about 50 ms
    counters = bucket.counters()
    assert counters["granted"] == 2
    assert 0.03e9 < counters["waited_ns"] <= 0.05e9


def test_fail_open_grants_are_counted(prefix: str) -> None:
    """With Redis unreachable, fail_open's grants count as granted."""
    client = redis.Redis(
        host="127.0.0.1",
        port=1,
        socket_connect_timeout=0.2,
        retry=redis.retry.Retry(redis.backoff.NoBackoff(), 0),
    )
    bucket = RedisTokenBucket(CONFIG, client, "k", key_prefix=prefix, on_unavailable="fail_open")
    assert bucket.try_acquire()
    bucket.acquire()
    assert bucket.counters() == {"granted": 2, "rejected": 0, "waited_ns": 0}
    client.close()


async def test_async_bucket_and_registry(aclient: redis.asyncio.Redis, prefix: str) -> None:
    """The asyncio limiters count the same decisions."""
    bucket = AsyncRedisTokenBucket(CONFIG, aclient, "k", key_prefix=prefix, name="redis-async")
    assert [await bucket.try_acquire() for _ in range(3)] == [True, True, False]
    with pytest.raises(RateLimitExceeded):
        await bucket.acquire(timeout=0.01)
    assert bucket.counters() == {"granted": 2, "rejected": 2, "waited_ns": 0}
    users = AsyncRedisRateLimiterRegistry(CONFIG, aclient, key_prefix=prefix, name="redis-ausers")
    for index in range(5):
        await users.get_limiter(f"user-{index}").acquire()
    assert users.counters() == {"granted": 5, "rejected": 0, "waited_ns": 0}
    assert decisions("redis-ausers")["granted"] == 5.0


def test_names_are_checked(client: redis.Redis, prefix: str) -> None:
    """name= is a non-empty str or None, checked at construction."""
    assert RedisTokenBucket(CONFIG, client, "k", key_prefix=prefix).name == "redis_token_bucket"
    assert (
        RedisRateLimiterRegistry(CONFIG, client, key_prefix=prefix).name
        == "redis_rate_limiter_registry"
    )
    with pytest.raises(TypeError, match="name"):
        RedisTokenBucket(CONFIG, client, "k", key_prefix=prefix, name=1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="name"):
        RedisRateLimiterRegistry(CONFIG, client, key_prefix=prefix, name="")

"""The Redis-backed limiter against the machine's Redis (127.0.0.1:6379).

An acquire is one round trip (one EVALSHA). Its floor is a no-op Lua script
over the same client in the same run (``noop_script``): the gate holds the
acquire within 1.8x of it in paired rounds (``test_redis_*_paired``), which a
second round trip could not meet. A plain
``PING`` is reported beside it, and ``limits`` (moving window, also a Lua
script) is the peer. The asyncio group runs 8 concurrent tasks, each doing a
batch of calls on one shared client, and reports calls per second in
``extra_info``.
"""

from __future__ import annotations

import asyncio
import os
import socket
import uuid
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest
import redis
import redis.asyncio

from _paired import run_paired
from shared.resilience import AsyncRedisTokenBucket, RateLimitConfig, RedisTokenBucket

HOST, PORT = "127.0.0.1", 6379
PREFIX = f"bench:shared:ratelimit:{uuid.uuid4().hex}:"
# Never denies, so every call takes the path that writes the new state.
ALWAYS_ALLOWED = RateLimitConfig(tokens_per_second=1e9, burst_size=1e9)
TASKS, CALLS_PER_TASK = 8, 25
NOOP_SCRIPT = "return 1"


def _redis_is_up() -> bool:
    try:
        with socket.create_connection((HOST, PORT), timeout=1.0):
            return True
    except OSError:
        return False


# Outside CI a developer without Redis may skip these; in CI (CI=true) .ci/run starts
# Redis, and a Redis that is still down fails the benchmarks (and so the gate).
_IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
pytestmark = pytest.mark.skipif(
    not _IN_CI and not _redis_is_up(),
    reason=f"Redis is not up at {HOST}:{PORT} (start it to run the Redis benchmarks)",
)


@pytest.fixture(scope="module")
def client() -> Iterator[redis.Redis]:
    client = redis.Redis(host=HOST, port=PORT)
    yield client
    keys = list(client.scan_iter(match=PREFIX + "*"))
    if keys:
        client.delete(*keys)
    client.close()


@pytest.mark.benchmark(group="redis round trip")
def test_redis_round_trip_ping(benchmark: Any, client: redis.Redis) -> None:
    assert benchmark(client.ping)


@pytest.mark.benchmark(group="redis round trip")
def test_redis_round_trip_noop_script(benchmark: Any, client: redis.Redis) -> None:
    noop = client.register_script(NOOP_SCRIPT)
    assert benchmark(noop) == 1


@pytest.mark.benchmark(group="redis round trip")
def test_redis_round_trip_shared(benchmark: Any, client: redis.Redis) -> None:
    limiter = RedisTokenBucket(ALWAYS_ALLOWED, client, "one", key_prefix=PREFIX)
    assert benchmark(limiter.try_acquire)


@pytest.mark.benchmark(group="redis round trip")
def test_redis_round_trip_limits(benchmark: Any) -> None:
    from limits import RateLimitItemPerSecond
    from limits.storage import RedisStorage
    from limits.strategies import MovingWindowRateLimiter

    limiter = MovingWindowRateLimiter(RedisStorage(f"redis://{HOST}:{PORT}"))
    item = RateLimitItemPerSecond(10**9)
    try:
        assert benchmark(limiter.hit, item, PREFIX + "limits")
    finally:
        limiter.clear(item, PREFIX + "limits")


def _tasks_benchmark(
    benchmark: Any, make_call: Callable[[redis.asyncio.Redis], Callable[[], Awaitable[Any]]]
) -> None:
    """Times TASKS concurrent tasks x CALLS_PER_TASK calls on one asyncio client."""
    loop = asyncio.new_event_loop()
    client = redis.asyncio.Redis(host=HOST, port=PORT)
    call = make_call(client)

    async def task() -> None:
        for _ in range(CALLS_PER_TASK):
            assert await call()

    async def batch() -> None:
        await asyncio.gather(*(task() for _ in range(TASKS)))

    try:
        benchmark.pedantic(lambda: loop.run_until_complete(batch()), rounds=25, warmup_rounds=2)
        calls = TASKS * CALLS_PER_TASK
        benchmark.extra_info["calls_per_round"] = calls
        benchmark.extra_info["calls_per_second"] = round(calls / benchmark.stats.stats.median)
    finally:
        loop.run_until_complete(client.aclose())
        loop.close()


@pytest.mark.benchmark(group="redis 8 asyncio tasks")
def test_redis_8_tasks_ping(benchmark: Any) -> None:
    _tasks_benchmark(benchmark, lambda client: client.ping)


@pytest.mark.benchmark(group="redis 8 asyncio tasks")
def test_redis_8_tasks_noop_script(benchmark: Any) -> None:
    _tasks_benchmark(benchmark, lambda client: client.register_script(NOOP_SCRIPT))


@pytest.mark.benchmark(group="redis 8 asyncio tasks")
def test_redis_8_tasks_shared(benchmark: Any, client: redis.Redis) -> None:
    def make_call(aclient: redis.asyncio.Redis) -> Callable[[], Awaitable[bool]]:
        limiter = AsyncRedisTokenBucket(ALWAYS_ALLOWED, aclient, "tasks", key_prefix=PREFIX)
        return limiter.try_acquire

    _tasks_benchmark(benchmark, make_call)


# -- paired rounds: what the gate judges (benches/_paired.py) ----------------------------

PAIRED_CALLS = 20


def _sync_calls(call: Callable[[], Any]) -> Callable[[int], None]:
    def run(n: int) -> None:
        for _ in range(n):
            assert call()

    return run


@pytest.mark.benchmark(group="redis round trip (paired rounds)")
def test_redis_round_trip_paired(benchmark: Any, client: redis.Redis) -> None:
    limiter = RedisTokenBucket(ALWAYS_ALLOWED, client, "paired", key_prefix=PREFIX)
    members = {
        "shared": _sync_calls(limiter.try_acquire),
        "noop_script": _sync_calls(client.register_script(NOOP_SCRIPT)),
        "ping": _sync_calls(client.ping),
    }
    run_paired(benchmark, members, ops=PAIRED_CALLS)


@pytest.mark.benchmark(group="redis 8 asyncio tasks (paired rounds)")
def test_redis_8_tasks_paired(benchmark: Any) -> None:
    loop = asyncio.new_event_loop()
    aclient = redis.asyncio.Redis(host=HOST, port=PORT)
    limiter = AsyncRedisTokenBucket(ALWAYS_ALLOWED, aclient, "paired-tasks", key_prefix=PREFIX)

    def batches(call: Callable[[], Awaitable[Any]]) -> Callable[[int], None]:
        async def task() -> None:
            for _ in range(CALLS_PER_TASK):
                assert await call()

        async def batch() -> None:
            await asyncio.gather(*(task() for _ in range(TASKS)))

        def run(n: int) -> None:
            for _ in range(n):
                loop.run_until_complete(batch())

        return run

    members = {
        "shared": batches(limiter.try_acquire),
        "noop_script": batches(aclient.register_script(NOOP_SCRIPT)),
        "ping": batches(aclient.ping),
    }
    try:
        run_paired(benchmark, members, ops=1, rounds=15)
    finally:
        loop.run_until_complete(aclient.aclose())
        loop.close()

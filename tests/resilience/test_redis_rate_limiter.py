"""Redis-backed token bucket and registry against the machine's real Redis (127.0.0.1:6379).

Redis ``TIME`` is the clock and cannot be faked, so timings are asserted with
tolerances, on short rates, with bounded waits. Every test uses its own key
prefix and deletes its keys afterwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import multiprocessing
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import redis
import redis.asyncio

from conftest import require_service
from shared.resilience import (
    AsyncRedisRateLimiterRegistry,
    AsyncRedisTokenBucket,
    RateLimitConfig,
    RateLimiterUnavailableError,
    RateLimitExceeded,
    RedisRateLimiterRegistry,
    RedisTokenBucket,
)

PORT = 6379

# Redis I/O only: the in-process TokenBucket of the ``local`` policy (the one
# part that depends on the backend) is tested in test_redis_rate_limiter_server.py.
pytestmark = pytest.mark.backend_independent


@pytest.fixture
def prefix() -> str:
    """A key prefix no other test (or other run on this machine) uses."""
    return f"test:shared:ratelimit:{uuid.uuid4().hex}:"


def _delete_under(client: redis.Redis, prefix: str) -> None:
    keys = list(client.scan_iter(match=prefix + "*", count=1000))
    if keys:
        client.delete(*keys)


@pytest.fixture
def client(prefix: str) -> Iterator[redis.Redis]:
    """A sync client of the shared server; the test's keys are deleted afterwards."""
    require_service("Redis", PORT)
    client = redis.Redis(host="127.0.0.1", port=PORT)
    yield client
    _delete_under(client, prefix)
    client.close()


@pytest.fixture
async def aclient(prefix: str) -> AsyncIterator[redis.asyncio.Redis]:
    """An asyncio client of the shared server; the test's keys are deleted afterwards."""
    require_service("Redis", PORT)
    client = redis.asyncio.Redis(host="127.0.0.1", port=PORT)
    yield client
    keys = [key async for key in client.scan_iter(match=prefix + "*", count=1000)]
    if keys:
        await client.delete(*keys)
    await client.aclose()


def bucket(
    client: redis.Redis, prefix: str, rate: float, burst: float, **kwargs: Any
) -> RedisTokenBucket:
    initial = kwargs.pop("initial_tokens", None)
    config = RateLimitConfig(tokens_per_second=rate, burst_size=burst, initial_tokens=initial)
    return RedisTokenBucket(config, client, "bucket", key_prefix=prefix, **kwargs)


# --- the in-process bucket's semantics -------------------------------------------


def test_starts_full_grants_the_burst_then_denies(client: redis.Redis, prefix: str) -> None:
    """A new bucket holds burst_size tokens: exactly that many grants, then a denial."""
    limiter = bucket(client, prefix, rate=1.0, burst=5)
    assert limiter.available_tokens == 5.0
    assert [limiter.try_acquire() for _ in range(6)] == [True] * 5 + [False]
    assert limiter.available_tokens < 1.0


def test_initial_tokens(client: redis.Redis, prefix: str) -> None:
    """initial_tokens sets the content of a new bucket."""
    limiter = bucket(client, prefix, rate=1.0, burst=5, initial_tokens=2)
    assert 2.0 <= limiter.available_tokens < 2.2
    assert [limiter.try_acquire() for _ in range(3)] == [True, True, False]


def test_fractional_tokens(client: redis.Redis, prefix: str) -> None:
    """Fractions of tokens add up exactly: four halves empty a bucket of two."""
    limiter = bucket(client, prefix, rate=0.5, burst=2)
    assert [limiter.try_acquire(0.5) for _ in range(5)] == [True] * 4 + [False]


def test_no_rounding_loss_over_a_large_burst(client: redis.Redis, prefix: str) -> None:
    """A rate whose interval is no whole number of microseconds still grants the full burst."""
    limiter = bucket(client, prefix, rate=0.3, burst=300)
    assert sum(limiter.try_acquire() for _ in range(301)) == 300


def test_refills_continuously_up_to_the_burst(client: redis.Redis, prefix: str) -> None:
    """Tokens come back at tokens_per_second and never beyond burst_size."""
    limiter = bucket(client, prefix, rate=20.0, burst=2)
    assert limiter.try_acquire(2.0)
    time.sleep(0.05)  # about one token
    assert 0.8 <= limiter.available_tokens <= 2.0
    time.sleep(0.15)  # three more: capped
    assert limiter.available_tokens == 2.0
    assert [limiter.try_acquire() for _ in range(3)] == [True, True, False]


def test_retry_after(client: redis.Redis, prefix: str) -> None:
    """retry_after is 0 while tokens are there, then the time until they are."""
    limiter = bucket(client, prefix, rate=2.0, burst=1)
    assert limiter.retry_after() == 0.0
    assert limiter.try_acquire()
    assert 0.3 < limiter.retry_after() <= 0.5
    assert 0.05 < limiter.retry_after(0.5) <= 0.25
    assert limiter.retry_after() > limiter.retry_after(0.5)


def test_acquire_waits_for_the_tokens(client: redis.Redis, prefix: str) -> None:
    """acquire() blocks until the tokens are there (here about 50 ms)."""
    limiter = bucket(client, prefix, rate=20.0, burst=1)
    assert limiter.try_acquire()
    started = time.perf_counter()
    limiter.acquire(timeout=1.0)
    # waits 0.05 s; the upper bound leaves room for a loaded 2-core host
    assert 0.03 <= time.perf_counter() - started < 0.9
    assert not limiter.try_acquire()
    limiter.acquire(timeout=math.inf)  # no limit, like None


def test_acquire_raises_at_once_when_the_wait_exceeds_the_timeout(
    client: redis.Redis, prefix: str
) -> None:
    """A wait longer than timeout raises RateLimitExceeded(retry_after) without waiting
    and without taking anything."""
    limiter = bucket(client, prefix, rate=1.0, burst=1)
    assert limiter.try_acquire()
    started = time.perf_counter()
    with pytest.raises(RateLimitExceeded) as caught:
        limiter.acquire(timeout=0.1)
    # "at once": far below the 1 s a wait would take, with room for a loaded host
    assert time.perf_counter() - started < 0.7
    assert 0.7 < caught.value.retry_after <= 1.0
    assert 0.7 < limiter.retry_after() <= 1.0  # nothing was reserved
    with pytest.raises(RateLimitExceeded):
        limiter.acquire(timeout=0)


class Interrupted(BaseException):
    """Stands for KeyboardInterrupt arriving while acquire() sleeps."""


def test_interrupted_acquire_gives_the_tokens_back(client: redis.Redis, prefix: str) -> None:
    """An acquire interrupted during its wait refunds its reservation."""
    limiter = bucket(client, prefix, rate=2.0, burst=1)
    assert limiter.try_acquire()

    def interrupt(signum: int, frame: Any) -> None:
        raise Interrupted

    previous = signal.signal(signal.SIGUSR1, interrupt)
    timer = threading.Timer(0.1, os.kill, (os.getpid(), signal.SIGUSR1))
    try:
        timer.start()
        with pytest.raises(Interrupted):
            limiter.acquire()  # reserves the token due in 0.5 s, then sleeps
    finally:
        timer.cancel()
        signal.signal(signal.SIGUSR1, previous)
    assert limiter.retry_after() <= 0.4  # not 0.9: the reservation was returned


def test_threads_share_the_limit(client: redis.Redis, prefix: str) -> None:
    """4 threads on one bucket are granted at most burst + rate x elapsed together."""
    limiter = bucket(client, prefix, rate=20.0, burst=5)
    granted = [0] * 4

    def hammer(index: int) -> None:
        deadline = time.monotonic() + 0.5
        while time.monotonic() < deadline:
            granted[index] += limiter.try_acquire()

    started = time.monotonic()
    threads = [threading.Thread(target=hammer, args=(index,)) for index in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)
    elapsed = time.monotonic() - started
    assert 5 + 20 * 0.5 * 0.8 <= sum(granted) <= 5 + 20 * elapsed


def test_reset_restores_the_initial_state(client: redis.Redis, prefix: str) -> None:
    """reset() deletes the shared state: the bucket is full again for everyone."""
    limiter = bucket(client, prefix, rate=1.0, burst=3)
    assert limiter.try_acquire(3.0)
    limiter.reset()
    assert client.exists(limiter.redis_key) == 0
    assert limiter.available_tokens == 3.0


def test_handles_and_clients_share_one_bucket(client: redis.Redis, prefix: str) -> None:
    """Two clients (two replicas) on one key draw from one bucket."""
    other = redis.Redis(host="127.0.0.1", port=PORT)
    try:
        first = bucket(client, prefix, rate=1.0, burst=4)
        second = bucket(other, prefix, rate=1.0, burst=4)
        grants = [limiter.try_acquire() for _ in range(3) for limiter in (first, second)]
        assert grants.count(True) == 4
    finally:
        other.close()


def test_works_with_decoded_responses(prefix: str) -> None:
    """A client created with decode_responses=True (str replies) works the same."""
    require_service("Redis", PORT)
    with redis.Redis(host="127.0.0.1", port=PORT, decode_responses=True) as decoded:
        limiter = bucket(decoded, prefix, rate=1.0, burst=2)
        assert [limiter.try_acquire() for _ in range(3)] == [True, True, False]
        assert 0.9 < limiter.retry_after() <= 1.0
        limiter.reset()


def test_importing_shared_does_not_need_redis() -> None:
    """redis is optional: shared.resilience imports without loading it."""
    code = "import sys, shared.resilience; assert 'redis' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


# --- keys in Redis ----------------------------------------------------------------


def test_key_expires_when_the_bucket_would_be_full_again(client: redis.Redis, prefix: str) -> None:
    """The key's expiry is the moment the bucket refills; then the key is gone."""
    limiter = bucket(client, prefix, rate=10.0, burst=5)
    assert limiter.redis_key == prefix + "gcra:bucket"
    assert client.exists(limiter.redis_key) == 0  # a full bucket needs no key
    assert limiter.try_acquire(2.0)  # 0.2 s until full
    assert 100 < client.pttl(limiter.redis_key) <= 200
    time.sleep(0.25)
    assert client.exists(limiter.redis_key) == 0
    assert limiter.available_tokens == 5.0


def test_reads_write_nothing(client: redis.Redis, prefix: str) -> None:
    """available_tokens, retry_after and a denied try_acquire create no key."""
    limiter = bucket(client, prefix, rate=1.0, burst=1, initial_tokens=0)
    assert limiter.available_tokens < 0.1
    assert limiter.retry_after() > 0.9
    assert not limiter.try_acquire()
    assert client.exists(limiter.redis_key) == 0


# --- bad input ----------------------------------------------------------------------


@pytest.mark.parametrize("tokens", [0, -1.0, math.nan, math.inf, 5.5])
def test_bad_tokens_name_the_field(client: redis.Redis, prefix: str, tokens: float) -> None:
    """tokens <= 0, NaN, inf or above burst_size is a ValueError naming tokens."""
    limiter = bucket(client, prefix, rate=1.0, burst=5)
    for method in (limiter.try_acquire, limiter.acquire, limiter.retry_after):
        with pytest.raises(ValueError, match="tokens"):
            method(tokens)


@pytest.mark.parametrize("tokens", ["1", True, None])
def test_non_numeric_tokens_name_the_field(client: redis.Redis, prefix: str, tokens: Any) -> None:
    """A token count that is not a number is a TypeError naming tokens."""
    with pytest.raises(TypeError, match="tokens"):
        bucket(client, prefix, rate=1.0, burst=5).try_acquire(tokens)


@pytest.mark.parametrize("timeout", [-0.1, math.nan])
def test_bad_timeout_names_the_field(client: redis.Redis, prefix: str, timeout: float) -> None:
    """A negative or NaN timeout is a ValueError naming timeout."""
    with pytest.raises(ValueError, match="timeout"):
        bucket(client, prefix, rate=1.0, burst=5).acquire(timeout=timeout)


@pytest.mark.parametrize(
    ("kwargs", "error", "field"),
    [
        ({"on_unavailable": "ignore"}, ValueError, "on_unavailable"),
        ({"reconnect_interval": -1.0}, ValueError, "reconnect_interval"),
        ({"reconnect_interval": math.nan}, ValueError, "reconnect_interval"),
        ({"key_prefix": 3}, TypeError, "key_prefix"),
    ],
)
def test_bad_options_name_the_field(
    client: redis.Redis, prefix: str, kwargs: dict[str, Any], error: type[Exception], field: str
) -> None:
    """Bad constructor options raise at construction, naming the option."""
    with pytest.raises(error, match=field):
        bucket(client, prefix, rate=1.0, burst=5, **kwargs)


def test_bad_arguments_name_the_field(client: redis.Redis) -> None:
    """A wrong config, key or kind of client raises, naming the argument."""
    config = RateLimitConfig(tokens_per_second=1.0)
    with pytest.raises(TypeError, match="config"):
        RedisTokenBucket({"tokens_per_second": 1.0}, client, "k")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="key"):
        RedisTokenBucket(config, client, "")
    with pytest.raises(TypeError, match="client"):
        RedisTokenBucket(config, object(), "k")
    with pytest.raises(TypeError, match=r"client.*AsyncRedisTokenBucket"):
        RedisTokenBucket(config, redis.asyncio.Redis(), "k")
    with pytest.raises(TypeError, match=r"client.*RedisTokenBucket"):
        AsyncRedisTokenBucket(config, client, "k")
    with pytest.raises(ValueError, match="tokens_per_second"):
        RateLimitConfig(tokens_per_second=0)


# --- asyncio ----------------------------------------------------------------------


async def test_async_bucket_has_the_same_semantics(
    aclient: redis.asyncio.Redis, prefix: str
) -> None:
    """The asyncio bucket grants the burst, denies, reports and resets like the sync one."""
    config = RateLimitConfig(tokens_per_second=2.0, burst_size=3)
    limiter = AsyncRedisTokenBucket(config, aclient, "bucket", key_prefix=prefix)
    assert await limiter.available_tokens == 3.0
    assert [await limiter.try_acquire() for _ in range(4)] == [True, True, True, False]
    assert 0.3 < await limiter.retry_after() <= 0.5
    with pytest.raises(RateLimitExceeded) as caught:
        await limiter.acquire(timeout=0.05)
    assert 0.3 < caught.value.retry_after <= 0.5
    with pytest.raises(ValueError, match="tokens"):
        await limiter.try_acquire(4.0)
    await limiter.reset()
    assert await limiter.available_tokens == 3.0


async def test_async_acquire_waits(aclient: redis.asyncio.Redis, prefix: str) -> None:
    """acquire()/acquire_async() sleep until the tokens are there."""
    config = RateLimitConfig(tokens_per_second=20.0, burst_size=1)
    limiter = AsyncRedisTokenBucket(config, aclient, "bucket", key_prefix=prefix)
    assert await limiter.try_acquire()
    started = time.perf_counter()
    await limiter.acquire_async(timeout=1.0)
    # waits 0.05 s; the upper bound leaves room for a loaded 2-core host
    assert 0.03 <= time.perf_counter() - started < 0.9


async def test_async_waiters_are_served_in_order(aclient: redis.asyncio.Redis, prefix: str) -> None:
    """Concurrent waiters reserve their turn in one round trip each and finish FIFO."""
    config = RateLimitConfig(tokens_per_second=10.0, burst_size=1)
    limiter = AsyncRedisTokenBucket(config, aclient, "bucket", key_prefix=prefix)
    assert await limiter.try_acquire()
    finished: list[int] = []

    async def waiter(index: int) -> None:
        await limiter.acquire(timeout=2.0)
        finished.append(index)

    # One pooled connection per waiter, opened now: a waiter that had to connect first
    # could reach Redis after the next one on a loaded machine.
    await asyncio.gather(*(aclient.ping() for _ in range(3)))
    started = time.perf_counter()
    waiters = []
    for index in range(3):
        await asyncio.sleep(0.05)  # arrive in order, well inside the 0.1 s between turns
        waiters.append(asyncio.ensure_future(waiter(index)))
    await asyncio.wait_for(asyncio.gather(*waiters), timeout=2.0)
    assert finished == [0, 1, 2]
    assert 0.25 <= time.perf_counter() - started < 1.8  # room for a loaded host


async def test_cancelled_waiter_consumes_nothing(aclient: redis.asyncio.Redis, prefix: str) -> None:
    """Cancelling a waiting acquire gives its reserved tokens back."""
    config = RateLimitConfig(tokens_per_second=2.0, burst_size=1)
    limiter = AsyncRedisTokenBucket(config, aclient, "bucket", key_prefix=prefix)
    assert await limiter.try_acquire()
    waiter = asyncio.ensure_future(limiter.acquire())
    await asyncio.sleep(0.05)
    assert await limiter.retry_after() > 0.6  # the waiter's reservation is in Redis
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert await limiter.retry_after() <= 0.5


async def test_sync_bucket_acquire_async(client: redis.Redis, prefix: str) -> None:
    """The sync bucket's acquire_async waits without blocking the event loop."""
    limiter = bucket(client, prefix, rate=20.0, burst=1)
    assert limiter.try_acquire()
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        for _ in range(500):
            ticks += 1
            await asyncio.sleep(0.001)

    ticking = asyncio.ensure_future(ticker())
    started = time.perf_counter()
    await limiter.acquire_async(timeout=1.0)
    assert time.perf_counter() - started >= 0.03
    assert ticks >= 5  # the loop kept running while acquire_async waited
    ticking.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await ticking


# --- registries -------------------------------------------------------------------


def test_registry_gives_each_key_its_bucket(client: redis.Redis, prefix: str) -> None:
    """Keys are independent; set_limiter gives a key its own config; handles share state."""
    registry = RedisRateLimiterRegistry(
        RateLimitConfig(tokens_per_second=1.0, burst_size=2), client, key_prefix=prefix
    )
    assert [registry.get_limiter("user_1").try_acquire() for _ in range(3)] == [True, True, False]
    assert registry.get_limiter("user_2").try_acquire()
    premium = registry.set_limiter("premium", RateLimitConfig(tokens_per_second=1.0, burst_size=5))
    assert premium.config.burst_size == 5.0
    assert sum(registry.get_limiter("premium").try_acquire() for _ in range(6)) == 5
    assert registry.get_limiter("user_1").redis_key == prefix + "gcra:user_1"


def test_registry_remove_and_reset_all(client: redis.Redis, prefix: str) -> None:
    """remove_limiter forgets a key's config and state; reset_all resets every key."""
    registry = RedisRateLimiterRegistry(
        RateLimitConfig(tokens_per_second=1.0, burst_size=1), client, key_prefix=prefix
    )
    registry.set_limiter("vip", RateLimitConfig(tokens_per_second=1.0, burst_size=3))
    assert registry.get_limiter("vip").try_acquire(3.0)
    registry.remove_limiter("vip")
    assert registry.get_limiter("vip").config == registry.default_config
    assert registry.get_limiter("vip").available_tokens == 1.0
    for index in range(600):  # more than one SCAN/UNLINK batch
        assert registry.get_limiter(f"user_{index}").try_acquire()
    registry.reset_all()
    assert list(client.scan_iter(match=prefix + "*")) == []
    assert registry.get_limiter("user_7").try_acquire()


def test_reset_all_stays_inside_its_prefix(client: redis.Redis, prefix: str) -> None:
    """reset_all deletes only its own keys, even when the prefix holds glob characters."""
    config = RateLimitConfig(tokens_per_second=1.0, burst_size=1)
    mine = RedisRateLimiterRegistry(config, client, key_prefix=prefix + "[a]*:")
    neighbour = RedisRateLimiterRegistry(config, client, key_prefix=prefix + "a:")
    assert mine.get_limiter("k").try_acquire()
    assert neighbour.get_limiter("k").try_acquire()
    mine.reset_all()
    assert client.exists(mine.get_limiter("k").redis_key) == 0
    assert client.exists(neighbour.get_limiter("k").redis_key) == 1


@pytest.mark.parametrize("registry_class", [RedisRateLimiterRegistry, RedisTokenBucket])
def test_an_empty_key_prefix_is_refused(client: redis.Redis, registry_class: Any) -> None:
    """An empty prefix would put the limiter's keys at the top of the database."""
    config = RateLimitConfig(tokens_per_second=1.0, burst_size=1)
    args = (config, client) if registry_class is RedisRateLimiterRegistry else (config, client, "k")
    with pytest.raises(ValueError, match="key_prefix must not be empty"):
        registry_class(*args, key_prefix="")


def test_reset_all_deletes_only_keys_it_created(client: redis.Redis, prefix: str) -> None:
    """Another application's keys survive reset_all: beside the limiter's keys under
    the same prefix, and even inside its namespace when they hold other data."""
    registry = RedisRateLimiterRegistry(
        RateLimitConfig(tokens_per_second=1.0, burst_size=1), client, key_prefix=prefix
    )
    for index in range(3):
        assert registry.get_limiter(f"user_{index}").try_acquire()
    others = {
        prefix + "session:42": "another application's value",
        prefix + "user_0": "a key without the limiter's marker",
        registry.get_limiter("intruder").redis_key: "not a limiter state",
    }
    for key, value in others.items():
        client.set(key, value)
    client.hset(registry.get_limiter("hash").redis_key, "field", "value")
    registry.reset_all()
    assert all(client.get(key) == value.encode() for key, value in others.items())
    assert client.hget(registry.get_limiter("hash").redis_key, "field") == b"value"
    assert all(client.exists(registry.get_limiter(f"user_{i}").redis_key) == 0 for i in range(3))


async def test_async_reset_all_deletes_only_keys_it_created(
    aclient: redis.asyncio.Redis, prefix: str
) -> None:
    """The asyncio registry spares other applications' keys too."""
    registry = AsyncRedisRateLimiterRegistry(
        RateLimitConfig(tokens_per_second=1.0, burst_size=1), aclient, key_prefix=prefix
    )
    assert await registry.get_limiter("user").try_acquire()
    await aclient.set(prefix + "other", "kept")
    await aclient.set(registry.get_limiter("foreign").redis_key, "kept too")
    await registry.reset_all()
    assert await aclient.exists(registry.get_limiter("user").redis_key) == 0
    assert await aclient.get(prefix + "other") == b"kept"
    assert await aclient.get(registry.get_limiter("foreign").redis_key) == b"kept too"


FOREIGN_STATES = ["hello world", "1 2 inf", "1 2 nan", "1 2 -5", "1 2000000 3", "99999999999 0 1"]


@pytest.mark.parametrize("state", [*FOREIGN_STATES, "a hash"])
def test_a_foreign_state_is_never_trusted(client: redis.Redis, prefix: str, state: str) -> None:
    """State at the bucket's key that the limiter did not write gives a clear error
    naming the key, through the failure policy, and is left untouched."""
    config = RateLimitConfig(tokens_per_second=1.0, burst_size=2)
    closed = RedisTokenBucket(config, client, "k", key_prefix=prefix)
    if state == "a hash":
        client.hset(closed.redis_key, "field", "value")
    else:
        client.set(closed.redis_key, state)
    with pytest.raises(
        RateLimiterUnavailableError, match=r"not a rate-limiter state|future"
    ) as caught:
        closed.try_acquire()
    assert closed.redis_key in str(caught.value)
    with pytest.raises(RateLimiterUnavailableError, match=closed.redis_key):
        closed.acquire(timeout=0.1)
    opened = RedisTokenBucket(config, client, "k", key_prefix=prefix, on_unavailable="fail_open")
    assert opened.try_acquire() is True
    assert opened.available_tokens == 2.0
    closed.reset()  # deletes limiter states only
    RedisRateLimiterRegistry(config, client, key_prefix=prefix).remove_limiter("k")
    # Nothing was overwritten or deleted, and the server is still considered reachable.
    if state == "a hash":
        assert client.hget(closed.redis_key, "field") == b"value"
    else:
        assert client.get(closed.redis_key) == state.encode()
    client.delete(closed.redis_key)
    assert closed.try_acquire() is True


async def test_a_foreign_state_is_never_trusted_async(
    aclient: redis.asyncio.Redis, prefix: str
) -> None:
    """The asyncio bucket applies the policy to a foreign state and leaves it alone."""
    config = RateLimitConfig(tokens_per_second=1.0, burst_size=2)
    closed = AsyncRedisTokenBucket(config, aclient, "k", key_prefix=prefix)
    await aclient.set(closed.redis_key, "1 2 inf")
    with pytest.raises(RateLimiterUnavailableError, match=closed.redis_key):
        await closed.try_acquire()
    opened = AsyncRedisTokenBucket(
        config, aclient, "k", key_prefix=prefix, on_unavailable="fail_open"
    )
    assert await opened.try_acquire() is True
    assert await aclient.get(closed.redis_key) == b"1 2 inf"


async def test_async_registry(aclient: redis.asyncio.Redis, prefix: str) -> None:
    """The asyncio registry: the same keys, configs, removal and reset."""
    registry = AsyncRedisRateLimiterRegistry(
        RateLimitConfig(tokens_per_second=1.0, burst_size=2), aclient, key_prefix=prefix
    )
    assert [await registry.get_limiter("a").try_acquire() for _ in range(3)] == [True, True, False]
    registry.set_limiter("b", RateLimitConfig(tokens_per_second=1.0, burst_size=4))
    assert await registry.get_limiter("b").try_acquire(4.0)
    await registry.remove_limiter("b")
    assert await registry.get_limiter("b").available_tokens == 2.0
    await registry.reset_all()
    assert await registry.get_limiter("a").available_tokens == 2.0


# --- many processes ---------------------------------------------------------------

SHARED_RATE, SHARED_BURST, HAMMER_SECONDS = 20.0, 5.0, 1.0


def _hammer(prefix: str, ready: Any, go: Any, results: Any) -> None:
    """One replica: tries to acquire as fast as it can for HAMMER_SECONDS."""
    client = redis.Redis(host="127.0.0.1", port=PORT)
    config = RateLimitConfig(tokens_per_second=SHARED_RATE, burst_size=SHARED_BURST)
    limiter = RedisTokenBucket(config, client, "shared", key_prefix=prefix)
    ready.release()
    if not go.wait(timeout=60):
        results.put(-1)
        return
    granted, deadline = 0, time.monotonic() + HAMMER_SECONDS
    while time.monotonic() < deadline:
        granted += limiter.try_acquire()
    results.put(granted)
    client.close()


def test_four_processes_never_exceed_the_limit_together(client: redis.Redis, prefix: str) -> None:
    """4 processes on one key are granted at most burst + rate x elapsed in total."""
    context = multiprocessing.get_context("spawn")
    ready, go, results = context.Semaphore(0), context.Event(), context.Queue()
    workers = [context.Process(target=_hammer, args=(prefix, ready, go, results)) for _ in range(4)]
    for worker in workers:
        worker.start()
    try:
        for _ in workers:
            assert ready.acquire(timeout=60), "a worker did not start"
        seconds, micros = client.time()
        started = seconds + micros / 1e6
        go.set()
        granted = [results.get(timeout=30) for _ in workers]
        seconds, micros = client.time()
        elapsed = seconds + micros / 1e6 - started
    finally:
        for worker in workers:
            worker.join(timeout=10)
    assert min(granted) >= 0
    assert sum(granted) <= SHARED_BURST + SHARED_RATE * elapsed
    assert sum(granted) >= SHARED_BURST + SHARED_RATE * HAMMER_SECONDS * 0.8  # not starved

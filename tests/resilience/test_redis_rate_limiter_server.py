"""The Redis limiter against a private redis-server this file starts, stops and restarts.

A server of our own (free port, no persistence) lets us count the commands the
limiter sends (INFO commandstats sees only us) and take Redis away mid-run to
check each ``on_unavailable`` policy and the recovery; the shared server at
6379 is never touched.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import redis.asyncio
import redis.asyncio.retry
from redis.backoff import NoBackoff
from redis.retry import Retry

from conftest import IN_CI
from shared.resilience import (
    AsyncRedisRateLimiterRegistry,
    AsyncRedisTokenBucket,
    RateLimitConfig,
    RateLimiterUnavailableError,
    RateLimitExceeded,
    RedisRateLimiterRegistry,
    RedisTokenBucket,
)

BOUNDED_SECONDS = 10.0


# Only Redis I/O and the failure policy, the same on both backends; the
# ``local`` policy, which answers with the in-process TokenBucket, runs on both.
ONCE = pytest.mark.backend_independent
POLICIES = [
    pytest.param("fail_closed", marks=ONCE),
    pytest.param("fail_open", marks=ONCE),
    "local",
]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _until(condition: Callable[[], bool]) -> bool:
    """Polls ``condition`` for up to BOUNDED_SECONDS."""
    deadline = time.monotonic() + BOUNDED_SECONDS
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return False


class PrivateRedis:
    """A redis-server process of our own on a fixed free port."""

    def __init__(self, directory: Path) -> None:
        self.port = _free_port()
        self.directory = directory
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        binary = shutil.which("redis-server")
        assert binary is not None
        self.process = subprocess.Popen(
            [
                *(binary, "--port", str(self.port), "--bind", "127.0.0.1"),
                *("--save", "", "--appendonly", "no", "--dir", str(self.directory)),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        if not _until(self._answers):
            raise RuntimeError(f"redis-server did not start on port {self.port}")

    def _answers(self) -> bool:
        try:
            with redis.Redis(host="127.0.0.1", port=self.port, socket_connect_timeout=0.2) as probe:
                return bool(probe.ping())
        except redis.ConnectionError:
            return False

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=BOUNDED_SECONDS)
            self.process = None


@pytest.fixture
def server(tmp_path: Path) -> Iterator[PrivateRedis]:
    """A private Redis, running; stopped after the test."""
    if shutil.which("redis-server") is None:
        if IN_CI:
            pytest.fail("redis-server is not on PATH")
        pytest.skip("redis-server is not on PATH")
    private = PrivateRedis(tmp_path)
    private.start()
    yield private
    private.stop()


def _client(server: PrivateRedis) -> redis.Redis:
    # No client-side retries: the limiter's policy decides what an outage means.
    return redis.Redis(
        host="127.0.0.1",
        port=server.port,
        socket_timeout=0.5,
        socket_connect_timeout=0.5,
        retry=Retry(NoBackoff(), 0),
    )


def _async_client(server: PrivateRedis) -> redis.asyncio.Redis:
    return redis.asyncio.Redis(
        host="127.0.0.1",
        port=server.port,
        socket_timeout=0.5,
        socket_connect_timeout=0.5,
        retry=redis.asyncio.retry.Retry(NoBackoff(), 0),
    )


# What the script itself calls; INFO commandstats counts those too.
SCRIPT_COMMANDS = {"time", "get", "set", "del"}


def _assert_only_evalsha(admin: redis.Redis, expected: int) -> None:
    """Since CONFIG RESETSTAT the server ran ``expected`` EVALSHA and, besides our
    own probes, only the commands inside the script (one TIME per EVALSHA)."""
    calls = {
        name[len("cmdstat_") :]: int(stat["calls"])
        for name, stat in admin.info("commandstats").items()
        if not name.startswith(("cmdstat_config", "cmdstat_info"))
    }
    assert calls["evalsha"] == expected
    assert calls["time"] == expected
    assert set(calls) <= {"evalsha"} | SCRIPT_COMMANDS


class CountingConnection(redis.Connection):
    """A real connection that counts the requests it writes to the socket."""

    requests = 0

    def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        CountingConnection.requests += 1
        super().send_packed_command(command, check_health)


# --- one round trip ---------------------------------------------------------------


@ONCE
def test_one_round_trip_per_operation(server: PrivateRedis) -> None:
    """Every acquire, try_acquire and read is exactly one EVALSHA, nothing else."""
    pool = redis.ConnectionPool(
        host="127.0.0.1", port=server.port, connection_class=CountingConnection
    )
    client = redis.Redis(connection_pool=pool)
    config = RateLimitConfig(tokens_per_second=1000.0, burst_size=10)
    limiter = RedisTokenBucket(config, client, "k")
    assert limiter.try_acquire()  # loads the script (NOSCRIPT, SCRIPT LOAD) once
    client.config_resetstat()
    CountingConnection.requests = 0
    for _ in range(30):
        limiter.try_acquire()
    for _ in range(20):
        limiter.acquire(timeout=1.0)  # some of these wait: still one round trip
    assert limiter.available_tokens >= 0
    assert limiter.retry_after() >= 0
    assert CountingConnection.requests == 52
    _assert_only_evalsha(client, 52)
    client.close()


@ONCE
async def test_one_round_trip_per_async_operation(server: PrivateRedis) -> None:
    """The asyncio bucket also sends one EVALSHA per operation."""
    client = _async_client(server)
    config = RateLimitConfig(tokens_per_second=1000.0, burst_size=10)
    limiter = AsyncRedisTokenBucket(config, client, "k")
    assert await limiter.try_acquire()
    with redis.Redis(host="127.0.0.1", port=server.port) as admin:
        admin.config_resetstat()
        for _ in range(30):
            await limiter.try_acquire()
        for _ in range(20):
            await limiter.acquire(timeout=1.0)
        _assert_only_evalsha(admin, 50)
    await client.aclose()


@ONCE
def test_survives_a_script_flush(server: PrivateRedis) -> None:
    """After SCRIPT FLUSH (or a restart) the script is loaded again by itself."""
    client = _client(server)
    limiter = RedisTokenBucket(RateLimitConfig(tokens_per_second=1.0, burst_size=2), client, "k")
    assert limiter.try_acquire()
    client.script_flush()
    assert limiter.try_acquire()
    assert not limiter.try_acquire()
    client.close()


# --- outages ----------------------------------------------------------------------


def _served_by_redis(limiter: RedisTokenBucket, admin: redis.Redis) -> Callable[[], bool]:
    def check() -> bool:
        try:
            limiter.try_acquire()
        except RateLimiterUnavailableError:
            return False
        return bool(admin.exists(limiter.redis_key))

    return check


@pytest.mark.parametrize("policy", POLICIES)
def test_outage_applies_the_policy_and_recovers(server: PrivateRedis, policy: str) -> None:
    """With Redis stopped mid-run the policy decides; when Redis is back, so is the limit.

    The ``local`` case uses the in-process TokenBucket (the rate limiter branch).
    """
    client = _client(server)
    config = RateLimitConfig(tokens_per_second=0.5, burst_size=3)
    limiter = RedisTokenBucket(config, client, "k", on_unavailable=policy, reconnect_interval=0)
    assert [limiter.try_acquire() for _ in range(4)] == [True, True, True, False]

    server.stop()
    if policy == "fail_closed":
        operations = (
            limiter.try_acquire,
            limiter.acquire,
            limiter.retry_after,
            lambda: limiter.available_tokens,
        )
        for operation in operations:
            with pytest.raises(RateLimiterUnavailableError, match=server.url) as caught:
                operation()
            assert caught.value.server == server.url
            assert "ConnectionError" in caught.value.reason
    elif policy == "fail_open":
        assert all(limiter.try_acquire() for _ in range(10))
        limiter.acquire(timeout=0)
        assert limiter.available_tokens == 3.0
        assert limiter.retry_after() == 0.0
    else:  # a local bucket with the same config, starting full
        assert [limiter.try_acquire() for _ in range(4)] == [True, True, True, False]
        with pytest.raises(RateLimitExceeded):
            limiter.acquire(timeout=0.1)
        assert limiter.available_tokens < 1.0
        assert limiter.retry_after() > 1.0
    with pytest.raises(RateLimiterUnavailableError, match="ConnectionError"):
        limiter.reset()  # a reset that cannot reach Redis never passes silently

    server.start()  # same port, empty: the restarted server forgot the bucket
    with redis.Redis(host="127.0.0.1", port=server.port) as admin:
        assert _until(_served_by_redis(limiter, admin))
        limiter.reset()
        assert [limiter.try_acquire() for _ in range(4)] == [True, True, True, False]
    client.close()


@ONCE
def test_waits_reconnect_interval_before_trying_again(server: PrivateRedis) -> None:
    """After a failure Redis is not tried again before reconnect_interval has passed."""
    client = _client(server)
    config = RateLimitConfig(tokens_per_second=1.0, burst_size=5)
    limiter = RedisTokenBucket(config, client, "k", reconnect_interval=0.5)
    server.stop()
    failed_at = time.monotonic()
    with pytest.raises(RateLimiterUnavailableError, match="ConnectionError"):
        limiter.try_acquire()
    server.start()
    if time.monotonic() - failed_at < 0.4:
        with pytest.raises(RateLimiterUnavailableError, match="next attempt in"):
            limiter.try_acquire()
    time.sleep(max(0.0, failed_at + 0.55 - time.monotonic()))
    assert _until(lambda: _attempt(limiter))
    client.close()


def _attempt(limiter: RedisTokenBucket) -> bool:
    try:
        return limiter.try_acquire()
    except RateLimiterUnavailableError:
        return False


async def _async_served_by_redis(
    limiter: AsyncRedisTokenBucket, client: redis.asyncio.Redis
) -> bool:
    try:
        await limiter.try_acquire()
    except RateLimiterUnavailableError:
        return False
    return bool(await client.exists(limiter.redis_key))


@pytest.mark.parametrize("policy", POLICIES)
async def test_async_outage_applies_the_policy_and_recovers(
    server: PrivateRedis, policy: str
) -> None:
    """The asyncio bucket applies the same policies and recovers the same way.

    The ``local`` case uses the in-process TokenBucket (the rate limiter branch).
    """
    client = _async_client(server)
    config = RateLimitConfig(tokens_per_second=0.5, burst_size=2)
    limiter = AsyncRedisTokenBucket(
        config, client, "k", on_unavailable=policy, reconnect_interval=0
    )
    assert [await limiter.try_acquire() for _ in range(3)] == [True, True, False]

    server.stop()
    if policy == "fail_closed":
        with pytest.raises(RateLimiterUnavailableError, match=server.url):
            await limiter.try_acquire()
        with pytest.raises(RateLimiterUnavailableError, match=server.url):
            await limiter.acquire()
    elif policy == "fail_open":
        assert all([await limiter.try_acquire() for _ in range(5)])
        await limiter.acquire_async(timeout=0)
        assert await limiter.available_tokens == 2.0
    else:
        assert [await limiter.try_acquire() for _ in range(3)] == [True, True, False]
        with pytest.raises(RateLimitExceeded):
            await limiter.acquire(timeout=0.1)

    server.start()
    deadline = time.monotonic() + BOUNDED_SECONDS
    while not await _async_served_by_redis(limiter, client):
        assert time.monotonic() < deadline, "the limiter did not return to Redis"
    await limiter.reset()
    assert [await limiter.try_acquire() for _ in range(3)] == [True, True, False]
    await client.aclose()


@contextlib.contextmanager
def _paused(server: PrivateRedis) -> Iterator[None]:
    """The server frozen (SIGSTOP): connections stay open, nothing answers."""
    assert server.process is not None
    os.kill(server.process.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(server.process.pid, signal.SIGCONT)


async def _elapsed(work: Any) -> tuple[float, Any]:
    start = time.monotonic()
    try:
        result: Any = await work
    except BaseException as exc:  # the caller inspects it
        result = exc
    return time.monotonic() - start, result


async def test_async_calls_are_bounded_while_redis_does_not_answer(server: PrivateRedis) -> None:
    """With Redis paused, every call returns within its bound (command_timeout, or the
    call's shorter timeout), cancellation is immediate, the policy applies, and tokens
    granted by round trips that finish after the pause are given back."""
    client = redis.asyncio.Redis(host="127.0.0.1", port=server.port)  # no socket timeouts
    config = RateLimitConfig(tokens_per_second=0.01, burst_size=2)

    def limiter(policy: str, command_timeout: float) -> AsyncRedisTokenBucket:
        return AsyncRedisTokenBucket(
            config,
            client,
            "k",
            on_unavailable=policy,
            reconnect_interval=0,
            command_timeout=command_timeout,
        )

    closed, opened, local = (
        limiter("fail_closed", 0.3),
        limiter("fail_open", 0.3),
        limiter("local", 0.3),
    )
    patient = limiter("fail_closed", 60.0)
    assert await closed.available_tokens == 2.0  # connected, script loaded
    with _paused(server):
        took, result = await _elapsed(asyncio.wait_for(patient.acquire(timeout=30.0), 0.2))
        assert isinstance(result, asyncio.TimeoutError)
        assert took < 1.5, f"cancellation waited {took:.2f}s for Redis"
        took, result = await _elapsed(closed.try_acquire())
        assert isinstance(result, RateLimiterUnavailableError)
        assert "command_timeout=0.3" in str(result)
        assert took < 2.0
        took, result = await _elapsed(patient.acquire(timeout=0.2))
        assert isinstance(result, RateLimiterUnavailableError)
        assert took < 1.5
        took, result = await _elapsed(opened.try_acquire())
        assert result is True
        assert took < 2.0
        took, result = await _elapsed(local.try_acquire())
        assert result is True
        assert took < 2.0
        # Resets and removals always raise when Redis does not answer, within the bound.
        registry = AsyncRedisRateLimiterRegistry(config, client, command_timeout=0.3)
        for must_happen in (closed.reset(), registry.remove_limiter("k"), registry.reset_all()):
            took, result = await _elapsed(must_happen)
            assert isinstance(result, RateLimiterUnavailableError), result
            assert "command_timeout=0.3" in str(result)
            assert took < 2.0
    # The paused round trips complete now, in whatever order Redis serves their
    # connections; what they granted is given back. Wait until every one of them
    # (and every refund) has finished: a full bucket seen before the last late
    # grant has landed proves nothing.
    deadline = time.monotonic() + BOUNDED_SECONDS
    me = asyncio.current_task()
    while any(task is not me and not task.done() for task in asyncio.all_tasks()):
        assert time.monotonic() < deadline, "late round trips did not finish"
        await asyncio.sleep(0.05)
    assert await closed.available_tokens >= 1.99, "late grants were not given back"
    assert [await closed.try_acquire() for _ in range(3)] == [True, True, False]
    await client.aclose()


def test_registry_local_fallback_keeps_per_key_configs(server: PrivateRedis) -> None:
    """With the ``local`` policy a registry falls back to an in-process registry with the
    same default and per-key configs (needs the in-process RateLimiterRegistry)."""
    client = _client(server)
    registry = RedisRateLimiterRegistry(
        RateLimitConfig(tokens_per_second=0.5, burst_size=1),
        client,
        on_unavailable="local",
        reconnect_interval=0,
    )
    registry.set_limiter("vip", RateLimitConfig(tokens_per_second=0.5, burst_size=3))
    server.stop()
    assert [registry.get_limiter("vip").try_acquire() for _ in range(4)] == [True] * 3 + [False]
    assert [registry.get_limiter("user").try_acquire() for _ in range(2)] == [True, False]
    with pytest.raises(RateLimiterUnavailableError):
        registry.get_limiter("user").reset()  # raises, but resets the local bucket too
    assert registry.get_limiter("user").try_acquire()
    with pytest.raises(RateLimiterUnavailableError):
        registry.reset_all()
    assert registry.get_limiter("vip").try_acquire()
    server.start()
    with redis.Redis(host="127.0.0.1", port=server.port) as admin:
        assert _until(_served_by_redis(registry.get_limiter("user"), admin))
    client.close()


@ONCE
def test_unavailable_error_is_clear_and_logged_once(
    server: PrivateRedis, caplog: pytest.LogCaptureFixture
) -> None:
    """The fail_closed error names the server, the policy and the cause; an outage is
    logged once when it starts and once when it ends."""
    client = _client(server)
    limiter = RedisTokenBucket(
        RateLimitConfig(tokens_per_second=1.0), client, "k", reconnect_interval=0
    )
    server.stop()
    with caplog.at_level("WARNING", logger="shared.resilience.redis_rate_limiter"):
        for _ in range(3):
            with pytest.raises(RateLimiterUnavailableError) as caught:
                limiter.try_acquire()
        server.start()
        assert _until(lambda: _attempt(limiter))
    message = str(caught.value)
    assert server.url in message
    assert "fail_closed" in message
    assert isinstance(caught.value.__cause__, redis.ConnectionError)
    logged = [record.getMessage() for record in caplog.records]
    assert len(logged) == 2
    assert "unreachable" in logged[0]
    assert "reachable again" in logged[1]
    client.close()


def test_a_foreign_state_is_answered_by_the_local_bucket(server: PrivateRedis) -> None:
    """With ``local``, a key holding something the limiter did not write is
    answered by the in-process bucket (same config, starting full) and left alone."""
    client = _client(server)
    config = RateLimitConfig(tokens_per_second=1.0, burst_size=2)
    local = RedisTokenBucket(config, client, "k", on_unavailable="local")
    client.set(local.redis_key, "hello world")
    assert [local.try_acquire() for _ in range(3)] == [True, True, False]
    assert client.get(local.redis_key) == b"hello world"
    client.close()

"""RedisIdempotencyStore specifics: the asyncio client, round trips, foreign keys, outages.

The shared server at 127.0.0.1:6379 runs the store tests under a random key prefix;
the outage test starts a private redis-server of its own on a free port.
"""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import redis.asyncio
from durable_stores import IN_CI, require_service
from redis.backoff import NoBackoff
from redis.retry import Retry

from shared.resilience.exceptions import IdempotencyStoreError
from shared.resilience.idempotency.redis_store import RedisIdempotencyStore
from shared.resilience.idempotency.store import ClaimState

pytestmark = [pytest.mark.backend_independent, pytest.mark.redis]

PORT = 6379


@pytest.fixture
def prefix() -> Iterator[str]:
    require_service("redis", PORT)
    prefix = f"test:shared:idem:{uuid.uuid4().hex}:"
    yield prefix
    with redis.Redis(host="127.0.0.1", port=PORT) as client:
        keys = list(client.scan_iter(match=prefix + "*"))
        if keys:
            client.delete(*keys)


@pytest.fixture
def client(prefix: str) -> Iterator[redis.Redis]:
    with redis.Redis(host="127.0.0.1", port=PORT) as client:
        yield client


class Counting:
    """Counts the commands (= round trips) a client sends."""

    def __init__(self, client: Any) -> None:
        self.commands: list[str] = []
        inner = client.execute_command

        def execute_command(*args: Any, **options: Any) -> Any:
            self.commands.append(str(args[0]))
            return inner(*args, **options)

        client.execute_command = execute_command


def test_round_trips_per_call(client: redis.Redis, prefix: str) -> None:
    """A first execution is two round trips (claim, complete); a replay is one."""
    store = RedisIdempotencyStore(client, key_prefix=prefix)
    store.release(store.claim("warm", "", 30).token)  # load the scripts once
    store.complete(store.claim("warm", "", 30).token, 0, 60)
    counting = Counting(client)
    claim = store.claim("k", "fp", 30)
    assert store.complete(claim.token, {"ok": True}, 60)
    assert counting.commands == ["EVALSHA", "EVALSHA"]
    counting.commands.clear()
    assert store.claim("k", "fp", 30).result == {"ok": True}
    assert counting.commands == ["EVALSHA"]
    counting.commands.clear()
    assert store.get("k") == {"ok": True}
    assert store.exists("k")
    assert counting.commands == ["GET", "GETRANGE"]


def test_ttl_is_kept_by_redis(client: redis.Redis, prefix: str) -> None:
    """The lease, then the TTL, are the Redis key's own expiry (PX)."""
    store = RedisIdempotencyStore(client, key_prefix=prefix)
    token = store.claim("k", "", 5).token
    assert 4000 < client.pttl(prefix + "k") <= 5000
    assert store.extend(token, 20)
    assert 19000 < client.pttl(prefix + "k") <= 20000
    assert store.complete(token, 1, 3600)
    assert 3599000 < client.pttl(prefix + "k") <= 3600000


def test_a_foreign_value_is_a_store_error(client: redis.Redis, prefix: str) -> None:
    """A key holding something we did not write: a clear store error, left untouched."""
    client.set(prefix + "plain", b"x")
    client.hset(prefix + "hash", "a", "b")
    store = RedisIdempotencyStore(client, key_prefix=prefix)
    with pytest.raises(IdempotencyStoreError, match="does not hold a record"):
        store.claim("plain", "", 30)
    with pytest.raises(IdempotencyStoreError, match="WRONGTYPE"):
        store.claim("hash", "", 30)
    assert client.get(prefix + "plain") == b"x"
    assert store.get("plain") is None


async def test_asyncio_client(prefix: str) -> None:
    """The _async forms on a redis.asyncio client (given positionally, as in the design
    document's example); 8 tasks racing on one key: exactly one claim."""
    aclient = redis.asyncio.Redis(host="127.0.0.1", port=PORT)
    try:
        store = RedisIdempotencyStore(aclient, key_prefix=prefix)
        assert store.has_async_client
        answers = await asyncio.gather(*(store.claim_async("hot", "fp", 30) for _ in range(8)))
        states = [answer.state for answer in answers]
        assert states.count(ClaimState.CLAIMED) == 1
        assert states.count(ClaimState.IN_PROGRESS) == 7
        token = next(answer.token for answer in answers if answer.token)
        assert await store.extend_async(token, 30)
        assert await store.complete_async(token, ("a", 1), 60)
        assert (await store.claim_async("hot", "fp", 30)).result == ("a", 1)
        assert await store.get_async("hot") == ("a", 1)
        assert await store.exists_async("hot")
        other = await store.claim_async("f", "", 30)
        assert await store.fail_async(other.token, "no", 60)
        third = await store.claim_async("r", "", 30)
        assert await store.release_async(third.token)
        await store.set_async("s", 1, 60)
        assert await store.delete_async("s")
        with pytest.raises(TypeError, match="only an asyncio client"):
            store.claim("k", "", 30)
    finally:
        await aclient.aclose()


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"key_prefix": ""}, ValueError, "key_prefix"),
        ({"key_prefix": 1}, TypeError, "key_prefix"),
        ({"codec": 1}, TypeError, "codec"),
        ({"name": 1}, TypeError, "name"),
    ],
)
def test_bad_configuration_names_the_parameter(
    client: redis.Redis, kwargs: dict[str, Any], error: type[Exception], match: str
) -> None:
    """Bad constructor arguments: an error naming the parameter, at construction."""
    with pytest.raises(error, match=match):
        RedisIdempotencyStore(client, **kwargs)


def test_clients_are_checked(prefix: str) -> None:
    """No client, a non-client, or a client that decodes responses: refused."""
    with pytest.raises(TypeError, match="client"):
        RedisIdempotencyStore()
    with pytest.raises(TypeError, match="client"):
        RedisIdempotencyStore(object())
    with (
        redis.Redis(host="127.0.0.1", port=PORT, decode_responses=True) as decoding,
        pytest.raises(ValueError, match="decode"),
    ):
        RedisIdempotencyStore(decoding)


# -- an outage: a private redis-server this test starts, stops and starts again -------


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _start_redis(port: int, directory: Path, aof: bool = False) -> subprocess.Popen[bytes]:
    binary = shutil.which("redis-server")
    assert binary is not None
    persistence = (
        ("--appendonly", "yes", "--appendfsync", "always") if aof else ("--appendonly", "no")
    )
    process = subprocess.Popen(
        [
            *(binary, "--port", str(port), "--bind", "127.0.0.1"),
            *("--save", "", *persistence, "--dir", str(directory)),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            with redis.Redis(port=port, socket_connect_timeout=0.2) as probe:
                if probe.ping():
                    return process
        except redis.ConnectionError:
            time.sleep(0.02)
    process.kill()
    raise RuntimeError("redis-server did not start")


def _stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    process.wait(10)


def _need_redis_server() -> None:
    if shutil.which("redis-server") is None:
        if IN_CI:
            pytest.fail("redis-server is not on PATH")
        pytest.skip("redis-server is not on PATH")


def test_restart_between_claim_and_complete(tmp_path: Path) -> None:
    """Redis down at complete(): a store error that says the call executed; Redis back
    without persistence (no AOF, no snapshot): the claim is gone, as the README warns,
    and the key can be claimed again."""
    _need_redis_server()
    port = _free_port()
    server = _start_redis(port, tmp_path)
    client = redis.Redis(
        port=port, socket_timeout=0.5, socket_connect_timeout=0.5, retry=Retry(NoBackoff(), 0)
    )
    try:
        store = RedisIdempotencyStore(client, key_prefix="idem:")
        token = store.claim("k", "", 30).token
        _stop(server)
        with pytest.raises(IdempotencyStoreError) as info:
            store.complete(token, 1, 60)
        assert info.value.executed
        assert info.value.key == "k"
        with pytest.raises(IdempotencyStoreError) as info:
            store.claim("k", "", 30)
        assert not info.value.executed
        server = _start_redis(port, tmp_path)
        assert not store.complete(token, 1, 60)  # the claim did not survive
        assert store.claim("k", "", 30).state is ClaimState.CLAIMED
    finally:
        client.close()
        _stop(server)


async def test_a_cancelled_async_claim_is_released(prefix: str) -> None:
    """A task cancelled while its claim is on the wire: a claim it won is released, not
    left held by a token nobody has until its lease ends."""
    aclient = redis.asyncio.Redis(host="127.0.0.1", port=PORT)
    try:
        store = RedisIdempotencyStore(aclient, key_prefix=prefix)
        real = store._async_scripts["claim"]
        landed = asyncio.Event()

        async def slow_claim(keys: Any, args: Any) -> Any:
            await asyncio.sleep(0.3)
            reply = await real(keys=keys, args=args)
            landed.set()
            return reply

        store._async_scripts["claim"] = slow_claim
        task = asyncio.ensure_future(store.claim_async("k", "", 3600))
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        store._async_scripts["claim"] = real
        assert not landed.is_set()
        await asyncio.wait_for(landed.wait(), 10)
        assert landed.is_set()
        deadline = time.monotonic() + 10
        while True:  # the orphan's claim has landed; it is released right after
            claim = await store.claim_async("k", "", 30)
            if claim.state is ClaimState.CLAIMED:
                break
            assert claim.state is ClaimState.IN_PROGRESS
            assert claim.retry_after > 3000  # the orphan's long lease: not expired, released
            assert time.monotonic() < deadline, "the orphaned claim was not released"
            await asyncio.sleep(0.02)
    finally:
        await aclient.aclose()


def test_with_aof_a_restart_loses_nothing(tmp_path: Path) -> None:
    """Redis with appendonly/appendfsync always, restarted: the completed result replays,
    the claim in progress is still in progress and its owner can still complete it."""
    _need_redis_server()
    port = _free_port()
    server = _start_redis(port, tmp_path, aof=True)
    client = redis.Redis(
        port=port, socket_timeout=0.5, socket_connect_timeout=0.5, retry=Retry(NoBackoff(), 0)
    )
    try:
        store = RedisIdempotencyStore(client, key_prefix="idem:")
        done = store.claim("done", "", 30).token
        assert store.complete(done, {"paid": "10.00"}, 3600)
        busy = store.claim("busy", "", 30).token
        _stop(server)
        server = _start_redis(port, tmp_path, aof=True)
        replay = store.claim("done", "", 30)
        assert (replay.state, replay.result) == (ClaimState.COMPLETED, {"paid": "10.00"})
        assert store.claim("busy", "", 30).state is ClaimState.IN_PROGRESS
        assert store.complete(busy, "late but recorded", 3600)
        assert store.get("busy") == "late but recorded"
    finally:
        client.close()
        _stop(server)

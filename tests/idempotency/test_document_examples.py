"""The design document's "Idempotency" section, example by example, as written.

Only what the document leaves undefined is supplied here (``generate_strategy``,
``blockchain``, ``Signal``, ``hash_signal``, ``execute_payment``, the Redis
client); the code in each test between ``# -- document --`` markers is the
document's, unchanged.
"""

from __future__ import annotations

import hashlib
import logging
import time
import uuid
import warnings
from dataclasses import dataclass
from typing import Any

import pytest

from conftest import require_service

logger = logging.getLogger("document-examples")


class FakeAsyncRedis:
    """The three redis.asyncio calls the document's store makes, answered like Redis
    (``get`` returns bytes; ``exists`` an int; ``setex`` needs an int TTL and text)."""

    def __init__(self) -> None:
        self.data: dict[str, tuple[bytes, float]] = {}

    async def get(self, name: str) -> bytes | None:
        value = self.data.get(name)
        if value is None or value[1] <= time.monotonic():
            return None
        return value[0]

    async def setex(self, name: str, time_: int, value: Any) -> bool:
        if not isinstance(time_, int):
            raise TypeError("value is not an integer or out of range")
        if not isinstance(value, (str, bytes, int, float)):
            raise TypeError(f"Invalid input of type: {type(value).__name__!r}")
        if isinstance(value, str):
            value = value.encode()
        elif not isinstance(value, bytes):
            value = str(value).encode()
        self.data[name] = (value, time.monotonic() + time_)
        return True

    async def exists(self, *names: str) -> int:
        found = 0
        for name in names:
            found += await self.get(name) is not None
        return found


def test_key_generation() -> None:
    """Key Generation: the four builders and their documented results."""
    # -- document --
    from shared.resilience import IdempotencyKey

    # User-initiated operations
    key = IdempotencyKey.from_user_request(
        user_id="user123", operation="deposit", amount=1000, token="USDC"
    )
    # Returns SHA256 hash

    # Autonomous trades
    trade_id = IdempotencyKey.from_trade(
        strategy_id="strat_456", signal_hash="abc123", timestamp=1730500000
    )
    # Returns: "trade_strat_456_1730500000_abc123"

    # Blockchain transactions
    key2 = IdempotencyKey.from_blockchain_tx(
        operation="bridge", chain="solana", params_hash="def789"
    )
    # Returns: "blockchain_bridge_solana_def789"

    # Event processing
    key3 = IdempotencyKey.from_event("evt_12345")
    # Returns: "event_evt_12345"
    # -- end --
    assert len(key) == 64
    assert int(key, 16) >= 0
    assert trade_id == "trade_strat_456_1730500000_abc123"
    assert key2 == "blockchain_bridge_solana_def789"
    assert key3 == "event_evt_12345"


def _storage_example() -> tuple[Any, type]:
    # -- document --
    from shared.resilience import IdempotencyStore, InMemoryIdempotencyStore

    # In-memory store (for testing only)
    store = InMemoryIdempotencyStore()

    # Production: Use Redis or Database
    # Implement IdempotencyStore protocol:
    class RedisIdempotencyStore:
        def __init__(self, redis_client):
            self.redis = redis_client

        async def get_async(self, key: str):
            return await self.redis.get(f"idempotency:{key}")

        async def set_async(self, key: str, value: Any, ttl: int):
            await self.redis.setex(f"idempotency:{key}", ttl, value)

        async def exists_async(self, key: str) -> bool:
            return await self.redis.exists(f"idempotency:{key}")

    # -- end --
    assert isinstance(store, IdempotencyStore)
    assert isinstance(RedisIdempotencyStore(None), IdempotencyStore)
    return store, RedisIdempotencyStore


def test_storage() -> None:
    """Storage: the in-memory store and a Redis store written to the protocol."""
    store, redis_store_class = _storage_example()
    assert store.get("missing") is None
    assert redis_store_class.__name__ == "RedisIdempotencyStore"


async def _decorator_usage(redis_store: Any) -> tuple[Any, Any, int]:
    executions = 0

    async def generate_strategy(user_id: str, prompt: str) -> dict[str, Any]:
        nonlocal executions
        executions += 1
        return {"user_id": user_id, "prompt": prompt, "legs": [1, 2], "id": uuid.uuid4().hex}

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # the check-then-set warning
        # -- document --
        from shared.resilience import idempotent

        # User-initiated operation
        @idempotent(key_param="idempotency_key", store=redis_store, ttl=86400)
        async def create_strategy(user_id: str, prompt: str, idempotency_key: str):
            # This executes only once per idempotency_key
            strategy = await generate_strategy(user_id, prompt)
            return strategy

        # First call - executes
        result1 = await create_strategy(
            "user123", "Create momentum strategy", idempotency_key="req_001"
        )

        # Second call - returns cached result
        result2 = await create_strategy(
            "user123", "Create momentum strategy", idempotency_key="req_001"
        )

        assert result1 == result2  # Same result
        # -- end --
    return result1, result2, executions


async def test_decorator_usage_with_the_documents_redis_store() -> None:
    """Decorator Usage: the document's Redis store (on a client that behaves like Redis)."""
    _, redis_store_class = _storage_example()
    result1, result2, executions = await _decorator_usage(redis_store_class(FakeAsyncRedis()))
    assert executions == 1
    assert result1 == result2


# redis-py deprecates the document's setex (in favour of set(..., ex=)); it still works.
@pytest.mark.filterwarnings("ignore:Call to deprecated setex:DeprecationWarning")
async def test_decorator_usage_on_redis() -> None:
    """Decorator Usage on the local Redis server, with the document's store class."""
    require_service("Redis", 6379)
    import redis.asyncio

    client = redis.asyncio.Redis(host="127.0.0.1", port=6379, db=9)
    try:
        await client.delete("idempotency:req_001")
        _, redis_store_class = _storage_example()
        result1, result2, executions = await _decorator_usage(redis_store_class(client))
        assert executions == 1
        assert result1 == result2
        assert 0 < await client.ttl("idempotency:req_001") <= 86400
    finally:
        await client.delete("idempotency:req_001")
        await client.aclose()


@dataclass(frozen=True)
class Signal:
    market: str
    side: str
    size: int


def hash_signal(signal: Signal) -> str:
    return hashlib.sha256(repr(signal).encode()).hexdigest()[:12]


class Blockchain:
    def __init__(self) -> None:
        self.trades: list[Signal] = []

    async def execute_trade(self, signal: Signal) -> dict[str, Any]:
        self.trades.append(signal)
        return {"tx": f"0x{len(self.trades):04x}", "market": signal.market}


async def test_manual_check_pattern() -> None:
    """Manual Check Pattern: exists_async / get_async / set_async on the in-memory store."""
    from shared.resilience import IdempotencyKey, InMemoryIdempotencyStore

    store = InMemoryIdempotencyStore()
    blockchain = Blockchain()

    # -- document --
    # Autonomous trade execution
    async def execute_trade(strategy_id: str, signal: Signal):
        # Generate internal idempotency key
        trade_id = IdempotencyKey.from_trade(
            strategy_id=strategy_id, signal_hash=hash_signal(signal), timestamp=int(time.time())
        )

        # Check if already executed
        if await store.exists_async(trade_id):
            logger.info(f"Trade {trade_id} already executed")
            return await store.get_async(trade_id)

        # Execute trade
        result = await blockchain.execute_trade(signal)

        # Store result
        await store.set_async(trade_id, result, ttl=86400)

        return result

    # -- end --

    signal = Signal("SOL-USDC", "buy", 3)
    first = await execute_trade("strat_456", signal)
    second = await execute_trade("strat_456", signal)
    # The key holds the second of the call: a repeat within it is a replay.
    if len(blockchain.trades) == 1:
        assert second == first
    else:  # the two calls straddled a second boundary
        assert len(blockchain.trades) == 2
    assert first == {"tx": "0x0001", "market": "SOL-USDC"}


def test_error_handling() -> None:
    """Error Handling: raise_on_duplicate=True and DuplicateRequestError's key/cached_result."""
    from shared.resilience import InMemoryIdempotencyStore, idempotent

    store = InMemoryIdempotencyStore()
    payments: list[float] = []

    def execute_payment(amount: float) -> dict[str, Any]:
        payments.append(amount)
        return {"status": "paid", "amount": amount}

    # -- document --
    from shared.resilience import DuplicateRequestError

    @idempotent(
        key_param="request_id",
        store=store,
        raise_on_duplicate=True,  # Raise on duplicate detection
    )
    def process_payment(amount: float, request_id: str):
        return execute_payment(amount)

    # -- end --

    def handler():
        # -- document --
        try:
            result = process_payment(1000, request_id="req_001")
        except DuplicateRequestError as e:
            logger.warning(f"Duplicate request: {e.key}")
            return e.cached_result  # Return cached result
        # -- end --
        return result

    assert handler() == {"status": "paid", "amount": 1000}
    assert handler() == {"status": "paid", "amount": 1000}
    assert payments == [1000]


async def test_monitoring() -> None:
    """Monitoring: counting hits with a prometheus_client Counter around the manual pattern."""
    from prometheus_client import REGISTRY, Counter

    from shared.resilience import InMemoryIdempotencyStore

    store = InMemoryIdempotencyStore()
    key = "mon-1"
    await store.set_async(key, {"id": 7}, ttl=60)

    async def check() -> Any:
        # -- document --
        if await store.exists_async(key):
            idempotency_hits.labels(operation="create_strategy").inc()
            return await store.get_async(key)
        # -- end --
        return None

    # -- document --
    # Track idempotency hits
    idempotency_hits = Counter(
        "idempotency_hits_total", "Idempotent operations returning cached results", ["operation"]
    )
    # -- end --
    try:
        assert await check() == {"id": 7}
        assert (
            REGISTRY.get_sample_value("idempotency_hits_total", {"operation": "create_strategy"})
            == 1.0
        )
    finally:
        REGISTRY.unregister(idempotency_hits)


@pytest.fixture(autouse=True)
def _quiet_logs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="document-examples")

"""Idempotency: one execution per key across threads, processes and hosts.

``store`` holds the contract every store implements (the atomic claim);
``memory_store`` the in-memory store on the native LRU; ``sqlite_store``,
``redis_store`` and ``postgres_store`` the durable stores (``redis`` and
``psycopg`` are imported only when a store of theirs is used); ``codec`` how
stores keep results (tagged JSON by default); ``key`` the design document's key
formats; ``decorator`` ``@idempotent``; ``outcomes`` the counters every store
carries for metrics.
"""

from __future__ import annotations

from shared.resilience.idempotency.codec import (
    Codec,
    CustomCodec,
    JsonCodec,
    PickleCodec,
    ResultNotStorableError,
    StoredValueError,
)
from shared.resilience.idempotency.decorator import idempotent
from shared.resilience.idempotency.key import IdempotencyKey
from shared.resilience.idempotency.memory_store import InMemoryIdempotencyStore
from shared.resilience.idempotency.outcomes import OUTCOMES, OutcomeCounting
from shared.resilience.idempotency.postgres_store import PostgresIdempotencyStore
from shared.resilience.idempotency.redis_store import RedisIdempotencyStore
from shared.resilience.idempotency.sqlite_store import SQLiteIdempotencyStore
from shared.resilience.idempotency.store import (
    AtomicIdempotencyStore,
    Claim,
    ClaimState,
    IdempotencyStore,
    OwnerToken,
)

__all__ = [
    "OUTCOMES",
    "AtomicIdempotencyStore",
    "Claim",
    "ClaimState",
    "Codec",
    "CustomCodec",
    "IdempotencyKey",
    "IdempotencyStore",
    "InMemoryIdempotencyStore",
    "JsonCodec",
    "OutcomeCounting",
    "OwnerToken",
    "PickleCodec",
    "PostgresIdempotencyStore",
    "RedisIdempotencyStore",
    "ResultNotStorableError",
    "SQLiteIdempotencyStore",
    "StoredValueError",
    "idempotent",
]

"""Idempotency: one execution per key across threads, processes and hosts.

``store`` holds the contract every store implements (the atomic claim);
``codec`` how durable stores keep results; ``sqlite_store``, ``redis_store`` and
``postgres_store`` the durable stores (``redis`` and ``psycopg`` are imported
only when a store of theirs is used).
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
    "AtomicIdempotencyStore",
    "Claim",
    "ClaimState",
    "Codec",
    "CustomCodec",
    "IdempotencyStore",
    "JsonCodec",
    "OwnerToken",
    "PickleCodec",
    "PostgresIdempotencyStore",
    "RedisIdempotencyStore",
    "ResultNotStorableError",
    "SQLiteIdempotencyStore",
    "StoredValueError",
]

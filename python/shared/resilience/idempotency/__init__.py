"""Idempotency: one execution per key across threads, processes and hosts.

``store`` holds the contract every store implements (the atomic claim);
``memory_store`` the in-memory store on the native LRU; ``key`` the design
document's key formats; ``decorator`` ``@idempotent``; ``outcomes`` the
counters every store carries for metrics; ``codec`` results as tagged JSON.
"""

from __future__ import annotations

from shared.resilience.idempotency.codec import ResultCodec
from shared.resilience.idempotency.decorator import idempotent
from shared.resilience.idempotency.key import IdempotencyKey
from shared.resilience.idempotency.memory_store import InMemoryIdempotencyStore
from shared.resilience.idempotency.outcomes import OUTCOMES, OutcomeCounting
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
    "IdempotencyKey",
    "IdempotencyStore",
    "InMemoryIdempotencyStore",
    "OutcomeCounting",
    "OwnerToken",
    "ResultCodec",
    "idempotent",
]

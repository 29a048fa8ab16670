"""Idempotency: one execution per key across threads, processes and hosts.

``store`` holds the contract every store implements (the atomic claim).
"""

from __future__ import annotations

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
    "IdempotencyStore",
    "OwnerToken",
]

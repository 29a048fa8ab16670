"""Pure-Python twin of ``shared._native``: same names, same signatures, same semantics.

Used when the extension is not installed or ``SHARED_BACKEND=python``. Every
name the native module exports is exported here too; ``tests/test_backends.py``
checks names and signatures against the native module, and the parity tests
drive both with the same operations on one ``ManualClock``.
"""

from __future__ import annotations

from shared._pure.backoff import Backoff
from shared._pure.circuit_breaker import CircuitBreakerCore
from shared._pure.clock import monotonic_ns
from shared._pure.retry import RetryBudget, RetryCore, RetryingCall
from shared._pure.token_bucket import (
    KeyedLimiter,
    RateLimiterRegistry,
    Reservation,
    TokenBucket,
)

__all__ = [
    "ABI3",
    "BUILD_PROFILE",
    "Backoff",
    "CircuitBreakerCore",
    "KeyedLimiter",
    "RateLimiterRegistry",
    "Reservation",
    "RetryBudget",
    "RetryCore",
    "RetryingCall",
    "TokenBucket",
    "__version__",
    "monotonic_ns",
]

__version__ = "0.3.0"
BUILD_PROFILE = "python"
ABI3 = False

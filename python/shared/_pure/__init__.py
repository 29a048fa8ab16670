"""Pure-Python twin of ``shared._native``: same names, same signatures, same semantics.

Used when the extension is not installed or ``SHARED_BACKEND=python``. Every
name the native module exports is exported here too; ``tests/test_backends.py``
checks names and signatures against the native module, and the parity tests
drive both with the same operations on one ``ManualClock``.
"""

from __future__ import annotations

from shared import _version
from shared._pure.backoff import Backoff
from shared._pure.circuit_breaker import CircuitBreakerCore
from shared._pure.clock import monotonic_ns
from shared._pure.idempotency import IdempotencyLru
from shared._pure.retry import RetryBudget, RetryCore, RetryingCall
from shared._pure.timeout import (
    FIRE_CRITICAL,
    FIRE_GONE,
    FIRE_RAISED,
    FIRE_SHIELDED,
    DeadlineCore,
    Guard,
    ThreadState,
    current_thread_state,
    deadline_clock,
    set_alarm_handler,
    set_deadline_clock,
    set_hooks,
    shield_enter,
    shield_exit,
)
from shared._pure.token_bucket import (
    KeyedLimiter,
    RateLimiterRegistry,
    Reservation,
    TokenBucket,
)

__all__ = [
    "ABI3",
    "BUILD_PROFILE",
    "FIRE_CRITICAL",
    "FIRE_GONE",
    "FIRE_RAISED",
    "FIRE_SHIELDED",
    "Backoff",
    "CircuitBreakerCore",
    "DeadlineCore",
    "Guard",
    "IdempotencyLru",
    "KeyedLimiter",
    "RateLimiterRegistry",
    "Reservation",
    "RetryBudget",
    "RetryCore",
    "RetryingCall",
    "ThreadState",
    "TokenBucket",
    "__version__",
    "current_thread_state",
    "deadline_clock",
    "monotonic_ns",
    "set_alarm_handler",
    "set_deadline_clock",
    "set_hooks",
    "shield_enter",
    "shield_exit",
]

# The version of the package (the twin has no build of its own to stamp).
__version__ = _version.VERSION
BUILD_PROFILE = "python"
ABI3 = False

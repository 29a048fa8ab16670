"""Resilience patterns: circuit breaker, timeout, retry, rate limiting, idempotency.

Modules (the design document's "Module Structure"): ``circuit_breaker``,
``timeout``, ``retry``, ``rate_limiter``, ``idempotency`` and ``exceptions``.
"""

from __future__ import annotations

from shared.resilience.exceptions import (
    CircuitBreakerOpenError,
    RateLimitExceeded,
    ResilienceError,
    TimeoutError,
)
from shared.resilience.rate_limiter import RateLimitConfig
from shared.resilience.timeout import TimeoutContext, with_timeout

__all__ = [
    "CircuitBreakerOpenError",
    "RateLimitConfig",
    "RateLimitExceeded",
    "ResilienceError",
    "TimeoutContext",
    "TimeoutError",
    "with_timeout",
]

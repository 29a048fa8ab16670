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
from shared.resilience.rate_limiter import (
    KeyedLimiter,
    RateLimitConfig,
    RateLimiterRegistry,
    TokenBucket,
    rate_limited,
)

__all__ = [
    "CircuitBreakerOpenError",
    "KeyedLimiter",
    "RateLimitConfig",
    "RateLimitExceeded",
    "RateLimiterRegistry",
    "ResilienceError",
    "TimeoutError",
    "TokenBucket",
    "rate_limited",
]

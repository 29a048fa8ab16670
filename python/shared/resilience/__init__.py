"""Resilience patterns: circuit breaker, timeout, retry, rate limiting, idempotency.

Modules (the design document's "Module Structure"): ``circuit_breaker``,
``timeout``, ``retry``, ``rate_limiter``, ``idempotency`` and ``exceptions``.
"""

from __future__ import annotations

from shared.resilience.exceptions import (
    CircuitBreakerOpenError,
    RateLimiterUnavailableError,
    RateLimitExceeded,
    ResilienceError,
    TimeoutError,
)
from shared.resilience.rate_limiter import RateLimitConfig
from shared.resilience.redis_rate_limiter import (
    AsyncRedisRateLimiterRegistry,
    AsyncRedisTokenBucket,
    RedisRateLimiterRegistry,
    RedisTokenBucket,
)

__all__ = [
    "AsyncRedisRateLimiterRegistry",
    "AsyncRedisTokenBucket",
    "CircuitBreakerOpenError",
    "RateLimitConfig",
    "RateLimitExceeded",
    "RateLimiterUnavailableError",
    "RedisRateLimiterRegistry",
    "RedisTokenBucket",
    "ResilienceError",
    "TimeoutError",
]

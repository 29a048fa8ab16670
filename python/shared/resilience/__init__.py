"""Resilience patterns: circuit breaker, timeout, retry, rate limiting, idempotency.

Modules (the design document's "Module Structure"): ``circuit_breaker``,
``timeout``, ``retry``, ``rate_limiter``, ``redis_rate_limiter``, ``idempotency``
and ``exceptions``.
"""

from __future__ import annotations

from shared.resilience.circuit_breaker import (
    CircuitBreaker,
    CircuitBreakerConfig,
    CircuitBreakerRegistry,
    CircuitBreakerState,
    circuit_breaker_registry,
)
from shared.resilience.exceptions import (
    CircuitBreakerOpenError,
    DuplicateRequestError,
    IdempotencyError,
    IdempotencyFailedError,
    IdempotencyInProgressError,
    IdempotencyMismatchError,
    IdempotencyStoreError,
    RateLimiterUnavailableError,
    RateLimitExceeded,
    ResilienceError,
    TimeoutError,
)
from shared.resilience.idempotency import (
    AtomicIdempotencyStore,
    IdempotencyKey,
    IdempotencyStore,
    InMemoryIdempotencyStore,
    idempotent,
)
from shared.resilience.rate_limiter import (
    KeyedLimiter,
    RateLimitConfig,
    RateLimiterRegistry,
    TokenBucket,
    rate_limited,
)
from shared.resilience.redis_rate_limiter import (
    AsyncRedisRateLimiterRegistry,
    AsyncRedisTokenBucket,
    RedisRateLimiterRegistry,
    RedisTokenBucket,
)
from shared.resilience.retry import (
    BackoffStrategy,
    Jitter,
    Retry,
    RetryBudget,
    RetryConfig,
    with_retry,
)
from shared.resilience.timeout import TimeoutContext, shield, with_timeout

__all__ = [
    "AsyncRedisRateLimiterRegistry",
    "AsyncRedisTokenBucket",
    "AtomicIdempotencyStore",
    "BackoffStrategy",
    "CircuitBreaker",
    "CircuitBreakerConfig",
    "CircuitBreakerOpenError",
    "CircuitBreakerRegistry",
    "CircuitBreakerState",
    "DuplicateRequestError",
    "IdempotencyError",
    "IdempotencyFailedError",
    "IdempotencyInProgressError",
    "IdempotencyKey",
    "IdempotencyMismatchError",
    "IdempotencyStore",
    "IdempotencyStoreError",
    "InMemoryIdempotencyStore",
    "Jitter",
    "KeyedLimiter",
    "RateLimitConfig",
    "RateLimitExceeded",
    "RateLimiterRegistry",
    "RateLimiterUnavailableError",
    "RedisRateLimiterRegistry",
    "RedisTokenBucket",
    "ResilienceError",
    "Retry",
    "RetryBudget",
    "RetryConfig",
    "TimeoutContext",
    "TimeoutError",
    "TokenBucket",
    "circuit_breaker_registry",
    "idempotent",
    "rate_limited",
    "shield",
    "with_retry",
    "with_timeout",
]

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
from shared.resilience.retry import (
    BackoffStrategy,
    Jitter,
    Retry,
    RetryBudget,
    RetryConfig,
    with_retry,
)

__all__ = [
    "BackoffStrategy",
    "CircuitBreakerOpenError",
    "Jitter",
    "RateLimitConfig",
    "RateLimitExceeded",
    "ResilienceError",
    "Retry",
    "RetryBudget",
    "RetryConfig",
    "TimeoutError",
    "with_retry",
]

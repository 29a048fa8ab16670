"""Token-bucket rate limiting (the document's "Rate Limiting" section).

The configuration lives here first because both the in-process limiter and
the Redis-backed limiter take it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

from shared import _validation

__all__ = ["RateLimitConfig"]


@dataclass(frozen=True)
class RateLimitConfig:
    """A token bucket: capacity ``burst_size``, refilled continuously at ``tokens_per_second``.

    Args:
        tokens_per_second: the refill rate; finite and > 0.
        burst_size: the capacity, >= 1. Default: one second of tokens,
            ``max(1, ceil(tokens_per_second))``.
        initial_tokens: tokens at creation, 0 <= initial_tokens <= burst_size.
            Default: a full bucket.

    Invalid values raise ``ValueError`` or ``TypeError`` naming the field.
    """

    tokens_per_second: float = 10.0
    burst_size: Optional[float] = None  # Optional: evaluated at runtime on 3.9
    initial_tokens: Optional[float] = None

    def __post_init__(self) -> None:
        rate = _validation.positive_finite("tokens_per_second", self.tokens_per_second)
        if self.burst_size is None:
            burst = float(max(1, math.ceil(rate)))
        else:
            burst = _validation.at_least("burst_size", self.burst_size, 1.0)
        if self.initial_tokens is None:
            initial = burst
        else:
            initial = _validation.non_negative_finite("initial_tokens", self.initial_tokens)
            if initial > burst:
                raise ValueError(
                    f"initial_tokens must be <= burst_size ({burst:g}), got {self.initial_tokens!r}"
                )
        object.__setattr__(self, "tokens_per_second", rate)
        object.__setattr__(self, "burst_size", burst)
        object.__setattr__(self, "initial_tokens", initial)

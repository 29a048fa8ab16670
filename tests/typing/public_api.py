"""Type-checked, never run: the public API as users write it, checked by
``mypy --strict`` (``tests/typing/test_public_api_types.py``).

``assert_type`` fails the check when a type is ``Any``, so every line here
proves that users get real types, not an ``Any`` base class.
"""

from __future__ import annotations

from typing import assert_type

from shared.resilience import (
    KeyedLimiter,
    RateLimitConfig,
    RateLimiterRegistry,
    TokenBucket,
    rate_limited,
)
from shared.testing import ManualClock

config = RateLimitConfig(tokens_per_second=5.0, burst_size=10)
assert_type(config.tokens_per_second, float)

bucket = TokenBucket(config, clock=ManualClock(), name="orders")
assert_type(bucket, TokenBucket)
assert_type(bucket.try_acquire(), bool)
assert_type(bucket.try_acquire(tokens=2.5), bool)
assert_type(bucket.retry_after(1.0), float)
assert_type(bucket.available_tokens, float)
assert_type(bucket.config, RateLimitConfig)
assert_type(bucket.counters(), dict[str, int])
assert_type(bucket.acquire(1.0, timeout=0.5), None)
wait, ticket = bucket.reserve(1.0, 2.0)
assert_type(wait, float)
assert_type(bucket.cancel_reservation(1.0, ticket), bool)
assert_type(bucket.name, str)
bucket.reset()

registry = RateLimiterRegistry(config, max_keys=1000, on_full="reject", name="per_user")
assert_type(registry, RateLimiterRegistry)
handle = registry.get_limiter("alice")
assert_type(handle, KeyedLimiter)
assert_type(handle.key, str)
assert_type(handle.registry, RateLimiterRegistry)
assert_type(handle.try_acquire(), bool)
assert_type(handle == registry.get_limiter("alice"), bool)
assert_type(hash(handle), int)
assert_type(registry.try_acquire("bob", 2.0), bool)
assert_type(registry.acquire("bob", timeout=1.0), None)
assert_type(registry.set_limiter("vip", RateLimitConfig(100.0)), KeyedLimiter)
assert_type(registry.remove_limiter("vip"), bool)
assert_type(registry.decision_counts(), tuple[int, int])
assert_type(registry.default_config, RateLimitConfig)
assert_type(registry.max_keys, int)
assert_type(registry.on_full, str)
assert_type(len(registry), int)
assert_type("alice" in registry, bool)
registry.reset_all()


@rate_limited
def bare(x: int) -> str:
    return str(x)


@rate_limited(bucket, tokens=2.0, timeout=1.0)
def shared_bucket(x: int, *, y: str = "") -> list[int]:
    return [x]


@rate_limited(RateLimitConfig(1.0))
async def fetch(url: str) -> bytes:
    return url.encode()


@rate_limited(registry, key=lambda user, *_: user)
def per_user(user: str, amount: float) -> float:
    return amount


assert_type(bare(1), str)
assert_type(shared_bucket(1, y="a"), list[int])
assert_type(per_user("alice", 2.0), float)


async def use_async() -> None:
    assert_type(await fetch("https://example.com"), bytes)
    await bucket.acquire_async(1.0, timeout=0.1)
    await handle.acquire_async()
    await registry.acquire_async("carol")

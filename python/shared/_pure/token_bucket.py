"""Pure-Python twin of ``rust/token_bucket.rs`` and ``rust/limiter_registry.rs``.

GCRA in integer nanoseconds with the native core's rounding and saturation,
so both backends give identical results on one ``ManualClock``. The native
core updates one atomic word per bucket; here a lock guards the same update.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from shared._pure.clock import NanosecondClock, ns_to_secs, secs_to_ns, time_source

__all__ = ["KeyedLimiter", "RateLimiterRegistry", "TokenBucket"]

_U64_MAX = 2**64 - 1
_MAX_SPAN_NS = 1 << 62
_MAX_SPAN_F = float(_MAX_SPAN_NS)
_MAX_KEYS_LIMIT = 2**32 - 2
_FULL_MESSAGE = "rate limiter registry is full (max_keys) and no key is idle yet"

_R = TypeVar("_R")


def _ceil_ns(value: float) -> int:
    """Nanoseconds for a real amount, rounded up, saturated at 2**62 (as the core does)."""
    if value != value or value <= 0.0:
        return 0
    if value >= _MAX_SPAN_F:
        return _MAX_SPAN_NS
    return math.ceil(value)


def _sat(value: int) -> int:
    return value if value <= _U64_MAX else _U64_MAX


def _number(config: Any, field: str) -> float:
    try:
        value = getattr(config, field)
    except AttributeError:
        raise TypeError(
            f"config must have a {field} attribute (a shared.resilience.RateLimitConfig)"
        ) from None
    if isinstance(value, bool):
        raise TypeError(f"{field} must be a number, got bool")
    try:
        return float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{field} must be a number") from None


def _checked_timeout(timeout: float | None) -> int | None:
    if timeout is None:
        return None
    timeout = float(timeout)
    if timeout != timeout or timeout < 0.0:
        raise ValueError(f"timeout must be None or a number >= 0, got {timeout}")
    return secs_to_ns(timeout)


def _rate_limit_exceeded(retry_after: float, message: str | None = None) -> Exception:
    from shared.resilience.exceptions import RateLimitExceeded

    return RateLimitExceeded(retry_after, message)


class _Limits:
    """The fixed parameters of a bucket in integer nanoseconds (``Limits`` in the core)."""

    __slots__ = ("burst", "initial_credit_ns", "interval_ns", "tolerance_ns")

    def __init__(self, config: Any) -> None:
        rate = _number(config, "tokens_per_second")
        burst = _number(config, "burst_size")
        initial = _number(config, "initial_tokens")
        if not (math.isfinite(rate) and rate > 0.0):
            raise ValueError(f"tokens_per_second must be a finite number > 0, got {rate}")
        if not (math.isfinite(burst) and burst >= 1.0):
            raise ValueError(f"burst_size must be a finite number >= 1, got {burst}")
        if not (math.isfinite(initial) and 0.0 <= initial <= burst):
            raise ValueError(
                f"initial_tokens must be a finite number in [0, burst_size], got {initial}"
            )
        self.burst = burst
        self.interval_ns = max(_ceil_ns(1e9 / rate), 1)
        self.tolerance_ns = _ceil_ns(burst * float(self.interval_ns))
        self.initial_credit_ns = min(_ceil_ns(initial * float(self.interval_ns)), self.tolerance_ns)

    def cost_ns(self, tokens: float) -> int:
        if tokens == 1.0:
            return self.interval_ns
        tokens = float(tokens)
        if not (math.isfinite(tokens) and 0.0 < tokens <= self.burst):
            raise ValueError(
                f"tokens must be a finite number > 0 and <= burst_size ({self.burst}), got {tokens}"
            )
        return min(_ceil_ns(tokens * float(self.interval_ns)), self.tolerance_ns)

    def initial_tat(self, now: int) -> int:
        return _sat(now + self.tolerance_ns - self.initial_credit_ns)

    def grant(self, tat: int, now: int, cost: int) -> int | None:
        """The TAT after granting ``cost`` at ``now``, or None when the tokens are not there."""
        following = _sat(max(tat, now) + cost)
        return following if following <= _sat(now + self.tolerance_ns) else None

    def wait_ns(self, tat: int, now: int, cost: int) -> int:
        return max(0, _sat(max(tat, now) + cost) - _sat(now + self.tolerance_ns))

    def reserve(self, tat: int, now: int, cost: int, max_wait_ns: int | None) -> tuple[int, int]:
        wait_ns = self.wait_ns(tat, now, cost)
        if max_wait_ns is not None and wait_ns > max_wait_ns:
            raise _rate_limit_exceeded(ns_to_secs(wait_ns))
        return _sat(max(tat, now) + cost), wait_ns

    @staticmethod
    def cancel(tat: int, reserved: int, cost: int) -> int | None:
        """The TAT without the reservation that left it at ``reserved``, or None
        when anything was granted or reserved since."""
        return max(reserved - cost, 0) if tat == reserved else None

    def available(self, tat: int, now: int) -> float:
        credit = max(0, _sat(now + self.tolerance_ns) - max(tat, now))
        return float(credit) / float(self.interval_ns)


class TokenBucket:
    """The core of ``shared.resilience.TokenBucket`` (twin of the native class)."""

    __slots__ = ("_clock", "_config", "_limits", "_lock", "_now", "_tat")
    _clock: NanosecondClock | None
    _config: Any
    _limits: _Limits
    _lock: threading.Lock
    _now: Callable[[], int]
    _tat: int

    def __new__(cls, config: Any, *, clock: NanosecondClock | None = None) -> TokenBucket:
        self = object.__new__(cls)
        self._limits = _Limits(config)
        self._now = time_source(clock)
        self._clock = clock
        self._config = config
        self._lock = threading.Lock()
        self._tat = self._limits.initial_tat(self._now())
        return self

    def try_acquire(self, /, tokens: float = 1.0) -> bool:
        """Takes ``tokens`` if they are there now; never waits."""
        limits = self._limits
        cost = limits.cost_ns(tokens)
        now = self._now()
        with self._lock:
            following = limits.grant(self._tat, now, cost)
            if following is None:
                return False
            self._tat = following
            return True

    def reserve(self, /, tokens: float = 1.0, timeout: float | None = None) -> tuple[float, int]:
        """Reserves ``tokens``: ``(seconds to wait for them, ticket)`` (0.0: granted now).

        Raises ``RateLimitExceeded`` and reserves nothing when the wait would
        exceed ``timeout`` seconds.
        """
        cost = self._limits.cost_ns(tokens)
        max_wait = _checked_timeout(timeout)
        now = self._now()
        with self._lock:
            self._tat, wait_ns = self._limits.reserve(self._tat, now, cost, max_wait)
            return ns_to_secs(wait_ns), self._tat

    def cancel_reservation(self, /, tokens: float, ticket: int) -> bool:
        """Withdraws a reservation (its ``tokens`` and ``ticket``) if nothing was
        granted or reserved since; whether it was. Otherwise its tokens stay consumed."""
        cost = self._limits.cost_ns(tokens)
        with self._lock:
            previous = _Limits.cancel(self._tat, ticket, cost)
            if previous is None:
                return False
            self._tat = previous
            return True

    def retry_after(self, /, tokens: float = 1.0) -> float:
        """Seconds until ``tokens`` are available (0.0 if they are now)."""
        cost = self._limits.cost_ns(tokens)
        return ns_to_secs(self._limits.wait_ns(self._tat, self._now(), cost))

    @property
    def available_tokens(self) -> float:
        """Tokens in the bucket now."""
        return self._limits.available(self._tat, self._now())

    def reset(self, /) -> None:
        """Back to the configured initial tokens."""
        now = self._now()
        with self._lock:
            self._tat = self._limits.initial_tat(now)

    @property
    def config(self) -> Any:
        return self._config

    @property
    def clock(self) -> NanosecondClock | None:
        return self._clock


class _Entry:
    __slots__ = ("config", "limits", "pinned", "tat")

    def __init__(self, limits: _Limits, config: Any, tat: int, pinned: bool) -> None:
        self.limits = limits
        self.config = config
        self.tat = tat
        self.pinned = pinned


class RateLimiterRegistry:
    """The core of ``shared.resilience.RateLimiterRegistry`` (twin of the native class)."""

    __slots__ = (
        "_clock",
        "_default",
        "_default_config",
        "_entries",
        "_idle_ns",
        "_idle_ttl",
        "_lock",
        "_max_keys",
        "_no_eviction_before",
        "_now",
    )
    _clock: NanosecondClock | None
    _default: _Limits
    _default_config: Any
    _entries: dict[str, _Entry]
    _idle_ns: int
    _idle_ttl: float
    _lock: threading.Lock
    _max_keys: int
    _no_eviction_before: int
    _now: Callable[[], int]

    def __new__(
        cls,
        default_config: Any,
        *,
        max_keys: int = 1000000,
        idle_ttl: float = 60.0,
        clock: NanosecondClock | None = None,
    ) -> RateLimiterRegistry:
        self = object.__new__(cls)
        self._default = _Limits(default_config)
        if isinstance(max_keys, bool) or not isinstance(max_keys, int):
            raise TypeError(f"max_keys must be an int, got {type(max_keys).__name__}")
        if not 1 <= max_keys <= _MAX_KEYS_LIMIT:
            raise ValueError(f"max_keys must be >= 1 and < 2**32 - 1, got {max_keys}")
        idle_ttl = float(idle_ttl)
        if not (math.isfinite(idle_ttl) and idle_ttl >= 0.0):
            raise ValueError(f"idle_ttl must be a finite number >= 0, got {idle_ttl}")
        self._default_config = default_config
        self._max_keys = max_keys
        self._idle_ttl = idle_ttl
        self._idle_ns = secs_to_ns(idle_ttl)
        self._now = time_source(clock)
        self._clock = clock
        self._lock = threading.Lock()
        self._entries = {}
        self._no_eviction_before = 0
        return self

    def _evict_idle(self, now: int) -> None:
        if now < self._no_eviction_before:
            raise _rate_limit_exceeded(ns_to_secs(self._no_eviction_before - now), _FULL_MESSAGE)
        idle_ns = self._idle_ns
        evictable = [k for k, e in self._entries.items() if not e.pinned]
        idle = [k for k in evictable if _sat(self._entries[k].tat + idle_ns) <= now]
        for key in idle:
            del self._entries[key]
        if idle:
            return
        soonest = min((_sat(self._entries[k].tat + idle_ns) for k in evictable), default=_U64_MAX)
        retry_after_ns = max(soonest - now, 1)
        self._no_eviction_before = _sat(now + retry_after_ns)
        raise _rate_limit_exceeded(ns_to_secs(retry_after_ns), _FULL_MESSAGE)

    def _entry(self, key: str, now: int) -> _Entry:
        """The key's entry, created with the default configuration if needed (lock held)."""
        entry = self._entries.get(key)
        if entry is None:
            if len(self._entries) >= self._max_keys:
                self._evict_idle(now)
            entry = _Entry(
                self._default, self._default_config, self._default.initial_tat(now), False
            )
            self._entries[key] = entry
        return entry

    def _with_entry(self, key: str, op: Callable[[_Entry, int], _R]) -> _R:
        now = self._now()
        with self._lock:
            return op(self._entry(key, now), now)

    def get_limiter(self, /, key: str) -> KeyedLimiter:
        """The key's limiter (a handle; the bucket lives in the registry)."""
        _check_key(key)
        self._with_entry(key, lambda entry, now: None)
        return KeyedLimiter._new(self, key)

    def set_limiter(self, /, key: str, config: Any) -> KeyedLimiter:
        """Gives ``key`` its own configuration and a fresh bucket; returns its limiter."""
        limits = _Limits(config)
        _check_key(key)

        def give(entry: _Entry, now: int) -> None:
            entry.limits, entry.config, entry.pinned = limits, config, True
            entry.tat = limits.initial_tat(now)

        self._with_entry(key, give)
        return KeyedLimiter._new(self, key)

    def remove_limiter(self, /, key: str) -> bool:
        """Forgets ``key``; whether it was there."""
        _check_key(key)
        with self._lock:
            return self._entries.pop(key, None) is not None

    def reset_all(self, /) -> None:
        """Every bucket back to its configured initial tokens."""
        now = self._now()
        with self._lock:
            self._no_eviction_before = 0
            for entry in self._entries.values():
                entry.tat = entry.limits.initial_tat(now)

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and key in self._entries

    @property
    def default_config(self) -> Any:
        return self._default_config

    @property
    def max_keys(self) -> int:
        return self._max_keys

    @property
    def idle_ttl(self) -> float:
        return self._idle_ttl

    @property
    def clock(self) -> NanosecondClock | None:
        return self._clock


def _check_key(key: object) -> None:
    if not isinstance(key, str):
        raise TypeError(f"argument 'key': {type(key).__name__!r} object is not a str")


class KeyedLimiter:
    """One key's limiter in a ``RateLimiterRegistry`` (twin of the native class)."""

    __slots__ = ("_key", "_registry")
    _key: str
    _registry: RateLimiterRegistry

    @classmethod
    def _new(cls, registry: RateLimiterRegistry, key: str) -> KeyedLimiter:
        self = object.__new__(cls)
        self._registry = registry
        self._key = key
        return self

    def __new__(cls) -> KeyedLimiter:
        raise TypeError(
            "cannot create KeyedLimiter instances (use RateLimiterRegistry.get_limiter)"
        )

    def try_acquire(self, /, tokens: float = 1.0) -> bool:
        """Takes ``tokens`` if they are there now; never waits."""

        def take(entry: _Entry, now: int) -> bool:
            following = entry.limits.grant(entry.tat, now, entry.limits.cost_ns(tokens))
            if following is None:
                return False
            entry.tat = following
            return True

        return self._registry._with_entry(self._key, take)

    def reserve(self, /, tokens: float = 1.0, timeout: float | None = None) -> tuple[float, int]:
        """Reserves ``tokens``: ``(seconds to wait, ticket)`` (see ``TokenBucket.reserve``)."""
        max_wait = _checked_timeout(timeout)

        def reserve(entry: _Entry, now: int) -> tuple[float, int]:
            entry.tat, wait_ns = entry.limits.reserve(
                entry.tat, now, entry.limits.cost_ns(tokens), max_wait
            )
            return ns_to_secs(wait_ns), entry.tat

        return self._registry._with_entry(self._key, reserve)

    def cancel_reservation(self, /, tokens: float, ticket: int) -> bool:
        """Withdraws a reservation if nothing happened since (see ``TokenBucket``)."""

        def cancel(entry: _Entry, now: int) -> bool:
            previous = _Limits.cancel(entry.tat, ticket, entry.limits.cost_ns(tokens))
            if previous is None:
                return False
            entry.tat = previous
            return True

        return self._registry._with_entry(self._key, cancel)

    def retry_after(self, /, tokens: float = 1.0) -> float:
        """Seconds until ``tokens`` are available (0.0 if they are now)."""
        return ns_to_secs(
            self._registry._with_entry(
                self._key,
                lambda entry, now: entry.limits.wait_ns(
                    entry.tat, now, entry.limits.cost_ns(tokens)
                ),
            )
        )

    @property
    def available_tokens(self) -> float:
        """Tokens in the key's bucket now."""
        return self._registry._with_entry(
            self._key, lambda entry, now: entry.limits.available(entry.tat, now)
        )

    def reset(self, /) -> None:
        """The key's bucket back to its configured initial tokens."""

        def reset(entry: _Entry, now: int) -> None:
            entry.tat = entry.limits.initial_tat(now)

        self._registry._with_entry(self._key, reset)

    def acquire(self, /, tokens: float = 1.0, timeout: float | None = None) -> None:
        """Waits until ``tokens`` are granted (see ``TokenBucket.acquire``)."""
        from shared.resilience.rate_limiter import _acquire

        _acquire(self, tokens, timeout)

    def acquire_async(self, /, tokens: float = 1.0, timeout: float | None = None) -> Any:
        """Awaitable: waits until ``tokens`` are granted (see ``TokenBucket.acquire_async``)."""
        from shared.resilience.rate_limiter import _acquire_async

        return _acquire_async(self, tokens, timeout)

    @property
    def config(self) -> Any:
        """The key's configuration (the registry's default unless ``set_limiter`` gave one)."""
        return self._registry._with_entry(self._key, lambda entry, now: entry.config)

    @property
    def key(self) -> str:
        return self._key

    @property
    def registry(self) -> RateLimiterRegistry:
        return self._registry

    @property
    def clock(self) -> NanosecondClock | None:
        return self._registry._clock

    def __repr__(self) -> str:
        return f"KeyedLimiter(key={self._key!r})"

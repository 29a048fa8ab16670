"""Pure-Python twin of ``rust/token_bucket.rs`` and ``rust/limiter_registry/``.

GCRA in integer nanoseconds with the native core's rounding and saturation,
so both backends give identical results on one ``ManualClock``. The native
core updates one atomic word per bucket; here a lock guards the same update.
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, TypeVar

from shared import _validation
from shared._pure.clock import NanosecondClock, ns_to_secs, secs_to_ns, time_source

__all__ = ["KeyedLimiter", "RateLimiterRegistry", "Reservation", "TokenBucket"]

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


def _field(config: Any, field: str) -> Any:
    try:
        return getattr(config, field)
    except AttributeError:
        raise TypeError(
            f"config must have a {field} attribute (a shared.resilience.RateLimitConfig)"
        ) from None


def _checked_timeout(timeout: Any) -> int | None:
    seconds = _validation.timeout(timeout)
    return None if seconds is None else secs_to_ns(seconds)


# The default of ``tokens``: a call that leaves it out is recognised by identity.
_ONE_TOKEN = 1.0


def _tokens_value(tokens: Any) -> float:
    """A ``tokens`` argument as a float (None: one token, as the native core reads it)."""
    if type(tokens) is float:
        return tokens
    if tokens is None:
        return 1.0
    return _validation.number("tokens", tokens)


class Reservation:
    """What ``reserve`` took (twin of ``shared._native.Reservation``)."""

    __slots__ = ("_cancelled", "_cost", "_owner", "_tat", "_tokens")

    _owner: object
    _tat: int
    _cost: int
    _tokens: float
    _cancelled: bool

    @classmethod
    def _new(cls, owner: object, tat: int, cost: int, tokens: float) -> Reservation:
        self = object.__new__(cls)
        self._owner = owner
        self._tat = tat
        self._cost = cost
        self._tokens = tokens
        self._cancelled = False
        return self

    def __new__(cls) -> Reservation:
        raise TypeError("cannot create Reservation instances (use reserve)")

    @property
    def tokens(self) -> float:
        """The tokens reserved."""
        return self._tokens

    def __repr__(self) -> str:
        return f"Reservation(tokens={self._tokens!r})"


def _ticket(ticket: Any) -> Reservation:
    if not isinstance(ticket, Reservation):
        raise _validation.ticket_type_error(ticket)
    return ticket


def _cancellable_tat(reservation: Reservation, owner: object, cost: int, tokens: float) -> int:
    """The checks of a cancellation (lock held), in the native core's order; marks it."""
    if reservation._owner != owner:
        raise ValueError(_validation.NOT_THIS_LIMITER)
    if reservation._cost != cost:
        raise _validation.reserved_tokens_mismatch(reservation._tokens, tokens)
    if reservation._cancelled:
        raise ValueError(_validation.ALREADY_CANCELLED)
    reservation._cancelled = True
    return reservation._tat


def _rate_limit_exceeded(retry_after: float, message: str | None = None) -> Exception:
    from shared.resilience.exceptions import RateLimitExceeded

    return RateLimitExceeded(retry_after, message)


class _Limits:
    """The fixed parameters of a bucket in integer nanoseconds (``Limits`` in the core)."""

    __slots__ = ("burst", "initial_credit_ns", "interval_ns", "tolerance_ns")

    def __init__(self, config: Any) -> None:
        rate, burst, initial = _validation.bucket_limits(
            _field(config, "tokens_per_second"),
            _field(config, "burst_size"),
            _field(config, "initial_tokens"),
        )
        self.burst = burst
        self.interval_ns = max(_ceil_ns(1e9 / rate), 1)
        self.tolerance_ns = _ceil_ns(burst * float(self.interval_ns))
        self.initial_credit_ns = min(_ceil_ns(initial * float(self.interval_ns)), self.tolerance_ns)

    def cost_ns(self, tokens: float) -> int:
        """The cost of ``tokens`` (a float already: see ``_tokens_value``)."""
        if tokens == 1.0:
            return self.interval_ns
        if not (math.isfinite(tokens) and 0.0 < tokens <= self.burst):
            _validation.tokens(tokens, self.burst)  # raises the shared error
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


class _Decisions:
    """A limiter's decisions for metrics; changed only under the limiter's lock."""

    __slots__ = ("granted", "rejected", "waited_ns")

    def __init__(self) -> None:
        self.granted = 0
        self.rejected = 0
        self.waited_ns = 0

    def reserved(self, wait_ns: int) -> None:
        self.granted += 1
        self.waited_ns += wait_ns

    def to_dict(self) -> dict[str, int]:
        return {"granted": self.granted, "rejected": self.rejected, "waited_ns": self.waited_ns}


class TokenBucket:
    """The core of ``shared.resilience.TokenBucket`` (twin of the native class)."""

    # The decision counters are slots of their own (not a _Decisions): one
    # attribute less to load on every decision.
    __slots__ = (
        "_clock",
        "_config",
        "_granted",
        "_limits",
        "_lock",
        "_now",
        "_rejected",
        "_tat",
        "_waited_ns",
    )
    _granted: int
    _rejected: int
    _waited_ns: int
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
        self._granted = self._rejected = self._waited_ns = 0
        return self

    def try_acquire(self, /, tokens: float = _ONE_TOKEN) -> bool:
        """Takes ``tokens`` if they are there now; never waits."""
        limits = self._limits
        # The default argument (the common call) skips the argument checks.
        cost = limits.interval_ns if tokens is _ONE_TOKEN else limits.cost_ns(_tokens_value(tokens))
        now = self._now()
        with self._lock:
            following = limits.grant(self._tat, now, cost)
            if following is None:
                self._rejected += 1
                return False
            self._tat = following
            self._granted += 1
            return True

    def reserve(
        self, /, tokens: float = 1.0, timeout: float | None = None
    ) -> tuple[float, Reservation]:
        """Reserves ``tokens``: ``(seconds to wait for them, ticket)`` (0.0: granted now).

        Raises ``RateLimitExceeded`` and reserves nothing when the wait would
        exceed ``timeout`` seconds. The ticket cancels the reservation, once.
        """
        value = _tokens_value(tokens)
        cost = self._limits.cost_ns(value)
        max_wait = _checked_timeout(timeout)
        now = self._now()
        with self._lock:
            try:
                self._tat, wait_ns = self._limits.reserve(self._tat, now, cost, max_wait)
            except Exception:  # the only error: the wait would exceed the timeout
                self._rejected += 1
                raise
            self._granted += 1
            self._waited_ns += wait_ns
            return ns_to_secs(wait_ns), Reservation._new(self, self._tat, cost, value)

    def cancel_reservation(self, /, tokens: float, ticket: Reservation) -> bool:
        """Withdraws the reservation ``ticket`` of ``tokens`` if nothing was granted
        or reserved since; whether it was (otherwise its tokens stay consumed).
        A ticket of another limiter, other tokens than reserved, or a second
        cancellation raise ``ValueError``."""
        reservation = _ticket(ticket)
        value = tokens if type(tokens) is float else _validation.number("tokens", tokens)
        cost = self._limits.cost_ns(value)
        with self._lock:
            tat = _cancellable_tat(reservation, self, cost, value)
            previous = _Limits.cancel(self._tat, tat, cost)
            if previous is None:
                return False
            self._tat = previous
            return True

    def retry_after(self, /, tokens: float = 1.0) -> float:
        """Seconds until ``tokens`` are available (0.0 if they are now)."""
        cost = self._limits.cost_ns(_tokens_value(tokens))
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

    def counters(self, /) -> dict[str, int]:
        """Monotonic decision counters for metrics (never cleared by ``reset()``):
        ``granted`` and ``rejected`` decisions of ``try_acquire`` and ``reserve``
        (so of ``acquire``), and ``waited_ns`` handed out by granted reservations."""
        with self._lock:
            return {
                "granted": self._granted,
                "rejected": self._rejected,
                "waited_ns": self._waited_ns,
            }

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
        "_decisions",
        "_default",
        "_default_config",
        "_entries",
        "_evict",
        "_idle_ns",
        "_idle_ttl",
        "_lock",
        "_max_keys",
        "_no_eviction_before",
        "_now",
        "_purge_above",
        "_recent",
        "_removed",
    )
    _clock: NanosecondClock | None
    _decisions: _Decisions
    _default: _Limits
    _default_config: Any
    _entries: dict[str, _Entry]
    # Keys of the default configuration, least recently used first.
    _recent: OrderedDict[str, None]
    _evict: bool
    _idle_ns: int
    _idle_ttl: float
    _lock: threading.Lock
    _max_keys: int
    _no_eviction_before: int
    _now: Callable[[], int]
    _purge_above: int
    _removed: dict[str, int]

    def __new__(
        cls,
        default_config: Any,
        *,
        max_keys: Any = 1000000,
        idle_ttl: Any = 60.0,
        clock: NanosecondClock | None = None,
        on_full: Any = "evict",
    ) -> RateLimiterRegistry:
        self = object.__new__(cls)
        self._default = _Limits(default_config)
        # The rules both backends share (the native core calls them too).
        max_keys = (
            1000000
            if max_keys is None
            else _validation.int_in_range("max_keys", max_keys, 1, _MAX_KEYS_LIMIT)
        )
        if idle_ttl is not None:
            idle_ttl = _validation.non_negative_finite("idle_ttl", idle_ttl)
        else:
            idle_ttl = 60.0
        self._default_config = default_config
        self._max_keys = max_keys
        self._idle_ttl = idle_ttl
        self._idle_ns = secs_to_ns(idle_ttl)
        self._now = time_source(clock)
        self._clock = clock
        self._lock = threading.Lock()
        self._evict = on_full is None or _validation.on_full(on_full) == "evict"
        self._decisions = _Decisions()
        self._entries = {}
        self._recent = OrderedDict()
        self._no_eviction_before = 0
        self._removed = {}
        self._purge_above = _REMOVED_PURGE_MIN
        return self

    def _forget(self, key: str) -> None:
        entry = self._entries.pop(key)
        if not entry.pinned:
            del self._recent[key]

    def _evict_oldest(self, now: int) -> None:
        """Forgets the least recently used key of the default configuration."""
        if not self._recent:
            self._evict_idle(now)
            return
        self._forget(next(iter(self._recent)))

    def _evict_idle(self, now: int) -> None:
        """The oldest key if it is idle (no scan), else every idle key; or refuses."""
        idle_ns = self._idle_ns
        if self._recent:
            oldest = next(iter(self._recent))
            if _sat(self._entries[oldest].tat + idle_ns) <= now:
                self._forget(oldest)
                return
        if now < self._no_eviction_before:
            raise _rate_limit_exceeded(ns_to_secs(self._no_eviction_before - now), _FULL_MESSAGE)
        evictable = list(self._recent)
        idle = [k for k in evictable if _sat(self._entries[k].tat + idle_ns) <= now]
        for key in idle:
            self._forget(key)
        if idle:
            return
        soonest = min((_sat(self._entries[k].tat + idle_ns) for k in evictable), default=_U64_MAX)
        retry_after_ns = max(soonest - now, 1)
        self._no_eviction_before = _sat(now + retry_after_ns)
        raise _rate_limit_exceeded(ns_to_secs(retry_after_ns), _FULL_MESSAGE)

    def _entry(self, key: str, now: int) -> _Entry:
        """The key's entry, created with the default configuration if needed (lock held).

        Finding a key counts as using it: it becomes the most recently used.
        """
        entry = self._entries.get(key)
        if entry is None:
            if len(self._entries) >= self._max_keys:
                if self._evict:
                    self._evict_oldest(now)
                else:
                    self._evict_idle(now)
            tat = self._default.initial_tat(now)
            carried = self._removed.pop(key, None) if self._removed else None
            if carried is not None and carried > tat:
                tat = carried  # removed before it refilled: its tokens stay spent
            entry = _Entry(self._default, self._default_config, tat, False)
            self._entries[key] = entry
            self._recent[key] = None
        elif not entry.pinned:
            self._recent.move_to_end(key)
        return entry

    def _with_entry(self, key: str, op: Callable[[_Entry, int], _R]) -> _R:
        now = self._now()
        with self._lock:
            return op(self._entry(key, now), now)

    def counters(self, /) -> dict[str, int]:
        """Monotonic decision counters of all keys together, for metrics (as
        ``TokenBucket.counters``; never cleared by ``reset_all()``)."""
        with self._lock:
            return self._decisions.to_dict()

    def get_limiter(self, /, key: str) -> KeyedLimiter:
        """The key's limiter (a handle; the bucket lives in the registry)."""
        _validation.key(key)
        self._with_entry(key, lambda entry, now: None)
        return KeyedLimiter._new(self, key)

    def set_limiter(self, /, key: str, config: Any) -> KeyedLimiter:
        """Gives ``key`` its own configuration and a fresh bucket; returns its limiter."""
        limits = _Limits(config)
        _validation.key(key)

        def give(entry: _Entry, now: int) -> None:
            if not entry.pinned:
                del self._recent[key]
            entry.limits, entry.config, entry.pinned = limits, config, True
            entry.tat = limits.initial_tat(now)

        self._with_entry(key, give)
        return KeyedLimiter._new(self, key)

    def remove_limiter(self, /, key: str) -> bool:
        """Forgets ``key`` and its configuration; whether it was there.

        Tokens it spent stay spent until its bucket would have refilled: a
        handle still in use, or a new ``get_limiter(key)``, starts from that
        state under the default configuration, never from a full bucket.
        """
        _validation.key(key)
        now = self._now()
        with self._lock:
            entry = self._entries.pop(key, None)
            if entry is None:
                return False
            if not entry.pinned:
                del self._recent[key]
            if entry.tat > now:
                self._remember_removed(key, entry.tat, now)
            return True

    def _remember_removed(self, key: str, tat: int, now: int) -> None:
        removed = self._removed
        removed[key] = tat
        if len(removed) > self._purge_above:
            for refilled in [k for k, t in removed.items() if t <= now]:
                del removed[refilled]
            self._purge_above = max(_REMOVED_PURGE_MIN, 2 * len(removed))

    def reset_all(self, /) -> None:
        """Every bucket back to its configured initial tokens."""
        now = self._now()
        with self._lock:
            self._removed.clear()
            self._no_eviction_before = 0
            for entry in self._entries.values():
                entry.tat = entry.limits.initial_tat(now)

    def try_acquire(self, /, key: str, tokens: float = 1.0) -> bool:
        """Takes ``tokens`` from ``key``'s bucket if they are there now (one call)."""
        value = _tokens_value(tokens)
        _validation.key(key)
        now = self._now()
        with self._lock:
            entry = self._entry(key, now)
            following = entry.limits.grant(entry.tat, now, entry.limits.cost_ns(value))
            decisions = self._decisions
            if following is None:
                decisions.rejected += 1
                return False
            entry.tat = following
            decisions.granted += 1
            return True

    def decision_counts(self, /) -> tuple[int, int]:
        """``(granted, rejected)`` over all keys since creation."""
        with self._lock:
            return self._decisions.granted, self._decisions.rejected

    @property
    def on_full(self) -> str:
        return "evict" if self._evict else "reject"

    def _eviction_order(self, /) -> list[str]:
        with self._lock:
            return list(self._recent)

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: object) -> bool:
        if not isinstance(key, str):
            return False
        try:
            _validation.key(key)
        except ValueError:
            return False  # a key that cannot be stored is not there
        return key in self._entries

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


# Removed keys remembered until refilled are purged once there are more than this
# (or twice as many as the last purge kept).
_REMOVED_PURGE_MIN = 64


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

        value = _tokens_value(tokens)

        decisions = self._registry._decisions

        def take(entry: _Entry, now: int) -> bool:
            following = entry.limits.grant(entry.tat, now, entry.limits.cost_ns(value))
            if following is None:
                decisions.rejected += 1
                return False
            entry.tat = following
            decisions.granted += 1
            return True

        return self._registry._with_entry(self._key, take)

    def reserve(
        self, /, tokens: float = 1.0, timeout: float | None = None
    ) -> tuple[float, Reservation]:
        """Reserves ``tokens``: ``(seconds to wait, ticket)`` (see ``TokenBucket.reserve``)."""
        value = _tokens_value(tokens)
        max_wait = _checked_timeout(timeout)
        owner = self._owner()

        decisions = self._registry._decisions

        def reserve(entry: _Entry, now: int) -> tuple[float, Reservation]:
            cost = entry.limits.cost_ns(value)
            try:
                entry.tat, wait_ns = entry.limits.reserve(entry.tat, now, cost, max_wait)
            except Exception:  # the only error: the wait would exceed the timeout
                decisions.rejected += 1
                raise
            decisions.reserved(wait_ns)
            return ns_to_secs(wait_ns), Reservation._new(owner, entry.tat, cost, value)

        return self._registry._with_entry(self._key, reserve)

    def cancel_reservation(self, /, tokens: float, ticket: Reservation) -> bool:
        """Withdraws a reservation if nothing happened since (see ``TokenBucket``)."""
        reservation = _ticket(ticket)
        value = tokens if type(tokens) is float else _validation.number("tokens", tokens)
        owner = self._owner()

        def cancel(entry: _Entry, now: int) -> bool:
            cost = entry.limits.cost_ns(value)
            previous = _Limits.cancel(
                entry.tat, _cancellable_tat(reservation, owner, cost, value), cost
            )
            if previous is None:
                return False
            entry.tat = previous
            return True

        return self._registry._with_entry(self._key, cancel)

    def _owner(self) -> tuple[int, str]:
        return (id(self._registry), self._key)

    def retry_after(self, /, tokens: float = 1.0) -> float:
        """Seconds until ``tokens`` are available (0.0 if they are now)."""
        value = _tokens_value(tokens)
        return ns_to_secs(
            self._registry._with_entry(
                self._key,
                lambda entry, now: entry.limits.wait_ns(
                    entry.tat, now, entry.limits.cost_ns(value)
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
        from shared.resilience._waiting import _acquire

        _acquire(self, tokens, timeout)

    def acquire_async(self, /, tokens: float = 1.0, timeout: float | None = None) -> Any:
        """Awaitable: waits until ``tokens`` are granted (see ``TokenBucket.acquire_async``)."""
        from shared.resilience._waiting import _acquire_async

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

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, KeyedLimiter):
            return NotImplemented
        return self._registry is other._registry and self._key == other._key

    def __hash__(self) -> int:
        return hash((id(self._registry), self._key))

    def __repr__(self) -> str:
        return f"KeyedLimiter(key={self._key!r})"

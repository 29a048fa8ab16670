"""Token-bucket rate limiting (the document's "Rate Limiting" section).

``RateLimitConfig`` is taken by the in-process limiters here and by the
Redis-backed limiter. ``TokenBucket`` and ``RateLimiterRegistry`` are GCRA
cores (native when the extension is installed) with the waiting layer
(blocking, async, decorator) on top.
"""

from __future__ import annotations

import functools
import inspect
import math
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar, overload

from shared import _instances, _validation
from shared._backend import core
from shared._env import EnvReader
from shared.resilience._waiting import _acquire as _acquire
from shared.resilience._waiting import _acquire_async as _acquire_async
from shared.resilience._waiting import _WaitQueue

__all__ = [
    "KeyedLimiter",
    "RateLimitConfig",
    "RateLimiterRegistry",
    "TokenBucket",
    "rate_limited",
]


@dataclass(frozen=True)
class RateLimitConfig:
    """A token bucket: capacity ``burst_size``, refilled continuously at ``tokens_per_second``.

    Args:
        tokens_per_second: the refill rate, from 1e-9 (one token per 31.7 years)
            to 1e9 (one per nanosecond): the limiters count in integer
            nanoseconds, and a rate outside that range would be rounded.
        burst_size: the capacity, >= 1; a full refill (``burst_size /
            tokens_per_second``) takes at most 1e9 seconds. Default: one second
            of tokens, ``max(1, ceil(tokens_per_second))``.
        initial_tokens: tokens at creation, 0 <= initial_tokens <= burst_size.
            Default: a full bucket.

    Invalid values raise ``ValueError`` or ``TypeError`` naming the field.
    """

    tokens_per_second: float = 10.0
    burst_size: float | None = None
    initial_tokens: float | None = None

    def __post_init__(self) -> None:
        rate = _validation.positive_finite(
            "tokens_per_second", self.tokens_per_second, _validation.MAX_RATE
        )
        burst: Any = float(max(1, math.ceil(rate))) if self.burst_size is None else self.burst_size
        initial = burst if self.initial_tokens is None else self.initial_tokens
        rate, burst, initial = _validation.bucket_limits(self.tokens_per_second, burst, initial)
        object.__setattr__(self, "tokens_per_second", rate)
        object.__setattr__(self, "burst_size", burst)
        object.__setattr__(self, "initial_tokens", initial)

    @classmethod
    def from_env(
        cls, environ: Mapping[str, str] | None = None, *, prefix: str = "", **fields: Any
    ) -> RateLimitConfig:
        """A config from environment variables (the document's "Environment Variables").

        Reads ``RATE_LIMIT_REQUESTS_PER_SECOND`` (``tokens_per_second``),
        ``RATE_LIMIT_BURST_SIZE`` and, beyond the document,
        ``RATE_LIMIT_INITIAL_TOKENS``, each with ``prefix`` in front.

        Args:
            environ: the variables (default ``os.environ``).
            prefix: prepended to every variable name.
            fields: the config's fields as keywords, used where a variable is
                unset or blank.

        A value that does not parse or that the config rejects raises
        ``shared.config.EnvConfigError`` (a ``ValueError``) naming the variable.
        """
        env = EnvReader(environ, prefix)
        values = dict(fields)
        for variable, field in _RATE_LIMIT_ENV:
            value = env.get_float(variable, field)
            if value is not None:
                values[field] = value
        return env.build(cls, values)


_RATE_LIMIT_ENV = (
    ("RATE_LIMIT_REQUESTS_PER_SECOND", "tokens_per_second"),
    ("RATE_LIMIT_BURST_SIZE", "burst_size"),
    ("RATE_LIMIT_INITIAL_TOKENS", "initial_tokens"),
)


_DEFAULT_CONFIG = RateLimitConfig()

if TYPE_CHECKING:
    # The cores as users see them. The backend (native or pure Python) is chosen
    # at import time, so the classes below are declarations for type checkers
    # only: at run time the bases are the chosen backend's classes.
    from typing import Self

    from shared._pure.clock import NanosecondClock

    class Reservation:
        """The ticket of a reservation (``reserve`` returns it, ``cancel_reservation`` takes it)."""

        @property
        def tokens(self) -> float: ...

    class _BucketAPI:
        """What every in-process limiter answers (a bucket, or a registry's handle)."""

        def try_acquire(self, tokens: float = 1.0) -> bool: ...
        def reserve(
            self, tokens: float = 1.0, timeout: float | None = None
        ) -> tuple[float, Reservation]: ...
        def cancel_reservation(self, tokens: float, ticket: Reservation) -> bool: ...
        def retry_after(self, tokens: float = 1.0) -> float: ...
        @property
        def available_tokens(self) -> float: ...
        def reset(self) -> None: ...
        @property
        def config(self) -> RateLimitConfig: ...
        @property
        def clock(self) -> NanosecondClock | None: ...

    class _CoreTokenBucket(_BucketAPI):
        def __new__(
            cls, config: RateLimitConfig, *, clock: NanosecondClock | None = None
        ) -> Self: ...
        def counters(self) -> dict[str, int]: ...

    class KeyedLimiter(_BucketAPI):
        """The limiter ``RateLimiterRegistry.get_limiter`` returns (the ``TokenBucket`` API)."""

        def acquire(self, tokens: float = 1.0, timeout: float | None = None) -> None: ...
        def acquire_async(
            self, tokens: float = 1.0, timeout: float | None = None
        ) -> Awaitable[None]: ...
        @property
        def key(self) -> str: ...
        @property
        def registry(self) -> RateLimiterRegistry: ...
        def __eq__(self, other: object) -> bool: ...
        def __hash__(self) -> int: ...

    class _CoreRegistry:
        def __new__(
            cls,
            default_config: RateLimitConfig = ...,
            *,
            max_keys: int = 1_000_000,
            idle_ttl: float = 60.0,
            clock: NanosecondClock | None = None,
            on_full: str = "evict",
        ) -> Self: ...
        def get_limiter(self, key: str) -> KeyedLimiter: ...
        def set_limiter(self, key: str, config: RateLimitConfig) -> KeyedLimiter: ...
        def remove_limiter(self, key: str) -> bool: ...
        def reset_all(self) -> None: ...
        def try_acquire(self, key: str, tokens: float = 1.0) -> bool: ...
        def decision_counts(self) -> tuple[int, int]: ...
        def counters(self) -> dict[str, int]: ...
        def __len__(self) -> int: ...
        def __contains__(self, key: object) -> bool: ...
        @property
        def on_full(self) -> str: ...
        @property
        def default_config(self) -> RateLimitConfig: ...
        @property
        def max_keys(self) -> int: ...
        @property
        def idle_ttl(self) -> float: ...
        @property
        def clock(self) -> NanosecondClock | None: ...

else:
    _CoreTokenBucket = core.TokenBucket
    _CoreRegistry = core.RateLimiterRegistry
    KeyedLimiter = core.KeyedLimiter


class TokenBucket(_CoreTokenBucket):
    """A token bucket: at most ``burst_size`` tokens, refilled continuously at
    ``tokens_per_second``, shared safely by threads and tasks.

    Args:
        config: the bucket's ``RateLimitConfig``.
        clock: keyword-only; an object with ``now_ns()`` (such as
            ``shared.testing.ManualClock``) to read instead of the monotonic
            clock. If it also has ``sleep``/``sleep_async``, waits use them.
        name: keyword-only; the ``limiter`` label of its metrics (default
            ``"token_bucket"``; buckets sharing a name are summed).

    ``try_acquire``, ``retry_after``, ``available_tokens`` and ``reset`` are
    single native calls. ``tokens`` must be a number (not a bool: else
    ``TypeError``), finite, > 0 and <= ``burst_size`` (else ``ValueError``).

    ``reserve(tokens, timeout)`` returns ``(wait, ticket)``;
    ``cancel_reservation(tokens, ticket)`` gives the reservation back if
    nothing was granted or reserved since, and says whether it did. A ticket
    is cancelled once, with the tokens it reserved: a second cancellation,
    other tokens or another limiter's ticket raise ``ValueError``.
    """

    __slots__ = ("__weakref__", "_waiters", "name")
    name: str

    def __new__(
        cls, config: RateLimitConfig, *, clock: Any | None = None, name: str | None = None
    ) -> TokenBucket:
        bucket: TokenBucket = super().__new__(cls, config, clock=clock)
        return bucket

    def __init__(
        self, config: RateLimitConfig, *, clock: Any | None = None, name: str | None = None
    ) -> None:
        self._waiters = _WaitQueue()
        self.name = _limiter_name(name, "token_bucket")
        _instances.token_buckets.add(self)

    def acquire(self, tokens: float = 1.0, timeout: float | None = None) -> None:
        """Blocks until ``tokens`` are granted.

        The tokens are reserved at once and the caller sleeps exactly until they
        are due (no polling). When that wait would exceed ``timeout`` seconds,
        raises ``RateLimitExceeded`` at once, with the wait as ``retry_after``,
        and reserves nothing. An interrupted sleep gives the reservation back
        unless others have reserved after it.
        """
        _acquire(self, tokens, timeout)

    def acquire_async(self, tokens: float = 1.0, timeout: float | None = None) -> Awaitable[None]:
        """Awaitable ``acquire``: waiters are served first come, first served.

        Only the waiter at the head of the queue sleeps (until its tokens are
        due); the others wait for their turn. A waiter that is cancelled or
        times out consumes nothing.
        """
        return _acquire_async(self, tokens, timeout)

    def __repr__(self) -> str:
        return f"TokenBucket({self.config!r})"


class RateLimiterRegistry(_CoreRegistry):
    """One token bucket per key (a user, an API key, ...), kept in native memory.

    Args:
        default_config: the configuration of keys without their own.
        max_keys: keyword-only; at most this many keys (default 1,000,000,
            about 75 MB when full).
        idle_ttl: keyword-only; with ``on_full="reject"``, seconds a bucket
            must have been full before its key may be evicted (default 60).
        clock: keyword-only; as for ``TokenBucket``.
        on_full: keyword-only; what a full registry does with a new key.
            ``"evict"`` (the default) forgets the least recently used key: its
            bucket has had the longest to refill, so forgetting it grants the
            least, and a new key is never refused. ``"reject"`` evicts only
            keys whose bucket has been full for ``idle_ttl`` (a full bucket
            forgets nothing) and otherwise raises ``RateLimitExceeded`` for the
            new key, with the time until one can be evicted.

    ``try_acquire(key, tokens)``, ``acquire(key, tokens, timeout)`` and
    ``acquire_async(key, tokens, timeout)`` look the key up and decide in one
    call, with the semantics of ``get_limiter(key).try_acquire(tokens)`` and
    so on. Every lookup (these, ``get_limiter`` and a handle's calls) counts
    as a use of the key for eviction. ``decision_counts()`` is ``(granted,
    rejected)`` over all keys: ``try_acquire`` outcomes (an async waiter's
    retries included) and reservations made or refused (``acquire``).
        name: keyword-only; the ``limiter`` label of its metrics (default
            ``"rate_limiter_registry"``). Metrics count the decisions of all
            keys together: keys never become label values.

    ``get_limiter(key)`` returns a light handle with the ``TokenBucket`` API;
    handles of one key share one bucket, even when created concurrently, and
    compare and hash equal. Keys
    given their own configuration by ``set_limiter`` are never evicted. A key
    is a ``str`` of valid text (a lone surrogate such as ``'\\ud800'`` raises
    ``ValueError``; ``in`` answers False for it).

    ``remove_limiter(key)`` forgets a key and its own configuration, but not
    the tokens it spent: until its bucket would have refilled, handles still
    in use and a new ``get_limiter(key)`` continue from that state (under the
    default configuration), so removing a key in use never grants more than
    the limit. ``set_limiter`` and ``reset`` do give a fresh bucket.
    """

    __slots__ = ("__weakref__", "_waiters", "name")
    name: str

    def __new__(
        cls,
        default_config: RateLimitConfig = _DEFAULT_CONFIG,
        *,
        max_keys: int = 1_000_000,
        idle_ttl: float = 60.0,
        clock: Any | None = None,
        on_full: str = "evict",
        name: str | None = None,
    ) -> RateLimiterRegistry:
        _validation.int_in_range("max_keys", max_keys, 1, _MAX_KEYS)
        _validation.non_negative_finite("idle_ttl", idle_ttl)
        _validation.on_full(on_full)
        registry: RateLimiterRegistry = super().__new__(
            cls,
            default_config,
            max_keys=max_keys,
            idle_ttl=idle_ttl,
            clock=clock,
            on_full=on_full,
        )
        return registry

    def __init__(
        self,
        default_config: RateLimitConfig = _DEFAULT_CONFIG,
        *,
        max_keys: int = 1_000_000,
        idle_ttl: float = 60.0,
        clock: Any | None = None,
        on_full: str = "evict",
        name: str | None = None,
    ) -> None:
        self._waiters = _WaitQueue()
        self.name = _limiter_name(name, "rate_limiter_registry")
        _instances.rate_limiter_registries.add(self)

    def acquire(self, key: str, tokens: float = 1.0, timeout: float | None = None) -> None:
        """Blocks until ``tokens`` of ``key``'s bucket are granted (see ``TokenBucket.acquire``)."""
        _acquire(self.get_limiter(key), tokens, timeout)

    def acquire_async(
        self, key: str, tokens: float = 1.0, timeout: float | None = None
    ) -> Awaitable[None]:
        """Awaitable ``acquire`` of ``key``'s bucket (see ``TokenBucket.acquire_async``)."""
        return _acquire_async(self.get_limiter(key), tokens, timeout)

    def len(self) -> int:
        """The number of keys held (also ``len(registry)``)."""
        return len(self)

    def __repr__(self) -> str:
        return f"RateLimiterRegistry({self.default_config!r}, keys={len(self)})"


_MAX_KEYS = 2**32 - 2


def _limiter_name(name: object, default: str) -> str:
    if name is None:
        return default
    if not isinstance(name, str):
        raise TypeError(f"name must be a str or None, got {type(name).__name__}")
    if not name:
        raise ValueError("name must not be empty")
    return name


# -- waiting: in the leaf module ``_waiting``; the native ``KeyedLimiter``
# looks ``_acquire`` and ``_acquire_async`` up here (re-exported). ------------

# -- decorator ---------------------------------------------------------------

_F = TypeVar("_F", bound=Callable[..., Any])


@overload
def rate_limited(limiter: _F, /) -> _F: ...


@overload
def rate_limited(
    limiter: TokenBucket | KeyedLimiter | RateLimitConfig | None = None,
    *,
    tokens: float = 1.0,
    timeout: float | None = None,
) -> Callable[[_F], _F]: ...


@overload
def rate_limited(
    limiter: RateLimiterRegistry,
    *,
    tokens: float = 1.0,
    timeout: float | None = None,
    key: Callable[..., str],
) -> Callable[[_F], _F]: ...


def rate_limited(
    limiter: Any = None,
    *,
    tokens: float = 1.0,
    timeout: float | None = None,
    key: Callable[..., str] | None = None,
) -> Any:
    """Rate-limits a function or coroutine function: each call first acquires ``tokens``.

    Args:
        limiter: a ``TokenBucket`` (or a registry's limiter) to share, a
            ``RateLimitConfig`` for a new bucket, or a ``RateLimiterRegistry``
            together with ``key``. Default: a new bucket with ``RateLimitConfig()``.
            ``@rate_limited`` without parentheses works too.
        tokens: tokens per call.
        timeout: the longest wait in seconds; ``RateLimitExceeded`` is raised at
            once when the wait would be longer (``0`` fails fast). ``None`` waits.
        key: with a registry, ``key(*args, **kwargs)`` names the caller's bucket.

    The wrapper's ``limiter`` attribute is the bucket or registry it uses.
    """
    if callable(limiter) and not isinstance(
        limiter, (core.TokenBucket, core.KeyedLimiter, core.RateLimiterRegistry)
    ):
        return rate_limited()(limiter)
    _validation.positive_finite("tokens", tokens, math.inf)
    _validation.timeout(timeout)
    source: Any
    if limiter is None:
        source = TokenBucket(_DEFAULT_CONFIG)
    elif isinstance(limiter, RateLimitConfig):
        source = TokenBucket(limiter)
    elif isinstance(limiter, core.RateLimiterRegistry):
        if key is None:
            raise TypeError(
                "key must be given with a RateLimiterRegistry: key(*args, **kwargs) -> str"
            )
        source = limiter
    elif isinstance(limiter, (core.TokenBucket, core.KeyedLimiter)):
        source = limiter
    else:
        raise TypeError(
            "limiter must be a TokenBucket, a RateLimiterRegistry or a RateLimitConfig, "
            f"got {type(limiter).__name__}"
        )
    if key is not None and not isinstance(source, core.RateLimiterRegistry):
        raise TypeError("key is only used with a RateLimiterRegistry")

    def limiter_for(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        if key is None:
            return source
        return source.get_limiter(key(*args, **kwargs))

    def decorate(func: _F) -> _F:
        if inspect.iscoroutinefunction(func):

            @functools.wraps(func)
            async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                await limiter_for(args, kwargs).acquire_async(tokens, timeout)
                return await func(*args, **kwargs)

            async_wrapper.limiter = source  # type: ignore[attr-defined]
            return async_wrapper  # type: ignore[return-value]

        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            limiter_for(args, kwargs).acquire(tokens, timeout)
            return func(*args, **kwargs)

        wrapper.limiter = source  # type: ignore[attr-defined]
        return wrapper  # type: ignore[return-value]

    return decorate

"""Redis-backed token buckets: one limit shared by every replica of a service.

The same API and semantics as the in-process ``TokenBucket`` and
``RateLimiterRegistry``, with the state in Redis:

- GCRA (the theoretical arrival time) in one Lua script per operation, so an
  acquire is one round trip (``EVALSHA``; the script is loaded on first use
  and again after ``NOSCRIPT``) and atomic across every client.
- Redis ``TIME`` is the clock, the one clock all replicas share.
- A key lives only while its bucket is not full: its expiry is the moment the
  bucket would be full again, so idle keys disappear by themselves.
- ``on_unavailable`` decides what happens when Redis cannot be reached:
  ``"fail_closed"`` (default) raises ``RateLimiterUnavailableError`` naming the
  server, ``"fail_open"`` grants everything, ``"local"`` falls back to an
  in-process ``TokenBucket`` with the same config. After a failure the server
  is tried again every ``reconnect_interval`` seconds, and the limiter returns
  to Redis by itself once it answers.

``RedisTokenBucket`` / ``RedisRateLimiterRegistry`` take a ``redis.Redis``;
``AsyncRedisTokenBucket`` / ``AsyncRedisRateLimiterRegistry`` take a
``redis.asyncio.Redis`` and their methods are coroutines. ``redis`` is an
optional dependency (``pip install shared[redis]``), used only through the
client you pass in.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import inspect
import logging
import math
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

from shared import _instances, _validation
from shared.resilience.exceptions import RateLimiterUnavailableError, RateLimitExceeded
from shared.resilience.rate_limiter import (
    RateLimitConfig,
    RateLimiterRegistry,
    TokenBucket,
    _limiter_name,
)

__all__ = [
    "DEFAULT_KEY_PREFIX",
    "AsyncRedisRateLimiterRegistry",
    "AsyncRedisTokenBucket",
    "RedisRateLimiterRegistry",
    "RedisTokenBucket",
]

DEFAULT_KEY_PREFIX = "shared:ratelimit:"
POLICIES = ("fail_closed", "fail_open", "local")

logger = logging.getLogger(__name__)

# The ``limiter`` label of the in-process limiters the ``local`` policy falls back
# to while Redis is unreachable (their decisions are in the metrics under it).
LOCAL_FALLBACK_NAME = "redis_local_fallback"

# KEYS[1]: the bucket. ARGV: mode ("acquire" | "peek" | "refund"), then in
# microseconds: tolerance (burst_size / rate), cost (tokens / rate), the debt of
# a bucket that does not exist yet ((burst_size - initial_tokens) / rate), and
# the longest wait the caller accepts (negative: any).
# The state is "<seconds> <microseconds> <debt>": the TIME of the write and
# debt = TAT - that time. Keeping the absolute time in integers and the debt
# small keeps the arithmetic exact to far below a microsecond (an absolute TAT
# in one double would round to 0.25 us at every write).
# A state the script did not write (another type, or a string it cannot parse
# into a finite debt below MAX_DEBT_US) is never trusted: the reply is
# "E <what was found>" and the key is left alone.
# Returns "<granted> <wait_us> <debt_us>" as one string: cheaper to parse than
# an array, and Redis would truncate Lua numbers to integers.
# Needs Redis >= 5 (effects replication, so TIME may precede a write).
# The state a script trusts: "<seconds> <microseconds> <debt>" with integer
# seconds and microseconds (< 1e6), a finite debt in [0, MAX_DEBT_US], and a
# debt at `time` (Redis TIME) of at most MAX_DEBT_US (not written far in the
# future). Returns the debt at `time` (>= 0), or nil and what was found.
_TRUSTED_STATE = """
local MAX_DEBT_US = 4e15
local function debt_of(key, time)
  local state = redis.pcall('GET', key)
  if type(state) == 'table' and state.err then
    return nil, 'holds a Redis ' .. redis.call('TYPE', key).ok .. ', not a rate-limiter state'
  end
  if not state then return false end
  local seconds, micros, written = string.match(state, '^(%d+) (%d+) (%S+)$')
  seconds, micros, written = tonumber(seconds), tonumber(micros), tonumber(written)
  if not (seconds and micros and written) or micros >= 1000000
      or not (written >= 0 and written <= MAX_DEBT_US) then
    return nil, 'holds ' .. string.format('%q', string.sub(state, 1, 40)) ..
      ', not a rate-limiter state'
  end
  local debt = (seconds - time[1]) * 1000000 + (micros - time[2]) + written
  if not (debt <= MAX_DEBT_US) then
    return nil, 'holds a state written in the future (' .. seconds .. ' s)'
  end
  return math.max(0, debt)
end
"""

GCRA_SCRIPT = (
    _TRUSTED_STATE
    + """
local key, mode = KEYS[1], ARGV[1]
local tolerance, cost = tonumber(ARGV[2]), tonumber(ARGV[3])
local initial_debt, max_wait = tonumber(ARGV[4]), tonumber(ARGV[5])

local time = redis.call('TIME')
local debt, found = debt_of(key, time)
if debt == nil then return 'E ' .. found end
if debt == false then debt = initial_debt end

local granted, wait = 0, 0
if mode == 'refund' then
  debt = math.max(0, debt - cost)
else
  wait = debt + cost - tolerance
  -- summed float costs may overshoot the tolerance by a rounding error
  if wait <= tolerance * 1e-9 then wait = 0 end
  if mode == 'peek' or (max_wait >= 0 and wait > max_wait) then
    return '0 ' .. wait .. ' ' .. debt
  end
  granted = 1
  debt = debt + cost
end

if debt > 0 then
  -- expires when the bucket would be full again
  redis.call('SET', key, time[1] .. ' ' .. time[2] .. ' ' .. debt, 'PX', math.ceil(debt / 1000))
else
  redis.call('DEL', key)
end
return granted .. ' ' .. wait .. ' ' .. debt
"""
)

# KEYS: candidate keys under this registry's namespace. Deletes only those that
# hold a state GCRA_SCRIPT would trust, so a key another application put there
# survives. Returns how many it deleted.
RESET_SCRIPT = (
    _TRUSTED_STATE
    + """
local time = redis.call('TIME')
local deleted = 0
for _, key in ipairs(KEYS) do
  if debt_of(key, time) then
    deleted = deleted + redis.call('DEL', key)
  end
end
return deleted
"""
)

# Every key a limiter writes is key_prefix + KEY_MARKER + key, and reset_all
# scans for exactly key_prefix + KEY_MARKER + "*": keys of other applications
# under the same prefix are never matched.
KEY_MARKER = "gcra:"

# The longest a Redis round trip of an async limiter may take by default
# (``command_timeout``), after which the failure policy applies.
DEFAULT_COMMAND_TIMEOUT = 1.0

_US = 1_000_000.0
_T = TypeVar("_T")


class _LocalBucket(Protocol):
    """The in-process ``TokenBucket`` API that the ``local`` fallback uses."""

    def try_acquire(self, tokens: float = 1.0) -> bool: ...
    def acquire(self, tokens: float = 1.0, timeout: float | None = None) -> Any: ...
    async def acquire_async(self, tokens: float = 1.0, timeout: float | None = None) -> Any: ...
    @property
    def available_tokens(self) -> float: ...
    def retry_after(self, tokens: float = 1.0) -> float: ...
    def reset(self) -> Any: ...


class _LocalRegistry(Protocol):
    """The in-process ``RateLimiterRegistry`` API that the ``local`` fallback uses."""

    def get_limiter(self, key: str) -> _LocalBucket: ...
    def set_limiter(self, key: str, config: RateLimitConfig) -> Any: ...
    def remove_limiter(self, key: str) -> Any: ...
    def reset_all(self) -> Any: ...


@dataclass(frozen=True)
class _Reply:
    granted: bool
    wait: float  # seconds
    debt_us: float

    @classmethod
    def parse(cls, raw: Any) -> _Reply:
        """The script's reply; ``_ForeignStateError`` when the key held no state of ours."""
        text = raw.decode() if isinstance(raw, bytes) else str(raw)
        if text.startswith("E "):
            raise _ForeignStateError(text[2:])
        granted, wait_us, debt_us = text.split()
        return cls(granted == "1", float(wait_us) / _US, float(debt_us))


class _ForeignStateError(Exception):
    """The bucket's Redis key holds something the script did not write."""


def _server_name(client: Any) -> str:
    kwargs = getattr(getattr(client, "connection_pool", None), "connection_kwargs", None)
    if not kwargs:
        return repr(client)
    if "path" in kwargs:
        return f"unix://{kwargs['path']}"
    host, port = kwargs.get("host", "localhost"), kwargs.get("port", 6379)
    return f"redis://{host}:{port}/{kwargs.get('db', 0)}"


def _check_client(client: Any, *, want_async: bool) -> None:
    execute = getattr(client, "execute_command", None)
    if execute is None or not hasattr(client, "register_script"):
        raise TypeError(f"client must be a redis-py client, got {type(client).__name__}")
    if inspect.iscoroutinefunction(execute) != want_async:
        if want_async:
            raise TypeError(
                "client must be a redis.asyncio.Redis; use RedisTokenBucket for redis.Redis"
            )
        raise TypeError(
            "client must be a redis.Redis; use AsyncRedisTokenBucket for redis.asyncio.Redis"
        )


def _check_config(config: Any) -> RateLimitConfig:
    if not isinstance(config, RateLimitConfig):
        raise TypeError(f"config must be a RateLimitConfig, got {type(config).__name__}")
    return config


def _check_key(name: str, key: Any) -> str:
    """A non-empty str (an empty ``key_prefix`` would put the limiter's keys, and
    what ``reset_all`` scans, at the top of the database)."""
    if not isinstance(key, str):
        raise TypeError(f"{name} must be a str, got {type(key).__name__}")
    if not key:
        raise ValueError(f"{name} must not be empty")
    return key


def _check_command_timeout(value: Any) -> float:
    return _validation.positive_at_most(
        "command_timeout", value, _validation.MAX_SECONDS, "the longest timeout"
    )


def _max_wait_us(timeout: float | None) -> float:
    """The script's max_wait for ``acquire(timeout)``: negative means no limit."""
    if timeout is None or _validation.number("timeout", timeout) == math.inf:
        return -1.0
    return _validation.non_negative_finite("timeout", timeout) * _US


class _Decisions:
    """The decisions Redis (or the fail_open policy) made for one limiter, for
    metrics; a registry's handles share their registry's."""

    __slots__ = ("_lock", "granted", "rejected", "waited_ns")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.granted = 0
        self.rejected = 0
        self.waited_ns = 0

    def decided(self, granted: bool, wait: float = 0.0) -> None:
        with self._lock:
            if granted:
                self.granted += 1
                self.waited_ns += round(wait * 1e9)
            else:
                self.rejected += 1

    def to_dict(self) -> dict[str, int]:
        with self._lock:
            return {"granted": self.granted, "rejected": self.rejected, "waited_ns": self.waited_ns}


class _Link:
    """One Redis server as the limiters see it: the client, the script, the policy
    and whether the server is currently considered unreachable.

    Shared by every bucket of a registry, so one outage is noticed once.
    """

    def __init__(
        self,
        client: Any,
        on_unavailable: str,
        reconnect_interval: float,
        *,
        is_async: bool,
        command_timeout: float = DEFAULT_COMMAND_TIMEOUT,
    ) -> None:
        import redis.exceptions  # the optional dependency, needed only with a client

        _check_client(client, want_async=is_async)
        if on_unavailable not in POLICIES:
            raise ValueError(f"on_unavailable must be one of {POLICIES}, got {on_unavailable!r}")
        self.client = client
        self.decisions = _Decisions()
        self.script: Any = client.register_script(GCRA_SCRIPT)
        # Deletes limiter states only (reset, remove_limiter, reset_all).
        self.delete_states: Any = client.register_script(RESET_SCRIPT)
        self.policy = on_unavailable
        self.reconnect_interval = _validation.non_negative_finite(
            "reconnect_interval", reconnect_interval
        )
        self.command_timeout = _check_command_timeout(command_timeout)
        self.server = _server_name(client)
        self.errors: tuple[type[BaseException], ...] = (
            redis.exceptions.ConnectionError,
            redis.exceptions.TimeoutError,
        )
        # Redis answered, but with an error for this key (a wrong type, a full
        # memory, ...): the policy applies to this call, the server stays "up".
        self.refusals: tuple[type[BaseException], ...] = (redis.exceptions.ResponseError,)
        self._retry_at = 0.0  # time.monotonic() before which Redis is not tried
        self._last_error = ""

    def should_try(self) -> bool:
        return time.monotonic() >= self._retry_at

    def failed(self, exc: BaseException | None) -> None:
        """Records an unreachable server (``exc``) or a skipped attempt (None);
        raises ``RateLimiterUnavailableError`` when failing closed."""
        if exc is not None:
            if not self._last_error:
                logger.warning(
                    "rate limiter: Redis at %s is unreachable (%s); policy %s",
                    self.server,
                    exc,
                    self.policy,
                )
            self._last_error = f"{type(exc).__name__}: {exc}"
            self._retry_at = time.monotonic() + self.reconnect_interval
        if self.policy == "fail_closed":
            raise self.unavailable() from exc

    def unavailable(self, exc: BaseException | None = None) -> RateLimiterUnavailableError:
        """The error naming the server and the cause (``exc``, else the last failure)."""
        wait = max(0.0, self._retry_at - time.monotonic())
        reason = f"{type(exc).__name__}: {exc}" if exc is not None else self._last_error
        reason = reason or "unreachable"
        if wait > 0:
            reason += f" (next attempt in {wait:.3f}s)"
        return RateLimiterUnavailableError(self.server, reason)

    def refused(self, redis_key: str, detail: str) -> None:
        """Redis answered for ``redis_key`` with something unusable: logged, then
        the policy applies to this call (``RateLimiterUnavailableError`` when
        failing closed). A state the limiter did not write is never trusted."""
        reason = f"key {redis_key!r} {detail}"
        logger.error("rate limiter: Redis at %s: %s; policy %s", self.server, reason, self.policy)
        if self.policy == "fail_closed":
            raise RateLimiterUnavailableError(self.server, reason)

    def succeeded(self) -> None:
        if self._last_error:
            logger.warning("rate limiter: Redis at %s is reachable again", self.server)
            self._last_error = ""


class _BucketBase:
    """What the sync and async buckets share: config, key, arguments, fallback."""

    _link: _Link
    # The in-process bucket of the ``local`` policy: created on first use, or
    # None if it was never needed (a registry's handles take it from the registry).
    _fallback: Callable[[], _LocalBucket]
    _existing_fallback: Callable[[], _LocalBucket | None]

    def _setup(self, config: RateLimitConfig, key: str, redis_key: str, link: _Link) -> None:
        self._config = config
        self._key = key
        self._redis_key = redis_key
        self._link = link
        burst = float(config.burst_size)  # type: ignore[arg-type]  # set by __post_init__
        initial = float(config.initial_tokens)  # type: ignore[arg-type]
        self._burst = burst
        self._emission_us = _US / config.tokens_per_second
        self._tolerance = repr(burst * self._emission_us)
        self._initial_debt = repr((burst - initial) * self._emission_us)
        self._local: _LocalBucket | None = None
        self._local_lock = threading.Lock()
        self._fallback = self._own_local_bucket
        self._existing_fallback = lambda: self._local

    def counters(self) -> dict[str, int]:
        """Decisions for metrics: ``granted`` and ``rejected`` by Redis (or granted by
        ``fail_open`` during an outage) and ``waited_ns``; a registry's handles
        count into their registry's. Decisions of the ``local`` fallback are the
        fallback limiter's (``limiter="redis_local_fallback"``)."""
        return self._link.decisions.to_dict()

    @property
    def config(self) -> RateLimitConfig:
        """The bucket's configuration."""
        return self._config

    @property
    def key(self) -> str:
        """The bucket's key (without the prefix)."""
        return self._key

    @property
    def redis_key(self) -> str:
        """The Redis key that holds the bucket's state."""
        return self._redis_key

    def __repr__(self) -> str:
        return f"{type(self).__name__}(key={self._key!r}, server={self._link.server!r})"

    def _cost_us(self, tokens: float) -> float:
        return (
            _validation.positive_at_most("tokens", tokens, self._burst, "burst_size")
            * self._emission_us
        )

    def _args(self, mode: str, cost_us: float, max_wait_us: float) -> list[str]:
        return [mode, self._tolerance, repr(cost_us), self._initial_debt, repr(max_wait_us)]

    def _available(self, reply: _Reply) -> float:
        return max(0.0, min(self._burst, self._burst - reply.debt_us / self._emission_us))

    def _exceeded(self, reply: _Reply) -> RateLimitExceeded:
        return RateLimitExceeded(reply.wait, f"rate limit exceeded for {self._key!r}")

    async def _wait_reserved(self, reply: _Reply, refund: Callable[[], Awaitable[None]]) -> None:
        """Sleeps until a granted reservation is due; a cancelled sleep refunds it."""
        if not reply.granted:
            raise self._exceeded(reply)
        if reply.wait > 0:
            try:
                await asyncio.sleep(reply.wait)
            except asyncio.CancelledError:
                _in_background(refund())  # the cancellation does not wait for Redis
                raise

    def _own_local_bucket(self) -> _LocalBucket:
        with self._local_lock:
            if self._local is None:
                self._local = TokenBucket(self._config, name=LOCAL_FALLBACK_NAME)
            return self._local

    def _fallback_bucket(self) -> _LocalBucket | None:
        """The bucket to use while Redis is unreachable; None when failing open."""
        return self._fallback() if self._link.policy == "local" else None

    def _reset_local(self) -> None:
        local = self._existing_fallback()
        if local is not None:
            local.reset()


class RedisTokenBucket(_BucketBase):
    """A token bucket whose state lives in Redis, shared by every process using ``key``.

    Args:
        config: the bucket; every process sharing the key must use the same one.
        client: a ``redis.Redis`` (sync) client. Its own retries and timeouts
            apply before the limiter considers Redis unreachable: give it short
            ``socket_timeout`` / ``socket_connect_timeout`` and few retries.
        key: the bucket's name (e.g. a user id), not empty; stored at
            ``key_prefix + "gcra:" + key`` (``redis_key``).
        key_prefix: namespace of the keys in Redis, not empty.
        on_unavailable: ``"fail_closed"``, ``"fail_open"`` or ``"local"``.
        reconnect_interval: seconds between attempts to reach Redis after a failure.
        name: the ``limiter`` label of its metrics (default ``"redis_token_bucket"``).
    """

    def __init__(
        self,
        config: RateLimitConfig,
        client: Any,
        key: str,
        *,
        key_prefix: str = DEFAULT_KEY_PREFIX,
        on_unavailable: str = "fail_closed",
        reconnect_interval: float = 1.0,
        name: str | None = None,
    ) -> None:
        key = _check_key("key", key)
        key_prefix = _check_key("key_prefix", key_prefix)
        link = _Link(client, on_unavailable, reconnect_interval, is_async=False)
        self._setup(_check_config(config), key, key_prefix + KEY_MARKER + key, link)
        self.name = _limiter_name(name, "redis_token_bucket")
        _instances.redis_limiters.add(self)

    def _run(self, mode: str, cost_us: float, max_wait_us: float = 0.0) -> _Reply | None:
        """One script call; None when Redis is unreachable and the policy is not fail_closed."""
        link = self._link
        if not link.should_try():
            link.failed(None)
            return None
        try:
            raw = link.script(keys=[self._redis_key], args=self._args(mode, cost_us, max_wait_us))
        except link.errors as exc:
            link.failed(exc)
            return None
        except link.refusals as exc:
            link.refused(self._redis_key, f"was refused: {exc}")
            return None
        link.succeeded()
        try:
            return _Reply.parse(raw)
        except _ForeignStateError as exc:
            link.refused(self._redis_key, str(exc))
            return None

    def _refund(self, cost_us: float) -> None:
        # Best effort: an unreachable server keeps the reservation until it expires.
        with contextlib.suppress(RateLimiterUnavailableError):
            self._run("refund", cost_us)

    def try_acquire(self, tokens: float = 1.0) -> bool:
        """Takes ``tokens`` if they are available now; never waits. One round trip."""
        reply = self._run("acquire", self._cost_us(tokens))
        if reply is None:
            local = self._fallback_bucket()
            if local is None:
                self._link.decisions.decided(True)  # fail_open
                return True
            return local.try_acquire(tokens)
        self._link.decisions.decided(reply.granted)
        return reply.granted

    def acquire(self, tokens: float = 1.0, timeout: float | None = None) -> None:
        """Waits until ``tokens`` are granted. When the wait would exceed ``timeout``
        seconds, raises ``RateLimitExceeded(retry_after)`` at once.

        The tokens are reserved in the same round trip (waiters are served in the
        order Redis saw them); an interrupted wait gives them back.
        """
        cost_us = self._cost_us(tokens)
        reply = self._run("acquire", cost_us, _max_wait_us(timeout))
        if reply is None:
            local = self._fallback_bucket()
            if local is not None:
                local.acquire(tokens, timeout)
            else:
                self._link.decisions.decided(True)  # fail_open
            return
        self._link.decisions.decided(reply.granted, reply.wait)
        if not reply.granted:
            raise self._exceeded(reply)
        if reply.wait > 0:
            try:
                time.sleep(reply.wait)
            except BaseException:
                self._refund(cost_us)
                raise

    async def acquire_async(self, tokens: float = 1.0, timeout: float | None = None) -> None:
        """``acquire`` for coroutines: the round trip runs in a worker thread, the
        wait is an ``asyncio.sleep``; a cancelled waiter gives its tokens back."""
        cost_us = self._cost_us(tokens)
        max_wait_us = _max_wait_us(timeout)
        reply = await _reserve(
            asyncio.to_thread(self._run, "acquire", cost_us, max_wait_us),
            lambda: asyncio.to_thread(self._refund, cost_us),
        )
        if reply is None:
            local = self._fallback_bucket()
            if local is not None:
                await local.acquire_async(tokens, timeout)
            else:
                self._link.decisions.decided(True)  # fail_open
            return
        self._link.decisions.decided(reply.granted, reply.wait)
        await self._wait_reserved(reply, lambda: asyncio.to_thread(self._refund, cost_us))

    @property
    def available_tokens(self) -> float:
        """Tokens available now, in [0, burst_size]. One round trip."""
        reply = self._run("peek", 0.0)
        if reply is None:
            local = self._fallback_bucket()
            return self._burst if local is None else local.available_tokens
        return self._available(reply)

    def retry_after(self, tokens: float = 1.0) -> float:
        """Seconds until ``tokens`` would be granted (0 if now). One round trip."""
        reply = self._run("peek", self._cost_us(tokens))
        if reply is None:
            local = self._fallback_bucket()
            return 0.0 if local is None else local.retry_after(tokens)
        return reply.wait

    def reset(self) -> None:
        """Back to the initial state for every process (deletes the key, if it
        holds a limiter state: nothing else is ever deleted).

        Raises ``RateLimiterUnavailableError`` when Redis is unreachable, whatever the
        policy: a reset that did not happen must not pass silently.
        """
        self._reset_local()
        try:
            self._link.delete_states(keys=[self._redis_key])
        except self._link.errors as exc:
            raise self._link.unavailable(exc) from exc


class AsyncRedisTokenBucket(_BucketBase):
    """``RedisTokenBucket`` for a ``redis.asyncio.Redis`` client: the same
    arguments, and every method that talks to Redis is a coroutine
    (``await bucket.try_acquire()``, ``await bucket.available_tokens``).

    One more argument, ``command_timeout`` (seconds, default 1.0): no call waits
    longer than that for Redis (``acquire(timeout=t)`` waits at most ``t`` when
    it is shorter); a late answer counts as an unreachable server and the
    failure policy applies. Cancelling a call returns at once; a round trip
    still in flight finishes in the background and gives back what it granted.
    """

    def __init__(
        self,
        config: RateLimitConfig,
        client: Any,
        key: str,
        *,
        key_prefix: str = DEFAULT_KEY_PREFIX,
        on_unavailable: str = "fail_closed",
        reconnect_interval: float = 1.0,
        command_timeout: float = DEFAULT_COMMAND_TIMEOUT,
        name: str | None = None,
    ) -> None:
        key = _check_key("key", key)
        key_prefix = _check_key("key_prefix", key_prefix)
        link = _Link(
            client,
            on_unavailable,
            reconnect_interval,
            is_async=True,
            command_timeout=command_timeout,
        )
        self._setup(_check_config(config), key, key_prefix + KEY_MARKER + key, link)
        self.name = _limiter_name(name, "redis_token_bucket")
        _instances.redis_limiters.add(self)

    async def _run(
        self,
        mode: str,
        cost_us: float,
        max_wait_us: float = 0.0,
        time_limit: float | None = None,
    ) -> _Reply | None:
        """One script call bounded by ``time_limit`` (default ``command_timeout``);
        None when Redis is unreachable or late and the policy is not fail_closed.

        The caller is never held beyond the bound, nor after it is cancelled: a
        round trip still in flight finishes in the background, and tokens it
        granted are given back then.
        """
        link = self._link
        if not link.should_try():
            link.failed(None)
            return None
        limit = link.command_timeout if time_limit is None else time_limit
        call = asyncio.ensure_future(
            link.script(keys=[self._redis_key], args=self._args(mode, cost_us, max_wait_us))
        )
        try:
            done, _ = await asyncio.wait((call,), timeout=limit)
        except asyncio.CancelledError:
            self._settle_later(call, mode, cost_us)
            raise
        if not done:
            self._settle_later(call, mode, cost_us)
            link.failed(builtins.TimeoutError(f"no reply within command_timeout={limit:g}s"))
            return None
        try:
            raw = call.result()
        except link.errors as exc:
            link.failed(exc)
            return None
        except link.refusals as exc:
            link.refused(self._redis_key, f"was refused: {exc}")
            return None
        link.succeeded()
        try:
            return _Reply.parse(raw)
        except _ForeignStateError as exc:
            link.refused(self._redis_key, str(exc))
            return None

    def _settle_later(self, call: asyncio.Future[Any], mode: str, cost_us: float) -> None:
        """Lets an abandoned round trip finish; gives back what it granted."""

        def settle(finished: asyncio.Future[Any]) -> None:
            if finished.cancelled() or finished.exception() is not None or mode != "acquire":
                return
            try:
                granted = _Reply.parse(finished.result()).granted
            except _ForeignStateError:
                return
            if granted:
                _in_background(self._refund(cost_us))

        call.add_done_callback(settle)

    async def _refund(self, cost_us: float) -> None:
        with contextlib.suppress(RateLimiterUnavailableError):
            await self._run("refund", cost_us)

    async def try_acquire(self, tokens: float = 1.0) -> bool:
        """Takes ``tokens`` if they are available now; never waits. One round trip."""
        reply = await self._run("acquire", self._cost_us(tokens))
        if reply is None:
            local = self._fallback_bucket()
            if local is None:
                self._link.decisions.decided(True)  # fail_open
                return True
            return local.try_acquire(tokens)
        self._link.decisions.decided(reply.granted)
        return reply.granted

    async def acquire(self, tokens: float = 1.0, timeout: float | None = None) -> None:
        """Waits until ``tokens`` are granted; raises ``RateLimitExceeded(retry_after)``
        at once when the wait would exceed ``timeout``. Waiters are served in
        the order Redis saw them; a cancelled waiter gives its tokens back."""
        cost_us = self._cost_us(tokens)
        max_wait_us = _max_wait_us(timeout)
        reply = await self._run(
            "acquire", cost_us, max_wait_us, _round_trip_limit(self._link, timeout)
        )
        if reply is None:
            local = self._fallback_bucket()
            if local is not None:
                await local.acquire_async(tokens, timeout)
            else:
                self._link.decisions.decided(True)  # fail_open
            return
        self._link.decisions.decided(reply.granted, reply.wait)
        await self._wait_reserved(reply, lambda: self._refund(cost_us))

    async def acquire_async(self, tokens: float = 1.0, timeout: float | None = None) -> None:
        """The same as ``acquire`` (the in-process bucket's name for it)."""
        await self.acquire(tokens, timeout)

    @property
    def available_tokens(self) -> Awaitable[float]:
        """Tokens available now, in [0, burst_size]: ``await bucket.available_tokens``."""
        return self._available_tokens()

    async def _available_tokens(self) -> float:
        reply = await self._run("peek", 0.0)
        if reply is None:
            local = self._fallback_bucket()
            return self._burst if local is None else local.available_tokens
        return self._available(reply)

    async def retry_after(self, tokens: float = 1.0) -> float:
        """Seconds until ``tokens`` would be granted (0 if now). One round trip."""
        reply = await self._run("peek", self._cost_us(tokens))
        if reply is None:
            local = self._fallback_bucket()
            return 0.0 if local is None else local.retry_after(tokens)
        return reply.wait

    async def reset(self) -> None:
        """Back to the initial state for every process; raises
        ``RateLimiterUnavailableError`` when Redis is unreachable, whatever the policy."""
        self._reset_local()
        await _bounded(self._link, self._link.delete_states(keys=[self._redis_key]))


# Tasks running in the background (refunds, abandoned round trips): kept here so
# they are not garbage-collected before they finish.
_BACKGROUND: set[asyncio.Future[Any]] = set()


def _in_background(work: Awaitable[Any]) -> None:
    task = asyncio.ensure_future(work)
    _BACKGROUND.add(task)
    task.add_done_callback(_BACKGROUND.discard)


async def _bounded(link: _Link, call: Awaitable[_T]) -> _T:
    """A round trip that must happen (reset, removal): within ``command_timeout``,
    else ``RateLimiterUnavailableError``, whatever the policy."""
    try:
        return await asyncio.wait_for(call, link.command_timeout)
    except link.errors as exc:
        raise link.unavailable(exc) from exc
    except builtins.TimeoutError as exc:  # wait_for's, not the client's (caught above)
        late = builtins.TimeoutError(f"no reply within command_timeout={link.command_timeout:g}s")
        raise link.unavailable(late) from exc


def _round_trip_limit(link: _Link, timeout: float | None) -> float:
    """How long ``acquire(timeout)`` waits for Redis: ``command_timeout``, or the
    call's own ``timeout`` when that is shorter (``0`` only refuses to wait for
    tokens, not for the answer)."""
    if timeout is None or timeout <= 0:
        return link.command_timeout
    return min(link.command_timeout, timeout)


async def _reserve(reservation: Awaitable[_T], refund: Callable[[], Awaitable[None]]) -> _T:
    """Awaits a reservation round trip; if the waiter is cancelled meanwhile, it
    returns at once and the round trip finishes in the background, giving back
    what it granted, so a cancelled waiter consumes nothing."""
    task = asyncio.ensure_future(reservation)
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:

        def settle(finished: asyncio.Future[_T]) -> None:
            if finished.cancelled() or finished.exception() is not None:
                return  # unreachable or failing closed: nothing was reserved
            reply = finished.result()
            if isinstance(reply, _Reply) and reply.granted:
                _in_background(refund())

        task.add_done_callback(settle)
        raise


_B = TypeVar("_B", RedisTokenBucket, AsyncRedisTokenBucket)


def _glob_escape(text: str) -> str:
    for special in "\\*?[]":
        text = text.replace(special, "\\" + special)
    return text


class _RegistryBase(Generic[_B]):
    """What the sync and async registries share: configs per key and the fallback."""

    _bucket_class: type[_B]

    def __init__(
        self,
        default_config: RateLimitConfig,
        client: Any,
        *,
        key_prefix: str = DEFAULT_KEY_PREFIX,
        on_unavailable: str = "fail_closed",
        reconnect_interval: float = 1.0,
        name: str | None = None,
        **link_options: Any,
    ) -> None:
        self._default_config = _check_config(default_config)
        self._key_prefix = _check_key("key_prefix", key_prefix)
        self._link = _Link(
            client,
            on_unavailable,
            reconnect_interval,
            is_async=self._bucket_class is AsyncRedisTokenBucket,
            **link_options,
        )
        self._configs: dict[str, RateLimitConfig] = {}
        self._local: _LocalRegistry | None = None
        self._local_lock = threading.Lock()
        self.name = _limiter_name(name, "redis_rate_limiter_registry")
        _instances.redis_limiters.add(self)

    def counters(self) -> dict[str, int]:
        """Decisions of all its keys together, for metrics (see ``RedisTokenBucket.counters``)."""
        return self._link.decisions.to_dict()

    @property
    def default_config(self) -> RateLimitConfig:
        """The config of every key without one of its own."""
        return self._default_config

    @property
    def key_prefix(self) -> str:
        """Namespace of this registry's keys in Redis."""
        return self._key_prefix

    def get_limiter(self, key: str) -> _B:
        """The bucket of ``key`` (no I/O: the state is in Redis, so every handle
        for one key, in every process, is the same limiter)."""
        key = _check_key("key", key)
        bucket = self._bucket_class.__new__(self._bucket_class)
        config = self._configs.get(key, self._default_config)
        bucket._setup(config, key, self._key_prefix + KEY_MARKER + key, self._link)
        bucket._fallback = lambda: self._local_registry().get_limiter(key)
        bucket._existing_fallback = lambda: (
            None if self._local is None else self._local.get_limiter(key)
        )
        return bucket

    def set_limiter(self, key: str, config: RateLimitConfig) -> _B:
        """Gives ``key`` its own config (in this process: set it in every replica)."""
        key = _check_key("key", key)
        self._configs[key] = _check_config(config)
        with self._local_lock:
            if self._local is not None:
                self._local.set_limiter(key, config)
        return self.get_limiter(key)

    def _forget(self, key: str) -> str:
        """Drops the local config of ``key``; returns its Redis key."""
        key = _check_key("key", key)
        self._configs.pop(key, None)
        with self._local_lock:
            if self._local is not None:
                self._local.remove_limiter(key)
        return self._key_prefix + KEY_MARKER + key

    def _scan_pattern(self) -> str:
        """Exactly this registry's keys: the prefix and the marker, glob-escaped."""
        return _glob_escape(self._key_prefix + KEY_MARKER) + "*"

    def _reset_local(self) -> None:
        with self._local_lock:
            if self._local is not None:
                self._local.reset_all()

    def _local_registry(self) -> _LocalRegistry:
        with self._local_lock:
            if self._local is None:
                local: _LocalRegistry = RateLimiterRegistry(
                    self._default_config, name=LOCAL_FALLBACK_NAME
                )
                for key, config in self._configs.items():
                    local.set_limiter(key, config)
                self._local = local
            return self._local


class RedisRateLimiterRegistry(_RegistryBase[RedisTokenBucket]):
    """Per-key Redis token buckets (``RateLimiterRegistry`` for many replicas).

    Args:
        default_config: the config of keys without one of their own.
        client: a ``redis.Redis`` (sync) client.
        key_prefix: namespace of the keys, not empty; ``reset_all`` deletes the
            limiter states under it and nothing else.
        on_unavailable: ``"fail_closed"``, ``"fail_open"`` or ``"local"`` (an
            in-process ``RateLimiterRegistry`` with the same configs).
        reconnect_interval: seconds between attempts to reach Redis after a failure.
        name: the ``limiter`` label of its metrics (default
            ``"redis_rate_limiter_registry"``): the decisions of all its keys are
            one series, keys never become label values.
    """

    _bucket_class = RedisTokenBucket

    def remove_limiter(self, key: str) -> None:
        """Forgets ``key``: its config here and its state in Redis."""
        redis_key = self._forget(key)
        try:
            self._link.delete_states(keys=[redis_key])
        except self._link.errors as exc:
            raise self._link.unavailable(exc) from exc

    def reset_all(self) -> None:
        """Deletes the state of every key of this registry: ``SCAN`` for
        ``key_prefix`` followed by the limiter's own marker, and a script that
        deletes only keys holding a limiter state. Other keys survive, even
        under the same prefix."""
        self._reset_local()
        client = self._link.client
        try:
            batch: list[Any] = []
            for redis_key in client.scan_iter(match=self._scan_pattern(), count=500):
                batch.append(redis_key)
                if len(batch) >= 500:
                    self._link.delete_states(keys=batch)
                    batch = []
            if batch:
                self._link.delete_states(keys=batch)
        except self._link.errors as exc:
            raise self._link.unavailable(exc) from exc


class AsyncRedisRateLimiterRegistry(_RegistryBase[AsyncRedisTokenBucket]):
    """``RedisRateLimiterRegistry`` for a ``redis.asyncio.Redis`` client:
    ``get_limiter`` and ``set_limiter`` do no I/O; ``remove_limiter`` and
    ``reset_all`` are coroutines. ``command_timeout`` bounds each round trip of
    its limiters, as for ``AsyncRedisTokenBucket``."""

    _bucket_class = AsyncRedisTokenBucket

    def __init__(
        self,
        default_config: RateLimitConfig,
        client: Any,
        *,
        key_prefix: str = DEFAULT_KEY_PREFIX,
        on_unavailable: str = "fail_closed",
        reconnect_interval: float = 1.0,
        command_timeout: float = DEFAULT_COMMAND_TIMEOUT,
        name: str | None = None,
    ) -> None:
        super().__init__(
            default_config,
            client,
            key_prefix=key_prefix,
            on_unavailable=on_unavailable,
            reconnect_interval=reconnect_interval,
            name=name,
            command_timeout=command_timeout,
        )

    async def remove_limiter(self, key: str) -> None:
        """Forgets ``key``: its config here and its state in Redis."""
        redis_key = self._forget(key)
        await _bounded(self._link, self._link.delete_states(keys=[redis_key]))

    async def reset_all(self) -> None:
        """Deletes the state of every key of this registry, and only those (see
        ``RedisRateLimiterRegistry.reset_all``). Each round trip (a SCAN page,
        a batch of deletions) is bounded by ``command_timeout``."""
        self._reset_local()
        link, cursor = self._link, 0
        while True:
            cursor, keys = await _bounded(
                link, link.client.scan(cursor, match=self._scan_pattern(), count=500)
            )
            if keys:
                await _bounded(link, link.delete_states(keys=keys))
            if not cursor:
                return

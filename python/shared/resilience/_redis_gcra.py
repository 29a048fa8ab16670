"""The I/O-free core of the Redis limiters: the Lua scripts, the arguments a
call sends, the parsing of the replies and the failure policy.

``RedisTokenBucket`` (blocking) and ``AsyncRedisTokenBucket`` (asyncio) are thin
clients over it: they only carry the arguments built here to Redis and hand
what came back (a reply or an exception) to ``FailurePolicy.settle``. Nothing
here talks to Redis, sleeps or imports ``redis``, so all of it is tested
without a server.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from shared import _validation
from shared.resilience.exceptions import RateLimiterUnavailableError, RateLimitExceeded

__all__ = [
    "DEFAULT_COMMAND_TIMEOUT",
    "DEFAULT_KEY_PREFIX",
    "GCRA_SCRIPT",
    "KEY_MARKER",
    "POLICIES",
    "RESET_SCRIPT",
    "BucketMath",
    "Decisions",
    "FailurePolicy",
    "ForeignStateError",
    "Reply",
    "check_command_timeout",
    "check_key",
    "glob_escape",
    "max_wait_us",
    "round_trip_limit",
    "server_name",
]

logger = logging.getLogger("shared.resilience.redis_rate_limiter")

DEFAULT_KEY_PREFIX = "shared:ratelimit:"
POLICIES = ("fail_closed", "fail_open", "local")

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


@dataclass(frozen=True)
class Reply:
    granted: bool
    wait: float  # seconds
    debt_us: float

    @classmethod
    def parse(cls, raw: Any) -> Reply:
        """The script's reply; ``ForeignStateError`` when the key held no state of ours."""
        text = raw.decode() if isinstance(raw, bytes) else str(raw)
        if text.startswith("E "):
            raise ForeignStateError(text[2:])
        granted, wait_us, debt_us = text.split()
        return cls(granted == "1", float(wait_us) / _US, float(debt_us))


class ForeignStateError(Exception):
    """The bucket's Redis key holds something the script did not write."""


def server_name(client: Any) -> str:
    kwargs = getattr(getattr(client, "connection_pool", None), "connection_kwargs", None)
    if not kwargs:
        return repr(client)
    if "path" in kwargs:
        return f"unix://{kwargs['path']}"
    host, port = kwargs.get("host", "localhost"), kwargs.get("port", 6379)
    return f"redis://{host}:{port}/{kwargs.get('db', 0)}"


def check_key(name: str, key: Any) -> str:
    """A non-empty str (an empty ``key_prefix`` would put the limiter's keys, and
    what ``reset_all`` scans, at the top of the database)."""
    if not isinstance(key, str):
        raise TypeError(f"{name} must be a str, got {type(key).__name__}")
    if not key:
        raise ValueError(f"{name} must not be empty")
    return key


def check_command_timeout(value: Any) -> float:
    return _validation.positive_at_most(
        "command_timeout", value, _validation.MAX_SECONDS, "the longest timeout"
    )


def max_wait_us(timeout: float | None) -> float:
    """The script's max_wait for ``acquire(timeout)``: negative means no limit."""
    if timeout is None or _validation.number("timeout", timeout) == math.inf:
        return -1.0
    return _validation.non_negative_finite("timeout", timeout) * _US


class Decisions:
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


def round_trip_limit(command_timeout: float, timeout: float | None) -> float:
    """How long ``acquire(timeout)`` of an async limiter waits for Redis:
    ``command_timeout``, or the call's own ``timeout`` when that is shorter
    (``0`` only refuses to wait for tokens, not for the answer)."""
    if timeout is None or timeout <= 0:
        return command_timeout
    return min(command_timeout, timeout)


def glob_escape(text: str) -> str:
    """``text`` as a literal in a Redis ``SCAN MATCH`` pattern."""
    for special in "\\*?[]":
        text = text.replace(special, "\\" + special)
    return text


class BucketMath:
    """One bucket's config in the script's units (microseconds), the arguments
    of a call and what a reply means for it."""

    __slots__ = ("burst", "emission_us", "initial_debt", "key", "tolerance")

    def __init__(self, key: str, tokens_per_second: float, burst: float, initial: float) -> None:
        self.key = key
        self.burst = burst
        self.emission_us = _US / tokens_per_second
        # repr: the shortest text that parses back to the same double
        self.tolerance = repr(burst * self.emission_us)
        self.initial_debt = repr((burst - initial) * self.emission_us)

    def cost_us(self, tokens: float) -> float:
        """The cost of ``tokens``; ``ValueError``/``TypeError`` naming ``tokens``
        unless 0 < tokens <= burst_size."""
        return _validation.positive_at_most("tokens", tokens, self.burst, "burst_size") * (
            self.emission_us
        )

    def args(self, mode: str, cost_us: float, max_wait_us: float = 0.0) -> list[str]:
        """ARGV of ``GCRA_SCRIPT`` for ``mode`` ("acquire", "peek" or "refund")."""
        return [mode, self.tolerance, repr(cost_us), self.initial_debt, repr(max_wait_us)]

    def available(self, reply: Reply) -> float:
        """Tokens available in the bucket the reply describes, in [0, burst]."""
        return max(0.0, min(self.burst, self.burst - reply.debt_us / self.emission_us))

    def exceeded(self, reply: Reply) -> RateLimitExceeded:
        """The error of a refused ``acquire``: ``retry_after`` is the reply's wait."""
        return RateLimitExceeded(reply.wait, f"rate limit exceeded for {self.key!r}")


class FailurePolicy:
    """What a limiter does when Redis cannot answer: ``on_unavailable``, the
    retry schedule (``reconnect_interval``) and the error naming the server.

    ``errors`` are the exceptions meaning "unreachable" (the server is skipped
    for ``reconnect_interval``), ``refusals`` those meaning "answered with an
    error for this key" (the policy applies to this call only). ``clock`` is
    ``time.monotonic`` unless a test gives another.
    """

    def __init__(
        self,
        server: str,
        on_unavailable: str,
        reconnect_interval: float,
        *,
        command_timeout: float = DEFAULT_COMMAND_TIMEOUT,
        errors: tuple[type[BaseException], ...] = (ConnectionError, TimeoutError),
        refusals: tuple[type[BaseException], ...] = (),
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if on_unavailable not in POLICIES:
            raise ValueError(f"on_unavailable must be one of {POLICIES}, got {on_unavailable!r}")
        self.server = server
        self.policy = on_unavailable
        self.reconnect_interval = _validation.non_negative_finite(
            "reconnect_interval", reconnect_interval
        )
        self.command_timeout = check_command_timeout(command_timeout)
        self.errors = errors
        self.refusals = refusals
        self.failures = errors + refusals
        self.decisions = Decisions()
        self._clock = clock
        self._retry_at = 0.0  # clock() before which Redis is not tried
        self._last_error = ""

    def should_try(self) -> bool:
        """False while the server is skipped after a failure."""
        return self._clock() >= self._retry_at

    def skipped(self) -> None:
        """A call not sent because the server is skipped: the policy applies
        (``RateLimiterUnavailableError`` when failing closed)."""
        self.failed(None)

    def settle(
        self, redis_key: str, raw: Any = None, exc: BaseException | None = None
    ) -> Reply | None:
        """What one round trip for ``redis_key`` came to: its reply, or None
        when the policy replaces Redis for this call (``fail_open``, ``local``).
        ``exc``, if not None, is what the call raised (one of ``failures``);
        ``RateLimiterUnavailableError`` when failing closed."""
        if exc is not None:
            if isinstance(exc, self.refusals):
                self.refused(redis_key, f"was refused: {exc}")
            else:
                self.failed(exc)
            return None
        self.succeeded()
        try:
            return Reply.parse(raw)
        except ForeignStateError as foreign:
            self.refused(redis_key, str(foreign))
            return None

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
            self._retry_at = self._clock() + self.reconnect_interval
        if self.policy == "fail_closed":
            raise self.unavailable() from exc

    def unavailable(self, exc: BaseException | None = None) -> RateLimiterUnavailableError:
        """The error naming the server and the cause (``exc``, else the last failure)."""
        wait = max(0.0, self._retry_at - self._clock())
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
        """Redis answered: the next failure is logged again."""
        if self._last_error:
            logger.warning("rate limiter: Redis at %s is reachable again", self.server)
            self._last_error = ""

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
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any, Generic, Protocol, TypeVar

from shared import _instances
from shared.observability import _events
from shared.resilience._redis_gcra import (
    DEFAULT_COMMAND_TIMEOUT,
    DEFAULT_KEY_PREFIX,
    GCRA_SCRIPT,
    KEY_MARKER,
    RESET_SCRIPT,
    BucketMath,
    FailurePolicy,
    ForeignStateError,
    Reply,
    check_key,
    glob_escape,
    max_wait_us,
    round_trip_limit,
    server_name,
)
from shared.resilience.exceptions import RateLimiterUnavailableError
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

logger = logging.getLogger(__name__)

# The ``limiter`` label of the in-process limiters the ``local`` policy falls back
# to while Redis is unreachable (their decisions are in the metrics under it).
LOCAL_FALLBACK_NAME = "redis_local_fallback"


_T = TypeVar("_T")


class _LocalBucket(Protocol):
    """The in-process ``TokenBucket`` API that the ``local`` fallback uses."""

    def try_acquire(self, tokens: float = 1.0) -> bool: ...
    def acquire(self, tokens: float = 1.0, timeout: float | None = None) -> Any: ...
    def acquire_async(
        self, tokens: float = 1.0, timeout: float | None = None
    ) -> Awaitable[Any]: ...
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


class _Link(FailurePolicy):
    """One Redis server as the limiters see it: the client, the scripts and the
    failure policy (whether the server is currently considered unreachable).

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
        super().__init__(
            server_name(client),
            on_unavailable,
            reconnect_interval,
            command_timeout=command_timeout,
            errors=(redis.exceptions.ConnectionError, redis.exceptions.TimeoutError),
            # Redis answered, but with an error for this key (a wrong type, a full
            # memory, ...): the policy applies to this call, the server stays "up".
            refusals=(redis.exceptions.ResponseError,),
        )
        self.client = client
        self.script: Any = client.register_script(GCRA_SCRIPT)
        # Deletes limiter states only (reset, remove_limiter, reset_all).
        self.delete_states: Any = client.register_script(RESET_SCRIPT)


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
        self._math = BucketMath(key, config.tokens_per_second, burst, initial)
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

    # What a reply (None: the policy replaces Redis for this call) means for
    # each operation. No I/O: the sync and async clients differ only in how
    # they carry the script call to Redis and how they wait.

    def _args(self, mode: str, cost_us: float, max_wait_us: float) -> list[str]:
        return self._math.args(mode, cost_us, max_wait_us)

    def _outage_bucket(self) -> _LocalBucket | None:
        """Redis did not decide: the ``local`` fallback bucket, or None after
        counting the grant of ``fail_open``."""
        local = self._fallback_bucket()
        if local is None:
            self._link.decisions.decided(True)  # fail_open
        return local

    def _decided(self, reply: Reply) -> bool:
        """Counts the decision of ``try_acquire``."""
        self._link.decisions.decided(reply.granted)
        return reply.granted

    def _reserved(self, reply: Reply) -> float:
        """Counts the decision of ``acquire``; the seconds to wait for a granted
        reservation, else ``RateLimitExceeded(retry_after)``."""
        self._link.decisions.decided(reply.granted, reply.wait)
        if not reply.granted:
            raise self._math.exceeded(reply)
        return reply.wait

    def _available_of(self, reply: Reply | None) -> float:
        if reply is None:
            local = self._fallback_bucket()
            return self._math.burst if local is None else local.available_tokens
        return self._math.available(reply)

    def _retry_after_of(self, reply: Reply | None, tokens: float) -> float:
        if reply is None:
            local = self._fallback_bucket()
            return 0.0 if local is None else local.retry_after(tokens)
        return reply.wait

    async def _wait_reserved(
        self, reply: Reply, tokens: float, refund: Callable[[], Awaitable[None]]
    ) -> None:
        """Sleeps until a granted reservation is due; a cancelled sleep refunds it."""
        wait = self._reserved(reply)
        if wait > 0:
            if _events.active:
                _events.rate_limit_wait(wait, tokens)
            try:
                await asyncio.sleep(wait)
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
        key = check_key("key", key)
        key_prefix = check_key("key_prefix", key_prefix)
        link = _Link(client, on_unavailable, reconnect_interval, is_async=False)
        self._setup(_check_config(config), key, key_prefix + KEY_MARKER + key, link)
        self.name = _limiter_name(name, "redis_token_bucket")
        _instances.redis_limiters.add(self)

    def _run(self, mode: str, cost_us: float, max_wait_us: float = 0.0) -> Reply | None:
        """One script call; None when Redis is unreachable and the policy is not fail_closed."""
        link = self._link
        if not link.should_try():
            link.skipped()
            return None
        try:
            raw = link.script(keys=[self._redis_key], args=self._args(mode, cost_us, max_wait_us))
        except link.failures as exc:
            return link.settle(self._redis_key, exc=exc)
        return link.settle(self._redis_key, raw)

    def _refund(self, cost_us: float) -> None:
        # Best effort: an unreachable server keeps the reservation until it expires.
        with contextlib.suppress(RateLimiterUnavailableError):
            self._run("refund", cost_us)

    def try_acquire(self, tokens: float = 1.0) -> bool:
        """Takes ``tokens`` if they are available now; never waits. One round trip."""
        reply = self._run("acquire", self._math.cost_us(tokens))
        if reply is None:
            local = self._outage_bucket()
            return True if local is None else local.try_acquire(tokens)
        return self._decided(reply)

    def acquire(self, tokens: float = 1.0, timeout: float | None = None) -> None:
        """Waits until ``tokens`` are granted. When the wait would exceed ``timeout``
        seconds, raises ``RateLimitExceeded(retry_after)`` at once.

        The tokens are reserved in the same round trip (waiters are served in the
        order Redis saw them); an interrupted wait gives them back.
        """
        cost_us = self._math.cost_us(tokens)
        reply = self._run("acquire", cost_us, max_wait_us(timeout))
        if reply is None:
            local = self._outage_bucket()
            if local is not None:
                local.acquire(tokens, timeout)
            return
        wait = self._reserved(reply)
        if wait > 0:
            if _events.active:
                _events.rate_limit_wait(wait, tokens)
            try:
                time.sleep(wait)
            except BaseException:
                self._refund(cost_us)
                raise

    async def acquire_async(self, tokens: float = 1.0, timeout: float | None = None) -> None:
        """``acquire`` for coroutines: the round trip runs in a worker thread, the
        wait is an ``asyncio.sleep``; a cancelled waiter gives its tokens back."""
        cost_us = self._math.cost_us(tokens)
        max_wait = max_wait_us(timeout)
        reply = await _reserve(
            asyncio.to_thread(self._run, "acquire", cost_us, max_wait),
            lambda: asyncio.to_thread(self._refund, cost_us),
        )
        if reply is None:
            local = self._outage_bucket()
            if local is not None:
                await local.acquire_async(tokens, timeout)
            return
        await self._wait_reserved(reply, tokens, lambda: asyncio.to_thread(self._refund, cost_us))

    @property
    def available_tokens(self) -> float:
        """Tokens available now, in [0, burst_size]. One round trip."""
        return self._available_of(self._run("peek", 0.0))

    def retry_after(self, tokens: float = 1.0) -> float:
        """Seconds until ``tokens`` would be granted (0 if now). One round trip."""
        return self._retry_after_of(self._run("peek", self._math.cost_us(tokens)), tokens)

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
        key = check_key("key", key)
        key_prefix = check_key("key_prefix", key_prefix)
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
    ) -> Reply | None:
        """One script call bounded by ``time_limit`` (default ``command_timeout``);
        None when Redis is unreachable or late and the policy is not fail_closed.

        The caller is never held beyond the bound, nor after it is cancelled: a
        round trip still in flight finishes in the background, and tokens it
        granted are given back then.
        """
        link = self._link
        if not link.should_try():
            link.skipped()
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
            late = builtins.TimeoutError(f"no reply within command_timeout={limit:g}s")
            return link.settle(self._redis_key, exc=late)
        try:
            raw = call.result()
        except link.failures as exc:
            return link.settle(self._redis_key, exc=exc)
        return link.settle(self._redis_key, raw)

    def _settle_later(self, call: asyncio.Future[Any], mode: str, cost_us: float) -> None:
        """Lets an abandoned round trip finish; gives back what it granted."""

        def settle(finished: asyncio.Future[Any]) -> None:
            if finished.cancelled() or finished.exception() is not None or mode != "acquire":
                return
            try:
                granted = Reply.parse(finished.result()).granted
            except ForeignStateError:
                return
            if granted:
                _in_background(self._refund(cost_us))

        call.add_done_callback(settle)

    async def _refund(self, cost_us: float) -> None:
        with contextlib.suppress(RateLimiterUnavailableError):
            await self._run("refund", cost_us)

    async def try_acquire(self, tokens: float = 1.0) -> bool:
        """Takes ``tokens`` if they are available now; never waits. One round trip."""
        reply = await self._run("acquire", self._math.cost_us(tokens))
        if reply is None:
            local = self._outage_bucket()
            return True if local is None else local.try_acquire(tokens)
        return self._decided(reply)

    async def acquire(self, tokens: float = 1.0, timeout: float | None = None) -> None:
        """Waits until ``tokens`` are granted; raises ``RateLimitExceeded(retry_after)``
        at once when the wait would exceed ``timeout``. Waiters are served in
        the order Redis saw them; a cancelled waiter gives its tokens back."""
        cost_us = self._math.cost_us(tokens)
        limit = round_trip_limit(self._link.command_timeout, timeout)
        reply = await self._run("acquire", cost_us, max_wait_us(timeout), limit)
        if reply is None:
            local = self._outage_bucket()
            if local is not None:
                await local.acquire_async(tokens, timeout)
            return
        await self._wait_reserved(reply, tokens, lambda: self._refund(cost_us))

    async def acquire_async(self, tokens: float = 1.0, timeout: float | None = None) -> None:
        """The same as ``acquire`` (the in-process bucket's name for it)."""
        await self.acquire(tokens, timeout)

    @property
    def available_tokens(self) -> Awaitable[float]:
        """Tokens available now, in [0, burst_size]: ``await bucket.available_tokens``."""
        return self._available_tokens()

    async def _available_tokens(self) -> float:
        return self._available_of(await self._run("peek", 0.0))

    async def retry_after(self, tokens: float = 1.0) -> float:
        """Seconds until ``tokens`` would be granted (0 if now). One round trip."""
        return self._retry_after_of(await self._run("peek", self._math.cost_us(tokens)), tokens)

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
            if isinstance(reply, Reply) and reply.granted:
                _in_background(refund())

        task.add_done_callback(settle)
        raise


_B = TypeVar("_B", RedisTokenBucket, AsyncRedisTokenBucket)


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
        self._key_prefix = check_key("key_prefix", key_prefix)
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
        key = check_key("key", key)
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
        key = check_key("key", key)
        self._configs[key] = _check_config(config)
        with self._local_lock:
            if self._local is not None:
                self._local.set_limiter(key, config)
        return self.get_limiter(key)

    def _forget(self, key: str) -> str:
        """Drops the local config of ``key``; returns its Redis key."""
        key = check_key("key", key)
        self._configs.pop(key, None)
        with self._local_lock:
            if self._local is not None:
                self._local.remove_limiter(key)
        return self._key_prefix + KEY_MARKER + key

    def _scan_pattern(self) -> str:
        """Exactly this registry's keys: the prefix and the marker, glob-escaped."""
        return glob_escape(self._key_prefix + KEY_MARKER) + "*"

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

"""Retry with backoff (the document's "Retry Pattern" section).

``Retry(name, RetryConfig(...))`` runs a function and, when it raises a
retryable exception, sleeps a backoff delay and tries again, up to
``max_attempts`` attempts in all. The success path is one native call:
``retry.execute(f)`` and a sync function decorated with ``@with_retry`` call
``f`` from Rust and drop into Python only when it raises.

Beyond the document (keyword-only, off by default): a total deadline
(``max_total_time``), a ``RetryBudget`` shared by many retries, an ``on_retry``
hook, a seed for reproducible jitter, injected ``clock`` / ``sleep`` /
``async_sleep``, and ``instant_retries()`` for users' tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import enum
import functools
import inspect
import math
import time
import types
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar, cast

from shared import _instances, _validation
from shared._backend import core
from shared._env import EnvConfigError, EnvReader
from shared.observability import _events
from shared.resilience.exceptions import CircuitBreakerOpenError, RateLimitExceeded

if TYPE_CHECKING:  # the stub types both backends' cores
    from shared._native import Backoff as _Backoff
    from shared._native import RetryBudget as _BudgetCore
    from shared._native import RetryCore as _RetryCore
    from shared._native import RetryingCall as _RetryingCall
else:
    _Backoff, _BudgetCore = core.Backoff, core.RetryBudget
    _RetryCore, _RetryingCall = core.RetryCore, core.RetryingCall

__all__ = [
    "BackoffStrategy",
    "Jitter",
    "Retry",
    "RetryBudget",
    "RetryConfig",
    "instant_retries",
    "with_retry",
]

F = TypeVar("F", bound=Callable[..., Any])
OnRetry = Callable[[int, BaseException, float], None]


# (str, Enum), not StrEnum: str() of a member stays "BackoffStrategy.LINEAR".
class BackoffStrategy(str, enum.Enum):  # noqa: UP042
    """How the delay grows with each failed attempt (before jitter and the cap)."""

    EXPONENTIAL = "exponential"
    """``initial_delay * exponential_base ** (attempt - 1)``: 1s, 2s, 4s, 8s, ..."""
    LINEAR = "linear"
    """``initial_delay * attempt``: 1s, 2s, 3s, 4s, ..."""
    CONSTANT = "constant"
    """``initial_delay``: 1s, 1s, 1s, ..."""


class Jitter(str, enum.Enum):  # noqa: UP042
    """How randomness is applied to a delay ``d``; ``jitter=False`` is NONE, ``True`` is EQUAL."""

    NONE = "none"
    """exactly ``d``"""
    EQUAL = "equal"
    """uniform in ``[d/2, d]``"""
    FULL = "full"
    """uniform in ``[0, d]``"""
    DECORRELATED = "decorrelated"
    """uniform in ``[initial_delay, min(3 * previous delay, max_delay)]`` (ignores the strategy)"""


# Never retried unless retry_on names them (or a subclass): cancellation and
# interpreter exits, and the patterns' own "go away" errors.
_NEVER_RETRIED_BY_DEFAULT: tuple[type[BaseException], ...] = (
    asyncio.CancelledError,
    KeyboardInterrupt,
    SystemExit,
    GeneratorExit,
    CircuitBreakerOpenError,
    RateLimitExceeded,
)
_HAS_RETRY_AFTER = (CircuitBreakerOpenError, RateLimitExceeded)


@dataclass(frozen=True, init=False)
class RetryConfig:
    """How ``Retry`` retries. The document's fields first, then keyword-only extras.

    Args:
        max_attempts: attempts in all, the first included (>= 1).
        initial_delay: the first delay in seconds (finite, >= 0).
        max_delay: the cap on every delay (finite, >= initial_delay).
        exponential_base: growth factor of EXPONENTIAL backoff (finite, >= 1).
        jitter: ``False`` (default: exact delays), ``True`` (equal jitter,
            delays in [d/2, d]) or a ``Jitter`` member.
        backoff_strategy: a ``BackoffStrategy``.
        retry_on: exception classes that are retried (default ``(Exception,)``).
        retry_condition: ``f(exception) -> bool``, consulted for exceptions that
            match ``retry_on``; False means raise at once.
        max_total_time: stop when the next delay would end later than this many
            seconds after the call started (None: no deadline). Durations
            (delays and this) are at most 1e9 seconds.
        budget: a ``RetryBudget`` shared with other retries (None: unlimited).
        on_retry: ``f(attempt, exception, delay)`` called before each backoff sleep.
        seed: seed of the jitter's random stream (None: random per Retry).

    Invalid values raise ``ValueError`` or ``TypeError`` naming the field.
    """

    max_attempts: int
    initial_delay: float
    max_delay: float
    exponential_base: float
    jitter: bool | Jitter
    backoff_strategy: BackoffStrategy
    retry_on: tuple[type[BaseException], ...]
    retry_condition: Callable[[BaseException], bool] | None
    max_total_time: float | None
    budget: RetryBudget | None
    on_retry: OnRetry | None
    seed: int | None

    def __init__(
        self,
        max_attempts: int = 3,
        initial_delay: float = 1.0,
        max_delay: float = 60.0,
        exponential_base: float = 2.0,
        jitter: bool | Jitter = False,
        backoff_strategy: BackoffStrategy | str = BackoffStrategy.EXPONENTIAL,
        retry_on: tuple[type[BaseException], ...] = (Exception,),
        retry_condition: Callable[[BaseException], bool] | None = None,
        *,
        max_total_time: float | None = None,
        budget: RetryBudget | None = None,
        on_retry: OnRetry | None = None,
        seed: int | None = None,
    ) -> None:
        initial = _validation.non_negative_finite("initial_delay", initial_delay)
        cap = _validation.at_least("max_delay", max_delay, initial)
        if not isinstance(jitter, (bool, Jitter)):
            raise TypeError(f"jitter must be a bool or a Jitter, got {type(jitter).__name__}")
        if not isinstance(backoff_strategy, BackoffStrategy):
            try:
                backoff_strategy = BackoffStrategy(backoff_strategy)
            except ValueError:
                raise ValueError(
                    f"backoff_strategy must be a BackoffStrategy, got {backoff_strategy!r}"
                ) from None
        if budget is not None and not isinstance(budget, _BudgetCore):
            raise TypeError(f"budget must be a RetryBudget, got {type(budget).__name__}")
        if seed is not None and (
            isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**64
        ):
            raise ValueError(f"seed must be an int in [0, 2**64), got {seed!r}")
        values = {
            "max_attempts": _validation.positive_int("max_attempts", max_attempts),
            "initial_delay": initial,
            "max_delay": cap,
            "exponential_base": _validation.at_least(
                "exponential_base", exponential_base, 1.0, math.inf
            ),
            "jitter": jitter,
            "backoff_strategy": backoff_strategy,
            "retry_on": _validation.exception_types("retry_on", retry_on),
            "retry_condition": _validation.optional_callable("retry_condition", retry_condition),
            "max_total_time": None
            if max_total_time is None
            else _validation.positive_finite("max_total_time", max_total_time),
            "budget": budget,
            "on_retry": _validation.optional_callable("on_retry", on_retry),
            "seed": seed,
        }
        for name, value in values.items():
            object.__setattr__(self, name, value)

    @classmethod
    def from_env(
        cls, environ: Mapping[str, str] | None = None, *, prefix: str = "", **fields: Any
    ) -> RetryConfig:
        """A config from environment variables (beyond the document, in its style).

        Reads ``RETRY_MAX_ATTEMPTS`` (int), ``RETRY_INITIAL_DELAY``,
        ``RETRY_MAX_DELAY``, ``RETRY_MAX_TOTAL_TIME`` (seconds),
        ``RETRY_EXPONENTIAL_BASE``, ``RETRY_BACKOFF_STRATEGY`` (exponential,
        linear, constant) and ``RETRY_JITTER`` (true/false or none, equal,
        full, decorrelated), each with ``prefix`` in front.

        Args:
            environ: the variables (default ``os.environ``).
            prefix: prepended to every variable name.
            fields: the config's fields as keywords, used where a variable is
                unset or blank (and the fields no variable sets: ``retry_on``,
                ``budget``, ...).

        A value that does not parse or that the config rejects raises
        ``shared.config.EnvConfigError`` (a ``ValueError``) naming the variable.
        """
        env = EnvReader(environ, prefix)
        values = dict(fields)
        value: Any
        for variable, field in _RETRY_ENV:
            if field == "max_attempts":
                value = env.get_int(variable, field)
            elif field == "backoff_strategy":
                value = env.get_choice(variable, tuple(s.value for s in BackoffStrategy), field)
            elif field == "jitter":
                value = _jitter_from_env(env, variable)
            else:
                value = env.get_float(variable, field)
            if value is not None:
                values[field] = value
        return env.build(cls, values)

    @property
    def jitter_mode(self) -> Jitter:
        """``jitter`` as a ``Jitter`` member (``True`` is EQUAL, ``False`` is NONE)."""
        if isinstance(self.jitter, Jitter):
            return self.jitter
        return Jitter.EQUAL if self.jitter else Jitter.NONE


_RETRY_ENV = (
    ("RETRY_MAX_ATTEMPTS", "max_attempts"),
    ("RETRY_INITIAL_DELAY", "initial_delay"),
    ("RETRY_MAX_DELAY", "max_delay"),
    ("RETRY_EXPONENTIAL_BASE", "exponential_base"),
    ("RETRY_BACKOFF_STRATEGY", "backoff_strategy"),
    ("RETRY_JITTER", "jitter"),
    ("RETRY_MAX_TOTAL_TIME", "max_total_time"),
)


def _jitter_from_env(env: EnvReader, name: str) -> bool | Jitter | None:
    found = env.raw(name)
    if found is None:
        return None
    variable, text = found
    env.sources["jitter"] = found
    by_name = {mode.value: mode for mode in Jitter}
    if text.lower() in by_name:
        return by_name[text.lower()]
    try:
        return env.get_bool(name)
    except EnvConfigError:
        choices = "true, false, " + ", ".join(by_name)
        raise EnvConfigError(variable, text, f"must be one of {choices}") from None


class RetryBudget(_BudgetCore):
    """Retry throttling shared by many retries (gRPC / Finagle style).

    Over a sliding window of ``ttl`` seconds, retries may not exceed
    ``ratio * calls + min_retries_per_second * ttl``, counting the calls and
    retries of every ``Retry`` that shares this budget. When it is exhausted a
    retry gives up at once instead of adding load to a failing dependency.

    Args:
        ratio: retries allowed per call (default 0.2: at most 20% extra traffic).
        min_retries_per_second: the floor that lets low-traffic callers retry.
        ttl: the window in seconds (at most 1e9).
        clock: an object with ``now_ns()`` (tests); None for the monotonic clock.

    Invalid values raise ``ValueError`` or ``TypeError`` naming the parameter.
    """

    def __repr__(self) -> str:
        return (
            f"RetryBudget(ratio={self.ratio!r}, "
            f"min_retries_per_second={self.min_retries_per_second!r}, ttl={self.ttl!r}, "
            f"available={self.available():g})"
        )


# The testing switch: when a list, retries record their delays there instead of
# sleeping. A context variable: only the thread (or task) that entered the block.
_instant_delays: contextvars.ContextVar[list[float] | None] = contextvars.ContextVar(
    "shared_instant_retries", default=None
)


@contextlib.contextmanager
def instant_retries() -> Iterator[list[float]]:
    """Within the block, every ``Retry`` skips its backoff sleeps (for tests).

    Yields the list of delays that would have been slept, in order. Retries
    still happen and still count toward ``max_attempts``, budgets and stats.
    Only the current thread is affected (and asyncio tasks it creates inside
    the block, which copy its context): other threads sleep as usual and
    their delays are not recorded.
    """
    delays: list[float] = []
    token = _instant_delays.set(delays)
    try:
        yield delays
    finally:
        _instant_delays.reset(token)


def _chain(error: BaseException, cause: BaseException) -> None:
    """Makes ``cause`` the context of ``error`` raised while handling it, as an
    ``except`` block would have."""
    if error is not cause and error.__context__ is None:
        error.__context__ = cause


def _is_async_callable(func: Any) -> bool:
    """A coroutine function, or an object whose ``__call__`` is one."""
    if inspect.iscoroutinefunction(func):
        return True
    if inspect.isfunction(func) or inspect.ismethod(func) or isinstance(func, type):
        return False
    owners = (owner for owner in type(func).__mro__ if "__call__" in owner.__dict__)
    call = next((owner.__dict__["__call__"] for owner in owners), None)
    return inspect.iscoroutinefunction(call)


# Why a call gave up (``RetryCore.record_give_up`` and the ``counters()`` keys).
_GIVE_UP_ATTEMPTS, _GIVE_UP_DEADLINE, _GIVE_UP_BUDGET = 0, 1, 2


class Retry(_RetryCore):
    """Runs functions with retries, as ``config`` says.

    Args:
        name: names this retry in notes, metrics and logs.
        config: a ``RetryConfig`` (default ``RetryConfig()``).
        clock: an object with ``now_ns()`` for the deadline (tests).
        sleep: replaces ``time.sleep`` for backoff sleeps (tests).
        async_sleep: replaces ``asyncio.sleep`` in ``execute_async`` (tests).

    Counters for metrics: ``calls`` (counted once the first attempt ends),
    ``retries``, ``give_ups`` (``statistics`` has all three), and
    ``counters()``: calls by outcome (succeeded or failed, without or with a
    retry) and give-ups by reason.
    """

    name: str
    config: RetryConfig

    def __new__(
        cls,
        name: str,
        config: RetryConfig | None = None,
        *,
        clock: Any = None,
        sleep: Callable[[float], object] | None = None,
        async_sleep: Callable[[float], Awaitable[object]] | None = None,
    ) -> Retry:
        if config is None:
            config = RetryConfig()
        elif not isinstance(config, RetryConfig):
            raise TypeError(f"config must be a RetryConfig, got {type(config).__name__}")
        return super().__new__(
            cls,
            budget=config.budget,
            clock=clock,
            track_start=config.max_total_time is not None,
        )

    def __init__(
        self,
        name: str,
        config: RetryConfig | None = None,
        *,
        clock: Any = None,
        sleep: Callable[[float], object] | None = None,
        async_sleep: Callable[[float], Awaitable[object]] | None = None,
    ) -> None:
        if not isinstance(name, str):
            raise TypeError(f"name must be a str, got {type(name).__name__}")
        self.name = name
        _instances.retries.add(self)
        self.config = config = config or RetryConfig()
        self._sleep = _validation.optional_callable("sleep", sleep) or time.sleep
        self._async_sleep = (
            _validation.optional_callable("async_sleep", async_sleep) or asyncio.sleep
        )
        self._backoff = _Backoff(
            config.backoff_strategy.value,
            config.initial_delay,
            config.max_delay,
            config.exponential_base,
            config.jitter_mode.value,
            config.seed,
        )
        self._deadline_ns = (
            None if config.max_total_time is None else int(config.max_total_time * 1e9)
        )
        # retry_on entries that name a never-retried-by-default class (or a subclass of one).
        self._asked_for = tuple(
            t for t in config.retry_on if issubclass(t, _NEVER_RETRIED_BY_DEFAULT)
        )

    def __repr__(self) -> str:
        return f"Retry({self.name!r}, calls={self.calls}, retries={self.retries})"

    @property
    def statistics(self) -> dict[str, int]:
        """Calls started, retries made, and calls that gave up."""
        return {"calls": self.calls, "retries": self.retries, "give_ups": self.give_ups}

    def is_retryable(self, exc: BaseException) -> bool:
        """Whether ``exc`` would be retried (attempts, deadline and budget aside)."""
        config = self.config
        if not isinstance(exc, config.retry_on):
            return False
        if isinstance(exc, _NEVER_RETRIED_BY_DEFAULT) and not isinstance(exc, self._asked_for):
            return False
        return config.retry_condition is None or bool(config.retry_condition(exc))

    def _give_up(
        self, exc: BaseException, attempt: int, why: str, reason: int = _GIVE_UP_ATTEMPTS
    ) -> BaseException:
        self.record_give_up(reason)
        plural = "attempt" if attempt == 1 else "attempts"
        exc.add_note(f"Retry {self.name!r} gave up after {attempt} {plural}: {why}")
        return exc

    def _next_delay(
        self, exc: BaseException, attempt: int, previous: float, start_ns: int
    ) -> float:
        """The delay before attempt ``attempt + 1``; raises ``exc`` when not retrying.

        An error raised by ``retry_condition`` or ``on_retry`` propagates with
        ``exc`` as its ``__context__`` (also on the native success path, which
        calls this outside any ``except`` block), and spends no budget.
        """
        try:
            retryable = self.is_retryable(exc)
        except BaseException as hook_error:
            _chain(hook_error, exc)
            raise
        if not retryable:
            raise exc
        config = self.config
        if attempt >= config.max_attempts:
            raise self._give_up(exc, attempt, f"max_attempts={config.max_attempts} reached")
        delay = self._backoff.delay(attempt, previous)
        if isinstance(exc, _HAS_RETRY_AFTER):
            retry_after = float(exc.retry_after)
            if delay < retry_after < math.inf:  # a NaN or infinite hint is no wait to honour
                delay = retry_after
        if self._deadline_ns is not None:
            elapsed_ns = self.now_ns() - start_ns
            if elapsed_ns + delay * 1e9 > self._deadline_ns:
                raise self._give_up(
                    exc,
                    attempt,
                    f"max_total_time={config.max_total_time}s would be exceeded by the next "
                    f"delay of {delay:.3f}s",
                    _GIVE_UP_DEADLINE,
                )
        if config.budget is not None and not config.budget.try_retry():
            raise self._give_up(exc, attempt, "the retry budget is exhausted", _GIVE_UP_BUDGET)
        if config.on_retry is not None:
            try:
                config.on_retry(attempt, exc, delay)
            except BaseException as hook_error:
                if config.budget is not None:
                    config.budget.return_retry()  # the retry did not happen
                _chain(hook_error, exc)
                raise
        self.record_retry()
        if _events.active:
            _events.retry_attempt(self.name, attempt, delay, exc)
        return delay

    def _retry(
        self,
        func: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any] | None,
        exc: BaseException,
        start_ns: int,
    ) -> Any:
        """The slow path, from the native success path once ``func`` has raised."""
        kwargs = kwargs or {}
        attempt, delay = 1, 0.0
        while True:
            try:
                delay = self._next_delay(exc, attempt, delay, start_ns)
            except BaseException:
                self.record_failure(attempt > 1)
                raise
            instant = _instant_delays.get()
            if instant is not None:
                instant.append(delay)
            else:
                try:
                    self._sleep(delay)
                except BaseException:
                    self.record_failure(True)
                    raise
            attempt += 1
            try:
                result = func(*args, **kwargs)
            except BaseException as next_exc:  # classified by _next_delay
                exc = next_exc
            else:
                self.record_success(True)
                return result

    async def execute_async(
        self, func: Callable[..., Awaitable[Any]], /, *args: Any, **kwargs: Any
    ) -> Any:
        """Awaits ``func(*args, **kwargs)`` with retries; cancellation is never retried."""
        start_ns = self.begin_call()
        attempt, delay = 1, 0.0
        while True:
            try:
                result = await func(*args, **kwargs)
            except BaseException as exc:  # classified by _next_delay
                if attempt == 1:
                    self.record_first_failure()
                try:
                    delay = self._next_delay(exc, attempt, delay, start_ns)
                except BaseException:
                    self.record_failure(attempt > 1)
                    raise
            else:
                self.record_success(attempt > 1)
                return result
            try:
                instant = _instant_delays.get()
                if instant is not None:
                    instant.append(delay)
                    await asyncio.sleep(0)
                else:
                    await self._async_sleep(delay)
            except BaseException:
                self.record_failure(True)  # cancelled (or interrupted) between attempts
                raise
            attempt += 1


class _RetryingFunction(_RetryingCall):
    """A sync function decorated by ``@with_retry``: calls run natively until one raises."""

    def __init__(self, retry: Retry, func: Callable[..., Any]) -> None:
        functools.update_wrapper(self, func)

    def __get__(self, obj: object, objtype: type | None = None) -> Any:
        # Decorated methods bind like functions do.
        return self if obj is None else types.MethodType(self, obj)

    def __repr__(self) -> str:
        return f"<retrying {getattr(self, '__qualname__', '?')}>"


def with_retry(
    config: RetryConfig | None = None,
    /,
    *,
    name: str | None = None,
    clock: Any = None,
    sleep: Callable[[float], object] | None = None,
    async_sleep: Callable[[float], Awaitable[object]] | None = None,
    **options: Any,
) -> Callable[[F], F]:
    """Decorates a sync or async function to retry it (an object whose
    ``__call__`` is ``async def`` is async too).

    ``@with_retry(max_attempts=3, initial_delay=1.0)`` takes ``RetryConfig``'s
    fields as keywords (or one ``RetryConfig`` positionally). ``name`` defaults
    to the function's qualified name. The wrapper's ``.retry`` is its ``Retry``.
    """
    if config is None:
        config = RetryConfig(**options)
    elif not isinstance(config, RetryConfig):
        raise TypeError(
            "with_retry takes a RetryConfig or keywords; decorate with @with_retry(), "
            f"not @with_retry (got {type(config).__name__})"
        )
    elif options:
        raise TypeError("with_retry takes a RetryConfig or its fields as keywords, not both")

    def decorate(func: F) -> F:
        if not callable(func):
            raise TypeError(f"with_retry decorates a callable, got {type(func).__name__}")
        retry = Retry(
            name or str(getattr(func, "__qualname__", repr(func))),
            config,
            clock=clock,
            sleep=sleep,
            async_sleep=async_sleep,
        )
        if _is_async_callable(func):
            # An object's attributes are its own state, not the wrapper's to copy.
            updated = functools.WRAPPER_UPDATES if inspect.isfunction(func) else ()

            @functools.wraps(func, updated=updated)
            async def retrying(*args: Any, **kwargs: Any) -> Any:
                return await retry.execute_async(func, *args, **kwargs)

            retrying.retry = retry  # type: ignore[attr-defined]
            return cast(F, retrying)
        return cast(F, _RetryingFunction(retry, func))

    return decorate

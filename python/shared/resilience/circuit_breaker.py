"""Circuit breaker (the document's "Circuit Breaker" section).

``CircuitBreaker`` subclasses the backend's ``CircuitBreakerCore``, so
``breaker.call(f)`` is one native call: the core admits the call, runs ``f``,
classifies its exception and updates the state machine. ``with breaker:`` is
the core's ``__enter__``/``__exit__`` (native on the Rust backend, so no
asynchronous exception can land between taking a probe slot and the block's
cleanup). This module adds what belongs to Python: the config, the state enum,
``call_async``, ``protect``, ``async with``, listeners and the process-wide
registry.
"""

from __future__ import annotations

import functools
import inspect
import logging
import threading
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass
from enum import Enum
from types import FunctionType, TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

from shared import _instances, _validation
from shared._backend import core
from shared._env import EnvReader
from shared.observability import _events
from shared.resilience._deadlines import _critical

if TYPE_CHECKING:
    from shared._native import CircuitBreakerCore as _Core
    from shared._pure.clock import NanosecondClock
else:
    _Core = core.CircuitBreakerCore

__all__ = [
    "CircuitBreaker",
    "CircuitBreakerConfig",
    "CircuitBreakerRegistry",
    "CircuitBreakerState",
    "StateListener",
    "circuit_breaker_registry",
]

_log = logging.getLogger(__name__)
T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])

# Thresholds and probe counts share a 20-bit field of the native state word.
_MAX_COUNT = (1 << 20) - 1


class CircuitBreakerState(Enum):
    """The state of a breaker."""

    CLOSED = "closed"
    """Calls pass through; failures are counted."""
    OPEN = "open"
    """Calls fail at once with ``CircuitBreakerOpenError``."""
    HALF_OPEN = "half_open"
    """A limited number of probe calls test whether the service recovered."""


_STATES = {state.value: state for state in CircuitBreakerState}


def _count(name: str, value: Any) -> int:
    result = _validation.positive_int(name, value)
    if result > _MAX_COUNT:
        raise ValueError(f"{name} must be <= {_MAX_COUNT}, got {value!r}")
    return result


@dataclass(frozen=True, init=False)
class CircuitBreakerConfig:
    """How a breaker opens and recovers.

    Args:
        failure_threshold: consecutive counted failures that open a closed breaker.
        success_threshold: successful probes that close a half-open breaker.
        timeout: seconds an open breaker waits before admitting a probe.
        expected_exceptions: the exceptions counted as failures (a class or a
            tuple). Other exceptions propagate without counting.

    Keyword-only (beyond the document; the defaults keep its behaviour):
        half_open_max_calls: probes admitted at once while half-open.
        probe_timeout: seconds a probe holds its slot (its lease); ``None``
            (default) means ``timeout``. Once every slot is taken and no probe
            was admitted for this long, a new probe is admitted and the old
            probes' outcomes are ignored, so a probe that hangs or never
            reports cannot hold the breaker half-open and rejecting forever.
        ignore_exceptions: exceptions that never count, even if expected.
        is_failure_result: ``f(result) -> bool``; true marks a returned value
            as a failure (the value is still returned).
        sliding_window: seconds; switches to the failure-rate mode: the breaker
            opens when, over the last ``sliding_window`` seconds and at least
            ``minimum_calls`` calls, the failure rate reaches
            ``failure_rate_threshold`` or the rate of calls slower than
            ``slow_call_duration`` reaches ``slow_call_rate_threshold``.
            ``failure_threshold`` is then unused.

    Invalid values raise ``ValueError`` or ``TypeError`` naming the field.
    """

    failure_threshold: int
    success_threshold: int
    timeout: float
    expected_exceptions: tuple[type[BaseException], ...]
    half_open_max_calls: int
    probe_timeout: float | None
    ignore_exceptions: tuple[type[BaseException], ...]
    is_failure_result: Callable[[Any], object] | None
    sliding_window: float | None
    minimum_calls: int
    failure_rate_threshold: float
    slow_call_duration: float | None
    slow_call_rate_threshold: float

    def __init__(
        self,
        failure_threshold: int = 5,
        success_threshold: int = 2,
        timeout: float = 60.0,
        expected_exceptions: type[BaseException] | tuple[type[BaseException], ...] = (Exception,),
        *,
        half_open_max_calls: int = 1,
        probe_timeout: float | None = None,
        ignore_exceptions: type[BaseException] | tuple[type[BaseException], ...] = (),
        is_failure_result: Callable[[Any], object] | None = None,
        sliding_window: float | None = None,
        minimum_calls: int = 100,
        failure_rate_threshold: float = 0.5,
        slow_call_duration: float | None = None,
        slow_call_rate_threshold: float = 1.0,
    ) -> None:
        values: dict[str, Any] = {
            "failure_threshold": _count("failure_threshold", failure_threshold),
            "success_threshold": _count("success_threshold", success_threshold),
            "timeout": _validation.positive_finite("timeout", timeout),
            "expected_exceptions": _validation.exception_types(
                "expected_exceptions", expected_exceptions
            ),
            "half_open_max_calls": _count("half_open_max_calls", half_open_max_calls),
            "probe_timeout": None
            if probe_timeout is None
            else _validation.positive_finite("probe_timeout", probe_timeout),
            "ignore_exceptions": _validation.exception_types(
                "ignore_exceptions", ignore_exceptions
            ),
            "is_failure_result": _validation.optional_callable(
                "is_failure_result", is_failure_result
            ),
            "sliding_window": None
            if sliding_window is None
            else _validation.positive_finite("sliding_window", sliding_window),
            "minimum_calls": _count("minimum_calls", minimum_calls),
            "failure_rate_threshold": _validation.fraction(
                "failure_rate_threshold", failure_rate_threshold
            ),
            "slow_call_duration": None
            if slow_call_duration is None
            else _validation.positive_finite("slow_call_duration", slow_call_duration),
            "slow_call_rate_threshold": _validation.fraction(
                "slow_call_rate_threshold", slow_call_rate_threshold
            ),
        }
        if values["slow_call_duration"] is not None and values["sliding_window"] is None:
            raise ValueError("slow_call_duration needs sliding_window (the rate is over a window)")
        for name, value in values.items():
            object.__setattr__(self, name, value)

    @classmethod
    def from_env(
        cls, environ: Mapping[str, str] | None = None, *, prefix: str = "", **fields: Any
    ) -> CircuitBreakerConfig:
        """A config from environment variables (the document's "Environment Variables").

        Reads ``CIRCUIT_BREAKER_FAILURE_THRESHOLD`` (int), ``CIRCUIT_BREAKER_TIMEOUT``
        (seconds), and beyond the document ``CIRCUIT_BREAKER_SUCCESS_THRESHOLD``,
        ``CIRCUIT_BREAKER_HALF_OPEN_MAX_CALLS`` and ``CIRCUIT_BREAKER_PROBE_TIMEOUT``
        (seconds), each with ``prefix`` in front
        (``prefix="PAYMENTS_"`` reads ``PAYMENTS_CIRCUIT_BREAKER_TIMEOUT``).

        Args:
            environ: the variables (default ``os.environ``).
            prefix: prepended to every variable name.
            fields: the config's fields as keywords: the values used where a
                variable is unset or blank (and the fields no variable sets,
                such as ``expected_exceptions``).

        A value that does not parse or that the config rejects raises
        ``shared.config.EnvConfigError`` (a ``ValueError``) naming the variable.
        """
        env = EnvReader(environ, prefix)
        values = dict(fields)
        for variable, field in _BREAKER_ENV:
            value = (
                env.get_float(variable, field)
                if field in ("timeout", "probe_timeout")
                else env.get_int(variable, field)
            )
            if value is not None:
                values[field] = value
        return env.build(cls, values)


_BREAKER_ENV = (
    ("CIRCUIT_BREAKER_FAILURE_THRESHOLD", "failure_threshold"),
    ("CIRCUIT_BREAKER_SUCCESS_THRESHOLD", "success_threshold"),
    ("CIRCUIT_BREAKER_TIMEOUT", "timeout"),
    ("CIRCUIT_BREAKER_HALF_OPEN_MAX_CALLS", "half_open_max_calls"),
    ("CIRCUIT_BREAKER_PROBE_TIMEOUT", "probe_timeout"),
)


StateListener = Callable[["CircuitBreaker", CircuitBreakerState, CircuitBreakerState], object]


class _Listeners:
    """The state-change callbacks of one breaker, called by its core after a transition."""

    __slots__ = ("_lock", "callbacks")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.callbacks: tuple[StateListener, ...] = ()

    def add(self, listener: StateListener) -> None:
        with self._lock:
            self.callbacks = (*self.callbacks, listener)

    def remove(self, listener: StateListener) -> None:
        with self._lock:
            callbacks = list(self.callbacks)
            callbacks.remove(listener)
            self.callbacks = tuple(callbacks)

    def dispatch(self, breaker: CircuitBreaker, old: str, new: str) -> None:
        # Runs outside every lock of the core; a failing listener is logged and
        # never reaches the caller of the protected function.
        old_state, new_state = _STATES[old], _STATES[new]
        _log.info("circuit breaker %r: %s -> %s", breaker.name, old, new)
        if _events.active:
            _events.breaker_transition(breaker.name, old, new)
        for listener in self.callbacks:
            try:
                listener(breaker, old_state, new_state)
            except Exception:
                _log.exception(
                    "state listener %r of circuit breaker %r failed", listener, breaker.name
                )


# The pure-Python core takes and gives back permits in Python code: no deadline
# of ours may interrupt it there (it would leak a half-open probe slot).
for _method_name in getattr(_Core, "_UNINTERRUPTIBLE", ()):
    _method = getattr(_Core, _method_name)
    if isinstance(_method, FunctionType):
        _critical(_method)


def _is_async_callable(func: object) -> bool:
    """``async def`` functions, and partials of them or objects whose ``__call__`` is one."""
    while isinstance(func, functools.partial):
        func = func.func
    if inspect.iscoroutinefunction(func):
        return True
    # An object whose class defines `async def __call__`.
    return callable(func) and inspect.iscoroutinefunction(type(func).__call__)


_DEFAULT_REGISTRY: Any = object()


class CircuitBreaker(_Core):
    """Stops calling a failing service; lets a few probes through after ``timeout``.

    Args:
        name: the breaker's name (in errors, logs, metrics and the registry).
        config: thresholds and classification; ``CircuitBreakerConfig()`` if omitted.
        clock: keyword-only; a clock with ``now_ns()`` (``shared.testing.ManualClock``).
        registry: keyword-only; where the breaker is found by name
            (``circuit_breaker_registry`` by default, ``None`` for nowhere).

    ``call``, ``call_async``, ``@protect`` and ``with``/``async with`` raise
    ``CircuitBreakerOpenError`` (with ``retry_after``) instead of calling
    while the breaker is open.
    """

    config: CircuitBreakerConfig
    _listeners: _Listeners

    def __new__(
        cls,
        name: str,
        config: CircuitBreakerConfig | None = None,
        *,
        clock: NanosecondClock | None = None,
        registry: CircuitBreakerRegistry | None = _DEFAULT_REGISTRY,
    ) -> CircuitBreaker:
        if not isinstance(name, str):
            raise TypeError(f"name must be a str, got {type(name).__name__}")
        if config is None:
            config = CircuitBreakerConfig()
        elif not isinstance(config, CircuitBreakerConfig):
            raise TypeError(f"config must be a CircuitBreakerConfig, got {type(config).__name__}")
        listeners = _Listeners()
        self = super().__new__(
            cls,
            name,
            failure_threshold=config.failure_threshold,
            success_threshold=config.success_threshold,
            timeout=config.timeout,
            expected_exceptions=config.expected_exceptions,
            ignore_exceptions=config.ignore_exceptions,
            half_open_max_calls=config.half_open_max_calls,
            probe_timeout=config.probe_timeout,
            sliding_window=config.sliding_window,
            minimum_calls=config.minimum_calls,
            failure_rate_threshold=config.failure_rate_threshold,
            slow_call_duration=config.slow_call_duration,
            slow_call_rate_threshold=config.slow_call_rate_threshold,
            is_failure_result=config.is_failure_result,
            on_state_change=listeners.dispatch,
            clock=clock,
        )
        self.config = config
        self._listeners = listeners
        if registry is _DEFAULT_REGISTRY:
            registry = circuit_breaker_registry
        if registry is not None:
            registry.register(self)
        _instances.breakers.add(self)
        return self

    @property
    def state(self) -> CircuitBreakerState:
        """CLOSED, OPEN or HALF_OPEN (an open breaker turns half-open on the next call
        after ``timeout``)."""
        return _STATES[self._state_name]

    async def call_async(
        self, func: Callable[..., Awaitable[T]], /, *args: Any, **kwargs: Any
    ) -> T:
        """Awaits ``func(*args, **kwargs)`` through the breaker.

        Cancellation is neutral: a cancelled half-open probe gives its slot back.
        """
        if self.config.is_failure_result is None:
            # The `with` statement takes and gives back the permit (atomically
            # with respect to asynchronous exceptions, see the module docstring).
            with self:
                return await func(*args, **kwargs)
        permit = self._admit()
        try:
            result = await func(*args, **kwargs)
        except BaseException as exc:
            self._record_error(permit, exc)
            raise
        self._record_result(permit, result)
        return result

    def protect(self, func: F) -> F:
        """Decorator: every call of ``func`` goes through the breaker.

        ``async def`` functions, partials of them and objects with an
        ``async def __call__`` get an ``async`` wrapper (``call_async``).
        """
        if _is_async_callable(func):

            @functools.wraps(func)
            async def protected_async(*args: Any, **kwargs: Any) -> Any:
                return await self.call_async(func, *args, **kwargs)

            return protected_async  # type: ignore[return-value]

        call = self.call

        @functools.wraps(func)
        def protected(*args: Any, **kwargs: Any) -> Any:
            return call(func, *args, **kwargs)

        return protected  # type: ignore[return-value]

    # `with breaker:` is the core's own __enter__/__exit__ (see the module docstring).

    @_critical  # no deadline of ours lands between the permit and the block
    async def __aenter__(self) -> CircuitBreaker:
        self.__enter__()
        return self

    @_critical
    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.__exit__(exc_type, exc, tb)

    def add_listener(self, listener: StateListener) -> None:
        """Calls ``listener(breaker, old_state, new_state)`` after every state change.

        Listeners run after the change, outside any lock, in the thread that
        caused it; an exception in one is logged and does not affect the call.
        """
        if not callable(listener):
            raise TypeError(f"listener must be callable, got {type(listener).__name__}")
        self._listeners.add(listener)

    def remove_listener(self, listener: StateListener) -> None:
        """Removes a listener added with ``add_listener`` (``ValueError`` if absent)."""
        self._listeners.remove(listener)

    def __repr__(self) -> str:
        return (
            f"CircuitBreaker({self.name!r}, state={self.state.name}, "
            f"failure_count={self.failure_count}, success_count={self.success_count})"
        )


class CircuitBreakerRegistry:
    """Breakers by name, so services and metrics find them.

    The registry holds its breakers (strong references) until ``remove``:
    ``registry.get_or_create(name, config).call(f)`` in a loop uses one
    breaker, which opens. Every ``CircuitBreaker`` registers in
    ``circuit_breaker_registry`` unless told otherwise (``registry=None``); a
    newer breaker with the same name replaces the older one.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._breakers: dict[str, CircuitBreaker] = {}

    def register(self, breaker: CircuitBreaker) -> None:
        """Makes ``breaker`` the one found under its name."""
        with self._lock:
            self._breakers[breaker.name] = breaker

    def remove(self, name: str) -> CircuitBreaker | None:
        """Forgets the breaker registered under ``name``; returns it, or ``None``."""
        with self._lock:
            return self._breakers.pop(name, None)

    def unregister(self, name: str) -> None:
        """Forgets the breaker registered under ``name``, if any (``remove`` without a result)."""
        self.remove(name)

    def get(self, name: str) -> CircuitBreaker | None:
        """The breaker registered under ``name``, or ``None``."""
        return self._breakers.get(name)

    def get_or_create(
        self,
        name: str,
        config: CircuitBreakerConfig | None = None,
        *,
        clock: NanosecondClock | None = None,
    ) -> CircuitBreaker:
        """The breaker named ``name``, created with ``config`` if there is none.

        Raises ``ValueError`` if it exists with a different config.
        """
        with self._lock:
            breaker = self._breakers.get(name)
            if breaker is None:
                breaker = CircuitBreaker(name, config, clock=clock, registry=None)
                self._breakers[name] = breaker
                return breaker
        if config is not None and config != breaker.config:
            raise ValueError(f"circuit breaker {name!r} exists with another config")
        return breaker

    def breakers(self) -> dict[str, CircuitBreaker]:
        """A snapshot of the registered breakers by name."""
        with self._lock:
            return self._breakers.copy()

    def __iter__(self) -> Iterator[CircuitBreaker]:
        return iter(self.breakers().values())

    def __len__(self) -> int:
        return len(self._breakers)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name in self._breakers

    def __repr__(self) -> str:
        shown = 10
        breakers = self.breakers()
        states = [f"{name!r}: {b.state.value}" for name, b in list(breakers.items())[:shown]]
        if len(breakers) > shown:
            states.append(f"... {len(breakers) - shown} more")
        return f"CircuitBreakerRegistry({len(breakers)} breakers: {{{', '.join(states)}}})"


circuit_breaker_registry = CircuitBreakerRegistry()
"""The process-wide registry every breaker joins by default."""

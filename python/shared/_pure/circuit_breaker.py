"""Pure-Python twin of ``rust/circuit_breaker/``: the same state machine and numbers.

State changes happen under one lock; the closed success path takes none (it
reads one attribute and bumps an ``itertools.count``, atomic under the GIL).
No lock is held while the protected function, a callback or the clock runs.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from collections.abc import Callable
from contextvars import ContextVar
from types import TracebackType
from typing import Any, ClassVar

from shared._pure.clock import NanosecondClock, ns_to_secs, secs_to_ns, time_source

__all__ = ["CircuitBreakerCore"]

MAX_COUNT = (1 << 20) - 1
WINDOW_BUCKETS = 10
CLOSED, OPEN, HALF_OPEN, FORCED_OPEN = 0, 1, 2, 3
SUCCESS, FAILURE, NEUTRAL = 0, 1, 2
_NAMES = ("closed", "open", "half_open", "open")
_U64 = (1 << 64) - 1
_INF = float("inf")

Transition = tuple[int, int]

# The `with` blocks in progress in the current context (thread or task): a flat
# tuple (breaker, lease, breaker, lease, ...), innermost last.
_WITH_LEASES: ContextVar[tuple[Any, ...]] = ContextVar("shared_circuit_breaker_leases", default=())


def _count_setting(name: str, value: int) -> int:
    if not 1 <= value <= MAX_COUNT:
        raise ValueError(f"{name} must be between 1 and {MAX_COUNT}, got {value}")
    return value


def _seconds_setting(name: str, value: float) -> int:
    if not (value == value and value != _INF and value > 0):
        raise ValueError(f"{name} must be a finite number > 0, got {value}")
    return max(1, secs_to_ns(value))


def _rate_setting(name: str, value: float) -> float:
    if not 0.0 < value <= 1.0:
        raise ValueError(f"{name} must be in (0, 1], got {value}")
    return value


class CircuitBreakerCore:
    """The core of ``shared.resilience.CircuitBreaker``: the twin of the Rust class."""

    # The methods that take or give back a permit. ``shared.resilience.circuit_breaker``
    # marks them so that its deadlines are never delivered inside them (an
    # interruption there would leak a half-open probe slot). The Rust core does
    # this work in native code, where no asynchronous exception can land.
    _UNINTERRUPTIBLE: ClassVar[tuple[str, ...]] = (
        "__enter__",
        "__exit__",
        "_take_lease",
        "_admit",
        "_try_admit",
        "_classify",
        "_record_result",
        "_record",
        "_record_success",
        "_record_error",
        "_reset_streak",
        "_record_closed",
        "_record_in_window",
        "_record_probe",
        "_enter",
        "_open",
    )

    _name: str
    _failure_threshold: int
    _success_threshold: int
    _half_open_max_calls: int
    _timeout: float
    _timeout_ns: int
    _probe_timeout: float
    _probe_timeout_ns: int
    _last_probe_at_ns: int
    _probes_expired: int
    _window_ns: int
    _minimum_calls: int
    _failure_rate: float
    _slow_ns: int
    _slow_rate: float
    _expected: tuple[type[BaseException], ...]
    _ignored: tuple[type[BaseException], ...]
    _neutral: tuple[type[BaseException], ...]
    _is_failure_result: Callable[[Any], object] | None
    _on_state_change: Callable[[Any, str, str], object] | None
    _clock: NanosecondClock | None
    _now_ns: Callable[[], int]
    _lock: threading.Lock
    _state: int
    _epoch: int
    _fast_path: bool
    _fast_epoch: int
    _consecutive_failures: int
    _probe_successes: int
    _probes_in_flight: int
    _opened_at_ns: int
    _window_epoch: int
    _buckets: list[list[int]]
    _succeeded: itertools.count[int]
    _failed: int
    _ignored_calls: int
    _rejected: int
    _slow: int
    _to_open: int
    _to_half_open: int
    _to_closed: int
    _succeeded_base: int
    _failed_base: int
    _last_failure_time: float | None
    _leases: dict[int, int]
    _lease_numbers: itertools.count[int]

    def __new__(
        cls,
        name: str,
        *,
        failure_threshold: int = 5,
        success_threshold: int = 2,
        timeout: float = 60.0,
        expected_exceptions: tuple[type[BaseException], ...] | None = None,
        ignore_exceptions: tuple[type[BaseException], ...] | None = None,
        half_open_max_calls: int = 1,
        probe_timeout: float | None = None,
        sliding_window: float | None = None,
        minimum_calls: int = 100,
        failure_rate_threshold: float = 0.5,
        slow_call_duration: float | None = None,
        slow_call_rate_threshold: float = 1.0,
        is_failure_result: Callable[[Any], object] | None = None,
        on_state_change: Callable[[Any, str, str], object] | None = None,
        clock: NanosecondClock | None = None,
    ) -> CircuitBreakerCore:
        self = object.__new__(cls)
        if sliding_window is None:
            if slow_call_duration is not None:
                raise ValueError(
                    "slow_call_duration needs sliding_window (slow calls are rated over a window)"
                )
            self._window_ns = 0
        else:
            self._window_ns = _seconds_setting("sliding_window", sliding_window)
            if minimum_calls < 1:
                raise ValueError(f"minimum_calls must be >= 1, got {minimum_calls}")
            _rate_setting("failure_rate_threshold", failure_rate_threshold)
            _rate_setting("slow_call_rate_threshold", slow_call_rate_threshold)
        self._slow_ns = (
            0
            if slow_call_duration is None
            else _seconds_setting("slow_call_duration", slow_call_duration)
        )
        self._failure_threshold = _count_setting("failure_threshold", failure_threshold)
        self._success_threshold = _count_setting("success_threshold", success_threshold)
        self._half_open_max_calls = _count_setting("half_open_max_calls", half_open_max_calls)
        self._timeout_ns = _seconds_setting("timeout", timeout)
        self._timeout = float(timeout)
        if probe_timeout is None:
            probe_timeout = timeout
        self._probe_timeout_ns = _seconds_setting("probe_timeout", probe_timeout)
        self._probe_timeout = float(probe_timeout)
        self._minimum_calls = minimum_calls
        self._failure_rate = failure_rate_threshold
        self._slow_rate = slow_call_rate_threshold
        self._name = name
        self._expected = (Exception,) if expected_exceptions is None else expected_exceptions
        self._ignored = () if ignore_exceptions is None else ignore_exceptions
        self._neutral = (
            KeyboardInterrupt,
            SystemExit,
            GeneratorExit,
            asyncio.CancelledError,
            *self._ignored,
        )
        self._is_failure_result = is_failure_result
        self._on_state_change = on_state_change
        self._clock = clock
        self._now_ns = time_source(clock)
        self._lock = threading.Lock()
        # The phase, as the Rust word holds it: state, epoch, and its counts.
        self._state = CLOSED
        self._epoch = 0
        self._consecutive_failures = 0
        self._probe_successes = 0
        self._probes_in_flight = 0
        self._opened_at_ns = 0
        self._last_probe_at_ns = 0
        # The epoch while closed in count mode without a result predicate (the
        # fast path of `call`), else -1.
        self._fast_path = self._window_ns == 0 and is_failure_result is None
        self._fast_epoch = 0 if self._fast_path else -1
        self._window_epoch = 0
        self._buckets = [[-1, 0, 0, 0] for _ in range(WINDOW_BUCKETS)]
        self._succeeded = itertools.count()
        self._failed = self._ignored_calls = self._rejected = self._slow = 0
        self._probes_expired = 0
        self._to_open = self._to_half_open = self._to_closed = 0
        self._succeeded_base = self._failed_base = 0
        self._last_failure_time = None
        # Permits of the `with` blocks in progress, by lease number (see `__exit__`).
        self._leases = {}
        self._lease_numbers = itertools.count()
        return self

    # -- calls ------------------------------------------------------------------

    def call(self, func: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        """Calls ``func(*args, **kwargs)`` through the breaker."""
        epoch = self._fast_epoch
        if epoch < 0:
            # Not the closed fast path. Inlined, and the rejection raised here,
            # so it unwinds one frame, not three. No call between the admission
            # and the `try` (an attribute test instead of isinstance): an
            # asynchronous exception arrives only after a call, at a loop or at
            # a function's start, so none can land between taking a probe slot
            # and the handler that gives it back. (Any: a permit or an error.)
            permit: Any = self._try_admit()
            if permit.__class__ is int:
                try:
                    result = func(*args, **kwargs)
                except BaseException as exc:
                    self._record(permit, self._classify(exc))
                    raise
                self._record_result(permit, result)
                return result
            try:
                raise permit
            finally:
                del permit  # else frame -> error -> traceback -> frame: a cycle
        try:
            result = func(*args, **kwargs)
        except BaseException as exc:
            self._record(_permit(CLOSED, epoch, 0), self._classify(exc))
            raise
        next(self._succeeded)
        if self._consecutive_failures:
            self._reset_streak(epoch)
        return result

    def __enter__(self, /) -> CircuitBreakerCore:
        """Admits the `with` block's call (or raises ``CircuitBreakerOpenError``)."""
        permit = self._try_admit()
        if isinstance(permit, BaseException):
            try:
                raise permit
            finally:
                del permit  # else frame -> error -> traceback -> frame: a cycle
        # A count and a dict: each step atomic without our lock.
        lease = next(self._lease_numbers)
        self._leases[lease] = permit
        try:
            _WITH_LEASES.set((*_WITH_LEASES.get(), self, lease))
        except BaseException:
            # The block will not run: give the permit back.
            if self._leases.pop(lease, None) is not None:
                self._record(permit, NEUTRAL)
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
        /,
    ) -> None:
        """Records how the `with` block ended (works in any context, see ``_take_lease``)."""
        permit = self._take_lease()
        self._record(permit, SUCCESS if exc is None else self._classify(exc))

    def _take_lease(self) -> int:
        """The permit of the `with` block that ends.

        The innermost lease of this breaker in the current context that is still
        outstanding, else (a block entered in another task or context) the
        oldest outstanding one, so every exit gives back exactly one permit.
        Leases of this breaker passed over on the way leave the context too.
        """
        stack = _WITH_LEASES.get()
        leases = self._leases
        if len(stack) >= 2 and stack[-2] is self:  # the usual case: the innermost block
            found = leases.pop(stack[-1], None)
            if found is not None:
                _WITH_LEASES.set(stack[:-2])
                return found
        forget: list[int] = []
        found = None
        for i in range(len(stack) - 2, -1, -2):
            if stack[i] is not self:
                continue
            forget.append(i)
            found = leases.pop(stack[i + 1], None)
            if found is not None:
                break
        if forget:
            _WITH_LEASES.set(tuple(item for j, item in enumerate(stack) if j & ~1 not in forget))
        while found is None and leases:
            # Dicts keep insertion order: the first key is the oldest lease. (Another
            # thread may take it first: then look again.)
            found = leases.pop(next(iter(leases), -1), None)
        if found is None:
            raise RuntimeError(f"circuit breaker {self._name!r}: __exit__ without __enter__")
        return found

    def _classify(self, exc: BaseException) -> int:
        if isinstance(exc, self._neutral):
            return NEUTRAL
        return FAILURE if isinstance(exc, self._expected) else NEUTRAL

    # -- admission --------------------------------------------------------------

    def _admit(self) -> int:
        """Admits one call (or raises ``CircuitBreakerOpenError``); returns its permit."""
        permit = self._try_admit()
        if isinstance(permit, BaseException):
            try:
                raise permit
            finally:
                del permit  # else frame -> error -> traceback -> frame: a cycle
        return permit

    def _try_admit(self) -> int | BaseException:
        """Admits one call and returns its permit, or returns the error that rejects it."""
        while True:
            state = self._state
            if state == CLOSED:
                return _permit(CLOSED, self._epoch, self._now_ns() if self._slow_ns else 0)
            # The clock is read before the lock (a Python clock must not run under
            # it) and before a slot is taken (a failing clock cannot leak one).
            now_ns = self._now_ns() if state != FORCED_OPEN else 0
            transition: Transition | None = None
            with self._lock:
                if self._state != state:
                    continue
                if state == FORCED_OPEN:
                    self._rejected += 1
                    retry_after_ns = self._timeout_ns
                elif state == HALF_OPEN:
                    full = self._probes_in_flight >= self._half_open_max_calls
                    expiry = min(self._last_probe_at_ns + self._probe_timeout_ns, _U64)
                    if full and now_ns < expiry:
                        # The slots are leased until the newest probe's lease runs
                        # out (each probe renews them): a slot is sure to be free
                        # by then, sooner if a probe reports.
                        self._rejected += 1
                        retry_after_ns = expiry - now_ns
                    else:
                        if full:
                            # The slots are full and no probe was admitted for
                            # `probe_timeout`: every lease has expired. A new
                            # half-open phase starts, with this call its first
                            # probe; the old probes' outcomes are late.
                            self._probes_expired += self._probes_in_flight
                            self._enter(HALF_OPEN)
                        self._probes_in_flight += 1
                        self._last_probe_at_ns = max(self._last_probe_at_ns, now_ns)
                        retry_after_ns = -1
                else:
                    probe_at = min(self._opened_at_ns + self._timeout_ns, _U64)
                    if now_ns < probe_at:
                        self._rejected += 1
                        retry_after_ns = probe_at - now_ns
                    else:
                        # The first caller after the timeout becomes the first probe.
                        self._enter(HALF_OPEN)
                        self._probes_in_flight = 1
                        self._last_probe_at_ns = max(self._last_probe_at_ns, now_ns)
                        self._to_half_open += 1
                        transition = (OPEN, HALF_OPEN)
                        retry_after_ns = -1
                epoch = self._epoch
            if retry_after_ns >= 0:
                return _open_error(self._name, ns_to_secs(retry_after_ns))
            if transition is None:
                return _permit(HALF_OPEN, epoch, now_ns)
            permit = _permit(HALF_OPEN, epoch, now_ns)
            try:
                self._notify(transition)
            except BaseException:
                self._record(permit, NEUTRAL)  # the call will not run: give its slot back
                raise
            return permit

    # -- outcomes ---------------------------------------------------------------

    def _record_success(self, permit: int) -> None:
        """Records a success for a permit from ``_admit``."""
        self._record(permit, SUCCESS)

    def _record_result(self, permit: int, result: Any) -> None:
        """Records a returned value (checked by ``is_failure_result``) for a permit."""
        predicate = self._is_failure_result
        if predicate is None:
            self._record(permit, SUCCESS)
            return
        try:
            failed = bool(predicate(result))
        except BaseException:
            self._record(permit, NEUTRAL)
            raise
        self._record(permit, FAILURE if failed else SUCCESS)

    def _record_error(self, permit: int, error: BaseException) -> None:
        """Records an exception raised under a permit (classified like ``call`` does)."""
        self._record(permit, self._classify(error))

    def _reset_streak(self, epoch: int) -> None:
        with self._lock:
            if self._state == CLOSED and self._epoch == epoch:
                self._consecutive_failures = 0

    def _record(self, permit: int, outcome: int) -> None:
        state, epoch, start_ns = permit & 3, (permit & _U64) >> 2, permit >> 64
        # Read once, before the lock, and only when needed: a failure may open
        # the breaker; the window mode times every call. If the clock fails,
        # the call counts as neutral, so a probe still gives its slot back.
        now_ns = 0
        if outcome == FAILURE or (self._window_ns and outcome != NEUTRAL):
            try:
                now_ns = self._now_ns()
            except BaseException:
                self._record(permit, NEUTRAL)
                raise
        slow = (
            bool(self._slow_ns)
            and outcome != NEUTRAL
            and max(0, now_ns - start_ns) >= self._slow_ns
        )
        if outcome == SUCCESS:
            next(self._succeeded)
        with self._lock:
            if outcome == FAILURE:
                self._failed += 1
                self._last_failure_time = time.time()
            elif outcome == NEUTRAL:
                self._ignored_calls += 1
            self._slow += slow
            if self._state != state or self._epoch != epoch:
                return
            if state == CLOSED:
                if outcome == NEUTRAL:
                    return
                transition = (
                    self._record_in_window(outcome, slow, now_ns)
                    if self._window_ns
                    else self._record_closed(outcome, now_ns)
                )
            else:
                transition = self._record_probe(FAILURE if slow else outcome, now_ns)
        if transition is not None:
            self._notify(transition)

    def _record_closed(self, outcome: int, now_ns: int) -> Transition | None:
        if outcome == SUCCESS:
            self._consecutive_failures = 0
        elif outcome == FAILURE:
            self._consecutive_failures += 1
            if self._consecutive_failures >= self._failure_threshold:
                return self._open(now_ns)
        return None

    def _record_in_window(self, outcome: int, slow: bool, now_ns: int) -> Transition | None:
        if self._window_epoch != self._epoch:
            self._window_epoch = self._epoch
            self._buckets = [[-1, 0, 0, 0] for _ in range(WINDOW_BUCKETS)]
        index = now_ns // max(1, self._window_ns // WINDOW_BUCKETS)
        bucket = self._buckets[index % WINDOW_BUCKETS]
        if bucket[0] != index:
            bucket[:] = [index, 0, 0, 0]
        bucket[1] += 1
        bucket[2] += outcome == FAILURE
        bucket[3] += slow
        calls = failures = slow_calls = 0
        for b_index, b_calls, b_failures, b_slow in self._buckets:
            if 0 <= index - b_index < WINDOW_BUCKETS:
                calls += b_calls
                failures += b_failures
                slow_calls += b_slow
        if calls >= self._minimum_calls and (
            failures / calls >= self._failure_rate
            or (self._slow_ns and slow_calls / calls >= self._slow_rate)
        ):
            return self._open(now_ns)
        return None

    def _record_probe(self, outcome: int, now_ns: int) -> Transition | None:
        if outcome == FAILURE:
            return self._open(now_ns)
        self._probes_in_flight -= 1
        if outcome == SUCCESS:
            self._probe_successes += 1
            if self._probe_successes >= self._success_threshold:
                self._enter(CLOSED)
                self._to_closed += 1
                return (HALF_OPEN, CLOSED)
        return None

    # -- transitions (under the lock) ---------------------------------------------

    def _enter(self, state: int) -> None:
        self._fast_epoch = -1
        self._state = state
        self._epoch += 1
        self._consecutive_failures = self._probe_successes = self._probes_in_flight = 0
        if state == CLOSED and self._fast_path:
            self._fast_epoch = self._epoch

    def _open(self, now_ns: int) -> Transition:
        previous = self._state
        self._opened_at_ns = now_ns
        self._enter(OPEN)
        self._to_open += 1
        return (previous, OPEN)

    def _notify(self, transition: Transition) -> None:
        callback = self._on_state_change
        if callback is not None:
            callback(self, _NAMES[transition[0]], _NAMES[transition[1]])

    def reset(self, /) -> None:
        """Closes the breaker and clears ``failure_count``, ``success_count`` and
        ``last_failure_time``."""
        with self._lock:
            previous = self._state
            self._enter(CLOSED)
            self._succeeded_base = _counter_value(self._succeeded)
            self._failed_base = self._failed
            self._last_failure_time = None
            if previous != CLOSED:
                self._to_closed += 1
        if previous != CLOSED:
            self._notify((previous, CLOSED))

    def force_open(self, /) -> None:
        """Opens the breaker and holds it open (no probes) until ``reset()``."""
        with self._lock:
            previous = self._state
            self._enter(FORCED_OPEN)
            opened = previous not in (OPEN, FORCED_OPEN)
            if opened:
                self._to_open += 1
        if opened:
            self._notify((previous, OPEN))

    # -- reads ------------------------------------------------------------------

    @property
    def name(self) -> str:
        return self._name

    @property
    def _state_name(self) -> str:
        """``"closed"``, ``"open"`` or ``"half_open"``."""
        return _NAMES[self._state]

    @property
    def is_forced_open(self) -> bool:
        return self._state == FORCED_OPEN

    @property
    def failure_count(self) -> int:
        return max(0, self._failed - self._failed_base)

    @property
    def success_count(self) -> int:
        return max(0, _counter_value(self._succeeded) - self._succeeded_base)

    @property
    def last_failure_time(self) -> float | None:
        return self._last_failure_time

    @property
    def timeout(self) -> float:
        return self._timeout

    @property
    def probe_timeout(self) -> float:
        return self._probe_timeout

    @property
    def expected_exceptions(self) -> tuple[type[BaseException], ...]:
        return self._expected

    @property
    def ignore_exceptions(self) -> tuple[type[BaseException], ...]:
        return self._ignored

    @property
    def clock(self) -> NanosecondClock | None:
        return self._clock

    def counters(self, /) -> dict[str, int]:
        """Monotonic counters for metrics (never cleared by ``reset()``)."""
        return {
            "calls_succeeded": _counter_value(self._succeeded),
            "calls_failed": self._failed,
            "calls_ignored": self._ignored_calls,
            "calls_rejected": self._rejected,
            "calls_slow": self._slow,
            "probes_expired": self._probes_expired,
            "transitions_to_open": self._to_open,
            "transitions_to_half_open": self._to_half_open,
            "transitions_to_closed": self._to_closed,
        }


_open_error_class: Callable[[str, float], BaseException] | None = None


def _open_error(name: str, retry_after: float) -> BaseException:
    global _open_error_class
    if _open_error_class is None:
        # Imported late: shared.resilience imports the backend, which imports this module.
        from shared.resilience.exceptions import CircuitBreakerOpenError

        _open_error_class = CircuitBreakerOpenError
    return _open_error_class(name, retry_after)


def _permit(state: int, epoch: int, start_ns: int) -> int:
    return (start_ns << 64) | (epoch << 2) | state


def _counter_value(counter: itertools.count[int]) -> int:
    # An itertools.count shows its next value only in its repr: "count(42)".
    return int(repr(counter)[6:-1])

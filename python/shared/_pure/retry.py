"""Pure-Python twin of ``rust/retry.rs``: the retry success path and the retry budget."""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable
from typing import Any

from shared import _validation
from shared._pure.clock import NanosecondClock, secs_to_ns, time_source

__all__ = ["RetryBudget", "RetryCore", "RetryingCall"]

_SLOTS = 10


class RetryBudget:
    """A retry budget shared by many retries (twin of ``shared._native.RetryBudget``).

    Retries in the last ``ttl`` seconds may not exceed
    ``ratio * calls + min_retries_per_second * ttl`` over the same window.
    """

    _ratio: float
    _per_second: float
    _ttl: float
    _floor: float
    _slot_ns: int
    _now_ns: Callable[[], int]
    _slots: list[list[int]]
    _lock: threading.Lock

    # Built in __new__ like the native class, so a subclass's __init__ may take other arguments.
    def __new__(
        cls,
        ratio: float = 0.2,
        min_retries_per_second: float = 10.0,
        ttl: float = 10.0,
        *,
        clock: NanosecondClock | None = None,
    ) -> RetryBudget:
        self = super().__new__(cls)
        # The rules both backends share (the native core calls them too).
        self._ratio = 0.2 if ratio is None else _validation.non_negative_finite("ratio", ratio)
        per_second = (
            10.0
            if min_retries_per_second is None
            else _validation.non_negative_finite("min_retries_per_second", min_retries_per_second)
        )
        ttl = 10.0 if ttl is None else _validation.positive_finite("ttl", ttl)
        self._per_second = per_second
        self._ttl = ttl
        self._now_ns = time_source(clock)
        self._floor = per_second * ttl
        self._slot_ns = max(secs_to_ns(ttl) // _SLOTS, 1)
        # Each slot: [index, calls, retries], as in the Rust core.
        self._slots = [[0, 0, 0] for _ in range(_SLOTS)]
        self._lock = threading.Lock()
        return self

    def _window(self) -> tuple[list[int], int, int]:
        # Call with the lock held: the current slot, and calls and retries in the window.
        index = self._now_ns() // self._slot_ns
        calls = retries = 0
        for slot in self._slots:
            if (index - slot[0]) % 2**64 < _SLOTS:
                calls += slot[1]
                retries += slot[2]
        current = self._slots[index % _SLOTS]
        if current[0] != index:
            current[:] = [index, 0, 0]
        return current, calls, retries

    def record_call(self, /) -> None:
        """Counts one call (a first attempt) toward the budget."""
        with self._lock:
            self._window()[0][1] += 1

    def try_retry(self, /) -> bool:
        """Takes one retry if the budget allows it; False when it is exhausted."""
        with self._lock:
            current, calls, retries = self._window()
            allowed = float(retries + 1) <= self._ratio * float(calls) + self._floor
            if allowed:
                current[2] += 1
            return allowed

    def return_retry(self, /) -> None:
        """Gives back a retry taken by ``try_retry`` that did not happen."""
        with self._lock:
            index = self._now_ns() // self._slot_ns
            live = [s for s in self._slots if (index - s[0]) % 2**64 < _SLOTS and s[2] > 0]
            if live:
                max(live, key=lambda s: s[0])[2] -= 1

    @property
    def ratio(self, /) -> float:
        return self._ratio

    @property
    def min_retries_per_second(self, /) -> float:
        return self._per_second

    @property
    def ttl(self, /) -> float:
        return self._ttl

    def available(self, /) -> float:
        """Retries the budget would allow now."""
        with self._lock:
            _, calls, retries = self._window()
            return max(self._ratio * float(calls) + self._floor - float(retries), 0.0)


class RetryCore:
    """Counters and the success path of one retry (twin of ``shared._native.RetryCore``).

    Subclasses supply ``_retry(func, args, kwargs, exception, start_ns)``.
    """

    _budget: RetryBudget | None
    _clock: NanosecondClock | None
    _clock_ns: Callable[[], int]
    _track_start: bool
    _plain: bool
    _first_ok: itertools.count[int]
    _first_err: itertools.count[int]
    _retried_ok: itertools.count[int]
    _failed_first: itertools.count[int]
    _failed_retried: itertools.count[int]
    _retries: itertools.count[int]
    _give_ups: tuple[itertools.count[int], itertools.count[int], itertools.count[int]]

    # Built in __new__ like the native class, so a subclass's __init__ may take other arguments.
    def __new__(
        cls,
        *,
        budget: RetryBudget | None = None,
        clock: NanosecondClock | None = None,
        track_start: bool = False,
    ) -> RetryCore:
        if budget is not None and not isinstance(budget, RetryBudget):
            raise TypeError(f"budget must be a RetryBudget, got {type(budget).__name__}")
        self = super().__new__(cls)
        self._budget = budget
        self._clock = clock
        self._clock_ns = time_source(clock)
        self._track_start = bool(track_start)
        # Neither a budget nor a deadline: a call only counts itself (the fast path).
        self._plain = budget is None and not self._track_start
        # next() on a count is atomic under the GIL, like the Rust atomics.
        self._first_ok = itertools.count()
        self._first_err = itertools.count()
        self._retried_ok = itertools.count()
        self._failed_first = itertools.count()
        self._failed_retried = itertools.count()
        self._retries = itertools.count()
        self._give_ups = (itertools.count(), itertools.count(), itertools.count())
        return self

    def _retry(
        self,
        func: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any] | None,
        exception: BaseException,
        start_ns: int,
        /,
    ) -> Any:
        """What a subclass overrides; a bare core cannot retry."""
        raise TypeError(
            f"{type(self).__name__} does not retry by itself: execute() needs a subclass "
            "that defines _retry(func, args, kwargs, exception, start_ns) "
            "(use shared.resilience.Retry)"
        ) from exception

    def begin_call(self, /) -> int:
        """Starts a call outside ``execute`` (async); returns its start time or 0.
        The caller reports the first attempt's outcome (``record_success``,
        ``record_first_failure``)."""
        if self._budget is not None:
            self._budget.record_call()
        return self._clock_ns() if self._track_start else 0

    def execute(self, func: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        """Calls ``func(*args, **kwargs)``, retrying as the subclass decides."""
        start_ns = self.begin_call()
        try:
            result = func(*args, **kwargs)
        except BaseException as exc:  # the subclass decides; it re-raises what it won't retry
            next(self._first_err)
            return self._retry(func, args, kwargs or None, exc, start_ns)
        next(self._first_ok)
        return result

    def now_ns(self, /) -> int:
        """The time on this retry's clock, in nanoseconds."""
        return self._clock_ns()

    def record_retry(self, /) -> None:
        """Counts one retry (a sleep before another attempt)."""
        next(self._retries)

    def record_give_up(self, /, reason: int = 0) -> None:
        """Counts one call that gave up (a stop condition ended it with an error):
        ``reason`` 0 for ``max_attempts``, 1 for the deadline, 2 for the budget."""
        if reason not in (0, 1, 2):
            raise ValueError(f"reason must be 0, 1 or 2, got {reason}")
        next(self._give_ups[reason])

    def record_first_failure(self, /) -> None:
        """Counts a call whose first attempt raised (outside ``execute``: async)."""
        next(self._first_err)

    def record_success(self, /, retried: bool) -> None:
        """Counts a call that succeeded, after retries or not (``execute`` counts its
        own first-attempt successes)."""
        next(self._retried_ok if retried else self._first_ok)

    def record_failure(self, /, retried: bool) -> None:
        """Counts a call that failed, after retries or not."""
        next(self._failed_retried if retried else self._failed_first)

    @staticmethod
    def _count(counter: itertools.count[int]) -> int:
        # A count's repr is "count(N)": read it without advancing it.
        return int(repr(counter)[6:-1])

    @property
    def calls(self, /) -> int:
        """Calls whose first attempt has ended (a call is counted once its first
        attempt returns or raises)."""
        return self._count(self._first_ok) + self._count(self._first_err)

    @property
    def retries(self, /) -> int:
        """Retries made (sleeps before another attempt)."""
        return self._count(self._retries)

    @property
    def give_ups(self, /) -> int:
        """Calls that gave up on attempts, deadline or budget."""
        return sum(self._count(counter) for counter in self._give_ups)

    def counters(self, /) -> dict[str, int]:
        """Monotonic counters for metrics, by outcome.

        ``calls`` = ``succeeded_without_retry`` + (calls whose first attempt
        raised); those end as ``succeeded_with_retry``, ``failed_without_retry``
        or ``failed_with_retry`` (or are still running). ``give_ups_*`` count
        the failures a stop condition ended, by reason.
        """
        count = self._count
        attempts, deadline, budget = self._give_ups
        return {
            "calls": self.calls,
            "succeeded_without_retry": count(self._first_ok),
            "succeeded_with_retry": count(self._retried_ok),
            "failed_without_retry": count(self._failed_first),
            "failed_with_retry": count(self._failed_retried),
            "retries": count(self._retries),
            "give_ups_max_attempts": count(attempts),
            "give_ups_deadline": count(deadline),
            "give_ups_budget": count(budget),
        }

    @property
    def budget(self, /) -> RetryBudget | None:
        """The shared budget, or None."""
        return self._budget

    @property
    def clock(self, /) -> NanosecondClock | None:
        """The clock handed in, or None for the monotonic clock."""
        return self._clock


class RetryingCall:
    """A function bound to a retry (twin of ``shared._native.RetryingCall``)."""

    _retry_core: RetryCore
    _func: Callable[..., Any]

    def __new__(cls, retry: RetryCore, func: Callable[..., Any]) -> RetryingCall:
        self = super().__new__(cls)
        self._retry_core = retry
        self._func = func
        return self

    def __call__(self, /, *args: Any, **kwargs: Any) -> Any:
        retry = self._retry_core
        start_ns = 0 if retry._plain else retry.begin_call()
        try:
            result = self._func(*args, **kwargs)
        except BaseException as exc:  # the retry decides; it re-raises what it won't retry
            next(retry._first_err)
            return retry._retry(self._func, args, kwargs or None, exc, start_ns)
        next(retry._first_ok)
        return result

    @property
    def retry(self, /) -> RetryCore:
        """The retry that runs this function."""
        return self._retry_core

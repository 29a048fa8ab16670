"""Retry: the document's examples and Retry Test, backoff, stops, hooks, stats, async."""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from shared.resilience import (
    BackoffStrategy,
    CircuitBreakerOpenError,
    Jitter,
    RateLimitExceeded,
    Retry,
    RetryBudget,
    RetryConfig,
    TimeoutError,
    with_retry,
)
from shared.testing import ManualClock, instant_retries


class TransientError(Exception):
    """An error the document's custom condition retries."""


class FatalError(Exception):
    """An error no test retries."""


def notes(exc: BaseException) -> list[str]:
    return list(getattr(exc, "__notes__", []))


def failing(times: int, exc: Callable[[], BaseException] = lambda: ConnectionError("down")):
    """A function that raises ``times`` times, then returns "ok"; ``.calls`` counts calls."""
    calls: list[int] = []

    def func(*args: Any, **kwargs: Any) -> str:
        calls.append(1)
        if len(calls) <= times:
            raise exc()
        return "ok"

    func.calls = calls  # type: ignore[attr-defined]
    return func


def recording_retry(config: RetryConfig, clock: ManualClock | None = None) -> tuple[Retry, list]:
    """A Retry whose sleeps are recorded (and advance ``clock`` when given) instead of slept."""
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        if clock is not None:
            clock.advance(seconds)

    return Retry("test", config, clock=clock, sleep=sleep), slept


class TestDocument:
    """The design document's examples, as written."""

    # The only real sleeps of the retry tests (3 s): they run once per install.
    # The same schedule on each backend's core, without sleeping, is
    # test_the_retry_test_schedule_on_this_backend below.
    @pytest.mark.backend_independent
    def test_retry_with_exponential_backoff(self):
        """The document's Retry Test, verbatim: real sleeps of 1 s and 2 s."""
        attempts = []

        def flaky_operation():
            attempts.append(time.time())
            if len(attempts) < 3:
                raise ConnectionError("Failed")
            return "success"

        config = RetryConfig(
            max_attempts=3, initial_delay=1.0, backoff_strategy=BackoffStrategy.EXPONENTIAL
        )
        retry = Retry("test", config)

        result = retry.execute(flaky_operation)

        assert result == "success"
        assert len(attempts) == 3

        # Verify exponential backoff
        assert attempts[1] - attempts[0] >= 1.0
        assert attempts[2] - attempts[1] >= 2.0

    def test_the_retry_test_schedule_on_this_backend(self):
        """The Retry Test's scenario on the backend under test, its sleeps recorded."""
        attempts = failing(2, lambda: ConnectionError("Failed"))
        config = RetryConfig(
            max_attempts=3, initial_delay=1.0, backoff_strategy=BackoffStrategy.EXPONENTIAL
        )
        retry, slept = recording_retry(config)
        assert retry.execute(attempts) == "ok"
        assert len(attempts.calls) == 3
        assert slept == [1.0, 2.0]

    def test_configuration_and_usage(self):
        """The Configuration and Usage examples run, with jitter, under instant_retries."""
        config = RetryConfig(
            max_attempts=3,
            initial_delay=1.0,
            max_delay=60.0,
            exponential_base=2.0,
            jitter=True,
            backoff_strategy=BackoffStrategy.EXPONENTIAL,
            retry_on=(ConnectionError, TimeoutError),
        )
        retry = Retry("api_call", config)
        unreliable_operation = failing(2, lambda: TimeoutError("slow"))
        call = failing(1)
        with instant_retries() as delays:
            assert retry.execute(unreliable_operation) == "ok"
            assert retry.execute(call, user_id="123", timeout=5.0) == "ok"
        assert 0.5 <= delays[0] <= 1.0
        assert 1.0 <= delays[1] <= 2.0
        assert len(delays) == 3

    async def test_async_usage(self):
        """``await retry.execute_async(async_api.call, user_id="123")``."""
        seen = []

        async def call(user_id: str) -> str:
            seen.append(user_id)
            if len(seen) < 2:
                raise ConnectionError("down")
            return "ok"

        retry = Retry("api_call", RetryConfig(max_attempts=3))
        with instant_retries():
            assert await retry.execute_async(call, user_id="123") == "ok"
        assert seen == ["123", "123"]

    def test_decorator_and_custom_condition(self):
        """``@with_retry(max_attempts=3)`` and ``retry_condition=should_retry``."""

        @with_retry(max_attempts=3)
        def fetch_data():
            return "data"

        def should_retry(exception):
            return isinstance(exception, TransientError)

        config = RetryConfig(max_attempts=5, retry_condition=should_retry)
        transient, fatal = failing(4, TransientError), failing(4, FatalError)
        with instant_retries():
            assert fetch_data() == "data"
            assert Retry("c", config).execute(transient) == "ok"
            with pytest.raises(FatalError):
                Retry("c", config).execute(fatal)
        assert len(transient.calls) == 5
        assert len(fatal.calls) == 1

    async def test_async_method_decorator(self):
        """Step 4: ``@with_retry(max_attempts=3, initial_delay=1.0)`` on an async method."""

        class DatabaseService:
            def __init__(self) -> None:
                self.tries = 0

            @with_retry(max_attempts=3, initial_delay=1.0)
            async def save_strategy(self, strategy: str) -> str:
                self.tries += 1
                if self.tries < 3:
                    raise ConnectionError("deadlock")
                return strategy

        service = DatabaseService()
        with instant_retries() as delays:
            assert await service.save_strategy("s") == "s"
        assert delays == [1.0, 2.0]

    def test_configuration_template(self):
        """The Quick Reference template builds; jitter=True is equal jitter."""
        config = RetryConfig(
            max_attempts=3,
            initial_delay=1.0,
            max_delay=60.0,
            exponential_base=2.0,
            jitter=True,
            backoff_strategy=BackoffStrategy.EXPONENTIAL,
        )
        assert config.jitter_mode is Jitter.EQUAL
        assert RetryConfig().jitter_mode is Jitter.NONE


@pytest.mark.parametrize(
    ("strategy", "expected"),
    [
        (BackoffStrategy.EXPONENTIAL, [1.0, 2.0, 4.0, 8.0, 16.0]),
        (BackoffStrategy.LINEAR, [1.0, 2.0, 3.0, 4.0, 5.0]),
        (BackoffStrategy.CONSTANT, [1.0, 1.0, 1.0, 1.0, 1.0]),
    ],
)
def test_strategy_delay_sequences(strategy: BackoffStrategy, expected: list[float]) -> None:
    """Each strategy sleeps the document's sequence between attempts."""
    retry, slept = recording_retry(RetryConfig(max_attempts=6, backoff_strategy=strategy))
    assert retry.execute(failing(5)) == "ok"
    assert slept == expected


def test_delays_are_capped_and_overflow_safe() -> None:
    """max_delay caps every delay, however many attempts; exponential_base applies."""
    config = RetryConfig(max_attempts=2000, initial_delay=0.5, max_delay=5.0, exponential_base=3.0)
    retry, slept = recording_retry(config)
    with pytest.raises(ConnectionError):
        retry.execute(failing(5000))
    assert slept[:4] == [0.5, 1.5, 4.5, 5.0]
    assert len(slept) == 1999
    assert set(slept[3:]) == {5.0}


@pytest.mark.parametrize("jitter", [True, Jitter.EQUAL, Jitter.FULL, Jitter.DECORRELATED])
def test_jitter_bounds(jitter: bool | Jitter) -> None:
    """Equal jitter stays in [d/2, d], full in [0, d], decorrelated in [initial, 3*previous]."""
    config = RetryConfig(max_attempts=60, initial_delay=0.1, max_delay=10.0, jitter=jitter, seed=3)
    retry, slept = recording_retry(config)
    with pytest.raises(ConnectionError):
        retry.execute(failing(100))
    assert len(slept) == 59
    previous = 0.0
    for attempt, delay in enumerate(slept, start=1):
        d = min(0.1 * 2.0 ** (attempt - 1), 10.0)
        if jitter in (True, Jitter.EQUAL):
            assert d / 2 <= delay <= d
        elif jitter is Jitter.FULL:
            assert 0.0 <= delay <= d
        else:
            assert 0.1 <= delay <= min(max(3 * previous, 0.1), 10.0)
        previous = delay
    assert len(set(slept)) > 10  # random, not constant


def test_seeded_jitter_is_reproducible() -> None:
    """The same seed gives the same delays; jitter without a seed differs between retries."""

    def delays(seed: int | None) -> list[float]:
        config = RetryConfig(max_attempts=8, jitter=Jitter.FULL, seed=seed)
        retry, slept = recording_retry(config)
        with pytest.raises(ConnectionError):
            retry.execute(failing(10))
        return slept

    assert delays(11) == delays(11)
    assert delays(11) != delays(12)
    assert delays(None) != delays(None)


def test_last_exception_propagates_with_a_note_naming_the_attempts() -> None:
    """After the last attempt the last exception is raised, noted with the attempt count."""
    errors = iter([ConnectionError("first"), ConnectionError("second"), ConnectionError("last")])
    retry, _ = recording_retry(RetryConfig(max_attempts=3))

    def func() -> None:
        raise next(errors)

    with pytest.raises(ConnectionError, match="last") as info:
        retry.execute(func)
    assert notes(info.value) == ["Retry 'test' gave up after 3 attempts: max_attempts=3 reached"]
    assert retry.statistics == {"calls": 1, "retries": 2, "give_ups": 1}


def test_max_attempts_one_never_retries() -> None:
    """max_attempts counts all attempts: 1 means no retry."""
    func = failing(1)
    retry, slept = recording_retry(RetryConfig(max_attempts=1))
    with pytest.raises(ConnectionError) as info:
        retry.execute(func)
    assert len(func.calls) == 1
    assert slept == []
    assert "gave up after 1 attempt:" in notes(info.value)[0]


def test_retry_on_filters_exceptions() -> None:
    """Exceptions outside retry_on propagate at once, without a note or a give-up."""
    retry, slept = recording_retry(RetryConfig(retry_on=(ConnectionError,)))
    func = failing(1, lambda: FatalError("bad input"))
    with pytest.raises(FatalError) as info:
        retry.execute(func)
    assert len(func.calls) == 1
    assert slept == []
    assert notes(info.value) == []
    assert retry.give_ups == 0


@pytest.mark.parametrize(
    "make",
    [
        lambda: CircuitBreakerOpenError("db", 1.0),
        lambda: RateLimitExceeded(1.0),
        lambda: KeyboardInterrupt(),
        lambda: SystemExit(1),
        lambda: asyncio.CancelledError(),
    ],
)
@pytest.mark.parametrize("retry_on", [(Exception,), (BaseException,)])
def test_never_retried_unless_asked(make: Callable[[], BaseException], retry_on: tuple) -> None:
    """Cancellation, exits, open breakers and rate limits are not retried by a broad retry_on."""
    exc_type = type(make())
    func = failing(1, make)
    retry, slept = recording_retry(RetryConfig(retry_on=retry_on))
    with pytest.raises(exc_type):
        retry.execute(func)
    assert len(func.calls) == 1
    assert slept == []


@pytest.mark.parametrize(
    ("make", "retry_after"),
    [
        (lambda: CircuitBreakerOpenError("db", 7.5), 7.5),
        (lambda: RateLimitExceeded(3.0), 3.0),
        (lambda: RateLimitExceeded(0.25), None),
        (lambda: RateLimitExceeded(float("inf")), None),
        (lambda: RateLimitExceeded(float("nan")), None),
    ],
)
def test_asked_for_exceptions_wait_at_least_retry_after(
    make: Callable[[], BaseException], retry_after: float | None
) -> None:
    """Named in retry_on, they are retried, after max(backoff delay, retry_after)."""
    exc_type = type(make())
    retry, slept = recording_retry(RetryConfig(max_attempts=3, retry_on=(exc_type,)))
    assert retry.execute(failing(2, make)) == "ok"
    if retry_after is None:  # shorter than the backoff (or not a number): the backoff wins
        assert slept == [1.0, 2.0]
    else:
        assert slept == [max(1.0, retry_after), max(2.0, retry_after)]


def test_keyboard_interrupt_retried_only_when_named() -> None:
    """Naming a never-retried class in retry_on is how to ask for it."""
    retry, slept = recording_retry(RetryConfig(retry_on=(KeyboardInterrupt,)))
    assert retry.execute(failing(1, KeyboardInterrupt)) == "ok"
    assert slept == [1.0]


def test_deadline_stops_before_a_sleep_that_would_cross_it() -> None:
    """max_total_time gives up when the next delay would end past the deadline."""
    clock = ManualClock()
    config = RetryConfig(max_attempts=10, max_total_time=5.0)
    retry, slept = recording_retry(config, clock)
    func = failing(100)
    with pytest.raises(ConnectionError) as info:
        retry.execute(func)
    # Attempts at t=0, 1, 3; the next delay (4 s) would end at 7 s > 5 s.
    assert slept == [1.0, 2.0]
    assert len(func.calls) == 3
    assert "gave up after 3 attempts: max_total_time=5.0s" in notes(info.value)[0]
    assert retry.give_ups == 1


def test_deadline_counts_the_time_attempts_take() -> None:
    """The deadline runs from the call's start, attempts included."""
    clock = ManualClock()
    retry, slept = recording_retry(RetryConfig(max_attempts=10, max_total_time=10.0), clock)

    def slow() -> None:
        clock.advance(4.0)
        raise ConnectionError("slow failure")

    with pytest.raises(ConnectionError):
        retry.execute(slow)
    # t=4 fails, sleep 1 -> 5, t=9 fails, a 2 s sleep would end at 11 > 10.
    assert slept == [1.0]


def test_outage_through_a_shared_budget_is_bounded() -> None:
    """1,000 failing calls through retries sharing one budget retry no more than it allows."""
    clock = ManualClock()
    budget = RetryBudget(ratio=0.1, min_retries_per_second=1.0, ttl=10.0, clock=clock)
    config = RetryConfig(max_attempts=5, budget=budget)
    retries = [Retry(f"svc{i}", config, clock=clock, sleep=lambda s: None) for i in range(4)]
    attempts = 0

    def down() -> None:
        nonlocal attempts
        attempts += 1
        raise ConnectionError("outage")

    budget_notes = 0
    for i in range(1000):
        with pytest.raises(ConnectionError) as info:
            retries[i % 4].execute(down)
        budget_notes += "the retry budget is exhausted" in notes(info.value)[0]
    total_retries = sum(r.retries for r in retries)
    # ratio * calls + min_retries_per_second * ttl
    assert total_retries <= 0.1 * 1000 + 1.0 * 10.0
    assert attempts == 1000 + total_retries
    assert total_retries >= 100  # the budget is spent, not ignored
    assert budget_notes >= 900
    assert sum(r.give_ups for r in retries) == 1000


def test_budget_recovers_when_old_traffic_leaves_the_window() -> None:
    """Retries are allowed again once the window has moved past the outage."""
    clock = ManualClock()
    budget = RetryBudget(ratio=0.0, min_retries_per_second=0.2, ttl=10.0, clock=clock)
    assert [budget.try_retry() for _ in range(3)] == [True, True, False]
    clock.advance(10.0)
    assert budget.try_retry()
    assert budget.available() == pytest.approx(1.0)


def test_on_retry_hook_gets_attempt_exception_and_delay() -> None:
    """on_retry is called before each sleep with (attempt, exception, delay)."""
    events = []
    config = RetryConfig(
        max_attempts=4, on_retry=lambda attempt, exc, delay: events.append((attempt, exc, delay))
    )
    retry, slept = recording_retry(config)
    assert retry.execute(failing(3)) == "ok"
    assert [(a, type(e), d) for a, e, d in events] == [
        (1, ConnectionError, 1.0),
        (2, ConnectionError, 2.0),
        (3, ConnectionError, 4.0),
    ]
    assert slept == [1.0, 2.0, 4.0]


def test_statistics_count_calls_retries_and_give_ups() -> None:
    """calls, retries and give_ups add up over successes, recoveries and failures."""
    retry, _ = recording_retry(RetryConfig(max_attempts=2, retry_on=(ConnectionError,)))
    retry.execute(lambda: 1)
    retry.execute(failing(1))
    with pytest.raises(ConnectionError):
        retry.execute(failing(5))
    with pytest.raises(FatalError):  # not retryable: neither a retry nor a give-up
        retry.execute(failing(1, FatalError))
    assert retry.statistics == {"calls": 4, "retries": 2, "give_ups": 1}
    assert (retry.calls, retry.retries, retry.give_ups) == (4, 2, 1)


def test_execute_passes_arguments_through() -> None:
    """Positional and keyword arguments reach the function, even one named ``func``."""
    retry = Retry("args")

    def echo(*args: Any, **kwargs: Any) -> tuple:
        return args, kwargs

    assert retry.execute(echo, 1, 2, func=3) == ((1, 2), {"func": 3})
    assert retry.execute(failing(0)) == "ok"


def test_decorated_function_keeps_its_identity_and_binds_as_a_method() -> None:
    """@with_retry keeps name, doc and __wrapped__, binds to instances, exposes .retry."""

    class Client:
        @with_retry(max_attempts=2)
        def get(self, key: str) -> tuple:
            """Gets a key."""
            return self, key

    client = Client()
    assert client.get("k") == (client, "k")
    assert Client.get.__name__ == "get"
    assert Client.get.__doc__ == "Gets a key."
    assert Client.get.__wrapped__.__name__ == "get"
    assert isinstance(Client.get.retry, Retry)
    assert Client.get.retry.name.endswith("Client.get")
    assert Client.get.retry.calls == 1


def test_with_retry_takes_a_config_or_fields_not_both() -> None:
    """with_retry(config) works; a config plus fields is a TypeError."""
    config = RetryConfig(max_attempts=2)
    func = failing(1)
    with instant_retries():
        assert with_retry(config, name="named")(func)() == "ok"
    with pytest.raises(TypeError, match="not both"):
        with_retry(config, max_attempts=3)
    with pytest.raises(TypeError, match=r"@with_retry\(\)"):
        with_retry(func)  # type: ignore[arg-type]


def test_concurrent_calls_are_all_counted() -> None:
    """Threads calling one decorated function lose no count and share no state."""
    import threading

    @with_retry(max_attempts=2)
    def work(x: int) -> int:
        return x * 2

    results: list[int] = []

    def run() -> None:
        results.extend(work(i) for i in range(2000))

    threads = [threading.Thread(target=run) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert len(results) == 8000
    assert work.retry.statistics == {"calls": 8000, "retries": 0, "give_ups": 0}


def test_instant_retries_records_delays_and_nests() -> None:
    """The testing switch skips sleeps, yields the delays, and restores the outer state."""
    slept: list[float] = []
    retry = Retry("t", RetryConfig(max_attempts=3), sleep=slept.append)
    with instant_retries() as outer:
        with instant_retries() as inner:
            retry.execute(failing(1))
        retry.execute(failing(2))
    retry.execute(failing(1))
    assert inner == [1.0]
    assert outer == [1.0, 2.0]
    assert slept == [1.0]


async def test_async_retries_on_an_injected_sleep() -> None:
    """execute_async retries with the async sleep it was given and counts like execute."""
    clock = ManualClock()
    retry = Retry("a", RetryConfig(max_attempts=3), clock=clock, async_sleep=clock.sleep_async)
    tries = []

    async def call() -> str:
        tries.append(clock.monotonic())
        if len(tries) < 3:
            raise ConnectionError("down")
        return "ok"

    assert await retry.execute_async(call) == "ok"
    assert tries == [0.0, 1.0, 3.0]
    assert retry.statistics == {"calls": 1, "retries": 2, "give_ups": 0}


async def test_async_cancellation_during_backoff_sleep() -> None:
    """Cancelling a task while it sleeps between attempts cancels it; nothing is retried."""
    sleeping = asyncio.Event()
    tries = []

    async def sleep_forever(seconds: float) -> None:
        sleeping.set()
        await asyncio.sleep(3600)

    async def call() -> None:
        tries.append(1)
        raise ConnectionError("down")

    retry = Retry("c", RetryConfig(max_attempts=5), async_sleep=sleep_forever)
    task = asyncio.ensure_future(retry.execute_async(call))
    await asyncio.wait_for(sleeping.wait(), timeout=5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert tries == [1]
    assert retry.retries == 1
    assert retry.give_ups == 0


async def test_async_cancelled_error_from_the_function_is_not_retried() -> None:
    """A CancelledError raised by the function propagates even with retry_on=(BaseException,)."""
    tries = []

    async def call() -> None:
        tries.append(1)
        raise asyncio.CancelledError

    retry = Retry("c", RetryConfig(retry_on=(BaseException,)))
    with instant_retries(), pytest.raises(asyncio.CancelledError):
        await retry.execute_async(call)
    assert tries == [1]


async def test_async_gives_up_with_a_note() -> None:
    """The async path stops on attempts and notes it, like the sync path."""
    retry = Retry("a", RetryConfig(max_attempts=2))

    async def call() -> None:
        raise ConnectionError("down")

    with instant_retries(), pytest.raises(ConnectionError) as info:
        await retry.execute_async(call)
    assert notes(info.value) == ["Retry 'a' gave up after 2 attempts: max_attempts=2 reached"]


@pytest.mark.parametrize(
    ("field", "value", "error"),
    [
        ("max_attempts", 0, ValueError),
        ("max_attempts", 2.5, TypeError),
        ("max_attempts", True, TypeError),
        ("initial_delay", -1.0, ValueError),
        ("initial_delay", float("nan"), ValueError),
        ("max_delay", float("inf"), ValueError),
        ("max_delay", 0.5, ValueError),  # below initial_delay (1.0)
        ("exponential_base", 0.5, ValueError),
        ("exponential_base", "2", TypeError),
        ("jitter", "yes", TypeError),
        ("backoff_strategy", "quadratic", ValueError),
        ("retry_on", (ValueError, 3), TypeError),
        ("retry_condition", 42, TypeError),
        ("max_total_time", 0.0, ValueError),
        ("budget", object(), TypeError),
        ("on_retry", "print", TypeError),
        ("seed", -1, ValueError),
    ],
)
def test_bad_config_names_the_field(field: str, value: Any, error: type[Exception]) -> None:
    """Invalid values fail at construction with an error naming the field."""
    with pytest.raises(error, match=field):
        RetryConfig(**{field: value})


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"ratio": -0.5}, "ratio"),
        ({"min_retries_per_second": float("nan")}, "min_retries_per_second"),
        ({"ttl": 0.0}, "ttl"),
    ],
)
def test_bad_budget_names_the_field(kwargs: dict, field: str) -> None:
    """RetryBudget rejects invalid values naming the field."""
    with pytest.raises(ValueError, match=field):
        RetryBudget(**kwargs)


def test_extras_are_keyword_only_and_config_is_frozen() -> None:
    """Fields beyond the document are keyword-only; a config cannot be changed."""
    with pytest.raises(TypeError):
        RetryConfig(3, 1.0, 60.0, 2.0, False, BackoffStrategy.LINEAR, (Exception,), None, 5.0)
    config = RetryConfig(backoff_strategy="linear")
    assert config.backoff_strategy is BackoffStrategy.LINEAR
    with pytest.raises(AttributeError):
        config.max_attempts = 5  # type: ignore[misc]
    changed = dataclasses.replace(config, max_attempts=5)
    assert (changed.max_attempts, changed.backoff_strategy) == (5, BackoffStrategy.LINEAR)
    with pytest.raises(ValueError, match="max_attempts"):
        dataclasses.replace(config, max_attempts=0)
    with pytest.raises(TypeError, match="config"):
        Retry("x", {"max_attempts": 3})  # type: ignore[arg-type]


# --- hooks that raise, async callables, budgets under threads -------------------------


class _Flaky:
    """A callable object whose ``__call__`` is a coroutine function."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.calls = 0

    async def __call__(self) -> str:
        self.calls += 1
        if self.calls <= self.failures:
            raise ConnectionError("flaky")
        return "ok"


async def test_with_retry_awaits_callable_objects_with_async_call() -> None:
    """An object with ``async def __call__`` takes the async path: it is awaited and retried."""
    flaky = _Flaky(failures=2)
    retrying = with_retry(max_attempts=3, initial_delay=0.0)(flaky)
    assert inspect.iscoroutinefunction(retrying)
    with instant_retries():
        assert await retrying() == "ok"
    assert flaky.calls == 3
    assert retrying.retry.retries == 2  # type: ignore[attr-defined]
    assert not hasattr(retrying, "failures")  # the object's state is not copied


def _raising_hook(*args: Any) -> Any:
    raise RuntimeError("the hook failed")


@pytest.mark.parametrize("hook", ["on_retry", "retry_condition"])
@pytest.mark.parametrize("path", ["execute", "decorated", "execute_async"])
def test_a_raising_hook_keeps_the_original_error_and_spends_no_budget(hook: str, path: str) -> None:
    """The hook's error propagates with the function's error as ``__context__``,
    whichever path ran (the native success path too), and no budget is spent."""
    clock = ManualClock()
    budget = RetryBudget(ratio=0.0, min_retries_per_second=0.3, ttl=10.0, clock=clock)
    available = budget.available()
    config = RetryConfig(max_attempts=3, initial_delay=0.0, budget=budget, **{hook: _raising_hook})
    retry = Retry("hooked", config, clock=clock, sleep=lambda s: None)
    original = ConnectionError("upstream down")

    def failing() -> None:
        raise original

    async def failing_async() -> None:
        raise original

    runs: dict[str, Callable[[], Any]] = {
        "execute": lambda: retry.execute(failing),
        "decorated": lambda: with_retry(config)(failing)(),
        "execute_async": lambda: asyncio.run(retry.execute_async(failing_async)),
    }
    with pytest.raises(RuntimeError, match="the hook failed") as caught:
        runs[path]()
    assert caught.value.__context__ is original
    assert budget.available() == available
    assert retry.retries == 0


def test_retry_budget_allows_exactly_its_bound_under_eight_threads() -> None:
    """8 threads racing for retries get exactly ``ratio * calls + floor`` between them."""
    clock = ManualClock()
    budget = RetryBudget(ratio=0.5, min_retries_per_second=10.0, ttl=10.0, clock=clock)
    for _ in range(200):
        budget.record_call()
    bound = 0.5 * 200 + 10.0 * 10.0
    start = threading.Barrier(8)
    granted = [0] * 8

    def worker(index: int) -> None:
        start.wait(timeout=10)
        for _ in range(100):
            granted[index] += budget.try_retry()

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert sum(granted) == bound
    assert budget.available() == 0.0


def test_retry_budget_repr_shows_its_parameters_and_what_is_left() -> None:
    """repr(budget) shows ratio, floor, window and the retries available now."""
    budget = RetryBudget(ratio=0.25, min_retries_per_second=2.0, ttl=5.0, clock=ManualClock())
    assert repr(budget) == (
        "RetryBudget(ratio=0.25, min_retries_per_second=2.0, ttl=5.0, available=10)"
    )


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"ttl": "1"}, TypeError, "ttl must be a number, got str"),
        ({"ratio": True}, TypeError, "ratio must be a number, got bool"),
        ({"ttl": 2**1024}, ValueError, "ttl must be a finite number, got an int of 1025 bits"),
        ({"ttl": 1e300}, ValueError, "ttl must be a finite number > 0 and <= 1e\\+09"),
    ],
)
def test_bad_budget_values_get_the_shared_errors(kwargs: dict, error: type, message: str) -> None:
    """Strings, bools, huge ints and huge durations get the shared errors naming the field."""
    with pytest.raises(error, match=message):
        RetryBudget(**kwargs)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("max_total_time", 1e300, "max_total_time must be a finite number > 0 and <= 1e\\+09"),
        ("max_delay", 2**1024, "max_delay must be a finite number, got an int of 1025 bits"),
        ("initial_delay", 2**1024, "initial_delay must be a finite number, got an int"),
        ("exponential_base", 2**1024, "exponential_base must be a finite number, got an int"),
    ],
)
def test_config_numbers_too_large_name_their_field(field: str, value: Any, message: str) -> None:
    """Durations and numbers too large for the arithmetic are refused naming the field."""
    with pytest.raises(ValueError, match=message):
        RetryConfig(**{field: value})


def test_instant_retries_records_only_the_current_threads_delays() -> None:
    """Another thread's retries sleep as usual and are not recorded."""
    slept: list[float] = []
    other = Retry("other", RetryConfig(max_attempts=2, initial_delay=0.5), sleep=slept.append)
    mine = Retry("mine", RetryConfig(max_attempts=2, initial_delay=0.25), sleep=slept.append)

    def fail() -> None:
        raise ConnectionError("down")

    with instant_retries() as delays:
        errors: list[BaseException] = []

        def in_another_thread() -> None:
            try:
                other.execute(fail)
            except ConnectionError as exc:
                errors.append(exc)

        thread = threading.Thread(target=in_another_thread)
        thread.start()
        thread.join(timeout=10)
        with pytest.raises(ConnectionError):
            mine.execute(fail)
    assert delays == [0.25]
    assert slept == [0.5]
    assert len(errors) == 1


def test_a_bare_retry_core_says_it_cannot_retry() -> None:
    """``RetryCore`` is the base of ``Retry``: used alone, a failing call gets a
    ``TypeError`` saying what is missing, chained to the call's own error."""
    from shared._backend import core

    def fails() -> None:
        raise ValueError("boom")

    with pytest.raises(TypeError, match=r"needs a subclass that defines _retry") as caught:
        core.RetryCore().execute(fails)
    assert isinstance(caught.value.__cause__, ValueError)
    assert core.RetryCore().execute(lambda: 7) == 7  # the success path needs nothing

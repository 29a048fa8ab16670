"""Timeout protection: the document's examples, every thread, nesting, async, validation."""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import inspect
import math
import signal
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from shared.resilience import TimeoutContext, TimeoutError, _deadlines, with_timeout

HAS_ALARM = hasattr(signal, "setitimer")
needs_alarm = pytest.mark.skipif(not HAS_ALARM, reason="no setitimer/SIGALRM on this platform")

# A bound on every real wait: a timeout that does not fire fails the test, never hangs it.
LONG = 2.0


def spin(seconds: float) -> None:
    """Busy Python code (interruptible between bytecodes) for up to ``seconds``."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        pass


def in_thread(target: Callable[[], Any]) -> Any:
    """Runs ``target`` in a new thread; returns its result or raises its exception."""
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["result"] = target()
        except BaseException as exc:  # handed back to the test's thread
            outcome["error"] = exc

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(LONG * 3)
    assert not thread.is_alive()
    if "error" in outcome:
        raise outcome["error"]
    return outcome["result"]


def alarm_state() -> tuple[Any, tuple[float, float]]:
    return signal.getsignal(signal.SIGALRM), signal.getitimer(signal.ITIMER_REAL)


@pytest.fixture
def alarm_untouched() -> Any:
    """Asserts a test leaves the SIGALRM handler and the itimer as it found them."""
    if not HAS_ALARM:
        yield
        return
    handler_before = signal.getsignal(signal.SIGALRM)
    timer_before = signal.getitimer(signal.ITIMER_REAL)
    yield
    assert handler_chains(handler_before)
    assert abs(signal.getitimer(signal.ITIMER_REAL)[0] - timer_before[0]) < 1.0


def handler_chains(handler: Any) -> bool:
    """The SIGALRM handler is ``handler``, or ours calling ``handler`` for foreign alarms."""
    current = signal.getsignal(signal.SIGALRM)
    return current is handler or getattr(current, "previous", None) is handler


# -- the document's examples ------------------------------------------------------------


def test_document_decorator_example() -> None:
    """`@with_timeout(5.0)` returns the result; `except TimeoutError` catches a timeout."""

    def process_data(data: list[int]) -> int:
        return sum(data)

    @with_timeout(5.0)
    def long_operation(data: list[int]) -> int:
        return process_data(data)

    assert long_operation([1, 2, 3]) == 6

    @with_timeout(0.05)
    def stuck_operation(data: list[int]) -> int:
        spin(LONG)
        return process_data(data)

    def caller() -> int | None:
        try:
            return stuck_operation([1])
        except TimeoutError:
            return None

    assert caller() is None


def test_document_context_manager_example() -> None:
    """`with TimeoutContext(seconds=10.0)` lets a quick block through and stops a slow one."""
    with TimeoutContext(seconds=10.0):
        result = "another_operation"
    assert result == "another_operation"

    handled = False
    try:
        with TimeoutContext(seconds=0.05):
            spin(LONG)
    except TimeoutError:
        handled = True
    assert handled


async def test_document_async_example() -> None:
    """`@with_timeout` on a coroutine function: the result, or TimeoutError at the deadline."""

    async def fetch_data() -> str:
        await asyncio.sleep(0)
        return "data"

    @with_timeout(5.0)
    async def async_operation() -> str:
        return await fetch_data()

    assert await async_operation() == "data"

    @with_timeout(0.05)
    async def slow_operation() -> None:
        await asyncio.sleep(LONG)

    with pytest.raises(TimeoutError, match=r"0\.05 seconds"):
        await slow_operation()


async def test_document_method_example() -> None:
    """The migration guide's `@with_timeout(30.0)` on an async method."""

    class LlamaClient:
        async def generate(self, prompt: str) -> str:
            return prompt.upper()

    class AIService:
        def __init__(self) -> None:
            self.llama_client = LlamaClient()

        @with_timeout(30.0)
        async def generate_strategy(self, prompt: str) -> str:
            return await self.llama_client.generate(prompt)

    assert await AIService().generate_strategy("buy") == "BUY"


def test_import_cheat_sheet() -> None:
    """The cheat sheet's names import, and TimeoutError is the builtin's subclass."""
    from shared.resilience import TimeoutError as DocumentTimeoutError
    from shared.resilience import with_timeout as document_with_timeout

    assert document_with_timeout is with_timeout
    assert issubclass(DocumentTimeoutError, builtins.TimeoutError)


# -- validation and the decorator's manners ----------------------------------------------


@pytest.mark.parametrize("bad", [0, -1, -0.5, math.nan, math.inf, -math.inf])
def test_bad_seconds_value(bad: float) -> None:
    """Zero, negative, NaN or infinite `seconds`: ValueError naming it, at construction."""
    with pytest.raises(ValueError, match="seconds"):
        TimeoutContext(seconds=bad)
    with pytest.raises(ValueError, match="seconds"):
        with_timeout(bad)


@pytest.mark.parametrize("bad", ["5", None, True, [1.0]])
def test_bad_seconds_type(bad: Any) -> None:
    """A `seconds` that is not a number (bool included): TypeError naming it."""
    with pytest.raises(TypeError, match="seconds"):
        TimeoutContext(seconds=bad)
    with pytest.raises(TypeError, match="seconds"):
        with_timeout(bad)


def test_decorator_keeps_metadata_and_signature() -> None:
    """The wrapper keeps the name, docstring, signature and the async-ness."""

    def compute(a: int, b: int = 2, *, scale: float = 1.0) -> float:
        """Adds and scales."""
        return (a + b) * scale

    async def fetch(url: str) -> str:
        return url

    wrapped = with_timeout(1.0)(compute)
    assert wrapped.__name__ == "compute"
    assert wrapped.__doc__ == "Adds and scales."
    assert inspect.signature(wrapped) == inspect.signature(compute)
    assert wrapped(1, scale=2.0) == 6.0
    assert inspect.iscoroutinefunction(with_timeout(1.0)(fetch))
    assert not inspect.iscoroutinefunction(wrapped)


def test_decorator_on_methods() -> None:
    """Instance, class and static methods all bind and run through the wrapper."""

    class Account:
        factor = 3

        def __init__(self, balance: int) -> None:
            self.balance = balance

        @with_timeout(1.0)
        def doubled(self) -> int:
            return self.balance * 2

        @classmethod
        @with_timeout(1.0)
        def tripled(cls, value: int) -> int:
            return value * cls.factor

        @staticmethod
        @with_timeout(1.0)
        def negated(value: int) -> int:
            return -value

    account = Account(21)
    assert account.doubled() == 42
    assert Account.tripled(2) == 6
    assert account.negated(5) == -5


def test_decorator_rejects_generators() -> None:
    """A generator function can't be bounded by a decorator (its body runs later)."""

    def numbers() -> Any:
        yield 1

    with pytest.raises(TypeError, match="generator"):
        with_timeout(1.0)(numbers)


@pytest.mark.parametrize("where", ["main", "worker"])
def test_block_own_builtin_timeout_passes_through(where: str) -> None:
    """A builtin TimeoutError raised by the block itself is not relabelled or swallowed."""

    def raise_socket_timeout() -> builtins.TimeoutError:
        context = TimeoutContext(seconds=1.0)
        with pytest.raises(builtins.TimeoutError) as caught, context:
            raise builtins.TimeoutError("the socket's own")
        assert not context.expired
        return caught.value

    error = raise_socket_timeout() if where == "main" else in_thread(raise_socket_timeout)
    assert type(error) is builtins.TimeoutError
    assert str(error) == "the socket's own"


def test_context_is_one_block_at_a_time_and_reusable() -> None:
    """An object serves blocks one after another; entering it twice at once is an error."""
    context = TimeoutContext(seconds=1.0)
    assert repr(context) == "TimeoutContext(seconds=1.0)"
    for _ in range(3):
        with context:
            pass
    with context, pytest.raises(RuntimeError, match="already active"), context:
        pass
    assert not context.expired


# -- the main thread ------------------------------------------------------------------------


@needs_alarm
def test_main_thread_interrupts_sleep(alarm_untouched: None) -> None:
    """On the main thread SIGALRM cuts a blocking `time.sleep` short."""
    started = time.monotonic()
    context = TimeoutContext(seconds=0.05)
    with pytest.raises(TimeoutError, match=r"0\.05 seconds") as caught, context:
        time.sleep(LONG)
    assert 0.04 <= time.monotonic() - started < LONG
    assert context.expired
    assert type(caught.value) is TimeoutError


@needs_alarm
def test_main_thread_chains_the_application_handler_and_leaves_its_itimer(
    alarm_untouched: None,
) -> None:
    """Our handler stays installed and chains the application's; its itimer is untouched."""
    fired: list[int] = []

    def previous_handler(signum: int, frame: Any) -> None:
        fired.append(signum)

    saved = signal.signal(signal.SIGALRM, previous_handler)
    saved_timer = signal.setitimer(signal.ITIMER_REAL, 50.0)
    try:
        with TimeoutContext(seconds=1.0):
            assert handler_chains(previous_handler)
        assert handler_chains(previous_handler)
        remaining, _ = signal.getitimer(signal.ITIMER_REAL)
        assert 49.0 < remaining <= 50.0
        with pytest.raises(TimeoutError), TimeoutContext(seconds=0.02):
            spin(LONG)
        assert 49.0 < signal.getitimer(signal.ITIMER_REAL)[0] <= 50.0
        assert fired == []  # our alarms never reach the application's handler
        signal.alarm(1)
        spin(1.5)
        assert fired == [signal.SIGALRM]  # its own signal.alarm does
    finally:
        signal.setitimer(signal.ITIMER_REAL, *saved_timer)
        signal.signal(signal.SIGALRM, saved)


@needs_alarm
def test_handler_installed_after_ours_is_wrapped_at_the_next_block(
    alarm_untouched: None,
) -> None:
    """An application handler installed after ours gets its alarms; ours still fires."""
    fired: list[int] = []
    with TimeoutContext(seconds=1.0):
        pass  # ours is installed
    saved = signal.signal(signal.SIGALRM, lambda signum, frame: fired.append(signum))
    saved_timer = signal.getitimer(signal.ITIMER_REAL)
    try:

        def sleep_through_its_alarm() -> None:
            with TimeoutContext(seconds=0.05):
                signal.setitimer(signal.ITIMER_REAL, 0.01)  # the application's own alarm
                time.sleep(LONG)  # interrupted at our deadline, with its itimer running

        with pytest.raises(TimeoutError):
            sleep_through_its_alarm()
        assert fired == [signal.SIGALRM]
        signal.alarm(1)
        spin(1.5)
        assert fired == [signal.SIGALRM, signal.SIGALRM]  # its own signal.alarm too
        assert getattr(signal.getsignal(signal.SIGALRM), "previous", None) is not None
    finally:
        signal.setitimer(signal.ITIMER_REAL, *saved_timer)
        signal.signal(signal.SIGALRM, saved)


@needs_alarm
def test_previous_itimer_due_inside_block_fires_after_it(alarm_untouched: None) -> None:
    """A foreign alarm due during our block is delivered to its handler once we leave."""
    fired: list[int] = []
    saved = signal.signal(signal.SIGALRM, lambda signum, frame: fired.append(signum))
    saved_timer = signal.setitimer(signal.ITIMER_REAL, 0.01)
    try:
        with TimeoutContext(seconds=1.0):
            spin(0.03)
        spin(0.05)
        assert fired == [signal.SIGALRM]
    finally:
        signal.setitimer(signal.ITIMER_REAL, *saved_timer)
        signal.signal(signal.SIGALRM, saved)


@needs_alarm
def test_own_exception_propagates_and_leaves_no_alarm() -> None:
    """A block that raises before its deadline: its exception, and nothing fires later."""
    timer_before = signal.getitimer(signal.ITIMER_REAL)

    @with_timeout(0.03)
    def failing() -> None:
        raise KeyError("own")

    with pytest.raises(KeyError, match="own"):
        failing()
    assert abs(signal.getitimer(signal.ITIMER_REAL)[0] - timer_before[0]) < 0.5
    spin(0.06)  # past the deadline: nothing may fire now


@needs_alarm
def test_success_leaves_no_alarm() -> None:
    """After a block that finished in time nothing fires, even past its deadline."""
    handler_before = signal.getsignal(signal.SIGALRM)
    with TimeoutContext(seconds=0.02):
        pass
    assert handler_chains(handler_before)
    spin(0.05)


# -- nesting (run on the main thread and in a worker) ------------------------------------------


def _inner_fires_then_outer() -> list[str]:
    events = []
    started = time.monotonic()
    outer = TimeoutContext(seconds=0.15)
    try:
        with outer:
            inner = TimeoutContext(seconds=0.03)
            try:
                with inner:
                    spin(LONG)
            except TimeoutError as exc:
                events.append(f"inner {exc} at {time.monotonic() - started:.2f}")
            assert inner.expired
            assert not outer.expired
            spin(LONG)
    except TimeoutError as exc:
        events.append(f"outer {exc}")
        elapsed = time.monotonic() - started
        assert 0.14 <= elapsed < LONG
    assert outer.expired
    return events


def _outer_wins_over_longer_inner() -> str:
    outer = TimeoutContext(seconds=0.03)
    inner = TimeoutContext(seconds=5.0)
    try:
        with outer, inner:
            spin(LONG)
    except TimeoutError as exc:
        assert outer.expired
        assert not inner.expired
        return str(exc)
    raise AssertionError("no timeout")


@pytest.mark.parametrize("where", ["main", "worker"])
def test_nested_inner_fires_and_outer_still_fires(where: str) -> None:
    """Inner deadline fires first; the outer one is restored and fires at its own time."""
    events = _inner_fires_then_outer() if where == "main" else in_thread(_inner_fires_then_outer)
    assert len(events) == 2
    assert events[0].startswith("inner operation timed out after 0.03 seconds")
    assert events[1] == "outer operation timed out after 0.15 seconds"


@pytest.mark.parametrize("where", ["main", "worker"])
def test_nested_longer_inner_outer_wins(where: str) -> None:
    """An inner block with a later deadline does not postpone the outer one."""
    message = (
        _outer_wins_over_longer_inner()
        if where == "main"
        else in_thread(_outer_wins_over_longer_inner)
    )
    assert message == "operation timed out after 0.03 seconds"


# -- worker threads ------------------------------------------------------------------------


def test_worker_thread_is_interrupted() -> None:
    """A busy worker thread gets TimeoutError at its deadline (not only the main thread)."""

    def work() -> float:
        started = time.monotonic()
        context = TimeoutContext(seconds=0.05)
        with pytest.raises(TimeoutError, match=r"0\.05 seconds") as caught, context:
            spin(LONG)
        assert type(caught.value) is TimeoutError  # converted, not the private class
        return time.monotonic() - started

    # the block spins for LONG (2 s): the bound leaves room for a loaded 2-core host
    assert 0.04 <= in_thread(work) < 1.6


def test_worker_sleep_loop_is_interrupted_between_calls() -> None:
    """Short C calls in a loop: the exception lands when one returns to Python."""

    @with_timeout(0.05)
    def poll() -> None:
        for _ in range(400):
            time.sleep(0.005)

    started = time.monotonic()
    with pytest.raises(TimeoutError):
        in_thread(poll)
    # polling would take 2 s: the bound leaves room for a loaded 2-core host
    assert time.monotonic() - started < 1.6


def test_worker_own_exception_and_no_stale_timeout() -> None:
    """A worker's own exception propagates and no TimeoutError arrives later."""

    def work() -> str:
        with pytest.raises(ZeroDivisionError), TimeoutContext(seconds=0.02):
            _ = 1 / 0
        spin(0.06)  # well past the deadline
        return "clean"

    assert in_thread(work) == "clean"


def test_main_thread_fallback_without_signals(monkeypatch: pytest.MonkeyPatch) -> None:
    """Where SIGALRM can't be used, the main thread is served by the scheduler thread."""
    monkeypatch.setattr(_deadlines, "_pthread_kill", None)
    _deadlines._backend.set_alarm_handler(object())  # the next block checks again
    signal_modes: list[bool] = []

    def bounded_spin() -> None:
        with TimeoutContext(seconds=0.03):
            signal_modes.append(_deadlines.current_thread_state().signal_mode)
            spin(LONG)

    try:
        with pytest.raises(TimeoutError):
            bounded_spin()
        assert signal_modes == [False]
    finally:
        monkeypatch.undo()
        _deadlines._backend.set_alarm_handler(object())
        with TimeoutContext(seconds=1.0):  # back to SIGALRM
            assert _deadlines.current_thread_state().signal_mode == HAS_ALARM


def test_swallowed_inner_timeout_outer_still_fires_in_worker() -> None:
    """Code that catches an inner timeout and carries on is still bounded by the outer one."""

    def work() -> str:
        try:
            # 0.3 s: three inner timeouts take about 0.1 s on a busy machine (each fires
            # up to two switch intervals late in a CPU-bound thread); the outer one must
            # fire after them, not during one (the inner block's suppress would eat it).
            with TimeoutContext(seconds=0.3):
                for _ in range(3):
                    with contextlib.suppress(TimeoutError), TimeoutContext(seconds=0.02):
                        spin(LONG)
                spin(LONG)
        except TimeoutError as exc:
            return str(exc)
        return "no timeout"

    assert in_thread(work) == "operation timed out after 0.3 seconds"


# -- async -----------------------------------------------------------------------------------


async def test_async_context_raises_our_timeout_error() -> None:
    """`async with TimeoutContext` raises our TimeoutError and leaves the task uncancelled."""
    context = TimeoutContext(seconds=0.03)
    with pytest.raises(TimeoutError, match=r"0\.03 seconds") as caught:
        async with context:
            await asyncio.sleep(LONG)
    assert type(caught.value) is TimeoutError
    assert context.expired
    task = asyncio.current_task()
    assert task is not None
    if hasattr(task, "cancelling"):
        assert task.cancelling() == 0
    await asyncio.sleep(0)  # the task can still await: no cancellation left behind


async def test_async_context_lets_a_quick_block_through() -> None:
    """A block that finishes in time returns normally and reports not expired."""
    context = TimeoutContext(seconds=1.0)
    async with context:
        await asyncio.sleep(0)
    assert not context.expired


async def test_async_outer_cancel_propagates_as_cancelled() -> None:
    """Cancelling the task from outside is a CancelledError, not a TimeoutError."""
    entered = asyncio.Event()

    @with_timeout(5.0)
    async def wait_forever() -> None:
        entered.set()
        await asyncio.sleep(LONG)

    task = asyncio.ensure_future(wait_forever())
    await entered.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_async_own_error_and_builtin_timeout_pass_through() -> None:
    """The block's own exceptions (a builtin TimeoutError too) are not relabelled."""
    with pytest.raises(builtins.TimeoutError) as caught:
        async with TimeoutContext(seconds=1.0):
            raise builtins.TimeoutError("the socket's own")
    assert type(caught.value) is builtins.TimeoutError
    with pytest.raises(KeyError):
        async with TimeoutContext(seconds=1.0):
            raise KeyError("x")


async def test_async_nested_inner_fires_outer_survives() -> None:
    """An inner async timeout fires and is caught; the outer block carries on in time."""
    async with TimeoutContext(seconds=1.0) as outer:
        with pytest.raises(TimeoutError):
            async with TimeoutContext(seconds=0.02):
                await asyncio.sleep(LONG)
        await asyncio.sleep(0.01)
    assert not outer.expired


def test_async_context_needs_a_task() -> None:
    """`async with` outside a task is a RuntimeError from the event loop's timeout."""

    async def enter_outside_task() -> None:
        async with TimeoutContext(seconds=1.0):
            pass

    coroutine = enter_outside_task()
    with pytest.raises(RuntimeError):
        coroutine.send(None)
    coroutine.close()

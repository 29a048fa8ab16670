"""CircuitBreaker with asyncio: call_async, async protect, async with, cancellation."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
from collections.abc import Iterator

import pytest

from shared.resilience import (
    CircuitBreaker,
    CircuitBreakerConfig,
    CircuitBreakerOpenError,
    CircuitBreakerState,
)
from shared.testing import ManualClock


def open_breaker(clock: ManualClock, **config: object) -> CircuitBreaker:
    breaker = CircuitBreaker(
        "async",
        CircuitBreakerConfig(failure_threshold=1, timeout=1.0, **config),  # type: ignore[arg-type]
        clock=clock,
        registry=None,
    )
    with pytest.raises(ConnectionError), breaker:
        raise ConnectionError
    return breaker


async def test_cancelled_half_open_probe_gives_its_permit_back() -> None:
    """Cancelling the only probe frees its slot: the next caller is admitted."""
    clock = ManualClock()
    breaker = open_breaker(clock)
    clock.advance(1)
    started, release = asyncio.Event(), asyncio.Event()

    async def hang() -> str:
        started.set()
        await release.wait()
        return "never"

    probe = asyncio.create_task(breaker.call_async(hang))
    await asyncio.wait_for(started.wait(), 5)
    assert breaker.state is CircuitBreakerState.HALF_OPEN
    with pytest.raises(CircuitBreakerOpenError):
        await breaker.call_async(asyncio.sleep, 0)
    probe.cancel()
    with pytest.raises(asyncio.CancelledError):
        await probe
    assert breaker.state is CircuitBreakerState.HALF_OPEN
    assert await breaker.call_async(asyncio.sleep, 0, "probe ok") == "probe ok"


async def test_cancellation_is_neutral_when_closed() -> None:
    """A cancelled call is neither a failure nor a success, even if BaseException is expected."""
    breaker = CircuitBreaker(
        "cancel",
        CircuitBreakerConfig(failure_threshold=1, expected_exceptions=(BaseException,)),
        registry=None,
    )
    task = asyncio.create_task(breaker.call_async(asyncio.sleep, 10))
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert breaker.state is CircuitBreakerState.CLOSED
    assert (breaker.failure_count, breaker.success_count) == (0, 0)
    assert breaker.counters()["calls_ignored"] == 1


async def test_async_protect_and_async_with() -> None:
    """@protect on an async def and `async with` count outcomes like call does."""
    breaker = CircuitBreaker("aw", CircuitBreakerConfig(failure_threshold=2), registry=None)

    @breaker.protect
    async def fetch(x: int) -> int:
        await asyncio.sleep(0)
        if x < 0:
            raise ConnectionError
        return x * 2

    assert await fetch(21) == 42
    assert fetch.__name__ == "fetch"
    with pytest.raises(ConnectionError):
        await fetch(-1)
    async with breaker:
        await asyncio.sleep(0)
    with pytest.raises(ConnectionError):
        async with breaker:
            raise ConnectionError
    with pytest.raises(ConnectionError):
        await fetch(-1)
    assert breaker.state is CircuitBreakerState.OPEN
    with pytest.raises(CircuitBreakerOpenError):
        async with breaker:
            pytest.fail("the body must not run while open")
    assert (breaker.success_count, breaker.failure_count) == (2, 3)


async def test_cancelled_async_with_probe_gives_its_permit_back() -> None:
    """A task cancelled inside `async with` on a half-open breaker frees the probe slot."""
    clock = ManualClock()
    breaker = open_breaker(clock)
    clock.advance(1)
    entered = asyncio.Event()

    async def hold() -> None:
        async with breaker:
            entered.set()
            await asyncio.sleep(10)

    task = asyncio.create_task(hold())
    await asyncio.wait_for(entered.wait(), 5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    async with breaker:
        pass
    assert breaker.state is CircuitBreakerState.HALF_OPEN
    assert breaker.counters()["calls_ignored"] == 1


async def test_concurrent_tasks_keep_their_own_with_permits() -> None:
    """Interleaved `async with` blocks in different tasks record their own outcomes."""
    breaker = CircuitBreaker("tasks", CircuitBreakerConfig(failure_threshold=10), registry=None)

    async def one(fail: bool) -> None:
        async with breaker:
            await asyncio.sleep(0)
            if fail:
                raise ConnectionError

    results = await asyncio.gather(*(one(i % 2 == 0) for i in range(6)), return_exceptions=True)
    assert sum(isinstance(r, ConnectionError) for r in results) == 3
    assert (breaker.success_count, breaker.failure_count) == (3, 3)


class AsyncClient:
    """A callable object whose ``__call__`` is ``async def``."""

    def __init__(self) -> None:
        self.calls = 0

    async def __call__(self, fail: bool) -> str:
        self.calls += 1
        await asyncio.sleep(0)
        if fail:
            raise ConnectionError("down")
        return "ok"


async def test_protect_awaits_callable_objects_with_async_call() -> None:
    """An object with ``async def __call__`` (or a partial of one) takes the async path."""
    breaker = CircuitBreaker("objects", CircuitBreakerConfig(failure_threshold=3), registry=None)
    client = AsyncClient()
    protected = breaker.protect(client)
    assert asyncio.iscoroutinefunction(protected)
    assert await protected(False) == "ok"
    for _ in range(3):
        with pytest.raises(ConnectionError):
            await protected(True)
    assert (breaker.success_count, breaker.failure_count) == (1, 3)
    assert breaker.state is CircuitBreakerState.OPEN
    with pytest.raises(CircuitBreakerOpenError):
        await protected(False)
    assert client.calls == 4

    other = CircuitBreaker("partials", CircuitBreakerConfig(failure_threshold=1), registry=None)
    failing = other.protect(functools.partial(AsyncClient(), True))
    with pytest.raises(ConnectionError):
        await failing()
    assert other.state is CircuitBreakerState.OPEN


async def test_exit_in_another_task_gives_the_probe_slot_back() -> None:
    """``__enter__`` in one task and ``__exit__`` in another: the outcome is recorded."""
    clock = ManualClock()
    breaker = open_breaker(clock, success_threshold=2)
    clock.advance(1)

    async def enter() -> None:
        breaker.__enter__()

    async def leave(error: BaseException | None) -> None:
        breaker.__exit__(None if error is None else type(error), error, None)

    await asyncio.create_task(enter())
    assert breaker.state is CircuitBreakerState.HALF_OPEN
    await asyncio.create_task(leave(None))  # a success, recorded
    await asyncio.create_task(enter())  # the slot was given back: admitted again
    await asyncio.create_task(leave(asyncio.CancelledError()))  # neutral
    await asyncio.create_task(enter())
    await asyncio.create_task(leave(None))
    assert breaker.state is CircuitBreakerState.CLOSED
    assert breaker.counters()["calls_ignored"] == 1
    with pytest.raises(RuntimeError, match="__exit__ without __enter__"):
        breaker.__exit__(None, None, None)


def test_generator_context_manager_resumed_in_copied_contexts() -> None:
    """A ``with breaker:`` inside a generator, entered and left in different copied contexts."""
    clock = ManualClock()
    breaker = open_breaker(clock, success_threshold=1)
    clock.advance(1)

    @contextlib.contextmanager
    def guarded() -> Iterator[None]:
        with breaker:
            yield

    manager = guarded()
    contextvars.copy_context().run(manager.__enter__)
    assert breaker.state is CircuitBreakerState.HALF_OPEN
    contextvars.copy_context().run(manager.__exit__, None, None, None)
    assert breaker.state is CircuitBreakerState.CLOSED
    with breaker:
        pass


def test_an_exit_prefers_its_own_contexts_block() -> None:
    """Blocks of one breaker in two contexts: each exit records its own block's permit.

    Context A enters while closed; the breaker opens and turns half-open; context B
    enters as the probe. A's late failure must not reopen the breaker (its phase is
    over), and B's success closes it.
    """
    clock = ManualClock()
    breaker = CircuitBreaker(
        "contexts",
        CircuitBreakerConfig(failure_threshold=1, success_threshold=1, timeout=1.0),
        clock=clock,
        registry=None,
    )
    context_a, context_b = contextvars.copy_context(), contextvars.copy_context()
    context_a.run(breaker.__enter__)
    with pytest.raises(ConnectionError), breaker:
        raise ConnectionError
    assert breaker.state is CircuitBreakerState.OPEN
    clock.advance(2)
    context_b.run(breaker.__enter__)
    assert breaker.state is CircuitBreakerState.HALF_OPEN
    error = ConnectionError("late")
    context_a.run(breaker.__exit__, ConnectionError, error, None)
    assert breaker.state is CircuitBreakerState.HALF_OPEN
    context_b.run(breaker.__exit__, None, None, None)
    assert breaker.state is CircuitBreakerState.CLOSED
    assert breaker.failure_count == 2  # the late failure is counted, but moved nothing
    with pytest.raises(RuntimeError):
        context_a.run(breaker.__exit__, None, None, None)

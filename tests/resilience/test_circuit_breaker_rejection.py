"""The rejection error and the arguments of ``call``: what callers can observe.

Every rejection raises a fresh ``CircuitBreakerOpenError``: it carries its own
``retry_after``, context and a one-entry traceback, an error a caller kept is
never changed by a later rejection, and nothing but the caller keeps the
rejected caller's frame alive. They run on both backends.

They catch with plain ``try``/``except`` on purpose: ``pytest.raises`` keeps a
reference to the error.
"""
# ruff: noqa: PT017, SIM105

from __future__ import annotations

import gc
import inspect
import sys
import threading
import weakref
from types import ModuleType, TracebackType
from typing import Any

import pytest

import shared
from shared.resilience import CircuitBreaker, CircuitBreakerConfig, CircuitBreakerOpenError
from shared.testing import ManualClock


def open_breaker(clock: ManualClock, timeout: float = 30.0) -> CircuitBreaker:
    config = CircuitBreakerConfig(failure_threshold=1, timeout=timeout)
    breaker = CircuitBreaker("svc", config, clock=clock, registry=None)
    with pytest.raises(ZeroDivisionError):
        breaker.call(lambda: 1 / 0)
    return breaker


def tb_length(tb: TracebackType | None) -> int:
    length = 0
    while tb is not None:
        length += 1
        tb = tb.tb_next
    return length


def never_called() -> None:
    raise AssertionError("an open breaker called the function")


def test_each_rejection_carries_its_own_retry_after() -> None:
    """Two rejections in a row (neither kept) give the retry_after of their own moment."""
    clock = ManualClock(start=0.0)
    breaker = open_breaker(clock)
    seen = []
    for advance in (5.0, 10.0, 0.0):
        clock.advance(advance)
        try:
            breaker.call(never_called)
        except CircuitBreakerOpenError as error:
            seen.append((error.name, error.retry_after, error.args))
    assert seen == [
        ("svc", pytest.approx(25.0), ("svc", pytest.approx(25.0))),
        ("svc", pytest.approx(15.0), ("svc", pytest.approx(15.0))),
        ("svc", pytest.approx(15.0), ("svc", pytest.approx(15.0))),
    ]


def test_a_kept_error_is_never_changed_by_later_rejections() -> None:
    """An error the caller keeps keeps its args, traceback and context."""
    clock = ManualClock(start=0.0)
    breaker = open_breaker(clock)
    try:
        raise KeyError("first")
    except KeyError as outer:
        try:
            breaker.call(never_called)
        except CircuitBreakerOpenError as error:
            kept = error
        first_context = outer
    kept_tb = kept.__traceback__
    kept_tb_length = tb_length(kept_tb)
    for _ in range(3):
        clock.advance(1.0)
        try:
            breaker.call(never_called)
        except CircuitBreakerOpenError as error:
            assert error is not kept
            assert error.__context__ is None
    assert kept.args == ("svc", pytest.approx(30.0))
    assert kept.__traceback__ is kept_tb
    assert tb_length(kept.__traceback__) == kept_tb_length
    assert kept.__context__ is first_context


def test_notes_and_attributes_of_a_dropped_error_do_not_leak() -> None:
    """Notes, attributes and a cause set on a dropped error never show on the next one."""
    clock = ManualClock(start=0.0)
    breaker = open_breaker(clock)
    for mutate in (
        lambda e: e.add_note("from an earlier rejection"),
        lambda e: setattr(e, "__notes__", ["set by hand"]),
        lambda e: setattr(e, "extra", 1),
        lambda e: setattr(e, "__cause__", ValueError("earlier")),
        lambda e: setattr(e, "__suppress_context__", True),
    ):
        try:
            breaker.call(never_called)
        except CircuitBreakerOpenError as error:
            mutate(error)
        try:
            raise KeyError("handled")
        except KeyError as handled:
            try:
                breaker.call(never_called)
            except CircuitBreakerOpenError as error:
                assert not hasattr(error, "__notes__")
                assert not hasattr(error, "extra")
                assert error.__cause__ is None
                assert error.__suppress_context__ is False
                assert error.__context__ is handled


def test_the_traceback_does_not_grow_across_rejections() -> None:
    """Every rejection's traceback is as long as the first one's (one entry on Rust)."""
    clock = ManualClock(start=0.0)
    breaker = open_breaker(clock)
    lengths = []
    for _ in range(50):
        try:
            breaker.call(never_called)
        except CircuitBreakerOpenError as error:
            lengths.append(tb_length(error.__traceback__))
            assert error.__traceback__ is not None
            assert error.__traceback__.tb_frame is sys._getframe()
    assert lengths == [lengths[0]] * 50
    assert lengths[0] == (1 if shared.BACKEND == "rust" else lengths[0])


def test_context_is_the_exception_being_handled() -> None:
    """A rejection inside an ``except`` chains to that exception, as ``raise`` does."""
    clock = ManualClock(start=0.0)
    breaker = open_breaker(clock)
    for _ in range(3):
        try:
            raise KeyError("handled")
        except KeyError as handled:
            with pytest.raises(CircuitBreakerOpenError) as caught:
                breaker.call(never_called)
            assert caught.value.__context__ is handled
            with pytest.raises(CircuitBreakerOpenError) as caught, breaker:
                pass
            assert caught.value.__context__ is handled
        try:
            breaker.call(never_called)
        except CircuitBreakerOpenError as error:
            assert error.__context__ is None


def test_a_weakly_referenced_error_is_not_changed() -> None:
    """A weak reference to a dropped error never sees it change."""
    clock = ManualClock(start=0.0)
    breaker = open_breaker(clock)
    try:
        breaker.call(never_called)
    except CircuitBreakerOpenError as error:
        ref = weakref.ref(error)
        args = error.args
    clock.advance(5.0)
    try:
        breaker.call(never_called)
    except CircuitBreakerOpenError as error:
        assert error.retry_after == pytest.approx(25.0)
        still = ref()
        assert still is None or (still is not error and still.args == args)


def test_threads_rejecting_at_once_each_get_their_own_error() -> None:
    """Threads rejected by one breaker each see their own retry_after and context."""
    clock = ManualClock(start=0.0)
    breaker = open_breaker(clock, timeout=10.0)
    breaker.force_open()  # retry_after is then always the timeout
    errors: list[str] = []
    barrier = threading.Barrier(4)
    try:
        breaker.call(never_called)
    except CircuitBreakerOpenError as error:
        expected_tb = tb_length(error.__traceback__)

    def work(index: int) -> None:
        barrier.wait(timeout=10)
        kept = []
        for i in range(2000):
            try:
                raise KeyError((index, i))
            except KeyError as handled:
                try:
                    breaker.call(never_called)
                except CircuitBreakerOpenError as error:
                    if error.args != ("svc", 10.0) or error.__context__ is not handled:
                        errors.append(f"thread {index}: {error.args} {error.__context__!r}")
                    if tb_length(error.__traceback__) != expected_tb:
                        errors.append(f"thread {index}: traceback of {error.__traceback__}")
                    if i % 7 == 0:
                        kept.append((error, handled))
        for error, handled in kept:
            if error.args != ("svc", 10.0) or error.__context__ is not handled:
                errors.append(f"thread {index}: kept error changed: {error.args}")

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
    finally:
        sys.setswitchinterval(interval)
    assert errors == []
    assert breaker.counters()["calls_rejected"] == 8001


def test_a_breaker_kept_alive_only_by_its_error_is_collected() -> None:
    """The cached error's traceback can reach the breaker; the collector still frees both."""

    def reject_once() -> weakref.ref[CircuitBreaker]:
        breaker = open_breaker(ManualClock(start=0.0))
        try:
            breaker.call(never_called)
        except CircuitBreakerOpenError:
            pass
        return weakref.ref(breaker)

    ref = reject_once()
    gc.collect()
    assert ref() is None


def test_call_arguments_and_signature() -> None:
    """``call(func, /, *args, **kwargs)``: positional-only func, clear error without it."""
    breaker = CircuitBreaker("svc", registry=None)
    params = inspect.signature(breaker.call).parameters
    assert [(p.name, p.kind) for p in params.values()] == [
        ("func", inspect.Parameter.POSITIONAL_ONLY),
        ("args", inspect.Parameter.VAR_POSITIONAL),
        ("kwargs", inspect.Parameter.VAR_KEYWORD),
    ]

    def echo(*args: Any, **kwargs: Any) -> Any:
        return args, kwargs

    assert breaker.call(echo) == ((), {})
    assert breaker.call(echo, 1, 2, func=3, x=4) == ((1, 2), {"func": 3, "x": 4})
    args = ("a",) * 40
    assert breaker.call(echo, *args, **{f"k{i}": i for i in range(40)})[0] == args
    with pytest.raises(TypeError, match="func"):
        breaker.call()  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="func"):
        breaker.call(func=echo)  # type: ignore[call-arg]
    if shared.BACKEND == "rust":  # the native method checks the type of self
        with pytest.raises(TypeError):
            type(breaker).call(object(), echo)  # type: ignore[arg-type]
    assert breaker.success_count == 3


class Payload:
    """Stands for a large local (a response body, a buffer) of a rejected caller."""

    finalized = 0

    def __del__(self) -> None:
        Payload.finalized += 1


def rejected_caller(breaker: Any, use_with: bool) -> tuple[weakref.ref[Payload], BaseException]:
    payload = Payload()
    ref = weakref.ref(payload)
    try:
        if use_with:
            with breaker:
                never_called()
        else:
            breaker.call(never_called)
    except CircuitBreakerOpenError as error:
        return ref, error
    raise AssertionError("not rejected")


@pytest.mark.parametrize("use_with", [False, True], ids=["call", "with"])
def test_a_rejected_callers_locals_die_when_it_drops_the_error(use_with: bool) -> None:
    """The error's traceback is the only thing that keeps the caller's frame alive.

    Nothing in the breaker holds the error (no reuse cache), so the frame and its
    locals go as soon as the caller lets go of the error, with no collection
    needed, and ``__del__`` runs; later rejections, ``reset()`` and successes
    change nothing about that.
    """
    breaker = open_breaker(ManualClock(start=0.0))
    finalized = Payload.finalized
    ref, error = rejected_caller(breaker, use_with)
    assert ref() is not None, "the caller still holds the error, and so the frame"
    del error
    assert ref() is None
    assert Payload.finalized == finalized + 1
    # Twice more, with a kept error in between: each error holds its own frame only.
    ref1, error1 = rejected_caller(breaker, use_with)
    ref2, error2 = rejected_caller(breaker, use_with)
    assert error1 is not error2
    del error2
    assert ref2() is None
    assert ref1() is not None
    breaker.reset()
    assert breaker.call(lambda: 1) == 1
    del error1
    assert ref1() is None


def test_the_native_core_raises_a_fresh_error_each_time(native: ModuleType) -> None:
    """The Rust core itself (whatever backend the run tests): no error is reused."""
    clock = ManualClock(start=0.0)
    breaker = native.CircuitBreakerCore("svc", failure_threshold=1, timeout=30.0, clock=clock)
    try:
        breaker.call(lambda: 1 / 0)
    except ZeroDivisionError:
        pass
    kept = []
    for advance in (0.0, 10.0, 5.0):
        clock.advance(advance)
        try:
            breaker.call(never_called)
        except CircuitBreakerOpenError as error:
            kept.append(error)
    assert len({id(error) for error in kept}) == 3
    assert [error.retry_after for error in kept] == pytest.approx([30.0, 20.0, 15.0])

"""Circuit breaker: shared on Rust, its pure twin, a naive breaker and the peers.

Groups:
- ``breaker call x100``: 100 closed ``breaker.call(f)`` in a direct loop, including
  ``f`` (a function returning ``None``); ``bare_function`` is the same loop of ``f()``.
  ``circuitbreaker`` is measured through its decorator, the one path of it that
  checks the state.
- ``breaker rejection x100``: 100 raises and catches of an open breaker's error
  in a direct loop. The baseline raises and catches one preallocated exception (clearing its
  traceback, which would otherwise grow by one entry per raise);
  ``fresh_raise`` is Python building and raising the same error itself.

Two threads on one breaker: ``bench_threads.py``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from types import ModuleType
from typing import Any

import circuitbreaker
import pybreaker
import pytest

import shared
from shared.resilience import CircuitBreaker, CircuitBreakerConfig, CircuitBreakerOpenError


def f() -> None:
    return None


class NaiveBreaker:
    """The simplest correct-looking pure-Python breaker: the yardstick of the twin."""

    def __init__(self, name: str, failure_threshold: int = 5, timeout: float = 60.0) -> None:
        self.name = name
        self.failure_threshold = failure_threshold
        self.timeout = timeout
        self.failures = 0
        self.opened_at: float | None = None

    def call(self, func: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        if self.opened_at is not None:
            remaining = self.opened_at + self.timeout - time.monotonic()
            if remaining > 0:
                raise CircuitBreakerOpenError(self.name, remaining)
            self.opened_at = None
        try:
            result = func(*args, **kwargs)
        except Exception:
            self.failures += 1
            if self.failures >= self.failure_threshold:
                self.opened_at = time.monotonic()
            raise
        self.failures = 0
        return result


def rust_breaker(name: str) -> CircuitBreaker:
    assert shared.BACKEND == "rust", "the benches measure the Rust backend"
    return CircuitBreaker(name, CircuitBreakerConfig(), registry=None)


# -- closed call ------------------------------------------------------------------


# Each round makes 100 calls in a loop, so the harness's own per-call cost
# (about as large as a bare call here) does not flatten the ratios. Every loop
# is written out with the call as the program would make it (`call(f)`, `f()`),
# with no `*args` on either side: a star-call costs as much as the breaker.
CALLS_PER_ROUND = range(100)


@pytest.mark.benchmark(group="breaker call x100")
def test_breaker_call_bare_function(benchmark: Any) -> None:
    func = f

    def run() -> None:
        for _ in CALLS_PER_ROUND:
            func()

    benchmark(run)


@pytest.mark.benchmark(group="breaker call x100")
def test_breaker_call_rust(benchmark: Any) -> None:
    breaker = rust_breaker("bench")
    call, func = breaker.call, f

    def run() -> None:
        for _ in CALLS_PER_ROUND:
            call(func)

    benchmark(run)
    assert breaker.failure_count == 0
    assert breaker.success_count > 0


@pytest.mark.benchmark(group="breaker call x100")
def test_breaker_call_python(benchmark: Any, pure: ModuleType) -> None:
    breaker = pure.CircuitBreakerCore("bench")
    call, func = breaker.call, f

    def run() -> None:
        for _ in CALLS_PER_ROUND:
            call(func)

    benchmark(run)
    assert breaker.success_count > 0


@pytest.mark.benchmark(group="breaker call x100")
def test_breaker_call_naive(benchmark: Any) -> None:
    call, func = NaiveBreaker("bench").call, f

    def run() -> None:
        for _ in CALLS_PER_ROUND:
            call(func)

    benchmark(run)


@pytest.mark.benchmark(group="breaker call x100")
def test_breaker_call_pybreaker(benchmark: Any) -> None:
    call, func = pybreaker.CircuitBreaker(fail_max=5, reset_timeout=60).call, f

    def run() -> None:
        for _ in CALLS_PER_ROUND:
            call(func)

    benchmark(run)


@pytest.mark.benchmark(group="breaker call x100")
def test_breaker_call_circuitbreaker(benchmark: Any) -> None:
    # Its decorator is the path that checks the state (its `call` never rejects).
    breaker = circuitbreaker.CircuitBreaker(failure_threshold=5, recovery_timeout=60, name="b")
    protected = breaker.decorate(f)

    def run() -> None:
        for _ in CALLS_PER_ROUND:
            protected()

    benchmark(run)


# -- open rejection -----------------------------------------------------------------


# 100 rejections per round too: one takes a few hundred ns, and with one per round
# the harness's timer calls weighed differently on each side (its calibration
# picked 1 loop for some and 20 for others).
def rejecting(call: Callable[[Callable[[], None]], object], error: type[BaseException]) -> Any:
    func = f

    def reject() -> None:
        for _ in CALLS_PER_ROUND:
            try:
                call(func)
            except error:
                pass
            else:
                raise AssertionError("the breaker let a call through")

    return reject


@pytest.mark.benchmark(group="breaker rejection x100")
def test_breaker_rejection_preallocated_raise(benchmark: Any) -> None:
    error = CircuitBreakerOpenError("bench", 60.0)

    def raise_and_catch() -> None:
        for _ in CALLS_PER_ROUND:
            try:
                raise error
            except CircuitBreakerOpenError:
                error.__traceback__ = None

    benchmark(raise_and_catch)


@pytest.mark.benchmark(group="breaker rejection x100")
def test_breaker_rejection_fresh_raise(benchmark: Any) -> None:
    # Reference: what Python itself pays to build and raise the same error.
    def raise_and_catch() -> None:
        for _ in CALLS_PER_ROUND:
            try:
                raise CircuitBreakerOpenError("bench", 60.0)
            except CircuitBreakerOpenError:
                pass

    benchmark(raise_and_catch)


@pytest.mark.benchmark(group="breaker rejection x100")
def test_breaker_rejection_rust(benchmark: Any) -> None:
    breaker = rust_breaker("bench")
    breaker.force_open()
    benchmark(rejecting(breaker.call, CircuitBreakerOpenError))


@pytest.mark.benchmark(group="breaker rejection x100")
def test_breaker_rejection_python(benchmark: Any, pure: ModuleType) -> None:
    breaker = pure.CircuitBreakerCore("bench")
    breaker.force_open()
    benchmark(rejecting(breaker.call, CircuitBreakerOpenError))


@pytest.mark.benchmark(group="breaker rejection x100")
def test_breaker_rejection_naive(benchmark: Any) -> None:
    breaker = NaiveBreaker("bench")
    breaker.opened_at = time.monotonic()
    benchmark(rejecting(breaker.call, CircuitBreakerOpenError))


@pytest.mark.benchmark(group="breaker rejection x100")
def test_breaker_rejection_pybreaker(benchmark: Any) -> None:
    breaker = pybreaker.CircuitBreaker(fail_max=5, reset_timeout=60)
    breaker.open()
    benchmark(rejecting(breaker.call, pybreaker.CircuitBreakerError))


@pytest.mark.benchmark(group="breaker rejection x100")
def test_breaker_rejection_circuitbreaker(benchmark: Any) -> None:
    breaker = circuitbreaker.CircuitBreaker(failure_threshold=1, recovery_timeout=60, name="b")
    with pytest.raises(ZeroDivisionError):
        breaker.decorate(lambda: 1 / 0)()
    protected = breaker.decorate(f)
    benchmark(rejecting(lambda _f: protected(), circuitbreaker.CircuitBreakerError))

"""Retry: a decorated call that succeeds at once, and one backoff delay.

Peers: tenacity, stamina and backoff, each configured for 3 attempts with
exponential backoff; "naive" is a plain pure-Python retry loop, the yardstick
of the twin.
"""

from __future__ import annotations

import functools
from types import ModuleType
from typing import Any, Callable

import backoff
import pytest
import stamina
import tenacity

from shared.resilience import with_retry


def _work() -> int:
    return 1


def _naive_retry(func: Callable[[], int]) -> Callable[[], int]:
    # The simplest correct retry loop: what the twin is measured against.
    @functools.wraps(func)
    def wrapper() -> int:
        for attempt in range(3):
            try:
                return func()
            except Exception:  # noqa: PERF203 - the naive loop is the yardstick
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    return wrapper


@pytest.mark.benchmark(group="retry call success")
def test_retry_success_rust(benchmark: Any, native: ModuleType) -> None:
    import shared

    assert shared.BACKEND == "rust"
    call = with_retry(max_attempts=3)(_work)
    assert benchmark(call) == 1


@pytest.mark.benchmark(group="retry call success")
def test_retry_success_python(benchmark: Any, pure: ModuleType) -> None:
    call = pure.RetryingCall(pure.RetryCore(), _work)
    assert benchmark(call) == 1


@pytest.mark.benchmark(group="retry call success")
def test_retry_success_naive(benchmark: Any) -> None:
    assert benchmark(_naive_retry(_work)) == 1


@pytest.mark.benchmark(group="retry call success")
def test_retry_success_tenacity(benchmark: Any) -> None:
    call = tenacity.retry(
        stop=tenacity.stop_after_attempt(3), wait=tenacity.wait_exponential(multiplier=1, max=60)
    )(_work)
    assert benchmark(call) == 1


@pytest.mark.benchmark(group="retry call success")
def test_retry_success_stamina(benchmark: Any) -> None:
    call = stamina.retry(on=Exception, attempts=3)(_work)
    assert benchmark(call) == 1


@pytest.mark.benchmark(group="retry call success")
def test_retry_success_backoff(benchmark: Any) -> None:
    call = backoff.on_exception(backoff.expo, Exception, max_tries=3)(_work)
    assert benchmark(call) == 1


# One delay costs less than pytest-benchmark's own call overhead (about 85 ns
# here), so each round computes _BATCH delays in a loop; per delay = median / _BATCH.
_BATCH = range(100)


def _batched(delay: Callable[[], float]) -> Callable[[], float]:
    def run() -> float:
        last = 0.0
        for _ in _BATCH:
            last = delay()
        return last

    return run


@pytest.mark.benchmark(group="backoff delay x100")
def test_backoff_delay_rust(benchmark: Any, native: ModuleType) -> None:
    delay = native.Backoff("exponential", 1.0, 60.0, 2.0, "equal", 7).delay
    assert 4.0 <= benchmark(_batched(functools.partial(delay, 4))) <= 8.0


@pytest.mark.benchmark(group="backoff delay x100")
def test_backoff_delay_python(benchmark: Any, pure: ModuleType) -> None:
    delay = pure.Backoff("exponential", 1.0, 60.0, 2.0, "equal", 7).delay
    assert 4.0 <= benchmark(_batched(functools.partial(delay, 4))) <= 8.0


@pytest.mark.benchmark(group="backoff delay x100")
def test_backoff_delay_backoff(benchmark: Any) -> None:
    # What backoff does per retry: the generator's next delay, then its default full jitter.
    delays = backoff.expo(base=2, factor=1, max_value=60)
    next(delays)  # the generator's priming yield
    jitter = backoff.full_jitter
    assert benchmark(_batched(lambda: jitter(next(delays)))) >= 0.0


@pytest.mark.benchmark(group="backoff delay x100")
def test_backoff_delay_tenacity(benchmark: Any) -> None:
    wait = tenacity.wait_random_exponential(multiplier=1, max=60)
    state = tenacity.RetryCallState(tenacity.Retrying(), fn=None, args=(), kwargs={})
    state.attempt_number = 4
    assert 0.0 <= benchmark(_batched(functools.partial(wait, state))) <= 60.0

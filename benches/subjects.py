"""What the gate compares: groups of loops, one per implementation of an operation.

A *group* is one operation (``breaker_call``, ``try_acquire_allowed``...); its
*members* are the implementations measured side by side (``rust``, ``bare``,
``pybreaker``...). Every member is a loop ``run(n)`` making ``n`` calls the way a
program would write them, so that both sides of a ratio pay the same loop and
nothing else. The two layers of the gate run the very same loops:

- ``benches/counted.py`` counts them under callgrind (cost of ``2n`` calls minus
  the cost of ``n`` calls, divided by ``n``);
- ``benches/_paired.py`` times them in alternating rounds (the ``test_paired_*``
  benchmarks).

Each group also says how many calls a timed round makes (``timed_ops``), how
many the counted segment makes (``counted_ops``) and whether it must run in a
worker thread. Helpers (naive implementations, peers' set-up) come from the
``bench_*`` modules, so there is one definition of each thing measured.
"""

from __future__ import annotations

import contextlib
import importlib
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from itertools import repeat
from typing import Any

Loop = Callable[[int], object]

# The registry's memory-bound case: a million keys, created in random order.
MANY_KEYS = 1_000_000


@dataclass(frozen=True)
class Group:
    name: str
    build: Callable[[], dict[str, Loop]]
    timed_ops: int
    counted_ops: int
    in_worker_thread: bool = False
    # Fewer counted calls for slow peers (tens of thousands of instructions each).
    peer_counted_ops: tuple[tuple[str, int], ...] = ()

    def counted_ops_of(self, member: str) -> int:
        return dict(self.peer_counted_ops).get(member, self.counted_ops)


def calls(call: Callable[[], object]) -> Loop:
    """``n`` calls of ``call()``, the call written out in the loop."""

    def run(n: int) -> object:
        last = None
        for _ in repeat(None, n):
            last = call()
        return last

    return run


def calls_with(call: Callable[[Any], object], argument: Any) -> Loop:
    """``n`` calls of ``call(argument)``."""

    def run(n: int) -> object:
        last = None
        for _ in repeat(None, n):
            last = call(argument)
        return last

    return run


def _native() -> Any:
    return importlib.import_module("shared._native")


def _pure() -> Any:
    return importlib.import_module("shared._pure")


# -- clock read and rate limiting ------------------------------------------------------


def _clock_read() -> dict[str, Loop]:
    return {
        "rust": calls(_native().monotonic_ns),
        "python": calls(_pure().monotonic_ns),
        "builtin": calls(time.monotonic_ns),
    }


def _try_acquire(allowed: bool) -> dict[str, Loop]:
    from limits import RateLimitItemPerHour, RateLimitItemPerSecond
    from pyrate_limiter import Duration, Rate

    import bench_rate_limiter as rl

    config = rl.ALLOWED if allowed else rl.DENIED
    naive = rl.NaiveLockedBucket(1e9, 1e9, 1e9) if allowed else rl.NaiveLockedBucket(1 / 3600, 1, 0)
    limits_hit = rl._limits_hit(
        RateLimitItemPerSecond(10**9) if allowed else RateLimitItemPerHour(1)
    )
    pyrate = rl._pyrate(Rate(10**6, Duration.SECOND) if allowed else Rate(1, Duration.HOUR))
    if not allowed:  # empty the peers' one-per-hour budgets
        limits_hit()
        pyrate()
    members = {
        "rust": calls(_native().TokenBucket(config).try_acquire),
        "python": calls(_pure().TokenBucket(config).try_acquire),
        "naive_locked": calls(naive.try_acquire),
        "limits": calls(limits_hit),
        "pyrate_limiter": calls(pyrate),
    }
    for name, run in members.items():
        if run(1) is not allowed:
            raise AssertionError(f"{name}: try_acquire should be {allowed}")
    return members


_keys_cache: list[list[str]] = []


def many_keys() -> list[str]:
    """A million keys, in the order they were created."""
    if not _keys_cache:
        _keys_cache.append([f"user_{i}" for i in range(MANY_KEYS)])
    return _keys_cache[0]


def _registry() -> dict[str, Loop]:
    import bench_rate_limiter as rl

    native = _native()
    bucket_try_acquire = native.TokenBucket(rl.ALLOWED).try_acquire
    hot = native.RateLimiterRegistry(rl.ALLOWED).get_limiter
    hot_python = _pure().RateLimiterRegistry(rl.ALLOWED).get_limiter
    registry = native.RateLimiterRegistry(rl.ALLOWED, max_keys=MANY_KEYS)
    keys = many_keys()
    # Created in random order: the registry's memory is visited at random.
    for key in random.Random(0).sample(keys, len(keys)):
        registry.get_limiter(key)
    assert len(registry) == MANY_KEYS
    get_limiter = registry.get_limiter
    cursor = [0]

    def bare_try_acquire(n: int) -> int:
        granted = 0
        for _ in repeat(None, n):
            granted += bucket_try_acquire()
        return granted

    def clock_read(n: int) -> int:
        read = time.monotonic_ns
        last = 0
        for _ in repeat(None, n):
            last = read()  # not a sum: its size would depend on the uptime
        return last

    def hot_key(get: Callable[[str], Any]) -> Loop:
        def run(n: int) -> int:
            key = "user_1"
            granted = 0
            for _ in repeat(None, n):
                granted += get(key).try_acquire()
            return granted

        return run

    def keys_1m(n: int) -> int:
        # The next n keys, in creation order (a service has just parsed its key).
        start = cursor[0]
        if start + n > MANY_KEYS:
            start = 0
        cursor[0] = start + n
        granted = 0
        for key in keys[start : start + n]:
            granted += get_limiter(key).try_acquire()
        return granted

    return {
        "clock_read": clock_read,
        "try_acquire_rust": bare_try_acquire,
        "hot_key_rust": hot_key(hot),
        "hot_key_python": hot_key(hot_python),
        "keys_1m_rust": keys_1m,
    }


# -- circuit breaker ------------------------------------------------------------------


def _breaker_call() -> dict[str, Loop]:
    import circuitbreaker
    import pybreaker

    import bench_circuit_breaker as cb

    protected = circuitbreaker.CircuitBreaker(
        failure_threshold=5, recovery_timeout=60, name="b"
    ).decorate(cb.f)
    return {
        "bare": calls(cb.f),
        "rust": calls_with(cb.rust_breaker("bench").call, cb.f),
        "python": calls_with(_pure().CircuitBreakerCore("bench").call, cb.f),
        "naive": calls_with(cb.NaiveBreaker("bench").call, cb.f),
        "pybreaker": calls_with(pybreaker.CircuitBreaker(fail_max=5, reset_timeout=60).call, cb.f),
        "circuitbreaker": calls(protected),
    }


def _rejections(call: Callable[[Callable[[], None]], object], error: type[BaseException]) -> Loop:
    import bench_circuit_breaker as cb

    func = cb.f

    def run(n: int) -> None:
        for _ in repeat(None, n):
            try:
                call(func)
            except error:
                pass
            else:
                raise AssertionError("the breaker let a call through")

    return run


def _breaker_rejection() -> dict[str, Loop]:
    import circuitbreaker
    import pybreaker

    import bench_circuit_breaker as cb
    from shared.resilience import CircuitBreakerOpenError

    preallocated = CircuitBreakerOpenError("bench", 60.0)

    def preallocated_raise(n: int) -> None:
        for _ in repeat(None, n):
            try:
                raise preallocated
            except CircuitBreakerOpenError:
                preallocated.__traceback__ = None

    def fresh_raise(n: int) -> None:
        for _ in repeat(None, n):
            try:
                raise CircuitBreakerOpenError("bench", 60.0)
            except CircuitBreakerOpenError:
                pass

    rust = cb.rust_breaker("bench")
    rust.force_open()
    python = _pure().CircuitBreakerCore("bench")
    python.force_open()
    naive = cb.NaiveBreaker("bench")
    naive.opened_at = time.monotonic()
    pyb = pybreaker.CircuitBreaker(fail_max=5, reset_timeout=60)
    pyb.open()
    cbr = circuitbreaker.CircuitBreaker(failure_threshold=1, recovery_timeout=60, name="b")
    with contextlib.suppress(ZeroDivisionError):
        cbr.decorate(lambda: 1 / 0)()
    cbr_protected = cbr.decorate(cb.f)
    return {
        "preallocated_raise": preallocated_raise,
        "fresh_raise": fresh_raise,
        "rust": _rejections(rust.call, CircuitBreakerOpenError),
        "python": _rejections(python.call, CircuitBreakerOpenError),
        "naive": _rejections(naive.call, CircuitBreakerOpenError),
        "pybreaker": _rejections(pyb.call, pybreaker.CircuitBreakerError),
        "circuitbreaker": _rejections(
            lambda _f: cbr_protected(), circuitbreaker.CircuitBreakerError
        ),
    }


# -- retry and backoff ---------------------------------------------------------------------


def _retry_success() -> dict[str, Loop]:
    import backoff
    import stamina
    import tenacity

    import bench_retry as br
    from shared.resilience import with_retry

    pure = _pure()
    rust = with_retry(max_attempts=3)(br._work)
    assert isinstance(rust, _native().RetryingCall)
    return {
        "bare": calls(br._work),
        "rust": calls(rust),
        "python": calls(pure.RetryingCall(pure.RetryCore(), br._work)),
        "naive": calls(br._naive_retry(br._work)),
        "tenacity": calls(
            tenacity.retry(
                stop=tenacity.stop_after_attempt(3),
                wait=tenacity.wait_exponential(multiplier=1, max=60),
            )(br._work)
        ),
        "stamina": calls(stamina.retry(on=Exception, attempts=3)(br._work)),
        "backoff": calls(backoff.on_exception(backoff.expo, Exception, max_tries=3)(br._work)),
    }


def _backoff_delay() -> dict[str, Loop]:
    import backoff
    import tenacity

    import bench_retry as br

    delays = backoff.expo(base=2, factor=1, max_value=60)
    next(delays)  # the generator's priming yield
    jitter = backoff.full_jitter
    wait = tenacity.wait_random_exponential(multiplier=1, max=60)
    state = tenacity.RetryCallState(tenacity.Retrying(), fn=None, args=(), kwargs={})
    state.attempt_number = 4
    return {
        "bare": calls_with(br._bare_delay, 4),
        "rust": calls_with(_native().Backoff("exponential", 1.0, 60.0, 2.0, "equal", 7).delay, 4),
        "python": calls_with(_pure().Backoff("exponential", 1.0, 60.0, 2.0, "equal", 7).delay, 4),
        "backoff": calls_with(lambda _attempt: jitter(next(delays)), 4),
        "tenacity": calls_with(lambda _attempt: wait(state), 4),
    }


# -- timeouts -------------------------------------------------------------------------------


# An hour, not bench_timeout's 5 s: the worker-thread scheduler wakes at the
# earliest deadline, and under callgrind (about 50x slower) 5 s pass within a
# group, so a wake would land in one counted segment and not the other.
TIMEOUT_SECONDS = 3600.0


def _timeout(main_thread: bool) -> dict[str, Loop]:
    import bench_timeout as bt
    from shared.resilience import TimeoutContext, with_timeout

    fast = bt.fast
    decorated_fast = with_timeout(TIMEOUT_SECONDS)(fast)

    def with_context() -> int:
        with TimeoutContext(TIMEOUT_SECONDS):
            return fast()

    def with_null_context() -> int:
        with bt.NullContext(TIMEOUT_SECONDS):
            return fast()

    # The pure twin's block, as TimeoutContext and with_timeout run it on that backend
    # (with the native backend loaded too, the twin shares its scheduler and hooks).
    pure_core = importlib.import_module("shared._pure.timeout").DeadlineCore

    def with_pure_context() -> int:
        with pure_core(TIMEOUT_SECONDS):
            return fast()

    def pure_decorated(*args: Any, **kwargs: Any) -> int:
        with pure_core(TIMEOUT_SECONDS):
            return fast(*args, **kwargs)

    members = {
        "bare": calls(fast),
        "null_context": calls(with_null_context),
        "context_shared": calls(with_context),
        "decorator_shared": calls(decorated_fast),
        "context_python": calls(with_pure_context),
        "decorator_python": calls(pure_decorated),
    }
    if main_thread:
        # Any thread would do: a shield with no deadline active, the common case.
        members["shield_idle"] = calls(bt.with_shield)
    return members


_PEERS_400 = (("limits", 400), ("pyrate_limiter", 400))
_BREAKER_PEERS = (("pybreaker", 400), ("circuitbreaker", 400))
_RETRY_PEERS = (("tenacity", 200), ("stamina", 200), ("backoff", 400))

# counted_ops: large enough that a one-off event in a segment (an allocator
# refill, a resize) weighs little per call; peers that cost tens of thousands of
# instructions per call take fewer.
GROUPS: dict[str, Group] = {
    g.name: g
    for g in [
        Group("clock_read", _clock_read, timed_ops=1000, counted_ops=4000),
        Group(
            "try_acquire_allowed",
            lambda: _try_acquire(True),
            timed_ops=100,
            counted_ops=4000,
            peer_counted_ops=_PEERS_400,
        ),
        Group(
            "try_acquire_denied",
            lambda: _try_acquire(False),
            timed_ops=100,
            counted_ops=4000,
            peer_counted_ops=_PEERS_400,
        ),
        Group("registry", _registry, timed_ops=1000, counted_ops=4000),
        Group(
            "breaker_call",
            _breaker_call,
            timed_ops=100,
            counted_ops=4000,
            peer_counted_ops=_BREAKER_PEERS,
        ),
        Group(
            "breaker_rejection",
            _breaker_rejection,
            timed_ops=100,
            counted_ops=2000,
            peer_counted_ops=_BREAKER_PEERS,
        ),
        Group(
            "retry_success",
            _retry_success,
            timed_ops=100,
            counted_ops=4000,
            peer_counted_ops=_RETRY_PEERS,
        ),
        Group(
            "backoff_delay",
            _backoff_delay,
            timed_ops=100,
            counted_ops=4000,
            peer_counted_ops=(("tenacity", 1000),),
        ),
        Group("timeout_main", lambda: _timeout(True), timed_ops=100, counted_ops=2000),
        Group(
            "timeout_worker",
            lambda: _timeout(False),
            timed_ops=100,
            counted_ops=2000,
            in_worker_thread=True,
        ),
    ]
}

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
import threading
import time
import urllib.request
import weakref
from collections.abc import Callable, Iterator
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


def _walk(keys: list[str], decide: Callable[[str], Any], offset: int) -> Loop:
    """``n`` decisions on the next ``n`` keys of ``keys`` (wrapping), one cursor per
    loop, starting at ``offset``: loops that start apart never find the keys (or
    their strings) in the cache because another loop just visited them."""
    cursor = [offset]

    def run(n: int) -> int:
        start = cursor[0]
        if start + n > len(keys):
            start = 0
        cursor[0] = start + n
        granted = 0
        for key in keys[start : start + n]:
            granted += decide(key) is not False
        return granted

    return run


def _registry_one_call() -> dict[str, Loop]:
    """One call per decision (``registry.try_acquire(key)``) against the two-call
    path, a bare bucket, and floodgate-rs's keyed limiter over 1,000,000 keys."""
    from datetime import timedelta

    from floodgate import FixedMapping

    import bench_rate_limiter as rl

    native = _native()
    bucket_try_acquire = native.TokenBucket(rl.ALLOWED).try_acquire
    hot = native.RateLimiterRegistry(rl.ALLOWED)
    hot_python = _pure().RateLimiterRegistry(rl.ALLOWED)
    many = native.RateLimiterRegistry(rl.ALLOWED, max_keys=MANY_KEYS)
    # Never refuses, never clears itself during a run (one-hour windows).
    mapping: Any = FixedMapping(10**9, timedelta(hours=1))
    keys = many_keys()
    # Created in one random order, visited in another: memory is visited at random.
    for key in random.Random(0).sample(keys, len(keys)):
        many.try_acquire(key)
        mapping.trigger(key)
    assert len(many) == MANY_KEYS
    shuffled = random.Random(1).sample(keys, len(keys))
    get_limiter = many.get_limiter

    def bare_try_acquire(n: int) -> int:
        granted = 0
        for _ in repeat(None, n):
            granted += bucket_try_acquire()
        return granted

    def one_call(registry: Any) -> Loop:
        try_acquire = registry.try_acquire

        def run(n: int) -> int:
            key = "user_1"
            granted = 0
            for _ in repeat(None, n):
                granted += try_acquire(key)
            return granted

        return run

    def two_calls(n: int) -> int:
        get = hot.get_limiter
        key = "user_1"
        granted = 0
        for _ in repeat(None, n):
            granted += get(key).try_acquire()
        return granted

    two_call_cursor = [MANY_KEYS // 3]

    def keys_1m_two_calls(n: int) -> int:
        start = two_call_cursor[0]
        if start + n > MANY_KEYS:
            start = 0
        two_call_cursor[0] = start + n
        granted = 0
        for key in shuffled[start : start + n]:
            granted += get_limiter(key).try_acquire()
        return granted

    members = {
        "try_acquire_rust": bare_try_acquire,
        "one_call_hot_rust": one_call(hot),
        "one_call_hot_python": one_call(hot_python),
        "two_call_hot_rust": two_calls,
        "keys_1m_one_call_rust": _walk(shuffled, many.try_acquire, 0),
        "keys_1m_two_call_rust": keys_1m_two_calls,
        "keys_1m_floodgate": _walk(shuffled, mapping.trigger, 2 * MANY_KEYS // 3),
    }
    for name, run in members.items():
        if run(10) != 10:
            raise AssertionError(f"{name}: every decision should be granted")
    return members


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


# -- tracing ---------------------------------------------------------------------------------


def _trace_span(state: str) -> dict[str, Loop]:
    """``@trace_span`` in one tracing state (``off``, ``sampled_out``, ``recorded``).

    The state is process-wide: the group's set-up puts tracing in it (see
    ``bench_tracing``), and the members are built to check that it holds.
    """
    from opentelemetry import trace as otel_trace

    import bench_tracing as bt

    members: dict[str, Loop] = {"bare": calls(bt.work), "shared": calls(bt.traced_work)}
    if state == "off":
        bt.tracing_off()
        members["otel_noop"] = calls(bt.otel_noop_span())
    else:
        tracer = bt.tracing_on(0.0 if state == "sampled_out" else 1.0)
        members["otel_noop"] = calls(bt.otel_noop_span())
        members["otel_sdk"] = calls(bt.sdk_span(tracer))
        with tracer.start_as_current_span("check") as span:
            assert span.is_recording() is (state == "recorded")
    assert otel_trace.get_current_span() is otel_trace.INVALID_SPAN
    return members


# -- metrics: the hot paths with the collector registered and scraped -------------------


class _Owner:
    """Held by the members' loops; when the group is dropped, the scraper stops."""


@contextlib.contextmanager
def _untracked() -> Iterator[None]:
    """Instances built inside are not registered for metrics (the "without" members)."""
    from shared import _instances

    names = ("breakers", "token_buckets", "rate_limiter_registries", "retries")
    saved = {name: getattr(_instances, name) for name in names}
    for name in names:
        setattr(_instances, name, _instances.WeakInstances())
    try:
        yield
    finally:
        for name, registry in saved.items():
            setattr(_instances, name, registry)


def _scrape_in_background(owner: _Owner, tracked: list[Any]) -> None:
    """A MetricsServer, and a thread that scrapes it every 5 ms while ``owner`` lives.

    Returns once one scrape has read every instance in ``tracked``.
    """
    from prometheus_client import CollectorRegistry

    from shared.observability import MetricsServer

    server = MetricsServer("127.0.0.1", 0, registry=CollectorRegistry()).start_in_background()
    alive = weakref.ref(owner)
    first = threading.Event()
    seen: list[bytes] = []

    def scrape() -> None:
        try:
            while alive() is not None:
                with urllib.request.urlopen(server.url, timeout=30) as response:
                    body = response.read()
                if not first.is_set():
                    seen.append(body)
                    first.set()
                time.sleep(0.005)
        finally:
            server.stop()

    threading.Thread(target=scrape, name="bench-scraper", daemon=True).start()
    if not first.wait(120):
        raise AssertionError("the background scraper never scraped")
    for instance in tracked:
        label = f'"{instance.name}"'.encode()
        if label not in seen[0]:
            raise AssertionError(f"{instance.name} is not in the scrape")


def _metrics_overhead() -> dict[str, Loop]:
    import bench_circuit_breaker as cb
    import bench_rate_limiter as rl
    import bench_retry as br
    from shared.resilience import CircuitBreaker, TokenBucket, with_retry

    with _untracked():
        breaker_without = CircuitBreaker("bench-without", registry=None)
        bucket_without = TokenBucket(rl.ALLOWED, name="bench-without")
        retry_without = with_retry(max_attempts=3, name="bench-without")(br._work)
    breaker_with = CircuitBreaker("bench-with", registry=None)
    bucket_with = TokenBucket(rl.ALLOWED, name="bench-with-bucket")
    retry_with = with_retry(max_attempts=3, name="bench-with-retry")(br._work)
    owner = _Owner()
    _scrape_in_background(owner, [breaker_with, bucket_with, retry_with.retry])

    def held(loop: Loop) -> Loop:
        def run(n: int) -> object:
            owner  # noqa: B018 (the loop holds the owner: the scraper runs while it lives)
            return loop(n)

        return run

    return {
        "breaker_without": held(calls_with(breaker_without.call, cb.f)),
        "breaker_with": held(calls_with(breaker_with.call, cb.f)),
        "try_acquire_without": held(calls(bucket_without.try_acquire)),
        "try_acquire_with": held(calls(bucket_with.try_acquire)),
        "retry_without": held(calls(retry_without)),
        "retry_with": held(calls(retry_with)),
    }


# -- idempotency ------------------------------------------------------------------------


def _idem_get_hit() -> dict[str, Loop]:
    from cachetools import TTLCache

    import bench_idempotency as bi

    result = {"ok": 1}
    rust, pure = bi.store_on(_native()), bi.store_on(_pure())
    for store in (rust, pure):
        store.set("k", result, 3600)
    cache: Any = TTLCache(maxsize=1000, ttl=3600)
    cache["k"] = result
    members = {
        "rust": calls_with(rust.get, "k"),
        "python": calls_with(pure.get, "k"),
        "dict_get": calls_with({"k": result}.get, "k"),
        "ttlcache": calls_with(cache.get, "k"),
    }
    for name, run in members.items():
        if run(1) is not result:
            raise AssertionError(f"{name}: get should hit")
    return members


def _idem_claim_complete() -> dict[str, Loop]:
    import bench_idempotency as bi

    members = {
        "rust": bi.claim_complete_loop(bi.store_on(_native())),
        "python": bi.claim_complete_loop(bi.store_on(_pure())),
        "ttlcache_locked": bi.LockedTTLCache().run,
    }
    for name in ("rust", "python"):
        if members[name](2) is not True:
            raise AssertionError(f"{name}: claim + complete should succeed")
    return members


def _idem_replay() -> dict[str, Loop]:
    import bench_idempotency as bi

    expected = {"user_id": "user123", "amount": 1000}
    members = {
        "rust": bi.replay_loop(bi.store_on(_native())),
        "python": bi.replay_loop(bi.store_on(_pure())),
        "user_request_rust": bi.user_request_loop(bi.store_on(_native())),
        "bare": bi.bare_loop(),
    }
    for name, run in members.items():
        if run(2) != expected:
            raise AssertionError(f"{name}: the replay should return the first result")
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
        Group("registry_one_call", _registry_one_call, timed_ops=1000, counted_ops=4000),
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
        Group("idem_get_hit", _idem_get_hit, timed_ops=1000, counted_ops=4000),
        Group(
            "idem_claim_complete",
            _idem_claim_complete,
            timed_ops=100,
            counted_ops=4096,
            peer_counted_ops=(("python", 1000), ("ttlcache_locked", 1000)),
        ),
        Group(
            "idem_replay",
            _idem_replay,
            timed_ops=100,
            counted_ops=2000,
            peer_counted_ops=(("python", 500), ("user_request_rust", 500)),
        ),
        Group("metrics_overhead", _metrics_overhead, timed_ops=100, counted_ops=4000),
        # Last: each sets the process-wide tracing state (the recorded group leaves
        # tracing set up with no exporter, which no group above depends on).
        Group(
            "trace_span_off",
            lambda: _trace_span("off"),
            timed_ops=100,
            counted_ops=2000,
            peer_counted_ops=(("otel_noop", 400),),
        ),
        Group(
            "trace_span_sampled_out",
            lambda: _trace_span("sampled_out"),
            timed_ops=100,
            counted_ops=1000,
            peer_counted_ops=(("otel_noop", 400), ("otel_sdk", 400)),
        ),
        Group(
            "trace_span_recorded",
            lambda: _trace_span("recorded"),
            timed_ops=100,
            counted_ops=400,
        ),
    ]
}

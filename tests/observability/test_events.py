"""Resilience events on the current span: retry, breaker, rate limiter, timeout, idempotency.

These run on both backends: the hooks sit in the resilience layer above either core.
"""

from __future__ import annotations

import asyncio
import signal
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from conftest import require_service
from shared.observability import _events, setup_tracing, shutdown_tracing, trace_span
from shared.observability.tracing import TracingConfig
from shared.resilience import (
    AsyncRedisTokenBucket,
    CircuitBreaker,
    CircuitBreakerConfig,
    CircuitBreakerOpenError,
    RateLimitConfig,
    RedisTokenBucket,
    Retry,
    RetryConfig,
    TimeoutContext,
    TimeoutError,
    TokenBucket,
    with_timeout,
)
from shared.testing import ManualClock, instant_retries

needs_alarm = pytest.mark.skipif(
    not hasattr(signal, "SIGALRM") or not hasattr(signal, "pthread_kill"),
    reason="no SIGALRM/pthread_kill on this platform (Windows): a sleep is not interrupted",
)


@pytest.fixture
def tracer() -> Iterator[Any]:
    """Tracing set up with no exporter; ended spans are kept in memory (``tracer.finished``)."""
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from shared.observability import tracing

    tracer = setup_tracing(TracingConfig(service_name="events", exporter_type="none"))
    assert _events.active
    memory = InMemorySpanExporter()
    assert tracing._installed is not None
    tracing._installed.provider.add_span_processor(SimpleSpanProcessor(memory))
    tracer.finished = memory.get_finished_spans
    yield tracer
    shutdown_tracing()


def _events_of(span: Any, prefix: str = "shared.") -> list[tuple[str, dict[str, Any]]]:
    return [(e.name, dict(e.attributes)) for e in span.events if e.name.startswith(prefix)]


def test_retry_attempts_become_events_with_their_delays(tracer: Any) -> None:
    """Each failed attempt that is retried is one event: attempt, delay, exception type."""
    outcomes = iter([ConnectionError("a"), ConnectionError("b"), None])

    def flaky() -> str:
        error = next(outcomes)
        if error is not None:
            raise error
        return "ok"

    retry = Retry("api_call", RetryConfig(max_attempts=3, initial_delay=0.5))
    with tracer.start_as_current_span("request") as span, instant_retries():
        assert retry.execute(flaky) == "ok"
    assert _events_of(span) == [
        (
            "shared.retry",
            {
                "retry.name": "api_call",
                "retry.attempt": 1,
                "retry.delay_s": 0.5,
                "exception.type": "ConnectionError",
            },
        ),
        (
            "shared.retry",
            {
                "retry.name": "api_call",
                "retry.attempt": 2,
                "retry.delay_s": 1.0,
                "exception.type": "ConnectionError",
            },
        ),
    ]


async def test_async_retry_attempts_become_events(tracer: Any) -> None:
    """The async retry path records the same events."""
    calls = 0

    async def flaky() -> int:
        nonlocal calls
        calls += 1
        if calls < 2:
            raise TimeoutError(1.0)
        return calls

    clock = ManualClock()
    retry = Retry(
        "async_call",
        RetryConfig(max_attempts=2, initial_delay=0.25),
        clock=clock,
        sleep=clock.sleep,
        async_sleep=clock.sleep_async,
    )
    with tracer.start_as_current_span("request") as span:
        assert await retry.execute_async(flaky) == 2
    events = _events_of(span)
    assert [(name, attrs["retry.attempt"], attrs["retry.delay_s"]) for name, attrs in events] == [
        ("shared.retry", 1, 0.25)
    ]


def test_breaker_transitions_and_rejections_become_events(tracer: Any) -> None:
    """Opening is a transition event; a rejection escaping a traced function is an event."""
    clock = ManualClock()
    breaker = CircuitBreaker(
        "exchange",
        CircuitBreakerConfig(failure_threshold=1, timeout=30.0),
        clock=clock,
        registry=None,
    )

    def down() -> None:
        raise ConnectionError("down")

    @trace_span("place_order")
    def place_order() -> None:
        breaker.call(lambda: None)

    with tracer.start_as_current_span("request") as span:
        with pytest.raises(ConnectionError):
            breaker.call(down)
        with pytest.raises(CircuitBreakerOpenError):
            place_order()
    assert _events_of(span) == [
        (
            "shared.circuit_breaker.transition",
            {
                "circuit_breaker.name": "exchange",
                "circuit_breaker.from_state": "closed",
                "circuit_breaker.to_state": "open",
            },
        )
    ]
    (order_span,) = [s for s in tracer.finished() if s.name == "place_order"]
    rejected = _events_of(order_span)
    assert rejected == [
        (
            "shared.circuit_breaker.rejected",
            {"circuit_breaker.name": "exchange", "circuit_breaker.retry_after_s": 30.0},
        )
    ]


def test_rate_limit_waits_become_events(tracer: Any) -> None:
    """A blocking acquire that has to wait records how long, before sleeping."""
    clock = ManualClock()
    bucket = TokenBucket(RateLimitConfig(tokens_per_second=2.0, burst_size=1), clock=clock)
    with tracer.start_as_current_span("request") as span:
        bucket.acquire()  # a token is there: no wait, no event
        bucket.acquire()  # waits 0.5 s on the manual clock
    assert _events_of(span) == [
        ("shared.rate_limit.wait", {"rate_limit.wait_s": 0.5, "rate_limit.tokens": 1.0})
    ]


async def test_async_rate_limit_waits_become_events(tracer: Any) -> None:
    """acquire_async records its estimated wait."""
    clock = ManualClock()
    bucket = TokenBucket(RateLimitConfig(tokens_per_second=4.0, burst_size=1), clock=clock)
    with tracer.start_as_current_span("request") as span:
        await bucket.acquire_async()
        await bucket.acquire_async()
    assert _events_of(span) == [
        ("shared.rate_limit.wait", {"rate_limit.wait_s": 0.25, "rate_limit.tokens": 1.0})
    ]


def _redis_wait_events(span: Any) -> list[float]:
    events = _events_of(span)
    assert [name for name, _ in events] == ["shared.rate_limit.wait"], events
    assert events[0][1]["rate_limit.tokens"] == 1.0
    return [attributes["rate_limit.wait_s"] for _, attributes in events]


def _redis_config() -> RateLimitConfig:
    return RateLimitConfig(tokens_per_second=20.0, burst_size=1)  # the second token: 50 ms


@pytest.mark.backend_independent
def test_redis_rate_limit_waits_become_events(tracer: Any) -> None:
    """The Redis bucket's blocking acquire records its reserved wait, as the in-process one."""
    import redis

    require_service("Redis", 6379)
    prefix = f"test:shared:events:{uuid.uuid4().hex}:"
    client = redis.Redis(host="127.0.0.1", port=6379)
    try:
        bucket = RedisTokenBucket(_redis_config(), client, "events", key_prefix=prefix)
        with tracer.start_as_current_span("request") as span:
            bucket.acquire()  # the burst token: no wait, no event
            bucket.acquire()
        (wait,) = _redis_wait_events(span)
        assert 0.0 < wait <= 0.05
    finally:
        keys = list(client.scan_iter(match=prefix + "*"))
        if keys:
            client.delete(*keys)
        client.close()


@pytest.mark.backend_independent
async def test_async_redis_rate_limit_waits_become_events(tracer: Any) -> None:
    """The asyncio Redis bucket records its wait on the caller task's span."""
    import redis.asyncio

    require_service("Redis", 6379)
    prefix = f"test:shared:events:{uuid.uuid4().hex}:"
    client = redis.asyncio.Redis(host="127.0.0.1", port=6379)
    try:
        bucket = AsyncRedisTokenBucket(_redis_config(), client, "events", key_prefix=prefix)
        with tracer.start_as_current_span("request") as span:
            await bucket.acquire()
            await bucket.acquire()
        (wait,) = _redis_wait_events(span)
        assert 0.0 < wait <= 0.05
    finally:
        keys = [key async for key in client.scan_iter(match=prefix + "*")]
        if keys:
            await client.delete(*keys)
        await client.aclose()


@needs_alarm
def test_timeout_in_the_main_thread_becomes_an_event(tracer: Any) -> None:
    """A timeout that interrupts a sleep (SIGALRM on the main thread) is an event."""
    with (
        tracer.start_as_current_span("request") as span,
        pytest.raises(TimeoutError),
        TimeoutContext(seconds=0.05),
    ):
        time.sleep(5)
    assert _events_of(span) == [("shared.timeout", {"timeout.seconds": 0.05})]


def test_timeout_in_a_worker_thread_becomes_an_event(tracer: Any) -> None:
    """A timeout delivered into a worker thread lands on that thread's span."""
    results: list[Any] = []

    @with_timeout(0.05)
    def busy() -> None:
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            pass

    def worker() -> None:
        with tracer.start_as_current_span("worker_request") as span:
            try:
                busy()
            except TimeoutError:
                results.append(_events_of(span))

    thread = threading.Thread(target=worker)
    thread.start()
    thread.join(10)
    assert results == [[("shared.timeout", {"timeout.seconds": 0.05})]]


async def test_async_timeout_becomes_an_event(tracer: Any) -> None:
    """An async block's timeout is an event on the task's span."""
    with tracer.start_as_current_span("request") as span, pytest.raises(TimeoutError):
        async with TimeoutContext(seconds=0.05):
            await asyncio.sleep(5)
    assert _events_of(span) == [("shared.timeout", {"timeout.seconds": 0.05})]


@needs_alarm
def test_timeout_landing_while_the_span_lock_is_held_does_not_hang(tracer: Any) -> None:
    """A timeout that interrupts the thread inside the span's own locked code drops its event."""
    with tracer.start_as_current_span("request") as span:
        started = time.monotonic()
        with pytest.raises(TimeoutError), TimeoutContext(seconds=0.05), span._lock:
            time.sleep(5)
        assert time.monotonic() - started < 2
    assert _events_of(span) == []


def test_idempotent_replay_event(tracer: Any) -> None:
    """The replay hook the idempotency layer calls records the key."""
    with tracer.start_as_current_span("request") as span:
        _events.idempotency_replay("order-42")
    assert _events_of(span) == [("shared.idempotency.replay", {"idempotency.key": "order-42"})]


def test_no_events_without_tracing_or_without_a_recording_span() -> None:
    """Tracing not set up: the guard is off; with no span current, the functions do nothing."""
    assert not _events.active
    retry = Retry("quiet", RetryConfig(max_attempts=2, initial_delay=0.0))
    outcomes = iter([ConnectionError(), None])

    def flaky() -> None:
        error = next(outcomes)
        if error is not None:
            raise error

    with instant_retries():
        retry.execute(flaky)
    setup_tracing(TracingConfig(exporter_type="none"))
    try:
        _events.retry_attempt("x", 1, 0.1, ValueError())  # no span current: ignored
        _events.timeout(1.0)
    finally:
        shutdown_tracing()
    assert not _events.active


def test_resilience_events_can_be_turned_off() -> None:
    """TracingConfig(resilience_events=False) leaves the hooks off."""
    setup_tracing(TracingConfig(exporter_type="none", resilience_events=False))
    try:
        assert not _events.active
    finally:
        shutdown_tracing()

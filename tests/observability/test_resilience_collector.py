"""The collector: every live instance's counters as ``shared_*`` families, read at scrape time."""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from shared.observability import (
    register_idempotency_store,
    register_resilience_metrics,
    unregister_idempotency_store,
    unregister_resilience_metrics,
)
from shared.resilience import (
    CircuitBreaker,
    CircuitBreakerConfig,
    CircuitBreakerOpenError,
    RateLimitConfig,
    RateLimiterRegistry,
    Retry,
    RetryConfig,
    TokenBucket,
)
from shared.resilience.retry import instant_retries
from shared.testing import ManualClock

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


@pytest.fixture
def registry() -> Iterator[CollectorRegistry]:
    """A fresh prometheus_client registry with the collector registered."""
    registry = CollectorRegistry()
    register_resilience_metrics(registry)
    yield registry
    unregister_resilience_metrics(registry)


def scrape(registry: CollectorRegistry) -> Samples:
    """The registry's exposition, parsed back with prometheus_client's parser."""
    samples: Samples = {}
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


def series(samples: Samples, name: str, **labels: str) -> list[dict[str, str]]:
    """The label sets of ``name`` whose labels include ``labels``."""
    found = []
    for sample_name, sample_labels in samples:
        as_dict = dict(sample_labels)
        if sample_name == name and labels.items() <= as_dict.items():
            found.append(as_dict)
    return found


def test_breaker_families(registry: CollectorRegistry) -> None:
    """State (one 0/1 series per state), calls by outcome, rejections, transitions, slow calls."""
    clock = ManualClock()
    breaker = CircuitBreaker(
        "collector-breaker",
        CircuitBreakerConfig(failure_threshold=2, timeout=10.0, expected_exceptions=(OSError,)),
        clock=clock,
        registry=None,
    )
    breaker.call(lambda: 1)
    with pytest.raises(KeyError):
        breaker.call(_raise, KeyError)  # not expected: ignored
    for _ in range(2):
        with pytest.raises(OSError, match="boom"):
            breaker.call(_raise, OSError)
    with pytest.raises(CircuitBreakerOpenError):
        breaker.call(lambda: 1)
    samples = scrape(registry)
    name = "collector-breaker"
    states = {
        s: value(samples, "shared_circuit_breaker_state", breaker=name, state=s)
        for s in ("closed", "open", "half_open")
    }
    assert states == {"closed": 0.0, "open": 1.0, "half_open": 0.0}
    calls = "shared_circuit_breaker_calls_total"
    assert value(samples, calls, breaker=name, outcome="success") == 1.0
    assert value(samples, calls, breaker=name, outcome="failure") == 2.0
    assert value(samples, calls, breaker=name, outcome="ignored") == 1.0
    rejected = "shared_circuit_breaker_rejected_calls_total"
    assert value(samples, rejected, breaker=name) == 1.0
    transitions = "shared_circuit_breaker_transitions_total"
    assert value(samples, transitions, breaker=name, to_state="open") == 1.0
    assert value(samples, "shared_circuit_breaker_slow_calls_total", breaker=name) == 0.0
    clock.advance(10.0)
    breaker.call(lambda: 1)  # the probe
    samples = scrape(registry)
    assert value(samples, "shared_circuit_breaker_state", breaker=name, state="open") == 0.0
    assert value(samples, transitions, breaker=name, to_state="half_open") == 1.0


def _raise(error: type[BaseException]) -> None:
    raise error("boom")


def test_slow_calls_are_counted(registry: CollectorRegistry) -> None:
    """A call slower than slow_call_duration is counted as slow."""
    clock = ManualClock()
    breaker = CircuitBreaker(
        "collector-slow",
        CircuitBreakerConfig(sliding_window=60.0, slow_call_duration=1.0),
        clock=clock,
        registry=None,
    )
    breaker.call(clock.advance, 2.0)
    breaker.call(lambda: None)
    samples = scrape(registry)
    assert value(samples, "shared_circuit_breaker_slow_calls_total", breaker="collector-slow") == 1


def test_retry_families(registry: CollectorRegistry) -> None:
    """Calls by outcome, retries, give-ups by reason."""
    retry = Retry("collector-retry", RetryConfig(max_attempts=2))
    attempts = iter([ValueError, None, ValueError, ValueError])

    def flaky() -> str:
        error = next(attempts)
        if error is not None:
            raise error("boom")
        return "ok"

    with instant_retries():
        retry.execute(flaky)
        with pytest.raises(ValueError, match="boom"):
            retry.execute(flaky)
        retry.execute(lambda: 1)
    samples = scrape(registry)
    calls = "shared_retry_calls_total"
    name = "collector-retry"
    assert value(samples, calls, retry=name, outcome="succeeded_without_retry") == 1
    assert value(samples, calls, retry=name, outcome="succeeded_with_retry") == 1
    assert value(samples, calls, retry=name, outcome="failed_without_retry") == 0
    assert value(samples, calls, retry=name, outcome="failed_with_retry") == 1
    assert value(samples, "shared_retry_retries_total", retry=name) == 2
    give_ups = "shared_retry_give_ups_total"
    assert value(samples, give_ups, retry=name, reason="max_attempts") == 1
    assert value(samples, give_ups, retry=name, reason="deadline") == 0
    assert value(samples, give_ups, retry=name, reason="budget") == 0


def test_limiter_families_one_series_per_registry(registry: CollectorRegistry) -> None:
    """Decisions, waits and tokens; a registry of many keys is one series, keys are no labels."""
    clock = ManualClock()
    bucket = TokenBucket(RateLimitConfig(10, burst_size=3), clock=clock, name="collector-bucket")
    users = RateLimiterRegistry(RateLimitConfig(1, burst_size=1), clock=clock, name="collector-u")
    for _ in range(4):
        bucket.try_acquire()
    for index in range(500):
        users.get_limiter(f"user-{index % 250}").try_acquire()
    samples = scrape(registry)
    decisions = "shared_rate_limiter_decisions_total"
    assert value(samples, decisions, limiter="collector-bucket", decision="granted") == 3
    assert value(samples, decisions, limiter="collector-bucket", decision="rejected") == 1
    assert value(samples, decisions, limiter="collector-u", decision="granted") == 250
    assert value(samples, decisions, limiter="collector-u", decision="rejected") == 250
    assert value(samples, "shared_rate_limiter_available_tokens", limiter="collector-bucket") == 0
    assert value(samples, "shared_rate_limiter_keys", limiter="collector-u") == 250
    assert len(series(samples, decisions, limiter="collector-u")) == 2
    assert not any("user-" in str(labels) for _, labels in samples)
    clock.advance(0.05)
    bucket.acquire(2.0)  # 2 tokens: 0.5 there, 0.15 s to wait
    samples = scrape(registry)
    waited = value(samples, "shared_rate_limiter_wait_seconds_total", limiter="collector-bucket")
    assert waited == pytest.approx(0.15)


def test_same_names_are_summed_and_dead_instances_leave(registry: CollectorRegistry) -> None:
    """Two live instances of one name make one series; a collected one disappears."""
    first = TokenBucket(RateLimitConfig(10), name="collector-shared")
    second = TokenBucket(RateLimitConfig(10), name="collector-shared")
    first.try_acquire()
    second.try_acquire()
    decisions = "shared_rate_limiter_decisions_total"
    samples = scrape(registry)
    assert value(samples, decisions, limiter="collector-shared", decision="granted") == 2
    del first, second
    gc.collect()
    assert not series(scrape(registry), decisions, limiter="collector-shared")


def test_breaker_state_with_two_breakers_of_one_name(registry: CollectorRegistry) -> None:
    """The state gauge stays 0 or 1 when two live breakers share a name."""
    breakers = [CircuitBreaker("collector-twin", registry=None) for _ in range(2)]
    samples = scrape(registry)
    gauge = "shared_circuit_breaker_state"
    assert value(samples, gauge, breaker="collector-twin", state="closed") == 1.0
    breakers[0].force_open()
    samples = scrape(registry)
    assert value(samples, gauge, breaker="collector-twin", state="closed") == 1.0
    assert value(samples, gauge, breaker="collector-twin", state="open") == 1.0


class FakeStore:
    """A store as the idempotency mixin makes it: a name and outcome counts."""

    def __init__(self, name: str, counts: dict[str, int]) -> None:
        self.name = name
        self.counts = counts

    def outcome_counts(self) -> dict[str, int]:
        return dict(self.counts)


def test_idempotency_families_from_outcome_counts(registry: CollectorRegistry) -> None:
    """Every outcome is exported (missing ones as 0); unregistering removes the store."""
    store = FakeStore("collector-orders", {"executed": 5, "replayed": 2, "mismatch": 1})
    register_idempotency_store(store)
    samples = scrape(registry)
    requests = "shared_idempotency_requests_total"
    got = {
        o: value(samples, requests, store="collector-orders", outcome=o)
        for o in ("executed", "replayed", "in_progress", "mismatch", "errors")
    }
    assert got == {"executed": 5, "replayed": 2, "in_progress": 0, "mismatch": 1, "errors": 0}
    store.counts["errors"] = 3
    assert value(scrape(registry), requests, store="collector-orders", outcome="errors") == 3
    assert unregister_idempotency_store(store)
    assert not unregister_idempotency_store(store)
    assert not series(scrape(registry), requests, store="collector-orders")


def test_idempotency_store_is_held_weakly(registry: CollectorRegistry) -> None:
    """A registered store nobody holds leaves the metrics."""
    register_idempotency_store(FakeStore("collector-gone", {"executed": 1}))
    gc.collect()
    assert not series(scrape(registry), "shared_idempotency_requests_total", store="collector-gone")


def test_register_idempotency_store_checks_the_store() -> None:
    """A store without a name or outcome_counts() is refused at once."""
    with pytest.raises(TypeError, match="name"):
        register_idempotency_store(object())  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="outcome_counts"):
        register_idempotency_store(type("S", (), {"name": "x"})())  # type: ignore[arg-type]


def test_a_broken_instance_does_not_break_the_scrape(registry: CollectorRegistry) -> None:
    """A store whose outcome_counts() raises is skipped; the rest is served."""

    class Broken(FakeStore):
        def outcome_counts(self) -> dict[str, int]:
            raise RuntimeError("store down")

    broken = Broken("collector-broken", {})
    good = FakeStore("collector-good", {"executed": 1})
    register_idempotency_store(broken)
    register_idempotency_store(good)
    samples = scrape(registry)
    requests = "shared_idempotency_requests_total"
    assert value(samples, requests, store="collector-good", outcome="executed") == 1
    assert not series(samples, requests, store="collector-broken")
    unregister_idempotency_store(broken)
    unregister_idempotency_store(good)


def test_registering_twice_is_one_collector() -> None:
    """register_resilience_metrics is idempotent per registry and checks its argument."""
    registry = CollectorRegistry()
    first = register_resilience_metrics(registry)
    assert register_resilience_metrics(registry) is first
    assert unregister_resilience_metrics(registry)
    assert not unregister_resilience_metrics(registry)
    with pytest.raises(TypeError, match="registry"):
        register_resilience_metrics(object())  # type: ignore[arg-type]


def test_timeouts_family_is_present(registry: CollectorRegistry) -> None:
    """shared_timeouts_fired_total is always exported (the process-wide count)."""
    from shared.resilience.timeout import timeout_stats

    assert value(scrape(registry), "shared_timeouts_fired_total") == timeout_stats()["fired"]


def test_nothing_is_read_until_a_scrape(monkeypatch: pytest.MonkeyPatch) -> None:
    """Registering does not collect (describe gives names only); a scrape reads the counters."""
    reads: list[str] = []
    bucket = TokenBucket(RateLimitConfig(10), name="collector-lazy")
    original = type(bucket).counters

    def counting(self: Any) -> dict[str, int]:
        reads.append(self.name)
        return original(self)  # type: ignore[no-any-return]

    monkeypatch.setattr(type(bucket), "counters", counting)
    registry = CollectorRegistry()
    register_resilience_metrics(registry)
    assert reads == []
    scrape(registry)
    assert "collector-lazy" in reads
    unregister_resilience_metrics(registry)


def test_scrapes_during_concurrent_calls_and_churn(registry: CollectorRegistry) -> None:
    """Scrapes while threads call and create/drop instances: no error, counters never go back."""
    breaker = CircuitBreaker("collector-busy", registry=None)
    bucket = TokenBucket(RateLimitConfig(1e6), name="collector-busy")
    stop = threading.Event()
    errors: list[BaseException] = []

    def call() -> None:
        try:
            while not stop.is_set():
                breaker.call(lambda: None)
                bucket.try_acquire()
        except BaseException as error:  # reported below
            errors.append(error)

    def churn() -> None:
        try:
            while not stop.is_set():
                CircuitBreaker("collector-churn", registry=None).call(lambda: None)
                TokenBucket(RateLimitConfig(10), name="collector-churn").try_acquire()
                Retry("collector-churn").execute(lambda: None)
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=call), threading.Thread(target=churn)]
    for thread in threads:
        thread.start()
    previous = (0.0, 0.0)
    try:
        for _ in range(30):
            samples = scrape(registry)
            current = (
                value(
                    samples,
                    "shared_circuit_breaker_calls_total",
                    breaker="collector-busy",
                    outcome="success",
                ),
                value(
                    samples,
                    "shared_rate_limiter_decisions_total",
                    limiter="collector-busy",
                    decision="granted",
                ),
            )
            assert current[0] >= previous[0]
            assert current[1] >= previous[1]
            previous = current
    finally:
        stop.set()
        for thread in threads:
            thread.join(10)
    assert not errors
    assert previous[0] > 0
    assert previous[1] > 0


def test_redis_local_fallback_is_labelled(registry: CollectorRegistry) -> None:
    """The in-process limiters a Redis limiter falls back to count under their own label."""
    import socket

    import redis
    import redis.backoff
    import redis.retry

    from shared.resilience import RedisRateLimiterRegistry, RedisTokenBucket
    from shared.resilience.redis_rate_limiter import LOCAL_FALLBACK_NAME

    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    client = redis.Redis(
        host="127.0.0.1",
        port=port,
        socket_connect_timeout=0.5,
        retry=redis.retry.Retry(redis.backoff.NoBackoff(), 0),
    )
    config = RateLimitConfig(tokens_per_second=1e-6, burst_size=2)
    bucket = RedisTokenBucket(config, client, "user-7", on_unavailable="local")
    users = RedisRateLimiterRegistry(config, client, on_unavailable="local")
    assert [bucket.try_acquire() for _ in range(3)] == [True, True, False]
    assert users.get_limiter("user-8").try_acquire()
    samples = scrape(registry)
    decisions = "shared_rate_limiter_decisions_total"
    assert value(samples, decisions, limiter=LOCAL_FALLBACK_NAME, decision="granted") == 3
    assert value(samples, decisions, limiter=LOCAL_FALLBACK_NAME, decision="rejected") == 1
    assert "user-" not in generate_latest(registry).decode()
    client.close()


def test_a_library_store_joins_the_metrics_at_its_first_call(registry: CollectorRegistry) -> None:
    """@idempotent on an in-memory store: exported with no registration, then gone with it."""
    from shared.resilience import InMemoryIdempotencyStore, idempotent

    store = InMemoryIdempotencyStore(name="collector-auto-store")
    requests = "shared_idempotency_requests_total"
    assert not series(scrape(registry), requests, store="collector-auto-store")

    @idempotent(key_param="key", store=store)
    def deposit(key: str, amount: int) -> int:
        return amount

    assert deposit("k-1", 5) == 5
    assert deposit("k-1", 5) == 5  # replayed
    samples = scrape(registry)
    assert value(samples, requests, store="collector-auto-store", outcome="executed") == 1
    assert value(samples, requests, store="collector-auto-store", outcome="replayed") == 1
    del deposit, store
    gc.collect()
    assert not series(scrape(registry), requests, store="collector-auto-store")

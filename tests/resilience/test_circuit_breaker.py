"""CircuitBreaker: the document's examples and the semantics of DESIGN.md section 5."""

from __future__ import annotations

import contextvars
import logging
import threading
import time
from typing import Any

import pytest

from shared.resilience import (
    CircuitBreaker,
    CircuitBreakerConfig,
    CircuitBreakerOpenError,
    CircuitBreakerRegistry,
    CircuitBreakerState,
    circuit_breaker_registry,
)
from shared.testing import ManualClock


def fail(exc: BaseException) -> Any:
    raise exc


def trip(breaker: CircuitBreaker, times: int, exc: type[BaseException] = ConnectionError) -> None:
    for _ in range(times):
        with pytest.raises(exc):
            breaker.call(fail, exc("down"))


@pytest.fixture
def clock() -> ManualClock:
    """A clock that moves only when the test says so."""
    return ManualClock(start=1000.0)


def breaker_with(clock: ManualClock, **config: Any) -> CircuitBreaker:
    return CircuitBreaker("svc", CircuitBreakerConfig(**config), clock=clock, registry=None)


# -- the document ---------------------------------------------------------------


class TestDocument:
    """The examples of the design document, as written."""

    def test_circuit_breaker_opens_after_failures(self) -> None:
        """The document's "Circuit Breaker Test", verbatim."""
        breaker = CircuitBreaker("test", CircuitBreakerConfig(failure_threshold=3, timeout=60.0))

        # Cause 3 failures
        for _ in range(3):
            try:  # noqa: SIM105 - the document's code
                breaker.call(lambda: 1 / 0)
            except:  # noqa: E722
                pass

        # Circuit should be open
        assert breaker.state == CircuitBreakerState.OPEN

        # Next call should fail immediately
        with pytest.raises(CircuitBreakerOpenError):
            breaker.call(lambda: "success")

    def test_configuration_example(self) -> None:
        """The "Configuration" block builds a breaker counting only the listed exceptions."""
        config = CircuitBreakerConfig(
            failure_threshold=5,  # Open after 5 failures
            success_threshold=2,  # Close after 2 successes in half-open
            timeout=60.0,  # Stay open for 60 seconds
            expected_exceptions=(  # Only count these as failures
                ConnectionError,
                TimeoutError,
            ),
        )
        breaker = CircuitBreaker("external_api", config)
        assert breaker.name == "external_api"
        assert breaker.timeout == 60.0
        with pytest.raises(ValueError, match="not listed"):
            breaker.call(fail, ValueError("not listed"))
        assert breaker.failure_count == 0
        trip(breaker, 5, TimeoutError)
        assert breaker.state is CircuitBreakerState.OPEN

    def test_usage_examples(self) -> None:
        """ "Usage": call with kwargs, fall back on CircuitBreakerOpenError, decorator, with."""

        class ExternalApi:
            def get_data(self, user_id: str = "") -> dict[str, str]:
                return {"user": user_id}

            def get_user(self, user_id: str) -> str:
                return f"user-{user_id}"

        external_api = ExternalApi()
        breaker = CircuitBreaker("external_api", CircuitBreakerConfig(failure_threshold=1))
        cached_data = {"user": "cached"}

        def fetch(user_id: str) -> dict[str, str]:
            try:
                result = breaker.call(external_api.get_data, user_id="123")
            except CircuitBreakerOpenError:
                # Circuit is open, service is down
                return cached_data
            return result

        assert fetch("123") == {"user": "123"}

        @breaker.protect
        def fetch_user(user_id: str) -> str:
            return external_api.get_user(user_id)

        assert fetch_user("7") == "user-7"
        assert fetch_user.__name__ == "fetch_user"

        with breaker:
            data = external_api.get_data()
        assert data == {"user": ""}
        assert breaker.success_count == 3

        breaker.force_open()
        assert fetch("123") == cached_data

    async def test_async_usage_example(self) -> None:
        """ "Async usage": await call_async with kwargs."""

        class AsyncApi:
            async def get_data(self, user_id: str) -> str:
                return f"data-{user_id}"

        async_api = AsyncApi()
        breaker = CircuitBreaker("async_api", CircuitBreakerConfig())
        result = await breaker.call_async(async_api.get_data, user_id="123")
        assert result == "data-123"

    def test_metrics_and_reset_example(self) -> None:
        """ "Metrics": counts, state, last failure time; reset() closes and clears."""
        breaker = CircuitBreaker("m", CircuitBreakerConfig(failure_threshold=2))
        assert breaker.last_failure_time is None
        breaker.call(lambda: None)
        before = time.time()
        trip(breaker, 2)
        after = time.time()
        assert breaker.failure_count == 2  # Total failures
        assert breaker.success_count == 1  # Total successes
        assert breaker.state is CircuitBreakerState.OPEN
        assert breaker.last_failure_time is not None
        assert before - 1 <= breaker.last_failure_time <= after + 1

        # Reset breaker manually
        breaker.reset()
        assert breaker.state is CircuitBreakerState.CLOSED
        assert (breaker.failure_count, breaker.success_count) == (0, 0)
        assert breaker.last_failure_time is None
        assert breaker.call(lambda: "ok") == "ok"

    def test_configuration_template_and_troubleshooting(self) -> None:
        """The "Configuration Templates" entry and the "Stuck Open" checks work."""
        breaker = CircuitBreaker(
            "template",
            CircuitBreakerConfig(
                failure_threshold=5,
                success_threshold=2,
                timeout=60.0,
                expected_exceptions=(ConnectionError,),
            ),
        )
        assert 30 <= breaker.timeout <= 120
        breaker.reset()
        assert f"Circuit state: {breaker.state}"
        assert f"Failures: {breaker.failure_count}" == "Failures: 0"

    def test_default_config_counts_every_exception(self) -> None:
        """Without a config, any Exception counts (the document's test relies on it)."""
        breaker = CircuitBreaker("defaults")
        assert breaker.config == CircuitBreakerConfig()
        trip(breaker, 5, ZeroDivisionError)
        assert breaker.state is CircuitBreakerState.OPEN


# -- closed ---------------------------------------------------------------------


def test_only_consecutive_failures_open(clock: ManualClock) -> None:
    """A success resets the failure streak; the counts are totals."""
    breaker = breaker_with(clock, failure_threshold=3)
    trip(breaker, 2)
    breaker.call(lambda: None)
    trip(breaker, 2)
    assert breaker.state is CircuitBreakerState.CLOSED
    trip(breaker, 1)
    assert breaker.state is CircuitBreakerState.OPEN
    assert breaker.failure_count == 5


def test_unexpected_exceptions_propagate_and_are_neutral(clock: ManualClock) -> None:
    """Exceptions outside expected_exceptions propagate unchanged and count for nothing."""
    breaker = breaker_with(clock, failure_threshold=1, expected_exceptions=(ConnectionError,))
    error = KeyError("k")
    with pytest.raises(KeyError) as caught:
        breaker.call(fail, error)
    assert caught.value is error
    assert breaker.state is CircuitBreakerState.CLOSED
    assert breaker.failure_count == 0
    assert breaker.counters()["calls_ignored"] == 1


@pytest.mark.parametrize("exc", [KeyboardInterrupt, SystemExit, GeneratorExit])
def test_interrupts_are_neutral_even_when_expected(clock: ManualClock, exc: type) -> None:
    """KeyboardInterrupt, SystemExit and GeneratorExit never count, whatever
    expected_exceptions says."""
    breaker = breaker_with(clock, failure_threshold=1, expected_exceptions=(BaseException,))
    with pytest.raises(exc):
        breaker.call(fail, exc())
    with pytest.raises(exc), breaker:
        raise exc()
    assert breaker.state is CircuitBreakerState.CLOSED
    assert breaker.failure_count == 0
    assert breaker.counters()["calls_ignored"] == 2


def test_consumers_that_stop_early_do_not_open_the_breaker(clock: ManualClock) -> None:
    """Closing a generator that yields inside ``with breaker:`` is neutral (GeneratorExit)."""
    breaker = breaker_with(clock, failure_threshold=2, expected_exceptions=BaseException)

    def rows() -> Any:
        with breaker:
            yield 1
            yield 2

    for _ in range(3):
        consumer = rows()
        assert next(consumer) == 1
        consumer.close()
    assert breaker.state is CircuitBreakerState.CLOSED
    assert breaker.failure_count == 0
    assert breaker.counters()["calls_ignored"] == 3
    # A probe stopped early gives its slot back, and the next probe is admitted.
    breaker.force_open()
    breaker.reset()
    trip(breaker, 2)
    clock.advance(61)
    consumer = rows()
    next(consumer)
    assert breaker.state is CircuitBreakerState.HALF_OPEN
    consumer.close()
    with breaker:
        pass


def test_ignore_exceptions_win_over_expected(clock: ManualClock) -> None:
    """An ignored exception is neutral even if it is also expected."""
    breaker = breaker_with(clock, failure_threshold=1, ignore_exceptions=(LookupError,))
    with pytest.raises(KeyError):
        breaker.call(fail, KeyError("k"))
    assert breaker.state is CircuitBreakerState.CLOSED
    trip(breaker, 1, ValueError)
    assert breaker.state is CircuitBreakerState.OPEN


def test_failure_result_counts_but_is_returned(clock: ManualClock) -> None:
    """is_failure_result marks a returned value as a failure; the caller still gets it."""
    breaker = breaker_with(clock, failure_threshold=2, is_failure_result=lambda r: r is None)
    assert breaker.call(lambda: None) is None
    assert breaker.call(lambda: 1) == 1
    assert breaker.call(lambda: None) is None
    assert breaker.call(lambda: None) is None
    assert breaker.state is CircuitBreakerState.OPEN
    assert (breaker.failure_count, breaker.success_count) == (3, 1)


def test_call_passes_positional_and_keyword_arguments(clock: ManualClock) -> None:
    """call(f, *args, **kwargs) calls f(*args, **kwargs)."""
    breaker = breaker_with(clock)
    assert breaker.call(lambda a, b=0, *, c: (a, b, c), 1, c=3) == (1, 0, 3)
    assert breaker.call(divmod, 7, 2) == (3, 1)


# -- open and half-open -----------------------------------------------------------


def test_open_rejects_with_retry_after_until_timeout(clock: ManualClock) -> None:
    """An open breaker rejects without calling; retry_after counts down to the probe."""
    breaker = breaker_with(clock, failure_threshold=1, timeout=30.0)
    trip(breaker, 1)
    calls = []
    clock.advance(10)
    with pytest.raises(CircuitBreakerOpenError) as caught:
        breaker.call(calls.append, 1)
    assert calls == []
    assert caught.value.name == "svc"
    assert caught.value.retry_after == pytest.approx(20.0)
    assert caught.value.args == ("svc", caught.value.retry_after)
    assert "svc" in str(caught.value)
    clock.advance(20)
    breaker.call(calls.append, 1)
    assert calls == [1]
    assert breaker.counters()["calls_rejected"] == 1


def test_half_open_closes_after_success_threshold(clock: ManualClock) -> None:
    """After the timeout, success_threshold successful probes close the breaker."""
    breaker = breaker_with(clock, failure_threshold=1, success_threshold=2, timeout=5.0)
    trip(breaker, 1)
    clock.advance(5)
    breaker.call(lambda: None)
    assert breaker.state is CircuitBreakerState.HALF_OPEN
    breaker.call(lambda: None)
    assert breaker.state is CircuitBreakerState.CLOSED


def test_half_open_failure_reopens_for_a_full_timeout(clock: ManualClock) -> None:
    """A failed probe reopens the breaker, and the timeout starts again."""
    breaker = breaker_with(clock, failure_threshold=1, timeout=5.0)
    trip(breaker, 1)
    clock.advance(6)
    trip(breaker, 1)
    assert breaker.state is CircuitBreakerState.OPEN
    with pytest.raises(CircuitBreakerOpenError) as caught:
        breaker.call(lambda: None)
    assert caught.value.retry_after == pytest.approx(5.0)


def test_half_open_admits_only_max_calls_probes(clock: ManualClock) -> None:
    """Probes beyond half_open_max_calls fail fast; ``retry_after`` is the time until the
    slots' lease (renewed by each probe) runs out."""
    breaker = breaker_with(clock, failure_threshold=1, half_open_max_calls=2, timeout=1.0)
    assert breaker.probe_timeout == 1.0  # the default: the breaker's timeout
    trip(breaker, 1)
    clock.advance(1)
    with breaker:
        clock.advance(0.25)
        with breaker:
            clock.advance(0.5)
            with pytest.raises(CircuitBreakerOpenError) as caught, breaker:
                pass
            assert caught.value.retry_after == pytest.approx(0.5)
    assert breaker.state is CircuitBreakerState.CLOSED


def test_a_leaked_probe_slot_is_free_again_after_probe_timeout(clock: ManualClock) -> None:
    """A ``with`` probe whose ``__exit__`` never runs holds its slot for ``probe_timeout``
    only; then a new probe is admitted, and the leaked block's late exit changes nothing."""
    breaker = breaker_with(clock, failure_threshold=1, success_threshold=1, probe_timeout=5.0)
    assert breaker.probe_timeout == 5.0
    trip(breaker, 1)
    clock.advance(60)
    leaked = contextvars.copy_context()
    leaked.run(breaker.__enter__)  # a probe that never reports
    clock.advance(4.9)
    with pytest.raises(CircuitBreakerOpenError) as caught, breaker:
        pass
    assert caught.value.retry_after == pytest.approx(0.1)  # until the lease runs out
    clock.advance(0.1)
    assert breaker.counters()["probes_expired"] == 0
    with breaker:  # the lease expired: this is the new probe, and it closes the breaker
        pass
    assert breaker.state is CircuitBreakerState.CLOSED
    assert breaker.counters()["probes_expired"] == 1
    leaked.run(breaker.__exit__, ConnectionError, ConnectionError("late"), None)
    assert breaker.state is CircuitBreakerState.CLOSED  # the late failure moved nothing
    assert breaker.failure_count == 2


def test_a_hanging_probe_loses_its_slot_after_probe_timeout(clock: ManualClock) -> None:
    """A probe that hangs in another thread: after ``probe_timeout`` another probe runs
    and decides; the hung probe's outcome, when it comes, is ignored."""
    breaker = breaker_with(clock, failure_threshold=1, success_threshold=1, timeout=10.0)
    assert breaker.probe_timeout == 10.0  # the default: the breaker's timeout
    trip(breaker, 1)
    clock.advance(10)
    started, release = threading.Event(), threading.Event()

    def hang() -> None:
        started.set()
        release.wait(10)
        raise ConnectionError("finally failed")

    outcome: list[BaseException] = []

    def probe() -> None:
        try:
            breaker.call(hang)
        except BaseException as exc:  # handed to the test's thread
            outcome.append(exc)

    thread = threading.Thread(target=probe)
    thread.start()
    assert started.wait(10)
    with pytest.raises(CircuitBreakerOpenError):
        breaker.call(lambda: None)
    clock.advance(10)
    assert breaker.call(lambda: "recovered") == "recovered"
    assert breaker.state is CircuitBreakerState.CLOSED
    release.set()
    thread.join(10)
    assert [type(e) for e in outcome] == [ConnectionError]
    assert breaker.state is CircuitBreakerState.CLOSED
    assert breaker.counters()["probes_expired"] == 1


def test_force_open_holds_until_reset(clock: ManualClock) -> None:
    """force_open() rejects even after the timeout, until reset()."""
    breaker = breaker_with(clock, timeout=2.0)
    breaker.force_open()
    assert breaker.state is CircuitBreakerState.OPEN
    assert breaker.is_forced_open
    clock.advance(100)
    with pytest.raises(CircuitBreakerOpenError) as caught:
        breaker.call(lambda: None)
    assert caught.value.retry_after == 2.0
    breaker.reset()
    assert not breaker.is_forced_open
    assert breaker.call(lambda: 1) == 1


# -- epochs -----------------------------------------------------------------------


def test_late_failure_from_before_a_reset_does_not_reopen(clock: ManualClock) -> None:
    """A call admitted before a state change cannot flip the new state when it fails."""
    breaker = breaker_with(clock, failure_threshold=1)

    def slow_failure() -> None:
        breaker.force_open()
        breaker.reset()
        raise ConnectionError("late")

    with pytest.raises(ConnectionError):
        breaker.call(slow_failure)
    assert breaker.state is CircuitBreakerState.CLOSED
    assert breaker.failure_count == 1  # still counted, for metrics


def test_late_success_from_before_opening_does_not_close(clock: ManualClock) -> None:
    """A success admitted while closed, finishing after the breaker opened, leaves it open."""
    breaker = breaker_with(clock, failure_threshold=1, success_threshold=1)
    with breaker:
        trip(breaker, 1)
    assert breaker.state is CircuitBreakerState.OPEN


# -- listeners, counters, registry ---------------------------------------------------


def test_listeners_see_every_transition_outside_the_lock(clock: ManualClock) -> None:
    """Listeners get (breaker, old, new) and may use the breaker themselves."""
    breaker = breaker_with(clock, failure_threshold=1, success_threshold=1, timeout=1.0)
    seen = []

    def listener(b: CircuitBreaker, old: CircuitBreakerState, new: CircuitBreakerState) -> None:
        seen.append((old, new, b.state, b.failure_count))

    breaker.add_listener(listener)
    trip(breaker, 1)
    clock.advance(1)
    breaker.call(lambda: None)
    breaker.force_open()
    breaker.reset()
    s = CircuitBreakerState
    assert seen == [
        (s.CLOSED, s.OPEN, s.OPEN, 1),
        (s.OPEN, s.HALF_OPEN, s.HALF_OPEN, 1),
        (s.HALF_OPEN, s.CLOSED, s.CLOSED, 1),
        (s.CLOSED, s.OPEN, s.OPEN, 1),
        (s.OPEN, s.CLOSED, s.CLOSED, 0),
    ]
    breaker.remove_listener(listener)
    breaker.force_open()
    assert len(seen) == 5


def test_a_raising_listener_is_logged_and_harmless(
    clock: ManualClock, caplog: pytest.LogCaptureFixture
) -> None:
    """A listener error never reaches the caller, and later listeners still run."""
    breaker = breaker_with(clock, failure_threshold=1)
    called = []
    breaker.add_listener(lambda *a: fail(RuntimeError("listener bug")))
    breaker.add_listener(lambda *a: called.append(a[2]))
    with caplog.at_level(logging.ERROR):
        trip(breaker, 1)
    assert breaker.state is CircuitBreakerState.OPEN
    assert called == [CircuitBreakerState.OPEN]
    assert "listener bug" in caplog.text


def test_counters_count_outcomes_rejections_and_transitions(clock: ManualClock) -> None:
    """counters() keeps totals for metrics that reset() does not clear."""
    breaker = breaker_with(clock, failure_threshold=1, success_threshold=1, timeout=1.0)
    breaker.call(lambda: None)
    with pytest.raises(KeyboardInterrupt):
        breaker.call(fail, KeyboardInterrupt())
    trip(breaker, 1)
    with pytest.raises(CircuitBreakerOpenError):
        breaker.call(lambda: None)
    clock.advance(1)
    breaker.call(lambda: None)
    breaker.reset()
    assert breaker.counters() == {
        "calls_succeeded": 2,
        "calls_failed": 1,
        "calls_ignored": 1,
        "calls_rejected": 1,
        "calls_slow": 0,
        "probes_expired": 0,
        "transitions_to_open": 1,
        "transitions_to_half_open": 1,
        "transitions_to_closed": 1,
    }


def test_registry_finds_breakers_by_name() -> None:
    """Breakers join the process-wide registry; get_or_create returns one per name."""
    breaker = CircuitBreaker("registry-test-payments")
    assert circuit_breaker_registry.get("registry-test-payments") is breaker
    assert "registry-test-payments" in circuit_breaker_registry
    registry = CircuitBreakerRegistry()
    config = CircuitBreakerConfig(failure_threshold=2)
    first = registry.get_or_create("db", config)
    assert registry.get_or_create("db") is first
    assert registry.get_or_create("db", CircuitBreakerConfig(failure_threshold=2)) is first
    with pytest.raises(ValueError, match="db"):
        registry.get_or_create("db", CircuitBreakerConfig(failure_threshold=3))
    assert list(registry) == [first]
    assert "db" not in circuit_breaker_registry
    registry.unregister("db")
    assert registry.get("db") is None
    assert circuit_breaker_registry.remove("registry-test-payments") is breaker


def test_registry_keeps_its_breakers_until_remove() -> None:
    """Fetched by name in a loop, with no reference kept: one breaker, and it opens."""
    import gc

    registry = CircuitBreakerRegistry()
    config = CircuitBreakerConfig(failure_threshold=2, expected_exceptions=ConnectionError)
    upstream_calls = []

    def upstream() -> None:
        upstream_calls.append(1)
        raise ConnectionError("down")

    outcomes = []
    for _ in range(6):
        gc.collect()
        try:
            registry.get_or_create("payments", config).call(upstream)
        except ConnectionError:
            outcomes.append("failed")
        except CircuitBreakerOpenError:
            outcomes.append("rejected")
    assert len(upstream_calls) == 2
    assert outcomes == ["failed"] * 2 + ["rejected"] * 4
    CircuitBreaker("direct", registry=registry)  # no reference kept here either
    gc.collect()
    assert sorted(registry.breakers()) == ["direct", "payments"]
    assert len(registry) == 2
    removed = registry.remove("payments")
    assert removed is not None
    assert removed.state is CircuitBreakerState.OPEN
    assert registry.remove("payments") is None
    assert "payments" not in registry
    assert registry.get_or_create("payments", config) is not removed
    registry.unregister("direct")
    assert registry.get("direct") is None


def test_registry_repr_names_its_breakers_and_states() -> None:
    registry = CircuitBreakerRegistry()
    assert repr(registry) == "CircuitBreakerRegistry(0 breakers: {})"
    registry.get_or_create("db")
    registry.get_or_create("payments").force_open()
    assert repr(registry) == (
        "CircuitBreakerRegistry(2 breakers: {'db': closed, 'payments': open})"
    )
    for i in range(12):
        registry.get_or_create(f"svc-{i}")
    text = repr(registry)
    assert text.startswith("CircuitBreakerRegistry(14 breakers: {'db': closed, ")
    assert text.endswith(", ... 4 more})")
    assert "'svc-8'" not in text


# -- sliding window ------------------------------------------------------------------


def test_window_opens_on_failure_rate_after_minimum_calls(clock: ManualClock) -> None:
    """In window mode the failure rate over the window decides, once minimum_calls is met."""
    breaker = breaker_with(clock, sliding_window=10.0, minimum_calls=4, failure_rate_threshold=0.5)
    trip(breaker, 3)
    assert breaker.state is CircuitBreakerState.CLOSED  # 3 calls < minimum_calls
    clock.advance(11)  # those failures leave the window
    for _ in range(3):
        breaker.call(lambda: None)
    trip(breaker, 2)
    assert breaker.state is CircuitBreakerState.CLOSED  # 2 of 5 < 0.5
    trip(breaker, 1)
    assert breaker.state is CircuitBreakerState.OPEN  # 3 of 6 = 0.5
    assert breaker.failure_count == 6


def test_window_opens_on_slow_call_rate(clock: ManualClock) -> None:
    """Calls slower than slow_call_duration open the breaker at slow_call_rate_threshold."""
    breaker = breaker_with(
        clock,
        sliding_window=60.0,
        minimum_calls=2,
        slow_call_duration=1.0,
        slow_call_rate_threshold=1.0,
    )
    breaker.call(clock.advance, 2.0)
    assert breaker.state is CircuitBreakerState.CLOSED
    breaker.call(clock.advance, 1.5)
    assert breaker.state is CircuitBreakerState.OPEN
    assert breaker.counters()["calls_slow"] == 2
    assert breaker.success_count == 2


def test_rejection_error_is_a_complete_open_error(clock: ManualClock) -> None:
    """The raised error is a CircuitBreakerOpenError with name, retry_after, str and pickling."""
    import pickle

    breaker = breaker_with(clock, timeout=4.0)
    breaker.force_open()
    with pytest.raises(CircuitBreakerOpenError) as caught:
        breaker.call(lambda: None)
    error = caught.value
    assert type(error) is CircuitBreakerOpenError
    assert (error.name, error.retry_after, error.args) == ("svc", 4.0, ("svc", 4.0))
    assert str(error) == "circuit breaker 'svc' is open; retry after 4.000s"
    copy = pickle.loads(pickle.dumps(error))
    assert (type(copy), copy.name, copy.retry_after) == (type(error), "svc", 4.0)


def test_a_listener_may_change_the_breaker_it_listens_to(clock: ManualClock) -> None:
    """No lock is held while listeners run: one can reset the breaker that just opened."""
    breaker = breaker_with(clock, failure_threshold=1)
    seen = []

    def reset_on_open(
        b: CircuitBreaker, old: CircuitBreakerState, new: CircuitBreakerState
    ) -> None:
        seen.append(new)
        if new is CircuitBreakerState.OPEN:
            b.reset()

    breaker.add_listener(reset_on_open)
    trip(breaker, 1)
    assert seen == [CircuitBreakerState.OPEN, CircuitBreakerState.CLOSED]
    assert breaker.state is CircuitBreakerState.CLOSED

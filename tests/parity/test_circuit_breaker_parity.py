"""The Rust circuit breaker core and its pure twin agree step by step.

A hypothesis state machine drives both cores with the same configuration and
the same random sequence of calls (every kind of outcome), calls held open
across other steps (late outcomes), clock advances, resets and forced opens,
on one ManualClock. After every step the state, the counts, the counters and
every error (type, name, retry_after) must be equal.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from types import ModuleType
from typing import Any

import pytest
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from shared.testing import ManualClock

OUTCOMES = ["success", "expected", "unexpected", "ignored", "cancelled", "interrupt", "bad_result"]


class ExpectedError(Exception):
    """Counted as a failure."""


class IgnoredError(ExpectedError):
    """ExpectedError, but listed in ignore_exceptions: neutral."""


class UnexpectedError(Exception):
    """Not in expected_exceptions: neutral."""


def make_error(outcome: str) -> BaseException | None:
    return {
        "expected": ExpectedError("e"),
        "unexpected": UnexpectedError("u"),
        "ignored": IgnoredError("i"),
        "cancelled": asyncio.CancelledError(),
        "interrupt": KeyboardInterrupt(),
    }.get(outcome)


def result_of(outcome: str) -> str:
    return "bad" if outcome == "bad_result" else "ok"


def capture(action: Callable[[], Any]) -> tuple[str, Any]:
    """What an action did, in a form both cores must match exactly."""
    try:
        return ("returned", action())
    except BaseException as exc:
        return ("raised", type(exc), exc.args, getattr(exc, "retry_after", None))  # type: ignore[return-value]


@pytest.mark.usefixtures("native")
class CircuitBreakerParity(RuleBasedStateMachine):
    native: ModuleType
    pure: ModuleType

    def __init__(self) -> None:
        super().__init__()
        self.clock = ManualClock(start=100.0)
        self.cores: list[Any] = []
        self.held: list[tuple[int, int]] = []
        self.transitions: list[list[tuple[str, str]]] = [[], []]

    @initialize(
        failure_threshold=st.integers(1, 4),
        success_threshold=st.integers(1, 3),
        half_open_max_calls=st.integers(1, 3),
        timeout=st.sampled_from([0.5, 1.0, 7.25]),
        window=st.one_of(
            st.none(),
            st.fixed_dictionaries(
                {
                    "sliding_window": st.sampled_from([1.0, 10.0]),
                    "minimum_calls": st.integers(1, 5),
                    "failure_rate_threshold": st.sampled_from([0.25, 0.5, 1.0]),
                    "slow_call_duration": st.sampled_from([None, 0.1, 2.0]),
                    "slow_call_rate_threshold": st.sampled_from([0.5, 1.0]),
                }
            ),
        ),
        result_predicate=st.booleans(),
    )
    def build(
        self,
        failure_threshold: int,
        success_threshold: int,
        half_open_max_calls: int,
        timeout: float,
        window: dict[str, Any] | None,
        result_predicate: bool,
    ) -> None:
        for i, module in enumerate((self.native, self.pure)):
            self.cores.append(
                module.CircuitBreakerCore(
                    "parity",
                    failure_threshold=failure_threshold,
                    success_threshold=success_threshold,
                    half_open_max_calls=half_open_max_calls,
                    timeout=timeout,
                    expected_exceptions=(ExpectedError,),
                    ignore_exceptions=(IgnoredError,),
                    is_failure_result=(lambda r: r == "bad") if result_predicate else None,
                    on_state_change=lambda _b, old, new, i=i: self.transitions[i].append(
                        (old, new)
                    ),
                    clock=self.clock,
                    **(window or {}),
                )
            )

    def both(self, action: Callable[[Any], Any]) -> Any:
        native_result, pure_result = (capture(lambda c=c: action(c)) for c in self.cores)
        assert native_result == pure_result
        return native_result

    @rule(outcome=st.sampled_from(OUTCOMES))
    def call(self, outcome: str) -> None:
        error = make_error(outcome)

        def func() -> str:
            if error is not None:
                raise error
            return result_of(outcome)

        self.both(lambda core: core.call(func))

    def admit_both(self) -> tuple[int, int] | None:
        """Admits a call in both cores: the same decision and error, or a failed test."""
        admitted = [capture(core._admit) for core in self.cores]
        if admitted[0][0] == "raised" or admitted[1][0] == "raised":
            assert admitted[0] == admitted[1]
            return None
        return (admitted[0][1], admitted[1][1])

    @rule(outcome=st.sampled_from(OUTCOMES), seconds=st.sampled_from([0.0, 0.05, 0.1, 3.0]))
    def timed_call(self, outcome: str, seconds: float) -> None:
        """Admit in both, let time pass while the call runs, then record in both."""
        permits = self.admit_both()
        if permits is not None:
            self.clock.advance(seconds)
            for core, permit in zip(self.cores, permits, strict=True):
                self.finish(core, permit, outcome)

    @precondition(lambda self: len(self.held) < 4)
    @rule()
    def start_call(self) -> None:
        """Admit a call in both and keep it running across later steps."""
        permits = self.admit_both()
        if permits is not None:
            self.held.append(permits)

    @precondition(lambda self: bool(self.held))
    @rule(index=st.integers(0, 3), outcome=st.sampled_from(OUTCOMES))
    def finish_call(self, index: int, outcome: str) -> None:
        """A held call ends, possibly after the state changed under it."""
        permits = self.held.pop(index % len(self.held))
        for core, permit in zip(self.cores, permits, strict=True):
            self.finish(core, permit, outcome)

    def finish(self, core: Any, permit: int, outcome: str) -> None:
        error = make_error(outcome)
        if error is None:
            core._record_result(permit, result_of(outcome))
        else:
            core._record_error(permit, error)

    @rule(seconds=st.sampled_from([0.0, 0.25, 0.5, 1.0, 2.5, 8.0]))
    def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)

    @rule()
    def reset(self) -> None:
        self.both(lambda core: core.reset())

    @rule()
    def force_open(self) -> None:
        self.both(lambda core: core.force_open())

    @invariant()
    def cores_agree(self) -> None:
        if not self.cores:
            return
        native, pure = self.cores
        for attribute in (
            "_state_name",
            "is_forced_open",
            "failure_count",
            "success_count",
            "timeout",
        ):
            assert getattr(native, attribute) == getattr(pure, attribute), attribute
        assert (native.last_failure_time is None) == (pure.last_failure_time is None)
        assert native.counters() == pure.counters()
        assert self.transitions[0] == self.transitions[1]


def test_cores_agree_step_by_step(native: ModuleType, pure: ModuleType) -> None:
    """Random sequences of calls, late outcomes, time, resets and forced opens: same results."""
    CircuitBreakerParity.native = native
    CircuitBreakerParity.pure = pure
    CircuitBreakerParity.TestCase().runTest()

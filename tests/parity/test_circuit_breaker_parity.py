"""The Rust circuit breaker core and its pure twin agree step by step.

A hypothesis state machine drives both cores with the same configuration and
the same random sequence of calls (every kind of outcome), calls held open
across other steps (late outcomes, expired probe leases), ``with`` blocks
entered in one context and left in the same or another one, clock advances,
resets and forced opens, on one ManualClock. After every step the state, the
counts, the counters and every error (type, name, retry_after) must be equal.
"""

from __future__ import annotations

import asyncio
import contextvars
import random
import threading
import time
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

# The Rust core and its twin side by side in every run: the backend the run
# selected plays no part.
pytestmark = pytest.mark.backend_independent

OUTCOMES = [
    "success",
    "expected",
    "unexpected",
    "ignored",
    "cancelled",
    "interrupt",
    "generator_exit",
    "bad_result",
]


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
        "generator_exit": GeneratorExit(),
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
        # `with` blocks in progress: the context each core's block was entered in.
        self.blocks: list[tuple[contextvars.Context, contextvars.Context]] = []
        self.transitions: list[list[tuple[str, str]]] = [[], []]

    @initialize(
        failure_threshold=st.integers(1, 4),
        success_threshold=st.integers(1, 3),
        half_open_max_calls=st.integers(1, 3),
        timeout=st.sampled_from([0.5, 1.0, 7.25]),
        probe_timeout=st.sampled_from([None, 0.3, 2.0]),
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
        probe_timeout: float | None,
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
                    probe_timeout=probe_timeout,
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

    @precondition(lambda self: len(self.blocks) < 4)
    @rule()
    def enter_block(self) -> None:
        """``__enter__`` in both, each in a context of its own that the block keeps."""
        contexts = (contextvars.copy_context(), contextvars.copy_context())
        entered = [
            capture(lambda c=c, x=x: x.run(c.__enter__) is c)
            for c, x in zip(self.cores, contexts, strict=True)
        ]
        assert entered[0] == entered[1]
        if entered[0][0] == "returned":
            self.blocks.append(contexts)

    @precondition(lambda self: bool(self.blocks))
    @rule(
        index=st.integers(0, 3),
        outcome=st.sampled_from([o for o in OUTCOMES if o != "bad_result"]),
        elsewhere=st.booleans(),
    )
    def exit_block(self, index: int, outcome: str, elsewhere: bool) -> None:
        """``__exit__`` in both, in the block's own context or in another one (which
        then gives back the oldest outstanding block's permit, in both cores alike)."""
        contexts = self.blocks.pop(index % len(self.blocks))
        error = make_error(outcome)
        kind = None if error is None else type(error)
        self.both_each(
            lambda i, core: (contextvars.copy_context() if elsewhere else contexts[i]).run(
                core.__exit__, kind, error, None
            )
        )

    def both_each(self, action: Callable[[int, Any], Any]) -> Any:
        results = [capture(lambda i=i, c=c: action(i, c)) for i, c in enumerate(self.cores)]
        assert results[0] == results[1]
        return results[0]

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
            "probe_timeout",
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


# -- under threads ------------------------------------------------------------------
#
# Thread schedules are not reproducible, so the two cores cannot be compared step
# by step. Instead both run the same per-thread schedule and must keep the same
# invariants.

THREADS = 8
STEPS = 400
HALF_OPEN_MAX = 2
SUCCESS_THRESHOLD = 2


def thread_schedule(seed: int) -> list[tuple[str, float]]:
    """One thread's steps: ``(outcome, seconds the call holds its permit)``, and clock moves."""
    rng = random.Random(seed)
    steps: list[tuple[str, float]] = []
    for _ in range(STEPS):
        if rng.random() < 0.1:
            steps.append(("advance", rng.choice([0.2, 0.6, 1.5])))
        else:
            outcome = rng.choice(["success"] * 4 + ["expected", "ignored", "cancelled"])
            steps.append((outcome, rng.choice([0.0, 0.0, 0.0005])))
    return steps


def phase_of(module: ModuleType, permit: int) -> int:
    """The epoch a permit was admitted in (the two cores pack it differently)."""
    word = permit & ((1 << 64) - 1)
    return word >> 42 if module.__name__ == "shared._native" else word >> 2


@pytest.mark.parametrize("backend_name", ["rust", "python"])
def test_cores_keep_the_invariants_under_threads(
    native: ModuleType, pure: ModuleType, backend_name: str
) -> None:
    """8 threads, the same schedules on both cores: at most ``half_open_max_calls``
    probes of a phase at once, no close by a probe of an older phase, counters that
    add up to what the callers saw, and no slot left taken at the end."""
    module = native if backend_name == "rust" else pure
    clock = ManualClock(start=100.0)
    lock = threading.Lock()
    state: dict[str, Any] = {
        "admitted": 0,
        "rejected": 0,
        "running": {},
        "most": 0,
        "latest_probe_phase": -1,
        "stale_closes": [],
        "closes": 0,
        "retry_afters": [],
    }
    recording = threading.local()

    def on_change(_breaker: Any, old: str, new: str) -> None:
        if (old, new) != ("half_open", "closed"):
            return
        phase, latest = getattr(recording, "probe", (None, None))
        with lock:
            state["closes"] += 1
            if phase is None or phase < latest:
                state["stale_closes"].append((phase, latest))

    core = module.CircuitBreakerCore(
        "threads",
        failure_threshold=2,
        success_threshold=SUCCESS_THRESHOLD,
        timeout=0.5,
        probe_timeout=1.0,
        half_open_max_calls=HALF_OPEN_MAX,
        expected_exceptions=(ExpectedError,),
        ignore_exceptions=(IgnoredError,),
        on_state_change=on_change,
        clock=clock,
    )

    def run(steps: list[tuple[str, float]]) -> None:
        for outcome, seconds in steps:
            if outcome == "advance":
                clock.advance(seconds)
                continue
            try:
                permit = core._admit()
            except Exception as exc:  # CircuitBreakerOpenError
                with lock:
                    state["rejected"] += 1
                    state["retry_afters"].append(exc.retry_after)  # type: ignore[attr-defined]
                continue
            probe = permit & 3 == 2
            phase = phase_of(module, permit)
            with lock:
                state["admitted"] += 1
                if probe:
                    running = state["running"]
                    running[phase] = running.get(phase, 0) + 1
                    state["most"] = max(state["most"], running[phase])
                    state["latest_probe_phase"] = max(state["latest_probe_phase"], phase)
            if seconds:
                time.sleep(seconds)
            with lock:
                if probe:
                    state["running"][phase] -= 1
                latest = state["latest_probe_phase"]
            recording.probe = (phase, latest) if probe else (None, latest)
            error = make_error(outcome)
            if error is None:
                core._record_success(permit)
            else:
                core._record_error(permit, error)
            recording.probe = (None, None)

    schedules = [thread_schedule(seed) for seed in range(THREADS)]
    threads = [threading.Thread(target=run, args=(s,)) for s in schedules]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not any(thread.is_alive() for thread in threads)

    counters = core.counters()
    calls = sum(1 for s in schedules for step in s if step[0] != "advance")
    assert state["admitted"] + state["rejected"] == calls
    recorded = counters["calls_succeeded"] + counters["calls_failed"] + counters["calls_ignored"]
    assert recorded == state["admitted"]
    assert counters["calls_rejected"] == state["rejected"]
    # Open: until the probe time (<= timeout); half-open and full: until the
    # probes' lease runs out (<= probe_timeout). Never 0: a slot is not free yet.
    assert len(state["retry_afters"]) == state["rejected"] > 0
    assert all(0.0 < r <= 1.0 for r in state["retry_afters"])
    assert counters["transitions_to_closed"] == state["closes"]
    # Not vacuous: the breaker went through many phases, probes overlapped.
    assert counters["transitions_to_half_open"] >= 5
    assert state["closes"] >= 2
    assert 1 <= state["most"] <= HALF_OPEN_MAX
    assert state["stale_closes"] == []
    assert all(count == 0 for count in state["running"].values())
    # No slot is left taken: a half-open breaker admits its full number of probes.
    if core._state_name == "half_open":
        permits = [core._admit() for _ in range(HALF_OPEN_MAX)]
        for permit in permits:
            core._record_error(permit, IgnoredError("neutral"))

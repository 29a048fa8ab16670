"""Parity of the timeout's core: the Rust ``DeadlineCore`` against its pure twin, step by step.

Both cores run the same sequence of steps in the same thread, on one
``ManualClock`` that both read (``set_deadline_clock``): enter a block with a
few milliseconds or an hour to run, move the clock (onto a deadline exactly,
past it, or not at all), leave the innermost block, fire a block as the
SIGALRM handler does (``mark_fired``), enter and leave a shield. After every
step both must agree on the clock's reading, the blocks the thread is in with
their exact deadlines, which one is armed (the earliest unfired), the shield
depth, and what each step returned or raised (which block's ``TimeoutError``,
or none).

The steps run inside both backends' critical sections, so the shared
scheduler never interrupts the thread: what fires is decided only by the
cores' enter, exit and shield bookkeeping, which is what is compared.
"""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.resilience import _deadlines
from shared.testing import ManualClock

pytestmark = pytest.mark.backend_independent

native: Any = pytest.importorskip("shared._native")
pure: Any = importlib.import_module("shared._pure.timeout")

SHORT = 0.0025  # seconds: a deadline the clock's steps reach, exactly or past
LONG = 3600.0

steps = st.lists(
    st.one_of(
        st.tuples(st.just("enter"), st.sampled_from([0.001, SHORT, 0.004, LONG])),
        st.tuples(st.just("advance"), st.sampled_from([0.0, 0.0005, 0.001, 0.0015, SHORT])),
        st.tuples(st.just("exit"), st.none()),
        st.tuples(st.just("fire"), st.integers(0, 7)),
        st.tuples(st.just("shield_enter"), st.none()),
        st.tuples(st.just("shield_exit"), st.none()),
    ),
    max_size=40,
)


class Side:
    """One backend's view of the same program."""

    def __init__(self, core: Any) -> None:
        self.core = core
        self.open: list[Any] = []  # blocks entered and not left, innermost last
        self.shields = 0
        self.labels: dict[int, int] = {}  # id(block) -> the step that entered it

    def state(self) -> Any:
        return self.core.current_thread_state()

    def step(self, index: int, kind: str, arg: Any) -> Any:
        if kind == "enter":
            block = self.core.DeadlineCore(arg)
            block.__enter__()
            self.open.append(block)
            self.labels[id(block)] = index
            return None
        if kind == "exit":
            if not self.open:
                return "nothing to leave"
            block = self.open.pop()
            try:
                block.__exit__(None, None, None)
            except TimeoutError as exc:
                return ("TimeoutError", str(exc), block.fired)
            return ("left", block.fired)
        if kind == "fire":
            if not self.open:
                return "nothing to fire"
            block = self.open[arg % len(self.open)]
            return self.state().mark_fired(block)
        if kind == "shield_enter":
            self.core.shield_enter()
            self.shields += 1
            return None
        if self.shields == 0:
            return "no shield"
        self.shields -= 1
        return self.core.shield_exit()

    def view(self) -> tuple[Any, ...]:
        state = self.state()
        armed = state.earliest_unfired()
        return (
            self.core.deadline_clock(),
            [(self.labels[id(b)], b.state, b.deadline) for b in state.blocks],
            None if armed is None else self.labels[id(armed)],
            state.shield,
        )

    def unwind(self) -> None:
        while self.shields:
            self.shields -= 1
            self.core.shield_exit()
        while self.open:
            with contextlib.suppress(TimeoutError):
                self.open.pop().__exit__(None, None, None)


def in_both_critical_sections(function: Callable[[], Any]) -> Any:
    """Runs ``function`` where neither backend lets the scheduler or SIGALRM raise."""
    return native.Guard(pure.Guard(function))()


@contextlib.contextmanager
def one_manual_clock() -> Iterator[ManualClock]:
    """Both cores read one ManualClock for the duration (the scheduler too)."""
    clock = ManualClock(start=1.0)
    native.set_deadline_clock(clock)
    pure.set_deadline_clock(clock)
    try:
        yield clock
    finally:
        native.set_deadline_clock(None)
        pure.set_deadline_clock(None)


def run_side_by_side(program: list[tuple[str, Any]], clock: ManualClock) -> list[Any]:
    """Runs ``program`` on both cores; asserts they agree after every step."""
    rust, twin = Side(native), Side(pure)
    outcomes: list[Any] = []

    def run() -> None:
        try:
            assert rust.view() == twin.view()
            for index, (kind, arg) in enumerate(program):
                if kind == "advance":
                    clock.advance(arg)
                    outcome: Any = None
                else:
                    outcome = rust.step(index, kind, arg)
                    assert outcome == twin.step(index, kind, arg), (index, kind, arg, outcome)
                assert rust.view() == twin.view(), (index, kind, arg)
                outcomes.append(outcome)
        finally:
            rust.unwind()
            twin.unwind()
        assert rust.view() == twin.view()
        assert rust.view()[1:] == ([], None, 0)

    in_both_critical_sections(run)
    return outcomes


@settings(max_examples=200, deadline=None)
@given(program=steps)
def test_rust_core_and_pure_twin_agree_step_by_step(program: list[tuple[str, Any]]) -> None:
    with one_manual_clock() as clock:
        run_side_by_side(program, clock)


def test_both_cores_read_the_manual_clock_and_let_go_of_it() -> None:
    with one_manual_clock() as clock:
        clock.advance(0.5)
        assert native.deadline_clock() == pure.deadline_clock() == 1.5
        assert _deadlines.deadline_clock() == 1.5  # the scheduler's timeline too
    assert abs(native.deadline_clock() - pure.deadline_clock()) < 1.0  # monotonic again
    for core in (native, pure):
        with pytest.raises(TypeError, match="now_ns"):
            core.set_deadline_clock(object())


def test_the_parity_program_exercises_firing() -> None:
    """The step language reaches every outcome it compares (no vacuous agreement)."""
    program = [
        ("enter", LONG),
        ("shield_enter", None),
        ("enter", SHORT),
        ("advance", SHORT),  # exactly on its deadline
        ("exit", None),  # past its deadline, but shielded: leaves quietly
        ("enter", SHORT),
        ("advance", 0.001),
        ("shield_exit", None),  # ends with no deadline passed
        ("shield_enter", None),
        ("advance", 0.0015),  # the inner deadline, exactly
        ("shield_exit", None),  # the outermost shield ends with a deadline passed
        ("exit", None),  # on its deadline: TimeoutError
        ("fire", 0),  # the outer block, as the SIGALRM handler marks it
        ("fire", 0),  # already fired
        ("exit", None),
    ]
    with one_manual_clock() as clock:
        outcomes = run_side_by_side(program, clock)
    assert outcomes == [
        None,
        None,
        None,
        None,
        ("left", False),
        None,
        None,
        False,
        None,
        None,
        True,
        ("TimeoutError", f"{_deadlines.timeout_message(SHORT)}", True),
        True,
        False,
        ("left", True),
    ]

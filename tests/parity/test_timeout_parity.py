"""Parity of the timeout's core: the Rust ``DeadlineCore`` against its pure twin, step by step.

Both cores run the same sequence of steps in the same thread: enter a block
(a deadline that has already passed, or one an hour away), leave the innermost
block, fire a block as the SIGALRM handler does (``mark_fired``), enter and
leave a shield. After every step both must agree on the blocks the thread is
in, which one is armed (the earliest unfired), the shield depth, and what each
step returned or raised (which block's ``TimeoutError``, or none).

The steps run inside both backends' critical sections, so the shared
scheduler never interrupts the thread: what fires is decided only by the
cores' enter, exit and shield bookkeeping, which is what is compared.
"""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.resilience import _deadlines

pytestmark = pytest.mark.backend_independent

native: Any = pytest.importorskip("shared._native")
pure: Any = importlib.import_module("shared._pure.timeout")

PAST = 1e-9  # passed by the time the block is left
FUTURE = 3600.0

steps = st.lists(
    st.one_of(
        st.tuples(st.just("enter"), st.sampled_from([PAST, FUTURE])),
        st.tuples(st.just("exit"), st.none()),
        st.tuples(st.just("fire"), st.integers(0, 7)),
        st.tuples(st.just("shield_enter"), st.none()),
        st.tuples(st.just("shield_exit"), st.none()),
    ),
    max_size=30,
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
            [(self.labels[id(b)], b.state) for b in state.blocks],
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


@settings(max_examples=150, deadline=None)
@given(program=steps)
def test_rust_core_and_pure_twin_agree_step_by_step(program: list[tuple[str, Any]]) -> None:
    rust, twin = Side(native), Side(pure)

    def run() -> None:
        try:
            for index, (kind, arg) in enumerate(program):
                outcomes = (rust.step(index, kind, arg), twin.step(index, kind, arg))
                assert outcomes[0] == outcomes[1], (index, kind, arg, outcomes)
                assert rust.view() == twin.view(), (index, kind, arg)
        finally:
            rust.unwind()
            twin.unwind()

    in_both_critical_sections(run)
    assert rust.view() == twin.view() == ([], None, 0)


def test_the_parity_program_exercises_firing() -> None:
    """The step language reaches every outcome it compares (no vacuous agreement)."""
    program = [
        ("enter", FUTURE),
        ("shield_enter", None),
        ("enter", PAST),
        ("exit", None),  # past its deadline, but shielded: leaves quietly
        ("enter", PAST),
        ("shield_exit", None),  # the outermost shield ends with a deadline passed
        ("exit", None),  # past its deadline: TimeoutError
        ("fire", 0),  # the outer block, as the SIGALRM handler marks it
        ("fire", 0),  # already fired
        ("exit", None),
    ]
    rust, twin = Side(native), Side(pure)
    seen: list[Any] = []

    def run() -> None:
        for index, (kind, arg) in enumerate(program):
            outcome = rust.step(index, kind, arg)
            assert outcome == twin.step(index, kind, arg)
            assert rust.view() == twin.view()
            seen.append(outcome)

    in_both_critical_sections(run)
    assert seen == [
        None,
        None,
        None,
        ("left", False),
        None,
        True,
        ("TimeoutError", f"{_deadlines.timeout_message(PAST)}", True),
        True,
        False,
        ("left", True),
    ]

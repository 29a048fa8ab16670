"""Deadlines that interrupt the thread that set them: the machinery of ``TimeoutContext``.

One model for every thread. A thread keeps the deadline blocks it is inside
(``_ThreadState.blocks``, entered and left in any order); the earliest one not
yet fired is *armed*. When the armed deadline passes, that block fires: its
thread is interrupted with an exception that only that block turns into the
user's ``TimeoutError``; the next earliest block of the thread is armed, so an
outer deadline still fires later. Two ways to interrupt:

- The main thread (Unix): ``setitimer(ITIMER_REAL)`` and a SIGALRM handler,
  installed when the thread enters its outermost block and replaced by the
  previous handler and the previous itimer (what is left of it) when it leaves.
  SIGALRM also interrupts a blocking ``time.sleep`` or socket read.
- Other threads, Windows, and a main thread whose SIGALRM handler Python could
  not restore: one process-wide scheduler thread (a heap of armed deadlines and
  a condition variable) raises in the target thread with
  ``PyThreadState_SetAsyncExc``. CPython delivers such an exception only
  between bytecodes, so a long C call is interrupted when it returns to Python.

The race at the edge of a block: an interruption that lands inside our own
enter/leave code (between the end of the block and its bookkeeping) would
escape with the bookkeeping half done. So neither mechanism ever raises while
a frame of this module's critical functions (``_critical``) is on the target
thread's stack: it retries ``_RETRY`` seconds later instead, by which time the
block has either left (nothing to raise) or entered (the exception lands in the
user's code). With the GIL this is exact: the target thread runs no bytecode
while the scheduler holds the GIL, and it receives a pending exception at the
same point the scheduler saw. A block that fired but whose exception was not
delivered when it left cancels it (``SetAsyncExc(tid, NULL)``), so nothing is
delivered after a block is gone. (On free-threaded builds the target runs while
the scheduler looks, which narrows the window but does not close it.)

Why Python and not Rust: per block the work is a heap push under a short lock
(main thread: two timer syscalls and two ``sigaction`` calls); firing needs the
interpreter anyway (frames, ``SetAsyncExc``, which Rust could only reach through
``unsafe`` FFI, forbidden here). A Rust scheduler would move no cost that matters.
"""

from __future__ import annotations

import ctypes
import heapq
import itertools
import math
import os
import signal
import sys
import threading
from time import monotonic
from types import CodeType, FrameType, TracebackType
from typing import Any, Callable, Optional, TypeVar

from shared.resilience.exceptions import TimeoutError

__all__ = ["Deadline", "timeout_message"]

# Seconds before trying again when a deadline passes inside our own bookkeeping.
_RETRY = 0.0002
# Shortest timer we arm: setitimer(0) would disarm instead of firing at once.
_MIN_DELAY = 1e-6

_IDLE, _ACTIVE, _FIRED = 0, 1, 2

_CRITICAL_CODES: set[CodeType] = set()
_F = TypeVar("_F", bound=Callable[..., Any])
_D = TypeVar("_D", bound="Deadline")


def _critical(function: _F) -> _F:
    """Marks a function no deadline may interrupt (it updates deadline bookkeeping)."""
    _CRITICAL_CODES.add(function.__code__)
    return function


def _in_critical(frame: Optional[FrameType]) -> bool:
    while frame is not None:
        if frame.f_code in _CRITICAL_CODES:
            return True
        frame = frame.f_back
    return False


def timeout_message(seconds: float) -> str:
    """The message of a TimeoutError: it names the seconds allowed."""
    return f"operation timed out after {seconds:g} seconds"


class _Expired(TimeoutError):
    """Delivered asynchronously into a worker thread; its block converts it on exit.

    ``PyThreadState_SetAsyncExc`` takes a class, not an instance, so each fired
    block gets its own subclass (``block`` names it) and knows its own exception.
    """

    block: Deadline

    def __init__(self, *args: object) -> None:
        super().__init__(*(args or (timeout_message(self.block.seconds),)))


class _ThreadState:
    """The deadline blocks one thread is inside."""

    __slots__ = (
        "armed",
        "blocks",
        "ident",
        "is_main",
        "pending",
        "saved_at",
        "saved_handler",
        "saved_timer",
        "signal_mode",
    )

    def __init__(self) -> None:
        self.blocks: list[Deadline] = []
        self.armed: Optional[Deadline] = None
        # The block whose exception SetAsyncExc queued and nobody has seen delivered.
        self.pending: Optional[Deadline] = None
        self.ident = threading.get_ident()
        self.is_main = threading.current_thread() is threading.main_thread()
        self.signal_mode = False
        self.saved_handler: Any = None
        self.saved_timer: tuple[float, float] = (0.0, 0.0)
        self.saved_at = 0.0

    def earliest_unfired(self) -> Optional[Deadline]:
        earliest = None
        for block in self.blocks:
            if block.state == _ACTIVE and (earliest is None or block.deadline < earliest.deadline):
                earliest = block
        return earliest


_local = threading.local()


def _thread_state() -> _ThreadState:
    try:
        state: _ThreadState = _local.state
    except AttributeError:
        state = _local.state = _ThreadState()
    return state


class Deadline:
    """A block of code that must finish within ``seconds`` (no validation here).

    ``with Deadline(s):`` interrupts the block with ``TimeoutError`` when ``s``
    seconds have passed. One block at a time per object.
    """

    __slots__ = ("deadline", "expiry", "fired", "seconds", "state", "thread")

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.deadline = 0.0
        self.state = _IDLE
        self.fired = False
        self.thread: Optional[_ThreadState] = None
        self.expiry: Optional[type[_Expired]] = None

    @_critical
    def __enter__(self: _D) -> _D:
        if self.state != _IDLE:
            raise RuntimeError("this timeout is already active; use one object per block")
        state = _thread_state()
        self.thread = state
        self.fired = False
        self.expiry = None
        self.state = _ACTIVE
        self.deadline = monotonic() + self.seconds
        if state.blocks:
            if state.signal_mode:
                _enter_nested_alarm(state, self)
            else:
                _scheduler.enter(state, self)
        elif state.is_main and _install_alarm(state):
            _enter_outermost_alarm(state, self)
        else:
            _scheduler.enter(state, self)
        return self

    @_critical
    def __exit__(
        self,
        exc_type: Optional[type[BaseException]],
        exc: Optional[BaseException],
        traceback: Optional[TracebackType],
    ) -> None:
        state = self.thread
        assert state is not None
        if state.signal_mode:
            _leave_alarm(state, self)
        elif _scheduler.leave(state, self, exc):
            # Our own asynchronous exception: re-raise it as a proper TimeoutError.
            raise TimeoutError(timeout_message(self.seconds)).with_traceback(traceback) from None


# -- main thread: SIGALRM -------------------------------------------------------------

_HAS_ALARM = hasattr(signal, "setitimer") and hasattr(signal, "SIGALRM")


@_critical
def _install_alarm(state: _ThreadState) -> bool:
    """Installs our SIGALRM handler; False when signals cannot be used here."""
    if not _HAS_ALARM:
        return False
    previous = signal.getsignal(signal.SIGALRM)
    if previous is None:  # installed outside Python: we could not put it back
        return False
    try:
        signal.signal(signal.SIGALRM, _on_alarm)
    except ValueError:  # not the main thread of the main interpreter
        return False
    state.saved_handler = previous
    state.signal_mode = True
    return True


@_critical
def _enter_outermost_alarm(state: _ThreadState, block: Deadline) -> None:
    state.blocks.append(block)
    state.armed = block
    state.saved_timer = signal.setitimer(signal.ITIMER_REAL, block.seconds)
    state.saved_at = monotonic()


@_critical
def _enter_nested_alarm(state: _ThreadState, block: Deadline) -> None:
    state.blocks.append(block)
    armed = state.armed
    if armed is None or block.deadline < armed.deadline:
        state.armed = block
        signal.setitimer(signal.ITIMER_REAL, block.seconds)


@_critical
def _arm_next_alarm(state: _ThreadState) -> None:
    following = state.armed = state.earliest_unfired()
    if following is None:
        signal.setitimer(signal.ITIMER_REAL, 0)
    else:
        signal.setitimer(signal.ITIMER_REAL, max(following.deadline - monotonic(), _MIN_DELAY))


@_critical
def _leave_alarm(state: _ThreadState, block: Deadline) -> None:
    _remove(state.blocks, block)
    was_armed = state.armed is block
    block.fired = block.state == _FIRED
    block.state = _IDLE
    if state.blocks:
        if was_armed:
            _arm_next_alarm(state)
        return
    # Outermost block: disarm first, so a late alarm of ours meets our handler (which
    # ignores it: nothing is armed) and never the restored one.
    state.armed = None
    state.signal_mode = False
    signal.setitimer(signal.ITIMER_REAL, 0)
    signal.signal(signal.SIGALRM, state.saved_handler)
    state.saved_handler = None
    delay, interval = state.saved_timer
    if delay > 0:
        remaining = delay - (monotonic() - state.saved_at)
        signal.setitimer(signal.ITIMER_REAL, max(remaining, _MIN_DELAY), interval)


def _on_alarm(signum: int, frame: Optional[FrameType]) -> None:
    """SIGALRM: raises TimeoutError in the main thread when its armed deadline passed."""
    state = _thread_state()
    armed = state.armed
    if armed is None or not state.signal_mode:
        return  # a late alarm of a block that has left
    if _in_critical(frame):
        signal.setitimer(signal.ITIMER_REAL, _RETRY)
        return
    remaining = armed.deadline - monotonic()
    if remaining > 0:  # the timer ran ahead of the monotonic clock
        signal.setitimer(signal.ITIMER_REAL, remaining)
        return
    armed.state = _FIRED
    _arm_next_alarm(state)
    raise TimeoutError(timeout_message(armed.seconds))


def _remove(blocks: list[Deadline], block: Deadline) -> None:
    if blocks[-1] is block:
        blocks.pop()
    else:  # left out of order (a block held across a generator's yield)
        del blocks[next(i for i, b in enumerate(blocks) if b is block)]


# -- other threads: one scheduler thread ------------------------------------------------

_ASYNC_EXC = ("PyThreadState_SetAsyncExc", ctypes.pythonapi)
_set_async_exc = ctypes.PYFUNCTYPE(ctypes.c_int, ctypes.c_ulong, ctypes.py_object)(_ASYNC_EXC)
# The same function with a NULL exception: cancels a pending one.
_clear_async_exc = ctypes.PYFUNCTYPE(ctypes.c_int, ctypes.c_ulong, ctypes.c_void_p)(_ASYNC_EXC)


class _Scheduler:
    """One daemon thread that interrupts threads at their armed deadlines.

    The heap holds ``(deadline, seq, block)``; an entry is live while its block is
    active and armed (``thread.armed is block``), else dropped lazily, and the heap
    is compacted when it doubles past its live size, so its length stays bounded by
    the number of threads inside a block. Callers wake the thread only when they arm
    a deadline earlier than the one it sleeps towards.
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.wakeup = threading.Condition(self.lock)
        self.heap: list[tuple[float, int, Deadline]] = []
        self.seq = itertools.count()
        self.next_wake = math.inf
        self.compact_at = 64
        self.thread: Optional[threading.Thread] = None

    @_critical
    def enter(self, state: _ThreadState, block: Deadline) -> None:
        with self.lock:
            state.blocks.append(block)
            armed = state.armed
            if armed is None or block.deadline < armed.deadline:
                state.armed = block
                self.push(block)

    @_critical
    def leave(self, state: _ThreadState, block: Deadline, exc: Optional[BaseException]) -> bool:
        """Ends a block; True when ``exc`` is its own expiry (to convert)."""
        with self.lock:
            _remove(state.blocks, block)
            fired = block.fired = block.state == _FIRED
            block.state = _IDLE
            if not fired:
                if state.armed is block:
                    following = state.armed = state.earliest_unfired()
                    if following is not None:
                        self.push(following)
            own = fired and isinstance(exc, _Expired) and exc.block is block
            if isinstance(exc, _Expired) and state.pending is exc.block:
                state.pending = None  # delivered
            elif fired and state.pending is block:
                # Fired as the block ended: cancel the exception before anyone sees it.
                _clear_async_exc(state.ident, None)
                state.pending = None
            return own

    @_critical
    def push(self, block: Deadline) -> None:
        heapq.heappush(self.heap, (block.deadline, next(self.seq), block))
        if len(self.heap) > self.compact_at:
            self.heap = [entry for entry in self.heap if _live(entry[2])]
            heapq.heapify(self.heap)
            self.compact_at = max(64, 2 * len(self.heap))
        if self.thread is None:
            self.thread = threading.Thread(
                target=self.run, name="shared-timeout-scheduler", daemon=True
            )
            self.thread.start()
        if block.deadline < self.next_wake:
            self.next_wake = block.deadline
            self.wakeup.notify()

    def run(self) -> None:
        with self.lock:
            while True:
                heap = self.heap
                while heap and not _live(heap[0][2]):
                    heapq.heappop(heap)
                if not heap:
                    self.next_wake = math.inf
                    self.wakeup.wait()
                    continue
                deadline = heap[0][0]
                now = monotonic()
                if deadline > now:
                    self.next_wake = deadline
                    self.wakeup.wait(deadline - now)
                    continue
                self.fire(heapq.heappop(heap)[2], now)

    def fire(self, block: Deadline, now: float) -> None:
        state = block.thread
        assert state is not None
        if _in_critical(sys._current_frames().get(state.ident)):
            heapq.heappush(self.heap, (now + _RETRY, next(self.seq), block))
            return
        block.state = _FIRED
        block.expiry = type("DeadlineExpired", (_Expired,), {"block": block})
        following = state.armed = state.earliest_unfired()
        if following is not None:
            heapq.heappush(self.heap, (following.deadline, next(self.seq), following))
        state.pending = block
        _set_async_exc(state.ident, block.expiry)


def _live(block: Deadline) -> bool:
    return block.state == _ACTIVE and block.thread is not None and block.thread.armed is block


_scheduler = _Scheduler()


def _reset_after_fork() -> None:
    """The child has only the forking thread: a fresh scheduler serves its blocks."""
    global _scheduler
    _scheduler = _Scheduler()
    state = getattr(_local, "state", None)
    if state is not None and not state.signal_mode and state.armed is not None:
        _scheduler.push(state.armed)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_after_fork)

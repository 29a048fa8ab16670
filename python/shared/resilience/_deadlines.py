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
escape with the bookkeeping half done, or after the block is gone. Three rules
keep it out:

- Neither mechanism raises while the target thread is in one of this module's
  critical functions (``_critical``); it looks again ``_RETRY`` seconds later,
  when the block has either left (nothing to raise) or entered (the exception
  lands in the user's code). The SIGALRM handler runs in the main thread and
  sees its frame, so there this is exact.
- The scheduler takes a fresh GIL quantum (``time.sleep(0)``) just before it
  looks at the target's frame and raises, so the target runs no bytecode in
  between (it could only move if the OS preempted the scheduler for longer than
  the switch interval).
- If it moved anyway, into our enter/leave code, it waits for the scheduler's
  lock there; the first call under that lock cancels an exception queued and
  not yet delivered (``SetAsyncExc(tid, NULL)``) and schedules the fire again.
  A worker thread takes that lock only when it must (see below), and leaving a
  block is where it must: it marks the block ``_LEAVING`` and then reads
  ``firing`` and ``pending``, while the scheduler sets ``firing`` before it
  checks that the block is still ``_ACTIVE`` and clears it only after
  ``pending`` is set. Either the scheduler sees ``_LEAVING`` and does not
  raise, or the thread sees the fire and goes through the lock.
  An older eval loop (3.9) can deliver it before that call (right after the
  lock is taken): ``__enter__``/``__exit__`` catch it and do the same
  (``_take_back``). So a block that ends as its deadline passes simply ends,
  and nothing is ever delivered after a block has left. (A delivered exception
  marks itself when CPython instantiates it.)
- Neither mechanism raises where 3.9/3.10 would let the exception skip a
  ``with`` block's ``__exit__`` (``_at_an_edge``): between the block's
  POP_BLOCK and its ``__exit__`` call (3.9), or as an exception enters a
  handler (3.9, 3.10; the scheduler cannot see that on 3.9).

On free-threaded builds the target runs while the scheduler looks, so the
second rule narrows the window without closing it.

An interruption can also land where CPython cannot let it out: a weakref
callback, a ``__del__``, a ``gc`` callback (a dying ``Thread`` object's
``WeakSet`` callback, say). CPython hands it to ``sys.unraisablehook`` and goes
on, and the block would run on past its deadline. So when a deadline fires we
make sure ``sys.unraisablehook`` is one of ours (wrapping the hook that was
current); it knows our exception (the main thread's by identity, a worker's by
its private class), does not report it, puts its block back to armed and fires
again ``_RETRY`` seconds later, or at once on a worker thread, until the
exception reaches the block's own code. Every other unraisable goes to the
wrapped hook unchanged.

The resolution of worker-thread deadlines is about the interpreter's switch
interval (``sys.getswitchinterval()``, 5 ms by default) when the target thread
is busy: the scheduler needs the GIL to raise.

The cost per block (issue 5: <= 1 us around a fast function). A worker thread
enters and leaves a block without the scheduler's lock or its condition
variable, with the GIL as the only ordering: entering appends the block to its
thread's list and then reads ``wake_at``, the time of the thread's live heap
entry; the scheduler resets ``wake_at`` before it reads that list, so either it
sees the block or the thread sees the reset value and takes the lock to push
(and notifies only when the scheduler sleeps past the new deadline). A block
whose deadline is later than ``wake_at`` pushes nothing: the scheduler looks at
that thread by then anyway and works out the earliest active block from the
list. Leaving pushes and notifies nothing: the scheduler wakes at the old time,
finds the block gone, and sleeps until the next live deadline. So a thread
running many short blocks takes the lock about once per ``seconds``. A
free-threaded build (no GIL, so no such ordering) takes the lock on every block.

Why Python and not Rust: per block the work is a few attribute updates (main
thread: two timer syscalls and two ``sigaction`` calls);
firing needs the interpreter anyway (frames, ``SetAsyncExc``, which Rust could
only reach through ``unsafe`` FFI, forbidden here). A Rust scheduler would move
no cost that matters.
"""

from __future__ import annotations

import ctypes
import heapq
import importlib
import itertools
import math
import opcode
import os
import sys
import threading
import time
from time import monotonic
from types import CodeType, FrameType, TracebackType
from typing import Any, Callable, Optional, TypeVar

from shared.resilience.exceptions import TimeoutError

__all__ = ["Deadline", "timeout_message"]

# Seconds before trying again when a deadline passes inside our own bookkeeping.
_RETRY = 0.0002
# Shortest timer we arm: setitimer(0) would disarm instead of firing at once.
_MIN_DELAY = 1e-6

_IDLE, _ACTIVE, _FIRED, _LEAVING = 0, 1, 2, 3

# Worker threads enter and leave blocks without the scheduler's lock when the GIL
# serialises them with the scheduler (see Deadline.__enter__ and __exit__); on a
# free-threaded build every block takes the lock.
_is_gil_enabled: Callable[[], bool] = getattr(sys, "_is_gil_enabled", lambda: True)
_LOCK_FREE = _is_gil_enabled()

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


# Two places where CPython 3.9/3.10 may deliver an interruption that would skip a ``with``
# block's ``__exit__`` (3.11 delivers nothing at either):
# - 3.9: between the block's POP_BLOCK and its ``__exit__`` call (LOAD_CONST None,
#   DUP_TOP, DUP_TOP, CALL_FUNCTION 3). 3.10 checks nowhere in that stretch.
# - 3.9, 3.10: as an exception enters a handler, before the handler's first instruction;
#   a second exception raised there replaces the first and skips that handler.
_OLD_EVAL_LOOP = sys.version_info < (3, 11)
_WITH_EXIT_EDGE = sys.version_info < (3, 10)
if _WITH_EXIT_EDGE:
    _POP_BLOCK = opcode.opmap["POP_BLOCK"]
    _EXIT_CALL = bytes(opcode.opmap[name] for name in ("LOAD_CONST", "DUP_TOP", "DUP_TOP"))
    _CALL_EXIT = bytes((opcode.opmap["CALL_FUNCTION"], 3))


def _at_an_edge(frame: FrameType, handled: Optional[BaseException]) -> bool:
    """``frame`` stopped where an interruption would skip a ``__exit__`` (3.9, 3.10).

    ``handled``: the exception its thread is handling, if any. On 3.9 and 3.10
    ``f_lasti`` is still the instruction before the check.
    """
    at = frame.f_lasti
    if _WITH_EXIT_EDGE and at >= 0:
        code = frame.f_code.co_code
        if (
            code[at] == _POP_BLOCK
            and code[at + 2 : at + 8 : 2] == _EXIT_CALL
            and code[at + 8 : at + 10] == _CALL_EXIT
        ):
            return True
    traceback = handled.__traceback__ if handled is not None else None
    # Handled, and its frame has run no instruction since it came in: entering a handler.
    return traceback is not None and traceback.tb_frame is frame and traceback.tb_lasti == at


def timeout_message(seconds: float) -> str:
    """The message of a TimeoutError: it names the seconds allowed."""
    return f"operation timed out after {seconds:g} seconds"


class _ExpiredError(TimeoutError):
    """Delivered asynchronously into a worker thread; its block converts it on exit.

    ``PyThreadState_SetAsyncExc`` takes a class, not an instance, so each fired
    block gets its own subclass (``block`` names it) and knows its own exception.
    """

    block: Deadline

    def __init__(self, *args: object) -> None:
        # Runs where the exception lands (CPython instantiates it there, before any
        # handler sees it): from now on it is in flight, no longer cancellable.
        self.block.delivered = True
        super().__init__(*(args or (timeout_message(self.block.seconds),)))


class _ThreadState:
    """The deadline blocks one thread is inside."""

    __slots__ = (
        "alarm_raised",
        "armed",
        "blocks",
        "firing",
        "ident",
        "is_main",
        "pending",
        "saved_at",
        "saved_handler",
        "saved_timer",
        "signal_mode",
        "wake_at",
    )

    def __init__(self) -> None:
        self.blocks: list[Deadline] = []
        # Main thread (SIGALRM): the earliest block not fired yet, the one the itimer is
        # set for. The scheduler works it out from ``blocks`` when it wakes instead.
        self.armed: Optional[Deadline] = None
        # The block whose exception SetAsyncExc queued last (delivered or not).
        self.pending: Optional[Deadline] = None
        # The block the scheduler is about to raise for, from before it checks that the
        # block is still active until ``pending`` is set: see Deadline.__exit__.
        self.firing: Optional[Deadline] = None
        # When the scheduler looks at this thread next (its live heap entry); <= the
        # deadline of every active block of the thread. Written under the scheduler's lock.
        self.wake_at = math.inf
        self.ident = threading.get_ident()
        self.is_main = threading.current_thread() is threading.main_thread()
        self.signal_mode = False
        self.saved_handler: Any = None
        self.saved_timer: tuple[float, float] = (0.0, 0.0)
        self.saved_at = 0.0
        # The TimeoutError the SIGALRM handler raised last, and its block, until the
        # outermost block leaves: the unraisable hook knows it by identity.
        self.alarm_raised: Optional[tuple[BaseException, Deadline]] = None

    @_critical
    def earliest_unfired(self) -> Optional[Deadline]:
        earliest = None
        # A copy: on a worker thread the scheduler reads while the thread appends and removes.
        for block in self.blocks[:]:
            if block.state == _ACTIVE and (earliest is None or block.deadline < earliest.deadline):
                earliest = block
        return earliest


_local = threading.local()


class Deadline:
    """A block of code that must finish within ``seconds`` (not validated here).

    ``with Deadline(s):`` interrupts the block with ``TimeoutError`` when ``s``
    seconds have passed. One block at a time per object.
    """

    __slots__ = ("deadline", "delivered", "fired", "seconds", "state", "thread")
    deadline: float
    delivered: bool
    thread: Optional[_ThreadState]

    def __init__(self, seconds: float) -> None:
        # deadline and thread are set by __enter__, delivered by the scheduler when it fires.
        self.seconds = seconds
        self.state = _IDLE
        self.fired = False

    @_critical
    def __enter__(self: _D) -> _D:
        try:  # first: see _take_back
            if self.state != _IDLE:
                raise RuntimeError("this timeout is already active; use one object per block")
            try:
                state: _ThreadState = _local.state
            except AttributeError:
                state = _local.state = _ThreadState()
            self.thread = state
            self.fired = False
            now = monotonic()
            self.deadline = deadline = now + self.seconds
            blocks = state.blocks
            if state.is_main:
                if state.signal_mode:  # inside an outer block of this thread
                    self.state = _ACTIVE
                    blocks.append(self)
                    armed = state.armed
                    if armed is None or deadline < armed.deadline:
                        # (An armed earlier deadline needs no timer call.)
                        state.armed = self
                        _setitimer(_ITIMER_REAL, self.seconds)
                    return self
                if not blocks and _install_alarm(state):  # the outermost block
                    self.state = _ACTIVE
                    blocks.append(self)
                    state.armed = self
                    state.saved_timer = _setitimer(_ITIMER_REAL, self.seconds)
                    state.saved_at = now
                    return self
            if _LOCK_FREE:
                # The block is in the list before wake_at is read; the scheduler resets
                # wake_at before it reads the list (_Scheduler.run): so either it sees the
                # block, or this reads the reset value and schedules below.
                self.state = _ACTIVE
                blocks.append(self)
                if deadline >= state.wake_at and state.pending is None:
                    return self  # the scheduler looks at this thread by then anyway
                _enter_locked(state, self, listed=True)
            else:
                _enter_locked(state, self, listed=False)
            return self
        except _ExpiredError as landed:
            _take_back(landed)
        return self.__enter__()  # reached only after a take-back: nothing was done yet

    @_critical
    def __exit__(
        self,
        exc_type: Optional[type[BaseException]],
        exc: Optional[BaseException],
        traceback: Optional[TracebackType],
    ) -> None:
        try:  # first: see _take_back
            state = self.thread
            assert state is not None
            if state.signal_mode:
                blocks = state.blocks
                if blocks[-1] is self:
                    blocks.pop()
                else:
                    _remove(blocks, self)
                self.fired = self.state == _FIRED
                self.state = _IDLE
                if blocks:
                    if state.armed is self:
                        _arm_next_alarm(state)
                    return
                # Outermost block: disarm first, so a late alarm of ours meets our handler
                # (which ignores it: nothing is armed) and never the restored one.
                state.armed = None
                state.signal_mode = False
                state.alarm_raised = None  # its traceback would keep the block's frames alive
                _setitimer(_ITIMER_REAL, 0)
                _signal.signal(_SIGALRM, state.saved_handler)
                state.saved_handler = None
                delay, interval = state.saved_timer
                if delay > 0:  # the itimer that was running before: what is left of it
                    remaining = delay - (monotonic() - state.saved_at)
                    _setitimer(_ITIMER_REAL, max(remaining, _MIN_DELAY), interval)
                return
            prior = self.state
            if _LOCK_FREE:
                # _LEAVING before firing and pending are read; the scheduler sets firing
                # before it checks the block is _ACTIVE, and clears it after pending is set:
                # so either it does not raise, or this sees it and takes the lock.
                self.state = _LEAVING
                if state.firing is None and state.pending is None:
                    self.state = _IDLE
                    fired = self.fired = prior == _FIRED
                    blocks = state.blocks
                    if blocks and blocks[-1] is self:
                        blocks.pop()
                    else:  # left out of order (a block held across a generator's yield)
                        _remove(blocks, self)
                    if fired and isinstance(exc, _ExpiredError) and exc.block is self:
                        # Our own asynchronous exception: re-raised as a proper TimeoutError.
                        timeout = TimeoutError(timeout_message(self.seconds))
                        raise timeout.with_traceback(traceback) from None
                    return
            if _leave_locked(state, self, prior) and (
                isinstance(exc, _ExpiredError) and exc.block is self
            ):
                timeout = TimeoutError(timeout_message(self.seconds))
                raise timeout.with_traceback(traceback) from None
        except _ExpiredError as landed:
            _take_back(landed)
        return self.__exit__(exc_type, exc, traceback)  # only after a take-back, as above


@_critical
def _settle(state: _ThreadState) -> None:
    """Takes back an exception queued for ``state``'s thread and not delivered (lock held).

    The first call under the lock in the thread's bookkeeping: nothing lands before it.
    """
    pending = state.pending
    if pending is not None:
        if not pending.delivered:
            _clear_async_exc(state.ident, None)
            _scheduler.retry(state, pending)
        state.pending = None


@_critical
def _enter_locked(state: _ThreadState, block: Deadline, *, listed: bool) -> None:
    """The rest of ``__enter__`` under the scheduler's lock; ``listed``: already in blocks."""
    scheduler = _scheduler
    with scheduler.lock:
        _settle(state)
        if not listed:
            block.state = _ACTIVE
            state.blocks.append(block)
        if block.deadline < state.wake_at:
            scheduler.push(state, block.deadline)


@_critical
def _leave_locked(state: _ThreadState, block: Deadline, prior: int) -> bool:
    """The rest of ``__exit__`` under the scheduler's lock; True if the block fired."""
    with _scheduler.lock:
        if block.state == _LEAVING:
            # Unless the scheduler marked it _FIRED after its check, which saw it _ACTIVE:
            # it fired if its exception is the one queued (the mark may have come before
            # _LEAVING and been overwritten by it).
            block.state = _FIRED if state.pending is block else prior
        _settle(state)  # a fire of this block not delivered: back to _ACTIVE
        fired = block.fired = block.state == _FIRED
        block.state = _IDLE
        blocks = state.blocks
        if blocks and blocks[-1] is block:
            blocks.pop()
        else:
            _remove(blocks, block)
        return fired


@_critical
def _take_back(landed: _ExpiredError) -> None:
    """Undoes the fire whose exception landed in ``__enter__``/``__exit__``; it fires again later.

    The scheduler queues an exception while the thread's bookkeeping waits for its lock
    (the thread moved after the scheduler looked); the bookkeeping's first call under the
    lock takes it back. On 3.11 nothing can deliver it before that call. On 3.9 the eval
    loop checks for it between almost any two bytecodes: right after ``with
    scheduler.lock:`` took the lock, say, so it landed there before our call could cancel
    it, and escaped the ``with`` statement unconverted with the block left in
    ``state.blocks``. So both methods run their body in a ``try`` that catches it, treat
    it as cancelled, and start again: it landed before their first change of state (and
    once the lock is held and the queue is empty, none can be queued until they return:
    the scheduler sees them in a critical function). The ``try`` is their first
    instruction: 3.9 and 3.10 skip the check just before a ``SETUP_FINALLY``, so
    nothing lands at their entry. 3.11 checks once at the entry (RESUME), before
    the ``try``; there only the scheduler's look-to-raise stretch protects (the
    target would have to stop exactly there while the scheduler, between its look
    and its raise, lost the GIL; never seen in our stress tests).
    """
    block = landed.block
    state = block.thread
    assert state is not None
    scheduler = _scheduler
    with scheduler.lock:
        if state.pending is block:
            state.pending = None
        scheduler.retry(state, block)


@_critical
def _remove(blocks: list[Deadline], block: Deadline) -> None:
    for index, other in enumerate(blocks):
        if other is block:
            del blocks[index]
            return


# -- main thread: SIGALRM -------------------------------------------------------------

# _signal, not signal: the wrappers in signal.py convert handlers to enums (microseconds).
_signal: Any = importlib.import_module("_signal")
_setitimer: Any = getattr(_signal, "setitimer", None)
_ITIMER_REAL = getattr(_signal, "ITIMER_REAL", 0)
_SIGALRM = getattr(_signal, "SIGALRM", 0)


@_critical
def _install_alarm(state: _ThreadState) -> bool:
    """Installs our SIGALRM handler; False when signals cannot be used here."""
    if _setitimer is None or not _SIGALRM:
        return False
    previous = _signal.getsignal(_SIGALRM)
    if previous is None:  # installed outside Python: it could not be put back
        return False
    try:
        _signal.signal(_SIGALRM, _on_alarm)
    except ValueError:  # not the main thread of the main interpreter
        return False
    state.saved_handler = previous
    state.signal_mode = True
    return True


@_critical
def _arm_next_alarm(state: _ThreadState) -> None:
    following = state.armed = state.earliest_unfired()
    if following is None:
        _setitimer(_ITIMER_REAL, 0)
    else:
        _setitimer(_ITIMER_REAL, max(following.deadline - monotonic(), _MIN_DELAY))


def _on_alarm(signum: int, frame: Optional[FrameType]) -> None:
    """SIGALRM: raises TimeoutError in the main thread when its armed deadline passed."""
    state: Optional[_ThreadState] = getattr(_local, "state", None)
    armed = state.armed if state is not None and state.signal_mode else None
    if state is None or armed is None:
        return  # a late alarm of a block that has left
    if _in_critical(frame) or (
        _OLD_EVAL_LOOP and frame is not None and _at_an_edge(frame, sys.exc_info()[1])
    ):
        _setitimer(_ITIMER_REAL, _RETRY)
        return
    remaining = armed.deadline - monotonic()
    if remaining > 0:  # the timer ran ahead of the monotonic clock
        _setitimer(_ITIMER_REAL, remaining)
        return
    _install_unraisable_hook()
    armed.state = _FIRED
    _arm_next_alarm(state)
    error = TimeoutError(timeout_message(armed.seconds))
    state.alarm_raised = (error, armed)
    raise error


# -- other threads: one scheduler thread ------------------------------------------------

_ASYNC_EXC = ("PyThreadState_SetAsyncExc", ctypes.pythonapi)
_set_async_exc = ctypes.PYFUNCTYPE(ctypes.c_int, ctypes.c_ulong, ctypes.py_object)(_ASYNC_EXC)
# The same function with a NULL exception: cancels a pending one.
_clear_async_exc = ctypes.PYFUNCTYPE(ctypes.c_int, ctypes.c_ulong, ctypes.c_void_p)(_ASYNC_EXC)


class _Scheduler:
    """One daemon thread that interrupts threads at their armed deadlines.

    The heap holds ``(when, seq, thread state)``, at most one live entry per
    thread (``state.wake_at == when``; others are dropped lazily, and the heap is
    compacted when it doubles past its live size). A thread pushes only when it
    enters a block with a deadline earlier than its entry; leaving a block pushes
    nothing: the scheduler wakes at the old time and looks for whatever the thread
    is inside then. So a thread running many short blocks costs no lock and no
    heap work, and the scheduler wakes about once per ``seconds`` per thread.
    Callers notify the condition only when they need a wake earlier than the one
    it sleeps towards.
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.wakeup = threading.Condition(self.lock)
        self.heap: list[tuple[float, int, _ThreadState]] = []
        self.seq = itertools.count()
        self.next_wake = math.inf
        self.compact_at = 64
        self.thread: Optional[threading.Thread] = None

    @_critical
    def push(self, state: _ThreadState, when: float) -> None:
        """Schedules a look at ``state`` at ``when`` (lock held)."""
        state.wake_at = when
        heap = self.heap
        heapq.heappush(heap, (when, next(self.seq), state))
        if len(heap) > self.compact_at:
            heap[:] = [entry for entry in heap if entry[2].wake_at == entry[0]]
            heapq.heapify(heap)
            self.compact_at = max(64, 2 * len(heap))
        if self.thread is None:
            self.thread = threading.Thread(
                target=self.run, name="shared-timeout-scheduler", daemon=True
            )
            self.thread.start()
        if when < self.next_wake:
            self.next_wake = when
            self.wakeup.notify()

    def run(self) -> None:
        heap = self.heap
        with self.lock:
            while True:
                while heap and heap[0][2].wake_at != heap[0][0]:
                    heapq.heappop(heap)
                if not heap:
                    self.next_wake = math.inf
                    self.wakeup.wait()
                    continue
                when = heap[0][0]
                now = monotonic()
                if when > now:
                    self.next_wake = when
                    self.wakeup.wait(when - now)
                    continue
                state = heapq.heappop(heap)[2]
                state.wake_at = math.inf
                if not self.serve(state, now):
                    # The thread is in our bookkeeping, most likely waiting for this lock:
                    # let it through before looking again.
                    self.wakeup.wait(_RETRY)

    def serve(self, state: _ThreadState, now: float) -> bool:
        """Interrupts the thread if its earliest deadline passed, else schedules a look later.

        False when the thread was inside our bookkeeping and must be looked at again.
        Runs with the lock held and ``state.wake_at`` reset (see ``Deadline.__enter__``).
        """
        if state.signal_mode:
            return True
        armed = state.earliest_unfired()
        if armed is None:
            return True  # the thread's next block schedules itself
        if armed.deadline > now:
            self.push(state, armed.deadline)
            return True
        # Everything but the look and the raise first, so little runs between the two.
        expiry = type("DeadlineExpired", (_ExpiredError,), {"block": armed})
        _install_unraisable_hook()
        # Before the block is checked below: a thread leaving it from now on takes the lock.
        state.firing = armed
        try:
            # A fresh GIL quantum, so no other thread runs between looking at the target
            # thread and raising in it (if it moves anyway, into our bookkeeping, the
            # bookkeeping takes the exception back: see _take_back).
            time.sleep(0)
            frame = sys._current_frames().get(state.ident)
            if frame is None:
                return True  # the thread is gone
            if armed.state != _ACTIVE:  # it left meanwhile: look again at once
                self.push(state, now)
                return True
            if (
                frame.f_code in _CRITICAL_CODES
                or (frame.f_back is not None and frame.f_back.f_code in _CRITICAL_CODES)
                or (_OLD_EVAL_LOOP and _at_an_edge(frame, _handled_in(state.ident)))
            ):
                self.push(state, now + _RETRY)
                return False
            armed.delivered = False
            _set_async_exc(state.ident, expiry)
            armed.state = _FIRED
            state.pending = armed
        finally:
            state.firing = None
        following = state.earliest_unfired()
        if following is not None:
            self.push(state, following.deadline)
        return True

    @_critical
    def retry(self, state: _ThreadState, block: Deadline, delay: float = _RETRY) -> None:
        """Undoes a fire whose exception was cancelled or swallowed; fires again after ``delay``.

        Lock held. A block caught leaving (``_LEAVING``) counts as fired: its exit
        overwrote the scheduler's mark, and starts again from ``_ACTIVE``.
        """
        if block.state == _FIRED or block.state == _LEAVING:
            block.state = _ACTIVE
            self.push(state, monotonic() + delay)


def _handled_in(ident: int) -> Optional[BaseException]:
    """The exception thread ``ident`` is handling; 3.9 cannot say (None)."""
    current_exceptions = getattr(sys, "_current_exceptions", None)
    if current_exceptions is None:
        return None
    handled: object = current_exceptions().get(ident)
    if isinstance(handled, tuple):  # (type, value, traceback) before 3.12
        handled = handled[1]
    return handled if isinstance(handled, BaseException) else None


_scheduler = _Scheduler()


# -- interruptions CPython swallowed: sys.unraisablehook --------------------------------


class _UnraisableHook:
    """``sys.unraisablehook``: fires again a deadline whose exception was swallowed.

    Wraps the hook that was current when it was installed and passes it every
    other unraisable unchanged.
    """

    __slots__ = ("previous",)

    def __init__(self, previous: Callable[[Any], object]) -> None:
        self.previous = previous

    @_critical  # an interruption landing in here would be swallowed too
    def __call__(self, unraisable: Any) -> None:
        if not _refire(unraisable.exc_value, sys._getframe(1)):
            self.previous(unraisable)


def _install_unraisable_hook() -> None:
    """Wraps the current hook unless it is one of ours.

    Called before each fire, so a hook set after ours (a test framework's, say)
    gets wrapped in its turn, and one that put ours back needs nothing.
    """
    current = sys.unraisablehook
    if not isinstance(current, _UnraisableHook):
        # None makes CPython report the default way: the default hook does that.
        sys.unraisablehook = _UnraisableHook(sys.__unraisablehook__ if current is None else current)


@_critical
def _refire(error: Optional[BaseException], frame: Optional[FrameType]) -> bool:
    """Arms again the block whose interruption ``error`` is; False if it is not ours.

    ``frame`` was running when ``error`` was swallowed, in this thread: the thread
    the interruption was meant for.
    """
    state: Optional[_ThreadState] = getattr(_local, "state", None)
    if state is None or error is None:
        return False
    if isinstance(error, _ExpiredError):
        block = error.block
        if block.thread is not state or block.state != _FIRED:
            return False  # the block has left: its own code saw the exception
        if _in_critical(frame):
            # Our bookkeeping runs under this, maybe holding the scheduler's lock; its
            # first step under the lock takes the exception as cancelled and fires again.
            if state.pending is not block:
                return False
            block.delivered = False
            return True
        scheduler = _scheduler
        with scheduler.lock:
            if state.pending is block:
                state.pending = None
            scheduler.retry(state, block, 0.0)
        return True
    raised = state.alarm_raised
    if raised is None or raised[0] is not error:
        return False
    state.alarm_raised = None
    block = raised[1]
    if block.state != _FIRED:
        return False  # the block has left: its own code saw the exception
    block.state = _ACTIVE
    state.armed = state.earliest_unfired()
    _setitimer(_ITIMER_REAL, _RETRY)
    return True


def _reset_after_fork() -> None:
    """The child has only the forking thread: a fresh scheduler serves its blocks."""
    global _scheduler
    _scheduler = _Scheduler()
    state: Optional[_ThreadState] = getattr(_local, "state", None)
    if state is not None and not state.signal_mode:
        state.firing = state.pending = None  # the parent's scheduler thread is not here
        state.wake_at = math.inf
        earliest = state.earliest_unfired()
        if earliest is not None:
            with _scheduler.lock:
                _scheduler.push(state, earliest.deadline)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_after_fork)

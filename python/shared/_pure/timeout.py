"""Pure-Python twin of the timeout's native part (``rust/timeout.rs``).

Same names and semantics: a deadline block's enter and exit, the scheduler's
look-and-raise (``ThreadState.fire``), shields and critical sections. What
Python code cannot do as the native part does, and what remains of it:

- The scheduler's look (is the block active, is the thread outside our
  bookkeeping) and its raise are several bytecodes here, not one step. After
  the look's one call (the snapshot of the threads' frames) they contain no
  call, function entry or backward jump, the only points where CPython hands
  the GIL to another thread; so the target moves in between only if the OS
  preempts the scheduler inside that snapshot for longer than the switch
  interval, with the GIL held.
- ``DeadlineCore.__exit__`` is a Python function: on CPython 3.13 and later an
  exception queued just before it can be delivered at its first instruction,
  before it can take the exception back (3.13 misses it at the check where
  the thread took the GIL back and delivers it at the next one).
  ``landed_at_exit_entry`` then does the block's bookkeeping from the
  exception's ``__init__`` (which 3.12+ runs where it lands), so the block
  leaves and the exception goes on as its deadline; at the first instruction
  of a ``Guard``'s call it runs the guarded function there, so its
  bookkeeping is not skipped. What remains: a raise delayed past the look (the
  first point) that lands further inside this module's code, where the
  private exception can escape. The native part has no such window.
"""

from __future__ import annotations

import ctypes
import dis
import gc
import sys
import threading
import time
from collections.abc import Callable
from types import CodeType, FrameType, MethodType
from typing import Any, TypeVar

__all__ = [
    "FIRE_CRITICAL",
    "FIRE_GONE",
    "FIRE_RAISED",
    "FIRE_SHIELDED",
    "DeadlineCore",
    "Guard",
    "ThreadState",
    "current_thread_state",
    "deadline_clock",
    "set_alarm_handler",
    "set_deadline_clock",
    "set_hooks",
    "shield_enter",
    "shield_exit",
]

_IDLE, _ACTIVE, _FIRED = 0, 1, 2
# Below this switch interval (seconds) the scheduler takes a fresh GIL quantum before
# its look-and-raise: its own work since waking could use up a shorter one.
_SHORT_SWITCH_INTERVAL = 0.001
# CPython 3.11 collects garbage inside the allocation that crosses the threshold, so
# inside sys._current_frames(), which allocates frame objects while it holds the
# runtime's lock on the list of threads. Finalizers would then run under that lock: one
# that starts a thread deadlocks at once, and one that yields the GIL lets a thread that
# starts or ends wait for the lock while it holds the GIL, which stops every thread,
# signal handlers included. The scheduler therefore takes that snapshot with the
# collector off. From 3.12 on, a collection waits for the next bytecode boundary.
_GC_RUNS_INSIDE_CALLS = sys.version_info < (3, 12)
FIRE_RAISED, FIRE_CRITICAL, FIRE_SHIELDED, FIRE_GONE = 0, 1, 2, 3


_monotonic = time.monotonic
# A clock with ``now_ns()`` that every deadline reads instead (``set_deadline_clock``).
_manual_clock: Any = None


def deadline_clock() -> float:
    """The timeline of deadlines (seconds, ``time.monotonic()``, or the manual clock)."""
    clock = _manual_clock
    if clock is None:
        return _monotonic()
    return int(clock.now_ns()) / 1e9


def set_deadline_clock(clock: Any) -> None:
    """Every deadline reads ``clock.now_ns()`` from now on; None restores the monotonic clock.

    For tests that drive this twin and the native core on one manual clock.
    """
    global _manual_clock
    if clock is not None and not hasattr(clock, "now_ns"):
        raise TypeError(
            "clock must have a now_ns() method (for example shared.testing.ManualClock)"
        )
    _manual_clock = clock


_ASYNC_EXC = ("PyThreadState_SetAsyncExc", ctypes.pythonapi)
_set_async_exc = ctypes.PYFUNCTYPE(ctypes.c_int, ctypes.c_ulong, ctypes.py_object)(_ASYNC_EXC)
_clear_async_exc = ctypes.PYFUNCTYPE(ctypes.c_int, ctypes.c_ulong, ctypes.c_void_p)(_ASYNC_EXC)

# Code objects of this module's bookkeeping and of guarded functions: the scheduler
# does not raise while the target's innermost frames run one of them.
CRITICAL_CODES: set[CodeType] = set()


class _Hooks:
    schedule: Callable[[ThreadState, float], None]
    check_alarm_handler: Callable[[], None]
    getsignal: Callable[[int], object]
    sigalrm: int
    timeout_error: type[BaseException]
    expired_base: type[BaseException]
    message: Callable[[float], str]
    validate_seconds: Callable[[object], float]
    max_seconds: float


_hooks: _Hooks | None = None
_alarm_handler: list[object] = []


def set_hooks(
    schedule: Callable[[ThreadState, float], None],
    check_alarm_handler: Callable[[], None],
    getsignal: Callable[[int], object],
    sigalrm: int,
    timeout_error: type[BaseException],
    expired_base: type[BaseException],
    message: Callable[[float], str],
    validate_seconds: Callable[[object], float],
    max_seconds: float,
) -> None:
    """Registers ``_deadlines``' hooks and classes (once; later calls are ignored)."""
    global _hooks
    if _hooks is not None:
        return
    hooks = _Hooks()
    hooks.schedule = schedule
    hooks.check_alarm_handler = check_alarm_handler
    hooks.getsignal = getsignal
    hooks.sigalrm = sigalrm
    hooks.timeout_error = timeout_error
    hooks.expired_base = expired_base
    hooks.message = message
    hooks.validate_seconds = validate_seconds
    hooks.max_seconds = max_seconds
    _hooks = hooks


def set_alarm_handler(handler: object) -> None:
    """Records our SIGALRM handler (compared by identity on each main-thread block)."""
    _alarm_handler[:] = [handler]


_F = TypeVar("_F", bound=Callable[..., Any])


def _critical_code(function: _F) -> _F:
    CRITICAL_CODES.add(function.__code__)
    return function


class ThreadState:
    """A thread's bookkeeping as the scheduler and the SIGALRM handler see it."""

    __slots__ = (
        "blocks",
        "critical",
        "ident",
        "is_main",
        "pending",
        "queued",
        "shield",
        "signal_mode",
        "thread",
        "wake_at",
    )
    ident: int
    is_main: bool
    critical: int
    shield: int
    queued: bool
    signal_mode: bool
    thread: threading.Thread
    blocks: list[DeadlineCore]
    wake_at: float
    pending: DeadlineCore | None

    def __new__(cls) -> ThreadState:
        self = object.__new__(cls)
        self.ident = threading.get_ident()
        self.thread = threading.current_thread()
        self.is_main = self.thread is threading.main_thread()
        self.critical = 0
        self.shield = 0
        self.queued = False
        self.signal_mode = False
        self.blocks = []
        self.wake_at = float("inf")
        self.pending = None
        return self

    @_critical_code
    def earliest_unfired(self, /) -> DeadlineCore | None:
        earliest = None
        for block in self.blocks[:]:  # a copy: the thread changes it meanwhile
            if block.state == _ACTIVE and (earliest is None or block.deadline < earliest.deadline):
                earliest = block
        return earliest

    def fire(self, /, block: DeadlineCore, expiry: type[BaseException]) -> int:
        """Queues ``expiry`` for the thread if ``block`` is active and nothing defers it."""
        if not self.thread.is_alive():
            return FIRE_GONE  # exited inside a block: never raise in whoever has its id now
        # The interpreter hands the GIL to another thread only at a call's return, a
        # function's entry or a backward jump, and only once that thread has waited a
        # whole switch interval. The scheduler took the GIL when it woke, tens of
        # microseconds ago: well within the default interval (5 ms), so the target
        # moves between the look and the raise only if the OS preempts this thread
        # for longer than that inside the snapshot below. Under a sub-millisecond
        # interval, take a fresh quantum first (it costs the target's next quantum
        # of delay, which is that short too).
        if sys.getswitchinterval() < _SHORT_SWITCH_INTERVAL:
            time.sleep(0)
        if _GC_RUNS_INSIDE_CALLS and gc.isenabled():
            # Re-enabled after the raise: gc.enable() is a call, which must not come
            # between the snapshot and the raise.
            gc.disable()
            try:
                return self._look_and_raise(block, expiry)
            finally:
                gc.enable()
        return self._look_and_raise(block, expiry)

    def _look_and_raise(self, block: DeadlineCore, expiry: type[BaseException], /) -> int:
        frames = sys._current_frames()
        # From here to the raise: no call, no function entry, no backward jump
        # (attribute loads, subscripts, comparisons), so the target cannot run
        # between what the look sees and the raise.
        if self.critical > 0:
            return FIRE_CRITICAL
        if self.ident not in frames:
            return FIRE_GONE  # the thread has left Python for good: it is exiting
        frame = frames[self.ident]
        # Paused at the entry of our bookkeeping (before it counts itself critical).
        if frame.f_code in CRITICAL_CODES:
            return FIRE_CRITICAL
        caller = frame.f_back
        if caller is not None and caller.f_code in CRITICAL_CODES:
            return FIRE_CRITICAL
        if self.shield > 0:
            return FIRE_SHIELDED
        if block.thread is not self or block.state != _ACTIVE:
            return FIRE_GONE
        block.delivered = False
        block.state = _FIRED
        self.pending = block
        self.queued = True
        _set_async_exc(self.ident, expiry)
        return FIRE_RAISED

    @property
    def alive(self) -> bool:
        """False once the thread has exited: its identifier may then name another thread."""
        return self.thread.is_alive()

    def mark_fired(self, /, block: DeadlineCore) -> bool:
        """Main thread (SIGALRM handler, which runs in it): marks ``block`` fired."""
        if block.state != _ACTIVE:
            return False
        block.state = _FIRED
        return True

    def unfire(self, /, block: DeadlineCore) -> bool:
        """Puts a fired block whose exception was swallowed back to active."""
        if self.pending is block:
            self.pending = None
            self.queued = False
        if block.state != _FIRED:
            return False
        block.state = _ACTIVE
        return True

    def reset_after_fork(self, /) -> None:
        """Forgets the scheduler's pending exception (after fork: its scheduler is gone)."""
        self.pending = None
        self.queued = False
        self.wake_at = float("inf")

    @_critical_code
    def take_back(self, /) -> DeadlineCore | None:
        """Takes back an exception queued for this (the calling) thread, not delivered."""
        if not self.queued:
            return None
        self.queued = False
        pending, self.pending = self.pending, None
        if pending is None or pending.delivered:
            return None
        _clear_async_exc(self.ident, None)
        return pending

    @_critical_code
    def rearm(self, /, block: DeadlineCore) -> None:
        if block.state == _FIRED:
            block.state = _ACTIVE
            self.schedule(deadline_clock())

    @_critical_code
    def schedule(self, /, when: float) -> None:
        assert _hooks is not None
        self.critical += 1
        try:
            _hooks.schedule(self, when)
        finally:
            self.critical -= 1


_local = threading.local()


def current_thread_state() -> ThreadState:
    """The calling thread's ``ThreadState``."""
    try:
        state: ThreadState = _local.state
    except AttributeError:
        state = _local.state = ThreadState()
    return state


class DeadlineCore:
    """A deadline block: ``with DeadlineCore(seconds):`` (see ``TimeoutContext``)."""

    __slots__ = ("deadline", "delivered", "fired", "seconds", "state", "thread")
    seconds: float
    deadline: float
    state: int
    fired: bool
    delivered: bool
    thread: ThreadState | None

    def __new__(cls, seconds: object, *_args: Any, **_kwargs: Any) -> DeadlineCore:
        assert _hooks is not None
        if type(seconds) is not float or not 0.0 < seconds <= _hooks.max_seconds:
            seconds = _hooks.validate_seconds(seconds)
        self = object.__new__(cls)
        self.seconds = seconds
        self.deadline = 0.0
        self.state = _IDLE
        self.fired = False
        self.delivered = False
        self.thread = None
        return self

    def _set_fired(self, /, fired: bool) -> None:
        """Records the outcome of a block run elsewhere (an ``async with``)."""
        self.fired = fired

    def _mark_delivered(self, /) -> None:
        """Called where the queued exception lands: no longer cancellable from then on."""
        self.delivered = True

    @_critical_code
    def __enter__(self, /) -> DeadlineCore:
        thread = current_thread_state()
        thread.critical += 1
        try:
            if thread.queued:  # it would land in the hooks below
                outer = thread.take_back()
                if outer is not None:
                    thread.rearm(outer)
            if self.state != _IDLE:
                raise RuntimeError("this timeout is already active; use one object per block")
            self.deadline = deadline = deadline_clock() + self.seconds
            self.fired = self.delivered = False
            self.thread = thread
            self.state = _ACTIVE
            thread.blocks.append(self)
            try:
                if thread.is_main:
                    _check_alarm_handler()
                if deadline < thread.wake_at:
                    thread.schedule(deadline)
            except BaseException:
                _remove(thread.blocks, self)
                self.state = _IDLE
                raise
            return self
        finally:
            thread.critical -= 1

    @_critical_code
    def __exit__(self, /, _exc_type: Any, exc: BaseException | None, _traceback: Any) -> bool:
        thread = self.thread
        if thread is None:
            raise RuntimeError("__exit__ without __enter__")
        thread.critical += 1
        try:
            return _exit(self, thread, exc)
        finally:
            thread.critical -= 1


@_critical_code
def _exit(block: DeadlineCore, thread: ThreadState, exc: BaseException | None) -> bool:
    taken_back = thread.take_back() if thread.queued else None
    if block.state == _IDLE:
        raise RuntimeError("__exit__ without __enter__")
    _remove(thread.blocks, block)
    state, block.state = block.state, _IDLE
    if taken_back is not None and taken_back is not block:
        thread.rearm(taken_back)
    assert _hooks is not None
    fired = False
    timeout: BaseException | None = None
    if state == _FIRED:
        fired = True
        if isinstance(exc, _hooks.expired_base) and getattr(type(exc), "block", None) is block:
            exc.__class__ = _hooks.timeout_error
        elif taken_back is block and exc is None:
            timeout = _hooks.timeout_error(_hooks.message(block.seconds))
    elif exc is None and thread.shield == 0 and deadline_clock() >= block.deadline:
        fired = True
        timeout = _hooks.timeout_error(_hooks.message(block.seconds))
    block.fired = fired
    if timeout is not None:
        raise timeout
    return False


@_critical_code
def _remove(blocks: list[DeadlineCore], block: DeadlineCore) -> None:
    for index in range(len(blocks) - 1, -1, -1):
        if blocks[index] is block:
            del blocks[index]
            return


@_critical_code
def _check_alarm_handler() -> None:
    assert _hooks is not None
    current = _hooks.getsignal(_hooks.sigalrm)
    if not _alarm_handler or _alarm_handler[0] is not current:
        _hooks.check_alarm_handler()


@_critical_code
def shield_enter() -> None:
    """Enters a shield: no deadline of the calling thread is delivered until it leaves."""
    thread = current_thread_state()
    thread.shield += 1
    thread.critical += 1
    try:
        block = thread.take_back()
        if block is not None and block.state == _FIRED:
            block.state = _ACTIVE
    finally:
        thread.critical -= 1


@_critical_code
def shield_exit() -> bool:
    """Leaves a shield; True when it was the outermost and a deadline of the thread passed."""
    thread = current_thread_state()
    if thread.shield == 0:
        raise RuntimeError("shield left more often than entered")
    thread.shield -= 1
    if thread.shield or not thread.blocks:
        return False
    now = deadline_clock()
    return any(b.state == _ACTIVE and b.deadline <= now for b in thread.blocks[:])


class Guard:
    """``Guard(function)``: no deadline is delivered while the thread runs ``function``."""

    __slots__ = ("__wrapped__",)
    __wrapped__: Callable[..., Any]

    def __new__(cls, function: Callable[..., Any]) -> Guard:
        if not callable(function):
            raise TypeError("function must be callable")
        self = object.__new__(cls)
        self.__wrapped__ = function
        code = getattr(function, "__code__", None)
        if isinstance(code, CodeType):
            CRITICAL_CODES.add(code)
        return self

    def __call__(self, /, *args: Any, **kwargs: Any) -> Any:
        thread = current_thread_state()
        thread.critical += 1
        try:
            taken_back = thread.take_back()
            try:
                return self.__wrapped__(*args, **kwargs)
            finally:
                if taken_back is not None:
                    thread.rearm(taken_back)
        finally:
            thread.critical -= 1

    def __get__(self, instance: object, owner: object = None, /) -> Any:
        if instance is None:
            return self
        return MethodType(self, instance)


CRITICAL_CODES.add(Guard.__call__.__code__)


def _first_own_instruction(code: CodeType) -> int:
    return next(
        instruction.offset
        for instruction in dis.get_instructions(code)
        if instruction.opname not in ("RESUME", "COPY_FREE_VARS", "MAKE_CELL", "NOP", "CACHE")
    )


_GUARD_CODE = Guard.__call__.__code__
_GUARD_ENTRY = _first_own_instruction(_GUARD_CODE)


_EXIT_CODE = DeadlineCore.__exit__.__code__
# The offset of __exit__'s first instruction that runs code of ours (past RESUME).
_EXIT_ENTRY = _first_own_instruction(_EXIT_CODE)


def landed_at_exit_entry(
    error: BaseException, block: DeadlineCore, frame: FrameType | None
) -> bool:
    """Does the bookkeeping of a ``__exit__`` whose first instruction got ``error``.

    CPython 3.13+ can deliver a queued exception at the first instruction of
    ``DeadlineCore.__exit__`` (see the module docstring); 3.12+ instantiates it
    there, so its ``__init__`` (``frame``: the frame it lands in) calls this.
    The block that was leaving leaves, and ``error`` goes on: as the public
    ``TimeoutError`` if it is that block's own deadline, else as the private
    exception its own block converts.
    """
    if frame is None:
        return False
    if frame.f_code is _GUARD_CODE and frame.f_lasti < _GUARD_ENTRY:
        return _run_guarded_late(error, frame)
    if frame.f_code is not _EXIT_CODE or frame.f_lasti >= _EXIT_ENTRY:
        return False
    leaving = frame.f_locals.get("self")
    if not isinstance(leaving, DeadlineCore) or leaving.state == _IDLE:
        return False
    thread = leaving.thread
    if thread is None:
        return False
    thread.queued = False
    if thread.pending is block:
        thread.pending = None
    _remove(thread.blocks, leaving)
    leaving.state = _IDLE
    leaving.fired = block is leaving
    if block is leaving:
        assert _hooks is not None
        error.__class__ = _hooks.timeout_error
    return True


def _run_guarded_late(error: BaseException, frame: FrameType) -> bool:
    """``error`` landed at the first instruction of a ``Guard`` call: runs the function now.

    Its bookkeeping must not be skipped; the deadline then goes on from the call,
    as if it had fired just after the function returned (its result is lost; an
    exception it raises becomes ``error``'s context).
    """
    local = frame.f_locals
    guard = local.get("self")
    if not isinstance(guard, Guard):
        return False
    thread = current_thread_state()
    thread.critical += 1
    try:
        guard.__wrapped__(*local.get("args", ()), **local.get("kwargs", {}))
    except BaseException as failure:
        error.__context__ = failure
    finally:
        thread.critical -= 1
    return True


def in_critical(frame: FrameType | None) -> bool:
    """Whether ``frame`` or a caller runs a critical code object (the SIGALRM handler's check)."""
    while frame is not None:
        if frame.f_code in CRITICAL_CODES:
            return True
        frame = frame.f_back
    return False

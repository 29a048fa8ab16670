"""Deadlines that interrupt the thread that set them: the machinery of ``TimeoutContext``.

One model for every thread, the main thread included. A thread keeps the
deadline blocks it is inside; its earliest active one is *armed*. One
process-wide scheduler thread keeps a heap of ``(when, thread)`` entries and,
when a thread's armed deadline passes, interrupts that thread:

- A worker thread (and a main thread where signals cannot be used): with
  ``PyThreadState_SetAsyncExc``, an exception of a private class that only its
  block turns into the public ``TimeoutError``. CPython delivers it between
  bytecodes, so a long C call is interrupted when it returns; and if the block
  ends before anything told it, its exit raises the ``TimeoutError`` itself.
- The main thread: the scheduler sends it SIGALRM (``signal.pthread_kill``) and
  our handler raises ``TimeoutError`` there, so a blocking ``time.sleep`` or
  socket read returns at once. The handler is installed by the first block of
  the main thread and stays; the handler that was there before is called for
  every SIGALRM that is not ours, and one installed after ours is found at the
  next block and wrapped the same way. ``setitimer`` and ``signal.alarm`` stay
  the application's: blocks make no system call.

The block's enter and exit and the scheduler's look-and-raise are the
backend's (``rust/timeout.rs``, or its pure twin ``shared._pure.timeout``):
natively each is one step no deadline can land in, and exit first takes back an
exception queued for its own thread. Nothing is ever raised while the thread is
in a critical section (``_critical``), a shield or (main thread) one of the
application's signal handlers; a deadline that passes there fires when it ends.

An interruption can land where CPython cannot let it out (a weakref callback,
a ``__del__``, a ``gc`` callback): CPython hands it to ``sys.unraisablehook``.
Ours knows it (by its private class, or the main thread's by identity), does
not report it, and fires its block again; every other unraisable goes to the
hook that was there before, unchanged.

No error may stop the scheduler: it logs what it did not expect and goes on.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import heapq
import importlib
import itertools
import logging
import math
import os
import sys
import threading
from collections.abc import Callable
from types import FrameType, FunctionType, MethodType
from typing import Any, TypeVar

from shared import _validation
from shared._backend import BACKEND, core
from shared.observability import _events
from shared.resilience.exceptions import TimeoutError

__all__ = ["DeadlineCore", "critical", "shield", "timeout_message"]

_logger = logging.getLogger("shared.resilience.timeout")

if BACKEND == "rust":
    from shared import _pure

    _backend: Any = core
    _pure_twin: Any = importlib.import_module("shared._pure.timeout")
    del _pure
else:
    _backend = importlib.import_module("shared._pure.timeout")
    _pure_twin = _backend

DeadlineCore: Any = _backend.DeadlineCore
deadline_clock: Callable[[], float] = _backend.deadline_clock
current_thread_state: Callable[[], Any] = _backend.current_thread_state

# Seconds before looking again when a deadline passes inside a critical section.
_RETRY = 0.0002
# The longest wait the platform's locks accept: longer deadlines are refused.
MAX_SECONDS = threading.TIMEOUT_MAX

_IDLE, _ACTIVE, _FIRED = 0, 1, 2

_F = TypeVar("_F", bound=Callable[..., Any])


def _validate_seconds(value: object) -> float:
    """``seconds``: a number in (0, ``MAX_SECONDS``]; else ValueError/TypeError naming it."""
    seconds = _validation.positive_finite("seconds", value)
    if seconds > MAX_SECONDS:
        raise ValueError(
            f"seconds must be at most {MAX_SECONDS:g} (the longest wait this platform's "
            f"locks accept), got {value!r}"
        )
    return seconds


def critical(function: _F) -> _F:
    """Marks ``function`` so that no deadline is ever delivered while a thread runs it.

    For bookkeeping that must not be cut in half by a timeout (a circuit
    breaker's admission and release, say). The scheduler and the SIGALRM
    handler do not interrupt a thread inside such a function; an exception
    queued for the thread just before the call is taken back at entry. A
    deadline that passes inside fires soon after the function returns (within
    about 0.2 ms plus the interpreter's switch interval), in the caller.
    Works on functions and methods (the result is a descriptor); keeps
    ``__wrapped__``.

    With the native backend this holds exactly. With the pure-Python backend it
    holds except in one race: on CPython 3.13+ an exception queued just before
    the call can be delivered at the function's first instruction (see
    ``shared._pure.timeout``).
    """
    return _backend.Guard(function)  # type: ignore[no-any-return]


_critical = critical


# Deadlines fired since the process started. Every TimeoutError of ours gets its
# message here as it is raised (by a block's exit, the scheduler's interruption
# where it lands, the SIGALRM handler, a shield's end, a task's deadline, the
# pessimistic strategy), so counting here costs the hot path nothing.
# ``next()`` on itertools.count is one C call: no increment is lost between threads.
_fired_counter = itertools.count()


def timeout_message(seconds: float) -> str:
    """The message of a TimeoutError being raised: it names the seconds allowed.

    Every path that raises a timeout (SIGALRM handler, an exception delivered
    into a worker thread, a block's exit, async, pessimistic) builds its error
    with this message, so this is where a timeout is counted (``timeout_stats``)
    and becomes a span event.
    """
    next(_fired_counter)
    if _events.active:
        _events.timeout(seconds)
    return f"operation timed out after {seconds:g} seconds"


def timeouts_fired() -> int:
    """How many deadlines fired since the process started (read at any time, any thread)."""
    # count(n) is the only public view of the counter that does not advance it.
    return int(repr(_fired_counter)[len("count(") : -1])


class _ExpiredError(TimeoutError):
    """Delivered asynchronously into a thread; its block turns it into ``TimeoutError``.

    ``PyThreadState_SetAsyncExc`` takes a class, not an instance, so each fire
    gets its own subclass (``block`` names it). The block's exit changes the
    instance's class to the public ``TimeoutError``, so the user sees that, with
    the chain it had (the exception it interrupted, if any).
    """

    block: Any

    def __init__(self, *args: object) -> None:
        # Runs where the exception lands: from now on it is no longer cancellable.
        block = self.block
        block._mark_delivered()
        super().__init__(*(args or (timeout_message(block.seconds),)))
        if _backend is _pure_twin:
            _pure_twin.landed_at_exit_entry(self, block, sys._getframe(1))


# -- the scheduler ----------------------------------------------------------------------


class _Scheduler:
    """One daemon thread that interrupts threads at their armed deadlines.

    Threads never take a lock to reach it. A thread hands it a request
    ``(when, thread state)`` with one ``deque.append`` (a single C call, so our
    own interruptions cannot cut it in half) and, only when the scheduler sleeps
    past ``when``, wakes it by releasing ``wakeup``. Everything else is the
    scheduler thread's own, touched by no other thread: the heap of ``(when, seq,
    thread state)`` and ``scheduled``, the time of each thread's live entry (other
    entries are dropped lazily). ``state.wake_at`` is a hint the thread reads to
    skip requests: never earlier than a look that is sure to come. A block
    requests only when its deadline is earlier than that hint; leaving a block
    requests nothing: the scheduler wakes at the old time and looks at what the
    thread is inside then.
    """

    def __init__(self) -> None:
        self.requests: collections.deque[tuple[float, Any]] = collections.deque()
        # The scheduler sleeps on this lock, held while nobody has woken it; a waker
        # releases it (a one-slot semaphore). Not ``SimpleQueue.get(timeout=)``: on
        # CPython 3.11 and 3.12, when a signal handled in Python interrupts that wait
        # and the GIL comes back after the timeout, it waits forever (every deadline
        # of the process would stop firing). ``Lock.acquire(timeout=)`` handles it.
        self.wakeup = threading.Lock()
        self.wakeup.acquire()
        self.heap: list[tuple[float, int, Any]] = []
        self.scheduled: dict[Any, float] = {}
        self.seq = itertools.count()
        # When the scheduler wakes next; -inf while it is awake (it reads the
        # requests before it sleeps again, so nobody needs to wake it).
        self.next_wake = -math.inf
        self.compact_at = 64
        self.thread: threading.Thread | None = None
        self.starting = threading.Lock()  # taken once, by the thread that starts it
        # Main thread: a SIGALRM of ours sent and not yet handled.
        self.alarm_requested = False

    def request(self, state: Any, when: float) -> None:
        """A thread asks for a look at ``state`` at ``when``; takes no lock, never blocks."""
        state.wake_at = when
        self.requests.append((when, state))
        if when < self.next_wake:
            # Ends its sleep (at once if it is not asleep yet). RuntimeError: another
            # thread woke it first, and one wake serves every request.
            with contextlib.suppress(RuntimeError):
                self.wakeup.release()
        if self.thread is None:
            self.start()

    def start(self) -> None:
        if not self.starting.acquire(blocking=False):
            return  # another thread is starting it
        try:
            thread = threading.Thread(target=self.run, name="shared-timeout-scheduler", daemon=True)
            thread.start()
        except BaseException:
            self.starting.release()
            raise
        self.thread = thread

    def push(self, state: Any, when: float) -> None:
        """Schedules a look at ``state`` at ``when`` (scheduler thread only)."""
        scheduled = self.scheduled
        if scheduled.get(state, math.inf) <= when:
            # An earlier look is due: it sees this deadline too.
            state.wake_at = scheduled[state]
            return
        scheduled[state] = when
        state.wake_at = when
        heap = self.heap
        heapq.heappush(heap, (when, next(self.seq), state))
        if len(heap) > self.compact_at:
            heap[:] = [entry for entry in heap if scheduled.get(entry[2]) == entry[0]]
            heapq.heapify(heap)
            self.compact_at = max(64, 2 * len(heap))

    def entries(self) -> list[tuple[float, Any]]:
        """The live entries ``(when, thread state)``, from any thread (a snapshot)."""
        scheduled = dict(self.scheduled)
        return [(when, state) for when, _, state in list(self.heap) if scheduled.get(state) == when]

    def run(self) -> None:
        while True:
            try:
                self.run_until_error()
            except BaseException:
                _log_unexpected()

    def run_until_error(self) -> None:
        heap = self.heap
        scheduled = self.scheduled
        requests = self.requests
        wakeup = self.wakeup
        while True:
            self.next_wake = -math.inf
            while requests:
                when, state = requests.popleft()
                self.push(state, when)
            while heap and scheduled.get(heap[0][2]) != heap[0][0]:
                heapq.heappop(heap)
            now = deadline_clock()
            if heap and heap[0][0] <= now:
                state = heapq.heappop(heap)[2]
                del scheduled[state]
                state.wake_at = math.inf
                self.serve(state, now)
                continue
            wake = heap[0][0] if heap else math.inf
            self.next_wake = wake
            if requests:
                continue  # one came before next_wake was set: nobody woke us for it
            if wake == math.inf:
                wakeup.acquire()
            else:
                wakeup.acquire(timeout=min(wake - now, MAX_SECONDS))

    def serve(self, state: Any, now: float) -> None:
        """Interrupts the thread if its armed deadline passed, else schedules a look later."""
        armed = state.earliest_unfired()
        if armed is None:
            return  # the thread's next block schedules itself
        if armed.deadline > now:
            self.push(state, armed.deadline)
            return
        if state.signal_mode:
            if state.shield:
                return  # the shield's end fires it
            if self.alarm_requested:
                # The handler has not run yet (the main thread is in a long C call):
                # look again later, without a signal storm.
                self.push(state, now + 0.001)
                return
            self.alarm_requested = True
            _install_unraisable_hook()
            _pthread_kill(state.ident, _SIGALRM)
            self.push(state, now + _RETRY)  # in case the handler had to defer
            return
        expiry = type("DeadlineExpired", (_ExpiredError,), {"block": armed})
        _install_unraisable_hook()
        outcome = state.fire(armed, expiry)
        if outcome == _backend.FIRE_CRITICAL:
            self.push(state, now + _RETRY)
        elif outcome == _backend.FIRE_GONE and state.alive:
            self.push(state, now)  # the block left meanwhile: look at what is armed now
        elif outcome == _backend.FIRE_RAISED:
            following = state.earliest_unfired()
            if following is not None:
                self.push(state, following.deadline)
        # FIRE_SHIELDED: the shield's end fires it.


def _log_unexpected() -> None:
    """Logs the scheduler's unexpected error; not even a broken logging setup stops it."""
    with contextlib.suppress(BaseException):
        _logger.exception("timeout scheduler: unexpected error (it goes on)")


_scheduler = _Scheduler()


def _schedule(state: Any, when: float) -> None:
    """Backend hook: the scheduler looks at ``state`` at ``when`` (critical section)."""
    if when < state.wake_at:
        if type(state) is not _PureThreadState:
            try:
                # One object per thread: the scheduler keys its entries by identity,
                # and the native core hands a new handle to the same thread each call.
                state = _own.state
            except AttributeError:
                _own.state = state
        _scheduler.request(state, when)


_PureThreadState: type = _pure_twin.ThreadState


# The calling thread's first native ThreadState handle (``_schedule`` runs in the thread).
_own = threading.local()


# -- main thread: SIGALRM -------------------------------------------------------------

# _signal, not signal: the wrappers in signal.py convert handlers to enums.
_signal: Any = importlib.import_module("_signal")
_SIGALRM: int = getattr(_signal, "SIGALRM", 0)
_pthread_kill: Any = getattr(_signal, "pthread_kill", None)
_SIG_DFL = getattr(_signal, "SIG_DFL", 0)
_SIG_IGN = getattr(_signal, "SIG_IGN", 1)
# The TimeoutError the SIGALRM handler raised last, and its block: the unraisable hook
# knows it by identity.
_alarm_raised: tuple[BaseException, Any] | None = None


class _AlarmHandler:
    """Our SIGALRM handler; ``previous`` gets every SIGALRM that is not ours.

    ``signal.getsignal(signal.SIGALRM)`` returns this object once a block ran in
    the main thread.
    """

    __slots__ = ("previous",)

    def __init__(self, previous: Any) -> None:
        self.previous = previous

    def __call__(self, signum: int, frame: FrameType | None) -> Any:
        scheduler = _scheduler
        if not scheduler.alarm_requested:
            return self.chain(signum, frame)
        scheduler.alarm_requested = False
        return _on_alarm(frame)

    def chain(self, signum: int, frame: FrameType | None) -> Any:
        previous = self.previous
        if previous == _SIG_IGN or previous is None:
            return None
        if previous == _SIG_DFL:
            # What SIGALRM would have done without us: terminate the process.
            _signal.signal(signum, _SIG_DFL)
            _signal.raise_signal(signum)
            return None
        return previous(signum, frame)

    def __repr__(self) -> str:
        return f"<shared.resilience timeout SIGALRM handler, chaining {self.previous!r}>"


def _on_alarm(frame: FrameType | None) -> None:
    """Our SIGALRM: raises TimeoutError in the main thread if its armed deadline passed."""
    global _alarm_raised
    state = current_thread_state()
    if state.critical or state.shield or _pure_twin.in_critical(frame):
        return  # the scheduler looks again shortly (a shield's end fires it)
    armed = state.earliest_unfired()
    if armed is None or armed.deadline > deadline_clock():
        return  # a late alarm of a block that has left
    if _in_signal_handler(frame):
        return  # fires in the code the handler interrupted, once it returns
    if not state.mark_fired(armed):
        return
    error = TimeoutError(timeout_message(armed.seconds))
    _alarm_raised = (error, armed)
    raise error


_VALID_SIGNALS: tuple[int, ...] = tuple(getattr(_signal, "valid_signals", tuple)())


def _in_signal_handler(frame: FrameType | None) -> bool:
    """Whether ``frame`` or a caller runs one of the application's Python signal handlers.

    CPython runs a handler between two bytecodes of the main thread, and ours can
    run at any instruction of another (several signals pending at once run in
    the order of their numbers). Raising there would cut the handler short, or
    skip it whole at its first instruction: a SIGTERM that was to start a
    graceful shutdown would be lost. Runs only when a main-thread deadline fires.
    """
    codes = set()
    for signum in _VALID_SIGNALS:
        code = _handler_code(_signal.getsignal(signum))
        if code is not None:
            codes.add(code)
    while frame is not None:
        if frame.f_code in codes:
            return True
        frame = frame.f_back
    return False


def _handler_code(handler: Any) -> Any:
    """The code object a signal handler runs: None for C handlers and SIG_DFL/SIG_IGN."""
    while True:
        if isinstance(handler, _AlarmHandler):
            handler = handler.previous  # ours runs the application's SIGALRM handler
        elif isinstance(handler, functools.partial):
            handler = handler.func
        elif isinstance(handler, MethodType):
            handler = handler.__func__
        else:
            break
    if isinstance(handler, FunctionType):
        return handler.__code__
    if not callable(handler):
        return None
    call = type(handler).__call__  # an instance with a Python __call__
    return call.__code__ if isinstance(call, FunctionType) else None


def _check_alarm_handler() -> None:
    """Backend hook (main thread, critical section): installs or re-wraps our handler.

    Runs on the first block of the main thread, and on a later block when
    another handler replaced ours. Where signals cannot be used (no SIGALRM or
    ``pthread_kill``, another interpreter, a handler installed outside Python),
    the main thread is served like a worker thread.
    """
    state = current_thread_state()
    current = _signal.getsignal(_SIGALRM) if _SIGALRM else None
    if not _SIGALRM or _pthread_kill is None or current is None:
        _record_alarm_handler(current)  # checked again only if it changes
        state.signal_mode = False
        return
    if isinstance(current, _AlarmHandler):
        # Ours already (installed by the other backend's blocks, when the pure twin
        # is used next to the native core): wrapping it again would chain it to itself.
        _record_alarm_handler(current)
        state.signal_mode = True
        return
    handler = _AlarmHandler(current)
    try:
        _signal.signal(_SIGALRM, handler)
    except ValueError:  # not the main thread of the main interpreter
        _record_alarm_handler(current)
        state.signal_mode = False
        return
    _record_alarm_handler(handler)
    state.signal_mode = True


def _record_alarm_handler(handler: Any) -> None:
    """Both backends compare the handler with this one on each main-thread block."""
    _backend.set_alarm_handler(handler)
    if _pure_twin is not _backend:
        _pure_twin.set_alarm_handler(handler)


_backend.set_hooks(
    _schedule,
    _check_alarm_handler,
    _signal.getsignal,
    _SIGALRM,
    TimeoutError,
    _ExpiredError,
    timeout_message,
    _validate_seconds,
    MAX_SECONDS,
)
if _backend is not _pure_twin:
    # The pure twin may be used directly (tests, or a pure breaker with the native
    # timeout): it gets the same hooks.
    _pure_twin.set_hooks(
        _schedule,
        _check_alarm_handler,
        _signal.getsignal,
        _SIGALRM,
        TimeoutError,
        _ExpiredError,
        timeout_message,
        _validate_seconds,
        MAX_SECONDS,
    )


# -- shields --------------------------------------------------------------------------


class shield:  # noqa: N801 - named as trio's and anyio's users expect
    """Defers every deadline of this thread (``with``) or task (``async with``).

    A deadline that passes inside the section fires when it ends, at once:
    the ``with`` statement raises ``TimeoutError`` as it leaves (when the
    section itself raised, that exception goes on and the deadline fires at
    the next opportunity). Shields nest; only the outermost end fires. For
    work that must not be cut in half, such as a payment between "sent" and
    "recorded". A shield does not stop a cancellation from outside the task.
    """

    __slots__ = ("_task_shield",)

    def __init__(self) -> None:
        self._task_shield: Any | None = None

    def __enter__(self) -> shield:
        _backend.shield_enter()
        return self

    def __exit__(self, exc_type: Any, exc: BaseException | None, traceback: Any) -> None:
        if _backend.shield_exit():
            _after_shield(exc)

    async def __aenter__(self) -> shield:
        from shared.resilience import timeout

        self._task_shield = timeout._enter_task_shield()
        return self

    async def __aexit__(self, exc_type: Any, exc: BaseException | None, traceback: Any) -> None:
        from shared.resilience import timeout

        task_shield, self._task_shield = self._task_shield, None
        await timeout._exit_task_shield(task_shield, exc)


@critical
def _after_shield(exc: BaseException | None) -> None:
    """The outermost shield of this thread ended: a deadline that passed fires now."""
    state = current_thread_state()
    armed = state.earliest_unfired()
    if armed is None:
        return
    now = deadline_clock()
    if armed.deadline > now:
        return
    if exc is None and state.mark_fired(armed):
        if state.signal_mode:
            global _alarm_raised
            error = TimeoutError(timeout_message(armed.seconds))
            _alarm_raised = (error, armed)
            raise error
        raise TimeoutError(timeout_message(armed.seconds))
    _schedule(state, now)


# -- interruptions CPython swallowed: sys.unraisablehook --------------------------------


class _UnraisableHook:
    """``sys.unraisablehook``: fires again a deadline whose exception was swallowed."""

    __slots__ = ("previous",)

    def __init__(self, previous: Callable[[Any], object]) -> None:
        self.previous = previous

    def __call__(self, unraisable: Any) -> None:
        if not _refire(unraisable.exc_value):
            self.previous(unraisable)


def _install_unraisable_hook() -> None:
    """Wraps the current hook unless it is one of ours (called before each fire)."""
    current = sys.unraisablehook
    if not isinstance(current, _UnraisableHook):
        sys.unraisablehook = _UnraisableHook(sys.__unraisablehook__ if current is None else current)


@critical
def _refire(error: BaseException | None) -> bool:
    """Arms again the block whose interruption ``error`` is; False if it is not ours."""
    global _alarm_raised
    if error is None:
        return False
    state = current_thread_state()
    if isinstance(error, _ExpiredError):
        block = error.block
        if block.state == _FIRED and state.unfire(block):
            _schedule(state, deadline_clock())
            return True
        return False
    raised = _alarm_raised
    if raised is None or raised[0] is not error:
        return False
    _alarm_raised = None
    if not state.unfire(raised[1]):
        return False  # the block has left: its own code saw the exception
    _schedule(state, deadline_clock() + _RETRY)
    return True


def _reset_after_fork() -> None:
    """The child has only the forking thread: a fresh scheduler serves its blocks."""
    global _scheduler
    _scheduler = _Scheduler()
    state = current_thread_state()
    state.reset_after_fork()
    earliest = state.earliest_unfired()
    if earliest is not None:
        _schedule(state, earliest.deadline)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_after_fork)

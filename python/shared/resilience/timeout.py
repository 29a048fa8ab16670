"""Timeout protection (the document's "Timeout Protection" section).

``@with_timeout(seconds)`` bounds a function or a coroutine function;
``TimeoutContext(seconds=...)`` bounds a block, with ``with`` or ``async with``.
Both raise ``shared.resilience.TimeoutError`` (a subclass of the builtin) when
the deadline passes, and stay out of the way when it does not. ``shield()``
defers deadlines over a section that must not be cut in half.

- Sync code, in any thread: the thread is interrupted at its deadline (see
  ``_deadlines``). Blocks nest: the earliest deadline fires first, and an
  outer deadline still fires after an inner block has left.
- Async code: the task is cancelled at the deadline and the block raises our
  ``TimeoutError``; cancellation from outside still propagates as
  ``CancelledError``.
- ``with_timeout(seconds, strategy="pessimistic")``: the call runs on a pool
  thread and the caller gets ``TimeoutError`` on time even while the call
  blocks in C; the abandoned call runs on, and its late outcome is logged and
  counted (``abandoned_calls()``).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import functools
import inspect
import logging
import threading
import weakref
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Any, TypeVar, cast

from shared.resilience._deadlines import (
    DeadlineCore,
    _validate_seconds,
    shield,
    timeout_message,
    timeouts_fired,
)
from shared.resilience.exceptions import TimeoutError

__all__ = ["TimeoutContext", "abandoned_calls", "shield", "timeout_stats", "with_timeout"]

_F = TypeVar("_F", bound=Callable[..., Any])
_logger = logging.getLogger("shared.resilience.timeout")

STRATEGIES = ("cooperative", "pessimistic")


class TimeoutContext(DeadlineCore):  # type: ignore[misc]
    """A block that must finish within ``seconds``, as ``with`` or ``async with``.

    Args:
        seconds: the time allowed, a number > 0 and at most
            ``threading.TIMEOUT_MAX`` (about 292 years on Linux); else
            ``ValueError`` or ``TypeError`` naming ``seconds``.

    Raises ``TimeoutError`` from the ``with`` statement when the deadline passes
    inside the block. A sync block is interrupted between two Python bytecodes
    (on the main thread, a blocking ``time.sleep`` or socket read returns at
    once); in a worker thread a long C call is interrupted when it returns to
    Python, and a block that ends after its deadline before anything told it
    raises ``TimeoutError`` as it leaves. ``expired`` says whether the last
    block timed out. An object serves one block at a time; use one per block.
    It can be copied and pickled (as its ``seconds``).
    """

    __slots__ = ("_task_deadline",)
    _task_deadline: _TaskDeadline | None

    @property
    def expired(self) -> bool:
        """Whether the deadline fired in the last block (in a running ``async with``: so far)."""
        task_deadline = getattr(self, "_task_deadline", None)
        if task_deadline is not None:
            return bool(task_deadline.expired)
        return bool(self.fired)

    def __repr__(self) -> str:
        return f"TimeoutContext(seconds={self.seconds!r})"

    def __reduce__(self) -> tuple[Any, tuple[float]]:
        return (type(self), (self.seconds,))

    def __copy__(self) -> TimeoutContext:
        return type(self)(self.seconds)

    def __deepcopy__(self, memo: Any) -> TimeoutContext:
        return type(self)(self.seconds)

    async def __aenter__(self) -> TimeoutContext:
        if getattr(self, "_task_deadline", None) is not None:
            raise RuntimeError("this timeout is already active; use one object per block")
        task_deadline = _TaskDeadline(self.seconds)
        task_deadline.enter()
        self._task_deadline = task_deadline
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        task_deadline = self._task_deadline
        assert task_deadline is not None
        self._task_deadline = None
        try:
            task_deadline.exit(exc_type, exc)
        finally:
            self._set_fired(task_deadline.expired)


# -- async: deadlines of tasks, and their shields ----------------------------------------

# Per task: how many shields it is inside, and its active deadlines.
_task_shields: weakref.WeakKeyDictionary[asyncio.Task[Any], int] = weakref.WeakKeyDictionary()
_task_deadlines: weakref.WeakKeyDictionary[asyncio.Task[Any], list[_TaskDeadline]] = (
    weakref.WeakKeyDictionary()
)


class _TaskDeadline:
    """Cancels its task at the deadline (deferred while the task is in a shield).

    Counts cancellations as ``asyncio.timeout`` does: a cancel from outside that
    arrives with ours still propagates as ``CancelledError``.
    """

    __slots__ = (
        "active",
        "cancelling",
        "deadline",
        "deferred",
        "expired",
        "handle",
        "seconds",
        "task",
    )

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.expired = False
        self.deferred = False
        self.active = False
        self.handle: asyncio.TimerHandle | None = None
        self.task: asyncio.Task[Any] | None = None
        self.cancelling = 0
        self.deadline = 0.0

    def enter(self) -> None:
        task = asyncio.current_task()
        if task is None:
            raise RuntimeError("TimeoutContext must be used inside a task")
        loop = asyncio.get_running_loop()
        self.task = task
        self.cancelling = cast(Any, task).cancelling()
        self.deadline = loop.time() + self.seconds
        self.handle = loop.call_at(self.deadline, self.on_deadline)
        _task_deadlines.setdefault(task, []).append(self)
        self.active = True

    def on_deadline(self) -> None:
        assert self.task is not None
        if _task_shields.get(self.task, 0) > 0:
            self.deferred = True  # the shield's end fires it
            return
        self.fire()

    def fire(self) -> None:
        assert self.task is not None
        if self.active and not self.expired:
            self.expired = True
            self.task.cancel()

    def exit(self, exc_type: type[BaseException] | None, exc: BaseException | None) -> None:
        assert self.task is not None
        assert self.handle is not None
        self.handle.cancel()
        self.active = False
        deadlines = _task_deadlines.get(self.task)
        if deadlines is not None and self in deadlines:
            deadlines.remove(self)
        if (
            self.expired
            and cast(Any, self.task).uncancel() <= self.cancelling
            and exc_type is not None
            and issubclass(exc_type, asyncio.CancelledError)
        ):
            raise TimeoutError(timeout_message(self.seconds)) from exc


def _enter_task_shield() -> asyncio.Task[Any] | None:
    task = asyncio.current_task()
    if task is not None:
        _task_shields[task] = _task_shields.get(task, 0) + 1
    return task


async def _exit_task_shield(task: asyncio.Task[Any] | None, exc: BaseException | None) -> None:
    if task is None:
        return
    depth = _task_shields.get(task, 1) - 1
    if depth > 0:
        _task_shields[task] = depth
        return
    _task_shields.pop(task, None)
    now = asyncio.get_running_loop().time()
    due = [d for d in _task_deadlines.get(task, ()) if d.deferred and d.deadline <= now]
    for task_deadline in due:
        task_deadline.fire()
    if due and exc is None:
        await asyncio.sleep(0)  # the cancellation lands here: at once, after the section


# -- the decorator ------------------------------------------------------------------------


def _is_coroutine_callable(function: Any) -> bool:
    if inspect.iscoroutinefunction(function):
        return True
    if inspect.isfunction(function) or inspect.ismethod(function):
        return False
    # The class's __call__ (looked up as the call itself does: on the type).
    for klass in type(function).__mro__:
        if "__call__" in vars(klass):
            return inspect.iscoroutinefunction(vars(klass)["__call__"])
    return False


def with_timeout(seconds: float, *, strategy: str = "cooperative") -> Callable[[_F], _F]:
    """Decorator: each call of the function must finish within ``seconds``.

    Works on functions, methods, callable objects and coroutine functions
    (``async def``, or an object with ``async def __call__``: bounded by the
    event loop); keeps the name, docstring and signature. ``seconds`` and
    ``strategy`` are validated here, at decoration time.

    ``strategy``:

    - ``"cooperative"`` (default): the call runs in the caller's thread and is
      interrupted there (a long C call in a worker thread when it returns).
    - ``"pessimistic"`` (sync functions only): the call runs on a pool thread
      with the caller's ``contextvars``; the caller gets ``TimeoutError`` on
      time even while the call blocks in C. The call is abandoned, not
      stopped: it runs on, its side effects happen, and its late result or
      error is logged and counted (``abandoned_calls()``), never returned. Use
      it only for calls that are safe to repeat or idempotent.
    """
    seconds = _validate_seconds(seconds)
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {', '.join(STRATEGIES)}, got {strategy!r}")

    def decorate(function: _F) -> _F:
        if not callable(function):
            raise TypeError(f"with_timeout decorates a callable, got {type(function).__name__}")
        if inspect.isgeneratorfunction(function) or inspect.isasyncgenfunction(function):
            raise TypeError(
                "with_timeout cannot bound a generator function; use TimeoutContext inside it"
            )
        if _is_coroutine_callable(function):
            if strategy == "pessimistic":
                raise ValueError(
                    "strategy='pessimistic' is for sync functions; a coroutine is "
                    "cancelled at its deadline"
                )
            coroutine_function = cast(Callable[..., Awaitable[Any]], function)

            @functools.wraps(function)
            async def call_async(*args: Any, **kwargs: Any) -> Any:
                async with TimeoutContext(seconds):
                    return await coroutine_function(*args, **kwargs)

            return cast(_F, call_async)

        if strategy == "pessimistic":

            @functools.wraps(function)
            def call_pessimistic(*args: Any, **kwargs: Any) -> Any:
                return _run_pessimistic(function, seconds, args, kwargs)

            return cast(_F, call_pessimistic)

        @functools.wraps(function)
        def call(*args: Any, **kwargs: Any) -> Any:
            with DeadlineCore(seconds):
                return function(*args, **kwargs)

        return cast(_F, call)

    return decorate


# -- the pessimistic strategy ----------------------------------------------------------

_POOL_SIZE = 32
_pool: concurrent.futures.ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()
_abandoned = {"abandoned": 0, "late_results": 0, "late_errors": 0, "still_running": 0}
_abandoned_lock = threading.Lock()


def abandoned_calls() -> dict[str, int]:
    """Counts of the pessimistic strategy's abandoned calls, since the process started.

    ``abandoned``: calls whose caller got ``TimeoutError``; ``late_results`` and
    ``late_errors``: how those that finished since ended; ``still_running``.
    """
    with _abandoned_lock:
        return dict(_abandoned)


def timeout_stats() -> dict[str, int]:
    """Counters for a metrics collector to read at scrape time (monotonic, since start).

    ``fired``: deadlines that fired (each ``TimeoutError`` a block, a decorated
    call or a task got; a deadline whose exception CPython swallowed in cleanup
    code and which fired again counts twice). ``abandoned``: calls of the
    pessimistic strategy given up on (see ``abandoned_calls()``). Reading
    costs nothing on any block's path; no block pays more than it did.
    """
    with _abandoned_lock:
        abandoned = _abandoned["abandoned"]
    return {"fired": timeouts_fired(), "abandoned": abandoned}


def _executor() -> concurrent.futures.ThreadPoolExecutor:
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = concurrent.futures.ThreadPoolExecutor(
                max_workers=_POOL_SIZE, thread_name_prefix="shared-timeout-pessimistic"
            )
        return _pool


def _run_pessimistic(function: Callable[..., Any], seconds: float, args: Any, kwargs: Any) -> Any:
    context = contextvars.copy_context()
    future = _executor().submit(context.run, function, *args, **kwargs)
    try:
        return future.result(timeout=seconds)
    except concurrent.futures.TimeoutError:
        pass
    if future.done():  # finished just as the wait gave up: its outcome stands
        return future.result()
    with _abandoned_lock:
        _abandoned["abandoned"] += 1
        _abandoned["still_running"] += 1
    name = getattr(function, "__qualname__", repr(function))
    future.add_done_callback(functools.partial(_late_outcome, name, seconds))
    raise TimeoutError(timeout_message(seconds))


def _late_outcome(name: str, seconds: float, future: concurrent.futures.Future[Any]) -> None:
    error = future.exception()
    with _abandoned_lock:
        _abandoned["still_running"] -= 1
        _abandoned["late_errors" if error is not None else "late_results"] += 1
    if error is not None:
        _logger.warning(
            "call %s abandoned after %gs timeout failed later: %r", name, seconds, error
        )
    else:
        _logger.warning("call %s abandoned after %gs timeout finished later", name, seconds)

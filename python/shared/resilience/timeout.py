"""Timeout protection (the document's "Timeout Protection" section).

``@with_timeout(seconds)`` bounds a function or a coroutine function;
``TimeoutContext(seconds=...)`` bounds a block, with ``with`` or ``async with``.
Both raise ``shared.resilience.TimeoutError`` (a subclass of the builtin) when
the deadline passes, and stay out of the way when it does not.

- Sync code, in any thread: the thread is interrupted at its deadline
  (SIGALRM on the main thread, a single scheduler thread elsewhere; see
  ``_deadlines``). Blocks nest: the earliest deadline fires first, and an
  outer deadline still fires after an inner block has left.
- Async code: the event loop's timeout (``asyncio.timeout`` on 3.11+),
  raising our ``TimeoutError``; cancellation from outside still propagates
  as ``CancelledError``.
"""

from __future__ import annotations

import asyncio
import builtins
import functools
import inspect
import math
import sys
from collections.abc import Awaitable
from types import TracebackType
from typing import Any, Callable, Optional, TypeVar, cast

from shared import _validation
from shared.resilience._deadlines import _IDLE, Deadline, timeout_message
from shared.resilience.exceptions import TimeoutError

__all__ = ["TimeoutContext", "with_timeout"]

_F = TypeVar("_F", bound=Callable[..., Any])


class TimeoutContext(Deadline):
    """A block that must finish within ``seconds``, as ``with`` or ``async with``.

    Args:
        seconds: the time allowed, a finite number > 0 (else ``ValueError`` or
            ``TypeError`` naming ``seconds``).

    Raises ``TimeoutError`` from the ``with`` statement when the deadline passes
    inside the block. A sync block is interrupted between two Python bytecodes
    (on the main thread, SIGALRM also cuts short a blocking ``time.sleep`` or
    socket read); in a worker thread a long C call is interrupted when it
    returns to Python. ``expired`` says whether the last block timed out. An
    object serves one block at a time; use one per block.
    """

    __slots__ = ("_loop_timeout",)

    def __init__(self, seconds: float) -> None:
        if type(seconds) is not float or not 0.0 < seconds < math.inf:  # fast path: a good float
            seconds = _validation.positive_finite("seconds", seconds)
        # Deadline.__init__'s fields set here: one Python call per block, not two.
        self.seconds = seconds
        self.state = _IDLE
        self.fired = False
        self._loop_timeout: Optional[Any] = None

    @property
    def expired(self) -> bool:
        """Whether the deadline fired in the last block (in a running ``async with``: so far)."""
        if self._loop_timeout is not None:
            return bool(self._loop_timeout.expired())
        return self.fired

    def __repr__(self) -> str:
        return f"TimeoutContext(seconds={self.seconds!r})"

    async def __aenter__(self) -> TimeoutContext:
        if self._loop_timeout is not None:
            raise RuntimeError("this timeout is already active; use one object per block")
        loop_timeout = _loop_timeout(self.seconds)
        await loop_timeout.__aenter__()
        self._loop_timeout = loop_timeout
        self.fired = False
        return self

    async def __aexit__(
        self,
        exc_type: Optional[type[BaseException]],
        exc: Optional[BaseException],
        traceback: Optional[TracebackType],
    ) -> None:
        loop_timeout, self._loop_timeout = self._loop_timeout, None
        assert loop_timeout is not None
        self.fired = bool(loop_timeout.expired())
        try:
            await loop_timeout.__aexit__(exc_type, exc, traceback)
        except builtins.TimeoutError as timeout:
            if timeout is exc or not self.fired:
                raise
            raise TimeoutError(timeout_message(self.seconds)) from timeout.__cause__


def with_timeout(seconds: float) -> Callable[[_F], _F]:
    """Decorator: each call of the function must finish within ``seconds``.

    Works on functions, methods and coroutine functions (``async def``, bounded
    by the event loop); keeps the name, docstring and signature. ``seconds`` is
    validated here, at decoration time.
    """
    seconds = _validation.positive_finite("seconds", seconds)

    def decorate(function: _F) -> _F:
        if inspect.isgeneratorfunction(function) or inspect.isasyncgenfunction(function):
            raise TypeError(
                "with_timeout cannot bound a generator function; use TimeoutContext inside it"
            )
        if inspect.iscoroutinefunction(function):
            coroutine_function = cast(Callable[..., Awaitable[Any]], function)

            @functools.wraps(function)
            async def call_async(*args: Any, **kwargs: Any) -> Any:
                async with TimeoutContext(seconds):
                    return await coroutine_function(*args, **kwargs)

            return cast(_F, call_async)

        @functools.wraps(function)
        def call(*args: Any, **kwargs: Any) -> Any:
            with Deadline(seconds):
                return function(*args, **kwargs)

        return cast(_F, call)

    return decorate


if sys.version_info >= (3, 11):

    def _loop_timeout(seconds: float) -> Any:
        return asyncio.timeout(seconds)

else:

    class _LoopTimeout:
        """``asyncio.timeout`` for 3.9 and 3.10: cancels the task at the deadline.

        These versions cannot count cancellations (no ``Task.uncancel``), so a
        cancel from outside that lands after the deadline fired is reported as
        the timeout.
        """

        def __init__(self, seconds: float) -> None:
            self._seconds = seconds
            self._expired = False
            self._task: Optional[asyncio.Task[Any]] = None
            self._handle: Optional[asyncio.TimerHandle] = None

        def expired(self) -> bool:
            return self._expired

        async def __aenter__(self) -> None:
            task = asyncio.current_task()
            if task is None:
                raise RuntimeError("TimeoutContext must be used inside a task")
            self._task = task
            self._handle = asyncio.get_running_loop().call_later(self._seconds, self._expire)

        def _expire(self) -> None:
            assert self._task is not None
            self._expired = True
            self._task.cancel()

        async def __aexit__(
            self,
            exc_type: Optional[type[BaseException]],
            exc: Optional[BaseException],
            traceback: Optional[TracebackType],
        ) -> None:
            assert self._handle is not None
            self._handle.cancel()
            if self._expired and exc_type is asyncio.CancelledError:
                # A task factory may give tasks a backported cancel counter
                # (pytest-asyncio's runner on 3.9 does): take ours back off it.
                uncancel = getattr(self._task, "uncancel", None)
                if uncancel is not None:
                    uncancel()
                raise builtins.TimeoutError from exc

    def _loop_timeout(seconds: float) -> Any:
        return _LoopTimeout(seconds)

"""Graceful shutdown: SIGTERM/SIGINT start an ordered, bounded shutdown.

The sequence, once a signal arrives (or ``trigger()`` is called):

1. readiness answers 503 at once (``shutdown_in_progress()`` is True; a
   ``HealthServer`` reads it), liveness keeps answering 200;
2. ``drain_delay`` seconds pass while the service keeps serving, so that load
   balancers and Kubernetes endpoints stop sending new traffic;
3. open ``critical()`` sections are waited for (money movements between
   "sent" and "recorded");
4. the ``@on_shutdown`` handlers run one after the other in registration
   order, sync ones in a worker thread and async ones on the loop, each
   bounded by its own timeout; steps 3 and 4 together are bounded by
   ``timeout``;
5. the shutdown hooks (telemetry flush) run, each bounded by ``flush_timeout``;
6. the process exits: 0 after a clean run, 1 when a handler raised, timed out
   or was skipped for lack of time. A second signal exits at once with
   128 + the signal's number.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import inspect
import logging
import os
import signal
import sys
import threading
import time
import types
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Final, TypeVar

from shared import _validation

__all__ = [
    "GracefulShutdown",
    "ShutdownConfig",
    "add_shutdown_hook",
    "remove_shutdown_hook",
    "shutdown_hooks",
    "shutdown_in_progress",
]

logger = logging.getLogger("shared.lifecycle")

F = TypeVar("F", bound=Callable[..., Any])

#: Seconds between checks for a signal whose handler is pending (a signal taken by
#: another thread wakes nothing in the main thread, which runs the handlers).
_SIGNAL_POLL: Final = 0.05

#: Exit code after a clean run, and after a failed or timed-out one.
EXIT_OK: Final = 0
EXIT_FAILED: Final = 1

_UNHANDLEABLE = frozenset(
    s for s in (getattr(signal, "SIGKILL", None), getattr(signal, "SIGSTOP", None)) if s
)

# -- process-wide state ------------------------------------------------------------------------

_shutdown_started = threading.Event()


def shutdown_in_progress() -> bool:
    """True once any ``GracefulShutdown`` of this process has begun shutting down."""
    return _shutdown_started.is_set()


_hooks_lock = threading.Lock()
_hooks: dict[str, Callable[[], Any]] = {}
_last_hooks: dict[str, Callable[[], Any]] = {}


def add_shutdown_hook(name: str, hook: Callable[[], Any], *, last: bool = False) -> None:
    """Registers a process-wide hook run at the end of every graceful shutdown.

    For telemetry that must be flushed last (``shared.observability``'s
    tracing registers its span flush here). ``hook`` is a sync or async
    callable with no arguments, bounded by ``ShutdownConfig.flush_timeout``;
    its failure is logged and does not change the exit code. A hook of the
    same name replaces the previous one. Hooks run in registration order, then
    the built-in OpenTelemetry flush, then the ``last=True`` hooks (the health
    servers stop listening there, so liveness answers until the end).
    """
    if not isinstance(name, str) or not name:
        raise TypeError(f"name must be a non-empty str, got {name!r}")
    if not callable(hook):
        raise TypeError(f"hook must be callable, got {type(hook).__name__}")
    if not isinstance(last, bool):
        raise TypeError(f"last must be a bool, got {type(last).__name__}")
    with _hooks_lock:
        _hooks.pop(name, None)
        _last_hooks.pop(name, None)
        (_last_hooks if last else _hooks)[name] = hook


def remove_shutdown_hook(name: str) -> None:
    """Removes a shutdown hook (no error if there is none of that name)."""
    with _hooks_lock:
        _hooks.pop(name, None)
        _last_hooks.pop(name, None)


def shutdown_hooks() -> dict[str, Callable[[], Any]]:
    """The registered hooks, by name, in the order they run."""
    with _hooks_lock:
        hooks = dict(_hooks)
        last = dict(_last_hooks)
    hooks.setdefault("opentelemetry", _flush_opentelemetry)
    hooks.update(last)
    return hooks


def _flush_opentelemetry() -> None:
    """Flushes OpenTelemetry's global tracer and meter providers, if an SDK set one up."""
    trace = sys.modules.get("opentelemetry.trace")
    if trace is not None:
        flush = getattr(trace.get_tracer_provider(), "force_flush", None)
        if flush is not None:
            flush()
    metrics = sys.modules.get("opentelemetry.metrics")
    if metrics is not None:
        flush = getattr(metrics.get_meter_provider(), "force_flush", None)
        if flush is not None:
            flush()


# -- configuration ------------------------------------------------------------------------------


def _signals(value: object) -> tuple[signal.Signals, ...]:
    if isinstance(value, int):
        value = (value,)
    if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
        raise TypeError(f"signal_handlers must be a tuple of signals, got {value!r}")
    result: list[signal.Signals] = []
    for item in value:
        if isinstance(item, bool) or not isinstance(item, int):
            raise TypeError(f"signal_handlers must hold signals, got {item!r}")
        try:
            sig = signal.Signals(item)
        except ValueError:
            raise ValueError(f"signal_handlers: {item!r} is not a signal") from None
        if sig in _UNHANDLEABLE:
            raise ValueError(f"signal_handlers: {sig.name} cannot be handled")
        if sig not in result:
            result.append(sig)
    return tuple(result)


@dataclass(frozen=True)
class ShutdownConfig:
    """How a ``GracefulShutdown`` behaves.

    Args:
        timeout: seconds for the critical sections and every handler together
            (default 30).
        signal_handlers: signals that start the shutdown (default SIGTERM and
            SIGINT); ``()`` installs none (use ``trigger()``).
        drain_delay: seconds between readiness turning 503 and the first
            handler, while the service keeps serving (default 0).
        handler_timeout: default bound of each handler (default None: the
            time left of ``timeout``); ``on_shutdown(timeout=...)`` overrides it.
        flush_timeout: bound of each shutdown hook (telemetry flush), which
            run even when the handlers ran out of time (default 2).
        exit_process: ``wait_for_signal()`` / ``wait()`` end the process with
            the exit code (default True); False returns it instead.
    """

    timeout: float = 30.0
    signal_handlers: tuple[int, ...] = field(default=(signal.SIGTERM, signal.SIGINT))
    drain_delay: float = 0.0
    handler_timeout: float | None = None
    flush_timeout: float = 2.0
    exit_process: bool = True

    def __post_init__(self) -> None:
        set_ = functools.partial(object.__setattr__, self)
        set_("timeout", _validation.positive_finite("timeout", self.timeout))
        set_("signal_handlers", _signals(self.signal_handlers))
        set_("drain_delay", _validation.non_negative_finite("drain_delay", self.drain_delay))
        if self.handler_timeout is not None:
            set_(
                "handler_timeout",
                _validation.positive_finite("handler_timeout", self.handler_timeout),
            )
        set_("flush_timeout", _validation.positive_finite("flush_timeout", self.flush_timeout))
        if not isinstance(self.exit_process, bool):
            raise TypeError(f"exit_process must be a bool, got {type(self.exit_process).__name__}")


@dataclass(frozen=True)
class _Handler:
    name: str
    fn: Callable[[], Any]
    is_async: bool
    timeout: float | None


def _is_async_callable(fn: Callable[..., Any]) -> bool:
    while isinstance(fn, functools.partial):
        fn = fn.func
    if inspect.iscoroutinefunction(fn):
        return True
    return inspect.iscoroutinefunction(type(fn).__call__)


class _CriticalSection:
    """``with shutdown.critical(name):`` or ``async with``: shutdown waits for it."""

    __slots__ = ("_entered", "_name", "_owner")

    def __init__(self, owner: GracefulShutdown, name: str) -> None:
        self._owner = owner
        self._name = name
        self._entered = False

    def __enter__(self) -> _CriticalSection:
        self._owner._enter_critical(self._name)
        self._entered = True
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._entered:
            self._entered = False
            self._owner._exit_critical(self._name)

    async def __aenter__(self) -> _CriticalSection:
        return self.__enter__()

    async def __aexit__(self, *exc_info: object) -> None:
        self.__exit__()


class GracefulShutdown:
    """Coordinates a service's shutdown on SIGTERM/SIGINT (see the module docstring).

    Signal handlers are installed at construction (from the main thread; with
    ``signal_handlers=()`` none are, and ``trigger()`` starts the shutdown), so a
    signal during start-up is not lost. ``close()`` puts the previous handlers
    back.
    """

    def __init__(self, config: ShutdownConfig | None = None) -> None:
        if config is None:
            config = ShutdownConfig()
        if not isinstance(config, ShutdownConfig):
            raise TypeError(f"config must be a ShutdownConfig, got {type(config).__name__}")
        self.config = config
        self._lock = threading.RLock()
        self._handlers: list[_Handler] = []
        self._requested = threading.Event()
        self._done = threading.Event()
        self._started_sequence = False
        self._reason: str | None = None
        self._signal: signal.Signals | None = None
        self._waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = []
        self._critical: dict[str, int] = {}
        self._critical_count = 0
        self._abandoned = False
        self._previous: dict[int, Any] = {}
        #: The exit code of the finished shutdown (None before it finishes).
        self.exit_code: int | None = None
        if config.signal_handlers:
            if threading.current_thread() is not threading.main_thread():
                raise RuntimeError(
                    "signal handlers can only be installed from the main thread; pass "
                    "ShutdownConfig(signal_handlers=()) and call trigger() instead"
                )
            for sig in config.signal_handlers:
                try:
                    self._previous[sig] = signal.signal(sig, self._on_signal)
                except (OSError, ValueError) as exc:
                    self.close()
                    name = signal.Signals(sig).name
                    raise ValueError(
                        f"signal_handlers: {name} cannot be handled on this platform ({exc})"
                    ) from exc

    # -- registration ---------------------------------------------------------------------

    def on_shutdown(
        self,
        fn: F | None = None,
        /,
        *,
        timeout: float | None = None,
        name: str | None = None,
    ) -> Any:
        """Registers a sync or async cleanup handler; usable as ``@on_shutdown`` or
        ``@on_shutdown(timeout=5.0)``. Handlers run in registration order.

        Args:
            fn: a callable with no arguments (``async def`` runs on the loop).
            timeout: this handler's bound in seconds (default: the config's
                ``handler_timeout``, else the time left of ``timeout``).
            name: how the logs call it (default: its qualified name).
        """
        if fn is None:

            def decorator(function: F) -> F:
                self.on_shutdown(function, timeout=timeout, name=name)
                return function

            return decorator
        if not callable(fn):
            raise TypeError(f"a shutdown handler must be callable, got {type(fn).__name__}")
        seconds = None if timeout is None else _validation.positive_finite("timeout", timeout)
        if name is not None and (not isinstance(name, str) or not name):
            raise TypeError(f"name must be a non-empty str, got {name!r}")
        label = name or getattr(fn, "__qualname__", None) or repr(fn)
        with self._lock:
            if self._started_sequence:
                raise RuntimeError("the shutdown has already started running its handlers")
            self._handlers.append(_Handler(label, fn, _is_async_callable(fn), seconds))
        return fn

    def critical(self, name: str) -> _CriticalSection:
        """A section shutdown waits for before running handlers (sync and async ``with``)."""
        if not isinstance(name, str) or not name:
            raise TypeError(f"name must be a non-empty str, got {name!r}")
        return _CriticalSection(self, name)

    def _enter_critical(self, name: str) -> None:
        with self._lock:
            self._critical[name] = self._critical.get(name, 0) + 1
            self._critical_count += 1
            if self._requested.is_set():
                logger.warning("critical section %r entered during shutdown", name)

    def _exit_critical(self, name: str) -> None:
        with self._lock:
            left = self._critical[name] - 1
            if left:
                self._critical[name] = left
            else:
                del self._critical[name]
            self._critical_count -= 1

    # -- state ------------------------------------------------------------------------------

    @property
    def is_shutting_down(self) -> bool:
        """True once a signal arrived or ``trigger()`` was called."""
        return self._requested.is_set()

    @property
    def reason(self) -> str | None:
        """What started the shutdown ("SIGTERM", or the reason given to ``trigger``)."""
        return self._reason

    def close(self) -> None:
        """Puts back the signal handlers that were installed before this one."""
        with self._lock:
            previous, self._previous = self._previous, {}
        for sig, handler in previous.items():
            if signal.getsignal(sig) == self._on_signal:
                signal.signal(sig, handler)

    def trigger(self, reason: str = "requested") -> None:
        """Starts the shutdown as a signal would (from any thread); later calls do nothing."""
        self._begin(reason)

    def _on_signal(self, signum: int, frame: types.FrameType | None) -> None:
        if self._requested.is_set():
            # The second signal: exit now, without running anything else.
            with contextlib.suppress(Exception):
                os.write(
                    2,
                    f"shared.lifecycle: second signal {signal.Signals(signum).name}, "
                    "exiting at once\n".encode(),
                )
            os._exit(128 + signum)
        self._signal = signal.Signals(signum)
        self._begin(self._signal.name)

    def _begin(self, reason: str) -> None:
        with self._lock:
            if self._requested.is_set():
                return
            self._reason = reason
            _shutdown_started.set()
            self._requested.set()
            waiters = list(self._waiters)
        for loop, event in waiters:
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(event.set)

    # -- waiting and running -------------------------------------------------------------

    def wait_for_signal(self) -> int:
        """Blocks until a signal (or ``trigger()``), then runs the shutdown.

        For sync services; async handlers run on a fresh event loop. Ends the
        process with the exit code (``SystemExit``), or returns it when
        ``exit_process=False``.
        """
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            pass
        else:
            raise RuntimeError("wait_for_signal() blocks its event loop: use `await wait()`")
        # Short waits: a signal delivered to another thread only sets a flag, and
        # its Python handler runs when the main thread next executes bytecode.
        while not self._requested.wait(_SIGNAL_POLL):
            pass
        if not self._claim_sequence():
            self._done.wait()
            return self._finish(self.exit_code if self.exit_code is not None else EXIT_FAILED)
        loop = asyncio.new_event_loop()
        try:
            code = loop.run_until_complete(self._sequence())
        finally:
            if not self._abandoned:
                with contextlib.suppress(Exception):
                    loop.run_until_complete(loop.shutdown_asyncgens())
                loop.close()
        return self._finish(code)

    async def wait(self) -> int:
        """Waits for a signal (or ``trigger()``) on the running loop, then runs the shutdown.

        For async services. Ends the process with the exit code
        (``SystemExit``), or returns it when ``exit_process=False``.
        """
        loop = asyncio.get_running_loop()
        event = asyncio.Event()
        with self._lock:
            self._waiters.append((loop, event))
            if self._requested.is_set():
                event.set()
        try:
            # Wake every 50 ms (see wait_for_signal) rather than sleep in the poller.
            while not event.is_set():
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(_SIGNAL_POLL):
                        await event.wait()
        finally:
            with self._lock:
                self._waiters.remove((loop, event))
        if not self._claim_sequence():
            while not self._done.is_set():  # noqa: ASYNC110 - set from another thread
                await asyncio.sleep(0.01)
            return self._finish(self.exit_code if self.exit_code is not None else EXIT_FAILED)
        return self._finish(await self._sequence())

    def _claim_sequence(self) -> bool:
        with self._lock:
            if self._started_sequence:
                return False
            self._started_sequence = True
            return True

    def _finish(self, code: int) -> int:
        if not self.config.exit_process:
            return code
        if self._abandoned:
            # A handler is still running (it ignored its timeout): interpreter
            # shutdown could wait for it, so leave now.
            logging.shutdown()
            for stream in (sys.stdout, sys.stderr):
                with contextlib.suppress(Exception):
                    stream.flush()
            os._exit(code)
        raise SystemExit(code)

    async def _sequence(self) -> int:
        config = self.config
        began = time.monotonic()
        failed = False
        logger.info(
            "shutdown started (%s): readiness answers 503, %d handler(s) to run",
            self._reason,
            len(self._handlers),
        )
        if config.drain_delay:
            logger.info("draining for %.3g s", config.drain_delay)
            await asyncio.sleep(config.drain_delay)
            logger.info("drain delay over after %.3f s", time.monotonic() - began)
        deadline = time.monotonic() + config.timeout
        if self._critical_count:
            waited = time.monotonic()
            with self._lock:
                names = sorted(self._critical)
            logger.info("waiting for %d critical section(s): %s", self._critical_count, names)
            # Sections close in any thread or task: poll (5 ms) rather than wire
            # a loop-bound event into every section's exit.
            while self._critical_count and time.monotonic() < deadline:  # noqa: ASYNC110
                await asyncio.sleep(0.005)
            if self._critical_count:
                failed = True
                with self._lock:
                    names = sorted(self._critical)
                logger.error(
                    "critical section(s) still open after %.3f s (timeout): %s",
                    time.monotonic() - waited,
                    names,
                )
            else:
                logger.info("critical sections closed after %.3f s", time.monotonic() - waited)
        with self._lock:
            handlers = list(self._handlers)
        for handler in handlers:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                failed = True
                logger.error("shutdown handler %r skipped: the shutdown timed out", handler.name)
                continue
            bound = handler.timeout if handler.timeout is not None else config.handler_timeout
            limit = remaining if bound is None else min(bound, remaining)
            ok = await self._run_step("shutdown handler", handler.name, handler.fn, limit)
            failed = failed or not ok
        for name, hook in shutdown_hooks().items():
            await self._run_step("shutdown hook", name, hook, config.flush_timeout, quiet=True)
        code = EXIT_FAILED if failed else EXIT_OK
        self.exit_code = code
        logger.info("shutdown finished in %.3f s (exit code %d)", time.monotonic() - began, code)
        self._done.set()
        return code

    async def _run_step(
        self,
        kind: str,
        name: str,
        fn: Callable[[], Any],
        limit: float,
        quiet: bool = False,
    ) -> bool:
        started = time.monotonic()
        loop = asyncio.get_running_loop()
        if _is_async_callable(fn):
            waitable: asyncio.Future[Any] = asyncio.ensure_future(_guarded(fn()))
        else:
            future: concurrent.futures.Future[Any] = concurrent.futures.Future()

            def run() -> None:
                try:
                    result = fn()
                except BaseException as exc:
                    with contextlib.suppress(concurrent.futures.InvalidStateError):
                        future.set_exception(exc)
                else:
                    with contextlib.suppress(concurrent.futures.InvalidStateError):
                        future.set_result(result)

            threading.Thread(target=run, name=f"shared-shutdown:{name}", daemon=True).start()
            waitable = asyncio.wrap_future(future, loop=loop)
        try:
            done, _ = await asyncio.wait({waitable}, timeout=limit)
            if done:
                result = waitable.result()
                if inspect.isawaitable(result):
                    # A sync callable that returned an awaitable (``lambda: db.close()``).
                    left = max(0.0, started + limit - time.monotonic())
                    return await self._run_step(kind, name, _returning(result), left, quiet)
        except (Exception, SystemExit, KeyboardInterrupt) as exc:
            # A handler's sys.exit() or KeyboardInterrupt is its failure, not the end
            # of the sequence: the next handlers and the hooks still run.
            level = logging.WARNING if quiet else logging.ERROR
            logger.log(
                level,
                "%s %r raised after %.3f s",
                kind,
                name,
                time.monotonic() - started,
                exc_info=exc,
            )
            return False
        if not done:
            waitable.cancel()
            if isinstance(waitable, asyncio.Task):
                done, _ = await asyncio.wait({waitable}, timeout=0.1)
            if not done or not isinstance(waitable, asyncio.Task):
                self._abandoned = True
            logger.log(
                logging.WARNING if quiet else logging.ERROR,
                "%s %r timed out after %.3f s",
                kind,
                name,
                limit,
            )
            return False
        if not quiet:
            logger.info("%s %r finished in %.3f s", kind, name, time.monotonic() - started)
        return True


class _HandlerExitError(Exception):
    """An async handler raised ``SystemExit`` or ``KeyboardInterrupt`` (its ``__cause__``).

    asyncio lets those two escape the event loop; the shutdown converts them so
    that the next handlers and the hooks still run.
    """


async def _guarded(awaitable: Awaitable[Any]) -> Any:
    try:
        return await awaitable
    except (SystemExit, KeyboardInterrupt) as exc:
        raise _HandlerExitError(f"{type(exc).__name__} in a shutdown handler") from exc


def _returning(awaitable: Awaitable[Any]) -> Callable[[], Awaitable[Any]]:
    async def run() -> Any:
        return await awaitable

    return run

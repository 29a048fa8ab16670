"""GracefulShutdown in-process: config validation, registration, the sequence, hooks."""

from __future__ import annotations

import asyncio
import signal
import sys
import threading
import time
import types
from collections.abc import Iterator
from typing import Any

import pytest

from shared.lifecycle import (
    GracefulShutdown,
    ShutdownConfig,
    add_shutdown_hook,
    graceful_shutdown,
    remove_shutdown_hook,
    shutdown_hooks,
    shutdown_in_progress,
)

pytestmark = pytest.mark.backend_independent


@pytest.fixture(autouse=True)
def _clean_process_state() -> Iterator[None]:
    """Each test starts with no shutdown in progress and no hooks of its own."""
    graceful_shutdown._shutdown_started.clear()
    before = dict(graceful_shutdown._hooks), dict(graceful_shutdown._last_hooks)
    yield
    graceful_shutdown._shutdown_started.clear()
    for registry, saved in zip(
        (graceful_shutdown._hooks, graceful_shutdown._last_hooks), before, strict=True
    ):
        registry.clear()
        registry.update(saved)


def _quiet(**kwargs: Any) -> GracefulShutdown:
    """A shutdown with no signal handlers that returns its exit code instead of exiting."""
    kwargs.setdefault("signal_handlers", ())
    kwargs.setdefault("exit_process", False)
    return GracefulShutdown(ShutdownConfig(**kwargs))


def test_defaults_are_the_documents() -> None:
    """30 s, SIGTERM and SIGINT, no drain delay; GracefulShutdown() needs no config."""
    config = ShutdownConfig()
    assert config.timeout == 30.0
    assert config.signal_handlers == (signal.SIGTERM, signal.SIGINT)
    assert config.drain_delay == 0.0
    assert config.exit_process is True
    shutdown = GracefulShutdown()
    try:
        assert signal.getsignal(signal.SIGTERM) == shutdown._on_signal
    finally:
        shutdown.close()
    assert signal.getsignal(signal.SIGTERM) != shutdown._on_signal


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"timeout": -1}, ValueError, "timeout"),
        ({"timeout": 0}, ValueError, "timeout"),
        ({"timeout": float("nan")}, ValueError, "timeout"),
        ({"timeout": float("inf")}, ValueError, "timeout"),
        ({"timeout": "30"}, TypeError, "timeout"),
        *(
            [
                ({"signal_handlers": (signal.SIGKILL,)}, ValueError, "SIGKILL cannot be handled"),
                ({"signal_handlers": (signal.SIGSTOP,)}, ValueError, "SIGSTOP cannot be handled"),
            ]
            if hasattr(signal, "SIGKILL")
            else []
        ),
        ({"signal_handlers": (9999,)}, ValueError, "not a signal"),
        ({"signal_handlers": ("SIGTERM",)}, TypeError, "signal_handlers"),
        ({"signal_handlers": "SIGTERM"}, TypeError, "signal_handlers"),
        ({"signal_handlers": (True,)}, TypeError, "signal_handlers"),
        ({"drain_delay": -0.1}, ValueError, "drain_delay"),
        ({"handler_timeout": 0}, ValueError, "handler_timeout"),
        ({"flush_timeout": float("nan")}, ValueError, "flush_timeout"),
        ({"exit_process": 1}, TypeError, "exit_process"),
    ],
)
def test_bad_config_is_refused(kwargs: dict[str, Any], error: type[Exception], match: str) -> None:
    """Negative or non-finite timeouts and signals that cannot be handled fail at construction."""
    with pytest.raises(error, match=match):
        ShutdownConfig(**kwargs)


def test_bad_registrations_are_refused() -> None:
    """A handler that is not callable, or a bad timeout or name, fails at registration."""
    shutdown = _quiet()
    with pytest.raises(TypeError, match="must be callable"):
        shutdown.on_shutdown(42)
    with pytest.raises(ValueError, match="timeout"):
        shutdown.on_shutdown(timeout=-1)(lambda: None)
    with pytest.raises(TypeError, match="name"):
        shutdown.on_shutdown(lambda: None, name="")
    with pytest.raises(TypeError, match="config"):
        GracefulShutdown({"timeout": 1})  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="name"):
        shutdown.critical("")


def test_signal_handlers_need_the_main_thread() -> None:
    """Installing handlers from another thread is a clear error naming the way out."""
    errors: list[BaseException] = []

    def build() -> None:
        try:
            GracefulShutdown(ShutdownConfig())
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=build)
    thread.start()
    thread.join()
    assert isinstance(errors[0], RuntimeError)
    assert "signal_handlers=()" in str(errors[0])


def test_decorators_return_the_function_and_run_in_order() -> None:
    """``@on_shutdown`` and ``@on_shutdown(timeout=...)`` keep the function; order is kept."""
    shutdown = _quiet()
    calls: list[str] = []

    @shutdown.on_shutdown
    async def close_database() -> None:
        calls.append("db")

    @shutdown.on_shutdown(timeout=1.0)
    def close_redis() -> None:
        calls.append("redis")

    @shutdown.on_shutdown
    async def flush_event_queue() -> None:
        await asyncio.sleep(0)
        calls.append("queue")

    assert asyncio.iscoroutinefunction(close_database)
    close_redis()
    calls.clear()
    shutdown.trigger("test")
    assert shutdown.wait_for_signal() == 0
    assert calls == ["db", "redis", "queue"]
    assert shutdown.exit_code == 0
    assert shutdown.reason == "test"
    with pytest.raises(RuntimeError, match="already started"):
        shutdown.on_shutdown(lambda: None)


def test_trigger_sets_readiness_flag() -> None:
    """trigger() marks the process as shutting down (readiness 503) at once."""
    shutdown = _quiet()
    assert not shutdown_in_progress()
    assert not shutdown.is_shutting_down
    shutdown.trigger()
    assert shutdown_in_progress()
    assert shutdown.is_shutting_down


def test_wait_for_signal_refuses_a_running_loop() -> None:
    """Inside a coroutine, wait_for_signal() would block the loop: use ``await wait()``."""
    shutdown = _quiet()

    async def main() -> None:
        shutdown.wait_for_signal()

    with pytest.raises(RuntimeError, match="await wait"):
        asyncio.run(main())


def test_async_wait_runs_the_sequence_on_the_running_loop() -> None:
    """``await shutdown.wait()`` returns after a trigger from another thread."""
    shutdown = _quiet()
    loops: list[asyncio.AbstractEventLoop] = []

    @shutdown.on_shutdown
    async def handler() -> None:
        loops.append(asyncio.get_running_loop())

    async def main() -> tuple[int, asyncio.AbstractEventLoop]:
        threading.Timer(0.05, shutdown.trigger).start()
        return await shutdown.wait(), asyncio.get_running_loop()

    code, loop = asyncio.run(main())
    assert code == 0
    assert loops == [loop]


def test_exit_process_raises_system_exit_with_the_code() -> None:
    """With exit_process (the default) the wait ends the process: SystemExit(code)."""
    shutdown = GracefulShutdown(ShutdownConfig(signal_handlers=()))

    @shutdown.on_shutdown
    def broken() -> None:
        raise RuntimeError("nope")

    shutdown.trigger()
    with pytest.raises(SystemExit) as info:
        shutdown.wait_for_signal()
    assert info.value.code == 1


def test_handler_timeouts_bound_each_handler_and_the_whole() -> None:
    """handler_timeout bounds each; timeout bounds all; what is left is skipped; code 1."""
    shutdown = _quiet(timeout=0.4, handler_timeout=0.2)
    ran: list[str] = []

    @shutdown.on_shutdown
    async def slow() -> None:
        ran.append("slow")
        await asyncio.sleep(5)

    @shutdown.on_shutdown(timeout=0.25)
    async def slower() -> None:
        ran.append("slower")
        await asyncio.sleep(5)

    @shutdown.on_shutdown
    def never() -> None:
        ran.append("never")

    shutdown.trigger()
    started = time.monotonic()
    assert shutdown.wait_for_signal() == 1
    assert 0.35 <= time.monotonic() - started < 1.5
    assert ran == ["slow", "slower"]


def test_sync_handler_returning_a_coroutine_is_awaited() -> None:
    """``lambda: db.close()`` on an async client: the returned coroutine is awaited."""
    shutdown = _quiet()
    closed: list[bool] = []

    async def close() -> None:
        closed.append(True)

    shutdown.on_shutdown(lambda: close(), name="close")
    shutdown.trigger()
    assert shutdown.wait_for_signal() == 0
    assert closed == [True]


def test_critical_sections_are_waited_for_sync_and_async() -> None:
    """Handlers start only after every open critical section (thread or task) has closed."""
    shutdown = _quiet(timeout=5)
    events: list[str] = []
    entered = threading.Event()

    def transfer() -> None:
        with shutdown.critical("withdrawal"):
            entered.set()
            time.sleep(0.2)
            events.append("recorded")

    @shutdown.on_shutdown
    def handler() -> None:
        events.append("handler")

    worker = threading.Thread(target=transfer)
    worker.start()
    entered.wait()

    async def main() -> int:
        async def task() -> None:
            async with shutdown.critical("deposit"):
                await asyncio.sleep(0.3)
                events.append("deposit recorded")

        background = asyncio.create_task(task())
        await asyncio.sleep(0)
        shutdown.trigger()
        code = await shutdown.wait()
        await background
        return code

    assert asyncio.run(main()) == 0
    worker.join()
    assert events == ["recorded", "deposit recorded", "handler"]


def test_a_critical_section_past_the_timeout_fails_the_shutdown() -> None:
    """A section still open at the deadline: handlers are skipped, the code is 1."""
    shutdown = _quiet(timeout=0.2)
    ran: list[str] = []
    shutdown.on_shutdown(lambda: ran.append("handler"), name="handler")
    release = threading.Event()

    def stuck() -> None:
        with shutdown.critical("stuck"):
            release.wait(5)

    worker = threading.Thread(target=stuck)
    worker.start()
    time.sleep(0.02)
    shutdown.trigger()
    try:
        assert shutdown.wait_for_signal() == 1
    finally:
        release.set()
        worker.join()
    assert ran == []


def test_drain_delay_comes_before_the_handlers() -> None:
    """The handlers start drain_delay after the trigger."""
    shutdown = _quiet(drain_delay=0.2)
    started: list[float] = []
    shutdown.on_shutdown(lambda: started.append(time.monotonic()), name="h")
    triggered = time.monotonic()
    shutdown.trigger()
    assert shutdown.wait_for_signal() == 0
    assert started[0] - triggered >= 0.2


def test_hooks_run_last_and_their_failure_is_only_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Shutdown hooks (telemetry flush) run after the handlers; a failing one keeps code 0."""
    shutdown = _quiet()
    order: list[str] = []
    shutdown.on_shutdown(lambda: order.append("handler"), name="handler")

    async def flush_async() -> None:
        order.append("async hook")

    def broken() -> None:
        raise ValueError("exporter down")

    add_shutdown_hook("servers", lambda: order.append("last hook"), last=True)
    add_shutdown_hook("tracing", lambda: order.append("hook"))
    add_shutdown_hook("broken", broken)
    add_shutdown_hook("async", flush_async)
    shutdown.trigger()
    assert shutdown.wait_for_signal() == 0
    assert order == ["handler", "hook", "async hook", "last hook"]
    assert "shutdown hook 'broken' raised" in caplog.text
    remove_shutdown_hook("broken")
    names = list(shutdown_hooks())
    assert "broken" not in names
    assert names.index("async") < names.index("opentelemetry") < names.index("servers")


def test_hook_registration_is_validated() -> None:
    """A hook needs a name and a callable."""
    with pytest.raises(TypeError, match="name"):
        add_shutdown_hook("", lambda: None)
    with pytest.raises(TypeError, match="callable"):
        add_shutdown_hook("x", "flush")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="last"):
        add_shutdown_hook("x", lambda: None, last=1)  # type: ignore[arg-type]


def test_builtin_hook_flushes_opentelemetry_providers(monkeypatch: pytest.MonkeyPatch) -> None:
    """When an OpenTelemetry SDK provider is set up, the built-in hook force-flushes it."""
    flushed: list[str] = []

    class Provider:
        def __init__(self, name: str) -> None:
            self.name = name

        def force_flush(self) -> bool:
            flushed.append(self.name)
            return True

    trace = types.SimpleNamespace(get_tracer_provider=lambda: Provider("traces"))
    metrics = types.SimpleNamespace(get_meter_provider=lambda: Provider("metrics"))
    monkeypatch.setitem(sys.modules, "opentelemetry.trace", trace)
    monkeypatch.setitem(sys.modules, "opentelemetry.metrics", metrics)
    shutdown_hooks()["opentelemetry"]()
    assert flushed == ["traces", "metrics"]


def test_a_second_waiter_gets_the_same_exit_code() -> None:
    """Two threads waiting: one runs the sequence, both get its code."""
    shutdown = _quiet()
    runs: list[int] = []
    shutdown.on_shutdown(lambda: (runs.append(1), time.sleep(0.1)), name="h")
    codes: list[int] = []
    waiters = [
        threading.Thread(target=lambda: codes.append(shutdown.wait_for_signal())) for _ in range(2)
    ]
    for waiter in waiters:
        waiter.start()
    shutdown.trigger()
    for waiter in waiters:
        waiter.join(5)
    assert codes == [0, 0]
    assert runs == [1]


def test_a_cancelled_wait_unregisters_and_runs_nothing() -> None:
    """Cancelling ``await shutdown.wait()`` before any signal leaves no waiter behind."""
    shutdown = _quiet()
    ran: list[str] = []
    shutdown.on_shutdown(lambda: ran.append("handler"), name="handler")

    async def main() -> None:
        task = asyncio.create_task(shutdown.wait())
        await asyncio.sleep(0.01)
        assert len(shutdown._waiters) == 1
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    assert shutdown._waiters == []
    assert ran == []
    shutdown.trigger()  # no waiter on a closed loop to wake: nothing raises
    assert shutdown.wait_for_signal() == 0
    assert ran == ["handler"]


def test_a_handler_calling_sys_exit_fails_but_does_not_stop_the_sequence() -> None:
    """``sys.exit()`` in a handler (thread or task) counts as its failure; the rest still runs."""
    shutdown = _quiet()
    ran: list[str] = []

    def exits() -> None:
        sys.exit(3)

    async def interrupted() -> None:
        raise KeyboardInterrupt

    shutdown.on_shutdown(exits, name="exits")
    shutdown.on_shutdown(interrupted, name="interrupted")
    shutdown.on_shutdown(lambda: ran.append("last"), name="last")
    shutdown.trigger()
    assert shutdown.wait_for_signal() == 1
    assert ran == ["last"]


def test_a_signal_the_platform_refuses_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """signal.signal refusing one signal: ValueError naming it, the others put back."""
    before = signal.getsignal(signal.SIGTERM)
    real = signal.signal

    def refuse_sigint(sig: int, handler: Any) -> Any:
        if sig == signal.SIGINT:
            raise ValueError("invalid signal value")
        return real(sig, handler)

    monkeypatch.setattr(signal, "signal", refuse_sigint)
    with pytest.raises(ValueError, match="signal_handlers: SIGINT cannot be handled"):
        GracefulShutdown(ShutdownConfig(signal_handlers=(signal.SIGTERM, signal.SIGINT)))
    assert signal.getsignal(signal.SIGTERM) == before

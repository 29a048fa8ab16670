"""Real signals to a real process: order, timeouts, the second signal, exit codes, draining."""

from __future__ import annotations

import http.client
import json
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytestmark = [
    pytest.mark.backend_independent,
    pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals"),
]

SERVICE = Path(__file__).with_name("shutdown_service.py")


class Service:
    """The service script in a subprocess, its stdout lines in a queue."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.process = subprocess.Popen(
            [sys.executable, str(SERVICE), json.dumps(config)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self.arrived: dict[str, float] = {}  # when each line was first read
        self.seen: list[str] = []
        self.stderr = ""
        self._out = threading.Thread(target=self._pump, daemon=True)
        self._out.start()
        self._err = threading.Thread(target=self._pump_err, daemon=True)
        self._err.start()
        ready = self.expect("READY")
        self.port = int(ready.split()[1])

    def _pump(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.arrived.setdefault(line.rstrip("\n"), time.monotonic())
            self.lines.put(line.rstrip("\n"))

    def _pump_err(self) -> None:
        assert self.process.stderr is not None
        self.stderr = self.process.stderr.read()

    def expect(self, prefix: str, timeout: float = 10.0) -> str:
        """The next stdout line starting with ``prefix`` (others are kept in ``seen``)."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no line {prefix!r} in time; saw {self.seen}")
            try:
                line = self.lines.get(timeout=remaining)
            except queue.Empty:
                continue
            self.seen.append(line)
            if line.startswith(prefix):
                return line

    def close(self) -> None:
        """Closes the pipes once the readers have seen their end."""
        self._out.join(5)
        self._err.join(5)
        for stream in (self.process.stdout, self.process.stderr):
            if stream is not None:
                stream.close()

    def signal(self, sig: int) -> None:
        self.process.send_signal(sig)

    def finish(self, timeout: float = 10.0) -> int:
        """Waits for the exit; returns the code and gathers the remaining lines."""
        code = self.process.wait(timeout)
        self._err.join(5)
        while True:
            try:
                self.seen.append(self.lines.get(timeout=0.2))
            except queue.Empty:
                break
        return code

    def get(self, path: str) -> int:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
        try:
            connection.request("GET", path)
            response = connection.getresponse()
            response.read()
            return response.status
        finally:
            connection.close()


@pytest.fixture
def spawn() -> Iterator[Any]:
    services: list[Service] = []

    def start(config: dict[str, Any]) -> Service:
        service = Service(config)
        services.append(service)
        return service

    yield start
    for service in services:
        if service.process.poll() is None:
            service.process.kill()
        service.process.wait(5)
        service.close()


def _events(service: Service) -> list[str]:
    return [line for line in service.seen if line.split()[0] in ("start", "end", "hook")]


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_handlers_run_in_order_and_exit_0(spawn: Any, mode: str) -> None:
    """SIGTERM: sync and async handlers in registration order, the hook last, exit 0."""
    service = spawn(
        {
            "mode": mode,
            "handlers": [
                {"name": "close_database", "kind": "async", "sleep": 0.05},
                {"name": "close_redis", "kind": "sync", "sleep": 0.05},
                {"name": "flush_event_queue", "kind": "async"},
            ],
        }
    )
    service.signal(signal.SIGTERM)
    assert service.finish() == 0
    assert _events(service) == [
        "start close_database",
        "end close_database",
        "start close_redis",
        "end close_redis",
        "start flush_event_queue",
        "end flush_event_queue",
        "hook",
    ]
    assert "shutdown started (SIGTERM)" in service.stderr
    assert "shutdown handler 'close_redis' finished in" in service.stderr
    assert "shutdown finished in" in service.stderr


def test_a_failing_handler_does_not_stop_the_others_and_exits_1(spawn: Any) -> None:
    """SIGINT too: a raising handler is logged with its trace, the next ones run; exit 1."""
    service = spawn(
        {"handlers": [{"name": "bad", "raise": True}, {"name": "good", "kind": "async"}]}
    )
    service.signal(signal.SIGINT)
    assert service.finish() == 1
    assert "shutdown started (SIGINT)" in service.stderr
    assert _events(service) == ["start bad", "start good", "end good", "hook"]
    assert "RuntimeError: bad failed" in service.stderr


def test_per_handler_and_overall_timeouts(spawn: Any) -> None:
    """A handler past its own timeout is abandoned; past the overall one the rest is skipped."""
    service = spawn(
        {
            "timeout": 0.8,
            "handlers": [
                {"name": "stuck", "sleep": 30, "timeout": 0.2},
                {"name": "slow", "kind": "async", "sleep": 30},
                {"name": "never"},
            ],
        }
    )
    started = time.monotonic()
    service.signal(signal.SIGTERM)
    assert service.finish() == 1
    elapsed = time.monotonic() - started
    assert elapsed < 3.0
    assert _events(service) == ["start stuck", "start slow", "hook"]
    assert "shutdown handler 'stuck' timed out after 0.200 s" in service.stderr
    assert re.search(r"shutdown handler .slow. timed out after 0\.\d+ s", service.stderr)
    assert "shutdown handler 'never' skipped" in service.stderr


def test_a_second_signal_forces_exit_at_once(spawn: Any) -> None:
    """SIGTERM, then SIGINT during a long handler: exit at once with 128 + SIGINT."""
    service = spawn({"timeout": 30, "handlers": [{"name": "long", "sleep": 30}]})
    service.signal(signal.SIGTERM)
    service.expect("start long")
    started = time.monotonic()
    service.signal(signal.SIGINT)
    assert service.finish() == 128 + signal.SIGINT
    assert time.monotonic() - started < 2.0
    assert "second signal SIGINT" in service.stderr
    assert "end long" not in service.seen


def test_readiness_503_during_drain_while_liveness_200(spawn: Any) -> None:
    """During drain_delay readiness answers 503 at once and liveness 200; then handlers run."""
    service = spawn({"drain_delay": 1.0, "handlers": [{"name": "a"}]})
    assert service.get("/health/ready") == 200
    service.signal(signal.SIGTERM)
    deadline = time.monotonic() + 0.5
    while service.get("/health/ready") != 503:
        assert time.monotonic() < deadline, "readiness did not turn 503 at once"
    assert service.get("/health/live") == 200
    assert "start a" not in service.seen
    assert service.lines.empty()
    assert service.finish() == 0
    assert _events(service) == ["start a", "end a", "hook"]
    assert "drain delay over after" in service.stderr


def test_critical_section_finishes_before_handlers(spawn: Any) -> None:
    """An open critical section is waited for; the handlers run after it closes."""
    service = spawn({"critical": 0.4, "handlers": [{"name": "close_database"}]})
    service.signal(signal.SIGTERM)
    assert service.finish() == 0
    order = [line for line in service.seen if line != "hook" and not line.startswith("READY")]
    assert order == [
        "critical entered",
        "critical done",
        "start close_database",
        "end close_database",
    ]
    assert "waiting for 1 critical section(s): ['transfer']" in service.stderr


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_kubernetes_like_termination(spawn: Any, mode: str) -> None:
    """A prober every 100 ms and a request in flight at SIGTERM: nothing accepted is dropped."""
    service = spawn(
        {
            "mode": mode,
            "drain_delay": 0.5,
            "ready_delay": 0.15,
            "handlers": [{"name": "close", "sleep": 0.1}],
        }
    )
    results: list[tuple[str, float, float, int | str]] = []
    stop = threading.Event()

    in_flight = threading.Event()  # a readiness request is being answered

    def probe(path: str) -> None:
        while not stop.is_set():
            sent = time.monotonic()
            if path == "/health/ready":
                in_flight.set()
            try:
                status: int | str = service.get(path)
            except ConnectionRefusedError:
                results.append((path, sent, time.monotonic(), "refused"))
                return
            except Exception as exc:
                status = repr(exc)
            in_flight.clear()
            results.append((path, sent, time.monotonic(), status))
            time.sleep(0.1)

    probers = [threading.Thread(target=probe, args=(p,)) for p in ("/health/ready", "/health/live")]
    for prober in probers:
        prober.start()
    time.sleep(0.35)
    in_flight.clear()
    assert in_flight.wait(2)
    time.sleep(0.03)  # into the 0.15 s the readiness takes: SIGTERM mid-request
    signalled = time.monotonic()
    service.signal(signal.SIGTERM)
    code = service.finish()
    stop.set()
    for prober in probers:
        prober.join(5)
    assert code == 0
    before = [r for r in results if r[1] < signalled]
    assert before, results
    # Every request sent before the signal was answered (none reset or dropped),
    # including the readiness request in flight when the signal arrived.
    assert all(isinstance(r[3], int) for r in before), before
    assert any(r[1] < signalled < r[2] for r in before if r[0] == "/health/ready"), results
    # Until the servers stop listening (the last shutdown hook, after the "hook"
    # line), every request gets its answer: 503 from readiness, 200 from liveness.
    stopping = service.arrived["hook"]
    answered = [r for r in results if signalled < r[1] < stopping - 0.05]
    ready_after = [r[3] for r in answered if r[0] == "/health/ready"]
    live_after = [r[3] for r in answered if r[0] == "/health/live"]
    assert 503 in ready_after
    timeline = [(round(r[1] - signalled, 3), r[3]) for r in results if r[0] == "/health/ready"]
    assert set(ready_after) == {503}, (timeline, round(stopping - signalled, 3))
    assert set(live_after) == {200}, answered
    assert len(live_after) >= 2

"""The demo end to end: headless runs that serve probes and metrics and prove exactly-once."""

from __future__ import annotations

import asyncio
import http.server
import io
import json
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest

from conftest import require_service
from shared.demo import DemoOptions, run_async
from shared.lifecycle import graceful_shutdown

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _no_shutdown_in_progress() -> Iterator[None]:
    """An in-process run ends with a graceful shutdown: later tests start afresh."""
    graceful_shutdown._shutdown_started.clear()
    yield
    graceful_shutdown._shutdown_started.clear()


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


class Demo:
    """``python -m shared demo`` in a subprocess, its output read line by line."""

    def __init__(self, *args: str, env: dict[str, str] | None = None) -> None:
        command = [sys.executable, "-m", "shared", "demo", "--no-tui", "--health-port", "0"]
        command += ["--metrics-port", "0", *args]
        environ = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        self.process = subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=environ,
            cwd=ROOT,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self.output: list[str] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.put(line)

    def wait_for(self, prefix: str, timeout: float = 20.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.1)
            except queue.Empty:
                continue
            self.output.append(line)
            if line.strip().startswith(prefix):
                return line.strip()
        raise AssertionError(f"no line starting with {prefix!r} in {''.join(self.output)}")

    def replica_urls(self, replicas: int) -> dict[int, tuple[str, str]]:
        """Each replica's health base URL and metrics URL, from its forwarded lines."""
        found: dict[int, dict[str, str]] = {}
        deadline = time.monotonic() + 30.0
        while sum(len(urls) for urls in found.values()) < 2 * replicas:
            assert time.monotonic() < deadline, (
                f"replica URLs missing: {found} in {''.join(self.output)}"
            )
            line = self.wait_for("[replica")
            match = re.match(r"\[replica (\d+)\]\s+(health|metrics):\s+(\S+)", line)
            if match:
                found.setdefault(int(match[1]), {})[match[2]] = match[3]
        return {
            index: (urls["health"].removesuffix("/health/ready"), urls["metrics"])
            for index, urls in found.items()
        }

    def urls(self) -> tuple[str, str]:
        health = self.wait_for("health:").split()[1]
        metrics = self.wait_for("metrics:").split()[1]
        return health.removesuffix("/health/ready"), metrics

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(10)
        self.reader.join(10)
        assert self.process.stdout is not None
        self.process.stdout.close()

    def finish(self, timeout: float = 30.0) -> tuple[int, str]:
        code = self.process.wait(timeout)
        self.reader.join(10)
        while not self.lines.empty():
            self.output.append(self.lines.get())
        return code, "".join(self.output)


def check_summary(summary: dict[str, Any]) -> None:
    assert summary["ok"], summary
    assert all(summary["checks"].values())
    assert summary["duplicate_executions"] == 0
    assert summary["orders_executed"] == summary["unique_keys_acknowledged"] > 0
    assert summary["duplicates_replayed"] > 0
    assert summary["cancelled_at_stop"] == 0


@pytest.mark.backend_independent
def test_headless_run_serves_probes_and_metrics_and_proves_exactly_once(tmp_path: Path) -> None:
    """--duration 3 --no-tui: probes and /metrics answer while it runs; exit 0, no duplicate."""
    summary_path = tmp_path / "summary.json"
    demo = Demo(
        "--duration",
        "3",
        "--summary-json",
        str(summary_path),
        env={"SHUTDOWN_DRAIN_DELAY": "0.2", "RATE_LIMIT_REQUESTS_PER_SECOND": "20"},
    )
    try:
        health, metrics_url = demo.urls()
        time.sleep(0.5)
        assert get(health + "/health/live")[0] == 200
        assert get(health + "/health/startup")[0] == 200
        status, body = get(health + "/health/ready")
        assert status == 200
        assert json.loads(body)["status"] == "healthy"
        status, body = get(health + "/health")
        assert status == 200
        assert json.loads(body)["checks"]["exchange"] in ("healthy", "degraded")
        assert get(health + "/nope")[0] == 404
        status, metrics = get(metrics_url)
        assert status == 200
        assert 'shared_demo_orders_total{outcome="executed"}' in metrics
        assert 'shared_demo_circuit_breaker_state{breaker="exchange",state="closed"}' in metrics
        assert 'shared_idempotency_requests_total{outcome="executed",store="demo-orders"}' in (
            metrics
        )
        promtool = shutil.which("promtool")
        if promtool is not None:
            lint = subprocess.run(
                [promtool, "check", "metrics"],
                input=metrics,
                capture_output=True,
                text=True,
                timeout=30,
            )
            assert lint.returncode == 0, lint.stdout + lint.stderr
        code, output = demo.finish()
    finally:
        demo.close()
    assert code == 0, output
    assert "result: OK" in output
    summary = json.loads(summary_path.read_text())
    check_summary(summary)
    assert summary["breaker_opened"] >= 1  # the outage window opened it
    assert summary["rate_limited"] > 0
    assert summary["idempotency_store"].startswith("SQLiteIdempotencyStore at ")
    # the store counts every claimed execution, failed ones (released for a retry) too
    assert summary["store_outcomes"]["executed"] >= summary["orders_executed"]
    assert summary["shutdown_exit_code"] == 0


@pytest.mark.backend_independent
@pytest.mark.skipif(sys.platform == "win32", reason="SIGTERM is not a catchable signal on Windows")
def test_sigterm_drains_then_stops_with_nothing_lost(tmp_path: Path) -> None:
    """SIGTERM: readiness turns 503 at once, in-flight orders finish, exit 0 with the proof."""
    summary_path = tmp_path / "summary.json"
    demo = Demo("--summary-json", str(summary_path), env={"SHUTDOWN_DRAIN_DELAY": "1"})
    try:
        health, _ = demo.urls()
        time.sleep(0.5)
        assert get(health + "/health/ready")[0] == 200
        demo.process.send_signal(signal.SIGTERM)
        demo.wait_for("SIGTERM: stopping gracefully")
        status, body = get(health + "/health/ready")
        assert status == 503
        assert json.loads(body)["status"] == "unhealthy"
        assert get(health + "/health/live")[0] == 200  # liveness does not flap on shutdown
        code, output = demo.finish()
    finally:
        demo.close()
    assert code == 0, output
    check_summary(json.loads(summary_path.read_text()))


class Collector(http.server.BaseHTTPRequestHandler):
    """A stand-in OTLP/HTTP collector: records the paths and content types it is sent."""

    received: ClassVar[list[tuple[str, str, int]]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.received.append((self.path, self.headers.get("Content-Type", ""), len(body)))
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


async def test_in_process_run_on_this_backend_exports_traces() -> None:
    """On the backend under test: the proof holds, and sampled spans go out over OTLP/HTTP."""
    Collector.received.clear()
    server = http.server.HTTPServer(("127.0.0.1", 0), Collector)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    out = io.StringIO()
    options = DemoOptions(
        duration=1.0,
        tui=False,
        health_port=0,
        metrics_port=0,
        configure_logging=False,
        environ={
            "SHUTDOWN_DRAIN_DELAY": "0",
            "TRACE_SAMPLE_RATE": "1",
            "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{server.server_port}",
        },
    )
    try:
        summary = await asyncio.wait_for(run_async(options, out), 30)
    finally:
        server.shutdown()
        server.server_close()
    check_summary(summary)
    assert "result: OK" in out.getvalue()
    assert "executed=" in out.getvalue()  # the plain view's log lines
    # every execution (failed ones too) is a span, and all were sampled and exported
    assert summary["spans"] >= summary["unique_keys_executed"]
    assert Collector.received
    assert {path for path, _, _ in Collector.received} == {"/v1/traces"}
    assert all(kind == "application/x-protobuf" for _, kind, _ in Collector.received)


@pytest.mark.backend_independent
@pytest.mark.redis
async def test_limiters_on_redis() -> None:
    """--redis moves the per-user limiters to Redis; the run still proves exactly-once."""
    require_service("Redis", 6379)
    options = DemoOptions(
        duration=1.0,
        tui=False,
        health_port=0,
        metrics_port=0,
        configure_logging=False,
        redis_url="redis://127.0.0.1:6379/0",
        environ={
            "SHUTDOWN_DRAIN_DELAY": "0",
            "RATE_LIMIT_REQUESTS_PER_SECOND": "10",
            "RATE_LIMIT_BURST_SIZE": "5",
        },
    )
    summary = await asyncio.wait_for(run_async(options, io.StringIO()), 30)
    check_summary(summary)
    assert summary["limiters"].startswith("Redis at redis://127.0.0.1:6379/0 (10/s, burst 5")
    assert summary["idempotency_store"].startswith("RedisIdempotencyStore at redis://")
    assert summary["rate_limited"] > 0
    # 4 users, each at most its burst plus 10 orders a second, counted by Redis's clock
    assert summary["unique_keys_executed"] <= 4 * (5 + 10 * (summary["duration_s"] + 0.5))


@pytest.mark.backend_independent
async def test_an_unreachable_redis_is_an_error_naming_it() -> None:
    """A --redis URL that does not answer fails fast, naming the URL."""
    options = DemoOptions(
        duration=1.0,
        tui=False,
        health_port=0,
        metrics_port=0,
        configure_logging=False,
        redis_url="redis://127.0.0.1:1/0",
    )
    with pytest.raises(ConnectionError, match=r"redis://127\.0\.0\.1:1/0"):
        await run_async(options, io.StringIO())


def run_replicas(tmp_path: Path, *args: str) -> dict[str, Any]:
    """``--replicas 3``: every replica serves probes and metrics while it runs (scraped
    here); the merged summary proves exactly-once across the processes."""
    summary_path = tmp_path / "summary.json"
    demo = Demo(
        "--replicas",
        "3",
        "--duration",
        "2.5",
        "--clients",
        "4",
        "--summary-json",
        str(summary_path),
        *args,
        env={"SHUTDOWN_DRAIN_DELAY": "0.2"},
    )
    try:
        urls = demo.replica_urls(3)
        assert sorted(urls) == [0, 1, 2]
        ports = {url for pair in urls.values() for url in pair}
        assert len(ports) == 6  # a port of its own for each server of each replica
        time.sleep(0.3)
        for health, metrics_url in urls.values():
            assert get(health + "/health/ready")[0] == 200
            status, metrics = get(metrics_url)
            assert status == 200
            assert "shared_idempotency_requests_total" in metrics
        code, output = demo.finish()
    finally:
        demo.close()
    assert code == 0, output
    assert "result: OK" in output
    summary = json.loads(summary_path.read_text())
    assert summary["ok"], summary
    assert summary["replicas"] == 3
    assert summary["replica_exit_codes"] == [0, 0, 0]
    assert summary["duplicate_executions"] == 0
    assert summary["orders_executed"] == summary["unique_keys_acknowledged"] > 0
    assert summary["duplicates_replayed"] > 0
    assert summary["replays_across_replicas"] > 0  # duplicates met in another process
    assert summary["cancelled_at_stop"] == 0
    assert all(report["orders_executed"] > 0 for report in summary["per_replica"])
    return summary


@pytest.mark.backend_independent
@pytest.mark.redis
def test_three_replicas_on_redis(tmp_path: Path) -> None:
    """Store and limiters on Redis, shared by three service processes."""
    require_service("Redis", 6379)
    summary = run_replicas(tmp_path, "--redis", "redis://127.0.0.1:6379/0")
    assert summary["idempotency_store"].startswith("RedisIdempotencyStore")
    assert "shared by every process" in summary["limiters"]


@pytest.mark.backend_independent
@pytest.mark.postgres
def test_three_replicas_on_postgres(tmp_path: Path) -> None:
    """Store on PostgreSQL; limiters in-process in each replica (the summary says so)."""
    require_service("PostgreSQL", 5432)
    summary = run_replicas(tmp_path, "--postgres", "postgresql://postgres@127.0.0.1:5432/test")
    assert summary["idempotency_store"].startswith("PostgresIdempotencyStore")
    assert "each of the 3 replicas" in summary["limiters"]


@pytest.mark.backend_independent
@pytest.mark.skipif(sys.platform == "win32", reason="SIGTERM is not a catchable signal on Windows")
def test_sigterm_on_the_parent_drains_replicas_sharing_the_sqlite_file(tmp_path: Path) -> None:
    """Two processes on the embedded SQLite store; SIGTERM to the parent is passed on once,
    both drain, and the merged proof holds (exactly-once across processes on one file)."""
    summary_path = tmp_path / "summary.json"
    demo = Demo(
        "--replicas",
        "2",
        "--clients",
        "4",
        "--state-dir",
        str(tmp_path / "state"),
        "--summary-json",
        str(summary_path),
        env={"SHUTDOWN_DRAIN_DELAY": "0.2"},
    )
    try:
        urls = demo.replica_urls(2)
        time.sleep(1.0)
        demo.process.send_signal(signal.SIGTERM)
        demo.wait_for("SIGTERM: stopping the replicas gracefully")
        code, output = demo.finish()
    finally:
        demo.close()
    assert code == 0, output
    assert output.count("SIGTERM: stopping gracefully") == 2  # each replica, once
    summary = json.loads(summary_path.read_text())
    assert summary["ok"], summary
    assert summary["duplicate_executions"] == 0
    assert summary["orders_executed"] == summary["unique_keys_acknowledged"] > 0
    assert summary["cancelled_at_stop"] == 0
    assert summary["idempotency_store"].startswith("SQLiteIdempotencyStore")
    assert (tmp_path / "state" / "idempotency.sqlite3").exists()  # --state-dir keeps it
    assert len(urls) == 2

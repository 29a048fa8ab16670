"""MetricsServer over real HTTP: formats, negotiation, gzip, limits against bad clients."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import shutil
import socket
import subprocess
import sys
import textwrap
import threading
import time
import urllib.request
from collections.abc import Iterator

import pytest
from prometheus_client import CollectorRegistry, Counter
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as parse_openmetrics,
)
from prometheus_client.parser import text_string_to_metric_families

from shared.observability import MetricsServer
from shared.resilience import CircuitBreaker, Retry

from .every_pattern import use_every_pattern

pytestmark = pytest.mark.backend_independent

OPENMETRICS = "application/openmetrics-text; version=1.0.0"


@pytest.fixture
def app_registry() -> CollectorRegistry:
    """An application registry with one metric of its own."""
    registry = CollectorRegistry()
    requests = Counter("app_requests", "Requests", ["status"], registry=registry)
    requests.labels(status="200").inc(3)
    return registry


@pytest.fixture
def server(app_registry: CollectorRegistry) -> Iterator[MetricsServer]:
    """A background server on a free loopback port, with short limits."""
    server = MetricsServer(
        "127.0.0.1",
        0,
        registry=app_registry,
        header_timeout=0.3,
        keepalive_timeout=0.5,
        max_connections=4,
        max_header_bytes=1024,
    )
    server.start_in_background()
    yield server
    server.stop()


def raw(server: MetricsServer, request: bytes, timeout: float = 5.0) -> bytes:
    """Sends ``request`` as is and reads until the server closes the connection."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=timeout) as sock:
        sock.sendall(request)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
        return b"".join(chunks)


def split(response: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = response.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return status, headers, body


def get(server: MetricsServer, **headers: str) -> tuple[int, dict[str, str], bytes]:
    lines = "".join(f"{k.replace('_', '-')}: {v}\r\n" for k, v in headers.items())
    request = f"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{lines}\r\n"
    return split(raw(server, request.encode()))


def test_scrape_parses_with_the_application_metrics_and_ours(server: MetricsServer) -> None:
    """The text format, parsed by prometheus_client: the app's counter and the shared_ families."""
    breaker = CircuitBreaker("server-breaker", registry=None)
    breaker.call(lambda: 1)
    retry = Retry("server-retry")
    retry.execute(lambda: 1)
    with urllib.request.urlopen(server.url, timeout=5) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        text = response.read().decode()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    assert families["app_requests"].samples[0].value == 3
    state = families["shared_circuit_breaker_state"]
    assert {
        s.labels["state"]: s.value for s in state.samples if s.labels["breaker"] == "server-breaker"
    } == {"closed": 1.0, "open": 0.0, "half_open": 0.0}
    calls = families["shared_retry_calls"].samples
    assert any(s.labels["retry"] == "server-retry" and s.value == 1 for s in calls)
    del breaker, retry


def test_openmetrics_by_content_negotiation(server: MetricsServer) -> None:
    """Accept: application/openmetrics-text gets OpenMetrics (ending in # EOF)."""
    status, headers, body = get(server, accept=OPENMETRICS)
    assert status == 200
    assert headers["content-type"].startswith("application/openmetrics-text; version=1.0.0")
    text = body.decode()
    assert text.endswith("# EOF\n")
    names = {family.name for family in parse_openmetrics(text)}
    assert {"app_requests", "shared_circuit_breaker_calls"} <= names


def test_gzip_only_when_asked(server: MetricsServer) -> None:
    """gzip when Accept-Encoding allows it; identity otherwise (and for q=0)."""
    status, headers, body = get(server, accept_encoding="br, gzip;q=0.5")
    assert status == 200
    assert headers["content-encoding"] == "gzip"
    assert b"app_requests_total" in gzip.decompress(body)
    assert int(headers["content-length"]) == len(body)
    for encoding in ("identity", "gzip;q=0"):
        _, headers, body = get(server, accept_encoding=encoding)
        assert "content-encoding" not in headers
        assert b"app_requests_total" in body


def test_head_404_405_and_query_strings(server: MetricsServer) -> None:
    """HEAD has no body; other paths are 404; other methods 405; a query string is ignored."""
    status, headers, body = split(
        raw(server, b"HEAD /metrics HTTP/1.1\r\nConnection: close\r\n\r\n")
    )
    assert (status, body) == (200, b"")
    assert int(headers["content-length"]) > 0
    assert split(raw(server, b"GET /other HTTP/1.1\r\nConnection: close\r\n\r\n"))[0] == 404
    status, headers, _ = split(
        raw(server, b"DELETE /metrics HTTP/1.1\r\nConnection: close\r\n\r\n")
    )
    assert (status, headers["allow"]) == (405, "GET, HEAD")
    request = b"GET /metrics?name[]=x HTTP/1.0\r\n\r\n"
    assert split(raw(server, request))[0] == 200


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (b"NONSENSE\r\n\r\n", 400),
        (b"GET /metrics HTTP/1.1\r\nno colon here\r\n\r\n", 400),
        (b"GET /metrics HTTP/1.1\r\nX-Big: " + b"a" * 4000 + b"\r\n\r\n", 431),
        (b"GET /metrics HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello", 413),
        (b"GET /metrics HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
    ],
)
def test_malformed_requests_get_an_error_and_are_closed(
    server: MetricsServer, request_bytes: bytes, status: int
) -> None:
    """Bad request lines, headers, oversized heads and bodies are refused, then closed."""
    started = time.monotonic()
    response = raw(server, request_bytes)
    assert split(response)[0] == status
    assert time.monotonic() - started < 2.0


def test_a_slow_client_is_dropped_after_header_timeout(server: MetricsServer) -> None:
    """A head that does not arrive within header_timeout gets 408 and the connection closes."""
    started = time.monotonic()
    response = raw(server, b"GET /metrics HTTP/1.1\r\nHost:")
    elapsed = time.monotonic() - started
    assert split(response)[0] == 408
    assert 0.25 <= elapsed < 2.0


def test_keep_alive_then_idle_close(server: MetricsServer) -> None:
    """Two requests on one connection; an idle one is closed after keepalive_timeout."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        for _ in range(2):
            sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            data = b""
            while b"\r\n\r\n" not in data:
                data += sock.recv(65536)
            status, headers, body = split(data)
            while len(body) < int(headers["content-length"]):
                body += sock.recv(65536)
            assert status == 200
            assert "connection" not in headers
        started = time.monotonic()
        assert sock.recv(1) == b""  # closed by the server
        assert 0.3 <= time.monotonic() - started < 3.0


def test_connections_beyond_the_limit_are_closed_at_once(server: MetricsServer) -> None:
    """With max_connections held by idle clients, a new one is closed; the server recovers."""
    idle = [socket.create_connection(("127.0.0.1", server.port), timeout=5) for _ in range(4)]
    try:
        time.sleep(0.05)
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as extra:
            started = time.monotonic()
            with contextlib.suppress(ConnectionResetError):
                assert extra.recv(1) == b""
            # A close for header_timeout (0.3 s) would send a 408 first: recv() giving
            # b"" already tells the two apart, so the bound leaves room for a loaded host.
            assert time.monotonic() - started < 2.0
    finally:
        for sock in idle:
            sock.close()
    deadline = time.monotonic() + 3.0
    while True:  # the idle connections' slots come back
        try:
            assert get(server)[0] == 200
            break
        except (AssertionError, IndexError, ValueError, ConnectionError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def test_stop_frees_the_port_and_lifecycle_errors(app_registry: CollectorRegistry) -> None:
    """stop() closes the listener; a second start raises; a port in use is an OSError."""
    server = MetricsServer("127.0.0.1", 0, registry=app_registry).start_in_background()
    port = server.port
    assert server.running
    with pytest.raises(RuntimeError, match="already running"):
        server.start_in_background()
    with pytest.raises(OSError):  # noqa: PT011 (the errno depends on the platform)
        MetricsServer("127.0.0.1", port, registry=app_registry).start_in_background()
    server.stop()
    assert not server.running
    server.stop()  # a no-op
    with pytest.raises(OSError):  # noqa: PT011
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    again = MetricsServer("127.0.0.1", port, registry=app_registry).start_in_background()
    again.stop()


async def test_asyncio_form(app_registry: CollectorRegistry) -> None:
    """`async with MetricsServer(...)` serves on the running loop."""
    async with MetricsServer("127.0.0.1", 0, registry=app_registry) as server:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(b"GET /metrics HTTP/1.1\r\nConnection: close\r\n\r\n")
        response = await asyncio.wait_for(reader.read(), 5)
        writer.close()
        status, _, body = split(response)
        assert status == 200
        assert b'app_requests_total{status="200"} 3.0' in body
    assert not server.running


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"port": -1}, ValueError, "port"),
        ({"port": "9090"}, TypeError, "port"),
        ({"host": 3}, TypeError, "host"),
        ({"registry": object()}, TypeError, "registry"),
        ({"path": "metrics"}, ValueError, "path"),
        ({"max_connections": 0}, ValueError, "max_connections"),
        ({"header_timeout": 0}, ValueError, "header_timeout"),
        ({"keepalive_timeout": float("nan")}, ValueError, "keepalive_timeout"),
        ({"write_timeout": -1}, ValueError, "write_timeout"),
        ({"max_header_bytes": 10}, ValueError, "max_header_bytes"),
        ({"resilience_metrics": 1}, TypeError, "resilience_metrics"),
    ],
)
def test_bad_arguments_are_refused_at_construction(
    kwargs: dict[str, object], error: type[Exception], match: str
) -> None:
    """Each bad argument raises, naming the parameter."""
    with pytest.raises(error, match=match):
        MetricsServer(**kwargs)  # type: ignore[arg-type]


def test_defaults_are_the_documents() -> None:
    """host 0.0.0.0 and port 9090, as the document's examples assume."""
    server = MetricsServer()
    assert (server.host, server.port, server.path) == ("0.0.0.0", 9090, "/metrics")
    assert not server.running


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_the_documents_example_as_written() -> None:
    """The document's "Prometheus Metrics" example, run in a process of its own."""
    port = _free_port()
    example = textwrap.dedent(
        f"""
        import time, urllib.request
        from shared.observability import MetricsServer
        from prometheus_client import Counter, Histogram, Gauge

        requests_total = Counter(
            'http_requests_total',
            'Total HTTP requests',
            ['method', 'endpoint', 'status']
        )
        request_duration = Histogram(
            'http_request_duration_seconds',
            'HTTP request duration',
            ['method', 'endpoint'],
            buckets=[0.01, 0.05, 0.1, 0.5, 1.0, 5.0]
        )
        active_connections = Gauge(
            'active_connections',
            'Number of active connections'
        )
        def process_request():
            pass

        metrics_server = MetricsServer(host="127.0.0.1", port={port})
        metrics_server.start_in_background()

        requests_total.labels(
            method='GET',
            endpoint='/api/strategies',
            status='200'
        ).inc()
        with request_duration.labels(
            method='POST',
            endpoint='/api/strategies'
        ).time():
            process_request()
        active_connections.set(42)

        body = urllib.request.urlopen("http://127.0.0.1:{port}/metrics", timeout=5).read()
        print(body.decode())
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", example], capture_output=True, text=True, timeout=30, check=True
    )
    families = {f.name: f for f in text_string_to_metric_families(result.stdout)}
    assert families["http_requests"].samples[0].labels == {
        "method": "GET",
        "endpoint": "/api/strategies",
        "status": "200",
    }
    assert families["active_connections"].samples[0].value == 42
    assert "http_request_duration_seconds" in families
    assert "shared_circuit_breaker_state" in families


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool (Debian: prometheus)")
def test_promtool_check_metrics_is_clean(server: MetricsServer) -> None:
    """`promtool check metrics` finds nothing to say about a real scrape with every family."""
    keep = use_every_pattern()
    with urllib.request.urlopen(server.url, timeout=5) as response:
        text = response.read()
    for family in (
        "shared_circuit_breaker_state",
        "shared_retry_give_ups_total",
        "shared_rate_limiter_decisions_total",
        "shared_timeouts_fired_total",
        "shared_idempotency_requests_total",
    ):
        assert family.encode() in text
    result = subprocess.run(
        ["promtool", "check", "metrics"], input=text, capture_output=True, timeout=30, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == b"", result
    assert result.stderr.strip() == b"", result
    del keep


def test_start_and_stop_leave_no_thread_behind(app_registry: CollectorRegistry) -> None:
    """Each background server's threads (loop, scrape renderer) end with stop()."""
    before = set(threading.enumerate())
    for _ in range(3):
        server = MetricsServer("127.0.0.1", 0, registry=app_registry).start_in_background()
        assert get(server)[0] == 200
        server.stop()
    assert set(threading.enumerate()) <= before

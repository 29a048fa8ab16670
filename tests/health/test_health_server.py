"""HealthServer over real HTTP: routes, codes, headers, negotiation, and hostile clients."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import http.client
import json
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from shared.health import HealthCheck, HealthServer, HealthStatus
from shared.lifecycle import graceful_shutdown

pytestmark = pytest.mark.backend_independent


@pytest.fixture(autouse=True)
def _no_shutdown_in_progress() -> Iterator[None]:
    """Readiness reads the process-wide shutdown flag: keep it clear around each test."""
    graceful_shutdown._shutdown_started.clear()
    yield
    graceful_shutdown._shutdown_started.clear()


class _Switchable(HealthCheck):
    """Readiness follows ``self.ready``; the other probes are the base class's."""

    def __init__(self) -> None:
        super().__init__(cache_ttl=0)
        self.ready = HealthStatus.HEALTHY

    def readiness(self) -> HealthStatus:
        return self.ready


@pytest.fixture
def health() -> _Switchable:
    return _Switchable()


def _serve(health: HealthCheck, **kwargs: object) -> Iterator[HealthServer]:
    server = HealthServer(health, port=0, host="127.0.0.1", **kwargs)  # type: ignore[arg-type]
    server.start_in_background()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def server(health: _Switchable) -> Iterator[HealthServer]:
    yield from _serve(health)


def _request(
    server: HealthServer,
    path: str,
    method: str = "GET",
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, str], bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
    try:
        connection.request(method, path, headers=headers or {})
        response = connection.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        connection.close()


def _raw(server: HealthServer, payload: bytes, timeout: float = 5.0) -> bytes:
    """Sends bytes on a raw socket and reads until the server closes it."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=timeout) as sock:
        sock.sendall(payload)
        chunks = []
        while True:
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            chunks.append(chunk)
        return b"".join(chunks)


@pytest.mark.parametrize(
    ("status", "code"),
    [(HealthStatus.HEALTHY, 200), (HealthStatus.DEGRADED, 200), (HealthStatus.UNHEALTHY, 503)],
)
def test_status_codes(
    server: HealthServer, health: _Switchable, status: HealthStatus, code: int
) -> None:
    """HEALTHY and DEGRADED answer 200, UNHEALTHY 503, with the document's JSON."""
    health.ready = status
    got, headers, body = _request(server, "/health/ready")
    assert got == code
    document = json.loads(body)
    assert document["status"] == status.value
    assert set(document) >= {"status", "timestamp", "checks"}
    assert headers["content-type"] == "application/json"
    assert headers["cache-control"] == "no-store"


def test_every_endpoint_answers(server: HealthServer, health: _Switchable) -> None:
    """/health, /health/live, /health/ready and /health/startup; liveness ignores readiness."""
    health.ready = HealthStatus.UNHEALTHY
    codes = {
        path: _request(server, path)[0]
        for path in ("/health", "/health/live", "/health/ready", "/health/startup")
    }
    assert codes == {
        "/health": 200,
        "/health/live": 200,
        "/health/ready": 503,
        "/health/startup": 200,
    }
    assert _request(server, "/health/ready?verbose=1")[0] == 503


def test_timestamp_is_rfc3339_utc(server: HealthServer) -> None:
    """``timestamp`` is RFC 3339 in UTC with a Z, close to now."""
    _, _, body = _request(server, "/health")
    stamp = json.loads(body)["timestamp"]
    assert stamp.endswith("Z")
    parsed = datetime.datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=datetime.UTC)
    assert abs(parsed.timestamp() - time.time()) < 5


def test_checks_and_details_in_the_response() -> None:
    """Registered checks appear by name, with details for the failed ones."""
    health = HealthCheck()
    health.add_check("database", lambda: True)
    health.add_check("redis", lambda: HealthStatus.DEGRADED)
    health.add_check("external_api", lambda: False, critical=False)
    for server in _serve(health):
        code, _, body = _request(server, "/health/ready")
    assert code == 200
    document = json.loads(body)
    assert document["status"] == "degraded"
    assert document["checks"] == {
        "database": "healthy",
        "redis": "degraded",
        "external_api": "unhealthy",
    }
    assert document["details"]["external_api"]["output"] == "returned False"
    assert "output" not in document["details"]["database"]


def test_head_is_get_without_a_body() -> None:
    """HEAD answers the same status and headers, Content-Length included, and no body."""
    health = HealthCheck(cache_ttl=60)  # both requests render the same cached result
    health.add_check("db", lambda: False)
    for server in _serve(health):
        get_code, _, get_body = _request(server, "/health/ready")
        head_code, head_headers, head_body = _request(server, "/health/ready", "HEAD")
    assert head_code == get_code == 503
    assert head_body == b""
    assert head_headers["content-length"] == str(len(get_body))
    assert head_headers["cache-control"] == "no-store"


def test_unknown_paths_404_other_methods_405(server: HealthServer) -> None:
    """A path we do not serve is 404 whatever the method; POST on a probe is 405 with Allow."""
    assert _request(server, "/")[0] == 404
    assert _request(server, "/health/")[0] == 404
    assert _request(server, "/metrics", "POST")[0] == 404
    code, headers, _ = _request(server, "/health/ready", "POST")
    assert code == 405
    assert headers["allow"] == "GET, HEAD"
    assert headers["cache-control"] == "no-store"
    assert _request(server, "/health", "DELETE")[0] == 405


@pytest.mark.parametrize(
    ("accept", "ietf"),
    [
        ("application/health+json", True),
        ("application/health+json, application/json;q=0.5", True),
        ("application/json, application/health+json;q=0.5", False),
        ("application/health+json;q=0", False),
        ("*/*", False),
        ("", False),
    ],
)
def test_health_json_negotiation(server: HealthServer, accept: str, ietf: bool) -> None:
    """``application/health+json`` (pass/warn/fail) when the client prefers it."""
    health = server.health_check
    assert isinstance(health, _Switchable)
    health.ready = HealthStatus.DEGRADED
    code, headers, body = _request(server, "/health/ready", headers={"Accept": accept})
    assert code == 200
    document = json.loads(body)
    if ietf:
        assert headers["content-type"] == "application/health+json"
        assert document["status"] == "warn"
    else:
        assert headers["content-type"] == "application/json"
        assert document["status"] == "degraded"


def test_ietf_format_of_checks() -> None:
    """Each check is a list of one entry with status, time, observed duration and output."""
    health = HealthCheck()
    health.add_check("db", lambda: False)
    for server in _serve(health):
        code, _, body = _request(
            server, "/health/ready", headers={"Accept": "application/health+json"}
        )
    assert code == 503
    document = json.loads(body)
    assert document["status"] == "fail"
    (entry,) = document["checks"]["db"]
    assert entry["status"] == "fail"
    assert entry["output"] == "returned False"
    assert entry["observedUnit"] == "ms"
    assert entry["time"].endswith("Z")


def test_keep_alive_and_http_1_0(server: HealthServer) -> None:
    """HTTP/1.1 keeps the connection for several requests; HTTP/1.0 closes after one."""
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
    for _ in range(3):
        connection.request("GET", "/health/live")
        response = connection.getresponse()
        response.read()
        assert response.status == 200
    connection.close()
    reply = _raw(server, b"GET /health/live HTTP/1.0\r\n\r\n")
    assert reply.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"Connection: close\r\n" in reply


def test_readiness_503_during_shutdown_liveness_200(server: HealthServer) -> None:
    """Once a graceful shutdown starts, readiness answers 503 and liveness still 200."""
    graceful_shutdown._shutdown_started.set()
    code, _, body = _request(server, "/health/ready")
    assert code == 503
    assert json.loads(body)["checks"]["shutdown"] == "unhealthy"
    assert _request(server, "/health/live")[0] == 200


def test_a_hanging_check_does_not_hang_the_probe() -> None:
    """A check that never returns: the probe answers 503 within its timeout, then at once."""
    release = threading.Event()
    health = HealthCheck(cache_ttl=0.05)
    health.add_check("stuck", lambda: release.wait(10), timeout=0.6)
    try:
        for server in _serve(health):
            started = time.monotonic()
            code, _, body = _request(server, "/health/ready")
            assert time.monotonic() - started < 2.5
            assert code == 503
            assert "timed out" in json.loads(body)["details"]["stuck"]["output"]
            time.sleep(0.1)
            started = time.monotonic()
            assert _request(server, "/health/ready")[0] == 503
            # not its 0.6 s timeout again (the margin is for a loaded 2-core host)
            assert time.monotonic() - started < 0.5
            assert _request(server, "/health/live")[0] == 200
    finally:
        release.set()


@pytest.mark.parametrize(
    ("payload", "status"),
    [
        (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03garbage\r\n\r\n", b"400"),
        (b"GET /health\r\n\r\n", b"400"),
        (b"GET /health HTTP/2.0\r\n\r\n", b"505"),
        (b"GET /health HTTP/1.1\r\nbad header line\r\n\r\n", b"400"),
        (b"GET /health HTTP/1.1\r\nContent-Length: nope\r\n\r\n", b"400"),
        (b"POST /health HTTP/1.1\r\nContent-Length: 100000\r\n\r\n", b"413"),
        (b"POST /health HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n", b"501"),
    ],
)
def test_malformed_requests_get_an_error_and_are_closed(
    server: HealthServer, payload: bytes, status: bytes
) -> None:
    """Garbage, bad request lines, bad headers and bodies: a 4xx/5xx, then the server closes."""
    reply = _raw(server, payload)
    assert reply.startswith(b"HTTP/1.1 " + status), reply[:80]
    assert b"Connection: close\r\n" in reply
    assert _request(server, "/health/live")[0] == 200


def _send_quietly(sock: socket.socket, payload: bytes) -> None:
    """Sends what the peer accepts; a reset or broken pipe ends it quietly."""
    with contextlib.suppress(OSError):
        sock.sendall(payload)


def test_a_huge_header_is_refused_with_431() -> None:
    """A 1 MB header never gets buffered: 431 once the head passes max_header_bytes."""
    for server in _serve(HealthCheck()):
        payload = b"GET /health HTTP/1.1\r\nX-Big: " + b"a" * 1_000_000 + b"\r\n\r\n"
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
            # Send from a thread and read here: with small socket buffers the send
            # blocks until the server closes, and the answer must be read before.
            sender = threading.Thread(target=_send_quietly, args=(sock, payload))
            sender.start()
            reply = b""
            with contextlib.suppress(ConnectionResetError):
                while chunk := sock.recv(65536):
                    reply += chunk
            sender.join(5)
        assert reply.startswith(b"HTTP/1.1 431"), reply[:80]
        assert _request(server, "/health/live")[0] == 200


def test_a_half_request_is_dropped_at_the_header_deadline() -> None:
    """A client that sends half a request and waits gets 408 and is closed after header_timeout."""
    for server in _serve(HealthCheck(), header_timeout=0.3):
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
            started = time.monotonic()
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n")
            reply = sock.recv(65536)
            assert sock.recv(65536) == b""
            elapsed = time.monotonic() - started
        assert reply.startswith(b"HTTP/1.1 408")
        assert 0.25 <= elapsed < 2.0
        # A silent client that never sends a byte is dropped too.
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
            assert sock.recv(65536).startswith(b"HTTP/1.1 408")
        assert _request(server, "/health/live")[0] == 200


def test_a_trickling_client_is_dropped_at_the_header_deadline() -> None:
    """A byte every 50 ms never resets the deadline: the head must be complete in time."""
    for server in _serve(HealthCheck(), header_timeout=0.3):
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
            started = time.monotonic()
            closed_after = None
            for byte in b"GET /health HTTP/1.1\r\nX-Slow: " + b"a" * 100:
                try:
                    sock.sendall(bytes([byte]))
                except (BrokenPipeError, ConnectionResetError):
                    closed_after = time.monotonic() - started
                    break
                time.sleep(0.05)
                sock.setblocking(False)
                try:
                    if sock.recv(65536).startswith(b"HTTP/1.1 408"):
                        closed_after = time.monotonic() - started
                        break
                except BlockingIOError:
                    pass
                finally:
                    sock.setblocking(True)
        assert closed_after is not None
        assert 0.25 <= closed_after < 1.5


def test_idle_keep_alive_connections_close_after_keepalive_timeout() -> None:
    """A keep-alive connection that stays idle is closed without a response."""
    for server in _serve(HealthCheck(), keepalive_timeout=0.2):
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
            sock.sendall(b"GET /health/live HTTP/1.1\r\n\r\n")
            first = sock.recv(65536)
            assert first.startswith(b"HTTP/1.1 200")
            started = time.monotonic()
            assert sock.recv(65536) == b""
            assert 0.15 <= time.monotonic() - started < 2.0


def test_max_connections_evicts_the_oldest_idle_connection() -> None:
    """At the limit, a new connection closes the longest-idle keep-alive one."""
    for server in _serve(HealthCheck(), max_connections=2):
        first = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
        second = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
        for connection in (first, second):
            connection.request("GET", "/health/live")
            connection.getresponse().read()
        time.sleep(0.05)
        code, _, _ = _request(server, "/health/live")
        assert code == 200
        assert server.evicted_connections == 1
        assert server.refused_connections == 0
        assert first.sock is not None
        assert first.sock.recv(10) == b""  # the oldest idle one was closed
        first.close()
        second.close()


def test_max_connections_refuses_when_none_is_idle() -> None:
    """At the limit with every connection mid-request, the new one is closed at once."""
    for server in _serve(HealthCheck(), max_connections=2, header_timeout=2.0):
        busy = [socket.create_connection(("127.0.0.1", server.port), timeout=5) for _ in range(2)]
        for sock in busy:
            sock.sendall(b"GET /health HTTP/1.1\r\n")  # half a request: not idle
        time.sleep(0.05)
        with (
            socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock,
            contextlib.suppress(ConnectionResetError),
        ):
            assert sock.recv(100) == b""
        assert server.refused_connections == 1
        for sock in busy:
            sock.close()


def test_many_slow_clients_spawn_no_threads() -> None:
    """120 half-open clients past max_connections: no thread per connection, probes answer."""
    for server in _serve(HealthCheck(), max_connections=50, header_timeout=5.0):
        before = threading.active_count()
        clients = []
        try:
            for _ in range(120):
                sock = socket.create_connection(("127.0.0.1", server.port), timeout=5)
                sock.sendall(b"GET /health HTTP/1.1\r\n")
                clients.append(sock)
            assert threading.active_count() <= before
            assert len(server._connections) <= 50
        finally:
            for sock in clients:
                sock.close()
        deadline = time.monotonic() + 2
        while True:
            try:
                assert _request(server, "/health/live")[0] == 200
                break
            except (ConnectionError, http.client.RemoteDisconnected):
                assert time.monotonic() < deadline
                time.sleep(0.02)


def test_asyncio_form_serves_on_the_running_loop() -> None:
    """``await server.start()`` serves on the application's loop; async checks run there."""
    loops: list[asyncio.AbstractEventLoop] = []

    async def check() -> bool:
        loops.append(asyncio.get_running_loop())
        return True

    async def main() -> tuple[int, int]:
        health = HealthCheck()
        health.add_check("loop", check)
        async with HealthServer(health, port=0, host="127.0.0.1") as server:
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            writer.write(b"GET /health/ready HTTP/1.1\r\n\r\n")
            status_line = await reader.readline()
            writer.close()
            ready = int(status_line.split()[1])
            return ready, len(loops)

    ready, calls = asyncio.run(main())
    assert ready == 200
    assert calls == 1


def test_start_stop_and_bind_errors() -> None:
    """Port 0 binds a free port; a taken port raises OSError; stop releases the port."""
    server = HealthServer(HealthCheck(), port=0, host="127.0.0.1")
    with pytest.raises(RuntimeError, match="not started"):
        _ = server.port
    server.start_in_background()
    port = server.port
    assert server.url == f"http://127.0.0.1:{port}"
    with pytest.raises(RuntimeError, match="already started"):
        server.start_in_background()
    clash = HealthServer(HealthCheck(), port=port, host="127.0.0.1")
    with pytest.raises(OSError, match="address already in use"):
        clash.start_in_background()
    server.stop()
    assert not server.running
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    again = HealthServer(HealthCheck(), port=port, host="127.0.0.1")
    with again:
        assert _request(again, "/health")[0] == 200


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"port": -1}, ValueError, "port"),
        ({"port": 70000}, ValueError, "port"),
        ({"port": "8080"}, TypeError, "port"),
        ({"host": ""}, TypeError, "host"),
        ({"max_connections": 0}, ValueError, "max_connections"),
        ({"header_timeout": 0}, ValueError, "header_timeout"),
        ({"keepalive_timeout": float("nan")}, ValueError, "keepalive_timeout"),
        ({"max_header_bytes": 10}, ValueError, "max_header_bytes"),
        ({"max_body_bytes": -1}, ValueError, "max_body_bytes"),
    ],
)
def test_bad_server_config(kwargs: dict[str, object], error: type[Exception], match: str) -> None:
    """Bad server settings are refused at construction, naming the parameter."""
    with pytest.raises(error, match=match):
        HealthServer(HealthCheck(), **kwargs)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="health_check"):
        HealthServer(object())  # type: ignore[arg-type]


def test_serve_forever_returns_on_aclose_and_propagates_cancellation() -> None:
    """``aclose()`` ends ``serve_forever()`` normally; cancelling it from outside cancels it."""

    async def main() -> None:
        server = HealthServer(HealthCheck(), port=0, host="127.0.0.1")
        serving = asyncio.create_task(server.serve_forever())
        await asyncio.sleep(0.05)
        await server.aclose()
        await asyncio.wait_for(serving, 2)
        other = HealthServer(HealthCheck(), port=0, host="127.0.0.1")
        serving = asyncio.create_task(other.serve_forever())
        await asyncio.sleep(0.05)
        serving.cancel()
        with pytest.raises(asyncio.CancelledError):
            await serving
        await other.aclose()

    asyncio.run(main())


def test_any_object_with_the_three_probe_methods_is_served() -> None:
    """The protocol: an object with check(), liveness() and readiness() needs no base class."""

    class Plain:
        def check(self) -> HealthStatus:
            return HealthStatus.DEGRADED

        def liveness(self) -> HealthStatus:
            return HealthStatus.HEALTHY

        def readiness(self) -> HealthStatus:
            return HealthStatus.UNHEALTHY

    for server in _serve(Plain()):  # type: ignore[arg-type]
        codes = {p: _request(server, p)[0] for p in ("/health", "/health/live", "/health/ready")}
        assert json.loads(_request(server, "/health")[2])["status"] == "degraded"
    assert codes == {"/health": 200, "/health/live": 200, "/health/ready": 503}


def test_pipelined_requests_are_answered_in_order(server: HealthServer) -> None:
    """Two requests in one packet: two answers, in order, on the same connection."""
    reply = _raw(
        server,
        b"GET /health/live HTTP/1.1\r\n\r\nGET /nope HTTP/1.1\r\nConnection: close\r\n\r\n",
    )
    assert reply.startswith(b"HTTP/1.1 200 OK\r\n")
    assert reply.count(b"HTTP/1.1 ") == 2
    assert b"HTTP/1.1 404 Not Found\r\n" in reply


def test_stop_answers_the_request_in_flight_then_closes() -> None:
    """stop(grace=...) stops listening but lets a request in flight get its answer."""

    class Slow(HealthCheck):
        def readiness(self) -> HealthStatus:
            time.sleep(0.3)
            return HealthStatus.HEALTHY

    server = HealthServer(Slow(cache_ttl=0), port=0, host="127.0.0.1")
    server.start_in_background()
    port = server.port
    answers: list[tuple[int, dict[str, str]]] = []

    def ask() -> None:
        code, headers, _ = _request(server, "/health/ready")
        answers.append((code, headers))

    client = threading.Thread(target=ask)
    client.start()
    time.sleep(0.1)
    stopping = time.monotonic()
    server.stop(grace=2.0)
    client.join(5)
    assert time.monotonic() - stopping < 1.5
    assert answers
    assert answers[0][0] == 200
    assert answers[0][1]["connection"] == "close"
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=1).close()

"""``HealthServer``: the HTTP probe server (``/health``, ``/health/live``,
``/health/ready``, ``/health/startup``).

One asyncio server, never a thread per connection: ``start_in_background()``
runs it on its own event loop in one daemon thread, ``await server.start()``
serves on the application's running loop. Every connection is bounded: the
request head must arrive within ``header_timeout`` and fit in
``max_header_bytes``, a body (probes send none) is limited to
``max_body_bytes``, an idle keep-alive connection is closed after
``keepalive_timeout``, and at most ``max_connections`` are open at once (past
that, the oldest idle keep-alive connection is closed to make room; when none
is idle, the new connection is closed at once).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
import time
import weakref
from email.utils import formatdate
from typing import Any, Final

from shared import _validation
from shared.health.health_check import (
    CheckResult,
    HealthCheck,
    HealthCheckProtocol,
    HealthReport,
    Probe,
    as_health_check,
)

__all__ = ["HealthServer", "render_report"]

logger = logging.getLogger("shared.health")

ROUTES: Final[dict[str, Probe]] = {
    "/health": "health",
    "/health/live": "liveness",
    "/health/ready": "readiness",
    "/health/startup": "startup",
}
_REASONS: Final = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    413: "Content Too Large",
    431: "Request Header Fields Too Large",
    501: "Not Implemented",
    503: "Service Unavailable",
    505: "HTTP Version Not Supported",
}
_MAX_HEADERS: Final = 100
_JSON: Final = "application/json"
_HEALTH_JSON: Final = "application/health+json"


def _rfc3339(timestamp: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(timestamp))


def render_report(report: HealthReport, *, ietf: bool = False) -> dict[str, Any]:
    """The JSON document for a report: the design document's format, or the IETF draft's.

    The document's format: ``status``, ``timestamp`` (RFC 3339, UTC) and
    ``checks`` (name -> status), plus ``details`` (name -> status, duration in
    ms, RFC 3339 time and, when not healthy, ``output``). The IETF format
    (``application/health+json``, draft-inadarei-api-health-check) maps
    healthy/degraded/unhealthy to pass/warn/fail.
    """
    if ietf:
        checks: dict[str, Any] = {}
        for name, result in report.checks.items():
            entry: dict[str, Any] = {
                "status": result.status.ietf_status,
                "time": _rfc3339(result.observed_at),
                "observedValue": round(result.duration * 1000.0, 3),
                "observedUnit": "ms",
            }
            if result.output is not None:
                entry["output"] = result.output
            checks[name] = [entry]
        document: dict[str, Any] = {"status": report.status.ietf_status}
        if checks:
            document["checks"] = checks
        return document
    return {
        "status": report.status.value,
        "timestamp": _rfc3339(report.timestamp),
        "checks": {name: result.status.value for name, result in report.checks.items()},
        "details": {name: _detail(result) for name, result in report.checks.items()},
    }


def _detail(result: CheckResult) -> dict[str, Any]:
    detail: dict[str, Any] = {
        "status": result.status.value,
        "duration_ms": round(result.duration * 1000.0, 3),
        "time": _rfc3339(result.observed_at),
    }
    if result.output is not None:
        detail["output"] = result.output
    return detail


def _wants_health_json(accept: str) -> bool:
    """True when the Accept header prefers ``application/health+json`` to plain JSON."""
    best_health = 0.0
    best_other = 0.0
    for item in accept.split(","):
        media, _, params = item.partition(";")
        media = media.strip().lower()
        quality = 1.0
        for param in params.split(";"):
            key, _, value = param.partition("=")
            if key.strip().lower() == "q":
                try:
                    quality = float(value.strip())
                except ValueError:
                    quality = 0.0
        if media == _HEALTH_JSON:
            best_health = max(best_health, quality)
        elif media in (_JSON, "application/*", "*/*"):
            best_other = max(best_other, quality)
    return best_health > 0.0 and best_health >= best_other


class _HttpError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class _Connection:
    """One client connection; ``deadline`` (monotonic, 0 for none) is enforced by the reaper."""

    __slots__ = ("deadline", "idle", "idle_since", "task", "timed_out", "waiting_first", "writer")

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self.writer = writer
        self.task = asyncio.current_task()
        self.idle = False
        self.idle_since = 0.0
        self.deadline = 0.0
        self.timed_out = False
        self.waiting_first = True


class HealthServer:
    """Serves a ``HealthCheck`` over HTTP/1.1 for Kubernetes probes and load balancers.

    ``GET`` or ``HEAD`` on ``/health`` (``check()``), ``/health/live``
    (``liveness()``), ``/health/ready`` (``readiness()``) and
    ``/health/startup`` (``startup()``): 200 for HEALTHY and DEGRADED, 503 for
    UNHEALTHY, with ``Cache-Control: no-store``. Unknown paths answer 404,
    other methods 405.

    Args:
        health_check: the ``HealthCheck`` to serve (or any object with
            ``check()``, ``liveness()`` and ``readiness()``).
        port: TCP port (default 8080; 0 picks a free one, see ``port``).
        host: address to bind (default ``"0.0.0.0"``: every IPv4 interface,
            which the kubelet's probes to the pod IP need; ``"::"`` for IPv6).
        max_connections: open connections at once (default 100).
        header_timeout: seconds for a request's head to arrive (default 5).
        keepalive_timeout: seconds an idle keep-alive connection is kept (default 5).
        max_header_bytes: size limit of a request head (default 8 KiB).
        max_body_bytes: size limit of a request body (default 1 KiB).
    """

    def __init__(
        self,
        health_check: HealthCheck | HealthCheckProtocol,
        port: int = 8080,
        host: str = "0.0.0.0",
        *,
        max_connections: int = 100,
        header_timeout: float = 5.0,
        keepalive_timeout: float = 5.0,
        max_header_bytes: int = 8192,
        max_body_bytes: int = 1024,
    ) -> None:
        self.health_check = as_health_check(health_check)
        self._requested_port = _validation.int_in_range("port", port, 0, 65535)
        if not isinstance(host, str) or not host:
            raise TypeError(f"host must be a non-empty str, got {host!r}")
        self.host = host
        self.max_connections = _validation.int_in_range(
            "max_connections", max_connections, 1, 1 << 20
        )
        self.header_timeout = _validation.positive_finite("header_timeout", header_timeout)
        self.keepalive_timeout = _validation.positive_finite("keepalive_timeout", keepalive_timeout)
        self.max_header_bytes = _validation.int_in_range(
            "max_header_bytes", max_header_bytes, 256, 1 << 24
        )
        self.max_body_bytes = _validation.int_in_range("max_body_bytes", max_body_bytes, 0, 1 << 24)
        self._server: asyncio.Server | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._connections: dict[int, _Connection] = {}
        self._port: int | None = None
        self._date_second = -1
        self._date = b""
        self._reaper: asyncio.Task[None] | None = None
        self._stopped: asyncio.Event | None = None
        self._rendered: dict[tuple[str, bool], tuple[tuple[Any, ...], int, bytes, int]] = {}
        self._accept_cache: dict[str, bool] = {}
        #: Connections closed at the limit (evicted idle ones or refused new ones).
        self.evicted_connections = 0
        self.refused_connections = 0

    # -- lifecycle ------------------------------------------------------------------------

    @property
    def port(self) -> int:
        """The bound port (the one picked by the OS when ``port=0``)."""
        if self._port is None:
            raise RuntimeError("the health server is not started")
        return self._port

    @property
    def url(self) -> str:
        """``http://host:port`` of the running server (loopback when bound to all)."""
        host = {"0.0.0.0": "127.0.0.1", "::": "[::1]", "": "127.0.0.1"}.get(self.host, self.host)
        if ":" in host and not host.startswith("["):
            host = f"[{host}]"
        return f"http://{host}:{self.port}"

    @property
    def running(self) -> bool:
        """Whether it is listening."""
        return self._server is not None

    async def start(self) -> None:
        """Starts serving on the running event loop (the asyncio form) and returns."""
        if self._server is not None:
            raise RuntimeError("the health server is already started")
        self._loop = asyncio.get_running_loop()
        self._stopped = asyncio.Event()
        self._server = await asyncio.start_server(
            self._handle,
            self.host,
            self._requested_port,
            limit=self.max_header_bytes,
            reuse_address=True,
            backlog=min(1024, max(128, self.max_connections)),
        )
        self._port = self._server.sockets[0].getsockname()[1]
        self._reaper = self._loop.create_task(self._reap())
        _RUNNING.add(self)
        _register_shutdown_hook()
        logger.info("health server listening on %s:%d", self.host, self._port)

    async def serve_forever(self) -> None:
        """Starts (if needed) and serves until cancelled or ``aclose()``."""
        if self._server is None:
            await self.start()
        server = self._server
        assert server is not None
        try:
            await server.serve_forever()
        except asyncio.CancelledError:
            if self._server is server:
                raise  # cancelled from outside, not closed by aclose()

    async def aclose(self, grace: float = 1.0) -> None:
        """Stops listening, then closes the connections (the asyncio form of ``stop``).

        Idle keep-alive connections are closed at once; a request being served
        may finish (and is answered with ``Connection: close``) for up to
        ``grace`` seconds, then its connection is closed too.
        """
        seconds = _validation.non_negative_finite("grace", grace)
        server, self._server = self._server, None
        if server is None:
            return
        _RUNNING.discard(self)
        server.close()
        if self._reaper is not None:
            self._reaper.cancel()
            self._reaper = None
        # Connections accepted just before the close start their handler a few loop
        # iterations later (transport, protocol, then the handler task): look again
        # until the grace period ends or, after some idle iterations, none is left.
        deadline = time.monotonic() + seconds
        quiet_iterations = 0
        while True:
            busy = []
            for connection in list(self._connections.values()):
                if connection.idle:
                    connection.writer.transport.abort()
                elif connection.task is not None:
                    busy.append(connection.task)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            if busy:
                quiet_iterations = 0
                await asyncio.wait(busy, timeout=min(0.05, remaining))
            elif not self._connections:
                quiet_iterations += 1
                if quiet_iterations > 8:
                    break
                await asyncio.sleep(0)
            else:
                await asyncio.sleep(0.005)
        tasks = []
        for connection in list(self._connections.values()):
            connection.writer.transport.abort()
            if connection.task is not None:
                tasks.append(connection.task)
        if tasks:
            await asyncio.wait(tasks, timeout=1.0)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(server.wait_closed(), 1.0)
        logger.info("health server on port %s stopped", self._port)
        if self._stopped is not None:
            self._stopped.set()

    def start_in_background(self) -> None:
        """Serves on its own event loop in a daemon thread; returns once it listens.

        Raises the bind error (``OSError``) if the port cannot be bound.
        """
        if self._thread is not None or self._server is not None:
            raise RuntimeError("the health server is already started")
        ready = threading.Event()
        failure: list[BaseException] = []
        loop = asyncio.new_event_loop()

        async def main() -> None:
            try:
                await self.start()
            except BaseException as exc:
                failure.append(exc)
                ready.set()
                return
            ready.set()
            # Serves until aclose() has finished (not merely begun: it still
            # answers the requests in flight on this loop).
            assert self._stopped is not None
            await self._stopped.wait()

        def run() -> None:
            try:
                loop.run_until_complete(main())
            finally:
                # Checks still running (a hung async check) are cancelled, briefly awaited.
                pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
                for task in pending:
                    task.cancel()
                if pending:
                    loop.run_until_complete(asyncio.wait(pending, timeout=1.0))
                with contextlib.suppress(Exception):
                    loop.run_until_complete(loop.shutdown_asyncgens())
                loop.close()

        self._thread = threading.Thread(target=run, name="shared-health-server", daemon=True)
        self._thread.start()
        ready.wait()
        if failure:
            self._thread.join()
            self._thread = None
            raise failure[0]

    def stop(self, timeout: float = 5.0, grace: float = 1.0) -> None:
        """Stops the server from any thread but its loop's (see ``aclose`` for ``grace``).

        Waits at most ``timeout`` seconds for a server started with
        ``start_in_background()`` to finish.
        """
        seconds = _validation.positive_finite("timeout", timeout)
        grace = _validation.non_negative_finite("grace", grace)
        loop, thread = self._loop, self._thread
        if loop is None or self._server is None:
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            raise RuntimeError("stop() would block its own event loop: use `await aclose()`")
        future = asyncio.run_coroutine_threadsafe(self.aclose(grace), loop)
        with contextlib.suppress(Exception):
            future.result(seconds)
        if thread is not None:
            thread.join(max(0.0, seconds))
            self._thread = None

    def __enter__(self) -> HealthServer:
        self.start_in_background()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    async def __aenter__(self) -> HealthServer:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    # -- connections ----------------------------------------------------------------------

    def _admit(self, key: int, writer: asyncio.StreamWriter) -> bool:
        if len(self._connections) >= self.max_connections:
            oldest: tuple[float, int] | None = None
            for other_key, other in self._connections.items():
                if other.idle and (oldest is None or other.idle_since < oldest[0]):
                    oldest = (other.idle_since, other_key)
            if oldest is None:
                self.refused_connections += 1
                writer.transport.abort()
                return False
            victim = self._connections.pop(oldest[1])
            victim.writer.transport.abort()
            self.evicted_connections += 1
        self._connections[key] = _Connection(writer)
        return True

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        key = id(writer)
        if not self._admit(key, writer):
            return
        connection = self._connections[key]
        try:
            first = True
            while True:
                keep_alive = await self._serve_one(reader, writer, connection, first)
                first = False
                if not keep_alive:
                    break
        except (ConnectionError, asyncio.IncompleteReadError, TimeoutError):
            pass
        except Exception:
            logger.exception("health server: unexpected error on a connection")
        finally:
            if self._connections.get(key) is connection:
                del self._connections[key]
            writer.close()

    async def _reap(self) -> None:
        """Closes connections past their deadline (one timer for all, not one per read)."""
        interval = min(0.25, self.header_timeout / 4, self.keepalive_timeout / 4)
        while True:
            await asyncio.sleep(interval)
            now = time.monotonic()
            for connection in list(self._connections.values()):
                if connection.deadline and now > connection.deadline:
                    connection.timed_out = True
                    connection.deadline = 0.0
                    writer = connection.writer
                    try:
                        if connection.waiting_first:
                            # Nothing answered yet on this connection: say why it is closed.
                            writer.write(self._error_bytes(408, "request not received in time"))
                        writer.close()
                    except Exception:  # never let one connection stop the reaper
                        writer.transport.abort()

    async def _serve_one(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        connection: _Connection,
        first: bool,
    ) -> bool:
        # Between keep-alive requests a connection is idle: it may be closed to make
        # room (``max_connections``) and waits at most ``keepalive_timeout``.
        now = time.monotonic()
        connection.idle = not first
        connection.idle_since = now
        connection.deadline = now + (self.header_timeout if first else self.keepalive_timeout)
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.LimitOverrunError:
            connection.deadline = 0.0
            self._send_error(writer, 431, "request head too large")
            return False
        except asyncio.IncompleteReadError as exc:
            if exc.partial.strip() and not connection.timed_out:
                self._send_error(writer, 400, "incomplete request")
            return False
        finally:
            connection.idle = False
        try:
            method, target, version, headers = self._parse(head)
        except _HttpError as exc:
            connection.deadline = 0.0
            self._send_error(writer, exc.status, str(exc))
            return False
        keep_alive = self._keep_alive(version, headers) if headers else version == "HTTP/1.1"
        if self._server is None:
            keep_alive = False  # closing: answer this request, then close
        if headers:
            if "transfer-encoding" in headers:
                self._send_error(writer, 501, "request bodies with a transfer coding")
                return False
            length_text = headers.get("content-length", "0")
            if not length_text.isdigit() or len(length_text) > 12:
                self._send_error(writer, 400, "invalid Content-Length")
                return False
            length = int(length_text)
            if length > self.max_body_bytes:
                self._send_error(writer, 413, "request body too large")
                return False
            if length:
                try:
                    await reader.readexactly(length)
                except asyncio.IncompleteReadError:
                    if not connection.timed_out:
                        self._send_error(writer, 400, "incomplete request body")
                    return False
        connection.deadline = 0.0
        connection.waiting_first = False
        path = target.split("?", 1)[0]
        probe = ROUTES.get(path)
        if probe is None:
            self._write(writer, 404, b'{"error":"not found"}', _JSON, method, keep_alive)
            return keep_alive
        if method not in ("GET", "HEAD"):
            self._write(
                writer,
                405,
                b'{"error":"method not allowed"}',
                _JSON,
                method,
                keep_alive,
                extra=b"Allow: GET, HEAD\r\n",
            )
            return keep_alive
        report = await self.health_check.evaluate(probe)
        if self._server is None:
            keep_alive = False  # stopped while this request was evaluated
        accept = headers.get("accept", "") if headers else ""
        ietf = self._accept_cache.get(accept)
        if ietf is None:
            ietf = _wants_health_json(accept)
            if len(self._accept_cache) < 64:
                self._accept_cache[accept] = ietf
        status, body = self._render(probe, report, ietf)
        self._write(writer, status, body, _HEALTH_JSON if ietf else _JSON, method, keep_alive)
        if writer.transport.get_write_buffer_size() > 65536:
            # A client that does not read: bounded by the header deadline.
            connection.deadline = time.monotonic() + self.header_timeout
            await writer.drain()
            connection.deadline = 0.0
        return keep_alive

    def _render(self, probe: str, report: HealthReport, ietf: bool) -> tuple[int, bytes]:
        """The JSON body of a report, reused while the same results are served in one second."""
        results = tuple(report.checks.values())
        second = int(report.timestamp)
        key = (probe, ietf)
        cached = self._rendered.get(key)
        if (
            cached is not None
            and cached[1] == second
            and len(cached[0]) == len(results) + 1
            and cached[0][0] is report.status
            and all(a is b for a, b in zip(cached[0][1:], results, strict=True))
        ):
            return cached[3], cached[2]
        body = json.dumps(render_report(report, ietf=ietf), separators=(",", ":")).encode()
        status = report.status.http_status
        self._rendered[key] = ((report.status, *results), second, body, status)
        return status, body

    @staticmethod
    def _parse(head: bytes) -> tuple[str, str, str, dict[str, str]]:
        try:
            text = head.decode("latin-1")
        except UnicodeDecodeError:  # pragma: no cover - latin-1 decodes every byte
            raise _HttpError(400, "undecodable request") from None
        lines = text.split("\r\n")
        parts = lines[0].split(" ")
        if len(parts) != 3 or not parts[0].isalpha() or not parts[0].isupper():
            raise _HttpError(400, "malformed request line")
        method, target, version = parts
        if not version.startswith("HTTP/1."):
            if version.startswith("HTTP/"):
                raise _HttpError(505, "only HTTP/1.0 and HTTP/1.1 are served")
            raise _HttpError(400, "malformed request line")
        if version not in ("HTTP/1.0", "HTTP/1.1"):
            raise _HttpError(505, "only HTTP/1.0 and HTTP/1.1 are served")
        if not target.startswith("/") and not target.startswith("http"):
            raise _HttpError(400, "malformed request target")
        if target.startswith("http"):
            # absolute-form: keep only the path
            after = target.split("//", 1)[-1]
            target = "/" + after.split("/", 1)[1] if "/" in after else "/"
        headers: dict[str, str] = {}
        count = 0
        for line in lines[1:]:
            if not line:
                continue
            count += 1
            if count > _MAX_HEADERS:
                raise _HttpError(431, "too many header fields")
            name, sep, value = line.partition(":")
            if not sep or not name or name != name.strip() or " " in name:
                raise _HttpError(400, "malformed header field")
            lower = name.lower()
            value = value.strip()
            if lower in headers:
                if lower in ("content-length", "transfer-encoding", "host"):
                    raise _HttpError(400, f"repeated {name} header")
                headers[lower] += ", " + value
            else:
                headers[lower] = value
        return method, target, version, headers

    @staticmethod
    def _keep_alive(version: str, headers: dict[str, str]) -> bool:
        tokens = {t.strip().lower() for t in headers.get("connection", "").split(",")}
        if version == "HTTP/1.0":
            return "keep-alive" in tokens
        return "close" not in tokens

    def _date_header(self) -> bytes:
        now = int(time.time())
        if now != self._date_second:
            self._date_second = now
            self._date = f"Date: {formatdate(now, usegmt=True)}\r\n".encode("ascii")
        return self._date

    def _write(
        self,
        writer: asyncio.StreamWriter,
        status: int,
        body: bytes,
        content_type: str,
        method: str,
        keep_alive: bool,
        extra: bytes = b"",
    ) -> None:
        head = _HEADS.get((status, content_type))
        if head is None:
            head = (
                f"HTTP/1.1 {status} {_REASONS[status]}\r\n"
                f"Content-Type: {content_type}\r\n"
                "Cache-Control: no-store\r\n"
            ).encode("ascii")
            _HEADS[(status, content_type)] = head
        writer.write(
            b"".join(
                (
                    head,
                    b"Content-Length: %d\r\n" % len(body),
                    self._date_header(),
                    b"" if keep_alive else b"Connection: close\r\n",
                    extra,
                    b"\r\n",
                    b"" if method == "HEAD" else body,
                )
            )
        )

    def _error_bytes(self, status: int, message: str) -> bytes:
        body = json.dumps({"error": message}).encode()
        return (
            (
                f"HTTP/1.1 {status} {_REASONS[status]}\r\n"
                f"Content-Type: {_JSON}\r\nCache-Control: no-store\r\n"
                f"Content-Length: {len(body)}\r\n"
            ).encode("ascii")
            + self._date_header()
            + b"Connection: close\r\n\r\n"
            + body
        )

    def _send_error(self, writer: asyncio.StreamWriter, status: int, message: str) -> None:
        with contextlib.suppress(Exception):
            writer.write(self._error_bytes(status, message))


_HEADS: dict[tuple[int, str], bytes] = {}

# Servers that listen now: a graceful shutdown stops them last (after the handlers
# and the telemetry flush), so liveness answers until the end and a probe in
# flight gets its answer rather than a reset when the process exits.
_RUNNING: weakref.WeakSet[HealthServer] = weakref.WeakSet()
_hook_registered = False


def _stop_running_servers() -> None:
    for server in list(_RUNNING):
        server.stop(timeout=1.5, grace=0.5)


def _register_shutdown_hook() -> None:
    global _hook_registered
    if not _hook_registered:
        from shared.lifecycle.graceful_shutdown import add_shutdown_hook

        add_shutdown_hook("shared.health servers", _stop_running_servers, last=True)
        _hook_registered = True

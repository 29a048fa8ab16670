"""The Prometheus ``/metrics`` endpoint (the document's "Prometheus Metrics" section).

``MetricsServer(host, port).start_in_background()`` serves the
application's ``prometheus_client`` metrics, and the ``shared_*`` families of
every breaker, limiter, retry, timeout and idempotency store, from a small
asyncio HTTP/1.1 server on a thread of its own; ``await server.start()`` runs
it on the caller's event loop instead. Scrapes get the Prometheus text format,
or OpenMetrics when the ``Accept`` header asks for it, gzipped when
``Accept-Encoding`` allows it.

Slow and malformed clients cannot hold the server: the request head must
arrive within ``header_timeout`` and fit in ``max_header_bytes``, an idle
keep-alive connection is closed after ``keepalive_timeout``, a response must
be taken within ``write_timeout``, and at most ``max_connections`` are
served at once (others are closed at once).
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import logging
import threading
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client.exposition import choose_encoder

from shared import _validation
from shared.observability.resilience_collector import register_resilience_metrics

__all__ = ["MetricsServer"]

_log = logging.getLogger(__name__)

_REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    413: "Content Too Large",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    503: "Service Unavailable",
}

# Below this size, gzip costs more than it saves.
_GZIP_MIN_BYTES = 1024


class _BadRequestError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _accepts_gzip(header: str) -> bool:
    """Whether ``Accept-Encoding`` allows gzip (``gzip`` or ``*`` with a q above 0)."""
    for part in header.split(","):
        coding, _, params = part.strip().partition(";")
        coding = coding.strip().lower()
        if coding not in ("gzip", "*"):
            continue
        q = 1.0
        for param in params.split(";"):
            key, _, value = param.strip().partition("=")
            if key.strip().lower() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        if q > 0.0:
            return True
    return False


class MetricsServer:
    """Serves ``/metrics`` for Prometheus.

    Args:
        host: the address to bind (the document's examples use ``"0.0.0.0"``).
        port: the port to bind (9090 by default; 0 picks a free one, see ``port``).

    Keyword-only (beyond the document):
        registry: the ``prometheus_client`` registry to serve (the default one).
        resilience_metrics: add the ``shared_*`` families to ``registry`` when
            starting (default True).
        path: the URL path of the metrics (default ``"/metrics"``).
        max_connections: connections served at once; more are closed at once.
        header_timeout: seconds the request line and headers may take to arrive.
        keepalive_timeout: seconds an idle keep-alive connection stays open.
        write_timeout: seconds a client may take to read a response.
        max_header_bytes: the largest request head accepted (431 beyond).

    Invalid values raise ``ValueError`` or ``TypeError`` naming the parameter.
    """

    def __init__(
        self,
        host: str = "0.0.0.0",
        port: int = 9090,
        *,
        registry: CollectorRegistry = REGISTRY,
        resilience_metrics: bool = True,
        path: str = "/metrics",
        max_connections: int = 100,
        header_timeout: float = 5.0,
        keepalive_timeout: float = 30.0,
        write_timeout: float = 10.0,
        max_header_bytes: int = 16384,
    ) -> None:
        if not isinstance(host, str) or not host:
            raise TypeError(f"host must be a non-empty str, got {host!r}")
        self.host = host
        self._requested_port = _validation.int_in_range("port", port, 0, 65535)
        if not isinstance(registry, CollectorRegistry):
            raise TypeError(
                f"registry must be a prometheus_client CollectorRegistry, "
                f"got {type(registry).__name__}"
            )
        self.registry = registry
        if not isinstance(resilience_metrics, bool):
            raise TypeError(
                f"resilience_metrics must be a bool, got {type(resilience_metrics).__name__}"
            )
        self.resilience_metrics = resilience_metrics
        if not isinstance(path, str) or not path.startswith("/"):
            raise ValueError(f"path must be a str starting with '/', got {path!r}")
        self.path = path
        self.max_connections = _validation.int_in_range(
            "max_connections", max_connections, 1, 1_000_000
        )
        self.header_timeout = _validation.positive_finite("header_timeout", header_timeout)
        self.keepalive_timeout = _validation.positive_finite("keepalive_timeout", keepalive_timeout)
        self.write_timeout = _validation.positive_finite("write_timeout", write_timeout)
        self.max_header_bytes = _validation.int_in_range(
            "max_header_bytes", max_header_bytes, 256, 1 << 20
        )
        self._server: asyncio.Server | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._connections: set[asyncio.Task[Any]] = set()
        self._port: int | None = None
        self._lock = threading.Lock()
        # One scrape is generated at a time (it holds the GIL anyway).
        self._render_lock: asyncio.Lock | None = None

    # -- lifecycle ---------------------------------------------------------------------

    @property
    def port(self) -> int:
        """The port bound (the one chosen when ``port=0``); the requested one before start."""
        return self._requested_port if self._port is None else self._port

    @property
    def url(self) -> str:
        """The metrics URL (with ``127.0.0.1`` for a wildcard host)."""
        host = "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host
        if ":" in host:
            host = f"[{host}]" if host != "::" else "[::1]"
        return f"http://{host}:{self.port}{self.path}"

    @property
    def running(self) -> bool:
        """Whether the server is accepting connections."""
        return self._server is not None

    async def start(self) -> None:
        """Starts serving on the running event loop (returns once bound)."""
        if self._server is not None:
            raise RuntimeError("the metrics server is already running")
        if self.resilience_metrics:
            register_resilience_metrics(self.registry)
        self._render_lock = asyncio.Lock()
        server = await asyncio.start_server(
            self._handle,
            self.host,
            self._requested_port,
            limit=self.max_header_bytes + 2,
            reuse_address=True,
        )
        self._loop = asyncio.get_running_loop()
        self._server = server
        self._port = int(server.sockets[0].getsockname()[1])
        _log.info("metrics server listening on %s", self.url)

    async def stop_async(self) -> None:
        """Stops accepting, closes every connection and waits for them."""
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        tasks = list(self._connections)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(server.wait_closed(), 1.0)

    async def __aenter__(self) -> MetricsServer:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop_async()

    def start_in_background(self) -> MetricsServer:
        """Serves from a daemon thread with an event loop of its own; returns once bound.

        Raises ``OSError`` when the address cannot be bound (in use, ...).
        """
        with self._lock:
            if self._thread is not None:
                raise RuntimeError("the metrics server is already running")
            ready = threading.Event()
            failure: list[BaseException] = []
            loop = asyncio.new_event_loop()

            def run() -> None:
                asyncio.set_event_loop(loop)
                try:
                    loop.run_until_complete(self.start())
                except BaseException as error:
                    failure.append(error)
                    ready.set()
                    loop.close()
                    return
                ready.set()
                try:
                    loop.run_forever()
                finally:
                    loop.run_until_complete(self.stop_async())
                    loop.run_until_complete(loop.shutdown_asyncgens())
                    loop.run_until_complete(loop.shutdown_default_executor())
                    loop.close()

            thread = threading.Thread(target=run, name="shared-metrics-server", daemon=True)
            thread.start()
            ready.wait()
            if failure:
                thread.join()
                raise failure[0]
            self._thread = thread
            return self

    def stop(self, timeout: float = 5.0) -> None:
        """Stops the background server (a no-op if it is not running)."""
        _validation.positive_finite("timeout", timeout)
        with self._lock:
            thread, self._thread = self._thread, None
            loop = self._loop
            if thread is None or loop is None:
                return
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout)

    def __enter__(self) -> MetricsServer:
        return self.start_in_background()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"MetricsServer(host={self.host!r}, port={self.port}, {state})"

    # -- HTTP ----------------------------------------------------------------------------

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is None or len(self._connections) >= self.max_connections:
            writer.transport.abort()
            return
        self._connections.add(task)
        try:
            await self._serve(reader, writer)
        except (asyncio.CancelledError, ConnectionError, TimeoutError, asyncio.IncompleteReadError):
            pass
        except Exception:
            _log.exception("metrics server: unexpected error on a connection")
        finally:
            self._connections.discard(task)
            writer.transport.abort()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        first = True
        while True:
            # A request's head must arrive within header_timeout; on a kept-alive
            # connection the next request may take keepalive_timeout to start.
            try:
                if first:
                    head = await asyncio.wait_for(self._read_head(reader), self.header_timeout)
                else:
                    head = await self._next_head(reader)
            except TimeoutError:
                if first:
                    await self._respond(writer, 408, b"request timeout\n", close=True)
                return
            except _BadRequestError as bad:
                await self._respond(writer, bad.status, f"{bad}\n".encode(), close=True)
                return
            if head is None:
                return  # the client closed the connection
            first = False
            try:
                method, target, keep_alive, headers = self._parse(head)
            except _BadRequestError as bad:
                await self._respond(writer, bad.status, f"{bad}\n".encode(), close=True)
                return
            await self._answer(writer, method, target, headers, keep_alive)
            if not keep_alive:
                return

    async def _next_head(self, reader: asyncio.StreamReader) -> bytes | None:
        try:
            start = await asyncio.wait_for(reader.readexactly(1), self.keepalive_timeout)
        except asyncio.IncompleteReadError:
            return None  # the client closed the idle connection
        except TimeoutError:
            return None  # idle for keepalive_timeout: close quietly
        rest = await asyncio.wait_for(self._read_head(reader), self.header_timeout)
        if rest is None:
            raise _BadRequestError(400, "incomplete request")
        return start + rest

    async def _read_head(self, reader: asyncio.StreamReader) -> bytes | None:
        try:
            return await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError as partial:
            if not partial.partial.strip():
                return None
            raise _BadRequestError(400, "incomplete request") from None
        except asyncio.LimitOverrunError:
            raise _BadRequestError(431, "request head too large") from None

    def _parse(self, head: bytes) -> tuple[str, str, bool, dict[str, str]]:
        try:
            text = head.decode("latin-1")
        except UnicodeDecodeError:  # pragma: no cover (latin-1 decodes every byte)
            raise _BadRequestError(400, "bad request") from None
        lines = text.split("\r\n")
        parts = lines[0].split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
            raise _BadRequestError(400, "bad request line")
        method, target, version = parts
        headers: dict[str, str] = {}
        for line in lines[1:]:
            if not line:
                continue
            name, sep, value = line.partition(":")
            if not sep or not name or name != name.strip():
                raise _BadRequestError(400, "bad header line")
            headers[name.lower()] = value.strip()
        if "transfer-encoding" in headers:
            raise _BadRequestError(400, "request bodies are not accepted")
        length = headers.get("content-length", "0")
        if not length.isdigit() or int(length) != 0:
            raise _BadRequestError(413, "request bodies are not accepted")
        connection = headers.get("connection", "").lower()
        keep_alive = (version == "HTTP/1.1" and "close" not in connection) or (
            version == "HTTP/1.0" and "keep-alive" in connection
        )
        return method, target, keep_alive, headers

    async def _answer(
        self,
        writer: asyncio.StreamWriter,
        method: str,
        target: str,
        headers: dict[str, str],
        keep_alive: bool,
    ) -> None:
        path = target.split("?", 1)[0]
        if path != self.path:
            await self._respond(
                writer, 404, b"not found\n", close=not keep_alive, head=method == "HEAD"
            )
            return
        if method not in ("GET", "HEAD"):
            await self._respond(
                writer,
                405,
                b"method not allowed\n",
                close=not keep_alive,
                extra={"Allow": "GET, HEAD"},
            )
            return
        encoder, content_type = choose_encoder(headers.get("accept", ""))
        assert self._render_lock is not None
        try:
            async with self._render_lock:
                body = await asyncio.to_thread(encoder, self.registry)
        except Exception:
            _log.exception("metrics server: collecting the metrics failed")
            await self._respond(writer, 500, b"collecting the metrics failed\n", close=True)
            return
        extra = {"Content-Type": content_type, "Vary": "Accept, Accept-Encoding"}
        if len(body) >= _GZIP_MIN_BYTES and _accepts_gzip(headers.get("accept-encoding", "")):
            body = await asyncio.to_thread(gzip.compress, body, 6)
            extra["Content-Encoding"] = "gzip"
        await self._respond(
            writer, 200, body, close=not keep_alive, extra=extra, head=method == "HEAD"
        )

    async def _respond(
        self,
        writer: asyncio.StreamWriter,
        status: int,
        body: bytes,
        *,
        close: bool,
        extra: dict[str, str] | None = None,
        head: bool = False,
    ) -> None:
        lines = [f"HTTP/1.1 {status} {_REASONS[status]}"]
        fields = {"Content-Type": "text/plain; charset=utf-8", **(extra or {})}
        fields["Content-Length"] = str(len(body))
        fields["Cache-Control"] = "no-store"
        if close:
            fields["Connection"] = "close"
        lines += [f"{name}: {value}" for name, value in fields.items()]
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        if not head:
            writer.write(body)
        await asyncio.wait_for(writer.drain(), self.write_timeout)

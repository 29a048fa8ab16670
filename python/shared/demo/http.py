"""A small asyncio HTTP server for the demo's probes and metrics.

A stand-in until the health and metrics servers are wired in (see
``shared.demo.wiring``): GET or HEAD on a fixed set of paths, one response per
connection, a deadline on reading the request.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

__all__ = ["Response", "SmallHttpServer"]

Response = tuple[int, str, bytes]  # status, content type, body
_REASONS = {200: "OK", 404: "Not Found", 405: "Method Not Allowed", 503: "Service Unavailable"}
_READ_TIMEOUT = 5.0


class SmallHttpServer:
    def __init__(self, routes: dict[str, Callable[[], Response]], host: str, port: int) -> None:
        self.routes = routes
        self.host = host
        self.port = port
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    def url(self, path: str) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host
        return f"http://{host}:{self.port}{path}"

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), _READ_TIMEOUT)
            method, path, *_ = head.split(b"\r\n", 1)[0].decode("latin-1").split(" ")
            route = self.routes.get(path.split("?", 1)[0])
            if method not in ("GET", "HEAD"):
                status, content_type, body = 405, "text/plain", b"method not allowed\n"
            elif route is None:
                status, content_type, body = 404, "text/plain", b"not found\n"
            else:
                status, content_type, body = route()
            header = (
                f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}\r\n"
                f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\n"
                "Cache-Control: no-store\r\nConnection: close\r\n\r\n"
            )
            writer.write(header.encode() + (b"" if method == "HEAD" else body))
            await asyncio.wait_for(writer.drain(), _READ_TIMEOUT)
        except (
            OSError,
            ValueError,
            asyncio.IncompleteReadError,
            asyncio.LimitOverrunError,
            TimeoutError,
        ):
            pass
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

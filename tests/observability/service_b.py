"""Service B of the two-process propagation test: an HTTP service that continues traces.

Usage: python service_b.py OTLP_ENDPOINT. Prints its port, serves ``POST /compile``
(each request in ``continue_trace(headers)`` and a ``@trace_span``), and exits after
one request, flushing its spans (shutdown_tracing) first.
"""

from __future__ import annotations

import sys
from http.server import BaseHTTPRequestHandler, HTTPServer

from shared.observability import TracingConfig, setup_tracing, shutdown_tracing, trace_span
from shared.observability.tracing import continue_trace


@trace_span("compile_strategy", {"service.role": "compiler"})
def compile_strategy(code: bytes) -> bytes:
    return code.upper()


class Handler(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        with continue_trace(dict(self.headers.items())):
            result = compile_strategy(body)
        self.send_response(200)
        self.send_header("Content-Length", str(len(result)))
        self.end_headers()
        self.wfile.write(result)

    def log_message(self, format: str, *args: object) -> None:
        pass


def main() -> None:
    setup_tracing(
        TracingConfig(service_name="tsdl", exporter_type="otlp", otlp_endpoint=sys.argv[1])
    )
    server = HTTPServer(("127.0.0.1", 0), Handler)
    print(server.server_address[1], flush=True)
    server.handle_request()
    server.server_close()
    shutdown_tracing()


if __name__ == "__main__":
    main()

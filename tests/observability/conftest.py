"""Fixtures of the tracing tests: an OTLP/HTTP receiver on loopback, clean tracing state.

The receiver is a small ``http.server`` that accepts ``POST /v1/traces`` and
decodes each request with ``opentelemetry-proto`` (``ExportTraceServiceRequest``),
so the tests check what a collector would receive, byte for byte.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from opentelemetry import trace as otel_trace
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.util._once import Once

from shared.observability import _events, tracing


def _value(any_value: Any) -> Any:
    kind = any_value.WhichOneof("value")
    if kind == "array_value":
        return tuple(_value(v) for v in any_value.array_value.values)
    return getattr(any_value, kind) if kind else None


def _attributes(key_values: Any) -> dict[str, Any]:
    return {kv.key: _value(kv.value) for kv in key_values}


@dataclass
class ReceivedSpan:
    name: str
    trace_id: str
    span_id: str
    parent_span_id: str
    attributes: dict[str, Any]
    resource: dict[str, Any]
    status_code: int
    status_message: str
    events: list[tuple[str, dict[str, Any]]]
    start_ns: int
    end_ns: int


@dataclass
class Receiver:
    endpoint: str
    spans: list[ReceivedSpan] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, path: str, body: bytes) -> None:
        request = ExportTraceServiceRequest()
        request.ParseFromString(body)
        received = [
            ReceivedSpan(
                name=span.name,
                trace_id=span.trace_id.hex(),
                span_id=span.span_id.hex(),
                parent_span_id=span.parent_span_id.hex(),
                attributes=_attributes(span.attributes),
                resource=_attributes(resource_spans.resource.attributes),
                status_code=span.status.code,
                status_message=span.status.message,
                events=[(e.name, _attributes(e.attributes)) for e in span.events],
                start_ns=span.start_time_unix_nano,
                end_ns=span.end_time_unix_nano,
            )
            for resource_spans in request.resource_spans
            for scope_spans in resource_spans.scope_spans
            for span in scope_spans.spans
        ]
        with self.lock:
            self.paths.append(path)
            self.spans.extend(received)

    def named(self, name: str) -> list[ReceivedSpan]:
        with self.lock:
            return [span for span in self.spans if span.name == name]

    def wait_for(self, *names: str, timeout: float = 10.0) -> dict[str, ReceivedSpan]:
        """The one span of each name, once all arrived (fails after ``timeout``)."""
        deadline = time.monotonic() + timeout
        while True:
            found = {name: self.named(name) for name in names}
            if all(found.values()):
                for name, spans in found.items():
                    assert len(spans) == 1, f"{name} was exported {len(spans)} times"
                return {name: spans[0] for name, spans in found.items()}
            if time.monotonic() > deadline:
                raise AssertionError(f"not received: {[n for n, s in found.items() if not s]}")
            time.sleep(0.02)


class _Handler(BaseHTTPRequestHandler):
    receiver: Receiver

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length", "0"))
        body = self.rfile.read(length)
        if self.path != "/v1/traces" or self.headers.get("Content-Type") != (
            "application/x-protobuf"
        ):
            self.send_response(404)
            self.end_headers()
            return
        self.receiver.add(self.path, body)
        payload = ExportTraceServiceResponse().SerializeToString()
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    """An OTLP/HTTP receiver on 127.0.0.1 (a free port)."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.daemon_threads = True
    host, port = server.server_address[:2]
    receiver = Receiver(endpoint=f"http://{host}:{port}")
    handler = type("Handler", (_Handler,), {"receiver": receiver})
    server.RequestHandlerClass = handler
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    yield receiver
    tracing.shutdown_tracing()  # flush into this receiver while it still listens
    server.shutdown()
    server.server_close()
    thread.join(5)


def _reset_otel_global() -> None:
    # OpenTelemetry sets its global provider once per process; its own test
    # utilities reset these two attributes between tests, and so do we.
    otel_trace._TRACER_PROVIDER = None  # type: ignore[attr-defined]
    otel_trace._TRACER_PROVIDER_SET_ONCE = Once()  # type: ignore[attr-defined]


@pytest.fixture(autouse=True)
def clean_tracing(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Every test starts and ends with tracing not set up and no OTEL_* variables."""
    import os

    for name in list(os.environ):
        if name.startswith("OTEL_"):
            monkeypatch.delenv(name)
    tracing.shutdown_tracing()
    _reset_otel_global()
    yield
    tracing.shutdown_tracing()
    _reset_otel_global()
    assert not _events.active

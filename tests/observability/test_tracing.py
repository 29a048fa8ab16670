"""Tracing: configuration, OTLP export to a real receiver, trace_span, propagation, fork."""

from __future__ import annotations

import asyncio
import inspect
import logging
import os
import sys
import time
from typing import Any

import pytest
from opentelemetry import baggage, context
from opentelemetry import trace as otel_trace
from opentelemetry.proto.trace.v1.trace_pb2 import Status

from shared.observability import (
    TracingConfig,
    add_span_attribute,
    add_span_event,
    continue_trace,
    extract_trace_context,
    flush_tracing,
    get_tracer,
    propagate_trace_context,
    setup_tracing,
    shutdown_tracing,
    trace_span,
)
from shared.observability import tracing as tracing_module

from .conftest import Receiver

pytestmark = pytest.mark.backend_independent

ERROR = Status.STATUS_CODE_ERROR
TRACEPARENT_SAMPLED = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
TRACEPARENT_UNSAMPLED = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00"


def _setup(receiver: Receiver, **overrides: Any) -> Any:
    fields: dict[str, Any] = {
        "service_name": "prophet",
        "exporter_type": "otlp",
        "otlp_endpoint": receiver.endpoint,
        "environment": "production",
        "sample_rate": 1.0,
    }
    fields.update(overrides)
    return setup_tracing(TracingConfig(**fields))


# -- configuration ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value", "error"),
    [
        ("service_name", "", ValueError),
        ("service_name", 3, TypeError),
        ("exporter_type", "jaeger", ValueError),
        ("exporter_type", 1, TypeError),
        ("otlp_endpoint", "jaeger:4318", ValueError),
        ("otlp_endpoint", "http://:4318", ValueError),
        ("otlp_endpoint", "http://jaeger:99999", ValueError),
        ("environment", "  ", ValueError),
        ("sample_rate", 1.5, ValueError),
        ("sample_rate", -0.1, ValueError),
        ("sample_rate", float("nan"), ValueError),
        ("sample_rate", True, TypeError),
        ("sample_rate", "1", TypeError),
        ("resilience_events", 1, TypeError),
    ],
)
def test_bad_config_value_names_the_field(field: str, value: Any, error: type) -> None:
    """A bad TracingConfig value raises at construction, naming the field."""
    with pytest.raises(error, match=field):
        TracingConfig(**{field: value})


def test_config_assignment_is_validated_as_in_the_documents_troubleshooting() -> None:
    """config.sample_rate = 1.0 works (the document does it); bad assignments are refused."""
    config = TracingConfig(
        service_name="my-service", exporter_type="otlp", otlp_endpoint="http://jaeger:4318"
    )
    config.sample_rate = 1.0
    assert config.sample_rate == 1.0
    config.sample_rate = 1  # an int becomes a float
    assert isinstance(config.sample_rate, float)
    with pytest.raises(ValueError, match="sample_rate"):
        config.sample_rate = 2.0
    with pytest.raises(ValueError, match="exporter_type"):
        config.exporter_type = "zipkin"
    with pytest.raises(AttributeError):
        config.sample_rat = 1.0  # type: ignore[attr-defined]
    assert config.sample_rate == 1.0


def test_setup_works_on_a_copy_of_the_config(receiver: Receiver) -> None:
    """Changing the config after setup_tracing changes nothing that runs."""
    config = TracingConfig(service_name="prophet", otlp_endpoint=receiver.endpoint, sample_rate=1.0)
    tracer = setup_tracing(config)
    config.sample_rate = 0.0
    assert (
        setup_tracing(
            TracingConfig(service_name="prophet", otlp_endpoint=receiver.endpoint, sample_rate=1.0)
        )
        is tracer
    )
    trace_span("still_sampled")(lambda: None)()
    flush_tracing()
    assert len(receiver.wait_for("still_sampled")) == 1


def _resolve(config: TracingConfig, **environ: str) -> Any:
    return tracing_module._resolve(config, environ)


def test_defaults_without_environment() -> None:
    """Nothing given: unknown_service, OTLP/HTTP to localhost:4318/v1/traces, every trace."""
    resolved = _resolve(TracingConfig())
    assert resolved.service_name == "unknown_service"
    assert resolved.exporter_type == "otlp"
    assert resolved.endpoint == "http://localhost:4318/v1/traces"
    assert resolved.environment is None
    assert resolved.sample_rate == 1.0


def test_environment_fills_what_the_config_leaves_out() -> None:
    """OTEL_* variables apply to the fields left None."""
    resolved = _resolve(
        TracingConfig(),
        OTEL_SERVICE_NAME="tsdl",
        OTEL_EXPORTER_OTLP_ENDPOINT="http://collector:4318/",
        OTEL_RESOURCE_ATTRIBUTES="deployment.environment.name=staging,team=quant",
        OTEL_TRACES_SAMPLER="parentbased_traceidratio",
        OTEL_TRACES_SAMPLER_ARG="0.25",
    )
    assert resolved.service_name == "tsdl"
    assert resolved.endpoint == "http://collector:4318/v1/traces"
    assert resolved.environment == "staging"
    assert resolved.sample_rate == 0.25


def test_config_wins_over_environment() -> None:
    """A value given to TracingConfig wins over its OTEL_* variable."""
    resolved = _resolve(
        TracingConfig(
            service_name="prophet",
            exporter_type="console",
            otlp_endpoint="http://jaeger:4318",
            environment="production",
            sample_rate=0.5,
        ),
        OTEL_SERVICE_NAME="tsdl",
        OTEL_TRACES_EXPORTER="none",
        OTEL_EXPORTER_OTLP_TRACES_ENDPOINT="http://other:4318/v1/traces",
        OTEL_RESOURCE_ATTRIBUTES="deployment.environment.name=staging",
        OTEL_TRACES_SAMPLER="always_off",
    )
    assert resolved.service_name == "prophet"
    assert resolved.exporter_type == "console"
    assert resolved.endpoint == "http://jaeger:4318/v1/traces"
    assert resolved.environment == "production"
    assert resolved.sample_rate == 0.5


def test_signal_specific_endpoint_is_used_as_is() -> None:
    """OTEL_EXPORTER_OTLP_TRACES_ENDPOINT is the full URL; it wins over the generic one."""
    resolved = _resolve(
        TracingConfig(),
        OTEL_EXPORTER_OTLP_TRACES_ENDPOINT="http://collector:4318/custom/traces",
        OTEL_EXPORTER_OTLP_ENDPOINT="http://ignored:4318",
    )
    assert resolved.endpoint == "http://collector:4318/custom/traces"


def test_grpc_protocol_selects_the_grpc_exporter() -> None:
    """OTEL_TRACES_EXPORTER=otlp with protocol grpc means otlp_grpc (endpoint without a path)."""
    resolved = _resolve(
        TracingConfig(),
        OTEL_TRACES_EXPORTER="otlp",
        OTEL_EXPORTER_OTLP_PROTOCOL="grpc",
        OTEL_EXPORTER_OTLP_ENDPOINT="http://collector:4317",
    )
    assert (resolved.exporter_type, resolved.endpoint) == ("otlp_grpc", "http://collector:4317")
    assert _resolve(TracingConfig(exporter_type="otlp_grpc")).endpoint == "http://localhost:4317"


@pytest.mark.parametrize(
    ("environ", "name"),
    [
        ({"OTEL_TRACES_EXPORTER": "zipkin"}, "OTEL_TRACES_EXPORTER"),
        ({"OTEL_TRACES_EXPORTER": "otlp,console"}, "OTEL_TRACES_EXPORTER"),
        ({"OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"}, "OTEL_EXPORTER_OTLP_PROTOCOL"),
        ({"OTEL_TRACES_SAMPLER_ARG": "lots"}, "OTEL_TRACES_SAMPLER_ARG"),
        ({"OTEL_TRACES_SAMPLER_ARG": "2"}, "OTEL_TRACES_SAMPLER_ARG"),
        ({"OTEL_TRACES_SAMPLER": "jaeger_remote"}, "OTEL_TRACES_SAMPLER"),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "collector:4318"}, "OTEL_EXPORTER_OTLP_ENDPOINT"),
    ],
)
def test_bad_environment_names_the_variable(environ: dict[str, str], name: str) -> None:
    """A bad OTEL_* value is refused by setup_tracing, naming the variable."""
    with pytest.raises(ValueError, match=name):
        _resolve(TracingConfig(), **environ)


def test_sdk_disabled_installs_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    """OTEL_SDK_DISABLED=true: setup_tracing returns a no-op tracer and traces nothing."""
    monkeypatch.setenv("OTEL_SDK_DISABLED", "true")
    tracer = setup_tracing(TracingConfig(service_name="prophet"))
    assert isinstance(tracer, otel_trace.NoOpTracer)
    assert not tracing_module.tracing_enabled()


def test_grpc_exporter_builds_or_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    """otlp_grpc uses the gRPC exporter; without the package the error names the extra."""
    resolved = tracing_module._resolve(TracingConfig(exporter_type="otlp_grpc"), {})
    try:
        import opentelemetry.exporter.otlp.proto.grpc.trace_exporter as grpc_exporter
    except ImportError:
        grpc_exporter = None
    if grpc_exporter is not None:
        exporter = tracing_module._make_exporter(resolved)
        assert isinstance(exporter, grpc_exporter.OTLPSpanExporter)
        exporter.shutdown()
    monkeypatch.setitem(sys.modules, "opentelemetry.exporter.otlp.proto.grpc.trace_exporter", None)
    with pytest.raises(ImportError, match=r"shared\[grpc\]"):
        tracing_module._make_exporter(resolved)


def test_console_and_none_exporters() -> None:
    """console builds the SDK's console exporter; none builds no exporter at all."""
    from opentelemetry.sdk.trace.export import ConsoleSpanExporter

    console = tracing_module._resolve(TracingConfig(exporter_type="console"), {})
    assert isinstance(tracing_module._make_exporter(console), ConsoleSpanExporter)
    none = tracing_module._resolve(TracingConfig(exporter_type="none"), {})
    assert tracing_module._make_exporter(none) is None
    setup_tracing(TracingConfig(exporter_type="none"))
    assert tracing_module._installed is not None
    assert tracing_module._installed.exporter is None
    with get_tracer().start_as_current_span("kept_local") as span:
        assert span.is_recording()
        assert "traceparent" in propagate_trace_context()


# -- export over OTLP/HTTP ---------------------------------------------------------------


def test_spans_reach_the_collector_with_names_attributes_status_and_parents(
    receiver: Receiver,
) -> None:
    """The document's example: nested traced calls arrive over OTLP/HTTP, linked."""
    _setup(receiver)

    @trace_span("call_ai_service")
    def call_ai_service() -> str:
        add_span_attribute("request.size", 42)
        add_span_event("validation_complete")
        return "code"

    @trace_span("compile", {"strategy.type": "momentum"})
    def failing() -> None:
        raise ValueError("bad code")

    @trace_span("generate_strategy", {"strategy.type": "momentum", "tags": ["a", "b"]})
    def generate_strategy(user_id: str) -> str:
        with pytest.raises(ValueError, match="bad code"):
            failing()
        return call_ai_service()

    assert generate_strategy("123") == "code"
    assert flush_tracing()
    spans = receiver.wait_for("generate_strategy", "call_ai_service", "compile")
    root, child, failed = (
        spans["generate_strategy"],
        spans["call_ai_service"],
        spans["compile"],
    )
    assert receiver.paths[0] == "/v1/traces"
    assert root.parent_span_id == ""
    assert child.parent_span_id == root.span_id
    assert failed.parent_span_id == root.span_id
    assert child.trace_id == root.trace_id == failed.trace_id
    assert root.attributes == {"strategy.type": "momentum", "tags": ("a", "b")}
    assert child.attributes == {"request.size": 42}
    assert [name for name, _ in child.events] == ["validation_complete"]
    assert failed.status_code == ERROR
    assert failed.status_message == "ValueError: bad code"
    exception_events = [attrs for name, attrs in failed.events if name == "exception"]
    assert exception_events[0]["exception.type"] == "ValueError"
    assert root.status_code == Status.STATUS_CODE_UNSET
    assert root.resource["service.name"] == "prophet"
    assert root.resource["deployment.environment.name"] == "production"


def test_get_tracer_manual_spans_as_in_the_document(receiver: Receiver) -> None:
    """get_tracer(): start_as_current_span, nesting, attributes and events."""
    tracer = _setup(receiver)
    assert get_tracer() is tracer
    with tracer.start_as_current_span("process_request") as span:
        span.set_attribute("user.id", "123")
        with get_tracer().start_as_current_span("call_ai_service"):
            pass
        span.add_event("cache_hit", {"key": "k1"})
    flush_tracing()
    spans = receiver.wait_for("process_request", "call_ai_service")
    assert spans["call_ai_service"].parent_span_id == spans["process_request"].span_id
    assert spans["process_request"].attributes == {"user.id": "123"}
    assert spans["process_request"].events == [("cache_hit", {"key": "k1"})]


def test_sample_rate_zero_exports_nothing_unless_the_parent_is_sampled(
    receiver: Receiver,
) -> None:
    """sample_rate=0: new traces are dropped; a sampled caller's trace is still followed."""
    _setup(receiver, sample_rate=0.0)

    @trace_span("work")
    def work() -> object:
        span = otel_trace.get_current_span()
        return span, span.is_recording()

    assert work() == (otel_trace.INVALID_SPAN, False)  # passed through: no span at all
    with continue_trace({"traceparent": TRACEPARENT_UNSAMPLED}):
        assert not work()[1]
    with continue_trace({"traceparent": TRACEPARENT_SAMPLED}):
        assert work()[1]
    flush_tracing()
    followed = receiver.wait_for("work")["work"]
    assert followed.trace_id == "0af7651916cd43dd8448eb211c80319c"
    assert followed.parent_span_id == "b7ad6b7169203331"
    time.sleep(0.1)
    assert len(receiver.named("work")) == 1


def test_sample_rate_one_exports_every_span(receiver: Receiver) -> None:
    """sample_rate=1: every call is a span."""
    _setup(receiver, sample_rate=1.0)
    traced = trace_span("each")(lambda: None)
    for _ in range(20):
        traced()
    flush_tracing()
    deadline = time.monotonic() + 10
    while len(receiver.named("each")) < 20 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert len(receiver.named("each")) == 20


def test_shutdown_flushes_pending_spans(receiver: Receiver) -> None:
    """shutdown_tracing() exports what was still queued, then stops tracing."""
    _setup(receiver)
    trace_span("last_words")(lambda: None)()
    assert receiver.named("last_words") == []  # still in the batch processor's queue
    assert shutdown_tracing(timeout=5.0)
    assert len(receiver.named("last_words")) == 1
    assert not tracing_module.tracing_enabled()
    trace_span("after")(lambda: None)()
    assert shutdown_tracing()  # nothing to do


def test_graceful_shutdown_flushes_and_stops_tracing(receiver: Receiver) -> None:
    """setup_tracing registers a graceful-shutdown hook that exports the queued spans."""
    from shared.lifecycle import shutdown_hooks

    _setup(receiver)
    trace_span("before_sigterm")(lambda: None)()
    assert receiver.named("before_sigterm") == []
    hook = shutdown_hooks()["shared.observability.tracing"]
    hook()  # what GracefulShutdown runs after its handlers
    assert len(receiver.named("before_sigterm")) == 1
    assert not tracing_module.tracing_enabled()


def test_setup_twice_returns_the_same_tracer(
    receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    """A second setup_tracing keeps the first (a different config is ignored, with a warning)."""
    first = _setup(receiver)
    assert _setup(receiver) is first
    with caplog.at_level(logging.WARNING, "shared.observability.tracing"):
        assert _setup(receiver, service_name="other") is first
    assert "already set up" in caplog.text
    trace_span("once")(lambda: None)()
    flush_tracing()
    assert receiver.wait_for("once")["once"].resource["service.name"] == "prophet"
    assert otel_trace.get_tracer_provider() is tracing_module._installed.provider  # type: ignore[union-attr]


def test_setup_after_shutdown_uses_the_new_config(receiver: Receiver) -> None:
    """shutdown_tracing() then setup_tracing(other) traces with the other config."""
    _setup(receiver)
    shutdown_tracing()
    _setup(receiver, service_name="tsdl")
    trace_span("again")(lambda: None)()
    flush_tracing()
    assert receiver.wait_for("again")["again"].resource["service.name"] == "tsdl"


# -- the decorator -------------------------------------------------------------------------


def test_trace_span_keeps_name_signature_and_docstring() -> None:
    """functools.wraps: name, qualname, docstring, signature, __wrapped__; async stays async."""

    def compute(user_id: str, params: dict[str, int] | None = None) -> int:
        """Computes."""
        return 1

    async def fetch(symbol: str, *, depth: int = 5) -> int:
        """Fetches."""
        return depth

    for func in (compute, fetch):
        traced = trace_span("x")(func)
        assert traced.__name__ == func.__name__
        assert traced.__doc__ == func.__doc__
        assert traced.__wrapped__ is func  # type: ignore[attr-defined]
        assert inspect.signature(traced) == inspect.signature(func)
    assert inspect.iscoroutinefunction(trace_span("x")(fetch))
    assert not inspect.iscoroutinefunction(trace_span("x")(compute))
    assert trace_span(compute).__name__ == "compute"


def test_trace_span_refuses_bad_arguments() -> None:
    """Bad name, attributes or target: errors naming them, at decoration."""
    with pytest.raises(ValueError, match="name"):
        trace_span("")
    with pytest.raises(TypeError, match="attributes"):
        trace_span("x", {"k": object()})
    with pytest.raises(TypeError, match="attributes"):
        trace_span("x", ["k"])  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="generator"):
        trace_span("x")(lambda: (yield))


def test_trace_span_without_setup_passes_calls_through() -> None:
    """Not set up: the call runs untouched, no span is current, exceptions pass unchanged."""

    @trace_span("idle")
    def idle(a: int, *, b: int) -> object:
        return (a, b, otel_trace.get_current_span())

    assert idle(1, b=2) == (1, 2, otel_trace.INVALID_SPAN)
    boom = trace_span("boom")(lambda: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        boom()


async def test_async_span_lasts_as_long_as_the_coroutine(receiver: Receiver) -> None:
    """An async span starts when the coroutine runs and ends when it returns: its true duration."""
    _setup(receiver)

    @trace_span("slow_async")
    async def slow() -> str:
        await asyncio.sleep(0.1)
        return "done"

    @trace_span("failing_async")
    async def failing() -> None:
        await asyncio.sleep(0)
        raise ConnectionError("down")

    pending = slow()
    await asyncio.sleep(0.05)  # created but not started: not part of the span
    awaited_at = time.time_ns()
    assert await pending == "done"
    with pytest.raises(ConnectionError):
        await failing()
    flush_tracing()
    spans = receiver.wait_for("slow_async", "failing_async")
    assert spans["slow_async"].start_ns >= awaited_at
    assert spans["slow_async"].end_ns - spans["slow_async"].start_ns >= 90_000_000
    assert spans["failing_async"].status_code == ERROR


async def test_concurrent_async_spans_keep_their_own_parents(receiver: Receiver) -> None:
    """Tasks running at once each nest under their own span."""
    _setup(receiver)

    @trace_span("inner")
    async def inner(i: int) -> None:
        add_span_attribute("i", i)
        await asyncio.sleep(0.01)

    @trace_span("outer")
    async def outer(i: int) -> None:
        add_span_attribute("i", i)
        await asyncio.sleep(0.01 * (3 - i))
        await inner(i)

    await asyncio.gather(*(outer(i) for i in range(3)))
    flush_tracing()  # returns once the receiver answered: every span is there
    assert len(receiver.named("inner")) == 3
    outers = {s.attributes["i"]: s for s in receiver.named("outer")}
    for span in receiver.named("inner"):
        assert span.parent_span_id == outers[span.attributes["i"]].span_id


async def test_cancelled_async_span_ends_without_error(receiver: Receiver) -> None:
    """A cancelled traced coroutine ends its span (status unset) and leaves no context behind."""
    _setup(receiver)
    started = asyncio.Event()

    @trace_span("cancelled_async")
    async def waits() -> None:
        started.set()
        await asyncio.sleep(10)

    task = asyncio.create_task(waits())
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert otel_trace.get_current_span() is otel_trace.INVALID_SPAN
    flush_tracing()
    span = receiver.wait_for("cancelled_async")["cancelled_async"]
    assert span.status_code == Status.STATUS_CODE_UNSET
    assert span.end_ns > span.start_ns


def test_threads_trace_concurrently_with_their_own_parents(receiver: Receiver) -> None:
    """Eight threads tracing at once: each child span has its own thread's parent."""
    import threading

    _setup(receiver)

    @trace_span("thread_child")
    def child(i: int) -> None:
        add_span_attribute("i", i)

    @trace_span("thread_parent")
    def parent(i: int) -> None:
        add_span_attribute("i", i)
        for _ in range(20):
            child(i)

    threads = [threading.Thread(target=parent, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    flush_tracing()
    parents = {s.attributes["i"]: s for s in receiver.named("thread_parent")}
    children = receiver.named("thread_child")
    assert len(parents) == 8
    assert len(children) == 160
    for span in children:
        assert span.parent_span_id == parents[span.attributes["i"]].span_id


def test_get_tracer_by_name_uses_the_installed_provider(receiver: Receiver) -> None:
    """get_tracer("lib") is a tracer of the same provider; before setup it is a no-op."""
    assert not get_tracer("lib").start_span("x").is_recording()
    _setup(receiver)
    with get_tracer("lib").start_as_current_span("named_tracer"):
        pass
    flush_tracing()
    assert receiver.wait_for("named_tracer")["named_tracer"].resource["service.name"] == "prophet"


# -- propagation ----------------------------------------------------------------------------


def test_propagate_trace_context_without_a_span_is_empty() -> None:
    """No current span: no headers."""
    assert propagate_trace_context() == {}


def test_propagate_and_extract_round_trip(receiver: Receiver) -> None:
    """traceparent, tracestate and baggage go out; extract (any header case) brings them back."""
    tracer = _setup(receiver)
    with (
        continue_trace({"Traceparent": TRACEPARENT_SAMPLED, "TraceState": "vendor=1"}),
        tracer.start_as_current_span("client") as span,
    ):
        token = context.attach(baggage.set_baggage("user.tier", "premium"))
        try:
            headers = propagate_trace_context()
        finally:
            context.detach(token)
        span_id = format(span.get_span_context().span_id, "016x")
    assert headers["traceparent"] == f"00-0af7651916cd43dd8448eb211c80319c-{span_id}-01"
    assert headers["tracestate"] == "vendor=1"
    assert headers["baggage"] == "user.tier=premium"
    mine = {"x-request-id": "r1"}
    assert propagate_trace_context(mine) is mine
    raw = [(b"traceparent", headers["traceparent"].encode()), (b"baggage", b"user.tier=premium")]
    extracted = extract_trace_context(raw)
    parent = otel_trace.get_current_span(extracted).get_span_context()
    assert parent.is_remote
    assert format(parent.span_id, "016x") == span_id
    assert baggage.get_baggage("user.tier", extracted) == "premium"


def test_continue_trace_is_one_block_at_a_time() -> None:
    """Entering the same continue_trace twice is an error; it detaches at the end."""
    block = continue_trace({"traceparent": TRACEPARENT_SAMPLED})
    with block:
        assert otel_trace.get_current_span().get_span_context().trace_id
        with pytest.raises(RuntimeError, match="already active"), block:
            pass
    assert otel_trace.get_current_span() is otel_trace.INVALID_SPAN


# -- fork ------------------------------------------------------------------------------------


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_forked_child_exports_its_own_spans_once(receiver: Receiver) -> None:
    """After fork the child exports its spans with its own connection; queued spans export once."""
    _setup(receiver)
    trace_span("warm_up")(lambda: None)()
    flush_tracing()  # the parent's exporter now holds a keep-alive connection
    trace_span("before_fork")(lambda: None)()  # queued in the parent, not exported yet
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 1
        try:
            setup_again = setup_tracing(tracing_module._installed.config)  # type: ignore[union-attr]
            trace_span("in_child")(lambda: None)()
            code = 0 if flush_tracing(5.0) and setup_again is not None else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    trace_span("after_fork")(lambda: None)()
    flush_tracing()
    spans = receiver.wait_for("warm_up", "before_fork", "in_child", "after_fork")
    assert spans["in_child"].trace_id != spans["before_fork"].trace_id
    time.sleep(0.1)
    assert len(receiver.named("before_fork")) == 1


# -- two services --------------------------------------------------------------------------


def test_traceparent_round_trip_between_two_processes(receiver: Receiver) -> None:
    """Service A calls service B (another process) with propagate_trace_context(): one trace."""
    import subprocess
    import urllib.request
    from pathlib import Path

    service_b = subprocess.Popen(
        [sys.executable, str(Path(__file__).with_name("service_b.py")), receiver.endpoint],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert service_b.stdout is not None
        port = int(service_b.stdout.readline())
        _setup(receiver, service_name="prophet")

        @trace_span("generate_strategy")
        def generate_strategy(code: bytes) -> bytes:
            request = urllib.request.Request(
                f"http://127.0.0.1:{port}/compile",
                data=code,
                headers=propagate_trace_context(),
                method="POST",
            )
            with urllib.request.urlopen(request, timeout=10) as response:
                return bytes(response.read())

        assert generate_strategy(b"buy low") == b"BUY LOW"
        assert service_b.wait(timeout=20) == 0
    finally:
        service_b.kill()
        service_b.wait()
        if service_b.stdout is not None:
            service_b.stdout.close()
    flush_tracing()
    spans = receiver.wait_for("generate_strategy", "compile_strategy")
    caller, callee = spans["generate_strategy"], spans["compile_strategy"]
    assert callee.trace_id == caller.trace_id
    assert callee.parent_span_id == caller.span_id
    assert caller.resource["service.name"] == "prophet"
    assert callee.resource["service.name"] == "tsdl"
    assert callee.attributes == {"service.role": "compiler"}


def test_package_exports_and_lazy_import() -> None:
    """Exported tracing names resolve; importing the resilience patterns loads no OpenTelemetry."""
    import subprocess

    import shared.observability as observability

    for name in tracing_module.__all__:
        if name in observability.__all__:
            assert getattr(observability, name) is getattr(tracing_module, name)
    with pytest.raises(AttributeError, match="no_such_name"):
        observability.no_such_name  # noqa: B018
    code = (
        "import sys, shared.resilience, shared.observability._events; "
        "print(sorted(m for m in sys.modules if m.startswith('opentelemetry')))"
    )
    output = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert output.stdout.strip() == "[]"

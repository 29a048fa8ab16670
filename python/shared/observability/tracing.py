"""OpenTelemetry tracing (the document's "OpenTelemetry Tracing" section).

``setup_tracing(TracingConfig(...))`` installs an OpenTelemetry SDK tracer
provider (``ParentBased(TraceIdRatioBased(sample_rate))``, a batch span
processor, a resource with ``service.name`` and ``deployment.environment.name``)
and returns a tracer. ``@trace_span(name, attributes)`` traces sync and async
functions; ``get_tracer``, ``add_span_attribute`` and ``add_span_event`` work
on the current span; ``propagate_trace_context()`` and
``extract_trace_context(headers)`` / ``continue_trace(headers)`` carry a trace
across services (W3C ``traceparent``/``tracestate``, and ``baggage``).

Configuration precedence, for each setting: the value given to
``TracingConfig`` wins; else the ``OTEL_*`` environment variable (read by
``setup_tracing``, not at construction); else the default:

==================  ================================================  ==========================
setting             environment variable(s), in order                  default
==================  ================================================  ==========================
service_name        ``OTEL_SERVICE_NAME``, then ``service.name`` in    ``unknown_service``
                    ``OTEL_RESOURCE_ATTRIBUTES``
exporter_type       ``OTEL_TRACES_EXPORTER`` (``otlp``: the protocol  ``otlp``
                    of ``OTEL_EXPORTER_OTLP_TRACES_PROTOCOL`` /
                    ``OTEL_EXPORTER_OTLP_PROTOCOL`` picks ``otlp`` or
                    ``otlp_grpc``)
otlp_endpoint       ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` (used as    ``http://localhost:4318``
                    is), then ``OTEL_EXPORTER_OTLP_ENDPOINT``         (gRPC: ``:4317``)
environment         ``deployment.environment.name`` in                 none (attribute omitted)
                    ``OTEL_RESOURCE_ATTRIBUTES``
sample_rate         ``OTEL_TRACES_SAMPLER`` / ``OTEL_TRACES_SAMPLER_ARG``  ``1.0``
==================  ================================================  ==========================

``OTEL_SDK_DISABLED=true`` makes ``setup_tracing`` install nothing. Settings
``TracingConfig`` does not have are left to OpenTelemetry, which reads their
variables itself: ``OTEL_EXPORTER_OTLP_HEADERS``, ``_TIMEOUT``,
``_COMPRESSION``, certificates, ``OTEL_BSP_*`` (the batch processor),
``OTEL_RESOURCE_ATTRIBUTES`` (merged into the resource), ``OTEL_PROPAGATORS``.
"""

from __future__ import annotations

import copy
import functools
import inspect
import logging
import math
import os
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, TypeVar, cast, overload
from urllib.parse import urlsplit

from opentelemetry import context as _context
from opentelemetry import propagate as _propagate
from opentelemetry import trace as _trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from shared import _validation
from shared.observability import _events

__all__ = [
    "EXPORTER_TYPES",
    "TracingConfig",
    "add_span_attribute",
    "add_span_event",
    "continue_trace",
    "extract_trace_context",
    "flush_tracing",
    "get_tracer",
    "propagate_trace_context",
    "setup_tracing",
    "shutdown_tracing",
    "trace_span",
    "tracing_enabled",
]

_log = logging.getLogger("shared.observability.tracing")

EXPORTER_TYPES = ("otlp", "otlp_grpc", "console", "none")
DEFAULT_HTTP_ENDPOINT = "http://localhost:4318"
DEFAULT_GRPC_ENDPOINT = "http://localhost:4317"
TRACER_NAME = "shared"

_F = TypeVar("_F", bound=Callable[..., Any])


# -- configuration -----------------------------------------------------------------------


def _optional_text(name: str, value: object) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a str or None, got {type(value).__name__}")
    if not value.strip():
        raise ValueError(f"{name} must not be empty")
    return value


def _check_endpoint(name: str, value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(
            f"{name} must be an http:// or https:// URL with a host "
            f"(such as http://jaeger:4318), got {value!r}"
        )
    try:
        parts.port  # noqa: B018 - validates the port
    except ValueError:
        raise ValueError(f"{name} has an invalid port: {value!r}") from None
    return value


def _check_rate(name: str, value: object) -> float:
    rate = _validation.number(name, value)
    if not math.isfinite(rate) or not 0.0 <= rate <= 1.0:
        raise ValueError(f"{name} must be a number in [0, 1], got {value!r}")
    return rate


def _check_exporter_type(value: object) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise TypeError(f"exporter_type must be a str or None, got {type(value).__name__}")
    if value not in EXPORTER_TYPES:
        raise ValueError(f"exporter_type must be one of {', '.join(EXPORTER_TYPES)}, got {value!r}")
    return value


def _check_otlp_endpoint(value: object) -> str | None:
    text = _optional_text("otlp_endpoint", value)
    return None if text is None else _check_endpoint("otlp_endpoint", text)


def _check_optional_rate(value: object) -> float | None:
    return None if value is None else _check_rate("sample_rate", value)


def _check_flag(value: object) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"resilience_events must be a bool, got {type(value).__name__}")
    return value


_FIELD_CHECKS: dict[str, Callable[[object], object]] = {
    "service_name": functools.partial(_optional_text, "service_name"),
    "exporter_type": _check_exporter_type,
    "otlp_endpoint": _check_otlp_endpoint,
    "environment": functools.partial(_optional_text, "environment"),
    "sample_rate": _check_optional_rate,
    "resilience_events": _check_flag,
}


@dataclass(slots=True)
class TracingConfig:
    """How ``setup_tracing`` sets OpenTelemetry up.

    Args:
        service_name: the resource's ``service.name``.
        exporter_type: ``"otlp"`` (OTLP over HTTP/protobuf to ``otlp_endpoint``
            + ``/v1/traces``), ``"otlp_grpc"`` (OTLP over gRPC, needs
            ``pip install shared[grpc]``), ``"console"`` (JSON on stdout)
            or ``"none"`` (spans are created and propagated, never exported).
        otlp_endpoint: the collector's base URL, such as ``http://jaeger:4318``.
        environment: the resource's ``deployment.environment.name``.
        sample_rate: the fraction of new traces recorded, in [0, 1]; a span
            with a parent follows its parent's decision
            (``ParentBased(TraceIdRatioBased(sample_rate))``).
        resilience_events: keyword-only; record retries, breaker rejections
            and transitions, rate-limit waits, timeouts and idempotent replays
            as events on the current span (default True).

    Every field left ``None`` is taken from the ``OTEL_*`` environment, then
    from the default, when ``setup_tracing`` runs (see the module docstring).
    Bad values raise ``ValueError`` or ``TypeError`` naming the field, at
    construction and at assignment: unlike the other configs this one may be
    changed before ``setup_tracing`` (the document's troubleshooting sets
    ``config.sample_rate = 1.0``); ``setup_tracing`` works on a copy.
    """

    service_name: str | None = None
    exporter_type: str | None = None
    otlp_endpoint: str | None = None
    environment: str | None = None
    sample_rate: float | None = None
    resilience_events: bool = field(default=True, kw_only=True)

    def __setattr__(self, name: str, value: object) -> None:
        check = _FIELD_CHECKS.get(name)
        object.__setattr__(self, name, value if check is None else check(value))


@dataclass(frozen=True)
class _Resolved:
    """A TracingConfig with the environment and defaults applied."""

    service_name: str
    exporter_type: str
    endpoint: str  # the exporter's endpoint: the full URL for HTTP, the base for gRPC
    environment: str | None
    sample_rate: float
    resilience_events: bool


def _resource_attributes(environ: Mapping[str, str]) -> dict[str, str]:
    attributes: dict[str, str] = {}
    for item in environ.get("OTEL_RESOURCE_ATTRIBUTES", "").split(","):
        key, sep, value = item.partition("=")
        if sep and key.strip():
            attributes[key.strip()] = value.strip()
    return attributes


def _env_sample_rate(environ: Mapping[str, str]) -> float | None:
    sampler = environ.get("OTEL_TRACES_SAMPLER", "").strip().lower()
    argument = environ.get("OTEL_TRACES_SAMPLER_ARG", "").strip()
    if sampler in ("always_on", "parentbased_always_on"):
        return 1.0
    if sampler in ("always_off", "parentbased_always_off"):
        return 0.0
    if sampler in ("", "traceidratio", "parentbased_traceidratio"):
        if not argument:
            return 1.0 if sampler else None
        try:
            value = float(argument)
        except ValueError:
            raise ValueError(
                f"OTEL_TRACES_SAMPLER_ARG must be a number in [0, 1], got {argument!r}"
            ) from None
        return _check_rate("OTEL_TRACES_SAMPLER_ARG", value)
    raise ValueError(
        "OTEL_TRACES_SAMPLER must be always_on, always_off, traceidratio or their "
        f"parentbased_ forms (sampling is always parent-based here), got {sampler!r}"
    )


def _env_protocol(environ: Mapping[str, str]) -> str:
    protocol = (
        environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
        or environ.get("OTEL_EXPORTER_OTLP_PROTOCOL")
        or "http/protobuf"
    ).strip()
    if protocol == "grpc":
        return "otlp_grpc"
    if protocol != "http/protobuf":
        raise ValueError(
            "OTEL_EXPORTER_OTLP_PROTOCOL (or OTEL_EXPORTER_OTLP_TRACES_PROTOCOL) must be "
            f"http/protobuf or grpc, got {protocol!r}"
        )
    return "otlp"


def _env_exporter(environ: Mapping[str, str]) -> str:
    value = environ.get("OTEL_TRACES_EXPORTER", "").strip().lower() or "otlp"
    if "," in value:
        raise ValueError(f"OTEL_TRACES_EXPORTER must name one exporter, got {value!r}")
    if value == "otlp":
        return _env_protocol(environ)
    if value in ("console", "none"):
        return value
    raise ValueError(f"OTEL_TRACES_EXPORTER must be otlp, console or none, got {value!r}")


def _resolve(config: TracingConfig, environ: Mapping[str, str]) -> _Resolved:
    resource = _resource_attributes(environ)
    service_name = (
        config.service_name
        or environ.get("OTEL_SERVICE_NAME", "").strip()
        or resource.get("service.name")
        or "unknown_service"
    )
    exporter_type = config.exporter_type or _env_exporter(environ)
    grpc = exporter_type == "otlp_grpc"
    if config.otlp_endpoint is not None:
        base = config.otlp_endpoint.rstrip("/")
        endpoint = base if grpc else base + "/v1/traces"
    elif environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "").strip():
        endpoint = _check_endpoint(
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            environ["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"].strip(),
        )
    elif environ.get("OTEL_EXPORTER_OTLP_ENDPOINT", "").strip():
        base = _check_endpoint(
            "OTEL_EXPORTER_OTLP_ENDPOINT", environ["OTEL_EXPORTER_OTLP_ENDPOINT"].strip()
        ).rstrip("/")
        endpoint = base if grpc else base + "/v1/traces"
    else:
        endpoint = DEFAULT_GRPC_ENDPOINT if grpc else DEFAULT_HTTP_ENDPOINT + "/v1/traces"
    environment = config.environment or resource.get("deployment.environment.name") or None
    sample_rate = config.sample_rate
    if sample_rate is None:
        sample_rate = _env_sample_rate(environ)
    return _Resolved(
        service_name=service_name,
        exporter_type=exporter_type,
        endpoint=endpoint,
        environment=environment,
        sample_rate=1.0 if sample_rate is None else sample_rate,
        resilience_events=config.resilience_events,
    )


# -- the provider ------------------------------------------------------------------------


def _make_exporter(resolved: _Resolved) -> Any:
    kind = resolved.exporter_type
    if kind == "otlp":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        return OTLPSpanExporter(endpoint=resolved.endpoint)
    if kind == "otlp_grpc":
        try:
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
                OTLPSpanExporter as GrpcSpanExporter,
            )
        except ImportError as exc:
            raise ImportError(
                "exporter_type='otlp_grpc' needs the gRPC exporter: "
                "pip install 'shared[grpc]' (opentelemetry-exporter-otlp-proto-grpc)"
            ) from exc
        insecure = urlsplit(resolved.endpoint).scheme == "http"
        return GrpcSpanExporter(endpoint=resolved.endpoint, insecure=insecure)
    if kind == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        return ConsoleSpanExporter()
    return None


class _ForkSafeExporter:
    """Delegates to an exporter built by ``factory``; a forked child builds its own.

    The parent's exporter may hold connections (an HTTP keep-alive socket, a
    gRPC channel) that a child must not share; ``os.register_at_fork`` makes
    the child start with a fresh one. The batch processor itself restarts its
    worker thread and empties its queue in the child (the parent exports its
    own spans).
    """

    def __init__(self, factory: Callable[[], Any]) -> None:
        self._factory = factory
        self._inner = factory()

    def after_fork_in_child(self) -> None:
        self._inner = self._factory()

    def export(self, spans: Sequence[Any]) -> Any:
        return self._inner.export(spans)

    def shutdown(self) -> None:
        self._inner.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        flush = getattr(self._inner, "force_flush", None)
        return True if flush is None else bool(flush(timeout_millis))


class _Installed:
    """What one ``setup_tracing`` installed."""

    def __init__(self, config: TracingConfig, resolved: _Resolved, provider: Any) -> None:
        self.config = config
        self.resolved = resolved
        self.provider = provider
        self.tracer = provider.get_tracer(TRACER_NAME)
        self.exporter: _ForkSafeExporter | None = None


_lock = threading.RLock()
_installed: _Installed | None = None
# The hot-path view of the state, read by every traced call (module globals are
# the cheapest reads): the tracer, or None while tracing is not set up; and
# whether a span with no sampled parent is dropped anyway (sample_rate == 0).
_tracer: Any = None
_drop_unparented = False


def _true(value: str | None) -> bool:
    return (value or "").strip().lower() == "true"


def setup_tracing(config: TracingConfig | None = None) -> Any:
    """Installs OpenTelemetry tracing for this process and returns its tracer.

    The SDK tracer provider gets ``ParentBased(TraceIdRatioBased(sample_rate))``,
    the resource (``service.name``, ``deployment.environment.name``, plus
    ``OTEL_RESOURCE_ATTRIBUTES``) and one ``BatchSpanProcessor`` with the
    configured exporter; it becomes OpenTelemetry's global provider when no
    other was set, so instrumentation libraries use it too.

    Safe to call twice: while tracing is set up, another call returns the same
    tracer (a different config is ignored with a warning; call
    ``shutdown_tracing()`` first to change it). Safe across ``fork``: a child
    exports its own spans through its own connection. Returns a no-op tracer
    when ``OTEL_SDK_DISABLED=true``.
    """
    global _installed, _tracer, _drop_unparented
    if config is None:
        config = TracingConfig()
    elif not isinstance(config, TracingConfig):
        raise TypeError(f"config must be a TracingConfig, got {type(config).__name__}")
    config = copy.copy(config)
    with _lock:
        if _installed is not None:
            if config != _installed.config:
                _log.warning(
                    "setup_tracing: tracing is already set up with %r; %r is ignored "
                    "(call shutdown_tracing() first to change it)",
                    _installed.config,
                    config,
                )
            return _installed.tracer
        if _true(os.environ.get("OTEL_SDK_DISABLED")):
            return _trace.NoOpTracer()
        resolved = _resolve(config, os.environ)
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
        from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

        attributes: dict[str, str] = {"service.name": resolved.service_name}
        if resolved.environment is not None:
            attributes["deployment.environment.name"] = resolved.environment
        provider = TracerProvider(
            sampler=ParentBased(TraceIdRatioBased(resolved.sample_rate)),
            resource=Resource.create(attributes),
        )
        installed = _Installed(config, resolved, provider)
        if resolved.exporter_type != "none":
            exporter = _ForkSafeExporter(lambda: _make_exporter(resolved))
            installed.exporter = exporter
            provider.add_span_processor(BatchSpanProcessor(cast(Any, exporter)))
        _set_global_provider(provider)
        _installed = installed
        _tracer = installed.tracer
        _drop_unparented = resolved.sample_rate == 0.0
        if resolved.resilience_events:
            _events.activate(_trace.get_current_span)
        # Graceful shutdown (shared.lifecycle) flushes and stops this provider after
        # its handlers, whether or not it became OpenTelemetry's global one.
        from shared.lifecycle import add_shutdown_hook

        add_shutdown_hook(_SHUTDOWN_HOOK, _shutdown_at_exit)
        return installed.tracer


_SHUTDOWN_HOOK = "shared.observability.tracing"


def _shutdown_at_exit() -> None:
    if not shutdown_tracing():
        _log.warning("tracing: not every span was exported before shutdown")


# Providers setup_tracing made global (OpenTelemetry sets its global provider once).
_made_global: list[Any] = []


def _set_global_provider(provider: Any) -> None:
    current = _trace.get_tracer_provider()
    if isinstance(current, _trace.ProxyTracerProvider):
        _trace.set_tracer_provider(provider)
        _made_global[:] = [provider]
    elif _made_global and current is _made_global[0]:
        _log.info(
            "setup_tracing after shutdown_tracing: OpenTelemetry's global tracer provider "
            "stays the first one (it is set once per process); trace_span, get_tracer and "
            "the resilience events use the new one"
        )
    else:
        _log.warning(
            "OpenTelemetry's global tracer provider is already set (%r): it stays; "
            "trace_span, get_tracer and the resilience events use the one setup_tracing made",
            current,
        )


def tracing_enabled() -> bool:
    """Whether ``setup_tracing`` installed a provider (and no shutdown since)."""
    return _installed is not None


def flush_tracing(timeout: float = 5.0) -> bool:
    """Exports the spans ended so far, waiting at most ``timeout`` seconds.

    True when everything was exported (or tracing is not set up).
    """
    seconds = _validation.positive_finite("timeout", timeout)
    installed = _installed
    if installed is None:
        return True
    return bool(installed.provider.force_flush(int(seconds * 1000)))


def shutdown_tracing(timeout: float = 5.0) -> bool:
    """Flushes the spans ended so far (within ``timeout`` seconds) and stops tracing.

    For graceful shutdown: call it once the service has stopped taking work.
    Afterwards ``trace_span`` passes calls through untraced and the resilience
    events are off; ``setup_tracing`` may be called again. Returns whether the
    flush completed. Calling it when tracing is not set up does nothing (True).
    """
    global _installed, _tracer, _drop_unparented
    seconds = _validation.positive_finite("timeout", timeout)
    with _lock:
        installed = _installed
        if installed is None:
            return True
        _installed = None
        _tracer = None
        _drop_unparented = False
        _events.deactivate()
    flushed = bool(installed.provider.force_flush(int(seconds * 1000)))
    installed.provider.shutdown()
    return flushed


def _after_fork_in_child() -> None:
    installed = _installed
    if installed is not None and installed.exporter is not None:
        try:
            installed.exporter.after_fork_in_child()
        except Exception:
            _log.exception("tracing: could not rebuild the span exporter after fork")


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def get_tracer(name: str | None = None) -> Any:
    """A tracer of the provider ``setup_tracing`` installed (OpenTelemetry's API).

    Before ``setup_tracing`` (or after ``shutdown_tracing``) it is
    OpenTelemetry's global tracer, a no-op until a provider is set.
    """
    if name is not None:
        _optional_text("name", name)
    installed = _installed
    if installed is None:
        return _trace.get_tracer(name or TRACER_NAME)
    if name is None or name == TRACER_NAME:
        return installed.tracer
    return installed.provider.get_tracer(name)


# -- the current span --------------------------------------------------------------------


def add_span_attribute(key: str, value: Any) -> None:
    """Sets attribute ``key`` on the current span (nothing if no span is recording)."""
    span = _trace.get_current_span()
    if span.is_recording():
        span.set_attribute(key, value)


def add_span_event(name: str, attributes: Mapping[str, Any] | None = None) -> None:
    """Adds event ``name`` to the current span (nothing if no span is recording)."""
    span = _trace.get_current_span()
    if span.is_recording():
        span.add_event(name, attributes)


# -- the decorator -----------------------------------------------------------------------

_ATTRIBUTE_TYPES = (str, bool, int, float)


def _check_attributes(attributes: object) -> dict[str, Any] | None:
    if attributes is None:
        return None
    if not isinstance(attributes, Mapping):
        raise TypeError(f"attributes must be a mapping or None, got {type(attributes).__name__}")
    checked: dict[str, Any] = {}
    for key, value in attributes.items():
        if not isinstance(key, str) or not key:
            raise TypeError(f"attributes keys must be non-empty str, got {key!r}")
        if isinstance(value, _ATTRIBUTE_TYPES):
            checked[key] = value
        elif isinstance(value, (list, tuple)) and all(
            isinstance(item, _ATTRIBUTE_TYPES) for item in value
        ):
            checked[key] = tuple(value)
        else:
            raise TypeError(
                f"attributes[{key!r}] must be a str, bool, int, float or a sequence of "
                f"them, got {type(value).__name__}"
            )
    return checked or None


def _rejection_of(exc: BaseException) -> None:
    from shared.resilience.exceptions import CircuitBreakerOpenError

    if isinstance(exc, CircuitBreakerOpenError):
        _events.breaker_rejection(str(exc.name), float(exc.retry_after))


def _record_error(span: Any, exc: BaseException) -> None:
    if span.is_recording():
        if _events.active and type(exc).__name__ == "CircuitBreakerOpenError":
            _rejection_of(exc)
        span.record_exception(exc)
        span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))


_get_current_span = _trace.get_current_span
_attach = _context.attach
_detach = _context.detach
_set_span_in_context = _trace.set_span_in_context


def _unsampled() -> bool:
    """With sample_rate 0: True when no sampled span is current (the span would be dropped)."""
    return not _get_current_span().get_span_context().trace_flags.sampled


@overload
def trace_span(name: _F, attributes: None = None) -> _F: ...


@overload
def trace_span(
    name: str | None = None,
    attributes: Mapping[str, Any] | None = None,
    *,
    kind: SpanKind = SpanKind.INTERNAL,
) -> Callable[[_F], _F]: ...


def trace_span(
    name: Any = None,
    attributes: Mapping[str, Any] | None = None,
    *,
    kind: SpanKind = SpanKind.INTERNAL,
) -> Any:
    """Decorator: each call of the function is a span named ``name`` with ``attributes``.

    Works on ``def`` and ``async def`` functions (an async span lasts from the
    first step of the coroutine to its end: its true duration); keeps the
    function's name, signature and docstring. An exception that escapes is
    recorded on the span, sets its status to ERROR, and propagates unchanged.
    ``name`` defaults to the function's qualified name; ``@trace_span``
    without parentheses works too.

    Cost: while tracing is not set up the wrapper only passes the call
    through (about 0.1 µs); with ``sample_rate=0`` a call with no sampled
    parent span is passed through too (no span, no ids); a recorded span
    costs what OpenTelemetry's ``start_as_current_span`` does.
    """
    if callable(name) and attributes is None:
        return trace_span()(name)
    if name is not None:
        _optional_text("name", name)
    checked = _check_attributes(attributes)
    if not isinstance(kind, SpanKind):
        raise TypeError(f"kind must be an opentelemetry.trace.SpanKind, got {kind!r}")

    def decorate(func: _F) -> _F:
        if not callable(func):
            raise TypeError(f"trace_span decorates a callable, got {type(func).__name__}")
        if inspect.isgeneratorfunction(func) or inspect.isasyncgenfunction(func):
            raise TypeError("trace_span cannot trace a generator function")
        span_name = name if name is not None else getattr(func, "__qualname__", repr(func))

        if inspect.iscoroutinefunction(func):

            @functools.wraps(func)
            async def traced_async(*args: Any, **kwargs: Any) -> Any:
                tracer = _tracer
                if tracer is None or (_drop_unparented and _unsampled()):
                    return await func(*args, **kwargs)
                span = tracer.start_span(span_name, kind=kind, attributes=checked)
                token = _attach(_set_span_in_context(span))
                try:
                    return await func(*args, **kwargs)
                except Exception as exc:
                    _record_error(span, exc)
                    raise
                finally:
                    _detach(token)
                    span.end()

            return cast(_F, traced_async)

        @functools.wraps(func)
        def traced(*args: Any, **kwargs: Any) -> Any:
            tracer = _tracer
            if tracer is None or (_drop_unparented and _unsampled()):
                return func(*args, **kwargs)
            span = tracer.start_span(span_name, kind=kind, attributes=checked)
            token = _attach(_set_span_in_context(span))
            try:
                return func(*args, **kwargs)
            except Exception as exc:
                _record_error(span, exc)
                raise
            finally:
                _detach(token)
                span.end()

        return cast(_F, traced)

    return decorate


# -- propagation ---------------------------------------------------------------------------


def propagate_trace_context(headers: dict[str, str] | None = None) -> dict[str, str]:
    """The current trace context as HTTP headers, for an outgoing request.

    W3C ``traceparent`` and ``tracestate``, and ``baggage`` if any is set (or
    whatever ``OTEL_PROPAGATORS`` selects). With ``headers``, adds to that dict
    and returns it; else returns a new dict (empty when no span is current).
    """
    carrier: dict[str, str] = {} if headers is None else headers
    _propagate.inject(carrier)
    return carrier


def _lowercase(headers: Any) -> dict[str, str]:
    items: Any = headers.items() if isinstance(headers, Mapping) else headers
    carrier: dict[str, str] = {}
    for key, value in items:
        if isinstance(key, bytes):
            key = key.decode("latin-1")
        if isinstance(value, bytes):
            value = value.decode("latin-1")
        elif isinstance(value, (list, tuple)):
            value = ",".join(str(v) for v in value)
        carrier[str(key).lower()] = str(value)
    return carrier


def extract_trace_context(headers: Any) -> Any:
    """The trace context carried by an incoming request's ``headers``.

    ``headers``: a mapping (any case: ``Traceparent`` works) or an iterable
    of ``(name, value)`` pairs (str or bytes, as ASGI gives them). Returns an
    OpenTelemetry ``Context`` to pass as ``context=`` to ``start_span``, or
    to use with ``continue_trace``.
    """
    return _propagate.extract(_lowercase(headers))


class continue_trace:  # noqa: N801 - a context manager named like a function, as contextlib's
    """``with continue_trace(request.headers):`` spans inside continue the caller's trace.

    Attaches the context extracted from ``headers`` (its span becomes the
    parent of the spans started inside, and its baggage is current) and
    detaches it at the end of the block. Works in ``async def`` code too
    (enter and leave it in the same task).
    """

    __slots__ = ("_context", "_token")

    def __init__(self, headers: Any) -> None:
        self._context = extract_trace_context(headers)
        self._token: Any = None

    def __enter__(self) -> Any:
        if self._token is not None:
            raise RuntimeError("continue_trace is already active; use one object per block")
        self._token = _context.attach(self._context)
        return self._context

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        token, self._token = self._token, None
        _context.detach(token)

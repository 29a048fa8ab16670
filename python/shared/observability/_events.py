"""Resilience events as span events on the current span (OpenTelemetry).

The resilience modules call these functions behind a one-line guard::

    if _events.active: _events.retry_attempt(...)

so that, while tracing is not set up, a hook costs one module attribute load
and a branch, and this module imports nothing from OpenTelemetry (the
resilience modules stay free of it). ``shared.observability.tracing`` turns
``active`` on when ``setup_tracing`` installs a provider (unless
``TracingConfig(resilience_events=False)``) and off at ``shutdown_tracing``.

Each function adds one event to the span current in the calling thread or
task, if that span is recording; none of them raises (an event is never worth
failing the call it describes). Event names and attributes:

=================================  ==================================================
``shared.retry``                   ``retry.name``, ``retry.attempt`` (the attempt that
                                   failed), ``retry.delay_s``, ``exception.type``
``shared.circuit_breaker.rejected`` ``circuit_breaker.name``, ``circuit_breaker.retry_after_s``
``shared.circuit_breaker.transition`` ``circuit_breaker.name``, ``circuit_breaker.from_state``,
                                   ``circuit_breaker.to_state``
``shared.rate_limit.wait``         ``rate_limit.wait_s``, ``rate_limit.tokens``
``shared.timeout``                 ``timeout.seconds``
``shared.idempotency.replay``      ``idempotency.key``
=================================  ==================================================
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

__all__ = [
    "active",
    "breaker_rejection",
    "breaker_transition",
    "idempotency_replay",
    "rate_limit_wait",
    "retry_attempt",
    "timeout",
]

_log = logging.getLogger("shared.observability.tracing")

active = False
"""True while tracing is set up: the resilience modules' hooks call this module."""


def _no_span() -> Any:
    return None


# opentelemetry.trace.get_current_span once activated (no OpenTelemetry import before).
_current_span: Callable[[], Any] = _no_span


def activate(current_span: Callable[[], Any]) -> None:
    """Turns the hooks on; ``current_span()`` returns the span events go to."""
    global active, _current_span
    _current_span = current_span
    active = True


def deactivate() -> None:
    """Turns the hooks off (their guard is false again)."""
    global active
    active = False


def _add(name: str, attributes: dict[str, Any]) -> None:
    try:
        span = _current_span()
        if span is not None and span.is_recording():
            span.add_event(name, attributes)
    except Exception:  # never fail the call the event describes
        _log.debug("could not record span event %s", name, exc_info=True)


def retry_attempt(name: str, attempt: int, delay: float, exception: BaseException) -> None:
    """Attempt ``attempt`` of retry ``name`` failed with ``exception``; next try in ``delay`` s."""
    _add(
        "shared.retry",
        {
            "retry.name": name,
            "retry.attempt": attempt,
            "retry.delay_s": float(delay),
            "exception.type": type(exception).__qualname__,
        },
    )


def breaker_rejection(name: str, retry_after: float) -> None:
    """Circuit breaker ``name`` refused a call (a probe may pass in ``retry_after`` s)."""
    _add(
        "shared.circuit_breaker.rejected",
        {"circuit_breaker.name": name, "circuit_breaker.retry_after_s": float(retry_after)},
    )


def breaker_transition(name: str, old: str, new: str) -> None:
    """Circuit breaker ``name`` went from state ``old`` to ``new`` ("closed", "open"...)."""
    _add(
        "shared.circuit_breaker.transition",
        {
            "circuit_breaker.name": name,
            "circuit_breaker.from_state": old,
            "circuit_breaker.to_state": new,
        },
    )


def rate_limit_wait(wait: float, tokens: float) -> None:
    """A rate limiter makes the caller wait ``wait`` seconds (or its turn) for ``tokens``."""
    _add("shared.rate_limit.wait", {"rate_limit.wait_s": float(wait), "rate_limit.tokens": tokens})


def timeout(seconds: float) -> None:
    """A timeout of ``seconds`` fired: the ``TimeoutError`` is being raised now.

    This can run where the timeout interrupted the thread, possibly inside
    OpenTelemetry's own code holding the span's lock (a SIGALRM handler, or an
    exception delivered between two bytecodes): the span's lock is tried
    first, and the event is dropped rather than waiting on the lock forever.
    """
    try:
        span = _current_span()
        if span is None or not span.is_recording():
            return
        lock = getattr(span, "_lock", None)
        if lock is not None and hasattr(lock, "acquire"):
            if not lock.acquire(timeout=0.05):
                return  # held by this very thread, interrupted inside the span's code
            lock.release()
        span.add_event("shared.timeout", {"timeout.seconds": float(seconds)})
    except Exception:
        _log.debug("could not record the timeout span event", exc_info=True)


def idempotency_replay(key: str) -> None:
    """An idempotent call returned the stored result of an earlier execution under ``key``."""
    _add("shared.idempotency.replay", {"idempotency.key": key})

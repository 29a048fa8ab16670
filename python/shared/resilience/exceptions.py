"""Exceptions of the resilience patterns.

Every exception that carries a wait (``retry_after``) gives it in seconds, so
a caller can answer HTTP 429/503 with ``Retry-After`` and ``Retry`` can wait at
least that long when asked to retry them.
"""

from __future__ import annotations

import builtins
from typing import TYPE_CHECKING

__all__ = [
    "CircuitBreakerOpenError",
    "DuplicateRequestError",
    "IdempotencyError",
    "IdempotencyFailedError",
    "IdempotencyInProgressError",
    "IdempotencyMismatchError",
    "IdempotencyStoreError",
    "RateLimitExceeded",
    "RateLimiterUnavailableError",
    "ResilienceError",
    "TimeoutError",
]


class ResilienceError(Exception):
    """Base class of the errors raised by ``shared.resilience`` itself."""


class CircuitBreakerOpenError(ResilienceError):
    """A circuit breaker rejected the call without running it.

    ``CircuitBreakerOpenError(name, retry_after)``. The class has no Python
    ``__init__`` (the attributes read ``args``), so a breaker builds it without
    running Python code and a rejection costs about what raising any exception
    costs.

    Attributes:
        name: the breaker's name.
        retry_after: seconds until the breaker admits a probe again: when open,
            until its ``timeout`` has passed; when half-open with every probe
            slot taken, until the probes' lease (``probe_timeout``) runs out
            (a slot may free sooner, when a probe reports).
    """

    if TYPE_CHECKING:

        def __init__(self, name: str, retry_after: float) -> None: ...

    @property
    def name(self) -> str:
        return self.args[0]  # type: ignore[no-any-return]

    @property
    def retry_after(self) -> float:
        return self.args[1]  # type: ignore[no-any-return]

    def __str__(self) -> str:
        return f"circuit breaker {self.name!r} is open; retry after {self.retry_after:.3f}s"


class RateLimitExceeded(ResilienceError):  # noqa: N818 - the document's name
    """A rate limiter could not grant the tokens in time.

    Attributes:
        retry_after: seconds until the requested tokens are available.
    """

    def __init__(self, retry_after: float, message: str | None = None) -> None:
        super().__init__(retry_after, message)
        self.retry_after = retry_after
        self.message = message

    def __str__(self) -> str:
        base = self.message or "rate limit exceeded"
        return f"{base}; retry after {self.retry_after:.3f}s"


class TimeoutError(ResilienceError, builtins.TimeoutError):
    """An operation did not finish within its deadline.

    Subclasses the builtin ``TimeoutError``, so ``except TimeoutError`` catches it
    whichever of the two names is in scope.
    """


class RateLimiterUnavailableError(ResilienceError):
    """A shared rate limiter's backend (Redis) could not be reached, and its policy
    is to fail closed: the request is neither granted nor denied by the limit.

    Attributes:
        server: the backend's address, e.g. ``redis://127.0.0.1:6379/0``.
        reason: why it is unavailable (the connection error, or that the limiter
            is waiting before it tries the server again).
    """

    def __init__(self, server: str, reason: str) -> None:
        super().__init__(server, reason)
        self.server = server
        self.reason = reason

    def __str__(self) -> str:
        return f"rate limiter backend {self.server} is unavailable (fail_closed): {self.reason}"


class IdempotencyError(ResilienceError):
    """Base class of the idempotency errors; ``key`` is the idempotency key."""

    def __init__(self, key: str, message: str | None = None) -> None:
        super().__init__(key, message)
        self.key = key
        self.message = message

    def __str__(self) -> str:
        return self.message or f"idempotency key {self.key!r}"


class DuplicateRequestError(IdempotencyError):
    """The key was already executed (``raise_on_duplicate=True``).

    Attributes:
        key: the idempotency key.
        cached_result: the first execution's result.
    """

    def __init__(self, key: str, cached_result: object = None) -> None:
        super().__init__(key, f"duplicate request for idempotency key {key!r}")
        self.cached_result = cached_result


class IdempotencyInProgressError(IdempotencyError):
    """Another caller is executing the key and did not finish within the wait.

    Attributes:
        retry_after: seconds until the holder's lease ends at most.
    """

    def __init__(self, key: str, retry_after: float) -> None:
        super().__init__(
            key, f"idempotency key {key!r} is in progress; retry after {retry_after:.3f}s"
        )
        self.retry_after = retry_after


class IdempotencyMismatchError(IdempotencyError):
    """The key was used before with different arguments."""

    def __init__(self, key: str) -> None:
        super().__init__(key, f"idempotency key {key!r} was used with different arguments")


class IdempotencyFailedError(IdempotencyError):
    """The key's execution failed earlier and was kept as failed (``on_error="keep"``):
    nothing re-executes it until someone deletes the key from the store.

    Attributes:
        error: the stored description of the first failure.
    """

    def __init__(self, key: str, error: str) -> None:
        super().__init__(key, f"idempotency key {key!r} failed earlier and is kept: {error}")
        self.error = error


class IdempotencyStoreError(IdempotencyError):
    """The store could not be reached or answered an error; nothing was executed
    by this call unless ``executed`` is true (then its result could not be recorded).
    """

    def __init__(self, key: str, reason: str, *, executed: bool = False) -> None:
        super().__init__(key, f"idempotency store error for key {key!r}: {reason}")
        self.reason = reason
        self.executed = executed

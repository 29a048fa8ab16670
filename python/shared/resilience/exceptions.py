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
        retry_after: seconds until the breaker admits a probe again (0 when it is
            half-open and only its probe slots are taken).
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

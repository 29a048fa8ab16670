"""Validation of configuration values: one error message style for every config.

Each check raises at construction with the parameter's name, so a bad value is
never discovered later as a hang, a crash or silent misbehaviour. Bools are
rejected where numbers are expected (``True`` is an ``int`` in Python).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

# The longest duration accepted anywhere (about 31.7 years): every duration in
# seconds converts to integer nanoseconds, and deadlines ``now + duration``
# stay far inside 64 bits.
MAX_SECONDS = 1e9

_ANY = math.inf


def number(name: str, value: Any) -> float:
    """A real number (int or float, not bool), returned as float; else TypeError.

    An int too large for a float is a ValueError naming ``name`` (not the
    ``OverflowError`` of ``float()``).
    """
    if type(value) is float:
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    try:
        return float(value)
    except OverflowError:
        raise ValueError(
            f"{name} must be a finite number, got an int of {int(value).bit_length()} bits"
        ) from None


def _bounded(name: str, value: Any, result: float, requirement: str, maximum: float) -> float:
    if result > maximum:
        raise ValueError(f"{name} must be {requirement} and <= {maximum:g}, got {value!r}")
    return result


def positive_finite(name: str, value: Any, maximum: float = MAX_SECONDS) -> float:
    """A finite number > 0 and <= ``maximum`` (default ``MAX_SECONDS``: a duration)."""
    result = number(name, value)
    if not math.isfinite(result) or result <= 0:
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return _bounded(name, value, result, "a finite number > 0", maximum)


def non_negative_finite(name: str, value: Any, maximum: float = MAX_SECONDS) -> float:
    """A finite number >= 0 and <= ``maximum`` (default ``MAX_SECONDS``: a duration)."""
    result = number(name, value)
    if not math.isfinite(result) or result < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return _bounded(name, value, result, "a finite number >= 0", maximum)


def at_least(name: str, value: Any, minimum: float, maximum: float = MAX_SECONDS) -> float:
    """A finite number >= ``minimum`` and <= ``maximum`` (default: a duration)."""
    result = number(name, value)
    if not math.isfinite(result) or result < minimum:
        raise ValueError(f"{name} must be a finite number >= {minimum:g}, got {value!r}")
    return _bounded(name, value, result, f"a finite number >= {minimum:g}", maximum)


def positive_at_most(name: str, value: Any, maximum: float, maximum_name: str) -> float:
    """A finite number in (0, ``maximum``]; the error names the bound's field too."""
    result = positive_finite(name, value, _ANY)
    if result > maximum:
        raise ValueError(f"{name} must be <= {maximum_name} ({maximum:g}), got {value!r}")
    return result


def int_in_range(name: str, value: Any, minimum: int, maximum: int) -> int:
    """An int (not bool) in [``minimum``, ``maximum``]."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if not minimum <= value <= maximum:
        raise ValueError(f"{name} must be an int in [{minimum}, {maximum}], got {value!r}")
    return value


# -- token buckets -----------------------------------------------------------

# The rates whose token interval fits the limiters' integer nanoseconds: one
# token per MAX_SECONDS at the slowest, one per nanosecond at the fastest.
MIN_RATE = 1.0 / MAX_SECONDS
MAX_RATE = 1e9


def bucket_limits(rate: Any, burst: Any, initial: Any) -> tuple[float, float, float]:
    """``tokens_per_second``, ``burst_size`` and ``initial_tokens`` of a bucket:
    a rate in [MIN_RATE, MAX_RATE], a burst >= 1 that refills within
    MAX_SECONDS, and 0 <= initial <= burst. Used by ``RateLimitConfig`` and by
    both cores (for any object with those attributes)."""
    rate_value = positive_finite("tokens_per_second", rate, MAX_RATE)
    if rate_value < MIN_RATE:
        raise ValueError(
            "tokens_per_second must be in [1e-09, 1e+09] (one token per 31.7 years "
            f"to one per nanosecond), got {rate!r}"
        )
    burst_value = at_least("burst_size", burst, 1.0, _ANY)
    if burst_value / rate_value > MAX_SECONDS:
        raise ValueError(
            "burst_size / tokens_per_second (the refill time of a full bucket) "
            f"must be <= 1e+09 s, got {burst!r}"
        )
    initial_value = non_negative_finite("initial_tokens", initial, _ANY)
    if initial_value > burst_value:
        raise ValueError(f"initial_tokens must be <= burst_size ({burst_value:g}), got {initial!r}")
    return rate_value, burst_value, initial_value


# -- arguments of the limiter cores ------------------------------------------
# Both backends call these on their slow path (the native core only when its
# fast path meets anything but a plain float), so a bad argument gets the same
# TypeError or ValueError, with the same message, whichever backend runs.


def tokens(value: Any, burst: float) -> float:
    """``tokens`` of a limiter call: a finite number in (0, ``burst``]."""
    result = number("tokens", value)
    if not (math.isfinite(result) and 0.0 < result <= burst):
        raise ValueError(
            f"tokens must be a finite number > 0 and <= burst_size ({burst!r}), got {result!r}"
        )
    return result


def timeout(value: Any) -> float | None:
    """``timeout`` of a limiter call: None or a number >= 0 (``inf`` waits for ever)."""
    if value is None:
        return None
    result = number("timeout", value)
    if math.isnan(result) or result < 0:
        raise ValueError(f"timeout must be None or a number >= 0, got {result!r}")
    return result


def key(value: Any) -> str:
    """A registry key: a str that is valid text (no lone surrogates)."""
    if not isinstance(value, str):
        raise TypeError(f"key must be a str, got {type(value).__name__}")
    if not value.isascii():
        try:
            value.encode()
        except UnicodeEncodeError:
            raise ValueError(
                f"key must be valid text (no lone surrogates), got {value!r}"
            ) from None
    return value


def ticket_type_error(value: Any) -> TypeError:
    return TypeError(f"ticket must be a ticket returned by reserve(), got {type(value).__name__}")


NOT_THIS_LIMITER = "ticket must be a ticket returned by reserve() of this limiter"
ALREADY_CANCELLED = "ticket was already cancelled: a reservation is cancelled once"


def reserved_tokens_mismatch(reserved: float, given: float) -> ValueError:
    return ValueError(
        f"tokens must be the tokens reserved with this ticket ({reserved!r}), got {given!r}"
    )


def fraction(name: str, value: Any) -> float:
    """A number in (0, 1]."""
    result = number(name, value)
    if not (0.0 < result <= 1.0):
        raise ValueError(f"{name} must be in (0, 1], got {value!r}")
    return result


def positive_int(name: str, value: Any) -> int:
    """An int >= 1 (not bool)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value!r}")
    return value


def exception_types(name: str, value: Any) -> tuple[type[BaseException], ...]:
    """A tuple of exception classes (a single class is accepted and wrapped)."""
    if isinstance(value, type):
        value = (value,)
    if not isinstance(value, tuple) or not all(
        isinstance(t, type) and issubclass(t, BaseException) for t in value
    ):
        raise TypeError(f"{name} must be a tuple of exception classes, got {value!r}")
    return value


def optional_callable(name: str, value: Any) -> Callable[..., Any] | None:
    """None or a callable."""
    if value is not None and not callable(value):
        raise TypeError(f"{name} must be callable or None, got {type(value).__name__}")
    return value  # type: ignore[no-any-return]


ON_FULL_POLICIES = ("evict", "reject")


def on_full(value: Any) -> str:
    """What a full ``RateLimiterRegistry`` does: ``"evict"`` or ``"reject"``."""
    if not isinstance(value, str):
        raise TypeError(f"on_full must be a str, got {type(value).__name__}")
    if value not in ON_FULL_POLICIES:
        raise ValueError(f"on_full must be 'evict' or 'reject', got {value!r}")
    return value

"""Validation of configuration values: one error message style for every config.

Each check raises at construction with the parameter's name, so a bad value is
never discovered later as a hang, a crash or silent misbehaviour. Bools are
rejected where numbers are expected (``True`` is an ``int`` in Python).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any


def number(name: str, value: Any) -> float:
    """A real number (int or float, not bool), returned as float; else TypeError."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    return float(value)


def positive_finite(name: str, value: Any) -> float:
    """A finite number > 0."""
    result = number(name, value)
    if not math.isfinite(result) or result <= 0:
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return result


def non_negative_finite(name: str, value: Any) -> float:
    """A finite number >= 0."""
    result = number(name, value)
    if not math.isfinite(result) or result < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return result


def at_least(name: str, value: Any, minimum: float) -> float:
    """A finite number >= ``minimum``."""
    result = number(name, value)
    if not math.isfinite(result) or result < minimum:
        raise ValueError(f"{name} must be a finite number >= {minimum:g}, got {value!r}")
    return result


def positive_at_most(name: str, value: Any, maximum: float, maximum_name: str) -> float:
    """A finite number in (0, ``maximum``]; the error names the bound's field too."""
    result = positive_finite(name, value)
    if result > maximum:
        raise ValueError(f"{name} must be <= {maximum_name} ({maximum:g}), got {value!r}")
    return result


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

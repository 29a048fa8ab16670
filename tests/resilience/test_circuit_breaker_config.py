"""CircuitBreakerConfig and the cores reject every invalid field, naming it."""

from __future__ import annotations

import math
from types import ModuleType
from typing import Any

import pytest

from shared.resilience import CircuitBreaker, CircuitBreakerConfig

TOO_BIG = 2**20

BAD_VALUES: list[tuple[str, Any]] = [
    *[
        (field, bad)
        for field in ("failure_threshold", "success_threshold", "half_open_max_calls")
        for bad in (0, -1, 1.5, True, "5", None, TOO_BIG)
    ],
    *[
        (field, bad)
        for field in ("timeout", "sliding_window", "slow_call_duration", "probe_timeout")
        for bad in (0, -1.0, math.nan, math.inf, "1", True)
    ],
    ("timeout", None),
    *[("minimum_calls", bad) for bad in (0, -3, 2.0, False, TOO_BIG)],
    *[
        (field, bad)
        for field in ("failure_rate_threshold", "slow_call_rate_threshold")
        for bad in (0, -0.5, 1.01, math.nan, "0.5", None)
    ],
    *[
        (field, bad)
        for field in ("expected_exceptions", "ignore_exceptions")
        for bad in ((1,), (int,), "ValueError", [ValueError], None, 3)
    ],
    *[("is_failure_result", bad) for bad in (1, "x")],
]


@pytest.mark.parametrize(("field", "bad"), BAD_VALUES)
def test_invalid_field_raises_naming_it(field: str, bad: Any) -> None:
    """Each invalid value raises ValueError or TypeError at construction, naming the field."""
    kwargs: dict[str, Any] = {field: bad}
    if field == "slow_call_duration":
        kwargs["sliding_window"] = 10.0
    with pytest.raises((ValueError, TypeError), match=field):
        CircuitBreakerConfig(**kwargs)


def test_slow_call_duration_needs_a_window() -> None:
    """Slow calls are rated over a window, so asking for them without one is an error."""
    with pytest.raises(ValueError, match="slow_call_duration"):
        CircuitBreakerConfig(slow_call_duration=1.0)


def test_extras_are_keyword_only_and_defaults_keep_the_document() -> None:
    """The document's four fields are positional; the extras are keyword-only."""
    config = CircuitBreakerConfig(3, 1, 10.0, ConnectionError)
    assert config.expected_exceptions == (ConnectionError,)
    assert config.half_open_max_calls == 1
    assert config.probe_timeout is None
    assert config.sliding_window is None
    assert config.ignore_exceptions == ()
    with pytest.raises(TypeError):
        CircuitBreakerConfig(3, 1, 10.0, (ConnectionError,), 2)  # type: ignore[misc]
    with pytest.raises(AttributeError):
        config.timeout = 1.0  # type: ignore[misc]


def test_breaker_rejects_bad_name_and_config() -> None:
    """The breaker's own arguments are checked too."""
    with pytest.raises(TypeError, match="name"):
        CircuitBreaker(5)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="config"):
        CircuitBreaker("x", {"failure_threshold": 1})  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="clock"):
        CircuitBreaker("x", clock=object())  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("field", "bad"),
    [
        ("failure_threshold", 0),
        ("failure_threshold", -1),
        ("minimum_calls", 0),
        ("success_threshold", TOO_BIG),
        ("half_open_max_calls", 0),
        ("timeout", 0.0),
        ("timeout", math.nan),
        ("probe_timeout", 0.0),
        ("probe_timeout", math.inf),
        ("sliding_window", -1.0),
        ("failure_rate_threshold", 1.5),
        ("slow_call_rate_threshold", 0.0),
    ],
)
def test_cores_reject_bad_values_alike(
    native: ModuleType, pure: ModuleType, field: str, bad: Any
) -> None:
    """Both cores check their own inputs and say the same (up to number formatting)."""
    messages = []
    for module in (native, pure):
        kwargs: dict[str, Any] = {field: bad}
        if field.endswith("rate_threshold") or field == "minimum_calls":
            kwargs["sliding_window"] = 1.0
        with pytest.raises(ValueError, match=field) as caught:
            module.CircuitBreakerCore("x", **kwargs)
        messages.append(str(caught.value).split(", got")[0])
    assert messages[0] == messages[1]

"""Bad input gets the same answer from both backends: the same exception type and
the same message, naming the parameter (the shared rules of ``shared._validation``).

Hypothesis draws values of every kind (wrong types, bools, ints too large for a
float, NaN, infinities, huge and negative numbers) and feeds each to the native
core and to its pure twin at every place a number, a key or a ticket enters.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
from collections.abc import Callable
from types import ModuleType
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shared.resilience import CircuitBreakerConfig, RateLimitConfig, RetryConfig
from shared.testing import ManualClock

# The Rust core and its twin side by side in every run: the backend the run
# selected plays no part.
pytestmark = pytest.mark.backend_independent

bad_values = st.one_of(
    st.sampled_from(
        [
            "5",
            "",
            b"1",
            True,
            False,
            None,
            [],
            object(),
            2**64,
            2**1024,
            -(2**1024),
            -1,
            0,
            math.nan,
            math.inf,
            -math.inf,
            1e300,
            -0.0,
            "\ud800",
        ]
    ),
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.text(max_size=3),
)


def outcome(call: Callable[..., Any], *args: Any) -> tuple[str, str]:
    """The exception type and message of ``call(*args)``, or ("ok", a comparable
    rendering of its result)."""
    try:
        result = call(*args)
    except Exception as exc:  # the type and message are what is compared
        return (type(exc).__name__, str(exc))
    if isinstance(result, tuple):
        result = tuple(getattr(item, "tokens", item) for item in result)
    return ("ok", repr(result))


@dataclasses.dataclass
class _Config:
    """A duck-typed bucket configuration (the cores read any object's attributes)."""

    tokens_per_second: Any = 1.0
    burst_size: Any = 5.0
    initial_tokens: Any = 5.0


def limiters(core: ModuleType) -> list[Any]:
    clock = ManualClock()
    config = RateLimitConfig(tokens_per_second=1.0, burst_size=5)
    registry = core.RateLimiterRegistry(config, clock=clock)
    return [core.TokenBucket(config, clock=clock), registry.get_limiter("k")]


@pytest.fixture
def cores(native: ModuleType, pure: ModuleType) -> tuple[ModuleType, ModuleType]:
    return native, pure


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(value=bad_values, method=st.sampled_from(["try_acquire", "reserve", "retry_after"]))
def test_limiter_arguments(cores: tuple[ModuleType, ModuleType], value: Any, method: str) -> None:
    """tokens and timeout of every limiter call: same errors on both cores."""
    native, pure = (limiters(core) for core in cores)
    for rust_limiter, pure_limiter in zip(native, pure, strict=True):
        rust_call, pure_call = getattr(rust_limiter, method), getattr(pure_limiter, method)
        assert outcome(rust_call, value) == outcome(pure_call, value)
        if method == "reserve":
            assert outcome(rust_call, 1.0, value) == outcome(pure_call, 1.0, value)


@settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(tokens=bad_values, ticket=bad_values)
def test_cancel_reservation_arguments(
    cores: tuple[ModuleType, ModuleType], tokens: Any, ticket: Any
) -> None:
    """cancel_reservation with bad tokens or tickets: same errors on both cores."""
    native, pure = (limiters(core) for core in cores)
    for rust_limiter, pure_limiter in zip(native, pure, strict=True):
        rust_cancel, pure_cancel = rust_limiter.cancel_reservation, pure_limiter.cancel_reservation
        rust_ticket, pure_ticket = rust_limiter.reserve(1.0)[1], pure_limiter.reserve(1.0)[1]
        assert outcome(rust_cancel, tokens, ticket) == outcome(pure_cancel, tokens, ticket)
        assert outcome(rust_cancel, tokens, rust_ticket) == outcome(
            pure_cancel, tokens, pure_ticket
        )


@settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(value=bad_values, field=st.sampled_from(["max_keys", "idle_ttl"]))
def test_registry_arguments(cores: tuple[ModuleType, ModuleType], value: Any, field: str) -> None:
    """max_keys and idle_ttl: same errors on both cores."""
    config = RateLimitConfig()
    rust, python = (
        outcome(lambda core=core: len(core.RateLimiterRegistry(config, **{field: value})))
        for core in cores
    )
    assert rust == python


@settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(key=st.one_of(bad_values, st.text(max_size=4)))
def test_registry_keys(cores: tuple[ModuleType, ModuleType], key: Any) -> None:
    """Keys of every kind: same results and errors on both cores, `in` included."""
    rust, python = (core.RateLimiterRegistry(RateLimitConfig()) for core in cores)
    for method in ("get_limiter", "remove_limiter"):
        rust_call, pure_call = getattr(rust, method), getattr(python, method)
        assert outcome(rust_call, key) == outcome(pure_call, key)
    assert outcome(lambda: key in rust) == outcome(lambda: key in python)


@settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    value=bad_values,
    field=st.sampled_from(["tokens_per_second", "burst_size", "initial_tokens"]),
)
def test_duck_typed_bucket_configs(
    cores: tuple[ModuleType, ModuleType], value: Any, field: str
) -> None:
    """Bad fields of any config object: same errors on both cores."""
    config = _Config(**{field: value})
    rust, python = (outcome(lambda core=core: core.TokenBucket(config) and None) for core in cores)
    assert rust == python


@settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(value=bad_values, field=st.sampled_from(["ratio", "min_retries_per_second", "ttl"]))
def test_retry_budget_arguments(
    cores: tuple[ModuleType, ModuleType], value: Any, field: str
) -> None:
    """RetryBudget ratio, min_retries_per_second and ttl: same errors on both cores."""
    rust, python = (
        outcome(lambda core=core: core.RetryBudget(**{field: value}).available()) for core in cores
    )
    assert rust == python


NUMERIC_FIELDS: list[tuple[Callable[..., Any], str]] = [
    (RateLimitConfig, "tokens_per_second"),
    (RateLimitConfig, "burst_size"),
    (RateLimitConfig, "initial_tokens"),
    (RetryConfig, "max_attempts"),
    (RetryConfig, "initial_delay"),
    (RetryConfig, "max_delay"),
    (RetryConfig, "exponential_base"),
    (RetryConfig, "max_total_time"),
    (CircuitBreakerConfig, "failure_threshold"),
    (CircuitBreakerConfig, "timeout"),
]


@settings(max_examples=300, deadline=None)
@given(value=bad_values, target=st.sampled_from(NUMERIC_FIELDS))
def test_config_fields_fail_with_a_value_or_type_error_naming_the_field(
    value: Any, target: tuple[Callable[..., Any], str]
) -> None:
    """Configs are validated in Python (the same code on both backends): whatever the
    value, the answer is a config, or a ValueError/TypeError whose message names the
    field; never an OverflowError or a saturated duration."""
    config_class, field = target
    kind, message = outcome(lambda: config_class(**{field: value}))
    if kind == "ok":
        return
    assert kind in ("ValueError", "TypeError"), (kind, message)
    # The field itself, or the field it must agree with (max_delay >= initial_delay).
    named = message.split(" ", 1)[0]
    assert named == field or named in inspect.signature(config_class).parameters, message


def test_durations_that_would_saturate_are_refused() -> None:
    """1e300 seconds as a breaker timeout or a retry deadline: refused, naming the field."""
    with pytest.raises(ValueError, match=r"timeout must be a finite number > 0 and <= 1e\+09"):
        CircuitBreakerConfig(timeout=1e300)
    with pytest.raises(ValueError, match="max_total_time"):
        RetryConfig(max_total_time=1e300)

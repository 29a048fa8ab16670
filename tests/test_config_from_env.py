"""``from_env()`` on the configs: the document's variables, defaults, and errors naming them."""

from __future__ import annotations

import contextvars

import pytest

from shared.config import EnvConfigError, ServiceSettings
from shared.resilience import (
    BackoffStrategy,
    CircuitBreaker,
    CircuitBreakerConfig,
    CircuitBreakerOpenError,
    Jitter,
    RateLimitConfig,
    RetryConfig,
    TokenBucket,
)
from shared.testing import ManualClock

# Parsing the environment builds plain config objects, the same on both
# backends; test_configs_from_env_drive_the_cores runs the cores on both.
ONCE = pytest.mark.backend_independent

# The document's "Environment Variables" block, verbatim.
DOCUMENT_ENV = {
    "ENVIRONMENT": "production",
    "LOG_LEVEL": "INFO",
    "JAEGER_ENDPOINT": "http://jaeger:4318",
    "TRACE_SAMPLE_RATE": "0.1",
    "CIRCUIT_BREAKER_FAILURE_THRESHOLD": "5",
    "CIRCUIT_BREAKER_TIMEOUT": "60",
    "RATE_LIMIT_REQUESTS_PER_SECOND": "100",
    "RATE_LIMIT_BURST_SIZE": "200",
    "HEALTH_CHECK_PORT": "8080",
    "METRICS_PORT": "9090",
}


@ONCE
def test_the_documents_block_configures_everything() -> None:
    """Every variable of the document's block lands in its field."""
    breaker = CircuitBreakerConfig.from_env(DOCUMENT_ENV)
    assert (breaker.failure_threshold, breaker.timeout) == (5, 60.0)
    limit = RateLimitConfig.from_env(DOCUMENT_ENV)
    assert (limit.tokens_per_second, limit.burst_size, limit.initial_tokens) == (
        100.0,
        200.0,
        200.0,
    )
    settings = ServiceSettings.from_env(DOCUMENT_ENV)
    assert settings.environment == "production"
    assert settings.log_level == "INFO"
    assert settings.trace_sample_rate == 0.1
    assert settings.otlp_endpoint == "http://jaeger:4318"
    assert (settings.health_check_port, settings.metrics_port) == (8080, 9090)


def test_configs_from_env_drive_the_cores() -> None:
    """A breaker and a bucket built from the environment behave as configured, on this backend."""
    env = {
        "CIRCUIT_BREAKER_FAILURE_THRESHOLD": "2",
        "CIRCUIT_BREAKER_TIMEOUT": "1.5",
        "RATE_LIMIT_REQUESTS_PER_SECOND": "1",
        "RATE_LIMIT_BURST_SIZE": "3",
    }
    clock = ManualClock()
    breaker = CircuitBreaker("env", CircuitBreakerConfig.from_env(env), clock=clock, registry=None)
    for _ in range(2):
        with pytest.raises(ZeroDivisionError):
            breaker.call(lambda: 1 / 0)
    assert breaker.state.name == "OPEN"
    clock.advance(1.5)
    assert breaker.call(lambda: "probe") == "probe"
    bucket = TokenBucket(RateLimitConfig.from_env(env), clock=clock)
    assert [bucket.try_acquire() for _ in range(4)] == [True, True, True, False]


@ONCE
def test_unset_and_blank_variables_keep_the_given_defaults() -> None:
    """Keywords are the defaults; a blank variable counts as unset; set ones win."""
    config = CircuitBreakerConfig.from_env(
        {"CIRCUIT_BREAKER_TIMEOUT": "  ", "CIRCUIT_BREAKER_FAILURE_THRESHOLD": " 7 "},
        timeout=3.0,
        failure_threshold=4,
        expected_exceptions=(ConnectionError,),
    )
    assert (config.timeout, config.failure_threshold) == (3.0, 7)
    assert config.expected_exceptions == (ConnectionError,)
    assert CircuitBreakerConfig.from_env({}) == CircuitBreakerConfig()
    assert RateLimitConfig.from_env({}) == RateLimitConfig()
    assert ServiceSettings.from_env({}) == ServiceSettings()


@ONCE
def test_prefix_selects_a_services_own_variables() -> None:
    """``prefix`` reads ``PREFIX_NAME`` and ignores the bare name."""
    env = {"CIRCUIT_BREAKER_TIMEOUT": "9", "PAYMENTS_CIRCUIT_BREAKER_TIMEOUT": "2"}
    assert CircuitBreakerConfig.from_env(env, prefix="PAYMENTS_").timeout == 2.0
    assert (
        CircuitBreakerConfig.from_env({"CIRCUIT_BREAKER_TIMEOUT": "9"}, prefix="X_").timeout == 60
    )


def test_probe_timeout_from_env_leases_the_probe_slots() -> None:
    """``CIRCUIT_BREAKER_PROBE_TIMEOUT`` sets ``probe_timeout``; unset, it follows ``timeout``."""
    assert CircuitBreakerConfig.from_env({"CIRCUIT_BREAKER_TIMEOUT": "4"}).probe_timeout is None
    env = {"CIRCUIT_BREAKER_FAILURE_THRESHOLD": "1", "CIRCUIT_BREAKER_PROBE_TIMEOUT": "2.5"}
    config = CircuitBreakerConfig.from_env(env)
    assert config.probe_timeout == 2.5
    clock = ManualClock()
    breaker = CircuitBreaker("env-probe", config, clock=clock, registry=None)
    assert breaker.probe_timeout == 2.5
    with pytest.raises(ZeroDivisionError):
        breaker.call(lambda: 1 / 0)
    clock.advance(60)
    contextvars.copy_context().run(breaker.__enter__)  # a probe that never reports
    clock.advance(1)
    with pytest.raises(CircuitBreakerOpenError) as caught:
        breaker.call(lambda: None)
    assert caught.value.retry_after == pytest.approx(1.5)
    clock.advance(1.5)
    assert breaker.call(lambda: "new probe") == "new probe"


@ONCE
def test_reads_os_environ_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without a mapping, the process environment is read."""
    monkeypatch.setenv("RATE_LIMIT_REQUESTS_PER_SECOND", "42")
    assert RateLimitConfig.from_env().tokens_per_second == 42.0


@ONCE
@pytest.mark.parametrize(
    ("factory", "variable", "value", "reason"),
    [
        (CircuitBreakerConfig.from_env, "CIRCUIT_BREAKER_FAILURE_THRESHOLD", "five", "integer"),
        (CircuitBreakerConfig.from_env, "CIRCUIT_BREAKER_FAILURE_THRESHOLD", "5.0", "integer"),
        (CircuitBreakerConfig.from_env, "CIRCUIT_BREAKER_FAILURE_THRESHOLD", "0", ">= 1"),
        (CircuitBreakerConfig.from_env, "CIRCUIT_BREAKER_TIMEOUT", "-1", "> 0"),
        (CircuitBreakerConfig.from_env, "CIRCUIT_BREAKER_TIMEOUT", "inf", "finite"),
        (CircuitBreakerConfig.from_env, "CIRCUIT_BREAKER_TIMEOUT", "nan", "finite"),
        (CircuitBreakerConfig.from_env, "CIRCUIT_BREAKER_PROBE_TIMEOUT", "0", "> 0"),
        (CircuitBreakerConfig.from_env, "CIRCUIT_BREAKER_PROBE_TIMEOUT", "soon", "number"),
        (RateLimitConfig.from_env, "RATE_LIMIT_REQUESTS_PER_SECOND", "0", "> 0"),
        (RateLimitConfig.from_env, "RATE_LIMIT_REQUESTS_PER_SECOND", "fast", "number"),
        (RateLimitConfig.from_env, "RATE_LIMIT_BURST_SIZE", "0.5", ">= 1"),
        (RetryConfig.from_env, "RETRY_MAX_ATTEMPTS", "0", ">= 1"),
        (RetryConfig.from_env, "RETRY_BACKOFF_STRATEGY", "random", "exponential"),
        (RetryConfig.from_env, "RETRY_JITTER", "maybe", "decorrelated"),
        (ServiceSettings.from_env, "LOG_LEVEL", "LOUD", "DEBUG"),
        (ServiceSettings.from_env, "TRACE_SAMPLE_RATE", "1.5", "[0, 1]"),
        (ServiceSettings.from_env, "HEALTH_CHECK_PORT", "http", "integer"),
        (ServiceSettings.from_env, "METRICS_PORT", "70000", "65535"),
        (ServiceSettings.from_env, "JAEGER_ENDPOINT", "jaeger:4318", "http"),
        (ServiceSettings.from_env, "SHUTDOWN_TIMEOUT", "0", "> 0"),
    ],
)
def test_a_bad_value_names_the_variable(
    factory: object, variable: str, value: str, reason: str
) -> None:
    """The error is an EnvConfigError (a ValueError) with the variable, its value and why."""
    with pytest.raises(EnvConfigError) as info:
        factory({variable: value})  # type: ignore[operator]
    assert isinstance(info.value, ValueError)
    assert info.value.variable == variable
    assert info.value.value == value
    assert str(info.value).startswith(f"{variable}={value!r}")
    assert reason in str(info.value)


@ONCE
def test_a_cross_field_error_names_the_variable_at_fault() -> None:
    """initial tokens above the burst blame RATE_LIMIT_INITIAL_TOKENS, not the burst."""
    with pytest.raises(EnvConfigError) as info:
        RateLimitConfig.from_env({"RATE_LIMIT_BURST_SIZE": "5", "RATE_LIMIT_INITIAL_TOKENS": "10"})
    assert info.value.variable == "RATE_LIMIT_INITIAL_TOKENS"


@ONCE
def test_a_bad_keyword_is_the_callers_error_not_the_environments() -> None:
    """A bad default given in code raises the config's own error, not EnvConfigError."""
    with pytest.raises(ValueError, match="failure_threshold") as info:
        CircuitBreakerConfig.from_env({}, failure_threshold=0)
    assert not isinstance(info.value, EnvConfigError)
    with pytest.raises(TypeError):
        CircuitBreakerConfig.from_env({}, no_such_field=1)


@ONCE
def test_retry_config_from_env() -> None:
    """Retry's variables: attempts, delays, strategy and jitter in either spelling."""
    config = RetryConfig.from_env(
        {
            "RETRY_MAX_ATTEMPTS": "5",
            "RETRY_INITIAL_DELAY": "0.1",
            "RETRY_MAX_DELAY": "2",
            "RETRY_BACKOFF_STRATEGY": "Linear",
            "RETRY_JITTER": "true",
            "RETRY_MAX_TOTAL_TIME": "10",
        },
        retry_on=(ConnectionError,),
    )
    assert (config.max_attempts, config.initial_delay, config.max_delay) == (5, 0.1, 2.0)
    assert config.backoff_strategy is BackoffStrategy.LINEAR
    assert config.jitter_mode is Jitter.EQUAL
    assert config.max_total_time == 10.0
    assert config.retry_on == (ConnectionError,)
    assert RetryConfig.from_env({"RETRY_JITTER": "decorrelated"}).jitter is Jitter.DECORRELATED
    assert RetryConfig.from_env({"RETRY_JITTER": "off"}).jitter is False


@ONCE
def test_otlp_endpoint_prefers_the_standard_variable() -> None:
    """OTEL_EXPORTER_OTLP_ENDPOINT wins over the document's JAEGER_ENDPOINT."""
    env = {
        "JAEGER_ENDPOINT": "http://jaeger:4318",
        "OTEL_EXPORTER_OTLP_ENDPOINT": "https://otel:4318",
    }
    assert ServiceSettings.from_env(env).otlp_endpoint == "https://otel:4318"
    assert ServiceSettings.from_env({"OTEL_SERVICE_NAME": "prophet"}).service_name == "prophet"

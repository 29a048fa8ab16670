"""The I/O-free core of the Redis limiters, without a server: the arguments a
call sends, the parsing of replies and the failure policy (with a fake clock).

The sync and async clients only carry these arguments to Redis and hand back
what came of it, so what is decided here is decided the same way for both.
"""

from __future__ import annotations

import logging

import pytest

from shared.resilience import RateLimiterUnavailableError, RateLimitExceeded
from shared.resilience._redis_gcra import (
    GCRA_SCRIPT,
    RESET_SCRIPT,
    BucketMath,
    Decisions,
    FailurePolicy,
    ForeignStateError,
    Reply,
    glob_escape,
    max_wait_us,
    round_trip_limit,
)

pytestmark = pytest.mark.backend_independent


class RefusedError(Exception):
    """Stands for redis.exceptions.ResponseError."""


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def policy(on_unavailable: str, clock: Clock, interval: float = 1.0) -> FailurePolicy:
    return FailurePolicy(
        "redis://db:6379/0",
        on_unavailable,
        interval,
        errors=(ConnectionError,),
        refusals=(RefusedError,),
        clock=clock,
    )


def test_arguments_are_in_microseconds_and_round_trip_exactly() -> None:
    # 4 tokens/s: one token is 250,000 us; a burst of 10 tolerates 2.5 s of debt.
    math = BucketMath("user", 4.0, 10.0, 6.0)
    cost = math.cost_us(2)
    assert cost == 500_000.0
    assert math.args("acquire", cost, -1.0) == [
        "acquire",
        "2500000.0",
        "500000.0",
        "1000000.0",
        "-1.0",
    ]
    # repr is exact: the script reads back the same doubles
    odd = BucketMath("k", 3.0, 7.0, 7.0)
    assert float(odd.args("peek", odd.cost_us(1))[2]) == 1_000_000.0 / 3.0


@pytest.mark.parametrize("tokens", [0, -1, 10.5, float("nan")])
def test_a_cost_outside_the_burst_names_tokens(tokens: float) -> None:
    with pytest.raises(ValueError, match="tokens"):
        BucketMath("k", 1.0, 10.0, 10.0).cost_us(tokens)


def test_max_wait_and_round_trip_limit() -> None:
    assert max_wait_us(None) == -1.0
    assert max_wait_us(float("inf")) == -1.0
    assert max_wait_us(0.25) == 250_000.0
    with pytest.raises(ValueError, match="timeout"):
        max_wait_us(-1)
    assert round_trip_limit(1.0, None) == 1.0
    assert round_trip_limit(1.0, 0) == 1.0  # 0 refuses to wait for tokens, not for Redis
    assert round_trip_limit(1.0, 0.2) == 0.2
    assert round_trip_limit(1.0, 5.0) == 1.0


@pytest.mark.parametrize("raw", [b"1 250000 750000", "1 250000 750000"])
def test_replies_parse_from_bytes_and_str(raw: object) -> None:
    reply = Reply.parse(raw)
    assert reply == Reply(True, 0.25, 750_000.0)
    math = BucketMath("k", 4.0, 10.0, 10.0)
    assert math.available(reply) == 7.0
    assert math.available(Reply(False, 0.0, 9e9)) == 0.0
    assert math.available(Reply(True, 0.0, 0.0)) == 10.0


def test_a_refusal_becomes_rate_limit_exceeded_with_the_wait() -> None:
    error = BucketMath("alice", 1.0, 1.0, 1.0).exceeded(Reply.parse("0 1500000 2500000"))
    assert isinstance(error, RateLimitExceeded)
    assert error.retry_after == 1.5
    assert "alice" in str(error)


def test_a_foreign_state_reply_is_recognised() -> None:
    with pytest.raises(ForeignStateError, match="holds a Redis list"):
        Reply.parse(b"E holds a Redis list, not a rate-limiter state")


def test_fail_closed_names_the_server_and_skips_it_for_the_interval() -> None:
    clock = Clock()
    link = policy("fail_closed", clock, interval=2.0)
    assert link.should_try()
    with pytest.raises(RateLimiterUnavailableError) as caught:
        link.settle("k", exc=ConnectionError("refused"))
    assert caught.value.server == "redis://db:6379/0"
    assert "ConnectionError: refused" in caught.value.reason
    assert not link.should_try()
    clock.now += 1.0
    with pytest.raises(RateLimiterUnavailableError, match=r"next attempt in 1\.000s"):
        link.skipped()
    clock.now += 1.0
    assert link.should_try()
    assert link.settle("k", b"1 0 10") == Reply(True, 0.0, 10.0)


@pytest.mark.parametrize("on_unavailable", ["fail_open", "local"])
def test_other_policies_let_the_caller_decide(on_unavailable: str) -> None:
    clock = Clock()
    link = policy(on_unavailable, clock)
    assert link.settle("k", exc=ConnectionError("down")) is None
    assert not link.should_try()
    link.skipped()  # no error: the caller falls back
    clock.now += 1.0
    assert link.should_try()


def test_an_outage_is_logged_once_and_its_end_once(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    link = policy("fail_open", clock, interval=0.0)
    with caplog.at_level(logging.WARNING, logger="shared.resilience.redis_rate_limiter"):
        for _ in range(3):
            assert link.settle("k", exc=ConnectionError("down")) is None
        link.settle("k", b"1 0 0")
        link.settle("k", b"1 0 0")
    messages = [record.getMessage() for record in caplog.records]
    assert len(messages) == 2
    assert "unreachable" in messages[0]
    assert "redis://db:6379/0" in messages[0]
    assert "reachable again" in messages[1]


def test_a_refusal_or_a_foreign_state_applies_the_policy_to_this_call_only() -> None:
    clock = Clock()
    closed = policy("fail_closed", clock)
    with pytest.raises(RateLimiterUnavailableError, match="'k' was refused: OOM"):
        closed.settle("k", exc=RefusedError("OOM"))
    with pytest.raises(RateLimiterUnavailableError, match="'k' holds a Redis hash"):
        closed.settle("k", b"E holds a Redis hash, not a rate-limiter state")
    assert closed.should_try()  # the server answered: it is not skipped
    assert policy("local", clock).settle("k", exc=RefusedError("OOM")) is None


def test_bad_policy_options_name_the_parameter() -> None:
    with pytest.raises(ValueError, match="on_unavailable"):
        FailurePolicy("s", "retry", 1.0)
    with pytest.raises(ValueError, match="reconnect_interval"):
        FailurePolicy("s", "fail_open", -1.0)
    with pytest.raises(ValueError, match="command_timeout"):
        FailurePolicy("s", "fail_open", 1.0, command_timeout=0)


def test_decisions_count_and_sum_waits() -> None:
    decisions = Decisions()
    decisions.decided(True, 0.5)
    decisions.decided(True)
    decisions.decided(False, 3.0)  # a refusal waited for nothing
    assert decisions.to_dict() == {"granted": 2, "rejected": 1, "waited_ns": 500_000_000}


def test_scan_patterns_match_the_prefix_literally() -> None:
    assert glob_escape("a*b?[c]\\") == "a\\*b\\?\\[c\\]\\\\"


def test_the_scripts_share_one_definition_of_a_trusted_state() -> None:
    assert "local function debt_of" in GCRA_SCRIPT
    assert GCRA_SCRIPT.split("\n", 20)[:5] == RESET_SCRIPT.split("\n", 20)[:5]

"""IdempotencyKey: the document's formats and a canonical, stable from_user_request."""

from __future__ import annotations

import dataclasses
import datetime
import enum
import hashlib
import math
import os
import subprocess
import sys
import uuid
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shared.resilience import IdempotencyKey
from shared.resilience.idempotency.canonical import canonical_json

pytestmark = pytest.mark.backend_independent

DEPOSIT = {"user_id": "user123", "operation": "deposit", "amount": 1000, "token": "USDC"}
# Pinned: the key must never change between versions, processes or platforms.
DEPOSIT_KEY = "ad96f3376fb656167d217af21a933152582ba2895fd2cac447d8892c3f5a1f4c"


def test_user_request_is_sha256_of_canonical_json() -> None:
    """The key is the SHA-256 hex of sorted, compact JSON."""
    text = '{"amount":1000,"operation":"deposit","token":"USDC","user_id":"user123"}'
    assert hashlib.sha256(text.encode()).hexdigest() == DEPOSIT_KEY
    assert IdempotencyKey.from_user_request(**DEPOSIT) == DEPOSIT_KEY


def test_user_request_is_stable_across_processes() -> None:
    """Another interpreter with another hash seed gives the same key."""
    code = (
        "from shared.resilience import IdempotencyKey as K; "
        "print(K.from_user_request(token='USDC', amount=1000, operation='deposit', "
        "user_id='user123'))"
    )
    for seed in ("12345",):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        out = subprocess.run(
            [sys.executable, "-c", code],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        assert out.stdout.strip() == DEPOSIT_KEY


@pytest.mark.parametrize(
    ("a", "b"),
    [
        (1000, 1000.0),
        (1000, Decimal("1000.00")),
        (Decimal("1E+3"), 1000),
        (0.1, Decimal("0.10")),
        (-0.0, 0),
        (Decimal("-0.000"), 0),
        (2.5, Decimal("2.50")),
        ("caf\u00e9", "cafe\u0301"),
    ],
)
def test_equal_values_give_equal_keys(a: Any, b: Any) -> None:
    """Numbers by value and strings in NFC: equal values, one key."""
    assert IdempotencyKey.from_user_request(v=a) == IdempotencyKey.from_user_request(v=b)


@pytest.mark.parametrize(
    ("a", "b"),
    [
        (1, "1"),
        (1, True),
        (0, False),
        (None, "null"),
        (0.1, 0.1000001),
        ([1, 2], [2, 1]),
        ("a", "A"),
    ],
)
def test_different_values_give_different_keys(a: Any, b: Any) -> None:
    """Types and values that differ give different keys."""
    assert IdempotencyKey.from_user_request(v=a) != IdempotencyKey.from_user_request(v=b)


@given(
    st.dictionaries(
        st.text(min_size=1, max_size=8),
        st.integers() | st.text() | st.floats(allow_nan=False, allow_infinity=False),
        min_size=1,
        max_size=6,
    )
)
def test_order_never_matters(params: dict[str, Any]) -> None:
    """The same parameters in any order give the same key."""
    reordered = dict(reversed(list(params.items())))
    assert IdempotencyKey.from_user_request(**params) == IdempotencyKey.from_user_request(
        **reordered
    )


def test_canonical_forms() -> None:
    """The canonical text of each supported type."""

    class Color(enum.Enum):
        RED = "red"

    @dataclasses.dataclass
    class Order:
        qty: int
        px: Decimal

    value = {
        "z": [True, False, None],
        "a": Decimal("12.3400"),
        "f": 1e21,
        "d": datetime.date(2026, 1, 2),
        "u": uuid.UUID(int=1),
        "e": Color.RED,
        "o": Order(2, Decimal("0.5")),
        "b": b"\x01\xff",
        "s": "\u00e9\n",
    }
    assert canonical_json(value) == (
        '{"a":12.34,"b":"01ff","d":"2026-01-02","e":"red","f":1000000000000000000000,'
        '"o":{"px":0.5,"qty":2},"s":"\\u00e9\\n","u":"00000000-0000-0000-0000-000000000001",'
        '"z":[true,false,null]}'
    )


@pytest.mark.parametrize(
    "bad", [math.nan, math.inf, -math.inf, Decimal("NaN"), Decimal("Infinity")]
)
def test_non_finite_numbers_are_refused(bad: Any) -> None:
    """NaN and infinities have no canonical value: ValueError naming the parameter."""
    with pytest.raises(ValueError, match="amount"):
        IdempotencyKey.from_user_request(amount=bad)


def test_unsupported_values_are_refused() -> None:
    """A value with no canonical form is a TypeError naming the parameter and type."""
    with pytest.raises(TypeError, match=r"params\['signal'\].*object"):
        IdempotencyKey.from_user_request(signal=object())
    with pytest.raises(TypeError, match="keys must be str"):
        IdempotencyKey.from_user_request(m={1: 2})
    with pytest.raises(ValueError, match="at least one"):
        IdempotencyKey.from_user_request()


def test_the_documents_formats() -> None:
    """from_trade, from_blockchain_tx and from_event give the document's strings exactly."""
    assert (
        IdempotencyKey.from_trade(
            strategy_id="strat_456", signal_hash="abc123", timestamp=1730500000
        )
        == "trade_strat_456_1730500000_abc123"
    )
    assert (
        IdempotencyKey.from_blockchain_tx(operation="bridge", chain="solana", params_hash="def789")
        == "blockchain_bridge_solana_def789"
    )
    assert IdempotencyKey.from_event("evt_12345") == "event_evt_12345"


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda: IdempotencyKey.from_trade("", "h", 1), ValueError, "strategy_id"),
        (lambda: IdempotencyKey.from_trade("s", 5, 1), TypeError, "signal_hash"),
        (lambda: IdempotencyKey.from_trade("s", "h", 1.5), TypeError, "timestamp"),
        (lambda: IdempotencyKey.from_trade("s", "h", True), TypeError, "timestamp"),
        (lambda: IdempotencyKey.from_blockchain_tx("bridge", "", "p"), ValueError, "chain"),
        (
            lambda: IdempotencyKey.from_blockchain_tx("bridge", "sol", None),
            TypeError,
            "params_hash",
        ),
        (lambda: IdempotencyKey.from_event(""), ValueError, "event_id"),
        (lambda: IdempotencyKey.from_event(12345), TypeError, "event_id"),
    ],
)
def test_bad_parts(call: Any, error: type, match: str) -> None:
    """Empty or non-str parts are refused, naming the parameter."""
    with pytest.raises(error, match=match):
        call()

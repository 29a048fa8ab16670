"""Results as tagged JSON: equal values of the same type back, clear errors otherwise."""

from __future__ import annotations

import dataclasses
import datetime
import enum
import math
import uuid
from decimal import Decimal
from typing import Any

import pytest

from shared.resilience.idempotency import ResultCodec
from shared.resilience.idempotency.codec import decode, encode

pytestmark = pytest.mark.backend_independent


class Status(enum.Enum):
    FILLED = "filled"
    REJECTED = "rejected"


@dataclasses.dataclass(frozen=True)
class Receipt:
    tx: str
    amount: Decimal
    status: Status
    at: datetime.datetime
    legs: tuple[int, ...] = ()


VALUES: list[Any] = [
    None,
    True,
    0,
    -(2**70),
    1.25,
    math.inf,
    "text ü \u2603",
    [1, [2, [3]]],
    {"a": {"b": [None]}},
    {1: "int key", (1, 2): "tuple key"},
    {"$t": "a user's own key"},
    (1, "a", (2,)),
    Decimal("12345678901234567890.000000000000000001"),
    datetime.datetime(2026, 3, 4, 5, 6, 7, 8, tzinfo=datetime.UTC),
    datetime.datetime(2026, 3, 4, 5, 6, 7),
    datetime.date(2026, 3, 4),
    datetime.time(5, 6, 7, tzinfo=datetime.timezone(datetime.timedelta(hours=2))),
    uuid.uuid4(),
    b"\x00\xffbytes",
    Status.FILLED,
    Receipt(
        "0xabc",
        Decimal("0.1"),
        Status.REJECTED,
        datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone(datetime.timedelta(hours=-3))),
        (1, 2),
    ),
]


@pytest.mark.parametrize("value", VALUES, ids=lambda v: type(v).__name__)
def test_round_trip(value: Any) -> None:
    """decode(encode(v)) equals v and has v's type (and a datetime keeps its offset)."""
    text = encode(value)
    assert isinstance(text, str)
    back = decode(text)
    assert back == value
    assert type(back) is type(value)
    if isinstance(value, datetime.datetime):
        assert back.utcoffset() == value.utcoffset()
    assert decode(text.encode()) == value  # Redis returns bytes


def test_nan_round_trips() -> None:
    """NaN is stored (as a tagged float) and comes back as NaN."""
    assert math.isnan(decode(encode(math.nan)))


@pytest.mark.parametrize("value", [{1, 2}, object(), lambda: 1, [1, {"x": frozenset()}]])
def test_unstorable_results_name_their_type(value: Any) -> None:
    """A value that cannot be stored is a TypeError naming its type."""
    with pytest.raises(TypeError, match="cannot be stored"):
        encode(value)


def test_decode_refuses_unknown_tags_and_non_classes() -> None:
    """Corrupt or foreign tagged values are a ValueError, never a silent wrong value."""
    with pytest.raises(ValueError, match="unknown tag"):
        decode('{"$t": "nope", "v": 1}')
    with pytest.raises(ValueError, match="not a class"):
        decode('{"$t": "enum", "c": "os:sep", "v": 1}')
    with pytest.raises(ValueError, match="not an Enum"):
        decode('{"$t": "enum", "c": "decimal:Decimal", "v": 1}')
    with pytest.raises(ValueError, match="not a dataclass"):
        decode('{"$t": "dataclass", "c": "decimal:Decimal", "v": {}}')


def test_result_codec() -> None:
    """ResultCodec defaults to the tagged JSON; pickle only when asked; bad arguments refused."""
    codec = ResultCodec()
    assert codec.loads(codec.dumps(Decimal("1.5"))) == Decimal("1.5")
    pickled = ResultCodec.pickle()
    assert pickled.loads(pickled.dumps({1, 2})) == {1, 2}
    with pytest.raises(TypeError, match="dumps"):
        ResultCodec(dumps=3)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="loads"):
        ResultCodec(loads=None)  # type: ignore[arg-type]

"""The result codecs: exact round trips, clear refusals, pickle only when asked."""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import json
import math
import pickle
import uuid
import zoneinfo
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.resilience.idempotency.codec import (
    Codec,
    CustomCodec,
    JsonCodec,
    PickleCodec,
    ResultNotStorableError,
    StoredValueError,
)

pytestmark = pytest.mark.backend_independent


class Side(enum.Enum):
    BUY = "buy"
    SELL = "sell"


class Level(enum.IntEnum):
    LOW = 1


@dataclasses.dataclass(frozen=True)
class Fill:
    price: Decimal
    qty: Decimal
    side: Side
    at: dt.datetime
    tags: tuple[str, ...] = ()
    note: str = dataclasses.field(default="", init=False)


def _same(a: Any, b: Any) -> bool:
    """Equal AND of the same type, all the way down (1 == 1.0 == True is not enough)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float) and math.isnan(a):
        return math.isnan(b)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, dt.datetime):
        return a == b and a.tzinfo == b.tzinfo and a.fold == b.fold
    if isinstance(a, Decimal):
        return str(a) == str(b)
    return bool(a == b)


def _round_trip(value: Any, codec: Codec | None = None) -> Any:
    codec = codec or JsonCodec()
    data = codec.encode(value)
    assert isinstance(data, bytes)
    return codec.decode(data)


PARIS = zoneinfo.ZoneInfo("Europe/Paris")
EXACT_VALUES = [
    None,
    True,
    False,
    0,
    -(2**200),
    1.1,
    -0.0,
    float("inf"),
    float("-inf"),
    1e-320,
    "",
    "é \x00 \U0001f600",
    Decimal("1000.10"),
    Decimal("-0.000000000000000000000000001"),
    Decimal("1E+3"),
    Decimal("NaN"),
    b"\x00\xff raw",
    [],
    (),
    (1, (2, [3])),
    {"$t": "not a tag", "v": 1},
    {"nested": {"$t": ["x"]}},
    {1.5, "a"},
    frozenset({1, 2}),
    dt.datetime(2026, 12, 5, 7, 0, 0, 123456),
    dt.datetime(2026, 12, 5, 7, 0, tzinfo=dt.UTC),
    dt.datetime(2026, 12, 5, 7, 0, tzinfo=dt.timezone(dt.timedelta(hours=-5), "EST")),
    dt.datetime(2026, 10, 25, 2, 30, tzinfo=PARIS, fold=1),
    dt.date(2026, 12, 5),
    dt.time(23, 59, 59, 999999),
    dt.timedelta(days=-1, seconds=5, microseconds=7),
    uuid.UUID("12345678-1234-5678-1234-567812345678"),
    Side.SELL,
    Level.LOW,
    Fill(Decimal("101.5"), Decimal("0.25"), Side.BUY, dt.datetime(2026, 1, 1, tzinfo=dt.UTC)),
]


@pytest.mark.parametrize("value", EXACT_VALUES, ids=repr)
def test_json_round_trip_is_exact(value: Any) -> None:
    """Every supported value comes back equal and of the same type (Decimal digits kept)."""
    back = _round_trip(value)
    if isinstance(value, (set, frozenset)):
        assert type(back) is type(value)
        assert back == value
    elif isinstance(value, float) and math.isnan(value):
        assert math.isnan(back)
    else:
        assert _same(back, value), (back, value)


def test_datetime_keeps_its_zone_object() -> None:
    """A ZoneInfo datetime comes back in the same IANA zone, not a fixed offset."""
    value = dt.datetime(2026, 3, 29, 12, 0, tzinfo=PARIS)
    back = _round_trip(value)
    assert back.tzinfo is PARIS
    assert back.utcoffset() == value.utcoffset()


def test_decimal_never_goes_through_float() -> None:
    """The stored form of a Decimal is its exact string."""
    data = JsonCodec().encode(Decimal("0.1000000000000000000000000001"))
    assert b'"0.1000000000000000000000000001"' in data
    assert _round_trip(Decimal("0.1000000000000000000000000001")) == Decimal(
        "0.1000000000000000000000000001"
    )


def test_dataclass_non_init_field_round_trips() -> None:
    """A dataclass's init=False fields are restored too."""
    fill = Fill(Decimal(1), Decimal(2), Side.BUY, dt.datetime(2026, 1, 1), ("a",))
    object.__setattr__(fill, "note", "partial")
    assert _round_trip(fill).note == "partial"


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False)
    | st.text()
    | st.decimals(allow_nan=False)
    | st.binary()
    | st.datetimes(timezones=st.none() | st.just(dt.UTC)),
    lambda children: (
        st.lists(children, max_size=4)
        | st.tuples(children, children)
        | st.dictionaries(st.text(max_size=5), children, max_size=4)
    ),
    max_leaves=20,
)


@settings(max_examples=40)
@given(json_values)
def test_json_round_trip_property(value: Any) -> None:
    """Arbitrary nests of the supported types round-trip exactly."""
    assert _same(_round_trip(value), value)


class Custom:
    pass


class MyStr(str):
    pass


@pytest.mark.parametrize(
    ("value", "type_name", "path"),
    [
        (Custom(), "Custom", "result"),
        ({"fills": [1, Custom()]}, "Custom", "result['fills'][1]"),
        ({1: "a"}, "dict with builtins.int keys", "result"),
        (MyStr("x"), "MyStr", "result"),
        (dt.time(1, tzinfo=dt.UTC), "datetime.time", "result"),
        (lambda: 1, "function", "result"),
    ],
)
def test_unstorable_values_name_their_type(value: Any, type_name: str, path: str) -> None:
    """Anything without an exact form: ResultNotStorableError naming the type and where."""
    with pytest.raises(ResultNotStorableError) as info:
        JsonCodec().encode(value)
    assert type_name in info.value.type_name
    assert info.value.path == path
    assert type_name in str(info.value)
    assert isinstance(info.value, TypeError)


def test_a_cycle_is_refused() -> None:
    """A result that contains itself is refused, not a RecursionError."""
    loop: list[Any] = [1]
    loop.append(loop)
    with pytest.raises(ResultNotStorableError, match="contains itself"):
        JsonCodec().encode(loop)


def test_a_shared_child_is_not_a_cycle() -> None:
    """The same list twice (not nested in itself) is fine."""
    child = [1]
    assert _round_trip([child, child]) == [[1], [1]]


def test_decode_refuses_unknown_and_malformed_tags() -> None:
    """Stored bytes that are not this codec's: StoredValueError, never a guess."""
    codec = JsonCodec()
    for data in (b"not json", b'{"$t": "nope", "v": 1}', b'{"$t": "decimal", "v": "x"}'):
        with pytest.raises(StoredValueError):
            codec.decode(data)


def test_enum_and_dataclass_resolve_only_registered_or_imported_classes() -> None:
    """A class name from the store is never imported; unknown names are refused."""
    stored = json.dumps({"$t": "enum", "c": "no_such_module_xyz.Side", "v": "buy"}).encode()
    with pytest.raises(StoredValueError, match="not registered"):
        JsonCodec().decode(stored)
    not_a_dataclass = json.dumps({"$t": "dataclass", "c": "os.path.join", "v": {}}).encode()
    with pytest.raises(StoredValueError, match="not registered"):
        JsonCodec().decode(not_a_dataclass)
    assert JsonCodec(types=[Side]).decode(JsonCodec().encode(Side.BUY)) is Side.BUY


def test_json_codec_rejects_bad_types_argument() -> None:
    """types= takes Enum and dataclass classes only."""
    with pytest.raises(TypeError, match="types"):
        JsonCodec(types=[int])


def test_pickle_is_opt_in_and_exact() -> None:
    """PickleCodec stores what JSON cannot; its refusals are ResultNotStorableError."""
    codec = PickleCodec()
    assert codec.name == "pickle"
    value = {1: Custom.__name__, "c": complex(1, 2)}
    assert codec.decode(codec.encode(value)) == value
    with pytest.raises(ResultNotStorableError):
        codec.encode(lambda: 1)
    with pytest.raises(ValueError, match="protocol"):
        PickleCodec(protocol=1)
    assert JsonCodec().name == "json"  # the default never unpickles


def test_custom_codec() -> None:
    """A serializer pair of your own; its errors become ResultNotStorableError."""
    codec = CustomCodec(lambda v: repr(v).encode(), lambda b: b.decode(), name="repr")
    assert codec.decode(codec.encode(5)) == "5"
    failing = CustomCodec(lambda v: 1 / 0, pickle.loads)
    with pytest.raises(ResultNotStorableError, match="ZeroDivisionError"):
        failing.encode(1)
    wrong = CustomCodec(lambda v: "str", pickle.loads)
    with pytest.raises(ResultNotStorableError, match="not bytes"):
        wrong.encode(1)
    with pytest.raises(TypeError, match="dumps"):
        CustomCodec(1, pickle.loads)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="name"):
        CustomCodec(pickle.dumps, pickle.loads, name="")


def test_a_class_a_replay_cannot_find_is_refused_at_encode() -> None:
    """A dataclass or Enum defined in a function is refused when stored (not when the
    replay fails to find it), unless registered."""

    @dataclasses.dataclass
    class Local:
        x: int

    class LocalSide(enum.Enum):
        A = "a"

    for value in (Local(1), LocalSide.A):
        with pytest.raises(ResultNotStorableError, match="register it"):
            JsonCodec().encode(value)
    codec = JsonCodec(types=[Local, LocalSide])
    assert codec.decode(codec.encode([Local(1), LocalSide.A])) == [Local(1), LocalSide.A]

"""Results as text: tagged JSON that gives back equal values of the same type.

What a trading service returns round-trips exactly: the JSON types, tuples,
dicts with non-str keys, ``Decimal`` (as text, never through float),
``datetime``/``date``/``time`` (with their UTC offset), ``UUID``, ``bytes``,
``Enum`` members and dataclasses (rebuilt from their ``__init__`` fields),
and non-finite floats. Anything else is a ``TypeError`` naming its type,
raised before anything is stored.

A tagged value is an object ``{"$t": tag, ...}``; a plain dict that happens to
have a ``"$t"`` key is itself tagged, so decoding is never ambiguous. Enum and
dataclass classes are found again by ``module:qualname`` and must be
importable where the result is read.

``ResultCodec`` lets users give their own ``dumps``/``loads`` pair; pickle is
available only by explicit opt-in (``ResultCodec.pickle()``): unpickling runs
code, so only use it when nobody else can write to the store.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime
import enum
import importlib
import json
import math
import uuid
from collections.abc import Callable
from decimal import Decimal
from typing import Any

__all__ = ["ResultCodec", "decode", "encode"]

_TAG = "$t"


def _class_path(cls: type) -> str:
    return f"{cls.__module__}:{cls.__qualname__}"


def _find_class(path: Any) -> type:
    if not isinstance(path, str) or ":" not in path:
        raise ValueError(f"stored result names no class: {path!r}")
    module_name, qualname = path.split(":", 1)
    obj: Any = importlib.import_module(module_name)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    if not isinstance(obj, type):
        raise ValueError(f"stored result names {path!r}, which is not a class")
    return obj


def _to_json(value: Any) -> Any:
    kind = type(value)
    if value is None or kind is str or kind is bool or kind is int:
        return value
    if kind is float:
        if math.isfinite(value):
            return value
        return {_TAG: "float", "v": repr(value)}
    if kind is list:
        return [_to_json(item) for item in value]
    if kind is dict:
        if all(type(k) is str for k in value) and _TAG not in value:
            return {k: _to_json(v) for k, v in value.items()}
        return {_TAG: "dict", "v": [[_to_json(k), _to_json(v)] for k, v in value.items()]}
    if kind is tuple:
        return {_TAG: "tuple", "v": [_to_json(item) for item in value]}
    if kind is Decimal:
        return {_TAG: "decimal", "v": str(value)}
    if kind is datetime.datetime:
        return {_TAG: "datetime", "v": value.isoformat()}
    if kind is datetime.date:
        return {_TAG: "date", "v": value.isoformat()}
    if kind is datetime.time:
        return {_TAG: "time", "v": value.isoformat()}
    if kind is uuid.UUID:
        return {_TAG: "uuid", "v": str(value)}
    if kind is bytes:
        return {_TAG: "bytes", "v": base64.b64encode(value).decode()}
    if isinstance(value, enum.Enum):
        return {_TAG: "enum", "c": _class_path(kind), "v": _to_json(value.value)}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        fields = {
            f.name: _to_json(getattr(value, f.name)) for f in dataclasses.fields(value) if f.init
        }
        return {_TAG: "dataclass", "c": _class_path(kind), "v": fields}
    raise TypeError(
        f"a result of type {kind.__module__}.{kind.__qualname__} cannot be stored: "
        "return JSON types, Decimal, datetime, date, time, UUID, bytes, tuple, an Enum "
        "member or a dataclass, or give the store a ResultCodec"
    )


def _from_json(value: Any) -> Any:
    if type(value) is list:
        return [_from_json(item) for item in value]
    if type(value) is not dict:
        return value
    tag = value.get(_TAG)
    if tag is None:
        return {k: _from_json(v) for k, v in value.items()}
    payload: Any = value.get("v")
    if tag == "float":
        return float(payload)
    if tag == "dict":
        return {_from_json(k): _from_json(v) for k, v in payload}
    if tag == "tuple":
        return tuple(_from_json(item) for item in payload)
    if tag == "decimal":
        return Decimal(payload)
    if tag == "datetime":
        return datetime.datetime.fromisoformat(payload)
    if tag == "date":
        return datetime.date.fromisoformat(payload)
    if tag == "time":
        return datetime.time.fromisoformat(payload)
    if tag == "uuid":
        return uuid.UUID(payload)
    if tag == "bytes":
        return base64.b64decode(payload)
    if tag == "enum":
        cls = _find_class(value.get("c"))
        if not issubclass(cls, enum.Enum):
            raise ValueError(f"stored result names {cls!r}, which is not an Enum")
        return cls(_from_json(payload))
    if tag == "dataclass":
        cls = _find_class(value.get("c"))
        if not dataclasses.is_dataclass(cls):
            raise ValueError(f"stored result names {cls!r}, which is not a dataclass")
        return cls(**{k: _from_json(v) for k, v in payload.items()})
    raise ValueError(f"stored result has an unknown tag {tag!r}")


def encode(value: Any) -> str:
    """``value`` as tagged JSON text; ``TypeError`` naming the type if it cannot be stored."""
    return json.dumps(_to_json(value), separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def decode(text: str | bytes) -> Any:
    """The value ``encode`` wrote (``bytes`` are UTF-8, as Redis returns them)."""
    if isinstance(text, (bytes, bytearray)):
        text = bytes(text).decode()
    return _from_json(json.loads(text))


class ResultCodec:
    """How a store turns results into text and back.

    Args:
        dumps: value -> ``str`` or ``bytes`` (default: ``encode``).
        loads: what ``dumps`` wrote -> value (default: ``decode``).
    """

    __slots__ = ("dumps", "loads")

    def __init__(
        self,
        dumps: Callable[[Any], str | bytes] = encode,
        loads: Callable[[Any], Any] = decode,
    ) -> None:
        if not callable(dumps):
            raise TypeError(f"dumps must be callable, got {type(dumps).__name__}")
        if not callable(loads):
            raise TypeError(f"loads must be callable, got {type(loads).__name__}")
        self.dumps = dumps
        self.loads = loads

    @classmethod
    def pickle(cls) -> ResultCodec:
        """Pickle (any picklable result). Opt-in only: unpickling runs code, so use
        it only where nobody but this service can write to the store."""
        import pickle

        return cls(pickle.dumps, pickle.loads)

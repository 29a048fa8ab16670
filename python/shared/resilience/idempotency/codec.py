"""How a durable idempotency store turns a result into bytes and back.

A replay must return a value equal to the original and of the same type, so
results are stored in a *tagged* JSON encoding (``JsonCodec``, the default):

* ``None``, ``bool``, ``int`` (any size), ``str``, lists and dicts with ``str``
  keys are plain JSON;
* ``float`` is exact (``repr`` round trip), including ``nan`` and ``±inf``;
* ``Decimal`` (kept as its exact string, never through a float), ``bytes``,
  ``tuple``, ``set``/``frozenset``, ``datetime`` (its time zone included: a
  fixed offset, or the IANA name of a ``zoneinfo.ZoneInfo``), ``date``,
  ``time``, ``timedelta``, ``UUID``, ``Enum`` members and dataclass instances
  are tagged objects ``{"$t": <tag>, ...}`` (a result dict that itself has a
  ``"$t"`` key is wrapped, so it can never be mistaken for a tag).

Enum and dataclass values are stored with their class's qualified name and
decoded only into a class that is an ``Enum`` or a dataclass and that is either
registered (``JsonCodec(types=[...])``) or defined in a module the process has
already imported: reading the store never imports a module and never calls
anything but the class's own constructor. ``encode`` refuses a class that a
replay could not find that way (one defined inside a function, say), so a
result is never stored that cannot be read back.

Anything else (a custom class, a dict with non-``str`` keys, a cycle) raises
``ResultNotStorableError`` naming the type and where it was found, at
``encode`` time, before the store writes anything. A store's ``complete``
encodes first, so the error leaves the store as it was: the caller's claim is
still held (until its lease ends). The side effect HAS run by then, so the
caller chooses what a retry does: ``fail(token, ...)`` keeps every retry out
(what a money movement wants: nothing runs twice until someone looks), and
``release(token)`` lets a retry run it again.

``PickleCodec`` stores any picklable value, and is opt-in only: unpickling runs
code named by the stored bytes, so anyone who can write to the store (a Redis
without authentication, a shared database role, a copied SQLite file) could
make every process that replays a key run code of their choice. Use it only
with a store that nothing untrusted can write to. ``CustomCodec(dumps, loads)``
takes a serializer pair of your own (msgpack, pydantic, ...).

Stores keep the codec's ``name`` with each value and refuse to decode a value
written by another codec (a store switched from pickle to JSON never unpickles
what is already there).
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import enum
import json
import math
import pickle
import sys
import uuid
from collections.abc import Callable, Iterable
from decimal import Decimal
from typing import Any, Protocol, runtime_checkable

__all__ = [
    "Codec",
    "CustomCodec",
    "JsonCodec",
    "PickleCodec",
    "ResultNotStorableError",
    "StoredValueError",
    "decode",
    "encode",
]

_TAG = "$t"


class ResultNotStorableError(TypeError):
    """A result the store's codec cannot store exactly.

    Raised by ``encode`` (so by a store's ``complete`` and ``set``) before
    anything is written.

    Attributes:
        type_name: the qualified name of the offending type.
        path: where it was found in the result (``"result"``,
            ``"result['fills'][2]"``, ...).
    """

    def __init__(self, type_name: str, path: str, reason: str | None = None) -> None:
        self.type_name = type_name
        self.path = path
        self.reason = reason
        detail = f": {reason}" if reason else ""
        super().__init__(
            f"cannot store a result of type {type_name} (at {path}){detail}; "
            "the JSON codec stores None, bool, int, float, str, Decimal, bytes, list, "
            "tuple, set, dict with str keys, datetime, date, time, timedelta, UUID, "
            "Enum members and dataclasses; give the store a CustomCodec(dumps, loads) "
            "for other types"
        )


class StoredValueError(ValueError):
    """A stored value this codec cannot decode (written by another codec or corrupt)."""


@runtime_checkable
class Codec(Protocol):
    """Turns results into bytes and back; ``name`` is stored with each value."""

    name: str

    def encode(self, value: Any) -> bytes: ...

    def decode(self, data: bytes) -> Any: ...


def _qualname(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def _type_name(value: object) -> str:
    return _qualname(type(value))


class JsonCodec:
    """Tagged JSON: exact round trips of what a trading service returns.

    Args:
        types: Enum and dataclass types to accept on decode even when their
            module is not imported yet (others are resolved among the modules
            already imported).
    """

    name = "json"

    def __init__(self, *, types: Iterable[type] = ()) -> None:
        registered: dict[str, type] = {}
        for cls in types:
            if not isinstance(cls, type) or not (
                issubclass(cls, enum.Enum) or dataclasses.is_dataclass(cls)
            ):
                raise TypeError(f"types must hold Enum or dataclass classes, got {cls!r}")
            registered[_qualname(cls)] = cls
        self._types = registered

    def __repr__(self) -> str:
        return f"JsonCodec(types={list(self._types)})"

    # -- encoding ------------------------------------------------------------------------

    def encode(self, value: Any) -> bytes:
        """The tagged JSON of ``value``; ``ResultNotStorableError`` if it has no exact form."""
        tree = self._to_tree(value, "result", set())
        return json.dumps(tree, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode()

    def _to_tree(self, value: Any, path: str, active: set[int]) -> Any:
        cls = type(value)
        if value is None or cls is bool or cls is int or cls is str:
            return value
        if cls is float:
            return value if math.isfinite(value) else {_TAG: "float", "v": repr(value)}
        if cls is Decimal:
            return {_TAG: "decimal", "v": str(value)}
        if isinstance(value, enum.Enum):
            self._check_resolvable(cls, path)
            member = self._to_tree(value.value, f"{path}.value", active)
            return {_TAG: "enum", "c": _qualname(cls), "v": member}
        if cls in (list, tuple, set, frozenset, dict) or dataclasses.is_dataclass(value):
            if id(value) in active:
                raise ResultNotStorableError(_type_name(value), path, "it contains itself")
            active.add(id(value))
            try:
                return self._container(value, path, active)
            finally:
                active.discard(id(value))
        if cls is bytes:
            return {_TAG: "bytes", "v": base64.b64encode(value).decode("ascii")}
        if cls is dt.datetime:
            return self._datetime(value, path)
        if cls is dt.date:
            return {_TAG: "date", "v": value.isoformat()}
        if cls is dt.time:
            if value.tzinfo is not None:
                raise ResultNotStorableError(_type_name(value), path, "a time with a tzinfo")
            return {_TAG: "time", "v": value.isoformat(), "fold": value.fold}
        if cls is dt.timedelta:
            return {_TAG: "timedelta", "v": [value.days, value.seconds, value.microseconds]}
        if cls is uuid.UUID:
            return {_TAG: "uuid", "v": str(value)}
        raise ResultNotStorableError(_type_name(value), path)

    def _container(self, value: Any, path: str, active: set[int]) -> Any:
        cls = type(value)
        if cls is list:
            return [self._to_tree(item, f"{path}[{i}]", active) for i, item in enumerate(value)]
        if cls is tuple:
            items = [self._to_tree(item, f"{path}[{i}]", active) for i, item in enumerate(value)]
            return {_TAG: "tuple", "v": items}
        if cls is set or cls is frozenset:
            items = [self._to_tree(item, f"{path}{{...}}", active) for item in value]
            return {_TAG: "set" if cls is set else "frozenset", "v": items}
        if cls is dict:
            out: dict[str, Any] = {}
            for key, item in value.items():
                if type(key) is not str:
                    raise ResultNotStorableError(
                        f"dict with {_type_name(key)} keys", path, "only str keys are stored"
                    )
                out[key] = self._to_tree(item, f"{path}[{key!r}]", active)
            return {_TAG: "dict", "v": out} if _TAG in out else out
        # a dataclass instance
        self._check_resolvable(cls, path)
        fields = {
            field.name: self._to_tree(getattr(value, field.name), f"{path}.{field.name}", active)
            for field in dataclasses.fields(value)
        }
        return {_TAG: "dataclass", "c": _qualname(cls), "v": fields}

    def _check_resolvable(self, cls: type, path: str) -> None:
        """A class a replay can find again by its name (else it could be stored and
        never read back)."""
        name = _qualname(cls)
        if self._types.get(name) is not cls and _find_imported(name) is not cls:
            raise ResultNotStorableError(
                name,
                path,
                "a replay cannot find its class by name (defined in a function?); "
                "register it with JsonCodec(types=[...])",
            )

    @staticmethod
    def _datetime(value: dt.datetime, path: str) -> dict[str, Any]:
        tz = value.tzinfo
        out: dict[str, Any] = {_TAG: "datetime", "v": value.replace(tzinfo=None).isoformat()}
        if value.fold:
            out["fold"] = 1
        if tz is None:
            return out
        key = getattr(tz, "key", None)
        if type(tz).__module__ == "zoneinfo" and isinstance(key, str):
            out["zone"] = key
        elif type(tz) is dt.timezone:
            offset = tz.utcoffset(None)
            out["offset"] = [offset.days, offset.seconds, offset.microseconds]
            name = tz.tzname(None)
            if name != dt.timezone(offset).tzname(None):
                out["tzname"] = name
        else:
            raise ResultNotStorableError(
                _type_name(value),
                path,
                f"its tzinfo {_type_name(tz)} is neither a datetime.timezone "
                "nor a zoneinfo.ZoneInfo",
            )
        return out

    # -- decoding ------------------------------------------------------------------------

    def decode(self, data: bytes) -> Any:
        """The value ``encode`` was given."""
        try:
            tree = json.loads(data.decode("utf-8"))
        except (ValueError, UnicodeDecodeError) as exc:
            raise StoredValueError(f"the stored result is not JSON: {exc}") from None
        return self._from_tree(tree)

    def _from_tree(self, tree: Any) -> Any:
        if type(tree) is list:
            return [self._from_tree(item) for item in tree]
        if type(tree) is not dict:
            return tree
        tag = tree.get(_TAG)
        if tag is None:
            return {key: self._from_tree(item) for key, item in tree.items()}
        try:
            return self._tagged(tag, tree)
        except StoredValueError:
            raise
        except (KeyError, TypeError, ValueError, AttributeError, ArithmeticError) as exc:
            raise StoredValueError(f"a stored {tag!r} value is malformed: {exc!r}") from None

    def _tagged(self, tag: str, tree: dict[str, Any]) -> Any:
        v = tree["v"]
        if tag == "dict":
            return {key: self._from_tree(item) for key, item in v.items()}
        if tag == "tuple":
            return tuple(self._from_tree(item) for item in v)
        if tag == "set":
            return {self._from_tree(item) for item in v}
        if tag == "frozenset":
            return frozenset(self._from_tree(item) for item in v)
        if tag == "float":
            return float(v)
        if tag == "decimal":
            return Decimal(v)
        if tag == "bytes":
            return base64.b64decode(v, validate=True)
        if tag == "datetime":
            return self._decode_datetime(tree)
        if tag == "date":
            return dt.date.fromisoformat(v)
        if tag == "time":
            return dt.time.fromisoformat(v).replace(fold=tree.get("fold", 0))
        if tag == "timedelta":
            days, seconds, micros = v
            return dt.timedelta(days=days, seconds=seconds, microseconds=micros)
        if tag == "uuid":
            return uuid.UUID(v)
        if tag == "enum":
            enum_cls = self._resolve(tree["c"], tag)
            return enum_cls(self._from_tree(v))
        if tag == "dataclass":
            return self._decode_dataclass(self._resolve(tree["c"], tag), v)
        raise StoredValueError(f"unknown tag {tag!r} in a stored result")

    @staticmethod
    def _decode_datetime(tree: dict[str, Any]) -> dt.datetime:
        value = dt.datetime.fromisoformat(tree["v"]).replace(fold=tree.get("fold", 0))
        if "zone" in tree:
            import zoneinfo

            return value.replace(tzinfo=zoneinfo.ZoneInfo(tree["zone"]))
        if "offset" in tree:
            days, seconds, micros = tree["offset"]
            offset = dt.timedelta(days=days, seconds=seconds, microseconds=micros)
            tz = dt.timezone(offset, tree["tzname"]) if "tzname" in tree else dt.timezone(offset)
            if offset == dt.timedelta(0) and "tzname" not in tree:
                tz = dt.UTC
            return value.replace(tzinfo=tz)
        return value

    def _resolve(self, qualname: str, tag: str) -> type:
        cls = self._types.get(qualname)
        if cls is None:
            cls = _find_imported(qualname)
        ok = cls is not None and (
            issubclass(cls, enum.Enum) if tag == "enum" else dataclasses.is_dataclass(cls)
        )
        if cls is None or not ok:
            raise StoredValueError(
                f"a stored result holds a {tag} of class {qualname}, which is not registered "
                "(JsonCodec(types=[...])) nor defined in an imported module"
            )
        return cls

    def _decode_dataclass(self, cls: type, fields: dict[str, Any]) -> Any:
        values = {name: self._from_tree(item) for name, item in fields.items()}
        init_names = {f.name for f in dataclasses.fields(cls) if f.init}
        instance = cls(**{name: v for name, v in values.items() if name in init_names})
        for name, v in values.items():
            if name not in init_names:
                object.__setattr__(instance, name, v)
        return instance


def _find_imported(qualname: str) -> type | None:
    """The class named ``module.Qual.Name`` if its module is already imported."""
    parts = qualname.split(".")
    for split in range(len(parts) - 1, 0, -1):
        module = sys.modules.get(".".join(parts[:split]))
        if module is None:
            continue
        obj: Any = module
        for attr in parts[split:]:
            obj = getattr(obj, attr, None)
            if obj is None:
                return None
        return obj if isinstance(obj, type) else None
    return None


class PickleCodec:
    """Any picklable value. Opt-in only: unpickling runs code named by the stored bytes.

    Use it only when nothing untrusted can write to the store (see the module's
    documentation).
    """

    name = "pickle"

    def __init__(self, *, protocol: int = pickle.HIGHEST_PROTOCOL) -> None:
        if type(protocol) is not int or not 2 <= protocol <= pickle.HIGHEST_PROTOCOL:
            raise ValueError(
                f"protocol must be an int in [2, {pickle.HIGHEST_PROTOCOL}], got {protocol!r}"
            )
        self._protocol = protocol

    def encode(self, value: Any) -> bytes:
        try:
            return pickle.dumps(value, protocol=self._protocol)
        except (pickle.PicklingError, TypeError, AttributeError) as exc:
            raise ResultNotStorableError(_type_name(value), "result", str(exc)) from None

    def decode(self, data: bytes) -> Any:
        return pickle.loads(data)  # opt-in only: see the class docstring


class CustomCodec:
    """A serializer pair of your own: ``dumps(value) -> bytes`` and ``loads(bytes) -> value``.

    An exception of ``dumps`` becomes ``ResultNotStorableError`` naming the type.

    Args:
        dumps: the encoder.
        loads: the decoder.
        name: stored with each value (default ``"custom"``); change it when the
            format changes, so old values are refused instead of misread.
    """

    def __init__(
        self,
        dumps: Callable[[Any], bytes],
        loads: Callable[[bytes], Any],
        *,
        name: str = "custom",
    ) -> None:
        if not callable(dumps):
            raise TypeError(f"dumps must be callable, got {type(dumps).__name__}")
        if not callable(loads):
            raise TypeError(f"loads must be callable, got {type(loads).__name__}")
        if not isinstance(name, str) or not name or "\0" in name:
            raise ValueError(f"name must be a non-empty str without NUL, got {name!r}")
        self.name = name
        self._dumps = dumps
        self._loads = loads

    def encode(self, value: Any) -> bytes:
        try:
            data = self._dumps(value)
        except Exception as exc:
            raise ResultNotStorableError(_type_name(value), "result", repr(exc)) from exc
        if not isinstance(data, (bytes, bytearray)):
            raise ResultNotStorableError(
                _type_name(value), "result", f"dumps returned {type(data).__name__}, not bytes"
            )
        return bytes(data)

    def decode(self, data: bytes) -> Any:
        return self._loads(data)


_DEFAULT_CODEC = JsonCodec()


def encode(value: Any) -> str:
    """``value`` as tagged JSON text (the default codec); ``ResultNotStorableError``
    (a ``TypeError``) naming the type if it has no exact form. ``@idempotent`` stores
    its records this way in stores that keep only the document's ``get``/``set``."""
    return _DEFAULT_CODEC.encode(value).decode("utf-8")


def decode(text: str | bytes) -> Any:
    """The value ``encode`` wrote (``bytes`` are UTF-8, as Redis returns them);
    ``StoredValueError`` (a ``ValueError``) for anything else."""
    return _DEFAULT_CODEC.decode(text.encode("utf-8") if isinstance(text, str) else bytes(text))

"""Canonical JSON: one text per value, in any process, on any platform.

Used for ``IdempotencyKey.from_user_request`` and for the fingerprint of a
call's arguments. Rules:

* objects' keys sorted (by code point), no whitespace, ASCII only (``\\uXXXX``
  escapes), so the bytes do not depend on the platform's encoding;
* strings in Unicode NFC (a composed and a decomposed "é" are the same);
* numbers by value: ``1000``, ``1000.0`` and ``Decimal("1000.00")`` all
  write ``1000``; ``0.1`` and ``Decimal("0.10")`` write ``0.1`` (a float by
  its shortest repr, never through binary noise); never an exponent;
  ``-0`` is ``0``; NaN and infinities are refused;
* ``True``/``False``/``None`` as JSON; lists and tuples as arrays;
* ``datetime``/``date``/``time`` as ISO 8601 text, ``UUID`` as text,
  ``Enum`` members as their value, dataclasses as objects of their fields,
  ``bytes`` as lowercase hex.

A value of any other type is a ``TypeError`` naming the parameter, unless a
``fallback`` is given (the fingerprint writes such values by type name only:
their ``repr`` may hold a memory address that changes on every retry).
"""

from __future__ import annotations

import dataclasses
import datetime
import enum
import hashlib
import json
import math
import unicodedata
import uuid
from collections.abc import Callable, Mapping
from decimal import Decimal
from typing import Any

__all__ = ["canonical_json", "sha256_hex"]

_encode_str: Callable[[str], str] = json.encoder.encode_basestring_ascii


def _text(value: str) -> str:
    if not value.isascii():
        value = unicodedata.normalize("NFC", value)
    return _encode_str(value)


def _decimal_text(value: Decimal, where: str) -> str:
    if not value.is_finite():
        raise ValueError(f"{where} must be a finite number, got {value!r}")
    if value.is_zero():
        return "0"
    text = format(value.normalize(), "f")
    return text


def _number(value: int | float | Decimal, where: str) -> str:
    if isinstance(value, int):
        return int.__repr__(int(value))
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"{where} must be a finite number, got {value!r}")
        if value.is_integer():
            return int.__repr__(int(value))
        return _decimal_text(Decimal(repr(value)), where)
    return _decimal_text(value, where)


def _write(
    value: Any,
    out: list[str],
    where: str,
    fallback: Callable[[Any], str] | None,
) -> None:
    kind = type(value)
    if kind is str:
        out.append(_text(value))
    elif value is None:
        out.append("null")
    elif value is True:
        out.append("true")
    elif value is False:
        out.append("false")
    elif isinstance(value, (int, float, Decimal)) and not isinstance(value, enum.Enum):
        out.append(_number(value, where))
    elif isinstance(value, enum.Enum):
        _write(value.value, out, where, fallback)
    elif isinstance(value, str):
        out.append(_text(str(value)))
    elif isinstance(value, Mapping):
        items = []
        for k, v in value.items():
            if not isinstance(k, str):
                raise TypeError(f"{where}: object keys must be str, got {type(k).__name__}")
            items.append((unicodedata.normalize("NFC", k), v))
        items.sort(key=lambda item: item[0])
        out.append("{")
        for n, (k, v) in enumerate(items):
            if n:
                out.append(",")
            out.append(_encode_str(k))
            out.append(":")
            _write(v, out, f"{where}[{k!r}]", fallback)
        out.append("}")
    elif isinstance(value, (list, tuple)):
        out.append("[")
        for n, item in enumerate(value):
            if n:
                out.append(",")
            _write(item, out, f"{where}[{n}]", fallback)
        out.append("]")
    elif isinstance(value, (datetime.datetime, datetime.date, datetime.time)):
        out.append(_encode_str(value.isoformat()))
    elif isinstance(value, uuid.UUID):
        out.append(_encode_str(str(value)))
    elif isinstance(value, (bytes, bytearray, memoryview)):
        out.append(_encode_str(bytes(value).hex()))
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        fields = {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
        _write(fields, out, where, fallback)
    elif fallback is not None:
        out.append(_encode_str(fallback(value)))
    else:
        raise TypeError(
            f"{where} has no canonical form: {type(value).__name__} (use str, int, float, "
            "Decimal, bool, None, dict, list, tuple, datetime, date, UUID, Enum or a dataclass)"
        )


def canonical_json(
    value: Any, where: str = "value", *, fallback: Callable[[Any], str] | None = None
) -> str:
    """The canonical JSON text of ``value`` (see the module docstring).

    Args:
        value: what to write.
        where: the parameter's name, for errors.
        fallback: writes a value of an unsupported type as a string (default:
            ``TypeError``).
    """
    out: list[str] = []
    _write(value, out, where, fallback)
    return "".join(out)


def sha256_hex(text: str) -> str:
    """SHA-256 of ``text``'s UTF-8 bytes, as 64 lowercase hex digits."""
    return hashlib.sha256(text.encode()).hexdigest()


def type_name(value: Any) -> str:
    """A fallback that writes a value by its type's qualified name only."""
    kind = type(value)
    return f"<{kind.__module__}.{kind.__qualname__}>"

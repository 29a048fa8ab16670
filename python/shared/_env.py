"""Reading configuration from environment variables, one error style for all.

The ``from_env()`` constructors of the config classes use these helpers. A
value that does not parse, or that the config rejects, raises
``EnvConfigError`` (a ``ValueError``) naming the variable and its value, so an
operator sees which line of the deployment to fix.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

__all__ = ["EnvConfigError", "EnvReader"]

T = TypeVar("T")

_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


class EnvConfigError(ValueError):
    """An environment variable holds a value its config cannot use.

    Attributes:
        variable: the variable's name (with any prefix).
        value: its raw value.
    """

    def __init__(self, variable: str, value: str, reason: str) -> None:
        super().__init__(f"{variable}={value!r}: {reason}")
        self.variable = variable
        self.value = value


class EnvReader:
    """Reads ``prefix + NAME`` variables from ``environ`` (default ``os.environ``).

    Every getter returns ``None`` when the variable is unset or empty (after
    stripping blanks), so callers keep their own defaults, and records which
    variable fed which config field so that ``build`` can name the variable
    in a validation error.
    """

    def __init__(self, environ: Mapping[str, str] | None = None, prefix: str = "") -> None:
        if not isinstance(prefix, str):
            raise TypeError(f"prefix must be a str, got {type(prefix).__name__}")
        self.environ: Mapping[str, str] = os.environ if environ is None else environ
        self.prefix = prefix
        self.sources: dict[str, tuple[str, str]] = {}  # field -> (variable, raw value)

    def raw(self, name: str) -> tuple[str, str] | None:
        """``(variable, stripped value)``, or None when unset or blank."""
        variable = self.prefix + name
        value = self.environ.get(variable)
        if value is None or not value.strip():
            return None
        return variable, value.strip()

    def _parse(
        self, name: str, field: str | None, parse: Callable[[str], T], what: str
    ) -> T | None:
        found = self.raw(name)
        if found is None:
            return None
        variable, value = found
        try:
            result = parse(value)
        except (ValueError, TypeError, OverflowError, KeyError):
            raise EnvConfigError(variable, value, f"must be {what}") from None
        if field is not None:
            self.sources[field] = (variable, value)
        return result

    def get_int(self, name: str, field: str | None = None) -> int | None:
        """An integer (``"5"``; not ``"5.0"``)."""
        return self._parse(name, field, int, "an integer")

    def get_float(self, name: str, field: str | None = None) -> float | None:
        """A finite number (``"0.5"``, ``"60"``, ``"1e-3"``)."""

        def finite(text: str) -> float:
            value = float(text)
            if not math.isfinite(value):
                raise ValueError(text)
            return value

        return self._parse(name, field, finite, "a finite number")

    def get_str(self, name: str, field: str | None = None) -> str | None:
        """The stripped text."""
        return self._parse(name, field, lambda text: text, "text")

    def get_bool(self, name: str, field: str | None = None) -> bool | None:
        """``1/true/yes/on`` or ``0/false/no/off`` (any case)."""

        def boolean(text: str) -> bool:
            lowered = text.lower()
            if lowered in _TRUE:
                return True
            if lowered in _FALSE:
                return False
            raise ValueError(text)

        return self._parse(name, field, boolean, "one of " + "/".join(_TRUE + _FALSE))

    def get_choice(
        self, name: str, choices: tuple[str, ...], field: str | None = None
    ) -> str | None:
        """One of ``choices`` (matched without regard to case; returned as listed)."""
        by_lower = {choice.lower(): choice for choice in choices}
        return self._parse(
            name, field, lambda text: by_lower[text.lower()], "one of " + ", ".join(choices)
        )

    def build(self, factory: Callable[..., T], values: dict[str, Any]) -> T:
        """``factory(**values)``; a ``ValueError``/``TypeError`` that names a field
        read from a variable is re-raised as ``EnvConfigError`` naming that variable."""
        try:
            return factory(**values)
        except (ValueError, TypeError) as exc:
            message = str(exc)
            # The field the message is about comes first; then any field it names.
            ranked = sorted(
                self.sources.items(), key=lambda item: not message.startswith(item[0] + " ")
            )
            for field, (variable, value) in ranked:
                if re.search(rf"\b{re.escape(field)}\b", message):
                    raise EnvConfigError(variable, value, message) from exc
            raise

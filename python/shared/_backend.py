"""The one place that chooses the implementation of the cores.

``SHARED_BACKEND`` selects it at import time:

- ``auto`` (default): the Rust extension ``shared._native``; the pure-Python
  twin ``shared._pure`` only when the extension is not installed.
- ``rust``: the extension, or an ``ImportError`` that says it is missing.
- ``python``: the pure-Python twin, even when the extension is installed.

Every other module imports its cores from here (``from shared._backend import
core``), never from ``_native`` or ``_pure`` directly, so the choice is made
once and reported truthfully by ``shared.BACKEND`` and ``shared.backend_info()``.
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType
from typing import Final

ENV_VAR: Final = "SHARED_BACKEND"
_CHOICES: Final = ("auto", "rust", "python")
_NATIVE_MODULE: Final = "shared._native"


def _choose() -> tuple[ModuleType, str, str]:
    requested = os.environ.get(ENV_VAR, "auto").strip().lower() or "auto"
    if requested not in _CHOICES:
        raise ValueError(
            f"{ENV_VAR}={os.environ.get(ENV_VAR)!r} is not one of {', '.join(_CHOICES)}"
        )
    if requested == "python":
        from shared import _pure

        return _pure, "python", f"{ENV_VAR}=python forces the pure-Python twin"
    try:
        # import_module, not `from shared import _native`: the latter turns a
        # missing submodule into a plain ImportError without `.name`.
        native = importlib.import_module(_NATIVE_MODULE)
    except ModuleNotFoundError as exc:
        # Fall back only when the missing module really is our extension, never
        # because something the extension imports is missing.
        if exc.name != _NATIVE_MODULE:
            raise
        if requested == "rust":
            raise ImportError(
                f"{ENV_VAR}=rust, but the native module {_NATIVE_MODULE} is not installed: "
                "install a prebuilt wheel, build it with `maturin develop --release`, "
                f"or set {ENV_VAR}=python for the pure-Python twin"
            ) from exc
        from shared import _pure

        return _pure, "python", f"{_NATIVE_MODULE} is not installed; using the pure-Python twin"
    reason = (
        f"{ENV_VAR}=rust requires the native module"
        if requested == "rust"
        else f"{_NATIVE_MODULE} is installed ({ENV_VAR}=auto)"
    )
    return native, "rust", reason


core, BACKEND, REASON = _choose()
REQUESTED: Final = os.environ.get(ENV_VAR, "auto")

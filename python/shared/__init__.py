"""shared: resilience and observability patterns on Rust cores.

Import the patterns from their packages: ``shared.resilience``,
``shared.health``, ``shared.lifecycle`` and ``shared.observability``.
``BACKEND`` says which implementation of the cores is in use (``"rust"`` or
``"python"``) and ``backend_info()`` says why.
"""

from __future__ import annotations

from typing import Any

from shared import _backend, _version

__all__ = ["BACKEND", "__version__", "backend_info"]

BACKEND: str = _backend.BACKEND
__version__: str = _version.VERSION


def backend_info() -> dict[str, Any]:
    """Which backend the cores use, why, and how the native module was built."""
    info: dict[str, Any] = {
        "backend": _backend.BACKEND,
        "requested": _backend.REQUESTED,
        "reason": _backend.REASON,
        "version": __version__,
    }
    if _backend.BACKEND == "rust":
        info["build_profile"] = _backend.core.BUILD_PROFILE
        info["abi3"] = _backend.core.ABI3
        info["module"] = _backend.core.__file__
    return info

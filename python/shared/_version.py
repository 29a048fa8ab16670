"""The version of shared, from one source.

``Cargo.toml`` holds it: maturin writes it into the package metadata
(``pyproject.toml`` declares ``dynamic = ["version"]``) and the native module's
``__version__`` is compiled from it. Here it is read from the metadata of the
installed distribution; a source checkout that was never installed reads
``Cargo.toml`` itself. A leaf module: it imports nothing of shared.
"""

from __future__ import annotations

import importlib.metadata
import tomllib
from pathlib import Path

__all__ = ["VERSION"]

DISTRIBUTION = "shared"
UNKNOWN = "0+unknown"
# Cargo.toml of a source checkout: python/shared/_version.py -> the repository root.
CARGO_TOML = Path(__file__).resolve().parent.parent.parent / "Cargo.toml"


def _from_cargo_toml(path: Path) -> str | None:
    try:
        with path.open("rb") as file:
            version = tomllib.load(file).get("package", {}).get("version")
    except (OSError, tomllib.TOMLDecodeError):
        return None
    return version if isinstance(version, str) else None


def find_version(
    distribution: str = DISTRIBUTION,
    cargo_toml: Path = CARGO_TOML,
) -> str:
    """The installed distribution's version; else the source checkout's
    ``Cargo.toml``; else ``"0+unknown"``."""
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return _from_cargo_toml(cargo_toml) or UNKNOWN


VERSION: str = find_version()

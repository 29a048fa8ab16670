# The contract of the Rust extension `shared._native` (checked by mypy.stubtest).
# `shared._pure` implements the same names with the same signatures.
from typing import Final

__all__ = ["ABI3", "BUILD_PROFILE", "__version__", "monotonic_ns"]

__version__: Final[str]
BUILD_PROFILE: Final[str]
ABI3: Final[bool]

def monotonic_ns() -> int: ...

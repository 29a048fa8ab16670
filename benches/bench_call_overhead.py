"""The fixed cost of crossing into the native module: one clock read.

``time.monotonic_ns`` is a C builtin doing the same work, so it is the floor a
PyO3 function can approach; the pure twin calls that builtin through one Python
function. Used for the abi3 decision (benches/README.md).
"""

from __future__ import annotations

import time
from types import ModuleType

import pytest


@pytest.mark.benchmark(group="clock read")
def test_clock_read_rust(benchmark: pytest.FixtureDef, native: ModuleType) -> None:
    assert benchmark(native.monotonic_ns) > 0


@pytest.mark.benchmark(group="clock read")
def test_clock_read_python(benchmark: pytest.FixtureDef, pure: ModuleType) -> None:
    assert benchmark(pure.monotonic_ns) > 0


@pytest.mark.benchmark(group="clock read")
def test_clock_read_cpython_builtin(benchmark: pytest.FixtureDef) -> None:
    assert benchmark(time.monotonic_ns) > 0

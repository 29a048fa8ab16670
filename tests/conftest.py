"""Suite-wide fixtures: the backend under test, hypothesis profiles, service checks.

The whole suite runs once per backend (``make pytest`` sets ``SHARED_BACKEND``
to ``rust``, then ``python``); this file fails the run at once if the backend
that loaded is not the one that was asked for, so a leg can never silently
test the wrong implementation. Parity tests import both cores directly.
"""

from __future__ import annotations

import importlib
import os
import socket
from types import ModuleType

import pytest
from hypothesis import HealthCheck, settings

import shared
from shared import _backend

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")

settings.register_profile(
    "ci",
    max_examples=200,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile("dev", max_examples=100, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if IN_CI else "dev"))


def pytest_report_header(config: pytest.Config) -> list[str]:
    return [f"shared backend: {shared.BACKEND} ({_backend.REASON})"]


def pytest_sessionstart(session: pytest.Session) -> None:
    requested = os.environ.get("SHARED_BACKEND", "auto")
    if requested in ("rust", "python") and requested != shared.BACKEND:
        raise pytest.UsageError(f"SHARED_BACKEND={requested} but {shared.BACKEND} loaded")


@pytest.fixture(scope="session")
def backend() -> str:
    """The backend this run tests: ``"rust"`` or ``"python"``."""
    return shared.BACKEND


@pytest.fixture(scope="session")
def native() -> ModuleType:
    """The Rust extension itself (parity tests); fails in CI when it is missing."""
    try:
        native = importlib.import_module("shared._native")
    except ModuleNotFoundError:
        if IN_CI:
            pytest.fail("shared._native is not built, and CI must test it")
        pytest.skip("shared._native is not built (run `make build`)")
    return native


@pytest.fixture(scope="session")
def pure() -> ModuleType:
    """The pure-Python twin itself (parity tests)."""
    from shared import _pure

    return _pure


def require_service(name: str, port: int) -> None:
    """Skips (outside CI) or fails (in CI) when a local service is not listening."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1.0):
            return
    except OSError as exc:
        message = f"{name} is not reachable at 127.0.0.1:{port}: {exc}"
    if IN_CI:
        pytest.fail(f"{message}; .ci/run must start it")
    pytest.skip(f"{message} (start it to run this test)")

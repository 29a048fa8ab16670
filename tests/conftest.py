"""Suite-wide fixtures: the backend under test, hypothesis profiles, service checks.

The whole suite runs once per backend (``make pytest`` sets ``SHARED_BACKEND``
to ``rust``, then ``python``); this file fails the run at once if the backend
that loaded is not the one that was asked for, so a leg can never silently
test the wrong implementation. Parity tests import both cores directly.

``make test`` runs the suite against installed packages and says which kind in
``SHARED_TEST_INSTALL``: ``native`` (a binary wheel, or the sdist built by pip)
or ``pure`` (the pure-Python wheel, which has no ``shared._native``). The run
then fails unless ``shared`` was imported from the virtualenv's site-packages,
and ``pure`` turns the fixtures that need the extension into skips.
"""

from __future__ import annotations

import gc
import importlib
import importlib.util
import logging
import os
import socket
import sys
import sysconfig
import time
import traceback
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from hypothesis import HealthCheck, settings

import shared
from shared import _backend

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
INSTALL_KINDS = ("native", "pure")
TESTED_INSTALL = os.environ.get("SHARED_TEST_INSTALL", "")

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
    return [
        f"shared backend: {shared.BACKEND} ({_backend.REASON})",
        f"shared imported from: {shared.__file__}",
    ]


def _check_installed_package(kind: str) -> None:
    """Fails the run unless ``shared`` is the package installed in site-packages."""
    if kind not in INSTALL_KINDS:
        raise pytest.UsageError(f"SHARED_TEST_INSTALL={kind!r} is not one of {INSTALL_KINDS}")
    site_dirs = {Path(sysconfig.get_path(name)).resolve() for name in ("purelib", "platlib")}
    package_dir = Path(shared.__file__).resolve().parent
    if package_dir.parent not in site_dirs:
        raise pytest.UsageError(
            f"SHARED_TEST_INSTALL={kind} but shared was imported from {package_dir}, "
            f"not from site-packages ({', '.join(sorted(map(str, site_dirs)))})"
        )
    native_spec = importlib.util.find_spec("shared._native")
    if kind == "pure" and native_spec is not None:
        raise pytest.UsageError(f"the pure wheel must not ship shared._native: {native_spec}")
    if kind == "native" and native_spec is None:
        raise pytest.UsageError("SHARED_TEST_INSTALL=native but shared._native is not installed")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Runs ``backend_independent`` tests once per install, not once per backend.

    Servers, exporters and stores behave the same whichever core is loaded; they run
    on the rust leg, and on the python leg only where there is no rust leg (the
    pure-Python wheel, or a build without the extension).
    """
    if shared.BACKEND != "python" or importlib.util.find_spec("shared._native") is None:
        return
    kept, dropped = [], []
    for item in items:
        (dropped if item.get_closest_marker("backend_independent") else kept).append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = kept


def pytest_sessionstart(session: pytest.Session) -> None:
    requested = os.environ.get("SHARED_BACKEND", "auto")
    if requested in ("rust", "python") and requested != shared.BACKEND:
        raise pytest.UsageError(f"SHARED_BACKEND={requested} but {shared.BACKEND} loaded")
    if TESTED_INSTALL:
        _check_installed_package(TESTED_INSTALL)


@pytest.fixture(autouse=True)
def _root_logging_restored() -> Any:
    """Puts the root logger's handlers and level back after each test.

    A test that runs the demo in-process configures logging with a handler on the
    stream pytest captured for that test; left in place, every later log record
    (a health check's thread, say) would go to that closed stream.
    """
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


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
        if TESTED_INSTALL == "pure":
            pytest.skip("the pure-Python wheel has no shared._native")
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


# Timeout tests that fail because no deadline fired: the scheduler thread's own stack
# and queues say why (stuck in a call, or waiting with nothing scheduled). Reported
# for the first few failures of a run: after a stuck scheduler every later one fails.
_SCHEDULER_REPORTS = [3]


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    if report.failed and "timeout" in item.nodeid and _SCHEDULER_REPORTS[0] > 0:
        _SCHEDULER_REPORTS[0] -= 1
        report.sections.append(("timeout scheduler", _scheduler_snapshot()))
    return report


def _scheduler_snapshot() -> str:
    from shared.resilience import _deadlines

    scheduler = _deadlines._scheduler
    thread = scheduler.thread
    lines = [
        f"thread: {thread!r}; next wake in {scheduler.next_wake - time.monotonic():.3f} s; "
        f"{len(scheduler.heap)} heap entries, {len(scheduler.requests)} requests queued, "
        f"alarm requested: {scheduler.alarm_requested}\n"
    ]
    # With the collector off: on CPython 3.11 a collection inside this snapshot would run
    # finalizers under the runtime's lock on the threads (see shared._pure.timeout).
    enabled = gc.isenabled()
    gc.disable()
    try:
        frames = sys._current_frames()
    finally:
        if enabled:
            gc.enable()
    frame = frames.get(thread.ident) if thread is not None else None
    if frame is not None:
        lines.extend(traceback.format_stack(frame))
    return "".join(lines)

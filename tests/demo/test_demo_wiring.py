"""The demo's plug points: refusals, limiters, tracing and shutdown configuration."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import pytest

from shared.config import ServiceSettings
from shared.demo import DemoOptions
from shared.demo.wiring import (
    UnsupportedOptionError,
    check_options,
    install_shutdown,
    make_order_store,
    make_user_limiters,
    setup_tracing,
)
from shared.observability import shutdown_tracing
from shared.resilience import RateLimitConfig

pytestmark = pytest.mark.backend_independent


def test_check_options_names_the_missing_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    """--redis / --postgres without their client library: the extra to install."""
    check_options(DemoOptions(redis_url="redis://x", postgres_url="postgresql://x", replicas=3))
    real = importlib.util.find_spec

    def missing(name: str, *args: Any) -> Any:
        return None if name in ("redis", "psycopg") else real(name, *args)

    monkeypatch.setattr(importlib.util, "find_spec", missing)
    with pytest.raises(UnsupportedOptionError, match=r"shared\[redis\]"):
        check_options(DemoOptions(redis_url="redis://x"))
    with pytest.raises(UnsupportedOptionError, match=r"shared\[postgres\]"):
        check_options(DemoOptions(postgres_url="postgresql://x"))
    check_options(DemoOptions(replicas=3))  # the embedded SQLite store is shared by processes


async def test_in_process_limiters_grant_the_burst_then_say_how_long_to_wait() -> None:
    """allow() is None while tokens last, then the wait; per replica, the summary says so."""
    limiters = await make_user_limiters(DemoOptions(), RateLimitConfig(2.0, 2.0), "run")
    assert [await limiters.allow("u") for _ in range(2)] == [None, None]
    wait = await limiters.allow("u")
    assert wait is not None
    assert 0.0 < wait <= 0.5
    assert await limiters.allow("other") is None
    await limiters.close()
    replica = await make_user_limiters(
        DemoOptions(replica=(0, 3)), RateLimitConfig(2.0, 2.0), "run"
    )
    assert "each of the 3 replicas" in replica.description


async def test_the_sqlite_store_lives_in_state_dir_and_a_temp_dir_is_removed(
    tmp_path: Path,
) -> None:
    """--state-dir keeps the file; without it the temporary directory goes at close."""
    kept = await make_order_store(DemoOptions(state_dir=str(tmp_path / "state")), "r")
    assert "--state-dir" in kept.description
    await kept.close()
    assert (tmp_path / "state" / "idempotency.sqlite3").exists()
    temporary = await make_order_store(DemoOptions(), "r")
    path = Path(temporary.description.split(" at ")[1].split(" (")[0])
    assert path.parent.exists()
    await temporary.close()
    assert not path.parent.exists()


def test_tracing_descriptions(capsys: pytest.CaptureFixture[str]) -> None:
    """No endpoint: spans are not exported; console: JSON spans on stdout."""
    try:
        assert "not exported" in setup_tracing(ServiceSettings(trace_sample_rate=0.5))
    finally:
        shutdown_tracing()
    try:
        described = setup_tracing(ServiceSettings(), console=True)
        assert "stdout" in described
    finally:
        shutdown_tracing()


def test_install_shutdown_takes_the_settings() -> None:
    """Drain delay and timeout come from the settings; the wait returns the code."""
    shutdown = install_shutdown(ServiceSettings(shutdown_timeout=3.0, drain_delay=0.25))
    try:
        assert shutdown.config.timeout == 3.0
        assert shutdown.config.drain_delay == 0.25
        assert shutdown.config.exit_process is False
    finally:
        shutdown.close()

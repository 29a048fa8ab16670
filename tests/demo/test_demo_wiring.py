"""The demo's plug points as they stand: tracing, signals, refusals, limiters."""

from __future__ import annotations

import asyncio
import os
import signal
import sys

import pytest

from shared.config import ServiceSettings
from shared.demo import DemoOptions
from shared.demo.exchange import Order
from shared.demo.wiring import (
    UnsupportedOptionError,
    check_options,
    install_shutdown,
    make_user_limiters,
    setup_tracing,
)
from shared.resilience import RateLimitConfig

pytestmark = pytest.mark.backend_independent

ORDER = Order("u", "k", "BTC-USD", "buy", 1)


@pytest.mark.parametrize(("rate", "spans"), [(0.0, 0), (1.0, 3)])
async def test_tracing_samples_at_the_configured_rate(rate: float, spans: int) -> None:
    """TRACE_SAMPLE_RATE 0 records nothing; 1 records a span per execution."""
    tracing = setup_tracing(ServiceSettings(trace_sample_rate=rate))
    assert tracing.trace is not None

    async def execute(order: Order) -> str:
        return order.key

    traced = tracing.trace(execute)
    assert [await traced(ORDER) for _ in range(3)] == ["k"] * 3
    tracing.shutdown()
    assert tracing.spans == spans
    assert "counted in process" in tracing.description


@pytest.mark.skipif(sys.platform == "win32", reason="no SIGTERM to send to oneself")
async def test_install_shutdown_reports_each_signal_and_uninstalls() -> None:
    """SIGTERM reaches the callback by name (twice: the caller decides to force)."""
    seen: list[str] = []
    got = asyncio.Event()

    def on_signal(name: str) -> None:
        seen.append(name)
        got.set()

    before = signal.getsignal(signal.SIGTERM)
    uninstall = install_shutdown(asyncio.get_running_loop(), on_signal)
    assert signal.getsignal(signal.SIGTERM) is not before
    try:
        for _ in range(2):
            got.clear()
            os.kill(os.getpid(), signal.SIGTERM)
            await asyncio.wait_for(got.wait(), 5)
    finally:
        uninstall()
    assert seen == ["SIGTERM", "SIGTERM"]
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


def test_check_options_refuses_what_needs_a_durable_store() -> None:
    """PostgreSQL and replicas need the durable idempotency store; Redis alone does not."""
    check_options(DemoOptions(redis_url="redis://127.0.0.1:6379"))
    with pytest.raises(UnsupportedOptionError, match="PostgreSQL idempotency store"):
        check_options(DemoOptions(postgres_url="postgresql://x"))
    with pytest.raises(UnsupportedOptionError, match="--replicas 2"):
        check_options(DemoOptions(replicas=2))


async def test_in_process_limiters_grant_the_burst_then_say_how_long_to_wait() -> None:
    """allow() is None while tokens last, then the wait until the next one."""
    limiters = await make_user_limiters(DemoOptions(), RateLimitConfig(2.0, 2.0))
    assert [await limiters.allow("u") for _ in range(2)] == [None, None]
    wait = await limiters.allow("u")
    assert wait is not None
    assert 0.0 < wait <= 0.5
    assert await limiters.allow("other") is None
    await limiters.close()


async def test_console_tracing_prints_spans_to_stderr(capsys: pytest.CaptureFixture[str]) -> None:
    """OTEL_TRACES_EXPORTER=console prints each sampled span (flushed at shutdown)."""
    tracing = setup_tracing(ServiceSettings(trace_sample_rate=1.0), console=True)
    assert tracing.trace is not None

    async def execute(order: Order) -> str:
        return order.key

    await tracing.trace(execute)(ORDER)
    tracing.shutdown()
    err = capsys.readouterr().err
    assert '"name": "order.execute"' in err
    assert '"order.key": "k"' in err
    assert "stderr" in tracing.description

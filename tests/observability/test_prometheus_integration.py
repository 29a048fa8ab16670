"""A real Prometheus scrapes a process that uses every pattern; its HTTP API has our series."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = [
    pytest.mark.backend_independent,
    pytest.mark.skipif(shutil.which("prometheus") is None, reason="prometheus (Debian package)"),
]

HERE = Path(__file__).parent
WAIT = 45.0  # seconds for Prometheus to start and scrape (it scrapes every second)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def target() -> Iterator[int]:
    """A child process using every pattern, serving /metrics; yields its port."""
    child = subprocess.Popen(
        [sys.executable, str(HERE / "every_pattern.py")],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None
        line = child.stdout.readline()  # the child prints its port once serving
        assert line.strip().isdigit(), f"the child did not start: {line!r}"
        yield int(line)
    finally:
        assert child.stdin is not None
        assert child.stdout is not None
        child.stdin.close()
        try:
            child.wait(10)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
        child.stdout.close()


@pytest.fixture
def prometheus(target: int, tmp_path: Path) -> Iterator[str]:
    """A Prometheus server scraping ``target`` every second; yields its base URL."""
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global:\n"
        "  scrape_interval: 1s\n"
        "  scrape_timeout: 1s\n"
        "scrape_configs:\n"
        "  - job_name: shared-test\n"
        "    static_configs:\n"
        f"      - targets: ['127.0.0.1:{target}']\n"
    )
    port = _free_port()
    log = (tmp_path / "prometheus.log").open("w")
    server = subprocess.Popen(
        [
            "prometheus",
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp_path / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--log.level=warn",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.terminate()
        try:
            server.wait(10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        log.close()


def _query(base: str, expression: str) -> list[dict[str, object]]:
    url = f"{base}/api/v1/query?" + urllib.parse.urlencode({"query": expression})
    with urllib.request.urlopen(url, timeout=5) as response:
        answer = json.load(response)
    assert answer["status"] == "success", answer
    return answer["data"]["result"]  # type: ignore[no-any-return]


def _values(base: str, expression: str, label: str) -> dict[str, float]:
    return {r["metric"][label]: float(r["value"][1]) for r in _query(base, expression)}  # type: ignore[index]


def test_prometheus_scrapes_every_family(prometheus: str) -> None:
    """After a scrape, Prometheus answers with the values the process left in every family."""
    deadline = time.monotonic() + WAIT
    while True:
        try:
            if _query(prometheus, 'up{job="shared-test"} == 1') and _query(
                prometheus, "shared_timeouts_fired_total"
            ):
                break
        except OSError:
            pass  # not listening yet
        assert time.monotonic() < deadline, "Prometheus did not scrape the target in time"
        time.sleep(0.2)

    assert _values(prometheus, 'shared_circuit_breaker_state{breaker="payments"}', "state") == {
        "closed": 0.0,
        "open": 1.0,
        "half_open": 0.0,
    }
    calls = _values(prometheus, 'shared_circuit_breaker_calls_total{breaker="payments"}', "outcome")
    assert calls == {"success": 1.0, "failure": 3.0, "ignored": 0.0}
    assert _values(prometheus, "shared_circuit_breaker_rejected_calls_total", "breaker") == {
        "payments": 2.0
    }
    assert _values(
        prometheus, 'shared_circuit_breaker_transitions_total{to_state="open"}', "breaker"
    ) == {"payments": 1.0}

    assert _values(prometheus, 'shared_retry_calls_total{retry="quotes"}', "outcome") == {
        "succeeded_without_retry": 1.0,
        "succeeded_with_retry": 1.0,
        "failed_without_retry": 0.0,
        "failed_with_retry": 1.0,
    }
    assert _values(prometheus, 'shared_retry_give_ups_total{retry="quotes"}', "reason") == {
        "max_attempts": 1.0,
        "deadline": 0.0,
        "budget": 0.0,
    }
    assert _values(prometheus, 'shared_retry_retries_total{retry="quotes"}', "retry") == {
        "quotes": 3.0
    }

    decisions = "shared_rate_limiter_decisions_total"
    assert _values(prometheus, f'{decisions}{{limiter="orders"}}', "decision") == {
        "granted": 5.0,
        "rejected": 2.0,
    }
    assert _values(prometheus, f'{decisions}{{limiter="users"}}', "decision") == {
        "granted": 40.0,
        "rejected": 40.0,
    }
    assert _values(prometheus, "shared_rate_limiter_keys", "limiter") == {"users": 40.0}
    tokens = _values(prometheus, "shared_rate_limiter_available_tokens", "limiter")
    assert tokens["orders"] == pytest.approx(0.0, abs=1e-3)
    # One series per registry: no key ever became a label value.
    assert len(_query(prometheus, f'{decisions}{{limiter="users"}}')) == 2

    fired = _query(prometheus, "shared_timeouts_fired_total")[0]["value"]
    assert float(fired[1]) >= 1  # type: ignore[index]
    assert _values(
        prometheus, 'shared_idempotency_requests_total{store="orders-store"}', "outcome"
    ) == {
        "executed": 7.0,
        "replayed": 3.0,
        "in_progress": 1.0,
        "mismatch": 2.0,
        "errors": 0.0,
        "lost_leases": 0.0,
    }


def _grafana_to_promql(expression: str) -> str:
    """The dashboard's Grafana variables replaced as Grafana would."""
    for variable, value in (
        ("$__rate_interval", "1m"),
        ("$__range", "5m"),
        ("$job", ".*"),
        ("$instance", ".*"),
    ):
        expression = expression.replace(variable, value)
    return expression


def test_dashboard_queries_run_on_prometheus(prometheus: str) -> None:
    """Every dashboard query is valid PromQL that Prometheus evaluates."""
    from .test_ops_files import dashboard_expressions

    deadline = time.monotonic() + WAIT
    while True:
        try:
            _query(prometheus, "up")
            break
        except OSError:
            assert time.monotonic() < deadline, "Prometheus did not start in time"
            time.sleep(0.2)
    for expression in dashboard_expressions():
        _query(prometheus, _grafana_to_promql(expression))  # asserts status success

"""The alert rules (promtool unit tests) and the Grafana dashboard match the exported families."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from shared.observability import ResilienceCollector

pytestmark = pytest.mark.backend_independent

OPS = Path(__file__).resolve().parents[2] / "ops"
RULES = OPS / "prometheus" / "alerts.yml"
RULE_TESTS = OPS / "prometheus" / "alerts_test.yml"
DASHBOARD = OPS / "grafana" / "dashboard.json"
needs_promtool = pytest.mark.skipif(
    shutil.which("promtool") is None, reason="promtool (Debian package prometheus)"
)


def exported_names() -> set[str]:
    """Every sample name the collector can export (counters with their _total)."""
    names = set()
    for family in ResilienceCollector().describe():
        names.add(f"{family.name}_total" if family.type == "counter" else family.name)
    return names


def dashboard_expressions() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]


@needs_promtool
def test_rules_are_valid_and_their_unit_tests_pass() -> None:
    """`promtool check rules` and `promtool test rules` both succeed."""
    for command in (["check", "rules", RULES.name], ["test", "rules", RULE_TESTS.name]):
        result = subprocess.run(
            ["promtool", *command],
            cwd=RULES.parent,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert result.returncode == 0, result.stdout + result.stderr
        assert "SUCCESS" in result.stdout


def test_rules_cover_the_four_alerts_on_exported_metrics() -> None:
    """The four alerts exist and use only metric names the collector exports."""
    text = RULES.read_text()
    alerts = re.findall(r"- alert: (\w+)", text)
    assert alerts == [
        "CircuitBreakerOpen",
        "RateLimiterRejectionRatioHigh",
        "RetryGiveUps",
        "IdempotencyKeyMismatch",
    ]
    used = set(re.findall(r"\bshared_[a-z_]+", text))
    assert used <= exported_names(), used - exported_names()
    tested = set(re.findall(r"alertname: (\w+)", RULE_TESTS.read_text()))
    assert tested == set(alerts)


def test_dashboard_has_a_row_per_pattern_on_exported_metrics() -> None:
    """One row per pattern; every panel queries metrics the collector exports."""
    dashboard = json.loads(DASHBOARD.read_text())
    rows = [p["title"] for p in dashboard["panels"] if p["type"] == "row"]
    assert rows == ["Circuit breakers", "Retries", "Rate limiters", "Timeouts", "Idempotency"]
    expressions = dashboard_expressions()
    used = {name for e in expressions for name in re.findall(r"\bshared_[a-z_]+", e)}
    assert used == exported_names()  # every family is on the dashboard
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))

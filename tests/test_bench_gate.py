"""The bench gate fails on a broken ratio, on a missing benchmark, and on a bad rule file."""

from __future__ import annotations

import importlib.util
import io
import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parent.parent
GATE_PATH = ROOT / "benches" / "gate.py"


@pytest.fixture(scope="module")
def gate() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_gate", GATE_PATH)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_gate"] = module
    spec.loader.exec_module(module)
    return module


def _results(**medians_ns: float) -> dict[str, object]:
    return {
        "benchmarks": [
            {"name": name, "stats": {"median": ns / 1e9}} for name, ns in medians_ns.items()
        ]
    }


_RULES = """
[[rule]]
name = "fast is 20x slow"
subject = "test_fast[rust]"
baseline = "test_slow[peer]"
min_speedup = 20

[[rule]]
name = "open rejection near a bare raise"
subject = "test_reject[rust]"
baseline = "test_raise[bare]"
max_slowdown = 1.4
"""


def _run(gate: ModuleType, results: dict[str, object], tmp_path: Path) -> tuple[bool, str]:
    rules_file = tmp_path / "thresholds.toml"
    rules_file.write_text(_RULES)
    out = io.StringIO()
    ok = gate.run_gate(results, gate.load_rules(rules_file), out=out)
    return ok, out.getvalue()


def test_gate_passes_when_every_ratio_holds(gate: ModuleType, tmp_path: Path) -> None:
    """Ratios at or above their thresholds pass."""
    results = _results(
        **{
            "test_fast[rust]": 50,
            "test_slow[peer]": 1000,
            "test_reject[rust]": 250,
            "test_raise[bare]": 200,
        }
    )
    ok, out = _run(gate, results, tmp_path)
    assert ok, out
    assert out.count("PASS") == 2


def test_gate_fails_on_a_broken_speedup(gate: ModuleType, tmp_path: Path) -> None:
    """A subject only 10x faster where 20x is required fails the gate."""
    results = _results(
        **{
            "test_fast[rust]": 100,
            "test_slow[peer]": 1000,
            "test_reject[rust]": 250,
            "test_raise[bare]": 200,
        }
    )
    ok, out = _run(gate, results, tmp_path)
    assert not ok
    assert "FAIL  fast is 20x slow" in out
    assert "PASS  open rejection" in out


def test_gate_fails_on_a_broken_slowdown(gate: ModuleType, tmp_path: Path) -> None:
    """A subject 1.5x the baseline's time where 1.4x is allowed fails the gate."""
    results = _results(
        **{
            "test_fast[rust]": 50,
            "test_slow[peer]": 1000,
            "test_reject[rust]": 300,
            "test_raise[bare]": 200,
        }
    )
    ok, out = _run(gate, results, tmp_path)
    assert not ok
    assert "FAIL  open rejection near a bare raise" in out


def test_gate_fails_on_a_missing_benchmark(gate: ModuleType, tmp_path: Path) -> None:
    """A rule that cannot be measured fails rather than passing vacuously."""
    results = _results(**{"test_fast[rust]": 50, "test_slow[peer]": 1000})
    ok, out = _run(gate, results, tmp_path)
    assert not ok
    assert "missing benchmark(s): test_reject[rust], test_raise[bare]" in out


def test_gate_rejects_an_ambiguous_rule(gate: ModuleType, tmp_path: Path) -> None:
    """A rule with both (or neither) thresholds is a configuration error."""
    bad = tmp_path / "bad.toml"
    bad.write_text('[[rule]]\nname = "x"\nsubject = "a"\nbaseline = "b"\n')
    with pytest.raises(ValueError, match="exactly one of min_speedup, max_slowdown"):
        gate.load_rules(bad)


_METRIC_RULE = """
[[rule]]
name = "two threads keep 0.95x"
subject = "test_threads_paired[rust]"
metric = "throughput_two_vs_one"
min_value = 0.95
"""


def _metric_results(value: float | None) -> dict[str, object]:
    extra = {} if value is None else {"throughput_two_vs_one": value}
    return {
        "benchmarks": [
            {"name": "test_threads_paired[rust]", "stats": {"median": 0.03}, "extra_info": extra}
        ]
    }


@pytest.mark.parametrize(
    ("value", "passes", "detail"),
    [
        (0.97, True, "throughput_two_vs_one = 0.970 (need >= 0.95)"),
        (0.95, True, "throughput_two_vs_one = 0.950 (need >= 0.95)"),
        (0.90, False, "throughput_two_vs_one = 0.900 (need >= 0.95)"),
        (None, False, "missing benchmark or metric"),
    ],
)
def test_gate_checks_a_metric_the_benchmark_measured_itself(
    gate: ModuleType, tmp_path: Path, value: float | None, passes: bool, detail: str
) -> None:
    """A metric rule reads the benchmark's extra_info; a missing metric fails."""
    rules_file = tmp_path / "thresholds.toml"
    rules_file.write_text(_METRIC_RULE)
    out = io.StringIO()
    ok = gate.run_gate(_metric_results(value), gate.load_rules(rules_file), out=out)
    assert ok is passes, out.getvalue()
    assert detail in out.getvalue()


def test_gate_rejects_a_metric_rule_with_a_ratio_too(gate: ModuleType, tmp_path: Path) -> None:
    """A metric rule takes min_value and nothing of the two-benchmark kind."""
    bad = tmp_path / "bad.toml"
    bad.write_text(_METRIC_RULE + 'baseline = "test_other"\n')
    with pytest.raises(ValueError, match="with a metric needs min_value and nothing else"):
        gate.load_rules(bad)
    bad.write_text(_METRIC_RULE.replace("min_value = 0.95\n", ""))
    with pytest.raises(ValueError, match="with a metric needs min_value and nothing else"):
        gate.load_rules(bad)


def test_gate_command_exits_non_zero_on_a_broken_ratio(tmp_path: Path) -> None:
    """The CLI that CI runs exits 1 on synthetic JSON with a broken ratio."""
    results = tmp_path / "results.json"
    results.write_text(
        json.dumps(
            _results(
                **{
                    "test_fast[rust]": 100,
                    "test_slow[peer]": 1000,
                    "test_reject[rust]": 250,
                    "test_raise[bare]": 200,
                }
            )
        )
    )
    rules = tmp_path / "thresholds.toml"
    rules.write_text(_RULES)
    proc = subprocess.run(
        [sys.executable, str(GATE_PATH), str(results), "--thresholds", str(rules)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 1
    assert "bench gate: FAILED" in proc.stdout


def test_project_thresholds_load(gate: ModuleType) -> None:
    """The project's own thresholds file parses and has rules."""
    rules = gate.load_rules(gate.DEFAULT_THRESHOLDS)
    assert rules
    assert all(r.subject != r.baseline for r in rules)


def _confirm_command(tmp_path: Path, medians_ns: dict[str, float]) -> str:
    """A stand-in for the pytest rerun: writes the given medians to {json}."""
    payload = tmp_path / "rerun.json"
    payload.write_text(json.dumps(_results(**medians_ns)))
    copy = "import shutil, sys; shutil.copy(sys.argv[1], sys.argv[2])"
    return f"{sys.executable} -c '{copy}' {payload} {{json}}"


def _gate_cli(tmp_path: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    results = tmp_path / "results.json"
    broken = {"test_fast[rust]": 100, "test_slow[peer]": 1000}
    results.write_text(
        json.dumps(_results(**broken, **{"test_reject[rust]": 250, "test_raise[bare]": 200}))
    )
    rules = tmp_path / "thresholds.toml"
    rules.write_text(_RULES)
    return subprocess.run(
        [sys.executable, str(GATE_PATH), str(results), "--thresholds", str(rules), *extra],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_gate_confirms_a_failed_rule_by_measuring_it_again(tmp_path: Path) -> None:
    """A rule that fails once but holds when re-measured passes, and both verdicts show."""
    command = _confirm_command(tmp_path, {"test_fast[rust]": 40, "test_slow[peer]": 1000})
    proc = _gate_cli(tmp_path, "--confirm", command)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "FAIL  fast is 20x slow" in proc.stdout
    assert "re-measuring 1 failed rule(s)" in proc.stdout
    assert "PASS  fast is 20x slow" in proc.stdout
    assert proc.stdout.rstrip().endswith("bench gate: passed (2 rules)")


def test_gate_fails_when_the_re_measurement_fails_too(tmp_path: Path) -> None:
    """A regression that shows in both runs fails the gate."""
    command = _confirm_command(tmp_path, {"test_fast[rust]": 100, "test_slow[peer]": 1000})
    proc = _gate_cli(tmp_path, "--confirm", command)
    assert proc.returncode == 1
    assert proc.stdout.count("FAIL  fast is 20x slow") == 4  # the run and three re-measurements
    assert "bench gate: FAILED" in proc.stdout


def test_gate_fails_when_the_re_measurement_cannot_run(tmp_path: Path) -> None:
    """A rerun command that fails is a failed gate, not a pass."""
    proc = _gate_cli(tmp_path, "--confirm", f"{sys.executable} -c 'raise SystemExit(3)'")
    assert proc.returncode == 1
    assert "the re-measurement did not run" in proc.stdout

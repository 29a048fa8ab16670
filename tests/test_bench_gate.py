"""The bench gate fails on a broken ratio in each layer, tells MISS from FAIL, and
fails on what it cannot measure."""

from __future__ import annotations

import importlib.util
import io
import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

pytestmark = pytest.mark.backend_independent

ROOT = Path(__file__).resolve().parent.parent
BENCHES = ROOT / "benches"
GATE_PATH = BENCHES / "gate.py"


def _load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCHES / f"{name}.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def gate() -> ModuleType:
    return _load("gate")


@pytest.fixture(scope="module")
def paired() -> ModuleType:
    return _load("_paired")


@pytest.fixture(scope="module")
def counted_module() -> ModuleType:
    return _load("counted")


_RULES = """
[[rule]]
name = "fast is 20x slow"
source = "test"
group = "speed"
subject = "rust"
baseline = "peer"
min_speedup = 20

[[rule]]
name = "rejection near a bare raise"
source = "test"
group = "reject"
subject = "rust"
baseline = "bare"
max_ratio = 1.4
guard_max_ratio = 1.7
guard_why = "measured 1.5x"
"""


def _rules(gate: ModuleType, tmp_path: Path, text: str = _RULES) -> list[Any]:
    path = tmp_path / "thresholds.toml"
    path.write_text(text)
    rules: list[Any] = gate.load_rules(path)
    return rules


def _timed(**ratios: tuple[float, float] | list[tuple[float, float]]) -> dict[str, Any]:
    """pytest-benchmark JSON with one paired benchmark per group; each value is
    (subject ns, baseline ns) for every round, or a list of per-round pairs."""
    members = {"speed": ("rust", "peer"), "reject": ("rust", "bare")}
    benchmarks = []
    for group, value in ratios.items():
        rounds = value if isinstance(value, list) else [value] * 11
        subject, baseline = members[group]
        ns = {subject: [s for s, _ in rounds], baseline: [b for _, b in rounds]}
        paired = {"ops": 100, "rounds": len(rounds), "ns_per_op": ns}
        benchmarks.append(
            {
                "name": f"test_paired[{group}]",
                "stats": {"median": 0.01},
                "extra_info": {"paired": paired},
            }
        )
    return {"benchmarks": benchmarks}


def _judge(gate: ModuleType, rules: list[Any], **kwargs: Any) -> tuple[bool, str]:
    out = io.StringIO()
    ok = gate.run_gate(rules, out=out, **kwargs)
    return ok, out.getvalue()


# -- timed layer ------------------------------------------------------------------------------


def test_timed_passes_when_every_target_holds(gate: ModuleType, tmp_path: Path) -> None:
    ok, out = _judge(
        gate, _rules(gate, tmp_path), timed=[_timed(speed=(40, 1000), reject=(130, 100))]
    )
    assert ok, out
    assert "timed   PASS  fast is 20x slow: 25.00x faster" in out
    assert "timed   PASS  rejection near a bare raise: 1.300x" in out
    assert "2 PASS, 0 MISS, 0 FAIL" in out


def test_timed_fails_on_a_broken_speedup(gate: ModuleType, tmp_path: Path) -> None:
    """Only 10x faster where 20x is the target, and no guard: FAIL."""
    ok, out = _judge(
        gate, _rules(gate, tmp_path), timed=[_timed(speed=(100, 1000), reject=(130, 100))]
    )
    assert not ok
    assert "timed   FAIL  fast is 20x slow: 10.00x faster" in out
    assert "bench gate: FAILED" in out


def test_timed_miss_between_target_and_guard_passes_and_says_so(
    gate: ModuleType, tmp_path: Path
) -> None:
    """1.5x: the 1.4x target is missed but the 1.7x guard holds: MISS, with the figure."""
    ok, out = _judge(
        gate, _rules(gate, tmp_path), timed=[_timed(speed=(40, 1000), reject=(150, 100))]
    )
    assert ok, out
    line = next(x for x in out.splitlines() if "rejection near a bare raise" in x)
    assert line.startswith("timed   MISS")
    assert "1.500x" in line
    assert "target <= 1.4x, guard <= 1.7x (looser than the target: measured 1.5x)" in line
    assert "1 PASS, 1 MISS, 0 FAIL" in out


def test_timed_fails_past_the_guard(gate: ModuleType, tmp_path: Path) -> None:
    ok, out = _judge(
        gate, _rules(gate, tmp_path), timed=[_timed(speed=(40, 1000), reject=(180, 100))]
    )
    assert not ok
    assert "timed   FAIL  rejection near a bare raise: 1.800x" in out


def test_timed_judges_the_median_of_paired_rounds(gate: ModuleType, tmp_path: Path) -> None:
    """Rounds pair up: a slow phase that hits both sides of a round cancels out."""
    rounds = [(130, 100), (260, 200), (130, 100), (1300, 1000), (200, 100)]
    ok, out = _judge(gate, _rules(gate, tmp_path), timed=[_timed(speed=(40, 1000), reject=rounds)])
    assert ok, out
    assert "rejection near a bare raise: 1.300x (median of 5 paired rounds" in out


def test_timed_pools_every_run_and_never_picks_the_best(gate: ModuleType, tmp_path: Path) -> None:
    """Two runs past the guard and one good run: the pooled median still fails."""
    bad = _timed(speed=(40, 1000), reject=(180, 100))
    good = _timed(speed=(40, 1000), reject=(100, 100))
    ok, out = _judge(gate, _rules(gate, tmp_path), timed=[bad, good, bad])
    assert not ok
    assert "timed   FAIL  rejection near a bare raise: 1.800x (median of 33 paired rounds" in out
    assert "3 runs" in out


def test_timed_fails_on_a_missing_benchmark(gate: ModuleType, tmp_path: Path) -> None:
    ok, out = _judge(gate, _rules(gate, tmp_path), timed=[_timed(speed=(40, 1000))])
    assert not ok
    assert "FAIL  rejection near a bare raise: missing paired benchmark test_paired[reject]" in out


# -- counted layer ---------------------------------------------------------------------------


def _counted(python: str = "3.11.7", **costs: float) -> dict[str, Any]:
    return {
        "python": python,
        "cost_formula": "f",
        "cache": ["c"],
        "hash_seed": "0",
        "machine": "x86_64",
        "per_call": {name.replace("__", "/"): {"cost": cost} for name, cost in costs.items()},
    }


_BASE_COSTS = {
    "speed__rust": 500.0,
    "speed__peer": 20000.0,
    "reject__rust": 1600.0,
    "reject__bare": 1350.0,
}


def test_counted_passes_within_the_tolerance(gate: ModuleType, tmp_path: Path) -> None:
    now = dict(_BASE_COSTS, speed__rust=510.0)  # +2%
    ok, out = _judge(
        gate,
        _rules(gate, tmp_path),
        counted=_counted(**now),
        counted_baseline=_counted(**_BASE_COSTS),
    )
    assert ok, out
    assert "counted PASS  fast is 20x slow: count ratio 0.0255 (+2.00% vs baseline 0.0250" in out
    assert "target >= 20x faster is in time: counts say 39.22x faster, for information" in out


def test_counted_fails_on_a_broken_ratio(gate: ModuleType, tmp_path: Path) -> None:
    """A subject 15% dearer (as the test-only slow try_acquire build makes it) fails."""
    now = dict(_BASE_COSTS, reject__rust=1600.0 * 1.15)
    ok, out = _judge(
        gate,
        _rules(gate, tmp_path),
        counted=_counted(**now),
        counted_baseline=_counted(**_BASE_COSTS),
    )
    assert not ok
    assert "counted FAIL  rejection near a bare raise: count ratio 1.3630 (+15.00%" in out
    assert "counted PASS  fast is 20x slow" in out


def test_counted_fails_when_the_baseline_grows_cheaper(gate: ModuleType, tmp_path: Path) -> None:
    """The ratio is what counts: a baseline 10% cheaper with the subject unchanged fails."""
    now = dict(_BASE_COSTS, reject__bare=1350.0 * 0.9)
    ok, _out = _judge(
        gate,
        _rules(gate, tmp_path),
        counted=_counted(**now),
        counted_baseline=_counted(**_BASE_COSTS),
    )
    assert not ok


def test_counted_fails_on_a_missing_count(gate: ModuleType, tmp_path: Path) -> None:
    now = {k: v for k, v in _BASE_COSTS.items() if k != "reject__bare"}
    ok, out = _judge(
        gate,
        _rules(gate, tmp_path),
        counted=_counted(**now),
        counted_baseline=_counted(**_BASE_COSTS),
    )
    assert not ok
    assert "missing count of reject/rust or /bare" in out


def test_counted_fails_on_another_python(gate: ModuleType, tmp_path: Path) -> None:
    """Counts of another interpreter cannot be compared with the baseline."""
    ok, out = _judge(
        gate,
        _rules(gate, tmp_path),
        counted=_counted(python="3.12.1", **_BASE_COSTS),
        counted_baseline=_counted(**_BASE_COSTS),
    )
    assert not ok
    assert "python = '3.12.1', baseline with '3.11.7'" in out


def test_both_layers_are_judged_together(gate: ModuleType, tmp_path: Path) -> None:
    """A broken counted ratio fails the gate even when every timed rule passes."""
    now = dict(_BASE_COSTS, speed__rust=600.0)
    ok, out = _judge(
        gate,
        _rules(gate, tmp_path),
        counted=_counted(**now),
        counted_baseline=_counted(**_BASE_COSTS),
        timed=[_timed(speed=(40, 1000), reject=(130, 100))],
    )
    assert not ok
    assert "4 verdicts: 3 PASS, 0 MISS, 1 FAIL" in out


def test_no_layer_is_no_pass(gate: ModuleType, tmp_path: Path) -> None:
    ok, out = _judge(gate, _rules(gate, tmp_path))
    assert not ok
    assert "nothing to judge" in out


# -- the rule file ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ("max_ratio = 2\n", "exactly one target"),
        ("guard_min_speedup = 10\n", "a guard needs guard_why"),
        ('guard_min_speedup = 30\nguard_why = "x"\n', "the guard must be looser than the target"),
        ('guard_max_ratio = 3\nguard_why = "x"\n', "one guard, of the target's kind"),
        ("timeout = 3\n", "unknown keys"),
    ],
)
def test_bad_rules_are_rejected(gate: ModuleType, tmp_path: Path, extra: str, message: str) -> None:
    rule = (
        '[[rule]]\nname = "x"\nsource = "s"\ngroup = "g"\nsubject = "a"\nbaseline = "b"\n'
        "min_speedup = 20\n"
    )
    with pytest.raises(ValueError, match=message):
        _rules(gate, tmp_path, rule + extra)


def test_project_rules_load_and_name_their_groups(gate: ModuleType) -> None:
    """Every project rule parses, cites a source, and its counted members exist."""
    sys.path.insert(0, str(BENCHES))
    try:
        subjects = _load("subjects")
    finally:
        sys.path.remove(str(BENCHES))
    rules = gate.load_rules(gate.DEFAULT_THRESHOLDS)
    assert len(rules) >= 25
    for rule in rules:
        assert rule.source
        if rule.counted:
            assert rule.group in subjects.GROUPS, rule.name
    baseline = json.loads(gate.DEFAULT_COUNTED_BASELINE.read_text())
    for rule in rules:
        if rule.counted:
            assert f"{rule.group}/{rule.subject}" in baseline["per_call"], rule.name
            assert f"{rule.group}/{rule.baseline}" in baseline["per_call"], rule.name


def test_gate_command_exits_non_zero_on_each_layer(tmp_path: Path) -> None:
    """The CLI that CI runs exits 1 on a broken timed ratio, and on a broken count."""
    rules = tmp_path / "rules.toml"
    rules.write_text(_RULES)
    timed = tmp_path / "timed.json"
    timed.write_text(json.dumps(_timed(speed=(100, 1000), reject=(130, 100))))
    counted = tmp_path / "counted.json"
    counted.write_text(json.dumps(_counted(**dict(_BASE_COSTS, reject__rust=2000.0))))
    baseline = tmp_path / "baseline.json"
    baseline.write_text(json.dumps(_counted(**_BASE_COSTS)))

    def gate_cli(*args: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, str(GATE_PATH), "--thresholds", str(rules), *args]
        return subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)

    timed_run = gate_cli("--timed", str(timed))
    assert timed_run.returncode == 1, timed_run.stdout + timed_run.stderr
    assert "timed   FAIL  fast is 20x slow" in timed_run.stdout
    counted_run = gate_cli("--counted", str(counted), "--counted-baseline", str(baseline))
    assert counted_run.returncode == 1, counted_run.stdout + counted_run.stderr
    assert "counted FAIL  rejection near a bare raise" in counted_run.stdout


# -- the machinery ------------------------------------------------------------------------------


def test_paired_rounds_rotate_who_goes_first(paired: ModuleType) -> None:
    members = ["a", "b", "c"]
    firsts = [paired.round_order(members, i)[0] for i in range(12)]
    assert {m: firsts.count(m) for m in members} == {"a": 4, "b": 4, "c": 4}
    assert all(sorted(paired.round_order(members, i)) == members for i in range(12))


def test_paired_measure_records_every_round_per_member(paired: ModuleType) -> None:
    calls: list[tuple[str, int]] = []
    result = paired.measure(
        {"x": lambda n: calls.append(("x", n)), "y": lambda n: calls.append(("y", n))},
        ops=7,
        rounds=5,
    )
    assert result["ops"] == 7
    assert result["rounds"] == 5
    assert [len(v) for v in result["ns_per_op"].values()] == [5, 5]
    assert len(calls) == 2 * (5 + paired.WARMUP_ROUNDS)
    assert {n for _, n in calls} == {7}
    assert paired.median_ratio({"ns_per_op": {"x": [2, 4, 9], "y": [1, 2, 3]}}, "x", "y") == 2.0


def test_counted_cost_formula_and_dump_parsing(counted_module: ModuleType, tmp_path: Path) -> None:
    events = dict.fromkeys(counted_module.EVENTS, 0.0)
    events.update(Ir=1000, I1mr=1, D1mr=2, D1mw=3, ILmr=1, DLmr=1, DLmw=1)
    assert counted_module.cost(events) == 1000 + 10 * 6 + 100 * 3
    dumps = []
    for trigger, thread, ir in [
        ("g/m/n", 1, 500),
        ("g/m/n", 2, 10),
        ("g/m/2n", 1, 900),
        ("g/m/2n", 2, 50),
    ]:
        path = tmp_path / f"callgrind.out.{len(dumps)}-0{thread}"
        path.write_text(
            f"version: 1\nthread: {thread}\ndesc: Trigger: Client Request: {trigger}\n"
            f"events: {' '.join(counted_module.EVENTS)}\nsummary: {ir} 5 5\n"
        )
        dumps.append(str(path))
    chosen = counted_module.measuring_threads(dumps)
    assert chosen["g/m/2n"]["Ir"] == 900  # the busiest thread of the 2n segment
    assert chosen["g/m/n"]["Ir"] == 500  # and the same thread's n segment
    assert chosen["g/m/n"]["DLmw"] == 0.0  # trailing zeros left out by callgrind
    per = counted_module.per_call(chosen, "g/m", 100)
    assert per["Ir"] == 4.0

"""Bench gate: every rule of benches/thresholds.toml, on two layers.

Usage: python benches/gate.py [--timed RESULTS.json ...] [--counted COUNTED.json]
                              [--counted-baseline benches/callgrind_baseline.json]
                              [--layers counted,timed] [--groups g1,g2]

A rule compares a *subject* with a *baseline* of the same group
(``benches/subjects.py``) and cites its *target* (``max_ratio``: subject at most
N times the baseline; ``min_speedup``: subject at least N times faster). Where we
miss the target, the rule also has a *guard* (``guard_max_ratio`` or
``guard_min_speedup``, with ``guard_why``): the level that fails CI.

- Counted layer (``--counted``, from ``benches/counted.py``): the cost per call
  counted by callgrind is deterministic, but it is not time, so this layer gates
  regressions. The rule's count ratio (subject / baseline) must not exceed the
  committed baseline's ratio by more than ``--tolerance`` (3%). The count ratio
  is printed next to the target for information only. A baseline recorded on
  another Python version fails: its counts mean nothing here.
- Timed layer (``--timed``, pytest-benchmark JSON with the paired rounds of
  ``benches/_paired.py``): the median over paired rounds of subject / baseline
  time is judged against the target: PASS when it meets it, MISS when it misses
  the target but not the guard, FAIL past the guard (or past the target when
  there is no guard). Several ``--timed`` files pool their rounds: a
  re-measurement judges every rule on the median over every run, never on the
  best run.

A rule that cannot be measured (missing benchmark, member or count) FAILS.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
DEFAULT_THRESHOLDS = HERE / "thresholds.toml"
DEFAULT_COUNTED_BASELINE = HERE / "callgrind_baseline.json"
DEFAULT_TOLERANCE = 0.03

_KEYS = {
    "name",
    "source",
    "group",
    "subject",
    "baseline",
    "max_ratio",
    "min_speedup",
    "guard_max_ratio",
    "guard_min_speedup",
    "guard_why",
    "counted",
    "timed_benchmark",
}


@dataclass(frozen=True)
class Rule:
    name: str
    source: str
    group: str
    subject: str
    baseline: str
    max_ratio: float | None = None
    min_speedup: float | None = None
    guard_max_ratio: float | None = None
    guard_min_speedup: float | None = None
    guard_why: str | None = None
    counted: bool = True
    timed_benchmark: str | None = None

    @property
    def benchmark(self) -> str:
        return self.timed_benchmark or f"test_paired[{self.group}]"

    @property
    def target_ratio(self) -> float:
        """The target as a limit on subject / baseline."""
        if self.max_ratio is not None:
            return self.max_ratio
        assert self.min_speedup is not None
        return 1.0 / self.min_speedup

    @property
    def guard_ratio(self) -> float | None:
        if self.guard_max_ratio is not None:
            return self.guard_max_ratio
        if self.guard_min_speedup is not None:
            return 1.0 / self.guard_min_speedup
        return None

    def describe(self, ratio: float) -> str:
        """A ratio in the rule's own terms."""
        if self.max_ratio is not None:
            return f"{ratio:.3f}x"
        if self.min_speedup is not None and self.min_speedup <= 1:
            return f"{1.0 / ratio:.3f}x the throughput"
        return f"{1.0 / ratio:.2f}x faster"

    def describe_limit(self, ratio: float) -> str:
        if self.max_ratio is not None:
            return f"<= {ratio:g}x"
        if self.min_speedup is not None and self.min_speedup <= 1:
            return f">= {1.0 / ratio:g}x the throughput"
        return f">= {1.0 / ratio:g}x faster"


def load_rules(path: Path) -> list[Rule]:
    data = tomllib.loads(path.read_text())
    rules = []
    for raw in data.get("rule", []):
        unknown = set(raw) - _KEYS
        if unknown:
            raise ValueError(f"{path}: rule {raw.get('name')!r} has unknown keys {sorted(unknown)}")
        missing = {"name", "source", "group", "subject", "baseline"} - set(raw)
        if missing:
            raise ValueError(f"{path}: rule {raw.get('name')!r} lacks {sorted(missing)}")
        rule = Rule(**raw)
        if (rule.max_ratio is None) == (rule.min_speedup is None):
            raise ValueError(
                f"{path}: rule {rule.name!r} needs exactly one target: max_ratio or min_speedup"
            )
        guards = [g for g in (rule.guard_max_ratio, rule.guard_min_speedup) if g is not None]
        if guards:
            kind_matches = (rule.guard_max_ratio is not None) == (rule.max_ratio is not None)
            if len(guards) > 1 or not kind_matches:
                raise ValueError(f"{path}: rule {rule.name!r}: one guard, of the target's kind")
            if not rule.guard_why:
                raise ValueError(f"{path}: rule {rule.name!r}: a guard needs guard_why")
            guard = rule.guard_ratio
            assert guard is not None
            if guard <= rule.target_ratio:
                raise ValueError(
                    f"{path}: rule {rule.name!r}: the guard must be looser than the target"
                )
        if any(r.name == rule.name for r in rules):
            raise ValueError(f"{path}: two rules named {rule.name!r}")
        rules.append(rule)
    if not rules:
        raise ValueError(f"{path}: no rules")
    return rules


# -- timed layer --------------------------------------------------------------------------


def pooled_rounds(runs: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Every run's paired rounds, per benchmark name."""
    pooled: dict[str, list[dict[str, Any]]] = {}
    for results in runs:
        for bench in results.get("benchmarks", []):
            paired = (bench.get("extra_info") or {}).get("paired")
            if paired:
                pooled.setdefault(bench["name"], []).append(paired)
    return pooled


def timed_verdict(rule: Rule, pooled: dict[str, list[dict[str, Any]]]) -> tuple[str, str]:
    runs = pooled.get(rule.benchmark)
    if not runs:
        return "FAIL", f"missing paired benchmark {rule.benchmark}"
    ratios: list[float] = []
    subject_ns: list[float] = []
    baseline_ns: list[float] = []
    for paired in runs:
        times = paired["ns_per_op"]
        if rule.subject not in times or rule.baseline not in times:
            return "FAIL", f"missing member {rule.subject} or {rule.baseline} in {rule.benchmark}"
        ratios += [s / b for s, b in zip(times[rule.subject], times[rule.baseline], strict=True)]
        subject_ns += times[rule.subject]
        baseline_ns += times[rule.baseline]
    if not ratios or min(baseline_ns) <= 0:
        return "FAIL", "no rounds"
    ratio = statistics.median(ratios)
    figure = (
        f"{rule.describe(ratio)} (median of {len(ratios)} paired rounds;"
        f" {_ns(statistics.median(subject_ns))} vs {_ns(statistics.median(baseline_ns))})"
    )
    target = rule.describe_limit(rule.target_ratio)
    guard = rule.guard_ratio
    if ratio <= rule.target_ratio:
        verdict = "PASS"
    elif guard is not None and ratio <= guard:
        verdict = "MISS"
    else:
        verdict = "FAIL"
    limits = f"target {target}"
    if guard is not None:
        limits += f", guard {rule.describe_limit(guard)} (looser than the target: {rule.guard_why})"
    return verdict, f"{figure}; {limits}"


def _ns(ns: float) -> str:
    if ns < 10_000:
        return f"{ns:,.1f} ns"
    if ns < 10_000_000:
        return f"{ns / 1000:,.1f} us"
    return f"{ns / 1e6:,.2f} ms"


# -- counted layer ---------------------------------------------------------------------------


def counted_verdict(
    rule: Rule, counted: dict[str, Any], baseline: dict[str, Any], tolerance: float
) -> tuple[str, str]:
    def ratio_of(figures: dict[str, Any]) -> float | None:
        per_call = figures.get("per_call", {})
        subject = per_call.get(f"{rule.group}/{rule.subject}")
        base = per_call.get(f"{rule.group}/{rule.baseline}")
        if subject is None or base is None or base["cost"] <= 0:
            return None
        return float(subject["cost"]) / float(base["cost"])

    now, then = ratio_of(counted), ratio_of(baseline)
    if now is None:
        return "FAIL", f"missing count of {rule.group}/{rule.subject} or /{rule.baseline}"
    if then is None:
        return "FAIL", "no baseline count for this rule (make bench-baseline)"
    limit = then * (1 + tolerance)
    verdict = "PASS" if now <= limit else "FAIL"
    change = (now / then - 1) * 100
    return verdict, (
        f"count ratio {now:.4f} ({change:+.2f}% vs baseline {then:.4f}; fails above {limit:.4f},"
        f" +{tolerance:.0%}); target {rule.describe_limit(rule.target_ratio)} is in time:"
        f" counts say {rule.describe(now)}, for information"
    )


def counted_mismatch(counted: dict[str, Any], baseline: dict[str, Any]) -> str | None:
    """Why the counts cannot be compared with the baseline, if they cannot."""
    for key in ("python", "cost_formula", "cache", "hash_seed", "machine"):
        if counted.get(key) != baseline.get(key):
            return (
                f"counts taken with {key} = {counted.get(key)!r}, baseline with"
                f" {baseline.get(key)!r}: run the gate where the baseline was recorded"
                " or refresh it (make bench-baseline)"
            )
    return None


# -- the gate ---------------------------------------------------------------------------------


def run_gate(
    rules: list[Rule],
    timed: list[dict[str, Any]] | None = None,
    counted: dict[str, Any] | None = None,
    counted_baseline: dict[str, Any] | None = None,
    tolerance: float = DEFAULT_TOLERANCE,
    out: Any = sys.stdout,
) -> bool:
    """Prints every rule's verdict on each layer given; whether the gate passes."""
    verdicts: list[str] = []
    if counted is not None:
        baseline = counted_baseline or {}
        mismatch = counted_mismatch(counted, baseline)
        print("== counted layer (callgrind; regressions against the committed baseline)", file=out)
        for rule in (r for r in rules if r.counted):
            if mismatch:
                verdict, detail = "FAIL", mismatch
            else:
                verdict, detail = counted_verdict(rule, counted, baseline, tolerance)
            verdicts.append(verdict)
            print(f"counted {verdict}  {rule.name}: {detail}  [{rule.source}]", file=out)
    if timed is not None:
        pooled = pooled_rounds(timed)
        runs = f"{len(timed)} run{'s' if len(timed) != 1 else ''}"
        print(f"== timed layer (paired rounds, {runs}; targets and guards)", file=out)
        for rule in rules:
            verdict, detail = timed_verdict(rule, pooled)
            verdicts.append(verdict)
            print(f"timed   {verdict}  {rule.name}: {detail}  [{rule.source}]", file=out)
    if not verdicts:
        print("bench gate: nothing to judge (no layer given)", file=out)
        return False
    failed = verdicts.count("FAIL")
    missed = verdicts.count("MISS")
    passed = failed == 0
    summary = (
        f"{len(verdicts)} verdicts: {verdicts.count('PASS')} PASS, {missed} MISS, {failed} FAIL"
    )
    print(f"bench gate: {'passed' if passed else 'FAILED'} ({summary})", file=out)
    return passed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--thresholds", type=Path, default=DEFAULT_THRESHOLDS)
    parser.add_argument("--timed", type=Path, action="append", help="pytest-benchmark JSON")
    parser.add_argument("--counted", type=Path, help="benches/counted.py output")
    parser.add_argument("--counted-baseline", type=Path, default=DEFAULT_COUNTED_BASELINE)
    parser.add_argument("--tolerance", type=float, default=DEFAULT_TOLERANCE)
    parser.add_argument("--groups", help="judge only the rules of these groups (comma-separated)")
    args = parser.parse_args(argv)
    rules = load_rules(args.thresholds)
    if args.groups:
        wanted = set(args.groups.split(","))
        rules = [r for r in rules if r.group in wanted]
        if not rules:
            parser.error(f"no rules in groups {sorted(wanted)}")
    timed = [json.loads(p.read_text()) for p in args.timed] if args.timed else None
    counted = json.loads(args.counted.read_text()) if args.counted else None
    baseline = None
    if counted is not None:
        if not args.counted_baseline.exists():
            parser.error(f"{args.counted_baseline} does not exist (make bench-baseline)")
        baseline = json.loads(args.counted_baseline.read_text())
    ok = run_gate(rules, timed, counted, baseline, args.tolerance)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

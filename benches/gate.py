"""Regression gate: fails when a ratio measured in one benchmark run misses its threshold.

Usage: python benches/gate.py RESULTS.json [--thresholds benches/thresholds.toml]
                              [--confirm "PYTEST COMMAND"]

Each rule in the thresholds file compares the medians of two benchmarks of the
same run (same process, same machine, same minute), so a noisy shared machine
moves both sides together. Absolute times are never gated. A rule whose
benchmark is missing from the run fails: a gate that cannot measure must not pass.

A rule with ``metric`` instead of ``baseline`` reads a ratio that one benchmark
measured itself and stored in its ``extra_info`` (``min_value``: it must be at
least that). The thread-scaling benchmarks do this: they alternate one-thread
and two-thread rounds and keep the median of the paired ratios, because this
VM's speed drifts by up to 2x between phases of a few seconds, far more than
the 5% such a rule must resolve, and only rounds run back to back share a phase.

With ``--confirm``, a failed rule is measured again (up to three times) before the gate fails:
the command (a pytest-benchmark run; ``{k}`` becomes a ``-k`` expression naming
the failed rules' benchmarks, ``{json}`` the output file) reruns just those
benchmarks, side by side again, and the rule is judged on the new run. A real
regression fails every run; a phase change of the shared 2-core machine between
a subject and its baseline (a 2x swing, seen here) rarely hits the same rule four
times in a row. Every verdict is printed.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DEFAULT_THRESHOLDS = Path(__file__).with_name("thresholds.toml")


@dataclass(frozen=True)
class Rule:
    """``subject`` must be ``min_speedup`` times faster than ``baseline``, or at most
    ``max_slowdown`` times slower (medians of one run)."""

    name: str
    subject: str
    baseline: str | None = None
    min_speedup: float | None = None
    max_slowdown: float | None = None
    metric: str | None = None
    min_value: float | None = None

    @property
    def benchmarks(self) -> list[str]:
        return [b for b in (self.subject, self.baseline) if b is not None]

    def check(
        self, medians: dict[str, float], extra: dict[str, dict[str, Any]]
    ) -> tuple[bool, str]:
        if self.metric is not None:
            assert self.min_value is not None
            value = extra.get(self.subject, {}).get(self.metric)
            if value is None:
                return False, f"missing benchmark or metric: {self.subject} {self.metric}"
            ok = float(value) >= self.min_value
            return ok, f"{self.metric} = {float(value):.3f} (need >= {self.min_value})"
        assert self.baseline is not None
        missing = [b for b in (self.subject, self.baseline) if b not in medians]
        if missing:
            return False, f"missing benchmark(s): {', '.join(missing)}"
        subject, baseline = medians[self.subject], medians[self.baseline]
        if subject <= 0 or baseline <= 0:
            return False, "a median is not positive"
        speedup = baseline / subject
        detail = f"{_fmt(subject)} vs {_fmt(baseline)}: {speedup:.2f}x"
        if self.min_speedup is not None:
            return speedup >= self.min_speedup, f"{detail} (need >= {self.min_speedup}x faster)"
        assert self.max_slowdown is not None
        slowdown = subject / baseline
        ok = slowdown <= self.max_slowdown
        return ok, f"{detail} faster, {slowdown:.2f}x the time (need <= {self.max_slowdown}x)"


def _fmt(seconds: float) -> str:
    ns = seconds * 1e9
    return f"{ns:,.0f} ns" if ns < 100_000 else f"{ns / 1e6:,.2f} ms"


def load_rules(path: Path) -> list[Rule]:
    data = tomllib.loads(path.read_text())
    rules = []
    for raw in data.get("rule", []):
        known = {"name", "subject", "baseline", "min_speedup", "max_slowdown"}
        known |= {"metric", "min_value"}
        unknown = set(raw) - known
        if unknown:
            raise ValueError(f"{path}: rule {raw.get('name')!r} has unknown keys {sorted(unknown)}")
        rule = Rule(**raw)
        if rule.metric is not None:
            if rule.min_value is None or {rule.baseline, rule.min_speedup, rule.max_slowdown} != {
                None
            }:
                raise ValueError(
                    f"{path}: rule {rule.name!r} with a metric needs min_value and nothing else"
                )
        elif rule.baseline is None or (rule.min_speedup is None) == (rule.max_slowdown is None):
            raise ValueError(
                f"{path}: rule {rule.name!r} needs a baseline and exactly one of"
                " min_speedup, max_slowdown"
            )
        rules.append(rule)
    if not rules:
        raise ValueError(f"{path}: no rules")
    return rules


def load_medians(results: dict[str, Any]) -> dict[str, float]:
    """Median seconds per benchmark, keyed by test name (``test_x[param]``)."""
    return {b["name"]: float(b["stats"]["median"]) for b in results.get("benchmarks", [])}


def load_extra_info(results: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """What each benchmark measured itself (``benchmark.extra_info``), keyed by test name."""
    return {b["name"]: dict(b.get("extra_info") or {}) for b in results.get("benchmarks", [])}


def failed_rules(results: dict[str, Any], rules: list[Rule], out: Any = sys.stdout) -> list[Rule]:
    """Checks every rule, prints each verdict, returns the rules that failed."""
    medians, extra = load_medians(results), load_extra_info(results)
    failed = []
    for rule in rules:
        ok, detail = rule.check(medians, extra)
        if not ok:
            failed.append(rule)
        print(f"{'PASS' if ok else 'FAIL'}  {rule.name}: {detail}", file=out)
    return failed


def run_gate(results: dict[str, Any], rules: list[Rule], out: Any = sys.stdout) -> bool:
    passed = not failed_rules(results, rules, out)
    print(f"bench gate: {'passed' if passed else 'FAILED'} ({len(rules)} rules)", file=out)
    return passed


def confirm(failed: list[Rule], command: str, workdir: Path, out: Any = sys.stdout) -> list[Rule]:
    """Reruns the failed rules' benchmarks with ``command``; returns the rules still failing."""
    names = sorted({name for rule in failed for name in rule.benchmarks})
    rerun_json = workdir / "confirm.json"
    cmd = command.format(k=shlex.quote(" or ".join(names)), json=shlex.quote(str(rerun_json)))
    print(f"bench gate: re-measuring {len(failed)} failed rule(s): {cmd}", file=out, flush=True)
    if subprocess.run(cmd, shell=True, check=False).returncode != 0:
        print("bench gate: the re-measurement did not run", file=out)
        return failed
    return failed_rules(json.loads(rerun_json.read_text()), failed, out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", type=Path, help="pytest-benchmark --benchmark-json output")
    parser.add_argument("--thresholds", type=Path, default=DEFAULT_THRESHOLDS)
    parser.add_argument(
        "--confirm", metavar="COMMAND", help="rerun failed rules' benchmarks ({k}, {json})"
    )
    args = parser.parse_args(argv)
    rules = load_rules(args.thresholds)
    failed = failed_rules(json.loads(args.results.read_text()), rules)
    # Up to three re-measurements, each of the rules still failing: a regression fails
    # all four runs, a phase change of the shared machine rarely hits one rule four times.
    for _ in range(3 if args.confirm else 0):
        if not failed:
            break
        failed = confirm(failed, args.confirm, args.results.parent)
    print(f"bench gate: {'passed' if not failed else 'FAILED'} ({len(rules)} rules)")
    return 0 if not failed else 1


if __name__ == "__main__":
    sys.exit(main())

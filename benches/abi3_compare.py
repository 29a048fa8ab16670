"""abi3 or per-version wheels? Builds both and measures the same benchmarks in each.

Usage: python benches/abi3_compare.py [-k EXPR]   (what `make bench-abi3` runs)

Builds the extension twice (per-version ABI, and the stable ABI with
``--features abi3``), installs each into its own virtualenv, runs the
benchmarks selected by ``-k`` in each (alternating, best median of each), and prints
the medians side by side with their ratio normalized by a pure-Python call of
the same run.
The result is recorded in benches/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / ".bench" / "abi3"
DEFAULT_SELECTION = (
    "clock_read_rust or breaker_call_rust or breaker_call_bare or try_acquire_allowed_rust"
    " or try_acquire_denied_rust or registry_hot_key_x1000_rust or retry_success_rust"
    " or backoff_delay_rust"
)


def _run(*cmd: str | Path, env: dict[str, str] | None = None) -> None:
    subprocess.run([str(c) for c in cmd], check=True, cwd=ROOT, env=env)


def _build(name: str, features: list[str]) -> Path:
    """Builds the variant's wheel into its own virtualenv; returns that venv's python."""
    env_dir = WORK / f"venv-{name}"
    python = env_dir / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
    if not python.exists():
        venv.create(env_dir, with_pip=True)
    _run(python, "-m", "pip", "install", "--quiet", "maturin==1.16.0", ".[test,bench]")
    wheels = WORK / f"wheels-{name}"
    for old in wheels.glob("*.whl"):
        old.unlink()
    _run(python, "-m", "maturin", "build", "--release", "--quiet", "--out", wheels, *features)
    (wheel,) = wheels.glob("*.whl")
    _run(python, "-m", "pip", "install", "--quiet", "--force-reinstall", "--no-deps", wheel)
    return python


def _measure(name: str, python: Path, selection: str) -> dict[str, float]:
    out = WORK / f"{name}.json"
    env = {**os.environ, "SHARED_BACKEND": "rust"}
    # Run from another directory so the installed wheel, not python/, is imported.
    subprocess.run(
        [
            str(python),
            "-m",
            "pytest",
            str(ROOT / "benches"),
            "-q",
            "-p",
            "no:cacheprovider",
            "-k",
            selection,
            f"--benchmark-json={out}",
            "--benchmark-columns=median",
        ],
        check=True,
        cwd=WORK,
        env=env,
    )
    results = json.loads(out.read_text())
    return {b["name"]: b["stats"]["median"] for b in results["benchmarks"]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-k", default=DEFAULT_SELECTION, help="pytest -k selection")
    parser.add_argument("--runs", type=int, default=2, help="alternating runs per variant")
    args = parser.parse_args()
    WORK.mkdir(parents=True, exist_ok=True)
    pythons = {
        "per-version": _build("per-version", ["--features", "python"]),
        "abi3": _build("abi3", ["--features", "abi3"]),
    }
    # Alternate the variants and keep each benchmark's best median, then divide by
    # the pure-Python bare call of the same run: that cancels the machine's drift.
    best: dict[str, dict[str, float]] = {name: {} for name in pythons}
    for _ in range(args.runs):
        for name, python in pythons.items():
            for bench, median in _measure(name, python, args.k).items():
                best[name][bench] = min(median, best[name].get(bench, median))
    per_version, abi3 = best["per-version"], best["abi3"]
    unit = "test_breaker_call_bare_function"
    print(f"\n{'benchmark':36} {'per-version':>12} {'abi3':>12} {'abi3/per-version':>17}")
    for bench in sorted(per_version.keys() & abi3.keys()):
        a, b = per_version[bench], abi3[bench]
        normalized = (b / abi3[unit]) / (a / per_version[unit])
        print(f"{bench:36} {a * 1e9:10.1f}ns {b * 1e9:10.1f}ns {normalized:16.2f}x")
    print(f"(ratios normalized by {unit} of the same run)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

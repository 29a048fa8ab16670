"""abi3 or per-version wheels? Builds both and measures the same benchmarks in each.

Usage: python benches/abi3_compare.py [-k EXPR]   (what `make bench-abi3` runs)

Builds the extension twice (per-version ABI, and the stable ABI with
``--features abi3``), installs each into its own virtualenv, runs the
benchmarks selected by ``-k`` in each, and prints the medians side by side.
The two runs are separate processes, so compare the ratio column, and rerun
when it matters: the result is recorded in benches/README.md.
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
    "clock_read_rust or call_closed_rust or try_acquire_allowed_rust or backoff_delay_rust"
)


def _run(*cmd: str | Path, env: dict[str, str] | None = None) -> None:
    subprocess.run([str(c) for c in cmd], check=True, cwd=ROOT, env=env)


def _variant(name: str, features: list[str], selection: str) -> dict[str, float]:
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
    out = WORK / f"{name}.json"
    env = {**os.environ, "SHARED_BACKEND": "rust"}
    # Run from a temporary directory so the installed wheel, not python/, is imported.
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
    args = parser.parse_args()
    WORK.mkdir(parents=True, exist_ok=True)
    per_version = _variant("per-version", ["--features", "python"], args.k)
    abi3 = _variant("abi3", ["--features", "abi3"], args.k)
    print(f"\n{'benchmark':44} {'per-version':>12} {'abi3':>12} {'abi3/per-version':>17}")
    for name in sorted(per_version.keys() & abi3.keys()):
        a, b = per_version[name] * 1e9, abi3[name] * 1e9
        print(f"{name:44} {a:10.1f}ns {b:10.1f}ns {b / a:16.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())

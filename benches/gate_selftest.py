"""The counted layer must fail on a deliberate 15% slowdown of try_acquire.

Usage: python benches/gate_selftest.py WORKDIR

Builds the extension with the test-only cargo feature
``gate-selftest-slow-try-acquire`` (release profile, as the baseline's build),
unpacks the wheel into ``WORKDIR/site``, counts the rate-limiting groups with
that build first on the path, and runs the gate on them against the committed
baseline. Exits 0 only if the gate FAILED and a try_acquire rule is among the
failures; otherwise the gate could not see the slowdown, and this exits 1.
"""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
FEATURE = "gate-selftest-slow-try-acquire"
GROUPS = "try_acquire_allowed,try_acquire_denied,registry"


def main() -> int:
    workdir = Path(sys.argv[1]).resolve()
    wheels, site = workdir / "wheel", workdir / "site"
    for directory in (wheels, site):
        if directory.exists():
            for path in sorted(directory.rglob("*"), reverse=True):
                path.unlink() if path.is_file() else path.rmdir()
        directory.mkdir(parents=True, exist_ok=True)
    # The project's own target directory: the dependencies built by `make build`
    # are reused (the crate itself is rebuilt for its feature set, then kept apart).
    env = dict(os.environ)
    maturin = Path(sys.executable).with_name("maturin")
    subprocess.run(
        [str(maturin), "build", "--quiet", "--release", "--features", FEATURE,
         "--interpreter", sys.executable, "--out", str(wheels)],
        cwd=ROOT, env=env, check=True,
    )  # fmt: skip
    (wheel,) = wheels.glob("*.whl")
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(site)
    env = dict(os.environ, PYTHONPATH=str(site))
    loaded = subprocess.run(
        [sys.executable, "-c", "import shared._native as n; print(n.__file__)"],
        env=env, capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    if not loaded.startswith(str(site)):
        print(f"gate selftest: the slow build is not the one imported ({loaded})")
        return 1
    print(f"gate selftest: counting {GROUPS} with {loaded}", flush=True)
    counted = workdir / "counted.json"
    subprocess.run(
        [sys.executable, str(HERE / "counted.py"), str(counted), "--groups", GROUPS],
        env=env, check=True,
    )  # fmt: skip
    gate = subprocess.run(
        [sys.executable, str(HERE / "gate.py"), "--counted", str(counted), "--groups", GROUPS],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    print(gate.stdout, end="")
    failed_try_acquire = [
        line for line in gate.stdout.splitlines()
        if line.startswith("counted FAIL") and "try_acquire" in line
    ]  # fmt: skip
    if gate.returncode == 1 and failed_try_acquire:
        print(
            f"gate selftest: passed (the gate failed {len(failed_try_acquire)} try_acquire rules)"
        )
        return 0
    print("gate selftest: FAILED (the gate did not fail on a 15% slower try_acquire)")
    return 1


if __name__ == "__main__":
    sys.exit(main())

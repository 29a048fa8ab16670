"""The deterministic layer: the cost of each group member per call, counted by callgrind.

Usage: python benches/counted.py OUT.json [--groups g1,g2] [--python PYTHON]

One valgrind process (callgrind, cache simulation on, fixed cache geometry)
runs every member of every group (``benches/subjects.py``). Instrumentation is
off while Python starts, imports and builds the subjects (the million-key
registry takes a second natively and minutes instrumented), and on only around
the measured loops. For each member, in one function call each:

    run(n)   warm-up (caches, specialization), then a dump
    run(n)   dump "<group>/<member>/n"
    run(2n)  dump "<group>/<member>/2n"

Each dump holds the events since the previous one, per thread; only the
thread that ran the loops counts (``measuring_threads``). Per call:
``(cost(2n) - cost(n)) / n``: start-up, the call of ``run`` and the client
requests themselves are in both segments and cancel.

Cost unit (callgrind's events, one formula for every rule; the usual cycle
estimate without branch simulation):

    cost = Ir + 10 * (I1mr + D1mr + D1mw) + 100 * (ILmr + DLmr + DLmw)

Ir: instructions; I1mr/D1mr/D1mw: first-level misses (instruction read, data
read, data write); ILmr/DLmr/DLmw: last-level misses. The cache geometry is
fixed (``CACHE_OPTIONS``) so that the counts do not depend on the host's CPU.

The client requests come from a five-line C helper (``_callgrind_marks.c``),
compiled on first use with the system C compiler against valgrind's own
``callgrind.h``, and called through ctypes.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import glob
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
MARKS_SOURCE = HERE / "_callgrind_marks.c"
HASH_SEED = "0"

# 32 KiB 8-way L1s, 8 MiB 16-way last level, 64-byte lines: a common x86-64 server.
CACHE_OPTIONS = ["--I1=32768,64,64", "--D1=32768,64,64", "--LL=8388608,64,64"]
EVENTS = ("Ir", "Dr", "Dw", "I1mr", "D1mr", "D1mw", "ILmr", "DLmr", "DLmw")
COST_FORMULA = "Ir + 10*(I1mr + D1mr + D1mw) + 100*(ILmr + DLmr + DLmw)"


def cost(events: dict[str, float]) -> float:
    """The one cost unit of the deterministic layer (see COST_FORMULA)."""
    l1 = events["I1mr"] + events["D1mr"] + events["D1mw"]
    ll = events["ILmr"] + events["DLmr"] + events["DLmw"]
    return events["Ir"] + 10 * l1 + 100 * ll


# -- inside valgrind --------------------------------------------------------------------


def _measure_group(marks: Any, name: str) -> None:
    from subjects import GROUPS

    group = GROUPS[name]
    members = group.build()

    def measure_all() -> None:
        for member, run in members.items():
            label = f"{name}/{member}"
            n = group.counted_ops_of(member)
            # The cyclic collector would run in one segment and not the other.
            gc.collect()
            gc.disable()
            marks.cg_start()
            run(n)
            marks.cg_dump(f"{label}/warm".encode())
            run(n)
            marks.cg_dump(f"{label}/n".encode())
            run(2 * n)
            marks.cg_dump(f"{label}/2n".encode())
            marks.cg_stop()
            gc.enable()

    if group.in_worker_thread:
        thread = threading.Thread(target=measure_all)
        thread.start()
        thread.join()
    else:
        measure_all()


def child_main(marks_library: str, groups: list[str]) -> None:
    sys.path.insert(0, str(HERE))
    # PyDLL, not CDLL: the calls keep the GIL, so no other thread runs at a dump.
    marks = ctypes.PyDLL(marks_library)
    # Peers' timer threads would take the GIL every 5 ms of (slowed-down) wall time,
    # and each switch costs the measuring thread a few thousand instructions.
    sys.setswitchinterval(1000.0)
    for name in groups:
        _measure_group(marks, name)


# -- outside valgrind ---------------------------------------------------------------------


def compile_marks(workdir: Path) -> Path:
    compiler = shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc")
    if compiler is None:
        raise SystemExit("counted: no C compiler (cc) to build the callgrind marks helper")
    library = workdir / "callgrind_marks.so"
    subprocess.run(
        [compiler, "-O2", "-shared", "-fPIC", "-o", str(library), str(MARKS_SOURCE)],
        check=True,
    )
    return library


def parse_dump(path: str) -> tuple[str, int, dict[str, float]]:
    """The trigger name, the thread and the summary events of one callgrind dump file."""
    trigger, thread, events, summary = "", 0, None, None
    with open(path) as dump:
        for line in dump:
            if line.startswith("desc: Trigger: Client Request: "):
                trigger = line.split("Client Request: ", 1)[1].strip()
            elif line.startswith("thread: "):
                thread = int(line.split()[1])
            elif line.startswith("events: "):
                events = line.split()[1:]
            elif line.startswith("summary: "):
                summary = [float(v) for v in line.split()[1:]]
            elif line.startswith("fn="):
                break  # the header is over
    if events is None or summary is None:
        raise ValueError(f"{path}: no events or summary line")
    # Callgrind leaves out trailing zero counts.
    summary += [0.0] * (len(events) - len(summary))
    return trigger, thread, dict(zip(events, summary, strict=False))


def measuring_threads(paths: list[str]) -> dict[str, dict[str, float]]:
    """Each dump's events in the thread that ran the loops.

    Dumps are per thread (``--separate-threads=yes``): peers run threads of their
    own (limits' expiry timer, pyrate-limiter's leaker) that wake on the clock,
    so their work would land in a segment by chance. The measuring thread is the
    busiest one of the ``2n`` segment; its ``n`` segment is taken from the same thread.
    """
    by_trigger: dict[str, dict[int, dict[str, float]]] = {}
    for path in paths:
        trigger, thread, events = parse_dump(path)
        by_trigger.setdefault(trigger, {})[thread] = events
    chosen: dict[str, dict[str, float]] = {}
    for trigger, threads in by_trigger.items():
        if not trigger.endswith("/2n"):
            continue
        label = trigger[: -len("/2n")]
        thread = max(threads, key=lambda t: threads[t]["Ir"])
        chosen[f"{label}/2n"] = threads[thread]
        chosen[f"{label}/n"] = by_trigger[f"{label}/n"][thread]
    return chosen


def per_call(dumps: dict[str, dict[str, float]], label: str, n: int) -> dict[str, float]:
    once, twice = dumps[f"{label}/n"], dumps[f"{label}/2n"]
    per = {event: (twice[event] - once[event]) / n for event in EVENTS}
    per["cost"] = cost(twice) / n - cost(once) / n
    return per


def valgrind_version() -> str:
    out = subprocess.run(["valgrind", "--version"], capture_output=True, text=True, check=True)
    return out.stdout.strip()


def count(groups: list[str], python: str) -> dict[str, Any]:
    """Runs one valgrind process over ``groups``; returns the per-call figures."""
    sys.path.insert(0, str(HERE))
    from subjects import GROUPS

    if shutil.which("valgrind") is None:
        raise SystemExit("counted: valgrind is not installed (apt-get install -y valgrind)")
    with tempfile.TemporaryDirectory(prefix="counted-") as tmp:
        workdir = Path(tmp)
        library = compile_marks(workdir)
        out_file = workdir / "callgrind.out"
        command = [
            "valgrind",
            "--tool=callgrind",
            "--cache-sim=yes",
            *CACHE_OPTIONS,
            "--instr-atstart=no",
            "--separate-threads=yes",
            f"--callgrind-out-file={out_file}",
            python,
            str(Path(__file__).resolve()),
            "--child",
            str(library),
            "--groups",
            ",".join(groups),
        ]
        env = dict(os.environ, PYTHONHASHSEED=HASH_SEED)
        proc = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            sys.stderr.write(proc.stdout + proc.stderr)
            raise SystemExit(f"counted: valgrind exited with {proc.returncode}")
        dumps = measuring_threads(glob.glob(f"{out_file}.*"))
    figures: dict[str, dict[str, float]] = {}
    for name in groups:
        for label in sorted({key.rsplit("/", 1)[0] for key in dumps if key.startswith(f"{name}/")}):
            member = label.split("/", 1)[1]
            figures[label] = per_call(dumps, label, GROUPS[name].counted_ops_of(member))
            figures[label]["calls"] = GROUPS[name].counted_ops_of(member)
    version = subprocess.run(
        [python, "-c", "import platform; print(platform.python_version())"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    return {
        "python": version,
        "valgrind": valgrind_version(),
        "machine": platform.machine(),
        "cost_formula": COST_FORMULA,
        "cache": CACHE_OPTIONS,
        "hash_seed": HASH_SEED,
        "per_call": figures,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", nargs="?", type=Path, help="where to write the JSON figures")
    parser.add_argument("--groups", help="comma-separated groups (default: every group)")
    parser.add_argument("--python", default=sys.executable, help="the interpreter to count")
    parser.add_argument("--child", metavar="MARKS_LIBRARY", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    sys.path.insert(0, str(HERE))
    from subjects import GROUPS

    groups = args.groups.split(",") if args.groups else list(GROUPS)
    unknown = sorted(set(groups) - set(GROUPS))
    if unknown:
        parser.error(f"unknown groups: {', '.join(unknown)}")
    if args.child:
        child_main(args.child, groups)
        return 0
    if args.out is None:
        parser.error("OUT.json is required")
    result = count(groups, args.python)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1, sort_keys=True) + "\n")
    print(f"counted: {len(result['per_call'])} subjects in {len(groups)} groups -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

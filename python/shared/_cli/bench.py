"""``python -m shared bench``: a quick side-by-side of the hot paths.

Each operation runs on the Rust core, on its pure-Python twin and on the peer
libraries that are installed, in this one process, and reports the median
time per call of a few timed rounds. It takes a few seconds; ``benches/``
holds the real benchmarks (paired rounds, a gate on ratios).
"""

from __future__ import annotations

import argparse
import functools
import importlib
import json
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from types import ModuleType
from typing import Any

__all__ = ["Result", "add_parser", "measure", "run"]

Call = Callable[[], object]


@dataclass
class Result:
    operation: str
    subject: str
    ns_per_call: float


def _work() -> int:
    return 1


def _core(name: str) -> ModuleType | None:
    try:
        return importlib.import_module(name)
    except ImportError:
        return None


def _subjects_of(core: ModuleType) -> dict[str, Call]:
    from shared.resilience import RateLimitConfig

    breaker = core.CircuitBreakerCore("bench")
    bucket = core.TokenBucket(RateLimitConfig(tokens_per_second=1e9, burst_size=1e9))
    backoff = core.Backoff("exponential", 1.0, 60.0, 2.0, "equal", 7)
    retrying = core.RetryingCall(core.RetryCore(), _work)
    return {
        "breaker.call(f)": functools.partial(breaker.call, _work),
        "try_acquire()": bucket.try_acquire,
        "one backoff delay": functools.partial(backoff.delay, 4, 0.0),
        "retry success": retrying,
    }


def _peers() -> dict[str, dict[str, Call]]:
    """Peer subjects by operation, for the peers that import."""
    peers: dict[str, dict[str, Call]] = {op: {} for op in OPERATIONS}
    try:
        import pybreaker

        pb = pybreaker.CircuitBreaker(fail_max=5, reset_timeout=60)
        peers["breaker.call(f)"]["pybreaker"] = functools.partial(pb.call, _work)
    except ImportError:
        pass
    try:
        import circuitbreaker  # type: ignore[import-untyped]

        peers["breaker.call(f)"]["circuitbreaker"] = circuitbreaker.CircuitBreaker(
            failure_threshold=5, recovery_timeout=60, name="bench"
        )(_work)
    except ImportError:
        pass
    try:
        from limits import RateLimitItemPerSecond
        from limits.storage import MemoryStorage
        from limits.strategies import MovingWindowRateLimiter

        limiter, item = MovingWindowRateLimiter(MemoryStorage()), RateLimitItemPerSecond(10**9)
        peers["try_acquire()"]["limits"] = functools.partial(limiter.hit, item)
    except ImportError:
        pass
    try:
        import backoff

        delays = backoff.expo(base=2, factor=1, max_value=60)
        next(delays)
        peers["one backoff delay"]["backoff"] = lambda: backoff.full_jitter(next(delays))
        peers["retry success"]["backoff"] = backoff.on_exception(
            backoff.expo, Exception, max_tries=3
        )(_work)
    except ImportError:
        pass
    try:
        import tenacity

        peers["retry success"]["tenacity"] = tenacity.retry(
            stop=tenacity.stop_after_attempt(3), wait=tenacity.wait_exponential(max=60)
        )(_work)
    except ImportError:
        pass
    try:
        import stamina

        peers["retry success"]["stamina"] = stamina.retry(on=Exception, attempts=3)(_work)
    except ImportError:
        pass
    return peers


OPERATIONS = ("breaker.call(f)", "try_acquire()", "one backoff delay", "retry success")


def _loop(call: Call, n: int) -> float:
    start = time.perf_counter_ns()
    for _ in range(n):
        call()
    return (time.perf_counter_ns() - start) / n


def measure(call: Call, seconds: float, rounds: int = 5) -> float:
    """Median nanoseconds per call over ``rounds`` rounds of about ``seconds / rounds``."""
    n = 1
    while True:
        start = time.perf_counter()
        _loop(call, n)
        if time.perf_counter() - start >= seconds / rounds / 4 or n >= 10_000_000:
            break
        n *= 4
    return statistics.median(_loop(call, n) for _ in range(rounds))


def run_benchmarks(seconds: float, peers: bool = True) -> list[Result]:
    subjects: dict[str, dict[str, Call]] = {op: {} for op in OPERATIONS}
    for label, module in (("shared (rust)", "shared._native"), ("shared (pure)", "shared._pure")):
        core = _core(module)
        if core is not None:
            for op, call in _subjects_of(core).items():
                subjects[op][label] = call
    if peers:
        for op, calls in _peers().items():
            subjects[op].update(calls)
    return [
        Result(op, subject, measure(call, seconds))
        for op, calls in subjects.items()
        for subject, call in calls.items()
    ]


def table(results: list[Result]) -> str:
    """One line per subject; ``x rust``: its time over the Rust core's."""
    lines = [f"{'operation':<20} {'subject':<16} {'ns/call':>10} {'x rust':>8}"]
    for op in OPERATIONS:
        rows = [r for r in results if r.operation == op]
        base = next((r.ns_per_call for r in rows if r.subject == "shared (rust)"), None)
        for r in rows:
            ratio = f"{r.ns_per_call / base:.1f}x" if base else "-"
            lines.append(f"{op:<20} {r.subject:<16} {r.ns_per_call:>10,.0f} {ratio:>8}")
    return "\n".join(lines)


def plot(results: list[Result], path: str) -> None:
    """A grouped bar chart (log scale) of the results, written as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    subjects = list(dict.fromkeys(r.subject for r in results))
    width = 0.8 / max(1, len(subjects))
    figure, axes = plt.subplots(figsize=(10, 5))
    for i, subject in enumerate(subjects):
        xs, ys = [], []
        for j, op in enumerate(OPERATIONS):
            found = [r.ns_per_call for r in results if r.operation == op and r.subject == subject]
            if found:
                xs.append(j + i * width)
                ys.append(found[0])
        axes.bar(xs, ys, width, label=subject)
    axes.set_xticks([j + 0.4 - width / 2 for j in range(len(OPERATIONS))], list(OPERATIONS))
    axes.set_yscale("log")
    axes.set_ylabel("ns per call (log scale, lower is better)")
    axes.set_title("shared: hot paths side by side")
    axes.legend(fontsize="small")
    figure.tight_layout()
    figure.savefig(path, format="png", dpi=100)
    plt.close(figure)


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "bench",
        help="time the hot paths: Rust core, pure twin, installed peers",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument(
        "--plot", metavar="FILE.png", help="also write a bar chart (needs shared[plot])"
    )
    parser.add_argument(
        "--time",
        type=float,
        default=0.25,
        metavar="SECONDS",
        help="measuring time per subject (default 0.25)",
    )
    parser.add_argument("--no-peers", action="store_true", help="only shared's own cores")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    if not 0 < args.time <= 60:
        print("shared bench: --time must be in (0, 60]", file=sys.stderr)
        return 2
    if args.plot is not None:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            print(
                "shared bench: --plot needs matplotlib: pip install 'shared[plot]'", file=sys.stderr
            )
            return 1
    results = run_benchmarks(args.time, peers=not args.no_peers)
    if args.json:
        print(json.dumps([asdict(r) for r in results], indent=2))
    else:
        print(table(results))
    if args.plot is not None:
        plot(results, args.plot)
        if not args.json:
            print(f"plot written to {args.plot}")
    return 0

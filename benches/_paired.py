"""Paired rounds: every member of a group timed back to back, round after round.

The machine's speed drifts (by up to 2x between phases of a few seconds on a
shared VM), so two benchmarks run one after the other measure two different
machines. A paired round runs every member of a group once, back to back, and
the gate judges a ratio on the median over rounds of ``subject / baseline`` of
the SAME round: a phase change moves both sides of each ratio together.

The order rotates from round to round (and reverses every other round), so no
member always runs first or right after the same neighbour.

What a paired benchmark stores in ``benchmark.extra_info["paired"]``:
``{"ops": calls per member per round, "rounds": R,
"ns_per_op": {member: [R per-call times in ns]}}``; ``benches/gate.py`` computes
any ratio from it, pooling the rounds of every run it is given.
"""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Callable
from typing import Any

ROUNDS = 51
WARMUP_ROUNDS = 2

Timed = Callable[[int], object]


def round_order(members: list[str], round_index: int) -> list[str]:
    """Rotation by the round's index, reversed every other round."""
    shift = (round_index // 2) % len(members)
    order = members[shift:] + members[:shift]
    return order[::-1] if round_index % 2 else order


def measure(
    members: dict[str, Timed], ops: int, rounds: int = ROUNDS, self_timed: bool = False
) -> dict[str, Any]:
    """Times ``rounds`` paired rounds of ``run(ops)`` for every member.

    ``self_timed``: each ``run(ops)`` returns the nanoseconds to count itself (the
    thread benchmarks leave thread start-up out of it).
    """
    names = list(members)
    ns_per_op: dict[str, list[float]] = {name: [] for name in names}
    clock = time.perf_counter_ns
    for index in range(-WARMUP_ROUNDS, rounds):
        for name in round_order(names, index):
            run = members[name]
            start = clock()
            returned = run(ops)
            elapsed = clock() - start
            if self_timed:
                assert isinstance(returned, (int, float))
                elapsed = int(returned)
            if index >= 0:
                ns_per_op[name].append(elapsed / ops)
    return {"ops": ops, "rounds": rounds, "ns_per_op": ns_per_op}


def median_ratio(paired: dict[str, Any], subject: str, baseline: str) -> float:
    """Median over rounds of ``subject / baseline`` (time per call, same round)."""
    times = paired["ns_per_op"]
    return statistics.median(s / b for s, b in zip(times[subject], times[baseline], strict=True))


def run_paired(
    benchmark: Any,
    members: dict[str, Timed],
    ops: int,
    rounds: int = ROUNDS,
    in_worker_thread: bool = False,
    self_timed: bool = False,
) -> dict[str, Any]:
    """Measures ``members`` in paired rounds as one pytest-benchmark benchmark.

    pytest-benchmark times the whole measurement once (its figure is the total);
    the per-member figures and the rounds the gate reads go to ``extra_info``.
    """
    result: dict[str, Any] = {}

    def measure_once() -> None:
        if not in_worker_thread:
            result.update(measure(members, ops, rounds, self_timed))
            return
        failure: list[BaseException] = []

        def worker() -> None:
            try:
                result.update(measure(members, ops, rounds, self_timed))
            except BaseException as exc:  # re-raised in the test's thread
                failure.append(exc)

        thread = threading.Thread(target=worker)
        thread.start()
        thread.join()
        if failure:
            raise failure[0]

    benchmark.pedantic(measure_once, rounds=1, iterations=1)
    benchmark.extra_info["paired"] = result
    benchmark.extra_info["median_ns_per_op"] = {
        name: round(statistics.median(times), 1) for name, times in result["ns_per_op"].items()
    }
    return result

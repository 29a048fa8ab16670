"""``--replicas N``: N service processes against one idempotency store.

The parent spawns N ``python -m shared demo`` processes (each with its own
health and metrics servers: the configured ports plus its index, or any free
port with 0), forwards their output prefixed with ``[replica i]``, forwards
SIGINT/SIGTERM to them (a second signal forces them), and when they are done
merges their reports: the exchange ledger of each replica (executions per key)
and the fills each acknowledged. The merged summary proves exactly-once across
processes: every key executed once in all replicas together, no key executed
in two, and the duplicates that met in another replica replayed its fill.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import shutil
import signal
import sys
import tempfile
import uuid
from collections import Counter
from pathlib import Path
from typing import Any, TextIO

from shared.demo import wiring

__all__ = ["aggregate", "run_replicas"]

_SUMMED = (
    "requests",
    "unique_keys_sent",
    "duplicates_sent",
    "duplicates_replayed",
    "rate_limited",
    "breaker_rejections",
    "breaker_opened",
    "retries",
    "retry_give_ups",
    "client_retries",
    "in_progress_timeouts",
    "keys_abandoned_unexecuted",
    "spans",
    "in_flight_at_stop",
    "finished_after_stop",
    "cancelled_at_stop",
)


def aggregate(reports: list[dict[str, Any] | None], exit_codes: list[int]) -> dict[str, Any]:
    """The summary of a replicated run from each replica's report (None: it left none)."""
    present = [report for report in reports if report is not None]
    executions: Counter[str] = Counter()
    executed_by: dict[str, int] = {}
    acknowledged: dict[str, int] = {}
    fill_mismatches = 0
    across = 0
    keys_sent: set[str] = set()
    for index, report in enumerate(reports):
        if report is None:
            continue
        ledger = report["ledger"]
        executions.update(ledger["executions"])
        for key in ledger["executions"]:
            executed_by.setdefault(key, index)
        keys_sent.update(ledger["keys_sent"])
    for index, report in enumerate(reports):
        if report is None:
            continue
        for key, fill in report["ledger"]["acknowledged"].items():
            if executed_by.get(key, index) != index:
                across += 1
            first = acknowledged.setdefault(key, fill)
            fill_mismatches += first != fill
    executed_keys, acked_keys = set(executions), set(acknowledged)
    duplicate_executions = sum(count - 1 for count in executions.values() if count > 1)
    unacknowledged = sorted(executed_keys - acked_keys)
    totals = {name: sum(int(r.get(name, 0)) for r in present) for name in _SUMMED}
    mismatches = sum(int(r.get("replay_mismatches", 0)) for r in present) + fill_mismatches
    client_errors = [error for r in present for error in r.get("client_errors", [])]
    checks = {
        "every replica ran and exited 0": len(present) == len(reports)
        and all(code == 0 for code in exit_codes),
        "orders were executed": bool(executed_keys),
        "no client crashed": not client_errors,
        "orders executed == unique keys acknowledged (all replicas)": sum(executions.values())
        == len(acked_keys)
        and executed_keys == acked_keys,
        "zero duplicate executions across processes": duplicate_executions == 0,
        "every replay returned the original fill": mismatches == 0,
        "nothing lost on shutdown": totals["cancelled_at_stop"] == 0 and not unacknowledged,
    }
    head: dict[str, Any] = present[0] if present else {}
    return {
        "ok": all(checks.values()),
        "checks": checks,
        "replicas": len(reports),
        "replica_exit_codes": exit_codes,
        "duration_s": max((float(r["duration_s"]) for r in present), default=0.0),
        **totals,
        "unique_keys_sent": len(keys_sent),
        "orders_executed": sum(executions.values()),
        "unique_keys_executed": len(executed_keys),
        "unique_keys_acknowledged": len(acked_keys),
        "duplicate_executions": duplicate_executions,
        "replays_across_replicas": across,
        "replay_mismatches": mismatches,
        "executed_but_unacknowledged": unacknowledged[:10],
        "client_errors": client_errors,
        "backend": head.get("backend"),
        "idempotency_store": head.get("idempotency_store"),
        "limiters": head.get("limiters"),
        "health_urls": [r["health_url"] for r in present],
        "metrics_urls": [r["metrics_url"] for r in present],
        "per_replica": [
            None
            if r is None
            else {
                "orders_executed": r["orders_executed"],
                "duplicates_replayed": r["duplicates_replayed"],
                "health_url": r["health_url"],
                "metrics_url": r["metrics_url"],
            }
            for r in reports
        ],
    }


def _child_command(
    options: Any, index: int, run_id: str, state_dir: str, report: Path
) -> list[str]:
    settings_ports = (options.health_port_base, options.metrics_port_base)
    health, metrics = (0 if base == 0 else base + index for base in settings_ports)
    command = [sys.executable, "-m", "shared", "demo", "--no-tui"]
    command += ["--clients", str(options.clients), "--users", str(options.users)]
    command += ["--seed", str(options.seed), "--host", options.host]
    command += ["--health-port", str(health), "--metrics-port", str(metrics)]
    command += ["--state-dir", state_dir, "--summary-json", str(report)]
    command += ["--replica", f"{index}/{options.replicas}", "--run-id", run_id]
    if options.duration is not None:
        command += ["--duration", repr(options.duration)]
    if options.redis_url is not None:
        command += ["--redis", options.redis_url]
    if options.postgres_url is not None:
        command += ["--postgres", options.postgres_url]
    return command


@dataclasses.dataclass
class _Plan:
    clients: int
    users: int
    seed: int
    host: str
    replicas: int
    duration: float | None
    redis_url: str | None
    postgres_url: str | None
    health_port_base: int
    metrics_port_base: int


async def _forward(index: int, stream: asyncio.StreamReader, out: TextIO) -> None:
    prefix = f"[replica {index}] "
    while line := await stream.readline():
        print(prefix + line.decode(errors="replace").rstrip("\n"), file=out, flush=True)


async def run_replicas(options: Any, out: TextIO) -> dict[str, Any]:
    """Runs ``options.replicas`` service processes and returns the merged summary."""
    from shared.demo.app import _configs, print_summary

    wiring.check_options(options)
    settings = _configs(options).settings  # a bad variable fails here, before spawning
    run_id = options.run_id or uuid.uuid4().hex[:8]
    work = Path(tempfile.mkdtemp(prefix="shared-demo-replicas-"))
    state_dir = options.state_dir or str(work)
    if options.postgres_url is not None:
        await asyncio.to_thread(wiring.create_postgres_table, options.postgres_url)
    plan = _Plan(
        options.clients,
        options.users,
        options.seed,
        options.host,
        options.replicas,
        options.duration,
        options.redis_url,
        options.postgres_url,
        settings.health_check_port,
        settings.metrics_port,
    )
    environ = dict(os.environ if options.environ is None else options.environ)
    environ.setdefault("PYTHONUNBUFFERED", "1")
    print(
        f"shared demo: {options.replicas} replicas (run {run_id}) sharing "
        + (
            f"Redis at {options.redis_url}"
            if options.redis_url
            else f"PostgreSQL at {options.postgres_url}"
            if options.postgres_url
            else f"a SQLite file in {state_dir}"
        ),
        file=out,
        flush=True,
    )
    reports_paths = [work / f"replica-{i}.json" for i in range(options.replicas)]
    processes: list[asyncio.subprocess.Process] = []
    loop = asyncio.get_running_loop()
    signals = [0]

    def on_signal(name: str) -> None:
        signals[0] += 1
        again = signals[0] > 1
        print(
            f"{name}{' again: forcing' if again else ': stopping'} the replicas"
            + ("" if again else " gracefully (again to force)"),
            file=out,
            flush=True,
        )
        for process in processes:
            if process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    process.send_signal(signal.SIGTERM)

    installed = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(sig, on_signal, sig.name)
            installed.append(sig)
    try:
        forwards = []
        for index in range(options.replicas):
            process = await asyncio.create_subprocess_exec(
                *_child_command(plan, index, run_id, state_dir, reports_paths[index]),
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
                env=environ,
                # Ctrl-C reaches the parent alone, which forwards it once.
                start_new_session=True,
            )
            processes.append(process)
            assert process.stdout is not None
            forwards.append(asyncio.create_task(_forward(index, process.stdout, out)))
        # A timed run is bounded: start-up, the duration, the drain and the shutdown.
        bound = None
        if options.duration is not None:
            bound = 60.0 + options.duration + settings.drain_delay + settings.shutdown_timeout
        try:
            codes = await asyncio.wait_for(
                asyncio.gather(*(process.wait() for process in processes)), bound
            )
        except TimeoutError:
            print(f"the replicas did not finish within {bound:g} s: killed", file=out)
            codes = [-9] * len(processes)
        await asyncio.gather(*forwards, return_exceptions=True)
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)
        for process in processes:
            if process.returncode is None:
                process.kill()
                await process.wait()
    reports: list[dict[str, Any] | None] = []
    for path in reports_paths:
        try:
            reports.append(json.loads(path.read_text(encoding="utf-8")))
        except (OSError, ValueError):
            reports.append(None)
    shutil.rmtree(work, ignore_errors=True)
    summary = aggregate(reports, codes)
    summary["run_id"] = run_id
    print_summary(summary, out)
    return summary

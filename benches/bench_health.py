"""The health server under load: wrk, 50 connections, 5 s, against ``/health/ready``.

Three servers, each in its own process, measured one after the other on loopback:

* ``shared``: ``HealthServer`` (``start_in_background()``) serving a readiness
  with one registered check that hangs forever (non-critical, so the answer
  is a 200 DEGRADED): after its first timeout every probe is served from the
  cached "timed out" entry, which is the case this benchmark guards;
* ``asyncio_floor``: the plainest asyncio streams server answering a constant
  (no parsing, no JSON): the floor for a Python server on one event loop;
* ``stdlib_threading``: the standard library's ``ThreadingHTTPServer``
  answering a constant, a thread per connection.

The test prints requests/s and p99 of one 5 s run of each, then runs five
paired 1 s rounds of ``shared`` and the floor back to back. It fails when any
request errors (socket errors, timeouts, non-2xx), or on the medians of the
paired rounds: p99 over 50 ms and over 4x the floor's, or requests/s under
0.1x the floor's (see ``benches/README.md``, "Health server under wrk").
``python benches/bench_health.py`` prints the same figures without pytest.
"""

from __future__ import annotations

import os
import re
import shutil
import statistics
import subprocess
import sys
import textwrap
from dataclasses import dataclass

import pytest

CONNECTIONS = 50
SECONDS = int(os.environ.get("BENCH_HEALTH_SECONDS", "5"))
#: The issue's target for p99 under this load.
P99_TARGET_MS = 50.0
#: Paired rounds (1 s each side) behind the guards.
ROUNDS = 5
#: Guards that hold on a loaded 2-core machine (see benches/README.md), judged on
#: the median of the paired rounds.
P99_GUARD_FACTOR = 4.0  # past 50 ms, shared's p99 at most 4x the asyncio floor's
RPS_GUARD_RATIO = 0.1  # shared's requests/s at least 0.1x the asyncio floor's

SERVERS = {
    "shared": """
        import time
        from shared.health import HealthCheck, HealthServer
        health = HealthCheck()
        health.add_check("stuck", lambda: time.sleep(10**6), timeout=0.1, critical=False)
        server = HealthServer(health, port=0, host="127.0.0.1", max_connections=200)
        server.start_in_background()
        print(server.port, flush=True)
        time.sleep(10**6)
    """,
    "asyncio_floor": """
        import asyncio
        BODY = b'{"status":"healthy"}'
        RESPONSE = (
            b"HTTP/1.1 200 OK\\r\\nContent-Type: application/json\\r\\n"
            b"Content-Length: %d\\r\\n\\r\\n" % len(BODY) + BODY
        )
        async def handle(reader, writer):
            try:
                while True:
                    await reader.readuntil(b"\\r\\n\\r\\n")
                    writer.write(RESPONSE)
            except Exception:
                writer.close()
        async def main():
            server = await asyncio.start_server(handle, "127.0.0.1", 0, backlog=1024)
            print(server.sockets[0].getsockname()[1], flush=True)
            await server.serve_forever()
        asyncio.run(main())
    """,
    "stdlib_threading": """
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
        BODY = b'{"status":"healthy"}'
        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            def do_GET(self):
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(BODY)))
                self.end_headers()
                self.wfile.write(BODY)
            def log_message(self, *args):
                pass
        ThreadingHTTPServer.request_queue_size = 1024
        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        print(server.server_address[1], flush=True)
        server.serve_forever()
    """,
}


@dataclass
class Result:
    name: str
    requests_per_second: float
    p50_ms: float
    p99_ms: float
    requests: int
    errors: int
    non_2xx: int


def _milliseconds(text: str) -> float:
    value, unit = re.fullmatch(r"([\d.]+)(us|ms|s)", text).groups()  # type: ignore[union-attr]
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def parse_wrk(name: str, output: str) -> Result:
    """Requests/s, p50, p99, request and error counts from ``wrk --latency`` output."""
    percentiles = dict(re.findall(r"^\s+(50|99)%\s+(\S+)$", output, re.MULTILINE))
    errors = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output
    )
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    return Result(
        name=name,
        requests_per_second=float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1)),  # type: ignore[union-attr]
        p50_ms=_milliseconds(percentiles["50"]),
        p99_ms=_milliseconds(percentiles["99"]),
        requests=int(re.search(r"(\d+) requests in", output).group(1)),  # type: ignore[union-attr]
        errors=sum(int(n) for n in errors.groups()) if errors else 0,
        non_2xx=int(non_2xx.group(1)) if non_2xx else 0,
    )


class Server:
    """One of ``SERVERS`` in a subprocess."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.process = subprocess.Popen(
            [sys.executable, "-c", textwrap.dedent(SERVERS[name])],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        assert self.process.stdout is not None
        self.url = f"http://127.0.0.1:{int(self.process.stdout.readline())}/health/ready"
        # Warm up (and, for shared, let the hanging check time out once).
        subprocess.run(["wrk", "-t1", "-c2", "-d1s", self.url], capture_output=True, check=True)

    def wrk(self, seconds: int) -> Result:
        completed = subprocess.run(
            [
                "wrk",
                "-t2",
                f"-c{CONNECTIONS}",
                f"-d{seconds}s",
                "--timeout",
                "2s",
                "--latency",
                self.url,
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        return parse_wrk(self.name, completed.stdout)

    def close(self) -> None:
        self.process.kill()
        self.process.wait(5)
        if self.process.stdout is not None:
            self.process.stdout.close()


def measure(name: str, seconds: int = SECONDS) -> Result:
    """Starts the server ``name`` in a subprocess and runs wrk against it."""
    server = Server(name)
    try:
        return server.wrk(seconds)
    finally:
        server.close()


def paired_rounds(rounds: int = ROUNDS) -> list[tuple[Result, Result]]:
    """(shared, floor) results of 1 s wrk runs, alternating which goes first.

    The host's load changes within seconds; a ratio of two runs taken back to
    back is what a guard can hold, not two 5 s figures taken 10 s apart.
    """
    shared, floor = Server("shared"), Server("asyncio_floor")
    try:
        pairs = []
        for index in range(rounds):
            if index % 2:
                f = floor.wrk(1)
                pairs.append((shared.wrk(1), f))
            else:
                pairs.append((shared.wrk(1), floor.wrk(1)))
        return pairs
    finally:
        shared.close()
        floor.close()


def table(results: list[Result]) -> str:
    lines = [
        "| server | requests/s | p50 | p99 | errors + non-2xx |",
        "|---|---|---|---|---|",
    ]
    lines.extend(
        f"| {r.name} | {r.requests_per_second:,.0f} | {r.p50_ms:.2f} ms "
        f"| {r.p99_ms:.2f} ms | {r.errors + r.non_2xx} of {r.requests:,} |"
        for r in results
    )
    return "\n".join(lines)


@pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk is not installed (apt install wrk)")
def test_health_server_under_wrk() -> None:
    """No request errors; p99 under 50 ms (or within the guard); throughput within the guard."""
    results = [measure(name) for name in ("shared", "asyncio_floor", "stdlib_threading")]
    print("\n" + table(results))
    for result in results[:2]:
        assert result.errors == 0, result
        assert result.non_2xx == 0, result
    pairs = paired_rounds()
    for shared, floor in pairs:
        assert shared.errors == shared.non_2xx == 0, shared
        assert floor.errors == floor.non_2xx == 0, floor
    p99 = statistics.median(shared.p99_ms for shared, _ in pairs)
    p99_ratio = statistics.median(shared.p99_ms / floor.p99_ms for shared, floor in pairs)
    rps_ratio = statistics.median(
        shared.requests_per_second / floor.requests_per_second for shared, floor in pairs
    )
    print(
        f"paired 1 s rounds (median of {len(pairs)}): shared p99 {p99:.1f} ms, "
        f"{p99_ratio:.2f}x the asyncio floor's; requests/s {rps_ratio:.2f}x the floor's"
    )
    if p99 > P99_TARGET_MS:
        print(
            f"MISS p99 {p99:.1f} ms > target {P99_TARGET_MS:g} ms "
            f"(guard: <= {P99_GUARD_FACTOR:g}x the floor's p99 in the same rounds)"
        )
    assert p99 <= P99_TARGET_MS or p99_ratio <= P99_GUARD_FACTOR, (p99, p99_ratio)
    assert rps_ratio >= RPS_GUARD_RATIO, rps_ratio


if __name__ == "__main__":
    print(table([measure(name) for name in ("shared", "asyncio_floor", "stdlib_threading")]))
    for shared, floor in paired_rounds():
        print(
            f"round: shared {shared.requests_per_second:,.0f}/s p99 {shared.p99_ms:.1f} ms, "
            f"floor {floor.requests_per_second:,.0f}/s p99 {floor.p99_ms:.1f} ms"
        )

"""``python -m shared demo``: the order-execution service (``shared.demo``)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

__all__ = ["add_parser", "run"]

DESCRIPTION = """\
Runs an asyncio order-execution service that uses every pattern: clients that
retry and send duplicates on purpose, a per-user rate limiter, one execution
per idempotency key, and a simulated exchange (latency spikes, errors, an
outage window) behind a circuit breaker, a per-attempt timeout and a retry
with a budget. Serves /health/* and /metrics while it runs, shows a live view
(Rich) on a terminal or log lines elsewhere, stops gracefully on Ctrl-C or
SIGTERM, and ends with a summary that proves exactly-once execution.

Configured by the environment as well (CIRCUIT_BREAKER_*, RATE_LIMIT_*,
RETRY_*, HEALTH_CHECK_PORT, METRICS_PORT, LOG_LEVEL, SHUTDOWN_TIMEOUT,
SHUTDOWN_DRAIN_DELAY, ...); options win over the environment.

Exit codes: 0 the summary's checks hold; 1 they do not, or the run failed
(a port in use, a server that does not answer); 2 a usage error, a bad
environment variable, or an option whose extra is not installed.

Idempotency: a SQLite file by default (--state-dir, else a temporary one),
Redis with --redis, PostgreSQL with --postgres. --replicas N runs N service
processes against it (each with its own probe and metrics ports: the given
ones plus the replica's index, or free ones with 0) and merges their reports."""


def _positive_float(text: str) -> float:
    value = float(text)
    if not 0 < value < 1e9:
        raise argparse.ArgumentTypeError(f"must be a number > 0, got {text!r}")
    return value


def _count(text: str) -> int:
    value = int(text)
    if not 1 <= value <= 10_000:
        raise argparse.ArgumentTypeError(f"must be an int in [1, 10000], got {text!r}")
    return value


def _port(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be a port in [0, 65535], got {text!r}")
    return value


def _replica(text: str) -> tuple[int, int]:
    index, _, count = text.partition("/")
    try:
        pair = (int(index), int(count))
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be INDEX/COUNT, got {text!r}") from None
    if not 0 <= pair[0] < pair[1]:
        raise argparse.ArgumentTypeError(f"must be INDEX/COUNT with INDEX < COUNT, got {text!r}")
    return pair


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="run the order-execution demo service",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--duration",
        type=_positive_float,
        metavar="SECONDS",
        help="stop after this long (default: run until Ctrl-C or SIGTERM)",
    )
    parser.add_argument("--clients", type=_count, default=8, help="concurrent clients (default 8)")
    parser.add_argument("--users", type=_count, default=4, help="distinct users (default 4)")
    view = parser.add_mutually_exclusive_group()
    view.add_argument(
        "--no-tui", dest="tui", action="store_false", default=None, help="plain log lines"
    )
    view.add_argument(
        "--tui", dest="tui", action="store_true", help="the live view even without a terminal"
    )
    parser.add_argument(
        "--redis",
        metavar="URL",
        help="per-user limiters, and the idempotency store unless --postgres, on this Redis",
    )
    parser.add_argument(
        "--postgres",
        metavar="URL",
        help="idempotency store on this PostgreSQL (limiters on --redis if given, "
        "else in-process in each replica)",
    )
    parser.add_argument(
        "--replicas",
        type=_count,
        default=1,
        help="service processes sharing the idempotency store (default 1)",
    )
    parser.add_argument(
        "--state-dir",
        metavar="DIR",
        help="where the embedded SQLite idempotency store lives (default: a temporary "
        "directory removed at the end)",
    )
    # Set by the parent of --replicas for each service process it spawns.
    parser.add_argument("--replica", type=_replica, help=argparse.SUPPRESS)
    parser.add_argument("--run-id", help=argparse.SUPPRESS)
    parser.add_argument(
        "--host",
        default="127.0.0.1",
        help="address of the probe and metrics servers (default 127.0.0.1)",
    )
    parser.add_argument(
        "--health-port", type=_port, metavar="PORT", help="default: HEALTH_CHECK_PORT or 8080"
    )
    parser.add_argument(
        "--metrics-port", type=_port, metavar="PORT", help="default: METRICS_PORT or 9090"
    )
    parser.add_argument("--seed", type=int, default=1, help="seed of the simulation (default 1)")
    parser.add_argument("--summary-json", metavar="FILE", help="also write the summary as JSON")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from shared.config import EnvConfigError
    from shared.demo import DemoOptions
    from shared.demo import run as run_demo
    from shared.demo.wiring import UnsupportedOptionError

    options = DemoOptions(
        duration=args.duration,
        clients=args.clients,
        users=args.users,
        tui=args.tui,
        redis_url=args.redis,
        postgres_url=args.postgres,
        replicas=args.replicas,
        host=args.host,
        health_port=args.health_port,
        metrics_port=args.metrics_port,
        seed=args.seed,
        summary_json=args.summary_json,
        state_dir=args.state_dir,
        run_id=args.run_id,
        replica=args.replica,
    )
    try:
        return run_demo(options)
    except (UnsupportedOptionError, EnvConfigError) as exc:
        print(f"shared demo: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # a port in use, a server that does not answer
        print(f"shared demo: {exc}", file=sys.stderr)
        return 1

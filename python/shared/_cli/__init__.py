"""The command line: ``python -m shared {doctor,bench,demo}``.

Exit codes (every command): 0 success; 1 failure (a check that does not
hold, a server that does not answer, a missing optional dependency); 2 a
usage error (a bad option or environment variable, or an option this build
cannot honour).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from shared._cli import bench, demo, doctor

__all__ = ["EXIT_FAILURE", "EXIT_OK", "EXIT_USAGE", "build_parser", "main"]

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2


def build_parser() -> argparse.ArgumentParser:
    import shared

    parser = argparse.ArgumentParser(
        prog="python -m shared",
        description="shared: resilience and observability patterns on Rust cores.",
        epilog="Exit codes: 0 success, 1 failure, 2 usage error. "
        "`python -m shared COMMAND --help` for each command.",
    )
    parser.add_argument("--version", action="version", version=f"shared {shared.__version__}")
    subparsers = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)
    doctor.add_parser(subparsers)
    bench.add_parser(subparsers)
    demo.add_parser(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code: int = args.handler(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return code

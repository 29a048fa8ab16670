"""``python -m shared doctor``: what this installation is, and whether servers answer.

Prints the backend and why, the versions of Python, shared and its native
extension (and the extension's build profile), whether the interpreter is
free-threaded, which optional extras are installed, and, for the URLs given,
whether Redis and PostgreSQL answer (each within ``--timeout`` seconds).
Exit code 1 when a given server does not answer.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import json
import platform
import sys
import sysconfig
import time
from typing import Any

__all__ = ["add_parser", "collect", "run"]

# extra -> the distributions it brings
EXTRAS = {
    "redis": ("redis",),
    "postgres": ("psycopg",),
    "demo": ("rich",),
    "plot": ("matplotlib",),
}


def _version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def _native_info() -> dict[str, Any]:
    try:
        native = importlib.import_module("shared._native")
    except ImportError as exc:
        return {"installed": False, "why": str(exc)}
    return {
        "installed": True,
        "version": native.__version__,
        "build_profile": native.BUILD_PROFILE,
        "abi3": native.ABI3,
        "file": native.__file__,
    }


def _free_threading() -> dict[str, Any]:
    built = bool(sysconfig.get_config_var("Py_GIL_DISABLED"))
    is_enabled = getattr(sys, "_is_gil_enabled", None)
    return {"build": built, "gil_enabled": True if is_enabled is None else bool(is_enabled())}


def check_redis(url: str, timeout: float) -> dict[str, Any]:
    start = time.perf_counter()
    try:
        import redis
    except ImportError:
        return {"url": url, "ok": False, "error": "the redis extra is not installed"}
    try:
        client = redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)
        try:
            client.ping()
            version = client.info("server").get("redis_version")
        finally:
            client.close()
    except Exception as exc:
        return {"url": url, "ok": False, "error": f"{type(exc).__name__}: {exc}"}
    return {"url": url, "ok": True, "server_version": version, "ms": _ms(start)}


def check_postgres(url: str, timeout: float) -> dict[str, Any]:
    start = time.perf_counter()
    try:
        import psycopg
    except ImportError:
        return {"url": url, "ok": False, "error": "the postgres extra is not installed"}
    try:
        # connect_timeout is whole seconds (libpq); at least 1.
        with psycopg.connect(url, connect_timeout=max(1, round(timeout))) as connection:
            row = connection.execute("SHOW server_version").fetchone()
    except Exception as exc:
        return {"url": url, "ok": False, "error": f"{type(exc).__name__}: {exc}".strip()}
    return {"url": url, "ok": True, "server_version": row[0] if row else None, "ms": _ms(start)}


def _ms(start: float) -> float:
    return round((time.perf_counter() - start) * 1000, 1)


def collect(redis_urls: list[str], postgres_urls: list[str], timeout: float) -> dict[str, Any]:
    import shared

    return {
        "shared": shared.__version__,
        "backend": shared.BACKEND,
        "backend_reason": shared.backend_info()["reason"],
        "python": {
            "version": platform.python_version(),
            "implementation": platform.python_implementation(),
            "executable": sys.executable,
            "platform": platform.platform(),
        },
        "native_extension": _native_info(),
        "free_threading": _free_threading(),
        "extras": {
            extra: {dist: _version(dist) for dist in dists} for extra, dists in EXTRAS.items()
        },
        "redis": [check_redis(url, timeout) for url in redis_urls],
        "postgres": [check_postgres(url, timeout) for url in postgres_urls],
    }


def _print(report: dict[str, Any]) -> None:
    native = report["native_extension"]
    ft = report["free_threading"]
    py = report["python"]
    print(f"shared {report['shared']}")
    print(f"backend: {report['backend']} ({report['backend_reason']})")
    print(f"python: {py['implementation']} {py['version']} on {py['platform']}")
    print(f"  executable: {py['executable']}")
    if native["installed"]:
        print(
            f"native extension: {native['version']}, build profile {native['build_profile']}, "
            f"abi3 {native['abi3']}"
        )
        print(f"  file: {native['file']}")
    else:
        print(f"native extension: not installed ({native['why']})")
    gil = "GIL enabled" if ft["gil_enabled"] else "GIL disabled"
    print(f"free-threading: {'free-threaded build' if ft['build'] else 'no'} ({gil})")
    print("optional extras:")
    for extra, dists in report["extras"].items():
        found = ", ".join(f"{d} {v}" if v else f"{d} missing" for d, v in dists.items())
        installed = all(dists.values())
        print(f"  {extra:<9} {'installed' if installed else 'not installed'} ({found})")
    for kind in ("redis", "postgres"):
        for check in report[kind]:
            if check["ok"]:
                print(
                    f"{kind} {check['url']}: answers "
                    f"(server {check['server_version']}, {check['ms']} ms)"
                )
            else:
                print(f"{kind} {check['url']}: DOES NOT ANSWER: {check['error']}")


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "doctor",
        help="report the backend, versions, extras, and whether servers answer",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--redis", action="append", default=[], metavar="URL", help="check a Redis URL (repeatable)"
    )
    parser.add_argument(
        "--postgres",
        action="append",
        default=[],
        metavar="URL",
        help="check a PostgreSQL URL (repeatable)",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=2.0,
        metavar="SECONDS",
        help="connect timeout per server (default 2)",
    )
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    if not 0 < args.timeout <= 60:
        print("shared doctor: --timeout must be in (0, 60]", file=sys.stderr)
        return 2
    report = collect(args.redis, args.postgres, args.timeout)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        _print(report)
    servers = report["redis"] + report["postgres"]
    return 0 if all(check["ok"] for check in servers) else 1

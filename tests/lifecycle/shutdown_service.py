"""A small service for the signal tests: configured by one JSON argument.

It prints ``READY <health port or 0>`` once its signal handlers are installed,
``start <name>`` / ``end <name>`` around each shutdown handler, ``critical
entered`` / ``critical done`` around a critical section, and ``hook`` when the
telemetry hook runs. The logs go to stderr.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import threading
import time
from typing import Any

from shared.health import HealthCheck, HealthServer, HealthStatus
from shared.lifecycle import GracefulShutdown, ShutdownConfig, add_shutdown_hook


def say(line: str) -> None:
    print(line, flush=True)


def make_handler(spec: dict[str, Any]) -> Any:
    name, sleep, fail = spec["name"], spec.get("sleep", 0.0), spec.get("raise", False)
    if spec.get("kind") == "async":

        async def handler() -> None:
            say(f"start {name}")
            await asyncio.sleep(sleep)
            if fail:
                raise RuntimeError(f"{name} failed")
            say(f"end {name}")

    else:

        def handler() -> None:
            say(f"start {name}")
            time.sleep(sleep)
            if fail:
                raise RuntimeError(f"{name} failed")
            say(f"end {name}")

    handler.__qualname__ = name
    return handler


class SlowReadiness(HealthCheck):
    """Readiness that takes ``delay`` seconds per call (nothing cached)."""

    def __init__(self, delay: float) -> None:
        super().__init__(cache_ttl=0, probe_timeout=5.0)
        self.delay = delay

    def readiness(self) -> HealthStatus:
        time.sleep(self.delay)
        return HealthStatus.HEALTHY


def main() -> None:
    config: dict[str, Any] = json.loads(sys.argv[1])
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stderr,
        format="%(relativeCreated)d %(threadName)s %(name)s %(message)s",
    )
    shutdown = GracefulShutdown(
        ShutdownConfig(
            timeout=config.get("timeout", 5.0),
            drain_delay=config.get("drain_delay", 0.0),
            handler_timeout=config.get("handler_timeout"),
        )
    )
    for spec in config.get("handlers", []):
        shutdown.on_shutdown(make_handler(spec), timeout=spec.get("timeout"))
    add_shutdown_hook("test-telemetry", lambda: say("hook"))
    if "critical" in config:
        entered = threading.Event()

        def money_movement() -> None:
            with shutdown.critical("transfer"):
                say("critical entered")
                entered.set()
                time.sleep(config["critical"])
                say("critical done")

        threading.Thread(target=money_movement).start()
        entered.wait()
    health = SlowReadiness(config.get("ready_delay", 0.0))
    if config.get("mode") == "async":

        async def run() -> None:
            server = HealthServer(health, port=0, host="127.0.0.1")
            await server.start()
            say(f"READY {server.port}")
            await shutdown.wait()

        asyncio.run(run())
    else:
        server = HealthServer(health, port=0, host="127.0.0.1")
        server.start_in_background()
        say(f"READY {server.port}")
        shutdown.wait_for_signal()


if __name__ == "__main__":
    main()

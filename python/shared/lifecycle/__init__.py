"""Service lifecycle: ``graceful_shutdown`` (signal handling, ordered shutdown).

``add_shutdown_hook`` is the process-wide registry of what every graceful
shutdown runs last (telemetry flush); ``shutdown_in_progress()`` is what the
health server reads to answer readiness 503 during a shutdown.
"""

from __future__ import annotations

from shared.lifecycle.graceful_shutdown import (
    GracefulShutdown,
    ShutdownConfig,
    add_shutdown_hook,
    remove_shutdown_hook,
    shutdown_hooks,
    shutdown_in_progress,
)

__all__ = [
    "GracefulShutdown",
    "ShutdownConfig",
    "add_shutdown_hook",
    "remove_shutdown_hook",
    "shutdown_hooks",
    "shutdown_in_progress",
]

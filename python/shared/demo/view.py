"""Showing the demo's work: a live Rich table on a terminal, plain log lines elsewhere.

Rich is optional (``pip install 'shared[demo]'``): without it, or when stdout
is not a terminal, or with ``--no-tui``, the demo prints one line per second.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from typing import Any, Protocol, TextIO

__all__ = ["PlainView", "View", "make_view", "rich_available"]

Snapshot = dict[str, Any]


class View(Protocol):
    def log_handler(self) -> logging.Handler: ...
    def start(self) -> None: ...
    def update(self, snapshot: Snapshot) -> None: ...
    def stop(self) -> None: ...


def rich_available() -> bool:
    try:
        import rich  # noqa: F401
    except ImportError:
        return False
    return True


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


class PlainView:
    """One log line per update (at most one per ``interval`` seconds)."""

    def __init__(self, out: TextIO, interval: float = 1.0) -> None:
        self.out = out
        self.interval = interval
        self._last = -1e9

    def log_handler(self) -> logging.Handler:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        return handler

    def start(self) -> None:
        return None

    def update(self, s: Snapshot) -> None:
        if s["elapsed"] - self._last < self.interval:
            return
        self._last = s["elapsed"]
        lat = s["latency"]
        print(
            f"[{s['elapsed']:6.1f}s] executed={s['executed']} rate={s['rate']:.0f}/s "
            f"replayed={s['replayed']} rate_limited={s['rate_limited']} "
            f"breaker={s['breaker_state']} rejected={s['breaker_rejections']} "
            f"retries={s['retries']} gave_up={s['retry_give_ups']} in_flight={s['in_flight']} "
            f"exchange={'OUTAGE' if s['outage'] else 'up'} "
            f"p50={_ms(lat['p50'])} p99={_ms(lat['p99'])}",
            file=self.out,
            flush=True,
        )

    def stop(self) -> None:
        return None


class RichView:
    """A refreshing table (fits 80x24) with a progress bar for a timed run."""

    def __init__(self, console: Any, duration: float | None, title: str) -> None:
        from rich.live import Live
        from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

        self.console = console
        self.title = title
        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            TextColumn("{task.percentage:>3.0f}%"),
            TimeRemainingColumn(),
            console=console,
        )
        self.task = self.progress.add_task("running", total=duration or 1.0)
        self.duration = duration
        self.live = Live(console=console, auto_refresh=False, transient=False)

    def log_handler(self) -> logging.Handler:
        from rich.logging import RichHandler

        # Log records print above the live table instead of tearing it.
        handler = RichHandler(console=self.console, show_path=False)
        handler.setFormatter(logging.Formatter("%(name)s: %(message)s"))
        return handler

    def start(self) -> None:
        self.live.start()

    def render(self, s: Snapshot) -> Any:
        from rich.console import Group
        from rich.table import Table

        state = s["breaker_state"]
        colour = {"CLOSED": "green", "HALF_OPEN": "yellow", "OPEN": "red"}[state]
        table = Table(title=self.title, expand=False, show_header=False, min_width=60)
        for _ in range(4):
            table.add_column()
        lat = s["latency"]
        rows = [
            ("executed", str(s["executed"]), "rate", f"{s['rate']:.0f}/s"),
            ("replayed dupes", str(s["replayed"]), "in flight", str(s["in_flight"])),
            ("rate limited", str(s["rate_limited"]), "users", str(s["users"])),
            ("breaker", f"[{colour}]{state}[/]", "rejected", str(s["breaker_rejections"])),
            ("breaker calls ok", str(s["calls_succeeded"]), "failed", str(s["calls_failed"])),
            ("retries", str(s["retries"]), "budget gave up", str(s["retry_give_ups"])),
            (
                "exchange",
                "[red]OUTAGE[/]" if s["outage"] else "[green]up[/]",
                "errors",
                str(s["exchange_errors"]),
            ),
            ("latency p50", _ms(lat["p50"]), "p95 / p99", f"{_ms(lat['p95'])} / {_ms(lat['p99'])}"),
        ]
        for row in rows:
            table.add_row(*row)
        if self.duration is not None:
            self.progress.update(self.task, completed=min(s["elapsed"], self.duration))
            return Group(table, self.progress)
        return table

    def update(self, s: Snapshot) -> None:
        self.live.update(self.render(s), refresh=True)

    def stop(self) -> None:
        self.live.stop()


def make_view(
    tui: bool | None, duration: float | None, title: str, out: TextIO | None = None
) -> View:
    """``tui``: True forces the live view, False forces log lines, None picks by the terminal."""
    out = out or sys.stdout
    use_rich = tui if tui is not None else out.isatty()
    if use_rich and rich_available():
        from rich.console import Console

        return RichView(Console(file=out), duration, title)
    if use_rich and tui:
        print(
            "rich is not installed (pip install 'shared[demo]'): plain log lines instead", file=out
        )
    return PlainView(out)


SnapshotFn = Callable[[], Snapshot]

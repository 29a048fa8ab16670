"""The live view renders at 80x24 and on a wide terminal; log lines elsewhere."""

from __future__ import annotations

import io
import sys

import pytest
from rich.console import Console
from test_demo_service import make_service

from shared.demo.app import _snapshot
from shared.demo.stats import Stats
from shared.demo.view import PlainView, RichView, make_view

pytestmark = pytest.mark.backend_independent


@pytest.mark.parametrize(("width", "height"), [(80, 24), (200, 50)])
def test_rich_view_fits_the_terminal(width: int, height: int) -> None:
    """Every line fits the width, the whole view fits the height, the values are shown."""
    service = make_service()
    service.breaker.force_open()
    snapshot = _snapshot(service, Stats(), users=4)
    snapshot["executed"] = 12345
    console = Console(
        file=io.StringIO(), width=width, height=height, force_terminal=True, record=True
    )
    view = RichView(console, duration=10.0, title="shared demo")
    console.print(view.render(snapshot))
    text = console.export_text()
    lines = text.rstrip("\n").split("\n")
    assert len(lines) <= height
    assert max(len(line) for line in lines) <= width
    assert "12345" in text
    assert "OPEN" in text
    assert "p95 / p99" in text


def test_the_view_is_plain_when_not_a_terminal() -> None:
    """A pipe gets log lines; --tui forces the live view; --no-tui forces log lines."""
    out = io.StringIO()
    assert isinstance(make_view(None, 5.0, "t", out), PlainView)
    assert isinstance(make_view(True, 5.0, "t", out), RichView)
    assert isinstance(make_view(False, 5.0, "t", out), PlainView)


def test_plain_view_prints_at_most_once_per_interval() -> None:
    """Updates closer than the interval are skipped, so a pipe is not flooded."""
    out = io.StringIO()
    view = PlainView(out, interval=1.0)
    snapshot = _snapshot(make_service(), Stats(), users=4)
    for elapsed in (0.0, 0.3, 0.9, 1.0, 1.5, 2.1):
        view.update({**snapshot, "elapsed": elapsed})
    lines = out.getvalue().splitlines()
    assert len(lines) == 3
    assert all("breaker=CLOSED" in line for line in lines)


def test_without_rich_the_live_view_falls_back_to_log_lines(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """--tui without the demo extra says how to get it and prints log lines instead."""
    monkeypatch.setitem(sys.modules, "rich", None)  # import rich raises ImportError
    out = io.StringIO()
    assert isinstance(make_view(True, 5.0, "t", out), PlainView)
    assert "pip install 'shared[demo]'" in out.getvalue()

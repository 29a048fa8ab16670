"""A timeout block makes no system call: counted with strace, and at the signal module."""

from __future__ import annotations

import importlib
import shutil
import signal
import subprocess
import sys
import threading
import time
from typing import Any

import pytest

import shared
from shared.resilience import TimeoutContext, _deadlines, with_timeout

BLOCKS = 2000

# Between two markers (a stat of a path that does not exist), BLOCKS blocks on the
# main thread, then BLOCKS blocks in a worker thread that is already running.
STRACED_SCRIPT = f"""
import os, threading
from shared.resilience import TimeoutContext, with_timeout

def fast():
    return 1

decorated = with_timeout(5.0)(fast)

def blocks():
    for _ in range({BLOCKS}):
        with TimeoutContext(5.0):
            fast()
        decorated()

def mark(name):
    try:
        os.stat("/shared-timeout-mark-" + name)
    except FileNotFoundError:
        pass

blocks()  # the first blocks install the SIGALRM handler and start the scheduler
go, done = threading.Event(), threading.Event()

def worker():
    blocks()
    go.wait()
    blocks()
    done.set()

thread = threading.Thread(target=worker)
thread.start()
mark("start")
blocks()
go.set()
done.wait()
mark("end")
thread.join()
"""


def _spin(seconds: float) -> None:
    """Busy Python code for ``seconds``, in a frame of its own: CPython 3.13.0 skips
    the handlers (and a with block's exit) of the frame whose loop an asynchronous
    exception interrupts at its backward jump, so the loop must not be in the
    frame that holds the block."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        pass


def system_calls_between_markers(trace: str) -> list[str]:
    lines = trace.splitlines()
    start = next(i for i, line in enumerate(lines) if "shared-timeout-mark-start" in line)
    end = next(i for i, line in enumerate(lines) if "shared-timeout-mark-end" in line)
    return [
        line
        for line in lines[start + 1 : end]
        if line.strip() and "resumed>" not in line and "+++" not in line and "---" not in line
    ]


@pytest.mark.skipif(shutil.which("strace") is None, reason="strace is not installed")
def test_blocks_make_no_system_call_under_strace(tmp_path: Any) -> None:
    """8,000 blocks (main thread and worker, context and decorator): no call per block.

    What remains between the markers (7 to 20 calls when measured) is the
    hand-over between the two threads and the GIL's waits (futex), whose number
    grows with the machine's load, not with the blocks: the bound is one call
    per 50 blocks.
    """
    out = tmp_path / "trace"
    result = subprocess.run(
        ["strace", "-f", "-qq", "-o", str(out), sys.executable, "-c", STRACED_SCRIPT],
        capture_output=True,
        text=True,
        timeout=120,
    )
    if result.returncode != 0 and "ptrace" in result.stderr:
        pytest.skip(f"strace cannot trace here: {result.stderr.strip()[:200]}")
    assert result.returncode == 0, result.stderr
    calls = system_calls_between_markers(out.read_text())
    names = sorted({line.split("(", 1)[0].split()[-1] for line in calls})
    assert len(calls) < 4 * BLOCKS // 50, (len(calls), names)
    assert not {"rt_sigaction", "setitimer", "alarm", "timer_settime", "tgkill"} & set(names)


def test_blocks_do_not_touch_signals_or_itimers(monkeypatch: pytest.MonkeyPatch) -> None:
    """After the first block, no block installs a handler or arms a timer, in any thread."""
    calls: list[str] = []
    for module in (signal, _deadlines._signal):
        for name in ("signal", "setitimer", "alarm", "pthread_kill", "raise_signal"):
            original = getattr(module, name, None)
            if original is None:
                continue

            def counting(*args: Any, _name: str = name, _original: Any = original) -> Any:
                calls.append(_name)
                return _original(*args)

            monkeypatch.setattr(module, name, counting)

    def fast() -> int:
        return 1

    decorated = with_timeout(5.0)(fast)

    def blocks() -> None:
        for _ in range(BLOCKS):
            with TimeoutContext(5.0):
                fast()
            decorated()

    with TimeoutContext(5.0):  # the first main-thread block may install our handler
        pass
    calls.clear()
    blocks()
    worker = threading.Thread(target=blocks)
    worker.start()
    worker.join(30)
    assert not worker.is_alive()
    assert calls == []


def test_native_and_pure_blocks_in_one_thread_do_not_ask_the_scheduler_per_block(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The pure twin next to the native core: each keeps its own hint, both still fire."""
    if shared.BACKEND != "rust":
        pytest.skip("needs the native core next to the pure twin")
    pure_core = importlib.import_module("shared._pure.timeout").DeadlineCore
    scheduler = _deadlines._scheduler
    requests: list[float] = []
    original = scheduler.request

    def counting(state: Any, when: float) -> None:
        requests.append(when)
        original(state, when)

    monkeypatch.setattr(scheduler, "request", counting)

    def mixed() -> list[str]:
        for _ in range(BLOCKS):
            with TimeoutContext(5.0), pure_core(5.0):
                pass
        fired = []
        for core in (TimeoutContext, pure_core):
            try:
                with core(0.02):
                    _spin(2.0)
            except TimeoutError:
                fired.append(core.__name__)
        return fired

    result: list[list[str]] = []
    worker = threading.Thread(target=lambda: result.append(mixed()))
    worker.start()
    worker.join(30)
    assert result == [["TimeoutContext", "DeadlineCore"]]
    assert len(requests) < 20, len(requests)

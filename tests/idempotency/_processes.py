"""Runs ``_claimant.py`` processes against the durable stores (races and crashes)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

CLAIMANT = Path(__file__).with_name("_claimant.py")
BOUNDED_SECONDS = 30.0

Stores = list[tuple[str, str]]  # (kind, target)


def target_of(kind: str, store: Any) -> str:
    """What ``_claimant.make_store`` needs to open the same store."""
    if kind == "sqlite":
        return str(store._path)
    if kind == "redis":
        return str(store._prefix)
    return str(store._table).strip('"')


def _start(
    stores: Stores, key: str, lease: float, tmp: Path, hold: bool, processes: int = 1
) -> Any:
    spec = {
        "processes": processes,
        "stores": stores,
        "key": key,
        "lease": lease,
        "go": str(tmp / "go"),
        "effects": str(tmp),
        "hold": hold,
    }
    return subprocess.Popen(
        [sys.executable, str(CLAIMANT), json.dumps(spec)], stdout=subprocess.PIPE, text=True
    )


def _read(process: Any) -> dict[str, Any]:
    line = process.stdout.readline()
    assert line, f"the claimant exited with {process.wait(BOUNDED_SECONDS)} and said nothing"
    return json.loads(line)  # type: ignore[no-any-return]


def _reap(children: list[Any]) -> None:
    for child in children:
        if child.poll() is None:
            child.kill()
        child.wait(BOUNDED_SECONDS)
        child.stdout.close()


def effects(tmp: Path, kind: str) -> list[str]:
    """The pids that ran the side effect on ``kind``'s store."""
    path = tmp / kind
    return path.read_text().split() if path.exists() else []


def race(stores: Stores, key: str, processes: int, tmp: Path) -> dict[str, list[dict[str, Any]]]:
    """``processes`` claimant processes (forked by one parent), all released at once,
    each claiming ``key`` on every store; returns each store's answers."""
    parent = _start(stores, key, 30.0, tmp, hold=False, processes=processes)
    try:
        for _ in range(processes):
            assert _read(parent) == {"state": "ready"}
        (tmp / "go").touch()
        answers: dict[str, list[dict[str, Any]]] = {kind: [] for kind, _ in stores}
        for _ in range(processes * len(stores)):
            answer = _read(parent)
            answers[answer.pop("kind")].append(answer)
        assert parent.wait(BOUNDED_SECONDS) == 0
        return answers
    finally:
        _reap([parent])


def killed_holder(stores: Stores, key: str, lease: float, tmp: Path) -> dict[str, str]:
    """One claimant claims ``key`` on every store and is SIGKILLed holding them;
    returns its owner id per store."""
    child = _start(stores, key, lease, tmp, hold=True)
    try:
        assert _read(child) == {"state": "ready"}
        (tmp / "go").touch()
        owners = {}
        for _ in stores:
            answer = _read(child)
            assert answer["state"] == "claimed", answer
            owners[answer["kind"]] = str(answer["owner"])
        child.kill()  # SIGKILL: no finally, no atexit, no release
        return owners
    finally:
        _reap([child])

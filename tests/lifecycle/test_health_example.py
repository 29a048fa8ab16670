"""examples/health_service.py, the document's health check and shutdown, run as a process."""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import require_service

pytestmark = [
    pytest.mark.backend_independent,
    pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals"),
]

EXAMPLE = Path(__file__).parents[2] / "examples" / "health_service.py"


def test_example_serves_probes_and_shuts_down_on_sigterm() -> None:
    """Probes answer from the real Redis and PostgreSQL; SIGTERM runs the handlers; exit 0."""
    require_service("Redis", 6379)
    require_service("PostgreSQL", 5432)
    env = dict(os.environ, HEALTH_CHECK_PORT="0")
    with subprocess.Popen(
        [sys.executable, str(EXAMPLE)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    ) as process:
        try:
            assert process.stdout is not None
            line = process.stdout.readline()
            assert line.startswith("health server listening on http://"), line
            port = int(line.rsplit(":", 1)[1])
            answers = {}
            for path in ("/health", "/health/live", "/health/ready"):
                connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
                connection.request("GET", path)
                response = connection.getresponse()
                answers[path] = (response.status, json.loads(response.read()))
                connection.close()
            process.send_signal(signal.SIGTERM)
            _, stderr = process.communicate(timeout=10)
        finally:
            if process.poll() is None:
                process.kill()
    assert process.returncode == 0, stderr
    assert answers["/health"][0] == 200
    assert answers["/health"][1]["status"] == "healthy"
    assert answers["/health"][1]["checks"] == {"payments_api": "healthy"}
    assert answers["/health/live"][0] == 200
    assert answers["/health/ready"][0] == 200
    steps = [
        "Closing database connections...",
        "Database closed",
        "Closing Redis connections...",
        "Redis closed",
        "shutdown finished",
    ]
    positions = [stderr.find(step) for step in steps]
    assert -1 not in positions, stderr
    assert positions == sorted(positions), stderr

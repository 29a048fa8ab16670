"""``python -m shared``: help, exit codes, doctor, bench (and --plot), demo's refusals."""

from __future__ import annotations

import json
import platform
import socket
import struct
import subprocess
import sys
from pathlib import Path

import pytest

import shared
from conftest import require_service
from shared._cli import main

pytestmark = pytest.mark.backend_independent


def run_main(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    try:
        code = main(list(args))
    except SystemExit as exc:  # argparse: --help (0) and usage errors (2)
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def test_python_dash_m_shared_help() -> None:
    """The module runs as a program; its help lists the commands and the exit codes."""
    result = subprocess.run(
        [sys.executable, "-m", "shared", "--help"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0
    for word in ("doctor", "bench", "demo", "Exit codes: 0 success, 1 failure, 2 usage error"):
        assert word in result.stdout


@pytest.mark.parametrize("command", ["doctor", "bench", "demo"])
def test_every_command_has_help(capsys: pytest.CaptureFixture[str], command: str) -> None:
    """``COMMAND --help`` exits 0 and describes the command."""
    code, out, _ = run_main(capsys, command, "--help")
    assert code == 0
    assert f"python -m shared {command}" in out


@pytest.mark.parametrize(
    "args",
    [(), ("nope",), ("demo", "--clients", "0"), ("demo", "--duration", "-1"), ("bench", "--x")],
)
def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str], args: tuple[str, ...]) -> None:
    """A missing or unknown command or a bad option is exit code 2 with a message."""
    code, _, err = run_main(capsys, *args)
    assert code == 2
    assert "error" in err


def test_doctor_reports_the_installation(capsys: pytest.CaptureFixture[str]) -> None:
    """Backend and why, versions, extension, free-threading, extras; exit 0."""
    code, out, _ = run_main(capsys, "doctor")
    assert code == 0
    assert f"backend: {shared.BACKEND} (" in out
    assert f"python: {platform.python_implementation()} {platform.python_version()}" in out
    assert "native extension: " in out
    assert "free-threading: " in out
    for extra in ("redis", "postgres", "demo", "plot"):
        assert f"  {extra}" in out


def test_doctor_json(capsys: pytest.CaptureFixture[str]) -> None:
    """--json: the same facts, machine-readable."""
    code, out, _ = run_main(capsys, "doctor", "--json")
    assert code == 0
    report = json.loads(out)
    assert report["backend"] == shared.BACKEND
    assert report["shared"] == shared.__version__
    assert set(report["free_threading"]) == {"build", "gil_enabled"}
    assert report["extras"]["demo"]["rich"] is not None  # the test extra installs it
    native = report["native_extension"]
    if native["installed"]:
        assert native["build_profile"] in ("release", "debug", "dev", "bench")
    assert report["redis"] == report["postgres"] == []


def test_doctor_servers_that_do_not_answer_exit_1(capsys: pytest.CaptureFixture[str]) -> None:
    """A URL that does not answer is reported with the cause, and the exit code is 1."""
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    code, out, _ = run_main(
        capsys,
        "doctor",
        "--timeout",
        "0.5",
        "--redis",
        f"redis://127.0.0.1:{port}/0",
        "--postgres",
        f"postgresql://postgres@127.0.0.1:{port}/test",
    )
    assert code == 1
    assert out.count("DOES NOT ANSWER") == 2


@pytest.mark.redis
@pytest.mark.postgres
def test_doctor_servers_that_answer(capsys: pytest.CaptureFixture[str]) -> None:
    """Redis and PostgreSQL that answer give their versions; exit 0."""
    require_service("Redis", 6379)
    require_service("PostgreSQL", 5432)
    code, out, _ = run_main(
        capsys,
        "doctor",
        "--json",
        "--redis",
        "redis://127.0.0.1:6379/0",
        "--postgres",
        "postgresql://postgres@127.0.0.1:5432/test",
    )
    report = json.loads(out)
    assert code == 0, report
    assert report["redis"][0]["ok"]
    assert report["redis"][0]["server_version"]
    assert report["postgres"][0]["ok"]
    assert report["postgres"][0]["server_version"]


def test_doctor_bad_timeout_is_usage(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_main(capsys, "doctor", "--timeout", "0")
    assert code == 2
    assert "--timeout" in err


def test_bench_json(capsys: pytest.CaptureFixture[str]) -> None:
    """--json lists every hot path for the cores that are installed, with positive times."""
    code, out, _ = run_main(capsys, "bench", "--json", "--no-peers", "--time", "0.02")
    assert code == 0
    results = json.loads(out)
    subjects = {"shared (pure)"} | ({"shared (rust)"} if _has_native() else set())
    assert {r["subject"] for r in results} == subjects
    operations = {"breaker.call(f)", "try_acquire()", "one backoff delay", "retry success"}
    assert {r["operation"] for r in results} == operations
    assert len(results) == len(subjects) * len(operations)
    assert all(r["ns_per_call"] > 0 for r in results)


def test_bench_table_and_plot(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """The table compares to the Rust core; --plot writes a valid PNG bar chart."""
    pytest.importorskip("matplotlib")
    png = tmp_path / "bench.png"
    code, out, _ = run_main(capsys, "bench", "--time", "0.01", "--plot", str(png))
    assert code == 0
    assert "ns/call" in out
    assert "x rust" in out
    assert f"plot written to {png}" in out
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    assert (width, height) == (1000, 500)
    assert data.endswith(b"IEND\xaeB`\x82")


def _has_native() -> bool:
    try:
        import shared._native  # noqa: F401
    except ImportError:
        return False
    return True


def test_demo_refuses_an_option_whose_extra_is_missing(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """--postgres without psycopg exits 2 naming the extra to install, before starting."""
    monkeypatch.setitem(sys.modules, "psycopg", None)
    code, _, err = run_main(
        capsys, "demo", "--duration", "1", "--postgres", "postgresql://postgres@127.0.0.1/test"
    )
    assert code == 2
    assert "pip install 'shared[postgres]'" in err


def test_demo_replica_option_is_checked(capsys: pytest.CaptureFixture[str]) -> None:
    """The hidden --replica INDEX/COUNT (set by the parent of --replicas) is validated."""
    code, _, err = run_main(capsys, "demo", "--replica", "3/3")
    assert code == 2
    assert "INDEX < COUNT" in err


def test_demo_bad_environment_variable_is_usage(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bad variable exits 2 naming it, before anything starts."""
    monkeypatch.setenv("RATE_LIMIT_BURST_SIZE", "lots")
    code, _, err = run_main(capsys, "demo", "--duration", "1")
    assert code == 2
    assert "RATE_LIMIT_BURST_SIZE='lots'" in err


def test_demo_port_in_use_exits_1(capsys: pytest.CaptureFixture[str]) -> None:
    """A health port that is taken is a failure (exit 1) naming the cause."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code, _, err = run_main(
            capsys, "demo", "--duration", "1", "--no-tui", "--health-port", str(port)
        )
    assert code == 1
    assert "address already in use" in err.lower() or str(port) in err


def test_bench_plot_without_matplotlib_says_how_to_get_it(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """--plot without the plot extra fails (exit 1) before measuring, naming the extra."""
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    code, out, err = run_main(capsys, "bench", "--plot", str(tmp_path / "x.png"))
    assert code == 1
    assert "pip install 'shared[plot]'" in err
    assert out == ""
    assert not (tmp_path / "x.png").exists()

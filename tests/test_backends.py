"""The backend seam: selection by SHARED_BACKEND, reporting, and the twin's exports."""

from __future__ import annotations

import inspect
import os
import subprocess
import sys
import textwrap
from types import ModuleType

import pytest

import shared

# Makes `import shared._native` fail as if the extension were not installed.
_HIDE_NATIVE = textwrap.dedent(
    """
    import importlib.abc, sys
    class HideNative(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "shared._native":
                raise ModuleNotFoundError("hidden by the test", name=name)
            return None
    sys.meta_path.insert(0, HideNative())
    """
)


def _run(
    code: str, backend: str | None, *, hide_native: bool = False
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "SHARED_BACKEND"}
    if backend is not None:
        env["SHARED_BACKEND"] = backend
    prelude = _HIDE_NATIVE if hide_native else ""
    return subprocess.run(
        [sys.executable, "-c", prelude + code],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


_PRINT_BACKEND = "import shared; print(shared.BACKEND); print(shared.backend_info()['reason'])"


@pytest.mark.usefixtures("native")
@pytest.mark.parametrize(
    ("requested", "expected"),
    [
        (None, "rust"),
        ("auto", "rust"),
        ("rust", "rust"),
        ("python", "python"),
        ("PYTHON", "python"),
    ],
)
def test_backend_follows_the_environment(requested: str | None, expected: str) -> None:
    """SHARED_BACKEND picks the implementation, case-insensitively; auto prefers Rust."""
    result = _run(_PRINT_BACKEND, requested)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0] == expected


def test_auto_falls_back_to_the_twin_when_native_is_absent() -> None:
    """Without the extension, auto loads the pure twin and says why."""
    result = _run(_PRINT_BACKEND, "auto", hide_native=True)
    assert result.returncode == 0, result.stderr
    backend, reason = result.stdout.splitlines()
    assert backend == "python"
    assert "not installed" in reason


def test_rust_fails_loudly_when_native_is_absent() -> None:
    """SHARED_BACKEND=rust without the extension is an ImportError that names the module."""
    result = _run("import shared", "rust", hide_native=True)
    assert result.returncode != 0
    assert "ImportError" in result.stderr
    assert "SHARED_BACKEND=rust" in result.stderr
    assert "shared._native is not installed" in result.stderr


def test_python_backend_never_imports_native() -> None:
    """Forcing the twin works even where the extension cannot be imported."""
    result = _run(_PRINT_BACKEND, "python", hide_native=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0] == "python"


@pytest.mark.skipif(
    os.environ.get("SHARED_TEST_INSTALL") != "pure",
    reason="tests the installed pure-Python wheel (SHARED_TEST_INSTALL=pure)",
)
def test_the_pure_wheel_runs_on_the_twin_and_says_so() -> None:
    """Installed from the pure wheel, auto loads the twin and rust fails loudly, unaided."""
    result = _run(_PRINT_BACKEND, None)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "python",
        "shared._native is not installed; using the pure-Python twin",
    ]
    result = _run("import shared", "rust")
    assert result.returncode != 0
    assert "shared._native is not installed" in result.stderr


def test_unknown_backend_is_a_value_error() -> None:
    """A typo in SHARED_BACKEND is an error naming the variable, not a silent default."""
    result = _run("import shared", "cython")
    assert result.returncode != 0
    assert "ValueError" in result.stderr
    assert "SHARED_BACKEND='cython'" in result.stderr


def test_backend_info_reports_the_choice(backend: str) -> None:
    """backend_info() agrees with BACKEND and explains the choice."""
    info = shared.backend_info()
    assert info["backend"] == shared.BACKEND == backend
    assert info["version"] == shared.__version__
    assert info["reason"]
    if backend == "rust":
        assert info["build_profile"] in ("release", "debug")
        assert isinstance(info["abi3"], bool)


def _public(module: ModuleType) -> set[str]:
    return (
        {n for n in dir(module) if not n.startswith("_") or n == "__version__"}
        - {
            # module plumbing of the Python package, not part of the contract
            "annotations",
            "clock",
        }
        - {n for n in dir(module) if isinstance(getattr(module, n), ModuleType)}
    )


def test_twin_exports_the_same_names(native: ModuleType, pure: ModuleType) -> None:
    """Every name of the Rust module exists in the twin, and no more."""
    assert _public(native) == _public(pure)
    assert native.__version__ == pure.__version__ == shared.__version__


def _signature_of(obj: object) -> inspect.Signature | None:
    try:
        return inspect.signature(obj)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None


def _comparable(sig: inspect.Signature | None) -> list[tuple[str, object, object]] | None:
    if sig is None:
        return None
    return [(p.name, p.kind, p.default) for p in sig.parameters.values()]


def _members(obj: type) -> dict[str, object]:
    return {
        name: getattr(obj, name)
        for name in dir(obj)
        if not name.startswith("_") or name in ("__init__", "__call__", "__enter__", "__exit__")
    }


def test_twin_signatures_match(native: ModuleType, pure: ModuleType) -> None:
    """Functions, classes and their public methods take the same parameters in both."""
    mismatches = []
    for name in sorted(_public(native)):
        rust_obj, py_obj = getattr(native, name), getattr(pure, name)
        if isinstance(rust_obj, type):
            if not isinstance(py_obj, type):
                mismatches.append(f"{name}: class in Rust, {type(py_obj).__name__} in the twin")
                continue
            rust_members, py_members = _members(rust_obj), _members(py_obj)
            missing = {m for m in rust_members if not m.startswith("_")} - set(py_members)
            mismatches.extend(f"{name}.{m}: missing from the twin" for m in sorted(missing))
            for member in sorted(set(rust_members) & set(py_members)):
                if not callable(rust_members[member]):
                    continue
                r, p = (
                    _comparable(_signature_of(rust_members[member])),
                    _comparable(_signature_of(py_members[member])),
                )
                if r is not None and p is not None and r != p:
                    mismatches.append(f"{name}.{member}: {r} != {p}")
            r, p = _comparable(_signature_of(rust_obj)), _comparable(_signature_of(py_obj))
            if r is not None and r != p:
                mismatches.append(f"{name}(): {r} != {p}")
        elif callable(rust_obj):
            r, p = _comparable(_signature_of(rust_obj)), _comparable(_signature_of(py_obj))
            if r != p:
                mismatches.append(f"{name}(): {r} != {p}")
        else:
            assert type(rust_obj) is type(py_obj), name
    assert not mismatches, "\n".join(mismatches)


def test_native_timeline_matches_python_monotonic(native: ModuleType) -> None:
    """The Rust clock reads the same timeline as time.monotonic_ns()."""
    import time

    before = time.monotonic_ns()
    reading = native.monotonic_ns()
    after = time.monotonic_ns()
    # Anchored at import; allow for the anchor's own two reads.
    assert before - 1_000_000 <= reading <= after + 1_000_000

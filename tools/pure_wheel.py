"""Derives the pure-Python wheel (py3-none-any) from a binary wheel of the same release.

Usage: python tools/pure_wheel.py BINARY_WHEEL OUT_DIR

The pure wheel is what pip installs where no binary wheel fits (another CPU or
libc, a Python newer than the published wheels): the same package and metadata
without the Rust extension, so ``shared`` runs on its pure-Python twin
(``shared.BACKEND == "python"``). It is derived from a wheel maturin built, not
built separately, so that its metadata (version, dependencies, extras, README)
cannot drift from the binary wheels'.

Left out: the extension module, its stub ``_native.pyi`` (a stub for a module
that is not there would mislead type checkers) and the SBOM of the Rust crate.
``WHEEL`` says ``Root-Is-Purelib: true`` and the one tag ``py3-none-any``;
``RECORD`` is written anew (wheel spec: urlsafe base64 SHA-256, no padding).
"""

from __future__ import annotations

import base64
import hashlib
import sys
import zipfile
from pathlib import Path, PurePosixPath

PURE_TAG = "py3-none-any"
EXTENSION_SUFFIXES = (".so", ".pyd", ".dylib", ".dll")


def _left_out(name: str) -> bool:
    path = PurePosixPath(name)
    return (
        path.name.startswith("_native.")
        or path.suffix in EXTENSION_SUFFIXES
        or (path.parent.name == "sboms" and path.parent.parent.name.endswith(".dist-info"))
    )


def _record_hash(data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=")
    return f"sha256={digest.decode()}"


def _pure_wheel_file(text: str) -> str:
    lines = [
        line
        for line in text.splitlines()
        if not line.startswith(("Root-Is-Purelib:", "Tag:", "Generator:"))
    ]
    lines += [
        "Generator: tools/pure_wheel.py",
        "Root-Is-Purelib: true",
        f"Tag: {PURE_TAG}",
    ]
    return "\n".join(lines) + "\n"


def make_pure_wheel(binary_wheel: Path, out_dir: Path) -> Path:
    name, version, *_tags = binary_wheel.name[: -len(".whl")].split("-")
    dist_info = f"{name}-{version}.dist-info"
    target = out_dir / f"{name}-{version}-{PURE_TAG}.whl"
    out_dir.mkdir(parents=True, exist_ok=True)
    records: list[str] = []
    with (
        zipfile.ZipFile(binary_wheel) as source,
        zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as pure,
    ):
        kept = [
            info
            for info in source.infolist()
            if not _left_out(info.filename) and info.filename != f"{dist_info}/RECORD"
        ]
        if not any(info.filename.endswith("/_pure/__init__.py") for info in kept):
            raise SystemExit(f"{binary_wheel.name} has no pure-Python twin (_pure/)")
        for info in kept:
            data = source.read(info)
            if info.filename == f"{dist_info}/WHEEL":
                data = _pure_wheel_file(data.decode()).encode()
            pure.writestr(info, data)
            records.append(f"{info.filename},{_record_hash(data)},{len(data)}")
        records.append(f"{dist_info}/RECORD,,")
        record_info = zipfile.ZipInfo(f"{dist_info}/RECORD", date_time=kept[0].date_time)
        pure.writestr(record_info, "\n".join(records) + "\n", zipfile.ZIP_DEFLATED)
    return target


def main() -> int:
    if len(sys.argv) != 3:
        print(__doc__.splitlines()[2], file=sys.stderr)
        return 2
    wheel = make_pure_wheel(Path(sys.argv[1]), Path(sys.argv[2]))
    print(f"pure wheel: {wheel}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env bash
# The whole test suite against the packages pip users install (`make test` runs this).
#
#   tools/test_installed.sh TOOLS_BIN VERSION...      e.g. .venv/bin 3.11 3.12 3.13
#
# TOOLS_BIN holds maturin, auditwheel and a python with ziglang (the Makefile pins them).
# For each CPython VERSION (from pyenv, or pythonX.Y on the PATH; a missing one fails
# the run and names it):
#   - build the Linux wheel pip users get: maturin --release --zig (manylinux, an older
#     glibc, no Docker), one per-version wheel per interpreter; `auditwheel show` it;
#   - install it with the test extras into a fresh virtualenv;
#   - run the whole suite from the repo with SHARED_BACKEND=rust, then =python, with no
#     Rust toolchain on the PATH; conftest.py fails the run unless `shared` comes from
#     that virtualenv's site-packages (SHARED_TEST_INSTALL).
# Then, on the first VERSION: the pure-Python wheel (py3-none-any, derived from that
# version's wheel by tools/pure_wheel.py) on the python backend (it has no Rust backend
# to test), and the sdist, built by pip from source in a fresh virtualenv, on both.
# The legs run in LANES (default 3) concurrent lanes, one per package; the summary at
# the end lists every leg.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

tools_bin=$(cd "$1" && pwd)
shift
versions=("$@")
[ ${#versions[@]} -gt 0 ] || { echo "usage: $0 TOOLS_BIN VERSION..." >&2; exit 2; }

dist=$root/dist
venvs=$root/.venv-installed
# One cargo target dir for every build here and for `maturin develop` (make build).
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$root/target}
export PIP_DISABLE_PIP_VERSION_CHECK=1
# maturin takes the interpreter from --interpreter (or pip's, for the sdist), not the Makefile's.
unset PYO3_PYTHON

say() { printf '\n=== %s\n' "$*"; }

# --- the interpreters: all found before anything is built -------------------------------

pyenv_root=$( (command -v pyenv >/dev/null && pyenv root) || echo "${PYENV_ROOT:-$HOME/.pyenv}")

# Prints the path of CPython VERSION (e.g. 3.12, GIL build), newest patch release first.
find_python() {
  local version=$1 candidate
  {
    # pyenv's X.Y.Z builds only (not X.Y-dev, X.Y.Zt, or virtualenvs), newest first.
    find "$pyenv_root/versions" -maxdepth 1 -regextype posix-extended \
      -regex ".*/${version//./\\.}\.[0-9]+" 2>/dev/null | sort -rV |
      while read -r dir; do echo "$dir/bin/python$version"; done
    command -v "python$version" || true
  } | while read -r candidate; do
    if [ -x "$candidate" ] && "$candidate" -c "
import sys, sysconfig
assert sys.implementation.name == 'cpython'
assert '%d.%d' % sys.version_info[:2] == '$version'
assert not sysconfig.get_config_var('Py_GIL_DISABLED')" 2>/dev/null; then
      echo "$candidate"
      return 0
    fi
  done
}

declare -A python_of
missing=()
for version in "${versions[@]}"; do
  python_of[$version]=$(find_python "$version" | head -n 1)
  if [ -z "${python_of[$version]}" ]; then missing+=("$version"); fi
done
if [ ${#missing[@]} -gt 0 ]; then
  for version in "${missing[@]}"; do
    echo "test_installed: CPython $version not found (looked in $pyenv_root/versions/$version.*" \
      "and for python$version on the PATH); install it, e.g. \`pyenv install $version\`" >&2
  done
  exit 1
fi
for version in "${versions[@]}"; do
  echo "CPython $version: ${python_of[$version]} ($("${python_of[$version]}" -VV | head -n 1))"
done

# --- the PATH the tests see: no Rust toolchain ------------------------------------------

test_path=
IFS=: read -r -a path_dirs <<<"$PATH"
for dir in "${path_dirs[@]}"; do
  if [ -n "$dir" ] && [ ! -x "$dir/cargo" ] && [ ! -x "$dir/rustc" ]; then
    test_path=${test_path:+$test_path:}$dir
  fi
done
if PATH=$test_path command -v cargo >/dev/null || PATH=$test_path command -v rustc >/dev/null; then
  echo "test_installed: a Rust toolchain is still on the tests' PATH" >&2
  exit 1
fi

# Runs the suite from the repo in VENV on BACKEND, against the package installed as KIND,
# and appends its verdict to STATUS_FILE.
# A leg that hangs outside any one test (collection, interpreter exit) is stopped here
# with SIGABRT, which makes faulthandler print every thread's stack: a failed leg, not
# a CI run that never ends. A leg takes 2 to 5 minutes.
leg_limit=${LEG_LIMIT:-900}
run_suite() {
  local venv=$1 backend=$2 kind=$3 label=$4 status_file=$5 status=0
  say "pytest: $label, SHARED_BACKEND=$backend"
  # shellcheck disable=SC2086  # PYTEST_ARGS is a list of arguments
  (
    cd "$root"
    env -u VIRTUAL_ENV -u PYTHONPATH PATH="$venv/bin:$test_path" \
      SHARED_BACKEND="$backend" SHARED_TEST_INSTALL="$kind" PYTHONFAULTHANDLER=1 \
      timeout --signal=ABRT --kill-after=30 "$leg_limit" \
      "$venv/bin/python" -m pytest -p no:cacheprovider ${PYTEST_ARGS:-}
  ) || status=$?
  if [ "$status" -eq 0 ]; then
    echo "passed  $label, SHARED_BACKEND=$backend" >>"$status_file"
  else
    echo "FAILED  $label, SHARED_BACKEND=$backend (pytest exit $status)" >>"$status_file"
  fi
}

fresh_venv() {
  local python=$1 venv=$2
  rm -rf "$venv"
  "$python" -m venv "$venv"
}

# pip install into VENV; --no-compile: the legs compile what they import.
install_into() {
  local venv=$1 requirement=$2
  "$venv/bin/python" -m pip install --quiet --no-compile "$requirement"
}

# --- binary wheels -----------------------------------------------------------------------

rm -rf "$dist" "$venvs"
mkdir -p "$dist" "$venvs"
manylinux=manylinux_2_17  # glibc 2.17 and newer; zig links against that glibc's symbols
platform_tag="${manylinux}_$(uname -m)"
declare -A wheel_of
for version in "${versions[@]}"; do
  python=${python_of[$version]}
  say "wheel: CPython $version"
  # tools_bin first: maturin finds zig as `python3 -m ziglang` on the PATH.
  out=$dist/cp${version/./}
  PATH="$tools_bin:$PATH" "$tools_bin/maturin" build --release --locked --zig \
    --compatibility "$manylinux" --interpreter "$python" --out "$out"
  wheel=$(ls "$out"/*.whl)
  "$tools_bin/auditwheel" show "$wheel" | tee "$out/auditwheel.txt"
  # auditwheel wraps long lines; the tag is the first quoted one.
  shown_tag=$(tr -s ' \n' ' ' <"$out/auditwheel.txt" | grep -o '"[a-z0-9_]*"' | head -n 1 | tr -d '"')
  if [ "$shown_tag" != "$platform_tag" ]; then
    echo "test_installed: auditwheel says $wheel is $shown_tag, not $platform_tag" >&2
    exit 1
  fi
  echo "platform tag: $shown_tag"
  wheel_of[$version]=$wheel
done

# --- the pure-Python wheel and the sdist, on the first version --------------------------

first=${versions[0]}
say "pure-Python wheel (from the CPython $first wheel)"
"${python_of[$first]}" tools/pure_wheel.py "${wheel_of[$first]}" "$dist"
pure_wheel=$(ls "$dist"/*-py3-none-any.whl)

# Built here, before any leg runs: compiling takes both cores for a minute.
say "sdist: built by pip from source, CPython $first"
PATH="$tools_bin:$PATH" "$tools_bin/maturin" sdist --out "$dist"
sdist=$(ls "$dist"/*.tar.gz)
fresh_venv "${python_of[$first]}" "$venvs/sdist"
# Building needs cargo (the sdist's user needs a Rust toolchain); the tests then do not.
install_into "$venvs/sdist" "$sdist[test]"

# --- the legs: LANES at a time ------------------------------------------------------------
# A lane installs its package into a fresh virtualenv and runs its legs one after the
# other. Most of a leg's time is spent waiting (on servers, subprocesses, deadlines),
# so on two cores three lanes at once take about 1.3x as long as one alone.

lanes=${LANES:-3}
logs=$venvs/logs
mkdir -p "$logs"

lane_wheel() {
  local version=$1 status_file=$2 venv=$venvs/cp${1/./}
  say "install: ${wheel_of[$version]##*/} into a fresh virtualenv"
  fresh_venv "${python_of[$version]}" "$venv"
  install_into "$venv" "${wheel_of[$version]}[test]" || {
    echo "FAILED  installing ${wheel_of[$version]##*/}" >>"$status_file"
    return 0
  }
  run_suite "$venv" rust native "CPython $version wheel" "$status_file"
  run_suite "$venv" python native "CPython $version wheel" "$status_file"
}

lane_pure() {
  local status_file=$1 venv=$venvs/pure
  say "install: ${pure_wheel##*/} into a fresh virtualenv"
  fresh_venv "${python_of[$first]}" "$venv"
  install_into "$venv" "$pure_wheel[test]" || {
    echo "FAILED  installing ${pure_wheel##*/}" >>"$status_file"
    return 0
  }
  run_suite "$venv" python pure "pure-Python wheel on CPython $first" "$status_file"
  echo "skipped pure-Python wheel on CPython $first, SHARED_BACKEND=rust: the wheel has" \
    "no extension" >>"$status_file"
}

lane_sdist() {
  local status_file=$1
  run_suite "$venvs/sdist" rust native "sdist on CPython $first" "$status_file"
  run_suite "$venvs/sdist" python native "sdist on CPython $first" "$status_file"
}

# Longest first: the sdist (built already) and the pure wheel start at once.
lane_calls=("lane_sdist" "lane_pure")
for version in "${versions[@]}"; do lane_calls+=("lane_wheel $version"); done

declare -A lane_of_pid
running=0
next=0
while [ "$next" -lt ${#lane_calls[@]} ] || [ "$running" -gt 0 ]; do
  if [ "$next" -lt ${#lane_calls[@]} ] && [ "$running" -lt "$lanes" ]; then
    # Each lane's output goes to its own log, shown whole when the lane ends.
    ${lane_calls[$next]} "$logs/lane$next.status" >"$logs/lane$next.log" 2>&1 &
    lane_of_pid[$!]=$next
    echo "started ${lane_calls[$next]} (log: $logs/lane$next.log)"
    next=$((next + 1))
    running=$((running + 1))
    continue
  fi
  finished=
  lane_status=0
  wait -n -p finished || lane_status=$?
  running=$((running - 1))
  index=${lane_of_pid[$finished]}
  cat "$logs/lane$index.log"
  if [ "$lane_status" -ne 0 ]; then
    # It stopped before recording its legs (a virtualenv not created, say).
    echo "FAILED  ${lane_calls[$index]} stopped with exit $lane_status" >>"$logs/lane$index.status"
  fi
done

legs=()
for index in "${!lane_calls[@]}"; do
  touch "$logs/lane$index.status"
  mapfile -t -O "${#legs[@]}" legs <"$logs/lane$index.status"
done
failed=$(printf '%s\n' "${legs[@]}" | grep -c '^FAILED' || true)

say "the suite against installed packages"
printf '  %s\n' "${legs[@]}"
if [ "$failed" -gt 0 ]; then
  echo "test_installed: $failed leg(s) failed" >&2
  exit 1
fi

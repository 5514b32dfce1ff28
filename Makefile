# Every target installs what it needs; `make demo` and `make test` are the two
# commands of the README. Builds are cached where the machine keeps them
# (cargo target dir and Go caches under $HOME), so a fresh clone rebuilds fast.
SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
PY ?= python3
VENV := $(CURDIR)/.venv
VPY := $(VENV)/bin/python
BUILD := $(CURDIR)/build
export CARGO_TARGET_DIR ?= $(HOME)/.cache/nomad-device-nvidia/cargo-target
export GOFLAGS ?= -mod=readonly
export VIRTUAL_ENV := $(VENV)
export PATH := $(VENV)/bin:$(PATH)

.PHONY: demo test venv build native sim harness test-rust test-python lint bench wheel clean

demo: build
	$(VPY) scripts/demo.py

test: build
	$(MAKE) test-rust
	$(MAKE) test-python

venv: $(VENV)/.deps-stamp
$(VENV)/.deps-stamp: requirements-dev.txt
	test -x $(VPY) || $(PY) -m venv $(VENV)
	$(VPY) -m pip install -q --disable-pip-version-check -r requirements-dev.txt
	touch $@

build: native sim harness

# The extension and the package, installed editable into .venv
# (.venv/bin/nomad-device-nvidia is then the plugin binary).
native: venv
	$(VENV)/bin/maturin develop --release -q

# The simulated NVML library, under the SONAME real tools look for. Replaced
# by rename, never rewritten in place: a process that has it mapped would crash.
sim:
	cargo build --release -q -p nvml-sim
	mkdir -p $(BUILD)/sim
	cp -f $(CARGO_TARGET_DIR)/release/libnvml_sim.so $(BUILD)/sim/.libnvidia-ml.so.1.new
	mv -f $(BUILD)/sim/.libnvidia-ml.so.1.new $(BUILD)/sim/libnvidia-ml.so.1

# The Go harness, Nomad's launcher and HashiCorp's Go plugin, from the module proxy.
harness:
	$(MAKE) -C tests/harness BIN=$(BUILD)/bin

test-rust: sim
	cargo test --release -q --workspace --exclude nomad-device-nvidia-native

test-python: venv
	$(VPY) -m pytest tests

lint: venv
	cargo fmt --all --check
	cargo clippy --workspace --all-targets -- -D warnings
	$(VPY) -m mypy
	$(VPY) -m mypy.stubtest nomad_device_nvidia._native

bench: build
	$(VPY) -m pytest benches --benchmark-enable --benchmark-json=$(BUILD)/bench.json

wheel: venv
	$(VENV)/bin/maturin build --release --sdist --compatibility manylinux_2_17 -o dist

clean:
	rm -rf $(BUILD) dist

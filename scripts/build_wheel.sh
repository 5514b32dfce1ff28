#!/usr/bin/env bash
# Build the release artifacts into dist/: an sdist, and from that sdist (which
# proves the sdist is complete) one abi3 wheel for every CPython the package
# supports.
#
# manylinux: by default the extension is linked with zig against glibc 2.17
# stubs, so the wheel honestly claims manylinux_2_17 (manylinux2014) and
# maturin's built-in audit (`--auditwheel check`) fails the build if any symbol
# needs a newer glibc. NOMAD_WHEEL_ZIG=0 links with the host toolchain instead;
# on this Debian 12 builder (glibc 2.36) the audit then allows manylinux_2_34
# (Rust's std links pthread_key_create@GLIBC_2.34).
#
# The simulated NVML library is a separate crate that is not a dependency of
# the extension, so it is never in the wheel (tests/test_wheel.py checks).
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
venv=${VIRTUAL_ENV:-$repo/.venv}
out=${1:-$repo/dist}
# A target dir of its own: zig's linker differs from the one `make native` uses.
export CARGO_TARGET_DIR=${NOMAD_WHEEL_TARGET_DIR:-$HOME/.cache/nomad-device-nvidia/cargo-target-wheel}
export PATH=$venv/bin:$PATH  # maturin finds zig as `python -m ziglang` from this python

version=$(sed -n 's/^version = "\(.*\)"/\1/p' "$repo/Cargo.toml" | head -1)
mkdir -p "$out"
rm -f "$out"/nomad_device_nvidia-"$version"-*.whl "$out"/nomad_device_nvidia-"$version".tar.gz

if [[ ${NOMAD_WHEEL_ZIG:-1} == 1 ]]; then
  python -c 'import ziglang' 2>/dev/null || {
    echo "build_wheel: zig is missing; run \`make venv\` (requirements-dev.txt pins ziglang) or set NOMAD_WHEEL_ZIG=0" >&2
    exit 1
  }
  compat=(--zig --compatibility manylinux_2_17)
else
  compat=(--compatibility manylinux_2_34)
fi

cd "$repo"
maturin build --release --strip --sdist "${compat[@]}" --auditwheel check -o "$out"
ls -l "$out"/nomad_device_nvidia-"$version"*

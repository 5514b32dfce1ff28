#!/usr/bin/env bash
# Build the release artifacts into dist/: an sdist, and from that sdist (which
# proves the sdist is complete) one abi3 wheel per CPU architecture, each
# serving every CPython the package supports: x86_64 and aarch64 (Grace-based
# GPU nodes: GH200, GB200, GB10).
#
#   scripts/build_wheel.sh [OUT_DIR]
#   NOMAD_WHEEL_TARGETS="aarch64-unknown-linux-gnu" scripts/build_wheel.sh   # one architecture only
#
# manylinux: by default the extension is linked with zig against glibc 2.17
# stubs, for either architecture from this x86_64 builder, so each wheel
# honestly claims manylinux_2_17 (manylinux2014) and maturin's built-in audit
# (`--auditwheel check`, which reads the ELF of either architecture) fails the
# build if any symbol needs a newer glibc. NOMAD_WHEEL_ZIG=0 links with the
# host toolchain instead and builds the host's architecture only; on this
# Debian 12 builder (glibc 2.36) the audit then allows manylinux_2_34 (Rust's
# std links pthread_key_create@GLIBC_2.34).
#
# The simulated NVML library is a separate crate that is not a dependency of
# the extension, so it is never in the wheel (tests/test_wheel.py checks).
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
venv=${VIRTUAL_ENV:-$repo/.venv}
out=${1:-$repo/dist}
# A target dir of its own: zig's linker differs from the one `make native` uses.
# Cross builds land in its <triple>/ subdirectory.
export CARGO_TARGET_DIR=${NOMAD_WHEEL_TARGET_DIR:-$HOME/.cache/nomad-device-nvidia/cargo-target-wheel}
export PATH=$venv/bin:$PATH  # maturin finds zig as `python -m ziglang` from this python

host=$(uname -m)-unknown-linux-gnu
if [[ ${NOMAD_WHEEL_ZIG:-1} == 1 ]]; then
  python -c 'import ziglang' 2>/dev/null || {
    echo "build_wheel: zig is missing; run \`make venv\` (requirements-dev.txt pins ziglang) or set NOMAD_WHEEL_ZIG=0" >&2
    exit 1
  }
  compat=(--zig --compatibility manylinux_2_17)
  targets=(${NOMAD_WHEEL_TARGETS:-x86_64-unknown-linux-gnu aarch64-unknown-linux-gnu})
else
  compat=(--compatibility manylinux_2_34)
  targets=("$host")
fi

version=$(sed -n 's/^version = "\(.*\)"/\1/p' "$repo/Cargo.toml" | head -1)
mkdir -p "$out"
out=$(cd "$out" && pwd)  # absolute: the wheels are built from elsewhere
rm -f "$out"/nomad_device_nvidia-"$version".tar.gz

cd "$repo"
maturin sdist -o "$out"
sdist=$out/nomad_device_nvidia-$version.tar.gz
# The wheels are built from the unpacked sdist, which proves it complete. Its
# members carry one fixed old mtime (maturin makes sdists reproducible), and
# cargo decides freshness by mtime: in the shared target dir our crates (and
# their build scripts) would look older than the last build and be reused
# stale. Unpacking with the time of now rebuilds our crates every time, while
# the registry dependencies, keyed by version, stay cached.
src=$(mktemp -d)
trap 'rm -rf "$src"' EXIT
tar -xzf "$sdist" -C "$src" --touch
cd "$src/nomad_device_nvidia-$version"
for target in "${targets[@]}"; do
  arch=${target%%-*}
  rm -f "$out"/nomad_device_nvidia-"$version"-*_"$arch".whl
  if [[ $target != "$host" ]] && ! rustup target list --installed 2>/dev/null | grep -qx "$target"; then
    rustup target add "$target"  # the standard library for the target; the linker is zig
  fi
  maturin build --release --strip --target "$target" "${compat[@]}" --auditwheel check -o "$out"
done
ls -l "$out"/nomad_device_nvidia-"$version"*

#!/usr/bin/env bash
# The real-GPU check: the plugin against this machine's NVIDIA driver, one report on
# stdout (progress on stderr). Read-only: it changes no GPU setting and writes only
# to a temporary directory (and to --out FILE when asked). Needs a checkout where
# `make build` has run; takes one to three minutes, and is stopped at five.
#
#   scripts/gpu-check.sh [--nvml-library PATH] [--out FILE]
#
# Exit: 0 every section passed, 1 a section failed, 2 no NVIDIA driver here
# (nothing checked), 124 it ran past five minutes. What each section does:
# scripts/gpu_check.py.
set -uo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
py=$repo/.venv/bin/python
if [[ ! -x $py ]]; then
  echo "gpu-check: $py is missing; run \`make build\` in this checkout first" >&2
  exit 1
fi
export PYTHONDONTWRITEBYTECODE=1
exec timeout --kill-after=10 "${GPU_CHECK_TIMEOUT:-300}" "$py" "$repo/scripts/gpu_check.py" "$@"

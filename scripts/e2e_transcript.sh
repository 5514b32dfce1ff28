#!/usr/bin/env bash
# From the prebuilt wheel to a GPU job, as a transcript: build the wheel (if
# dist/ has no fresh one), pip-install it into a fresh venv under build/e2e/,
# run the real-agent end-to-end test with that installed binary in the
# agent's plugin_dir, then print each step the test took (agent config, node
# devices, the GPU job and its task's environment, stats, plugin kill and
# relaunch, XID). The steps are written by the test itself to
# build/e2e/<agent>/transcript.md, so what is printed is what was asserted.
#
#   scripts/e2e_transcript.sh            # build, install, run, print
#   scripts/e2e_transcript.sh --no-run   # print the last run's transcript
set -uo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
venv=$repo/build/e2e/wheel-venv
rc=0
if [[ ${1:-} != --no-run ]]; then
  rm -rf "$venv"
  whl=$(cd tests && ../.venv/bin/python -c '
import sys
from pathlib import Path
from e2e.wheel import ensure_wheel, install_wheel
whl = ensure_wheel()
install_wheel(whl, Path(sys.argv[1]))
print(whl.name)' "$venv") || exit 1
  echo "## wheel: $whl ($(stat -c %s "dist/$whl") bytes), installed into a fresh venv with no Rust/Go on PATH"
  echo
  echo "## NOMAD_E2E_PLUGIN=$venv/bin/nomad-device-nvidia pytest tests/test_agent_e2e.py"
  echo '```'
  NOMAD_E2E_PLUGIN=$venv/bin/nomad-device-nvidia .venv/bin/python -m pytest tests/test_agent_e2e.py -q -rA 2>&1 \
    | grep -E '^(PASSED|FAILED|ERROR)|passed|failed|error' | tail -15
  rc=${PIPESTATUS[0]}
  echo '```'
  echo
fi
plugin=$venv/bin/nomad-device-nvidia
[[ -x $plugin ]] || plugin=.venv/bin/nomad-device-nvidia
echo "## $(build/bin/nomad version 2>/dev/null | head -1); plugin: $("$plugin" --version 2>/dev/null) ($plugin)"
echo
for t in build/e2e/8xh100/transcript.md build/e2e/8xh100-xid/transcript.md; do
  [[ -f $t ]] || continue
  echo "## agent $(basename "$(dirname "$t")")  (full log: $(dirname "$t")/agent.log)"
  echo
  cat "$t"
done
exit "$rc"

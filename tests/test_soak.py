"""The soak in its short form: benches/soak.py with 6,000 Stats ticks, about a minute.

Everything the full `make soak` does (56 simulated GPUs, 12 Stats streams with churn,
Fingerprint churn, SetConfig changes, a GPU lost and back, XIDs), compressed in time,
with the same bounds: RSS, threads and fds plateau, CPU per tick does not grow, no
stream fails or stalls, health follows the faults. Its figures land in
build/soak-short.json and build/soak-short.png.
"""

from __future__ import annotations

import json
import subprocess
import sys

from conftest import REPO_ROOT

SHORT_TICKS = 6000


def test_short_soak_plateaus_within_its_bounds() -> None:
    out = REPO_ROOT / "build" / "soak-short.json"
    out.unlink(missing_ok=True)
    proc = subprocess.run([sys.executable, str(REPO_ROOT / "benches" / "soak.py"), "--ticks", str(SHORT_TICKS),
                           "--json", str(out), "--plot", str(out.with_suffix(".png"))],
                          capture_output=True, text=True, timeout=280, stdin=subprocess.DEVNULL)
    assert out.exists(), f"no summary written (exit {proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    result = json.loads(out.read_text())
    assert result["failures"] == [], "\n".join(result["failures"]) + "\n" + proc.stdout[-2000:]
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert result["ticks"] >= SHORT_TICKS
    # The churn happened: streams cycled, configs changed, the engine was rebuilt.
    assert result["stats_stream_cycles"] >= 50 and result["fingerprint_stream_cycles"] >= 4, result
    assert result["set_configs"] >= 10, result


def test_reliability_doc_shows_the_full_soak() -> None:
    """docs/reliability.md's soak section is docs/soak.json (the last `make soak`) rendered, and that run passed."""
    sys.path.insert(0, str(REPO_ROOT / "benches"))
    try:
        import soak
    finally:
        sys.path.remove(str(REPO_ROOT / "benches"))
    result = json.loads((REPO_ROOT / "docs" / "soak.json").read_text())
    assert result["failures"] == [] and result["ticks"] >= 100_000, "docs/soak.json is not a passing full soak"
    assert (REPO_ROOT / "docs" / "soak.png").is_file()
    doc = (REPO_ROOT / "docs" / "reliability.md").read_text()
    assert soak.doc_with_section(doc, result) == doc, (
        "docs/reliability.md's soak section is not docs/soak.json: run "
        "`.venv/bin/python benches/soak.py --doc docs/reliability.md --doc-from docs/soak.json`")

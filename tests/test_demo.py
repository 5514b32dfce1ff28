"""The README's main-job command (`make demo` runs scripts/demo.py) works end to end."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_demo_drives_the_plugin_through_nomads_launcher_then_probes() -> None:
    out = subprocess.run([sys.executable, str(ROOT / "scripts" / "demo.py")], capture_output=True, text=True,
                         timeout=240)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    text = out.stdout
    assert "> fingerprint: &device.FingerprintResponse{" in text
    assert 'Name:    "NVIDIA H100 80GB HBM3 MIG 1g.10gb"' in text
    assert "> stats: &device.StatsResponse{" in text
    assert '"NVIDIA_VISIBLE_DEVICES":"GPU-' in text  # the reserve answer
    assert "nvidia/gpu/NVIDIA H100 80GB HBM3  (6 devices)" in text  # the probe table

#!/usr/bin/env python3
"""Size of the release wheel and import-to-handshake time of the *installed* wheel.

Builds the wheel if dist/ has no fresh one (scripts/build_wheel.sh), installs it
into a fresh venv outside the checkout, then has the Go harness exec the
installed `nomad-device-nvidia` 20 times as go-plugin does and time exec to
handshake line (and to the first answered RPC). Prints one JSON document.

    .venv/bin/python scripts/wheel_report.py [-n 20]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from e2e.wheel import REPO, ensure_wheel, install_wheel  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=20, help="launches per measurement (default 20)")
    args = ap.parse_args()
    harness = REPO / "build" / "bin" / "harness"
    if not harness.is_file():
        sys.exit(f"wheel_report: no Go harness at {harness}; run `make harness`")
    whl = ensure_wheel()
    tmp = Path(tempfile.mkdtemp(prefix="nde-wheel-report-"))
    try:
        inst = install_wheel(whl, tmp / "venv")
        res = subprocess.run([str(harness), "handshake-latency", "--plugin", str(inst.binary), "-n", str(args.n)],
                             capture_output=True, text=True, env=inst.env(), timeout=600)
        events = [json.loads(line) for line in res.stdout.splitlines() if line.startswith("{")]
        lat = next((e for e in events if e.get("event") == "handshake_latency"), None)
        if res.returncode != 0 or lat is None:
            sys.exit(f"wheel_report: harness failed ({res.returncode}):\n{res.stdout[-2000:]}{res.stderr[-2000:]}")
        def brief(summary: object) -> object:
            return {k: v for k, v in summary.items() if k != "samples_ms"} if isinstance(summary, dict) else summary

        report = {
            "wheel": whl.name,
            "wheel_bytes": whl.stat().st_size,
            "installed_binary": "<fresh venv>/bin/nomad-device-nvidia",
            "launches": args.n,
            "handshake_ms": brief(lat.get("handshake")),
            "first_rpc_ms": brief(lat.get("first_rpc")),
        }
        print(json.dumps(report, indent=2))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

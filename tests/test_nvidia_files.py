"""scripts/nvidia_files.py itself: which package it picks per branch, that a fetched cache
needs no network, and that a failed fetch says why."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from nvidia_real import SCRIPT, manifest, script

# A proxy nobody listens on: apt and pip then cannot reach anything.
NO_NETWORK = {"http_proxy": "http://127.0.0.1:9", "https_proxy": "http://127.0.0.1:9"}


def fetch(cache: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, **NO_NETWORK)
    if cache is not None:
        env["NOMAD_DEVICE_NVIDIA_NVIDIA_DIR"] = str(cache)
    return subprocess.run([sys.executable, str(SCRIPT), "fetch"], capture_output=True, text=True, env=env, timeout=300)


def test_choose_one_package_per_branch() -> None:
    offers = {
        "libnvidia-ml1": [
            ("555.58.02-4", "experimental"),
            ("550.163.01-5.1", "sid"),
            ("550.163.01-2", "trixie"),
            ("535.261.03-1", "bookworm"),
            ("535.216.03-2~bpo12+1", "bookworm-backports"),
            ("525.1.1-1", "sid"),
        ],
        "libnvidia-tesla-535-ml1": [("535.274.02-3", "sid")],
        "libnvidia-tesla-570-ml1": [("570.10.01-1", "sid")],
        "libnvidia-tesla-470-ml1": [("470.256.02-10", "sid")],
    }
    assert script().choose(offers) == {
        535: ("libnvidia-ml1", "535.261.03-1", "bookworm"),  # libnvidia-ml1 first, though Tesla's is newer
        550: ("libnvidia-ml1", "550.163.01-2", "trixie"),  # same upstream version: the first suite
        555: ("libnvidia-ml1", "555.58.02-4", "experimental"),
        570: ("libnvidia-tesla-570-ml1", "570.10.01-1", "sid"),  # a branch only Tesla has
    }


def test_a_fetched_cache_needs_no_network() -> None:
    fetched = manifest()
    out = fetch()
    assert out.returncode == 0, out.stderr
    assert script().load_manifest() == fetched


def test_a_failed_fetch_says_why(tmp_path: Path) -> None:
    out = fetch(tmp_path / "cache")
    assert out.returncode == 1
    assert "cannot fetch NVIDIA's files: apt-get update" in out.stderr and "Failed to fetch" in out.stderr, out.stderr
    assert "Traceback" not in out.stderr

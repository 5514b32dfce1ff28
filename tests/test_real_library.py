"""The plugin on NVIDIA's real libnvidia-ml without a driver, driven by Nomad's client code.

This machine has no NVIDIA kernel module. With `nvml_library` set to NVIDIA's own
library (each branch scripts/nvidia_files.py fetched), the plugin must keep the
Fingerprint stream open with no devices, say why in one warning, answer Stats,
refuse a Reservation naming the IDs, and exit gracefully. The harness (and so the
plugin it launches) runs in a private mount namespace with its own /dev
(tests/private_dev.py): NVIDIA's library, loaded as root, may create /dev/nvidiactl,
and the host's /dev must not change.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

import private_dev
from conftest import HarnessRun
from nvidia_real import manifest

ROOT = Path(__file__).resolve().parent.parent
# The branches the project has symbol lists of (what `scripts/nvidia_files.py symbols` wrote
# from the fetched libraries; tests/test_nvml_symbols.py checks they still match).
BRANCHES = sorted(int(p.stem) for p in (ROOT / "src_rust" / "nvml_sim" / "branches").glob("*.txt"))


def harness_in_private_dev(harness_bin: Path, *args: str | Path) -> HarnessRun:
    argv = [str(harness_bin), *(str(a) for a in args)]
    proc = subprocess.run(private_dev.wrap(argv), capture_output=True, text=True, timeout=180, stdin=subprocess.DEVNULL)
    events = [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]
    return HarnessRun(argv, proc.returncode, events, proc.stderr)


def plugin_lines(run: HarnessRun) -> list[dict[str, Any]]:
    return [e["entry"] for e in run.of("log") if e.get("from_plugin")]


@pytest.mark.parametrize("branch", BRANCHES)
def test_real_library_without_the_driver(harness_bin: Path, plugin_bin: Path, tmp_path: Path, branch: int) -> None:
    libs = {lib.branch: lib for lib in manifest().libraries}
    if branch not in libs:
        pytest.fail(f"branch {branch} was not fetched (have {sorted(libs)}): Debian's archive changed; "
                    "rewrite the lists with `python scripts/nvidia_files.py symbols`", pytrace=False)
    lib = libs[branch]
    config = tmp_path / "client.hcl"
    config.write_text(f'plugin "nomad-device-nvidia" {{\n  config {{\n    nvml_library = "{lib.path}"\n  }}\n}}\n')
    before = private_dev.host_nvidia_nodes()
    run = harness_in_private_dev(
        harness_bin, "session", "--plugin", plugin_bin, "--config", config, "--name", "nomad-device-nvidia",
        "--stats", "1", "--interval", "200ms", "--reserve", "GPU-nope", "--fingerprint-wait", "1s", "--logs",
    ).ok()
    assert private_dev.host_nvidia_nodes() == before, "NVIDIA's library left a node in the host's /dev"

    assert run.one("set_config")["error"] is None
    fps = [f for f in run.of("fingerprint") if not f["after_cancel"]]
    assert fps and all(f["error"] is None and f["groups"] == [] for f in fps), run.describe()
    # Open until the client cancelled it: the plugin never ended it.
    ends = [f for f in run.of("fingerprint") if f["after_cancel"]]
    assert ends and "context canceled" in (ends[-1]["error"] or ""), run.describe()

    stats = run.of("stats")
    assert len(stats) == 1 and stats[0]["error"] is None, run.describe()

    reserve = run.one("reserve")
    assert reserve["reservation"] is None and "GPU-nope" in (reserve["error"] or ""), reserve

    warnings = [e for e in plugin_lines(run) if str(e.get("@level", "")).lower() in ("warn", "warning", "error")]
    assert len(warnings) == 1, f"want one warning, got {warnings}"
    text = str(warnings[0].get("@message", ""))
    assert "the NVIDIA kernel driver is not loaded" in text and lib.path in text, text

    down = run.one("shutdown")
    assert down["exited"] and down["graceful"] and down["exit_code"] == 0, down


def test_the_nvml_line_names_library_driver_and_branch(run_harness: Any, plugin_bin: Path, tmp_path: Path) -> None:
    """Once NVML is up, the plugin's line says which library it loaded (here the simulator)."""
    scenario = ROOT / "scenarios" / "1gpu.toml"
    sim = ROOT / "build" / "sim" / "libnvidia-ml.so.1"
    config = tmp_path / "client.hcl"
    config.write_text(f'plugin "nomad-device-nvidia" {{\n  config {{\n    simulate = "{scenario}"\n'
                      f'    nvml_library = "{sim}"\n  }}\n}}\n')
    run = run_harness("session", "--plugin", plugin_bin, "--config", config, "--name", "nomad-device-nvidia",
                      "--logs").ok()
    up = [str(e.get("@message")) for e in plugin_lines(run) if str(e.get("@message", "")).startswith("NVML initialised")]
    assert up == [f"NVML initialised: 1 devices; simulated library {sim.resolve()} (driver 550.90.07, branch 550)"], up

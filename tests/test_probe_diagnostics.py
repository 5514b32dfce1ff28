"""`probe` tells a person which NVML library it used, or exactly why it found no device.

Each case exits non-zero with one line naming the reason and says nothing about
retrying (a one-shot command does not retry). The real-library case loads NVIDIA's
libnvidia-ml (fetched by scripts/nvidia_files.py) on this machine, which has no NVIDIA
kernel module, inside a private /dev (tests/private_dev.py).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import private_dev
from nvidia_real import manifest

ROOT = Path(__file__).resolve().parent.parent
SIM_LIB = ROOT / "build" / "sim" / "libnvidia-ml.so.1"
EXE = str(Path(sys.executable).parent / "nomad-device-nvidia")
ONE_GPU = ROOT / "scenarios" / "1gpu.toml"


def probe(*args: str, wrap: bool = False) -> subprocess.CompletedProcess[str]:
    if not SIM_LIB.exists():
        pytest.fail(f"{SIM_LIB} is missing: run `make sim`")
    env = {k: v for k, v in os.environ.items() if k not in ("NOMAD_PLUGIN_MAGIC_COOKIE", "LD_LIBRARY_PATH", "NVML_SIM_SCENARIO")}
    env["NOMAD_DEVICE_NVIDIA_SIM_LIB"] = str(SIM_LIB)
    argv = [EXE, "probe", *args]
    return subprocess.run(private_dev.wrap(argv) if wrap else argv, capture_output=True, text=True, env=env, timeout=120)


def the_reason(out: subprocess.CompletedProcess[str]) -> str:
    """The probe's one reason line; asserts the exit code and that nothing speaks of retrying."""
    assert out.returncode == 1, (out.returncode, out.stdout, out.stderr)
    assert "Traceback" not in out.stderr, out.stderr
    assert "retry" not in out.stderr.lower() and "checking again" not in out.stderr, out.stderr
    lines = [line for line in out.stderr.splitlines() if line.startswith("nomad-device-nvidia probe: no devices: ")]
    assert len(lines) == 1, out.stderr
    return lines[0]


def config_file(tmp_path: Path, body: str) -> Path:
    hcl = tmp_path / "client.hcl"
    hcl.write_text(f'plugin "nomad-device-nvidia" {{\n  config {{\n{body}  }}\n}}\n')
    return hcl


def test_without_a_library_it_says_where_it_looked() -> None:
    line = the_reason(probe())
    assert "no libnvidia-ml.so.1 on this machine" in line
    assert "LD_LIBRARY_PATH (unset), /etc/ld.so.cache, /lib and /usr/lib" in line


def test_real_library_without_the_driver_names_the_library_and_the_cause() -> None:
    lib = manifest().library(535)
    before = private_dev.host_nvidia_nodes()
    out = probe("--nvml-library", lib.path, wrap=True)
    line = the_reason(out)
    assert "the NVIDIA kernel driver is not loaded" in line, line
    assert f"library {lib.path}" in line, line
    assert private_dev.host_nvidia_nodes() == before, "NVIDIA's library left a node in the host's /dev"


def test_every_gpu_ignored(tmp_path: Path) -> None:
    found = probe("--json", "--simulate", str(ONE_GPU))
    assert found.returncode == 0, found.stderr
    uuid = json.loads(found.stdout)["groups"][0]["devices"][0]["id"]
    out = probe("--config", str(config_file(tmp_path, f'    simulate = "{ONE_GPU}"\n    ignored_gpu_ids = ["{uuid}"]\n')))
    line = the_reason(out)
    assert "every GPU is ignored by the config's ignored_gpu_ids (1 found;" in line, line


def test_no_gpus(tmp_path: Path) -> None:
    empty = tmp_path / "empty.toml"
    empty.write_text("name = \"no-gpus\"\ngpus = []\n")
    line = the_reason(probe("--simulate", str(empty)))
    assert "NVML found no GPUs (simulated library" in line, line


def test_disabled_plugin(tmp_path: Path) -> None:
    out = probe("--config", str(config_file(tmp_path, f'    enabled = false\n    simulate = "{ONE_GPU}"\n')))
    assert out.returncode == 2 and "the plugin is disabled by its config (enabled = false)" in out.stderr, out.stderr


def test_devices_found_name_the_library_driver_and_branch() -> None:
    out = probe("--simulate", str(ONE_GPU))
    assert out.returncode == 0, out.stderr
    first = out.stdout.splitlines()[0]
    assert first.startswith(f"NVML: simulated library {SIM_LIB.resolve()} (driver "), first
    driver = first.split("(driver ", 1)[1].split(",", 1)[0]
    assert first.endswith(f", branch {driver.split('.')[0]})"), first
    doc = json.loads(probe("--json", "--simulate", str(ONE_GPU)).stdout)
    assert doc["nvml"] == {"library": first.removeprefix("NVML: "), "why_no_devices": ""}

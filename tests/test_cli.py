"""The operator's command: --version, --help, probe (table and JSON), one-line errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from nomad_device_nvidia import __version__

ROOT = Path(__file__).resolve().parent.parent
SIM_LIB = ROOT / "build" / "sim" / "libnvidia-ml.so.1"
EXE = str(Path(sys.executable).parent / "nomad-device-nvidia")


def run(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    if not SIM_LIB.exists():
        pytest.fail(f"{SIM_LIB} is missing: run `make sim`")
    full_env = {k: v for k, v in os.environ.items() if k != "NOMAD_PLUGIN_MAGIC_COOKIE"}
    full_env["NOMAD_DEVICE_NVIDIA_SIM_LIB"] = str(SIM_LIB)
    full_env.update(env)
    return subprocess.run([EXE, *args], capture_output=True, text=True, env=full_env, timeout=120)


def probe_config(tmp_path: Path, config: str, *args: str) -> subprocess.CompletedProcess[str]:
    """`probe --config` of a client.hcl whose plugin config block holds `config`."""
    hcl = tmp_path / "client.hcl"
    hcl.write_text(f'plugin "nomad-device-nvidia" {{\n  config {{\n{config}  }}\n}}\n')
    return run("probe", *args, "--config", str(hcl))


def probe_error_lines(out: subprocess.CompletedProcess[str]) -> list[str]:
    """The probe's error lines, asserting it printed no traceback."""
    assert "Traceback" not in out.stderr, out.stderr
    return [line for line in out.stderr.splitlines() if line.startswith("nomad-device-nvidia probe:")]


def test_version_and_help() -> None:
    out = run("--version")
    assert out.returncode == 0 and out.stdout.strip() == f"nomad-device-nvidia {__version__}"
    out = run("--help")
    assert out.returncode == 0 and "--simulate" in out.stdout and "--listen" in out.stdout
    out = run("probe", "--help")
    assert out.returncode == 0 and "--json" in out.stdout and "--config" in out.stdout


def test_probe_table_shows_groups_devices_health_and_stats() -> None:
    out = run("probe", "--simulate", str(ROOT / "scenarios" / "8xh100-mig.toml"))
    assert out.returncode == 0, out.stderr
    assert "nvidia/gpu/NVIDIA H100 80GB HBM3  (6 devices)" in out.stdout
    assert "nvidia/gpu/NVIDIA H100 80GB HBM3 MIG 1g.10gb  (4 devices)" in out.stdout
    assert out.stdout.count("healthy ") == 14
    assert "/ 81559 MiB" in out.stdout  # the stats sample's memory state
    assert "SIMULATED" in out.stderr


def test_probe_json_matches_the_scenario() -> None:
    out = run("probe", "--json", "--simulate", str(ROOT / "scenarios" / "8xh100-mig.toml"))
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    by_name = {g["name"]: g for g in doc["groups"]}
    full = by_name["NVIDIA H100 80GB HBM3"]
    assert full["attributes"]["memory"] == {"value": 81559, "unit": "MiB"}
    assert full["attributes"]["compute_capability"]["value"] == "9.0"
    ids = [d["id"] for g in doc["groups"] for d in g["devices"]]
    assert len(ids) == len(set(ids)) == 14
    assert all(d["stats"]["Memory state"].endswith("MiB") for g in doc["groups"] for d in g["devices"])


def test_probe_reads_the_agent_plugin_block(tmp_path: Path) -> None:
    scenario = ROOT / "scenarios" / "8xh100-mig.toml"
    first = json.loads(run("probe", "--json", "--simulate", str(scenario)).stdout)
    ignored = first["groups"][0]["devices"][0]["id"]
    out = probe_config(tmp_path, f'    simulate        = "{scenario}"\n    ignored_gpu_ids = ["{ignored}"]\n'
                                 "    sharing {\n      shares = 2\n    }\n", "--json")
    assert out.returncode == 0, out.stderr
    ids = [d["id"] for g in json.loads(out.stdout)["groups"] for d in g["devices"]]
    assert len(ids) == 13 * 2
    assert not any(i.startswith(ignored) for i in ids)


@pytest.mark.parametrize(("args", "message"), [
    (["probe", "--config", "/nonexistent/client.hcl"], "cannot read /nonexistent/client.hcl"),
    (["probe", "--simulate", "/nonexistent/scenario.toml"], "scenario"),
])
def test_probe_errors_are_one_line(args: list[str], message: str) -> None:
    out = run(*args)
    assert out.returncode != 0
    errors = probe_error_lines(out)
    assert len(errors) == 1 and message in errors[0], out.stderr


def test_probe_bad_config_value_names_the_key(tmp_path: Path) -> None:
    out = probe_config(tmp_path, '    fingerprint_period = "soon"\n')
    assert out.returncode == 2
    assert 'config key "fingerprint_period"' in out.stderr and "Traceback" not in out.stderr


def test_probe_of_a_disabled_plugin_is_one_line(tmp_path: Path) -> None:
    scenario = ROOT / "scenarios" / "1gpu.toml"
    out = probe_config(tmp_path, f'    enabled = false\n    simulate = "{scenario}"\n')
    assert out.returncode == 2
    errors = probe_error_lines(out)
    assert len(errors) == 1 and "enabled = false" in errors[0], out.stderr
    assert out.stdout == ""


def test_probe_refuses_a_relative_scenario_in_the_config_naming_the_key(tmp_path: Path) -> None:
    out = probe_config(tmp_path, '    simulate = "scenarios/1gpu.toml"\n')
    assert out.returncode == 2
    assert 'config key "simulate": must be an absolute path' in out.stderr and "Traceback" not in out.stderr

"""scripts/gpu-check.sh, the real-GPU check, where no GPU is.

No driver: it says so in one report and exits 2. On the simulated driver with
recorded nvidia-smi answers for the same node (tests/data/gpu-check/), every
section runs and passes. Its two judges can fail: the attribute comparison
names each attribute nvidia-smi disagrees with, and the engine comparison
flags a native value that python's reads around it do not allow.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "scripts" / "gpu-check.sh"
SAMPLE = REPO / "tests" / "data" / "gpu-check"
SIM_LIB = REPO / "build" / "sim" / "libnvidia-ml.so.1"
sys.path.insert(0, str(REPO / "scripts"))

import gpu_check  # noqa: E402

SECTIONS = ("driver", "probe", "Nomad's launcher: fingerprint, stats, reserve",
            "Nomad's client code (harness): handshake, fingerprint, stats, reserve",
            "native vs python stats engine on these devices", "stats engine benchmarks at this device count",
            "every attribute against nvidia-smi")


def _check(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, timeout=timeout)


def test_no_driver_is_one_clean_report(tmp_path: Path) -> None:
    res = _check("--nvml-library", str(tmp_path / "libnvidia-ml.so.1"), "--out", str(tmp_path / "report.md"),
                 timeout=60)
    assert res.returncode == 2, res.stdout + res.stderr
    assert "no NVIDIA driver on this machine" in res.stdout and "Nothing to check" in res.stdout, res.stdout
    assert "Traceback" not in res.stdout + res.stderr
    assert (tmp_path / "report.md").read_text() == res.stdout


@pytest.mark.slow
def test_every_section_passes_on_the_simulated_node() -> None:
    assert SIM_LIB.is_file(), "run `make sim`"
    res = _check("--simulate", str(SAMPLE / "scenario.toml"), "--nvidia-smi-sample", str(SAMPLE))
    report = res.stdout
    assert res.returncode == 0, report[-6000:] + res.stderr[-3000:]
    assert "SIMULATED DRIVER" in report  # never mistaken for a report from a GPU
    for title in SECTIONS:
        assert f"| {title} | PASS |" in report, f"{title} did not pass:\n{report[-6000:]}"
    assert "| `bench` subcommand | NOTE |" in report or "| `bench` subcommand | PASS |" in report
    table = report.split("## every attribute against nvidia-smi")[1]
    assert "MISMATCH" not in table
    for row in ("| 3 | MIG-d7cc69fc | mig_profile | 3g.40gb | 3g.40gb | ok |",
                "| 0 | GPU-9d212d37 | bar1 (MiB) | 131072 | 131072 | ok |",
                "| 1 | GPU-ea53fe7c | pci_bandwidth (MB/s) | 49152 | 49152 (gen 5 x16) | ok |"):
        assert row in table, table[:3000]
    assert "native within python's reads" in report


def _probe_groups() -> list[dict[str, Any]]:
    env = {"NOMAD_DEVICE_NVIDIA_SIM_LIB": str(SIM_LIB), "PATH": "/usr/bin:/bin"}
    res = subprocess.run([str(REPO / ".venv" / "bin" / "nomad-device-nvidia"), "probe", "--json", "--simulate",
                          str(SAMPLE / "scenario.toml")], capture_output=True, text=True, timeout=120, env=env)
    assert res.returncode == 0, res.stderr
    return list(json.loads(res.stdout)["groups"])


def test_attribute_comparison_names_what_nvidia_smi_disagrees_with(tmp_path: Path) -> None:
    groups = _probe_groups()
    smi = gpu_check.run_nvidia_smi(SAMPLE)
    bad, _ = gpu_check.compare_attributes(groups, smi)
    assert bad == []
    sample = tmp_path / "sample"
    shutil.copytree(SAMPLE, sample)
    csv = (sample / "query-gpu.csv").read_text().splitlines()
    csv[2] = csv[2].replace("81559 MiB", "40960 MiB")  # GPU 1
    csv[1] = csv[1].replace("9.0, Enabled", "9.0, Disabled")  # GPU 0 persistence mode
    del csv[3]  # GPU 2 not listed
    (sample / "query-gpu.csv").write_text("\n".join(csv) + "\n")
    (sample / "L.txt").write_text((sample / "L.txt").read_text().replace("MIG 2g.20gb", "MIG 1g.20gb"))
    (sample / "q.txt").write_text((sample / "q.txt").read_text().replace("CUDA Version                              : 12.4",
                                                                         "CUDA Version                              : 12.6"))
    bad, table = gpu_check.compare_attributes(groups, gpu_check.run_nvidia_smi(sample))
    text = "\n".join(bad)
    assert "GPU 1 GPU-ea53fe7c: memory (MiB): plugin 81559, nvidia-smi 40960" in text, text
    assert "GPU 0 GPU-9d212d37: persistence_mode: plugin '1', nvidia-smi '0'" in text, text
    assert "GPU 3 MIG-3698736a: mig_profile: plugin '2g.20gb', nvidia-smi '1g.20gb'" in text, text
    assert "cuda_driver_version: plugin '12.4', nvidia-smi '12.6'" in text, text
    assert "offered to Nomad but not listed by nvidia-smi: ['GPU-de5c8ad7-a4af-b03e-4d9a-0538fa0b0f96']" in text, text
    assert any("MISMATCH" in row for row in table)


def _read(values: dict[str, tuple[Any, ...]]) -> dict[tuple[str, str, str], tuple[Any, str, str]]:
    return {("g", "GPU-1", name): (v, "u", "d") for name, v in values.items()}


def test_engine_comparison_allows_only_what_legitimately_moves() -> None:
    before = _read({"Temperature": ("int", 50), "Memory state": ("frac", (1000, 81559)),
                    "ECC memory errors": ("int", 3), "BAR1 buffer state": ("str", "N/A"),
                    "PCIe/PCIe TX throughput": ("int", 10)})
    after = _read({"Temperature": ("int", 52), "Memory state": ("frac", (1100, 81559)),
                   "ECC memory errors": ("int", 4), "BAR1 buffer state": ("str", "N/A"),
                   "PCIe/PCIe TX throughput": ("int", 90000)})
    fine = _read({"Temperature": ("int", 54), "Memory state": ("frac", (1050, 81559)),
                  "ECC memory errors": ("int", 4), "BAR1 buffer state": ("str", "N/A"),
                  "PCIe/PCIe TX throughput": ("int", 7)})
    assert gpu_check.compare_reads(before, fine, after) == []
    wrong = _read({"Temperature": ("int", 60), "Memory state": ("frac", (1050, 40960)),
                   "ECC memory errors": ("int", 5), "BAR1 buffer state": ("int", 12),
                   "PCIe/PCIe TX throughput": ("int", 7)})
    problems = "\n".join(gpu_check.compare_reads(before, wrong, after))
    assert "'Temperature': native 60 outside python's 50..52 +/- 3" in problems, problems
    assert "'Memory state': total native 40960, python 81559 then 81559" in problems, problems
    assert "'ECC memory errors': counter native 5 outside python's 3..4" in problems, problems
    assert "'BAR1 buffer state': value kind native" in problems, problems
    assert "PCIe" not in problems
    # GPM rates: activity percentages within 15 points, throughputs by form only.
    gpm = [_read({"GPM/SM activity": ("float", x), "GPM/PCIe TX": ("float", y)}) for x, y in
           ((20.0, 10.0), (30.0, 90000.0), (34.0, 5.0))]
    for g in gpm:
        for k in list(g):
            g[k] = (g[k][0], "%" if "activity" in k[2] else "MB/s", "d")
    assert gpu_check.compare_reads(gpm[0], gpm[1], gpm[2]) == []
    gpm[1][("g", "GPU-1", "GPM/SM activity")] = (("float", 60.0), "%", "d")
    assert "'GPM/SM activity': native 60 outside python's 20..34 +/- 15" in "\n".join(
        gpu_check.compare_reads(gpm[0], gpm[1], gpm[2]))
    missing = dict(fine)
    del missing[("g", "GPU-1", "Temperature")]
    assert "stats only in one engine" in "\n".join(gpu_check.compare_reads(before, missing, after))


def test_mps_step_is_skipped_without_nvidias_daemon(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # No GPU here: the step must say why it did nothing, never fail or start anything.
    monkeypatch.setenv("PATH", str(tmp_path))
    status, body = gpu_check.mps_section(gpu_check.Target("", ""), tmp_path)
    assert status == gpu_check.NOTE and "nvidia-cuda-mps-control is not installed here" in body, body
    fake = tmp_path / "nvidia-cuda-mps-control"
    fake.write_text("#!/bin/sh\nexit 1\n")
    fake.chmod(0o755)
    status, body = gpu_check.mps_section(gpu_check.Target(str(SIM_LIB), str(SAMPLE / "scenario.toml")), tmp_path)
    assert status == gpu_check.NOTE and "needs a real GPU" in body, body

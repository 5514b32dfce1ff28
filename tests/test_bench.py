"""`nomad-device-nvidia bench` on the simulated driver, as an operator runs it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SIM_LIB = REPO / "build" / "sim" / "libnvidia-ml.so.1"


def bench(plugin_bin: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, NOMAD_DEVICE_NVIDIA_SIM_LIB=str(SIM_LIB))
    env.pop("NOMAD_PLUGIN_MAGIC_COOKIE", None)
    return subprocess.run([str(plugin_bin), "bench", *args], capture_output=True, text=True, timeout=120,
                          env=env, stdin=subprocess.DEVNULL)


def test_json_report_for_both_engines(plugin_bin: Path) -> None:
    run = bench(plugin_bin, "--simulate", str(REPO / "scenarios" / "8xh100-mig.toml"), "--duration", "300ms", "--json")
    assert run.returncode == 0, run.stderr
    report = json.loads(run.stdout)
    assert report["simulated"] and report["devices"] == 14 and report["driver"] == "550.90.07"
    assert [e["engine"] for e in report["engines"]] == ["native", "python"]
    for e in report["engines"]:
        assert e["devices"] == 14 and e["ticks"] > 0 and e["ticks_per_second"] > 0
        assert e["cpu_us_per_device_tick"] > 0 and 0 < e["tick_ms_median"] <= e["tick_ms_p99"]
    # One tick at each worker count up to the GPUs read (8 whole GPUs' worth of readers).
    assert list(report["workers"]) == ["1", "2", "4", "8"]
    assert "nvmlDeviceGetPowerUsage" in report["nvml_us_per_call"]
    assert all(v > 0 for v in report["nvml_us_per_call"].values())


def test_table_subset_and_one_engine(plugin_bin: Path) -> None:
    run = bench(plugin_bin, "--simulate", str(REPO / "scenarios" / "8xh100-mig.toml"), "--devices", "3",
                "--engines", "python", "--duration", "200ms", "--extended")
    assert run.returncode == 0, run.stderr
    assert "(SIMULATED), 3 devices, extended stats" in run.stdout
    assert "python " in run.stdout and "native " not in run.stdout
    assert "by worker count" not in run.stdout  # that table is the native engine's


def test_bad_input_is_one_clear_line(plugin_bin: Path, tmp_path: Path) -> None:
    scenario = str(REPO / "scenarios" / "1gpu.toml")
    for args, words in (
        (["--simulate", scenario, "--devices", "5"], "--devices 5: this node has 1 devices"),
        (["--simulate", scenario, "--devices", "GPU-nope"], "unknown device IDs: GPU-nope"),
        (["--simulate", scenario, "--engines", "rust"], "--engines: choose from native, python"),
        (["--simulate", str(tmp_path / "missing.toml")], "does not exist"),
    ):
        run = bench(plugin_bin, *args, "--duration", "100ms")
        assert run.returncode == 2 and words in run.stderr, (args, run.stderr)
        assert "Traceback" not in run.stderr
    run = bench(plugin_bin, "--duration", "1ns")
    assert run.returncode == 2 and "must be between 100ms and 1h" in run.stderr
    # This machine has no NVIDIA driver: bench says so, and where it looked.
    run = bench(plugin_bin, "--duration", "100ms")
    assert run.returncode == 2 and "try --simulate" in run.stderr, run.stderr
    assert "no libnvidia-ml.so.1 on this machine" in run.stderr and "LD_LIBRARY_PATH" in run.stderr, run.stderr


def test_runtime_floor_script_measures_both(plugin_bin: Path, tmp_path: Path) -> None:
    # benches/runtime_floor.py measures the runtime's idle floor: it must keep running.
    out = tmp_path / "floor.json"
    run = subprocess.run([sys.executable, str(REPO / "benches" / "runtime_floor.py"),
                          "--plugin", str(plugin_bin), "--launches", "2", "--settle", "0.5", "--window", "1",
                          "--json", str(out)], capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert run.returncode == 0, run.stderr
    report = json.loads(out.read_text())
    assert set(report["handshake"]) == {"bare grpc.aio server", "our plugin"}
    assert all(h["median_ms"] > 0 for h in report["handshake"].values())
    for key in ("bare_server_idle", "with_dependencies_idle"):
        idle = report[key]
        assert idle["rss_mib"] > 0 and idle["threads"] and idle["cpu_ms_per_s"] >= 0
    # The dependencies are loaded (and NVML is up) in the second server, so it is the larger.
    assert report["with_dependencies_idle"]["rss_mib"] > report["bare_server_idle"]["rss_mib"] + 2
    assert "our plugin" in run.stdout and "bare grpc.aio server idle" in run.stdout
    assert "with protobuf and NVML idle" in run.stdout

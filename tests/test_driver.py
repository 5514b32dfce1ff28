"""driver.load_nvml: the one place that picks the process's libnvidia-ml.so.1.

Each case runs in a fresh interpreter: which library a process has loaded cannot
be undone, which is the point of the module.
"""

from __future__ import annotations

import _ctypes
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import sim_branches

REPO = Path(__file__).resolve().parents[1]
SCENARIO = REPO / "scenarios" / "1gpu.toml"
SIM_LIB = Path(os.environ.get("NOMAD_DEVICE_NVIDIA_SIM_LIB", REPO / "build" / "sim" / "libnvidia-ml.so.1"))

CHILD = r'''
import dataclasses, json, logging, sys
logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(message)s")
from nomad_device_nvidia.nvidia.nvml.library import NvmlLoadError, load_nvml
args = json.loads(sys.argv[1])
out = {}
try:
    for library, simulate in args:
        out["source"] = dataclasses.asdict(load_nvml(library, simulate))
except NvmlLoadError as e:
    out["error"] = str(e)
if "source" in out and "error" not in out and out["source"]["path"]:
    import pynvml as n
    try:
        n.nvmlInit()
        h = n.nvmlDeviceGetHandleByIndex(0)
        out["name"] = n.nvmlDeviceGetName(h)
        n.nvmlShutdown()
    except n.NVMLError as e:
        out["init_error"] = e.value
print(json.dumps(out))
'''


def load(*calls: tuple[str | None, str | None], env: dict[str, str] | None = None) -> tuple[dict[str, Any], str]:
    if not SIM_LIB.is_file():
        pytest.fail(f"simulated NVML not built: {SIM_LIB} is missing (run `make sim`)")
    full = {k: v for k, v in os.environ.items() if k not in ("NVML_SIM_SCENARIO", "LD_LIBRARY_PATH")}
    full["NOMAD_DEVICE_NVIDIA_SIM_LIB"] = str(SIM_LIB)
    full.update(env or {})
    proc = subprocess.run([sys.executable, "-c", CHILD, json.dumps(calls)], capture_output=True, text=True,
                          env=full, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    result: dict[str, Any] = json.loads(proc.stdout)
    return result, proc.stderr


def test_simulate_loads_the_sim_and_warns() -> None:
    out, logs = load((None, str(SCENARIO)))
    assert out["source"] == {"path": os.path.realpath(SIM_LIB), "simulated": True, "scenario": str(SCENARIO)}
    assert out["name"] == "NVIDIA L4"  # pynvml's own dlopen got the same object
    assert "WARNING SIMULATED NVIDIA DRIVER IN USE" in logs and str(SCENARIO) in logs


def test_explicit_library_with_simulate() -> None:
    out, _ = load((str(SIM_LIB), str(SCENARIO)), env={"NOMAD_DEVICE_NVIDIA_SIM_LIB": "/nonexistent"})
    assert out["source"]["simulated"] is True and out["name"] == "NVIDIA L4"


def test_loading_the_same_library_twice_is_fine() -> None:
    out, _ = load((None, str(SCENARIO)), (str(SIM_LIB), str(SCENARIO)))
    assert out["source"]["simulated"] is True and out["name"] == "NVIDIA L4"


def test_missing_scenario_is_named() -> None:
    out, _ = load((None, "/nonexistent/scenario.toml"))
    assert "simulate" in out["error"] and "/nonexistent/scenario.toml" in out["error"]


def test_missing_library_is_named() -> None:
    out, _ = load(("/nonexistent/libnvidia-ml.so.1", None))
    assert "nvml_library" in out["error"] and "/nonexistent/libnvidia-ml.so.1" in out["error"]


def test_missing_sim_library_env_is_named() -> None:
    out, _ = load((None, str(SCENARIO)), env={"NOMAD_DEVICE_NVIDIA_SIM_LIB": "/nonexistent/sim.so"})
    assert "NOMAD_DEVICE_NVIDIA_SIM_LIB" in out["error"] and "/nonexistent/sim.so" in out["error"]


def test_simulate_refuses_a_library_that_is_not_the_sim() -> None:
    other = _ctypes.__file__  # any loadable shared object without the simulator's marker
    assert other is not None
    out, _ = load((other, str(SCENARIO)))
    assert "not the simulated NVML library" in out["error"]


def test_a_second_different_library_is_refused(tmp_path: Path) -> None:
    copy = tmp_path / "libnvidia-ml.so.1"
    copy.write_bytes(SIM_LIB.read_bytes())
    out, _ = load((None, str(SCENARIO)), (str(copy), str(SCENARIO)))
    assert "already loaded" in out["error"] and str(copy) in out["error"]


def test_neither_uses_the_system_library_or_none() -> None:
    # This machine has no NVIDIA driver: nothing is loaded, nothing is simulated.
    out, logs = load((None, None))
    if out["source"]["path"] is None:
        assert out["source"] == {"path": None, "simulated": False, "scenario": None}
        assert "SIMULATED" not in logs
    else:  # a real driver is installed here
        assert out["source"]["simulated"] is False


def test_sim_on_library_path_is_reported_loudly() -> None:
    out, logs = load((None, None), env={"LD_LIBRARY_PATH": str(SIM_LIB.parent), "NVML_SIM_SCENARIO": str(SCENARIO)})
    assert out["source"]["simulated"] is True and out["source"]["scenario"] == str(SCENARIO)
    assert out["name"] == "NVIDIA L4"
    assert "SIMULATED NVIDIA DRIVER IN USE" in logs and "LD_LIBRARY_PATH" in logs


SCENARIO_WITH_BRANCH = """name = "b"
[driver]
cuda_version = "12.2"
branch = 535

[[gpus]]
model = "l4"
"""


@pytest.mark.parametrize("python_has_tomllib", [True, False])
def test_the_scenarios_driver_branch_is_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                              python_has_tomllib: bool) -> None:
    from nomad_device_nvidia.nvidia.nvml.library import scenario_branch

    if not python_has_tomllib:  # Python 3.10: the [driver] table's `branch = N` line
        monkeypatch.setitem(sys.modules, "tomllib", None)
    with_branch = tmp_path / "with.toml"
    with_branch.write_text(SCENARIO_WITH_BRANCH)
    assert scenario_branch(str(with_branch)) == 535
    without = tmp_path / "without.toml"
    # A `branch` key outside [driver] is not the driver's.
    without.write_text(SCENARIO_WITH_BRANCH.replace("branch = 535\n", "") + "[gpus.stats]\nbranch = 1\n")
    assert scenario_branch(str(without)) is None
    assert scenario_branch(str(tmp_path / "missing.toml")) is None


def test_a_branch_scenario_picks_the_branchs_library_beside_the_simulated_one(monkeypatch: pytest.MonkeyPatch) -> None:
    from nomad_device_nvidia.nvidia.nvml.library import SIM_LIB_ENV, NvmlLoadError, find_sim_library

    full = sim_branches.library(None)
    monkeypatch.setenv(SIM_LIB_ENV, str(full))
    assert find_sim_library(None) == str(full)
    assert find_sim_library(535) == str(sim_branches.library(535))
    with pytest.raises(NvmlLoadError, match=r"plays driver branch 999 but .*/999/libnvidia-ml.so.1 is missing"):
        find_sim_library(999)

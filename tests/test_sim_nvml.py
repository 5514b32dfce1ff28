"""nvidia-ml-py (pynvml) against the simulated libnvidia-ml.so.1: it must see exactly
what each ready-made scenario describes, and the faults as NVML error codes.

NVML state is per process, so each case runs pynvml in a fresh interpreter that
loads the simulated library through driver.load_nvml and prints what it saw as JSON.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
SCENARIOS = REPO / "scenarios"
SIM_LIB = Path(os.environ.get("NOMAD_DEVICE_NVIDIA_SIM_LIB", REPO / "build" / "sim" / "libnvidia-ml.so.1"))

# What the boards report (their specifications), keyed by the scenario's model name.
MODELS = {
    "h100-sxm5-80gb": dict(name="NVIDIA H100 80GB HBM3", memory_mib=81559, bar1_mib=131072, power_w=700,
                           cc=[9, 0], arch=9, pcie=[5, 16]),
    "a100-sxm4-40gb": dict(name="NVIDIA A100-SXM4-40GB", memory_mib=40960, bar1_mib=65536, power_w=400,
                           cc=[8, 0], arch=7, pcie=[4, 16]),
    "a100-sxm4-80gb": dict(name="NVIDIA A100-SXM4-80GB", memory_mib=81920, bar1_mib=131072, power_w=400,
                           cc=[8, 0], arch=7, pcie=[4, 16]),
    "gh200-96gb": dict(name="NVIDIA GH200 480GB", memory_mib=97871, bar1_mib=None, power_w=900,
                       cc=[9, 0], arch=9, pcie=[5, 16]),
    "l4": dict(name="NVIDIA L4", memory_mib=23034, bar1_mib=32768, power_w=72, cc=[8, 9], arch=8, pcie=[4, 16]),
}
# MIG slice memory (MiB) by profile name, per model.
MIG_MEMORY = {
    "h100-sxm5-80gb": {"1g.10gb": 9856, "1g.20gb": 19968, "2g.20gb": 19968, "3g.40gb": 40192, "4g.40gb": 40192,
                       "7g.80gb": 80384},
    "a100-sxm4-40gb": {"1g.5gb": 4864, "1g.10gb": 9856, "2g.10gb": 9856, "3g.20gb": 19968, "4g.20gb": 19968,
                       "7g.40gb": 40192},
}

GPU_UUID = re.compile(r"^GPU-[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
MIG_UUID = re.compile(r"^MIG-[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")

# What every child starts with: the simulation loaded the way the plugin loads it (the
# scenario in argv[1]), pynvml as `n`, and `code(f, *a)`: the NVML return code of a call.
CHILD_HEAD = r'''
import json, sys, threading, time
from nomad_device_nvidia.nvidia.nvml.library import load_nvml
import pynvml as n
load_nvml(None, sys.argv[1])

def code(f, *a):
    try:
        f(*a)
        return 0
    except n.NVMLError as e:
        return e.value
'''

# The child: walk NVML with pynvml.
SNAPSHOT = CHILD_HEAD + r'''
limit = int(sys.argv[2])

def err(f, *a):
    try:
        return f(*a)
    except n.NVMLError as e:
        return {"error": e.value}

n.nvmlInit()
out = {"driver": n.nvmlSystemGetDriverVersion(), "cuda": n.nvmlSystemGetCudaDriverVersion(),
       "count": n.nvmlDeviceGetCount(), "gpus": []}
for i in range(min(out["count"], limit)):
    h = n.nvmlDeviceGetHandleByIndex(i)
    mem = n.nvmlDeviceGetMemoryInfo(h)
    mem2 = n.nvmlDeviceGetMemoryInfo(h, version=n.nvmlMemory_v2)
    bar1 = err(n.nvmlDeviceGetBAR1MemoryInfo, h)
    g = {"index": n.nvmlDeviceGetIndex(h), "name": n.nvmlDeviceGetName(h), "uuid": n.nvmlDeviceGetUUID(h),
         "memory_total": mem.total, "memory_used_v1": mem.used, "memory_free_v1": mem.free,
         "memory_v2": [mem2.total, mem2.reserved, mem2.used, mem2.free],
         "bar1_total": bar1 if isinstance(bar1, dict) else bar1.bar1Total,
         "bus_id": n.nvmlDeviceGetPciInfo(h).busId, "power_limit": n.nvmlDeviceGetPowerManagementLimit(h),
         "cc": list(n.nvmlDeviceGetCudaComputeCapability(h)), "arch": n.nvmlDeviceGetArchitecture(h),
         "pcie": [n.nvmlDeviceGetMaxPcieLinkGeneration(h), n.nvmlDeviceGetMaxPcieLinkWidth(h)],
         "mig_mode": err(n.nvmlDeviceGetMigMode, h), "is_mig": int(n.nvmlDeviceIsMigDeviceHandle(h).value), "migs": []}
    g["by_uuid"] = n.nvmlDeviceGetIndex(n.nvmlDeviceGetHandleByUUID(g["uuid"]))
    g["parent_of_gpu"] = err(n.nvmlDeviceGetDeviceHandleFromMigDeviceHandle, h)
    if g["mig_mode"] == [1, 1]:
        g["max_mig"] = n.nvmlDeviceGetMaxMigDeviceCount(h)
        for j in range(g["max_mig"]):
            m = err(n.nvmlDeviceGetMigDeviceHandleByIndex, h, j)
            if isinstance(m, dict):
                g["migs"].append(m)
                continue
            parent = n.nvmlDeviceGetDeviceHandleFromMigDeviceHandle(m)
            attrs = n.nvmlDeviceGetAttributes(m)
            gi = n.nvmlDeviceGetGpuInstanceById(h, n.nvmlDeviceGetGpuInstanceId(m))
            info = n.nvmlGpuInstanceGetInfo(gi)
            g["migs"].append({"name": n.nvmlDeviceGetName(m), "uuid": n.nvmlDeviceGetUUID(m),
                "memory_total": n.nvmlDeviceGetMemoryInfo(m).total, "parent_uuid": n.nvmlDeviceGetUUID(parent),
                "gi": n.nvmlDeviceGetGpuInstanceId(m), "ci": n.nvmlDeviceGetComputeInstanceId(m),
                "is_mig": int(n.nvmlDeviceIsMigDeviceHandle(m).value), "attr_memory_mb": attrs.memorySizeMB,
                "gi_profile_id": info.profileId, "by_uuid_is_mig": int(n.nvmlDeviceIsMigDeviceHandle(
                    n.nvmlDeviceGetHandleByUUID(n.nvmlDeviceGetUUID(m))).value),
                "utilization": err(n.nvmlDeviceGetUtilizationRates, m)})
        p = n.nvmlDeviceGetGpuInstanceProfileInfo(h, n.NVML_GPU_INSTANCE_PROFILE_3_SLICE)
        g["profile_3_slice"] = [p.id, p.sliceCount, p.memorySizeMB, p.name]
    out["gpus"].append(g)
n.nvmlShutdown()
print(json.dumps(out))
'''


def run_child(code: str, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    if not SIM_LIB.is_file():
        pytest.fail(f"simulated NVML not built: {SIM_LIB} is missing (run `make sim`)")
    full_env = {**os.environ, "NOMAD_DEVICE_NVIDIA_SIM_LIB": str(SIM_LIB)}
    full_env.pop("NVML_SIM_SCENARIO", None)
    full_env.pop("NVML_SIM_PERSIST_DIR", None)
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=full_env,
                          timeout=120, check=False)


def snapshot(scenario: str, limit: int = 64) -> dict[str, Any]:
    proc = run_child(SNAPSHOT, str(SCENARIOS / scenario), str(limit))
    assert proc.returncode == 0, proc.stderr
    result: dict[str, Any] = json.loads(proc.stdout)
    return result


def expected_gpus(scenario: str) -> list[tuple[str, list[str] | None]]:
    """(model, MIG profiles or None) per GPU index, read from the scenario file."""
    doc = tomllib.loads((SCENARIOS / scenario).read_text())
    out: list[tuple[str, list[str] | None]] = []
    for group in doc["gpus"]:
        out += [(group["model"], group.get("mig"))] * group.get("count", 1)
    return out


@pytest.mark.parametrize("scenario", ["1gpu.toml", "8xh100-mig.toml", "8xa100-mixed-mig.toml", "gh200.toml"])
def test_pynvml_sees_the_scenario(scenario: str) -> None:
    doc = tomllib.loads((SCENARIOS / scenario).read_text())
    snap = snapshot(scenario)
    gpus = expected_gpus(scenario)
    assert snap["driver"] == doc["driver"]["version"]
    major, minor = doc["driver"]["cuda_version"].split(".")
    assert snap["cuda"] == int(major) * 1000 + int(minor) * 10
    assert snap["count"] == len(gpus) == len(snap["gpus"])
    uuids: set[str] = set()
    for i, ((model, mig), g) in enumerate(zip(gpus, snap["gpus"], strict=True)):
        spec = MODELS[model]
        assert g["index"] == i and g["by_uuid"] == i
        assert g["name"] == spec["name"]
        assert GPU_UUID.match(g["uuid"]), g["uuid"]
        assert g["memory_total"] == spec["memory_mib"] << 20
        total, reserved, used, free = g["memory_v2"]
        assert total == g["memory_total"] and reserved + used + free == total
        assert g["memory_used_v1"] + g["memory_free_v1"] == total
        if spec["bar1_mib"] is None:
            assert g["bar1_total"] == {"error": 3}  # NVML_ERROR_NOT_SUPPORTED: unified memory
        else:
            assert g["bar1_total"] == spec["bar1_mib"] << 20
        assert g["power_limit"] == spec["power_w"] * 1000
        assert g["cc"] == spec["cc"] and g["arch"] == spec["arch"] and g["pcie"] == spec["pcie"]
        assert re.match(r"^[0-9A-F]{8}:[0-9A-F]{2}:00\.0$", g["bus_id"])
        assert g["is_mig"] == 0
        assert g["parent_of_gpu"] == {"error": 2}  # INVALID_ARGUMENT: not a MIG handle
        uuids.add(g["uuid"])
        if model == "l4":
            assert g["mig_mode"] == {"error": 3}
        elif mig is None:
            assert g["mig_mode"] == [0, 0] and g["migs"] == []
        else:
            assert g["mig_mode"] == [1, 1]
            assert g["max_mig"] == 7
            found = [m for m in g["migs"] if "uuid" in m]
            assert [m for m in g["migs"] if "error" in m] == [{"error": 6}] * (7 - len(mig))  # NOT_FOUND
            assert [m["name"] for m in found] == [f"{spec['name']} MIG {p}" for p in mig]
            assert [m["memory_total"] for m in found] == [MIG_MEMORY[model][p] << 20 for p in mig]
            assert [m["attr_memory_mb"] for m in found] == [MIG_MEMORY[model][p] for p in mig]
            for m in found:
                assert MIG_UUID.match(m["uuid"]), m["uuid"]
                assert m["parent_uuid"] == g["uuid"]
                assert m["is_mig"] == 1 and m["by_uuid_is_mig"] == 1 and m["ci"] == 0
                assert m["utilization"] == {"error": 3}  # per-GPU metric, NOT_SUPPORTED on a MIG device
                uuids.add(m["uuid"])
            assert len({m["gi"] for m in found}) == len(mig)
            assert g["profile_3_slice"][:2] == [9, 3]
    n_migs = sum(len(m or []) for _, m in gpus)
    assert len(uuids) == len(gpus) + n_migs, "UUIDs must be unique"
    assert len({g["bus_id"] for g in snap["gpus"]}) == len(gpus)


def test_uuids_are_deterministic_and_scenario_specific() -> None:
    a = snapshot("8xh100-mig.toml")
    b = snapshot("8xh100-mig.toml")
    c = snapshot("8xa100-mixed-mig.toml")
    assert [g["uuid"] for g in a["gpus"]] == [g["uuid"] for g in b["gpus"]]
    assert [m.get("uuid") for m in a["gpus"][6]["migs"]] == [m.get("uuid") for m in b["gpus"][6]["migs"]]
    assert not {g["uuid"] for g in a["gpus"]} & {g["uuid"] for g in c["gpus"]}


def test_4096_gpus() -> None:
    snap = snapshot("4096gpus.toml", limit=4096)
    assert snap["count"] == 4096 == len(snap["gpus"])
    assert len({g["uuid"] for g in snap["gpus"]}) == 4096
    assert len({g["bus_id"] for g in snap["gpus"]}) == 4096
    assert {g["name"] for g in snap["gpus"]} == {MODELS["h100-sxm5-80gb"]["name"]}


FAULTS = CHILD_HEAD + r'''
n.nvmlInit()
h = [n.nvmlDeviceGetHandleByIndex(i) for i in range(n.nvmlDeviceGetCount())]

out = {}
out["gpu1_power"] = code(n.nvmlDeviceGetPowerUsage, h[1])
out["gpu1_temp"] = code(n.nvmlDeviceGetTemperature, h[1], 0)
out["gpu1_util"] = code(n.nvmlDeviceGetUtilizationRates, h[1])
fv = n.nvmlDeviceGetFieldValues(h[1], [n.NVML_FI_DEV_TOTAL_ENERGY_CONSUMPTION, n.NVML_FI_DEV_POWER_INSTANT,
                                       n.NVML_FI_DEV_ECC_SBE_VOL_TOTAL])
out["gpu1_fields"] = [f.nvmlReturn for f in fv]
out["gpu0_power"] = code(n.nvmlDeviceGetPowerUsage, h[0])
# GPU 2 is lost after 50 calls on it and back 20 calls later.
out["gpu2_calls"] = [code(n.nvmlDeviceGetMemoryInfo, h[2]) for _ in range(80)]
# ECC counter generator: grows by one per sample.
out["gpu0_ecc"] = [n.nvmlDeviceGetTotalEccErrors(h[0], 0, 0) for _ in range(3)]
# An unimplemented entry point answers NOT_SUPPORTED.
out["stub"] = code(n.nvmlDeviceGetGspFirmwareVersion, h[0])

# XID events on GPU 0, in order, then a timeout.
es = n.nvmlEventSetCreate()
n.nvmlDeviceRegisterEvents(h[0], n.nvmlEventTypeXidCriticalError, es)
events = []
for _ in range(2):
    d = n.nvmlEventSetWait_v2(es, 10000)
    events.append([n.nvmlDeviceGetUUID(d.device) == n.nvmlDeviceGetUUID(h[0]), d.eventType, d.eventData,
                   d.gpuInstanceId, d.computeInstanceId])
out["events"] = events
out["after_events"] = code(n.nvmlEventSetWait_v2, es, 50)
n.nvmlEventSetFree(es)
out["bad_set"] = code(n.nvmlDeviceRegisterEvents, h[0], n.nvmlEventTypeXidCriticalError, es)

# GPU 3 hangs in nvmlDeviceGetPowerUsage (started 0.5 s after init, which has passed):
# another GPU answers while that call is still blocked.
done = threading.Event()
result = {}
def slow():
    result["code"] = code(n.nvmlDeviceGetPowerUsage, h[3])
    done.set()
t = threading.Thread(target=slow)
t.start()
while not t.is_alive():
    pass
out["other_gpu_while_hung"] = [code(n.nvmlDeviceGetPowerUsage, h[0]), done.is_set()]
t.join()
out["hung_call_result"] = result["code"]
n.nvmlShutdown()
print(json.dumps(out))
'''


def test_faulty_scenario_faults() -> None:
    proc = run_child(FAULTS, str(SCENARIOS / "faulty.toml"))
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["gpu1_power"] == 3 and out["gpu1_temp"] == 3  # NVML_ERROR_NOT_SUPPORTED
    assert out["gpu1_util"] == 0
    assert out["gpu1_fields"] == [3, 3, 0]
    assert out["gpu0_power"] == 0
    assert out["gpu2_calls"] == [0] * 50 + [15] * 20 + [0] * 10  # NVML_ERROR_GPU_IS_LOST, then back
    first, second, third = out["gpu0_ecc"]
    assert second == first + 1 and third == second + 1
    assert out["stub"] == 3
    xid = 8  # nvmlEventTypeXidCriticalError
    assert out["events"] == [[True, xid, 79, 0xFFFFFFFF, 0xFFFFFFFF], [True, xid, 48, 0xFFFFFFFF, 0xFFFFFFFF]]
    assert out["after_events"] == 10  # NVML_ERROR_TIMEOUT
    assert out["bad_set"] == 2  # freed set: INVALID_ARGUMENT
    assert out["other_gpu_while_hung"] == [0, False]
    assert out["hung_call_result"] == 0


INIT = r'''
import json, pynvml as n
from nomad_device_nvidia.nvidia.nvml.library import load_nvml
load_nvml(None, None)
try:
    n.nvmlInit()
    print(json.dumps({"code": 0, "count": n.nvmlDeviceGetCount()}))
except n.NVMLError as e:
    print(json.dumps({"code": e.value}))
'''


def init_with(tmp_path: Path, scenario_text: str | None, *, missing: bool = False) -> tuple[int, str]:
    env = {"LD_LIBRARY_PATH": str(SIM_LIB.parent)}
    if scenario_text is not None or missing:
        path = tmp_path / "scenario.toml"
        if scenario_text is not None:
            path.write_text(scenario_text)
        env["NVML_SIM_SCENARIO"] = str(path)
    else:
        env["NVML_SIM_SCENARIO"] = ""
    proc = run_child(INIT, env=env)
    assert proc.returncode == 0, proc.stderr
    code: int = json.loads(proc.stdout)["code"]
    return code, proc.stderr


def test_init_without_scenario_is_driver_not_loaded(tmp_path: Path) -> None:
    code, _ = init_with(tmp_path, None)
    assert code == 9  # NVML_ERROR_DRIVER_NOT_LOADED


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("name = \"x\"\n[[gpus]]\nmodel = \"h100\"\n", "gpus[0].model"),
        ("name = \"x\"\n[[gpus]]\nmodel = \"l4\"\ncolour = 1\n", "colour"),
        ("name = \"x\"\n[[gpus]\n", "expected"),
        ("name = \"x\"\n[[gpus]]\nmodel = \"a100-sxm4-40gb\"\nmig = [\"7g.40gb\", \"1g.5gb\"]\n", "slices"),
        ("name = \"x\"\n[[gpus]]\nmodel = \"l4\"\ncount = 5000\n", "count"),
        ("name = \"x\"\n[[gpus]]\nmodel = \"l4\"\n[[faults]]\nkind = \"lost\"\ngpu = 3\nafter_s = 1\n", "out of range"),
    ],
)
def test_broken_scenario_fails_init_cleanly(tmp_path: Path, text: str, named: str) -> None:
    code, stderr = init_with(tmp_path, text)
    assert code == 999  # NVML_ERROR_UNKNOWN
    assert "nvml-sim: bad scenario" in stderr and named in stderr, stderr


def test_missing_scenario_file_fails_init_cleanly(tmp_path: Path) -> None:
    code, stderr = init_with(tmp_path, None, missing=True)
    assert code == 999
    assert "cannot read scenario" in stderr and "scenario.toml" in stderr


def test_scenario_can_fail_init(tmp_path: Path) -> None:
    code, _ = init_with(tmp_path, "name = \"x\"\n[init]\nerror = \"DRIVER_NOT_LOADED\"\n[[gpus]]\nmodel = \"l4\"\n")
    assert code == 9
    code, _ = init_with(tmp_path, "name = \"x\"\n[init]\nerror = \"NVML_ERROR_LIB_RM_VERSION_MISMATCH\"\n")
    assert code == 18


def test_init_is_refcounted_and_calls_need_init() -> None:
    code = CHILD_HEAD + r'''
out = []
n.nvmlInit(); n.nvmlInit()
h = n.nvmlDeviceGetHandleByIndex(0)
n.nvmlShutdown()
out.append(code(n.nvmlDeviceGetName, h))      # still initialised once
n.nvmlShutdown()
out.append(code(n.nvmlDeviceGetName, h))      # UNINITIALIZED
out.append(code(n.nvmlShutdown))              # UNINITIALIZED
n.nvmlInit()
out.append(code(n.nvmlDeviceGetName, h))      # the old handle is valid again
out.append(code(n.nvmlDeviceGetHandleByIndex, 1))   # INVALID_ARGUMENT: one GPU
out.append(code(n.nvmlDeviceGetHandleByUUID, b"GPU-nope"))  # NOT_FOUND
print(json.dumps(out))
'''
    proc = run_child(code, str(SCENARIOS / "1gpu.toml"))
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == [0, 1, 1, 0, 2, 6]


# The child for the health faults (test_health_faults.py): init, run the steps in argv[2] (Python
# statements with `n` = pynvml, `h` = the GPU handles, `code(f, *a)` = the NVML return
# code of a call, `out` = the dict printed as JSON). The machine's clock starts inside
# nvmlInit, between t_init and t0: machine time >= X once time.monotonic() >= t0 + X,
# and machine time >= X implies time.monotonic() >= t_init + X.
STEPS = CHILD_HEAD + r"""
def until(what, cond, limit_s=10.0):
    deadline = time.monotonic() + limit_s
    while not cond():
        if time.monotonic() > deadline:
            raise SystemExit("timed out waiting for " + what)
        time.sleep(0.005)

out = {}
t_init = time.monotonic()
n.nvmlInit()
t0 = time.monotonic()
h = [n.nvmlDeviceGetHandleByIndex(i) for i in range(n.nvmlDeviceGetCount())]
exec(sys.argv[2])
print(json.dumps(out))
"""


def steps(tmp_path: Path, scenario_text: str, code: str, env: dict[str, str] | None = None) -> dict[str, Any]:
    path = tmp_path / f"scenario-{len(list(tmp_path.glob('scenario-*')))}.toml"
    path.write_text(scenario_text)
    proc = run_child(STEPS, str(path), code, env=env)
    assert proc.returncode == 0, proc.stderr
    result: dict[str, Any] = json.loads(proc.stdout)
    return result


def test_gb10_has_no_dedicated_memory() -> None:
    code = r"""
g = h[0]
out["name"] = n.nvmlDeviceGetName(g)
out["memory"] = code(n.nvmlDeviceGetMemoryInfo, g)
out["memory_v2"] = code(n.nvmlDeviceGetMemoryInfo, g, n.nvmlMemory_v2)
out["bar1"] = code(n.nvmlDeviceGetBAR1MemoryInfo, g)
out["max_memory_clock"] = code(n.nvmlDeviceGetMaxClockInfo, g, n.NVML_CLOCK_MEM)
out["memory_clock"] = code(n.nvmlDeviceGetClockInfo, g, n.NVML_CLOCK_MEM)
out["max_sm_clock"] = n.nvmlDeviceGetMaxClockInfo(g, n.NVML_CLOCK_SM)
out["cc"] = list(n.nvmlDeviceGetCudaComputeCapability(g))
out["arch"] = n.nvmlDeviceGetArchitecture(g)
out["mig"] = code(n.nvmlDeviceGetMigMode, g)
out["power_limit"] = n.nvmlDeviceGetPowerManagementLimit(g)
out["power"] = code(n.nvmlDeviceGetPowerUsage, g)
out["driver"] = n.nvmlSystemGetDriverVersion()
"""
    proc = run_child(STEPS, str(SCENARIOS / "gb10.toml"), code)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["name"] == "NVIDIA GB10"
    ns = 3  # NVML_ERROR_NOT_SUPPORTED
    assert [out[k] for k in ("memory", "memory_v2", "bar1", "max_memory_clock", "memory_clock", "mig")] == [ns] * 6
    assert out["max_sm_clock"] > 0 and out["power"] == 0
    assert out["cc"] == [12, 1] and out["arch"] == 10  # NVML_DEVICE_ARCH_BLACKWELL
    assert out["power_limit"] == 140_000
    assert out["driver"] == "580.95.05"


MEMORY_REPAIR = """
name = "repair"
[[gpus]]
model = "v100-sxm2-32gb"
[[gpus]]
model = "a100-sxm4-80gb"
count = 3
[[faults]]
kind = "page_retirement_pending"
gpu = 0
pages = 2
[[faults]]
kind = "row_remap_pending"
gpu = 1
[[faults]]
kind = "row_remap_failed"
gpu = 2
uncorrectable_rows = 4
"""


def test_retired_pages_and_remapped_rows(tmp_path: Path) -> None:
    code = r"""
dbe, sbe = n.NVML_PAGE_RETIREMENT_CAUSE_DOUBLE_BIT_ECC_ERROR, n.NVML_PAGE_RETIREMENT_CAUSE_MULTIPLE_SINGLE_BIT_ECC_ERRORS
out["name"] = n.nvmlDeviceGetName(h[0])
out["cc"] = list(n.nvmlDeviceGetCudaComputeCapability(h[0]))
out["v100_pending"] = n.nvmlDeviceGetRetiredPagesPendingStatus(h[0])
out["v100_dbe"] = n.nvmlDeviceGetRetiredPages(h[0], dbe)
out["v100_dbe_v2"] = n.nvmlDeviceGetRetiredPages_v2(h[0], dbe)
out["v100_sbe"] = n.nvmlDeviceGetRetiredPages(h[0], sbe)
out["v100_rows"] = code(n.nvmlDeviceGetRemappedRows, h[0])
out["v100_mig"] = code(n.nvmlDeviceGetMigMode, h[0])
out["a100_pending"] = code(n.nvmlDeviceGetRetiredPagesPendingStatus, h[1])
out["rows"] = [list(n.nvmlDeviceGetRemappedRows(g)) for g in h[1:]]
"""
    out = steps(tmp_path, MEMORY_REPAIR, code)
    assert out["name"] == "Tesla V100-SXM2-32GB" and out["cc"] == [7, 0]
    assert out["v100_pending"] == 1  # NVML_FEATURE_ENABLED
    pages = out["v100_dbe"]
    assert len(pages) == 2 and all(p > 0 and p % 4096 == 0 for p in pages)
    assert [p["address"] for p in out["v100_dbe_v2"]] == pages
    assert all(p["timestamp"] > 1_600_000_000 for p in out["v100_dbe_v2"])
    assert out["v100_sbe"] == []
    assert out["v100_rows"] == 3 and out["v100_mig"] == 3  # NOT_SUPPORTED: no row remapper, no MIG on Volta
    assert out["a100_pending"] == 3  # NOT_SUPPORTED: Ampere remaps rows instead
    # (correctable, uncorrectable, pending, failure) for GPUs 1-3.
    assert out["rows"] == [[0, 1, 1, 0], [0, 4, 0, 1], [0, 0, 0, 0]]


def test_memory_repair_state_outlives_the_process(tmp_path: Path) -> None:
    store = tmp_path / "inforom"

    def text(after_s: float) -> str:
        return (
            f'name = "keeps"\n[[gpus]]\nmodel = "a100-sxm4-80gb"\ncount = 2\n'
            f'[[faults]]\nkind = "row_remap_failed"\ngpu = 1\nafter_s = {after_s}\n'
        )

    # The failure happens in the first process...
    first = r"""
out["before"] = list(n.nvmlDeviceGetRemappedRows(h[1]))
until("the failure", lambda: n.nvmlDeviceGetRemappedRows(h[1])[3] == 1)
out["after"] = list(n.nvmlDeviceGetRemappedRows(h[1]))
"""
    env = {"NVML_SIM_PERSIST_DIR": str(store)}
    out = steps(tmp_path, text(0.5), first, env)
    assert out == {"before": [0, 0, 0, 0], "after": [0, 0, 0, 1]}
    assert [p.name for p in store.iterdir()] == ["keeps.gpu1.row_remap_failed"]
    # ...and a second process of the scenario has it at once, though this text says
    # it comes in an hour: only the driver's kept state can say so.
    again = 'out["rows"] = [list(n.nvmlDeviceGetRemappedRows(g)) for g in h]'
    assert steps(tmp_path, text(3600.0), again, env) == {"rows": [[0, 0, 0, 0], [0, 0, 0, 1]]}
    # Without the variable the state is not read (nor written).
    assert steps(tmp_path, text(3600.0), again) == {"rows": [[0, 0, 0, 0], [0, 0, 0, 0]]}


def test_driver_gone_then_a_new_session_works(tmp_path: Path) -> None:
    scenario_text = (
        'name = "gone"\n[[gpus]]\nmodel = "l4"\ncount = 2\n'
        '[[faults]]\nkind = "driver_gone"\nerror = "LIB_RM_VERSION_MISMATCH"\nafter_s = 0.3\nrecover_after_s = 0.3\n'
    )
    code = r"""
gone = n.NVML_ERROR_LIB_RM_VERSION_MISMATCH
until("the driver to go", lambda: code(n.nvmlDeviceGetCount) == gone)
out["calls"] = [code(n.nvmlSystemGetDriverVersion), code(n.nvmlDeviceGetHandleByIndex, 1),
                code(n.nvmlDeviceGetPowerUsage, h[0]), code(n.nvmlDeviceGetUUID, h[1]), code(n.nvmlInit)]
# From t0 + 0.6 s the driver has recovered; this session began before that and stays
# broken.
until("the recovery", lambda: time.monotonic() >= t0 + 0.6)
out["old_session"] = code(n.nvmlDeviceGetCount)
n.nvmlShutdown()
out["after_shutdown"] = code(n.nvmlDeviceGetCount)
n.nvmlInit()
out["new_session"] = [n.nvmlDeviceGetCount(), code(n.nvmlDeviceGetPowerUsage, h[0])]
n.nvmlShutdown()
n.nvmlInit()
out["again"] = code(n.nvmlDeviceGetCount)
n.nvmlShutdown()
"""
    out = steps(tmp_path, scenario_text, code)
    gone = 18  # NVML_ERROR_LIB_RM_VERSION_MISMATCH
    assert out["calls"] == [gone] * 5
    assert out["old_session"] == gone
    assert out["after_shutdown"] == 1  # UNINITIALIZED
    assert out["new_session"] == [2, 0]
    assert out["again"] == 0, "the fault fired once; a re-init does not restart the clock"


def test_driver_not_loaded_at_first(tmp_path: Path) -> None:
    path = tmp_path / "late.toml"
    path.write_text('name = "late"\n[[gpus]]\nmodel = "l4"\n[[faults]]\nkind = "driver_gone"\nrecover_after_s = 0.3\n')
    code = CHILD_HEAD + r"""
codes = []
deadline = time.monotonic() + 10
while time.monotonic() < deadline:
    try:
        n.nvmlInit()
        codes.append(0)
        break
    except n.NVMLError as e:
        codes.append(e.value)
        time.sleep(0.02)
print(json.dumps({"codes": codes, "count": n.nvmlDeviceGetCount()}))
"""
    proc = run_child(code, str(path))
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["codes"][-1] == 0 and out["count"] == 1
    assert len(out["codes"]) > 1 and set(out["codes"][:-1]) == {9}  # DRIVER_NOT_LOADED, then it loads


def test_event_wait_error_window(tmp_path: Path) -> None:
    scenario_text = (
        'name = "waits"\n[[gpus]]\nmodel = "h100-sxm5-80gb"\n'
        '[[faults]]\nkind = "event_wait_error"\nerror = "UNKNOWN"\nrecover_after_s = 2.0\n'
        # Due in the window, after the registration (events before it are not recorded).
        "[[events]]\ngpu = 0\nat_s = 1.0\nxid = 79\n"
    )
    code = r"""
es = n.nvmlEventSetCreate()
n.nvmlDeviceRegisterEvents(h[0], n.nvmlEventTypeXidCriticalError, es)
seen = []
def read():
    try:
        seen.append(int(n.nvmlEventSetWait_v2(es, 0).eventData))
        return True
    except n.NVMLError as e:
        seen.append(e.value)
        return False
until("waits to work", read)
out["seen"] = seen
out["power"] = code(n.nvmlDeviceGetPowerUsage, h[0])
"""
    out = steps(tmp_path, scenario_text, code)
    assert out["seen"][-1] == 79, "the XID waited out the window"
    assert len(out["seen"]) > 1 and set(out["seen"][:-1]) == {999}  # NVML_ERROR_UNKNOWN
    assert out["power"] == 0


def test_hang_without_function_blocks_every_call_of_that_gpu(tmp_path: Path) -> None:
    scenario_text = (
        'name = "hang-all"\n[[gpus]]\nmodel = "l4"\ncount = 2\n'
        '[[faults]]\nkind = "hang"\ngpu = 1\nafter_s = 0.2\nuntil_s = 1.5\n'
    )
    code = r"""
until("the hang to start", lambda: time.monotonic() >= t0 + 0.2)
results = {}
def call(name, f, *a):
    results[name] = code(f, *a)
threads = [threading.Thread(target=call, args=("lookup", n.nvmlDeviceGetHandleByIndex, 1)),
           threading.Thread(target=call, args=("name", n.nvmlDeviceGetName, h[1]))]
for t in threads:
    t.start()
out["gpu0"] = [code(n.nvmlDeviceGetName, h[0]), code(n.nvmlDeviceGetHandleByIndex, 0)]
out["blocked_meanwhile"] = sorted(results) == [] and all(t.is_alive() for t in threads)
for t in threads:
    t.join()
out["results"] = results
out["returned_after_until"] = time.monotonic() >= t_init + 1.5
"""
    out = steps(tmp_path, scenario_text, code)
    assert out["gpu0"] == [0, 0]
    assert out["blocked_meanwhile"] is True
    assert out["results"] == {"lookup": 0, "name": 0}
    assert out["returned_after_until"] is True

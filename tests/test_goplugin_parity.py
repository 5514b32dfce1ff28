"""Parity with HashiCorp's Go plugin (nomad-device-nvidia v1.1.0), as Nomad's client sees it.

HashiCorp's plugin cannot be built here: the Go module proxy refuses
github.com/hashicorp/nomad-device-nvidia at every version (403). So its view
of the simulated machine is derived from NVML itself, read with nvidia-ml-py on the
same simulated library, by that plugin's documented behaviour:
- devices: every GPU without MIG, and the MIG instances of GPUs with MIG on (the
  parent GPU itself is not a device), ID = NVML UUID, locality = PCI bus ID (a MIG
  instance's is its parent's);
- one group per device name (nvmlDeviceGetName), vendor "nvidia", type "gpu";
- group attributes, names/types/units below; driver_version from the system;
- stats for non-MIG GPUs, with the stat names and units below.
Ours must show at least that: same groups, IDs, attribute names, types and units.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any, Callable

import pytest

from conftest import REPO_ROOT, HarnessRun

SCENARIO = REPO_ROOT / "scenarios" / "8xh100-mig.toml"
SIM_LIB = REPO_ROOT / "build" / "sim" / "libnvidia-ml.so.1"

# Attribute -> (type, unit) as HashiCorp's plugin reports them.
GROUP_ATTRIBUTES = {
    "memory": ("int", "MiB"),
    "power": ("int", "W"),
    "bar1": ("int", "MiB"),
    "cores_clock": ("int", "MHz"),
    "memory_clock": ("int", "MHz"),
    "pci_bandwidth": ("int", "MB/s"),
    "display_state": ("string", ""),
    "persistence_mode": ("string", ""),
    "driver_version": ("string", ""),
}
# Present whatever NVML supports (the rest only when NVML answers for that device).
ALWAYS = {"display_state", "persistence_mode", "driver_version", "memory"}

# Stat -> unit; the summary is "Memory state".
STATS = {
    "Power usage": "W", "GPU utilization": "%", "Memory utilization": "%", "Encoder utilization": "%",
    "Decoder utilization": "%", "Temperature": "C", "Memory state": "MiB", "BAR1 buffer state": "MiB",
    "ECC L1 errors": "#", "ECC L2 errors": "#", "ECC memory errors": "#",
}

NVML_VIEW = """
import json, sys
from nomad_device_nvidia.nvidia.nvml.library import load_nvml
load_nvml(sys.argv[1], sys.argv[2])
import pynvml as n
n.nvmlInit()
def text(v): return v.decode() if isinstance(v, bytes) else v
def device(h, bus, mig):
    return {"uuid": text(n.nvmlDeviceGetUUID(h)), "name": text(n.nvmlDeviceGetName(h)), "bus": bus,
            "memory_mib": n.nvmlDeviceGetMemoryInfo(h).total >> 20, "mig": mig}
out = {"driver_version": text(n.nvmlSystemGetDriverVersion()), "devices": []}
for i in range(n.nvmlDeviceGetCount()):
    h = n.nvmlDeviceGetHandleByIndex(i)
    bus = text(n.nvmlDeviceGetPciInfo(h).busId)
    try:
        mig_on = n.nvmlDeviceGetMigMode(h)[0] == n.NVML_DEVICE_MIG_ENABLE
    except n.NVMLError_NotSupported:
        mig_on = False
    if not mig_on:
        out["devices"].append(device(h, bus, False))
        continue
    for j in range(n.nvmlDeviceGetMaxMigDeviceCount(h)):
        try:
            out["devices"].append(device(n.nvmlDeviceGetMigDeviceHandleByIndex(h, j), bus, True))
        except n.NVMLError_NotFound:
            pass
n.nvmlShutdown()
print(json.dumps(out))
"""


def nvml_view() -> dict[str, Any]:
    for needed in (SIM_LIB, SCENARIO):
        if not needed.exists():
            pytest.fail(f"{needed} is missing (make sim; scenarios/)")
    out = subprocess.run([sys.executable, "-c", NVML_VIEW, str(SIM_LIB), str(SCENARIO)], capture_output=True,
                         text=True, timeout=120, check=True)
    view: dict[str, Any] = json.loads(out.stdout)
    return view


def test_our_fingerprint_and_stats_cover_hashicorps(run_harness: Callable[..., HarnessRun], plugin_bin: Path,
                                                   tmp_path: Path) -> None:
    truth = nvml_view()
    expected: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for dev in truth["devices"]:
        expected[dev["name"]].append(dev)
    assert any(d["mig"] for d in truth["devices"]) and any(not d["mig"] for d in truth["devices"]), \
        "the scenario should hold both MIG instances and whole GPUs"

    config = tmp_path / "nvidia.hcl"
    config.write_text(f'config {{\n  simulate = "{SCENARIO}"\n  nvml_library = "{SIM_LIB}"\n}}\n')
    run = run_harness("session", "--plugin", plugin_bin, "--config", config, "--stats", "1",
                      "--interval", "200ms").ok()
    groups = {g["name"]: g for g in run.of("fingerprint")[0]["groups"]}

    assert set(expected) <= set(groups), f"groups: ours {sorted(groups)}, HashiCorp's {sorted(expected)}"
    for name, devices in expected.items():
        ours = groups[name]
        assert (ours["vendor"], ours["type"]) == ("nvidia", "gpu")
        by_id = {d["id"]: d for d in ours["devices"]}
        assert set(by_id) == {d["uuid"] for d in devices}, name
        for dev in devices:
            # The same address; ours in sysfs form (lower case, 4-digit domain), which
            # Nomad's NUMA matcher finds in /sys/bus/pci/devices, where NVML's is not.
            bus = by_id[dev["uuid"]]["pci_bus_id"]
            assert bus == bus.lower() and re.fullmatch(r"[0-9a-f]{4}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]", bus), dev
            assert bus.lstrip("0") == dev["bus"].lower().lstrip("0"), dev
        attrs = ours["attributes"]
        assert ALWAYS <= set(attrs), (name, sorted(attrs))
        whole_gpu = not devices[0]["mig"]
        for attr, (typ, unit) in GROUP_ATTRIBUTES.items():
            if attr not in attrs:
                assert not whole_gpu, f"{name}: no {attr}"
                continue
            assert (attrs[attr]["type"], attrs[attr]["unit"]) == (typ, unit), (name, attr, attrs[attr])
        assert attrs["memory"]["value"] == devices[0]["memory_mib"]
        assert attrs["driver_version"]["value"] == truth["driver_version"]

    whole_gpus = {d["uuid"] for d in truth["devices"] if not d["mig"]}
    instances = {i: s for g in run.one("stats")["groups"] for i, s in g["instances"].items()}
    assert whole_gpus <= set(instances)
    for uuid in whole_gpus:
        stats = instances[uuid]
        assert stats["summary"]["Unit"] == "MiB" and stats["summary"]["Desc"] == "UsedMemory / TotalMemory"
        values = stats["stats"]["Attributes"]
        for stat, unit in STATS.items():
            assert stat in values and values[stat].get("Unit", "") == unit, (uuid, stat, values.get(stat))

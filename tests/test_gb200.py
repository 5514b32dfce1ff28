"""Through Nomad's own client code (the Go harness), a GB200
NVL72 compute tray (scenarios/gb200-tray.toml: four GB200 GPUs in one NVLink
domain, GPU 3 in MIG mode) on the simulated driver.

- the Stats of every GPU and every MIG instance carry the GPM stats with the
  scenario's values (both engines);
- the fingerprint carries the fabric and NVLink attributes;
- a GPU whose fabric is not ready (tests/scenarios/fault-gb200-fabric.toml) is
  unhealthy with "NVLink fabric not ready: in progress", then healthy, and one
  whose fabric health mask degrades is unhealthy only meanwhile;
- Reserve hands out the IMEX channel and the container toolkit toggles.

One Stats response of a MIG instance, as the client decoded it, goes to
build/gb200-mig-stats.json (for the closing note).
"""

from __future__ import annotations

import json
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from conftest import REPO_ROOT, HarnessRun
from test_health_faults import Timeline, device_status, sim_config, sim_gpus, timeline  # noqa: F401

TRAY = REPO_ROOT / "scenarios" / "gb200-tray.toml"
FABRIC_FAULT = REPO_ROOT / "tests" / "scenarios" / "fault-gb200-fabric.toml"
MIG_STATS_OUT = REPO_ROOT / "build" / "gb200-mig-stats.json"

# Stat name -> the scenario's metric key.
GPM = {
    "Graphics activity": "gpm_graphics_util",
    "SM activity": "gpm_sm_util",
    "SM occupancy": "gpm_sm_occupancy",
    "Tensor activity": "gpm_tensor_util",
    "DRAM bandwidth utilization": "gpm_dram_bw_util",
    "PCIe TX": "gpm_pcie_tx_mibps",
    "PCIe RX": "gpm_pcie_rx_mibps",
    "NVLink TX": "gpm_nvlink_tx_mibps",
    "NVLink RX": "gpm_nvlink_rx_mibps",
}
PERCENTS = list(GPM)[:5]


def expected_gpm(metrics: dict[str, float]) -> dict[str, tuple[str, float | int]]:
    """Stat -> (unit, value) as the plugin sends the scenario's metrics: percentages
    with two decimals, NVML's MiB/s as MB/s."""
    out: dict[str, tuple[str, float | int]] = {}
    for stat, key in GPM.items():
        v = float(metrics[key])
        out[stat] = ("%", round(v, 2)) if stat in PERCENTS else ("MB/s", round(v * 1.048576))
    return out


def decoded_gpm(instance: dict[str, Any]) -> dict[str, tuple[str, Any]]:
    """The GPM object of one instance's stats as Nomad's client decoded them."""
    attrs = instance["stats"]["Nested"]["GPM"]["Attributes"]
    out = {}
    for name, v in attrs.items():
        value = v.get("FloatNumeratorVal", v.get("IntNumeratorVal", v.get("StringVal")))
        out[name] = (v["Unit"], value)
    return out


def session(run_harness: Callable[..., HarnessRun], plugin_bin: Path, tmp_path: Path, engine: str,
            reserve: list[str]) -> HarnessRun:
    cfg = sim_config(tmp_path, TRAY, name=engine, stats_engine=engine, extended_stats=True,
                     reserve={"imex_channels": [0], "gds": True, "gdrcopy": True})
    args: list[str | Path] = ["session", "--plugin", plugin_bin, "--config", cfg, "--stats", "3",
                              "--interval", "300ms", "--logs"]
    for ids in reserve:
        args += ["--reserve", ids]
    return run_harness(*args).ok()


@pytest.mark.parametrize("engine", ["native", "python"])
def test_gpm_stats_of_every_gpu_and_mig_instance_and_the_fabric_attributes(
        run_harness: Callable[..., HarnessRun], plugin_bin: Path, tmp_path: Path, engine: str) -> None:
    scenario = tomllib.loads(TRAY.read_text())
    whole, migs = scenario["gpus"]
    gpus = sim_gpus(TRAY)
    whole_ids = [g["uuid"] for g in gpus[:3]]
    mig_ids = [m["uuid"] for m in gpus[3]["migs"]]
    assert len(mig_ids) == 4 and not gpus[3]["migs"][0]["uuid"].startswith("GPU-")
    run = session(run_harness, plugin_bin, tmp_path, engine, [whole_ids[0]])

    # Fingerprint: the NVLink domain and the links, on the GPUs' group and the MIG groups.
    fingerprint = run.of("fingerprint")[0]
    groups = {g["name"]: g for g in fingerprint["groups"]}
    assert set(groups) == {"NVIDIA GB200", "NVIDIA GB200 MIG 3g.93gb", "NVIDIA GB200 MIG 2g.46gb",
                           "NVIDIA GB200 MIG 1g.23gb"}
    for name, g in groups.items():
        assert g["validate_error"] is None, name
        a = g["attributes"]
        assert (a["fabric_cluster_uuid"]["type"], a["fabric_cluster_uuid"]["value"]) == (
            "string", whole["fabric"]["cluster_uuid"]), name
        assert (a["fabric_clique"]["type"], a["fabric_clique"]["value"]) == ("int", 32766), name
        assert (a["nvlink_links"]["value"], a["nvlink_bandwidth"]["value"], a["nvlink_bandwidth"]["unit"]) == (
            18, 900000, "MB/s"), name
        assert a["architecture"]["value"] == "blackwell" and a["compute_capability"]["value"] == "10.0"
        assert all(d["healthy"] for d in g["devices"]), name
    assert {d["id"] for d in groups["NVIDIA GB200"]["devices"]} == set(whole_ids)

    # Stats: the first answer has no interval yet (N/A); the last one the scenario's values.
    stats = run.of("stats")
    assert len(stats) == 3 and all(s.get("error") is None for s in stats)
    first = {dev: s for g in stats[0]["groups"] for dev, s in g["instances"].items()}
    assert {v for s in first.values() for _, v in decoded_gpm(s).values()} == {"N/A"}
    last = {dev: (g["name"], s) for g in stats[-1]["groups"] for dev, s in g["instances"].items()}
    assert set(last) == set(whole_ids) | set(mig_ids), "every GPU and every MIG instance"
    for dev in whole_ids:
        assert decoded_gpm(last[dev][1]) == expected_gpm(whole["stats"]), dev
    for dev in mig_ids:
        group, s = last[dev]
        assert decoded_gpm(s) == expected_gpm(migs["mig_stats"]), dev
        # A MIG instance finally has real activity; NVML's utilization is still N/A there.
        assert s["stats"]["Attributes"]["GPU utilization"]["StringVal"] == "N/A"
        assert s["stats"]["Attributes"]["Memory state"]["IntNumeratorVal"] == migs["mig_stats"]["memory_used_mib"]
    descs = {name: v["Desc"] for name, v in last[mig_ids[0]][1]["stats"]["Nested"]["GPM"]["Attributes"].items()}
    assert all(len(d) > 40 for d in descs.values()), descs

    # Reserve: the IMEX channel and the toolkit toggles, beside the device.
    (reserve,) = run.of("reserve")
    assert reserve["error"] is None
    envs = reserve["reservation"]["envs"]
    assert envs == {"NVIDIA_VISIBLE_DEVICES": whole_ids[0], "NVIDIA_IMEX_CHANNELS": "0",
                    "NVIDIA_GDS": "enabled", "NVIDIA_GDRCOPY": "enabled"}

    if engine == "native":
        MIG_STATS_OUT.parent.mkdir(parents=True, exist_ok=True)
        MIG_STATS_OUT.write_text(json.dumps({"group": last[mig_ids[0]][0], "device": mig_ids[0],
                                             "stats": last[mig_ids[0]][1]}, indent=2, sort_keys=True) + "\n")


NOT_READY = "NVLink fabric not ready: in progress"
DEGRADED = "NVLink fabric unhealthy: bandwidth degraded"


def test_a_fabric_not_ready_gpu_is_unhealthy_then_healthy(timeline: Callable[..., Timeline],  # noqa: F811
                                                          tmp_path: Path) -> None:
    gpus = [g["uuid"] for g in sim_gpus(FABRIC_FAULT)]
    late, degraded = gpus[1], gpus[2]
    cfg = sim_config(tmp_path, FABRIC_FAULT, fingerprint_period="1s",
                     health={"call_timeout": "1s", "probe_interval": "500ms"})
    tl = timeline(cfg, [
        "devices:7@20s",
        f"unhealthy:{late}:{NOT_READY}",
        f"unhealthy:{degraded}:{DEGRADED}@10s",
        f"healthy:{degraded}@10s",
        f"healthy:{late}@10s",
        # The scan that follows the fabric's completion brings the registered GPU's fabric
        # attributes: a few more answers for it to land in.
        "ticks:5@20s",
    ], interval="400ms").ok()
    first = tl.first_with_devices()
    status = device_status(first)
    # Registration in progress from the start: unhealthy in the first answer, the others not.
    assert status[late] == (False, NOT_READY), status
    assert status[gpus[0]] == (True, "")
    whole = next(g for g in first["groups"] if g["name"] == "NVIDIA GB200")
    # Its GPUs disagree on the fabric (GPU 1 has none yet): the group has no fabric attributes.
    assert "fabric_cluster_uuid" not in whole["attributes"] and "nvlink_links" in whole["attributes"]
    # In order: degraded (1 s to 3 s) and back, then the late GPU's fabric completes (4 s).
    assert [s["index"] for s in tl.steps] == list(range(6))
    assert device_status(tl.by(2))[degraded] == (False, DEGRADED)
    assert device_status(tl.by(4))[late] == (True, "")
    final = tl.fingerprints[-1]
    assert all(healthy for healthy, _ in device_status(final).values()), device_status(final)
    whole = next(g for g in final["groups"] if g["name"] == "NVIDIA GB200")
    assert whole["attributes"]["fabric_cluster_uuid"]["value"] == "6d2c4a8e-1f3b-4c7d-9e5a-0b8f2d6c4e1a"
    assert whole["attributes"]["fabric_clique"]["value"] == 32766

"""The NVIDIA backend on the simulated driver, through the real NVML C API.

Each test runs the real NvidiaDevicePlugin in a child process (NVML state is per
process) over build/sim/libnvidia-ml.so.1 (`make sim`) and checks its transcript.
Waits are bounded only so a broken build fails instead of hanging; nothing
asserts on timing.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path
from typing import Any

import pytest
import sim_branches
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

REPO = Path(__file__).resolve().parents[1]
CHILD = Path(__file__).with_name("nvidia_backend_child.py")
SIM_LIB = REPO / "build" / "sim" / "libnvidia-ml.so.1"
READY_MADE = ["1gpu", "8xh100-mig", "8xa100-mixed-mig", "gh200", "4096gpus", "faulty"]

L4_PAIR = '[[gpus]]\nmodel = "l4"\ncount = 2\n'
HANG_L4 = """
[[gpus]]
model = "l4"
count = 1

[[faults]]
kind = "hang"
gpu = 0
function = "nvmlDeviceGetMaxClockInfo"
duration_ms = 60000
calls = 1
"""

ALL_HEALTHY = "all(d['healthy'] for g in groups for d in g['devices'])"
ANY_UNHEALTHY = "any(not d['healthy'] for g in groups for d in g['devices'])"


def why_contains(fragment: str) -> str:
    """A wait predicate: some device's health description mentions `fragment`."""
    return f'any({fragment.lower()!r} in d["why"].lower() for g in groups for d in g["devices"])'


def run_child(steps: list[dict[str, Any]], timeout: float = 180) -> tuple[list[dict[str, Any]], str]:
    assert SIM_LIB.exists(), f"{SIM_LIB} missing: run `make sim`"
    env = dict(os.environ)
    env["NOMAD_DEVICE_NVIDIA_SIM_LIB"] = str(SIM_LIB)
    env.pop("NVML_SIM_SCENARIO", None)
    proc = subprocess.run(
        [sys.executable, str(CHILD), json.dumps(steps)],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout), proc.stderr


def stream(config: dict[str, Any], *steps: dict[str, Any], shutdown: bool = False) -> tuple[list[dict[str, Any]], str]:
    """run_child of: set `config`, start the Fingerprint stream, `steps`, stop it (and shut down).
    The answers keep their places: config is out[0], start out[1], steps from out[2]."""
    end = [{"op": "stop"}, *([{"op": "shutdown"}] if shutdown else [])]
    return run_child([{"op": "config", "config": config}, {"op": "start"}, *steps, *end])


def scenario(tmp_path: Path, body: str, name: str = "t") -> str:
    path = tmp_path / f"{name}.toml"
    path.write_text(f'name = "{name}"\n' + textwrap.dedent(body))
    return str(path)


def devices(groups: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [d for g in groups for d in g["devices"]]


def ids(groups: list[dict[str, Any]]) -> list[str]:
    return [d["id"] for d in devices(groups)]


def unhealthy(groups: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [d for d in devices(groups) if not d["healthy"]]


def until_unhealthy(path: str, *steps: dict[str, Any]) -> tuple[list[dict[str, Any]], str]:
    """Streams scenario `path` until some device is unhealthy (out[2], asserted reached), then `steps`."""
    out, log = stream({"simulate": path, "fingerprint_period": "1h"}, {"op": "wait", "until": ANY_UNHEALTHY, "max_s": 60}, *steps)
    assert "timeout" not in out[2], out[2]
    return out, log


def check_invariants(groups: list[dict[str, Any]]) -> None:
    all_ids = ids(groups)
    assert len(all_ids) == len(set(all_ids)), "a device appears twice"
    assert len({g["name"] for g in groups}) == len(groups), "two groups share a name"
    for g in groups:
        assert (g["vendor"], g["type"]) == ("nvidia", "gpu")
        assert g["devices"], f"empty group {g['name']}"
        attrs = g["attributes"]
        # HashiCorp's attributes with their types and units. The ones an operator or
        # the slot can change are left out when the group's devices disagree on them.
        assert attrs["memory"][1:] == ["MiB", "int"]
        assert attrs["driver_version"][2] == "str"
        if "power" in attrs:
            assert attrs["power"][1:] == ["W", "int"]
        if "pci_bandwidth" in attrs:
            assert attrs["pci_bandwidth"][1:] == ["MB/s", "int"]
        for mode in ("display_state", "persistence_mode"):
            if mode in attrs:
                assert attrs[mode][2] == "str"
        for clock in ("cores_clock", "memory_clock"):
            if clock in attrs:
                assert attrs[clock][1:] == ["MHz", "int"]
        if "bar1" in attrs:
            assert attrs["bar1"][1:] == ["MiB", "int"]
        if "MIG" in g["name"]:
            assert attrs["mig_profile"][0] == g["name"].rsplit(" MIG ", 1)[1]
            # Only when every instance of the group is carved from the same GPU.
            if "parent_uuid" in attrs:
                assert attrs["parent_uuid"][0].startswith("GPU-") and "," not in attrs["parent_uuid"][0]
            assert all(d["id"].startswith("MIG-") for d in g["devices"])
        else:
            assert all(d["id"].startswith("GPU-") for d in g["devices"])
        for d in g["devices"]:
            assert d["pci"], "hardware locality (PCI bus ID) missing"


def expected_device_count(path: Path) -> int:
    data = tomllib.loads(path.read_text())
    total = 0
    for gpu in data.get("gpus", []):
        count = gpu.get("count", 1)
        mig = gpu.get("mig")
        total += count * (len(mig) if mig is not None else 1)
    return total


def first_answer(path: str, extra: list[dict[str, Any]] | None = None) -> tuple[list[dict[str, Any]], str]:
    first = {"op": "wait", "until": "True", "max_s": 120}
    out, log = stream({"simulate": path, "fingerprint_period": "1h"}, first, *(extra or []), shutdown=True)
    assert out[0] == {"ok": True}
    assert "groups" in out[2], out[2]
    assert out[-2]["ended"], "stream did not return after stop"
    return out, log


@pytest.mark.parametrize("name", READY_MADE)
def test_ready_made_scenarios(name: str) -> None:
    path = REPO / "scenarios" / f"{name}.toml"
    out, log = first_answer(str(path))
    groups = out[2]["groups"]
    check_invariants(groups)
    assert "simulat" in log.lower(), "the simulation must be announced in the log"
    if name != "faulty":
        assert len(ids(groups)) == expected_device_count(path)
        assert all(d["healthy"] for d in devices(groups))
    if name == "gh200":
        assert all("bar1" not in g["attributes"] for g in groups)
    if name in ("8xh100-mig", "8xa100-mixed-mig", "1gpu"):
        # An independent look through pynvml: IDs are real, MIG parents are never offered.
        view = run_child(
            [
                {"op": "config", "config": {"simulate": str(path)}},
                {"op": "reserve", "ids": ids(groups)[:1]},
                {"op": "nvml_view", "ids": ids(groups)},
            ]
        )[0][2]
        assert not set(view["mig_parents"]) & set(ids(groups))
        by_name = {d["id"]: g for g in groups for d in g["devices"]}
        for i, info in view["ids"].items():
            assert by_name[i]["name"] == info["name"]
            if info["mig"]:
                assert info["parent"] in view["mig_parents"]
                assert by_name[i]["attributes"].get("parent_uuid", [info["parent"]])[0] == info["parent"]
        offered_gpus = {i for i, info in view["ids"].items() if not info["mig"]}
        assert offered_gpus == set(view["gpus"]) - set(view["mig_parents"])
        if name == "8xh100-mig":
            assert view["mig_parents"] and any(i["mig"] for i in view["ids"].values())
            h100 = next(g for g in groups if g["name"] == "NVIDIA H100 80GB HBM3")["attributes"]
            assert h100["architecture"][0] == "hopper"
            assert h100["compute_capability"][0] == "9.0"
            assert h100["cuda_driver_version"][2] == "str"


def test_two_gpus_and_mig_attributes(tmp_path: Path) -> None:
    path = scenario(
        tmp_path,
        """
        [[gpus]]
        model = "h100-sxm5-80gb"
        count = 2

        [[gpus]]
        model = "a100-sxm4-40gb"
        count = 1
        mig = ["3g.20gb", "1g.5gb", "1g.5gb"]
        """,
    )
    out, _ = first_answer(path)
    groups = {g["name"]: g for g in out[2]["groups"]}
    check_invariants(list(groups.values()))
    h100 = groups["NVIDIA H100 80GB HBM3"]
    assert len(h100["devices"]) == 2
    assert h100["attributes"]["memory"][0] > 80000
    assert h100["attributes"]["architecture"][0] == "hopper"
    small = groups["NVIDIA A100-SXM4-40GB MIG 1g.5gb"]
    assert len(small["devices"]) == 2
    assert small["attributes"]["mig_profile"][0] == "1g.5gb"
    assert small["attributes"]["memory"][0] < 6000
    assert small["attributes"]["architecture"][0] == "ampere"
    assert "NVIDIA A100-SXM4-40GB" not in groups  # the MIG parent is not offered
    big = groups["NVIDIA A100-SXM4-40GB MIG 3g.20gb"]
    assert big["attributes"]["parent_uuid"] == small["attributes"]["parent_uuid"]


def test_lost_gpu_mid_stream_is_unhealthy_then_recovers(tmp_path: Path) -> None:
    path = scenario(
        tmp_path,
        """
        [[gpus]]
        model = "h100-sxm5-80gb"
        count = 2

        [[faults]]
        kind = "lost"
        gpu = 1
        after_s = 1.0
        recover_after_s = 2.0
        """,
    )
    config = {"simulate": path, "fingerprint_period": "1h", "health": {"probe_interval": "200ms"}}
    out, _ = stream(
        config,
        {"op": "wait", "until": ALL_HEALTHY, "max_s": 60},
        {"op": "wait", "until": ANY_UNHEALTHY, "max_s": 60},
        {"op": "wait", "until": ALL_HEALTHY + " and len(answers) > 2", "max_s": 60},
        shutdown=True,
    )
    first, lost, back = out[2], out[3], out[4]
    assert len(ids(first["groups"])) == 2
    assert "timeout" not in lost, lost
    sick = unhealthy(lost["groups"])
    assert len(sick) == 1, "only the lost GPU is unhealthy"
    assert "lost" in sick[0]["why"].lower()
    assert ids(lost["groups"]) == ids(first["groups"]), "a lost GPU stays listed, unhealthy"
    assert "timeout" not in back, back
    assert all(d["why"] == "" for d in devices(back["groups"]))
    assert out[5]["ended"] and out[5]["error"] == ""


def test_xid_marks_only_its_device_ignored_xids_do_not_and_reserve_refuses(tmp_path: Path) -> None:
    path = scenario(
        tmp_path,
        """
        [[gpus]]
        model = "h100-sxm5-80gb"
        count = 3

        # Events due before the plugin registered its GPUs are not recorded
        # (nvml.h): these come due a while after it starts.
        [[events]]
        gpu = 0
        at_s = 1.5
        xid = 13

        [[events]]
        gpu = 2
        at_s = 2.0
        xid = 48
        """,
    )
    out, log = until_unhealthy(path, {"op": "nvml_view", "ids": []})
    answer, view = out[2], out[3]
    gpus = view["gpus"]
    status = {d["id"]: d for d in devices(answer["groups"])}
    assert status[gpus[0]]["healthy"], "XID 13 is an application fault"
    assert status[gpus[1]]["healthy"]
    assert not status[gpus[2]]["healthy"]
    assert "XID 48" in status[gpus[2]]["why"]
    assert "XID 13" in log  # noted, not acted on

    out, _ = until_unhealthy(path, {"op": "reserve", "ids": [gpus[1], gpus[2], "GPU-nope"]},
                             {"op": "reserve", "ids": [gpus[1], gpus[0]]})
    refused, ok = out[3], out[4]
    assert refused["kind"] == "ReservationRefused"
    assert "unknown device IDs: GPU-nope" in refused["refused"]
    assert f"unhealthy device IDs: {gpus[2]} (XID 48" in refused["refused"]
    assert gpus[1] not in refused["refused"]
    assert ok["envs"] == {"NVIDIA_VISIBLE_DEVICES": f"{gpus[1]},{gpus[0]}"}


def test_xid_cleared_by_reset(tmp_path: Path) -> None:
    path = scenario(
        tmp_path,
        """
        [[gpus]]
        model = "a100-sxm4-40gb"
        count = 2

        [[events]]
        gpu = 1
        at_s = 1.5
        xid = 79

        [[faults]]
        kind = "lost"
        gpu = 1
        after_s = 3.0
        recover_after_s = 1.0
        """,
    )
    config = {"simulate": path, "fingerprint_period": "1h", "health": {"probe_interval": "100ms"}}
    out, _ = stream(
        config,
        {"op": "wait", "until": "any('XID 79' in d['why'] for g in groups for d in g['devices'])", "max_s": 60},
        {"op": "wait", "until": "any('lost' in d['why'].lower() for g in groups for d in g['devices'])", "max_s": 60},
        {"op": "wait", "until": ALL_HEALTHY, "max_s": 60},
    )
    for step in out[2:5]:
        assert "timeout" not in step, step
    assert "XID 79 (GPU has fallen off the bus)" in " ".join(d["why"] for d in devices(out[2]["groups"]))


def test_xid_on_a_mig_gpu_marks_its_instances_only(tmp_path: Path) -> None:
    path = scenario(
        tmp_path,
        """
        [[gpus]]
        model = "a100-sxm4-40gb"
        count = 2
        mig = ["3g.20gb", "3g.20gb"]

        [[events]]
        gpu = 0
        at_s = 1.5
        xid = 94
        """,
    )
    out, _ = until_unhealthy(path)
    answer = out[2]
    sick = unhealthy(answer["groups"])
    assert len(sick) == 2 and len(devices(answer["groups"])) == 4
    assert all("XID 94 (contained ECC error)" in d["why"] for d in sick)


def test_not_supported_metrics_leave_attributes_out_and_stats_keep_flowing(tmp_path: Path) -> None:
    path = scenario(
        tmp_path,
        """
        [[gpus]]
        model = "h100-sxm5-80gb"
        count = 2

        [[faults]]
        kind = "not_supported"
        functions = ["nvmlDeviceGetPowerManagementLimit", "nvmlDeviceGetMaxClockInfo", "nvmlDeviceGetNumaNodeId",
                     "nvmlDeviceGetArchitecture", "nvmlDeviceGetPowerUsage", "nvmlDeviceGetTemperature"]
        """,
    )
    out, _ = first_answer(
        path, [{"op": "config", "config": {"simulate": path, "stats_engine": "python"}}, {"op": "stats", "ticks": 2}]
    )
    groups = out[2]["groups"]
    check_invariants(groups)
    attrs = groups[0]["attributes"]
    assert attrs["power"][0] == 0  # as HashiCorp's plugin reports it
    assert "cores_clock" not in attrs and "memory_clock" not in attrs and "architecture" not in attrs
    assert "numa_node" not in attrs
    assert all(d["healthy"] for d in devices(groups)), "an unsupported metric is not a sick GPU"
    ticks = out[4]["ticks"]
    assert len(ticks) >= 2 and sorted(ticks[0]["NVIDIA H100 80GB HBM3"]) == sorted(ids(groups))


def test_init_failure_keeps_the_stream_open_with_no_devices_and_one_log_line(tmp_path: Path) -> None:
    path = scenario(tmp_path, '[init]\nerror = "DRIVER_NOT_LOADED"\n\n[[gpus]]\nmodel = "l4"\n')
    out, log = stream(
        {"simulate": path, "fingerprint_period": "1s"},
        {"op": "wait", "until": "True", "max_s": 60},
        {"op": "reserve", "ids": ["GPU-x"]},
        # Two retries more (backoff 1 s, capped at the period): still one line.
        {"op": "wait_tries", "n": 3},
    )
    assert out[2]["groups"] == [] and out[2]["count"] == 1, out[2]
    assert out[3]["kind"] == "ReservationRefused" and "GPU-x" in out[3]["refused"]
    assert out[4]["tries"] >= 3, out[4]
    assert out[5]["ended"] and out[5]["error"] == "", out[5]  # open until stopped
    lines = [line for line in log.splitlines() if "NVML failed to initialise" in line]
    assert len(lines) == 1 and "retrying with backoff" in lines[0], log


NO_NVML_LINE = (
    "no libnvidia-ml.so.1 on this machine (no NVIDIA driver installed; the dynamic loader searched"
    " LD_LIBRARY_PATH (unset), /etc/ld.so.cache, /lib and /usr/lib); no NVIDIA devices will be reported"
)


def test_no_nvml_library_at_all() -> None:
    # This machine has no NVIDIA driver: the system libnvidia-ml.so.1 is absent.
    out, log = stream(
        {"fingerprint_period": "1s"},
        {"op": "wait", "until": "True", "max_s": 60},
        {"op": "wait_tries", "n": 3},  # two more checks, no more lines
    )
    assert out[2]["groups"] == [] and out[2]["count"] == 1
    assert out[3]["tries"] >= 3, out[3]
    assert out[4]["ended"] and out[4]["error"] == ""
    # Exactly one line about it, the one docs/configuration.md quotes.
    lines = [line for line in log.splitlines() if "libnvidia-ml.so.1" in line or "NVIDIA devices" in line]
    assert len(lines) == 1 and NO_NVML_LINE + " (checking again every 1s)" in lines[0], log


def test_transient_init_failure_is_retried(tmp_path: Path) -> None:
    path = scenario(tmp_path, '[init]\nerror = "UNKNOWN"\nfail_count = 2\n\n[[gpus]]\nmodel = "l4"\ncount = 2\n')
    out, log = stream(
        {"simulate": path, "fingerprint_period": "1s"},  # the backoff's cap: a retry a second
        {"op": "wait", "until": "len(groups) > 0", "max_s": 60},
    )
    answer = out[2]
    assert "timeout" not in answer, answer
    assert len(ids(answer["groups"])) == 2
    assert answer["count"] == 2  # first an empty answer at once, then the devices
    assert "retrying" in log


def test_config_changes_through_set_config(tmp_path: Path) -> None:
    path = scenario(tmp_path, '[[gpus]]\nmodel = "h100-sxm5-80gb"\ncount = 3\n')
    base = {"simulate": path, "fingerprint_period": "1h"}
    out, _ = run_child(
        [
            {"op": "config", "config": base},
            {"op": "start"},
            {"op": "wait", "until": "True"},
            {"op": "nvml_view", "ids": []},
        ]
    )
    gpus = out[3]["gpus"]
    shares = {"sharing": {"shares": 2}}
    out, _ = run_child(
        [
            {"op": "config", "config": base},
            {"op": "start"},
            {"op": "wait", "until": "len(answers) == 1"},
            {"op": "config", "config": {**base, "ignored_gpu_ids": [gpus[0]]}},
            {"op": "wait", "until": "len(answers) == 2"},
            {"op": "config", "config": {**base, "fingerprint_period": "not-a-duration"}},
            {"op": "config", "config": {**base, "ignored_gpu_ids": [gpus[0]], **shares}},
            {"op": "wait", "until": "len(answers) == 3"},
            {"op": "reserve", "ids": [f"{gpus[2]}::1", f"{gpus[1]}::0", f"{gpus[2]}::0"]},
            {"op": "reserve", "ids": [gpus[1]]},
            {"op": "reserve", "ids": [f"{gpus[0]}::0"]},
            {"op": "config", "config": {**base, "reserve": {"cuda_visible_devices": True}}},
            {"op": "wait", "until": "len(answers) == 4"},
            {"op": "reserve", "ids": [gpus[0]]},
            {"op": "config", "config": {**base, "enabled": False}},
            {"op": "wait", "until": "False", "max_s": 10},
            {"op": "stop"},
            {"op": "reserve", "ids": [gpus[0]]},
        ]
    )
    assert sorted(ids(out[2]["groups"])) == sorted(gpus)
    assert sorted(ids(out[4]["groups"])) == sorted(gpus[1:])
    assert 'config key "fingerprint_period"' in out[5]["error"]
    shared = out[7]["groups"]
    assert sorted(ids(shared)) == sorted(f"{g}::{k}" for g in gpus[1:] for k in range(2))
    assert shared[0]["attributes"]["shares"][0] == 2
    assert out[8]["envs"] == {"NVIDIA_VISIBLE_DEVICES": f"{gpus[2]},{gpus[1]}"}
    assert "unknown device IDs" in out[9]["refused"]  # the plain UUID is not offered while sharing
    assert "unknown device IDs" in out[10]["refused"]  # ignored GPU
    assert sorted(ids(out[12]["groups"])) == sorted(gpus)
    assert out[13]["envs"] == {"NVIDIA_VISIBLE_DEVICES": gpus[0], "CUDA_VISIBLE_DEVICES": gpus[0]}
    assert out[15].get("ended"), "disabling the plugin ends the stream"
    assert out[16]["ended"]
    assert out[17] == {"refused": "device is not enabled", "kind": "PluginDisabled"}


def test_lazy_init_and_clean_shutdown(tmp_path: Path) -> None:
    path = scenario(tmp_path, '[[gpus]]\nmodel = "l4"\n')
    out, _ = run_child(
        [
            # The event wait lasts the probe interval (at least 500 ms).
            {"op": "config", "config": {"simulate": path, "health": {"probe_interval": "500ms"}}},
            {"op": "nvml_loaded"},
            {"op": "threads"},
            {"op": "reserve", "ids": []},
            {"op": "nvml_loaded"},
            {"op": "start"},
            {"op": "wait", "until": "True"},
            {"op": "nvml_loaded"},
            {"op": "threads"},
            {"op": "stop"},
            {"op": "shutdown"},
            {"op": "nvml_initialised"},
            # The event watcher ends when its wait in progress returns, and NVML is shut down then.
            {"op": "threads", "gone": "nvidia-events", "max_s": 10},
            {"op": "nvml_initialised"},
        ]
    )
    assert out[1] == {"loaded": False}, "nothing may load NVML before it is needed"
    assert "nvidia-watch" not in out[2]["names"]
    assert out[4] == {"loaded": False}
    assert out[7] == {"loaded": True}
    assert "nvidia-watch" in out[8]["names"] and "nvidia-events" in out[8]["names"]
    assert out[9]["ended"]
    assert out[11] == {"initialised": True}, "shutdown does not wait for the event wait in progress"
    assert "nvidia-watch" not in out[12]["names"] and "nvidia-events" not in out[12]["names"]
    assert out[13] == {"initialised": False}, "NVML is shut down once the event wait returns"


def test_reserve_before_any_fingerprint_scans_lazily(tmp_path: Path) -> None:
    path = scenario(tmp_path, '[[gpus]]\nmodel = "l4"\ncount = 2\n')
    out, _ = run_child(
        [
            {"op": "config", "config": {"simulate": path}},
            {"op": "reserve", "ids": ["GPU-unknown"]},
            {"op": "nvml_view", "ids": []},
        ]
    )
    assert out[1]["kind"] == "ReservationRefused" and "GPU-unknown" in out[1]["refused"]
    gpus = out[2]["gpus"]
    out, _ = run_child([{"op": "config", "config": {"simulate": path}}, {"op": "reserve", "ids": gpus[::-1]}])
    assert out[1]["envs"]["NVIDIA_VISIBLE_DEVICES"] == ",".join(gpus[::-1])


# ---- hypothesis over random scenarios ----

MIG_LAYOUTS = {
    "a100-sxm4-40gb": [["7g.40gb"], ["3g.20gb", "3g.20gb"], ["2g.10gb", "1g.5gb", "1g.5gb"], []],
    "h100-sxm5-80gb": [["7g.80gb"], ["3g.40gb", "2g.20gb", "1g.10gb"], ["1g.10gb", "1g.10gb"]],
}


@st.composite
def random_scenarios(draw: st.DrawFn) -> str:
    parts = []
    for _ in range(draw(st.integers(min_value=1, max_value=3))):
        model = draw(st.sampled_from(["h100-sxm5-80gb", "a100-sxm4-40gb", "gh200-96gb", "l4"]))
        count = draw(st.integers(min_value=1, max_value=4))
        part = f'[[gpus]]\nmodel = "{model}"\ncount = {count}\n'
        if model in MIG_LAYOUTS and draw(st.booleans()):
            part += f"mig = {json.dumps(draw(st.sampled_from(MIG_LAYOUTS[model])))}\n"
        if draw(st.booleans()):
            part += f"power_limit_w = {draw(st.sampled_from([300, 450, 700]))}\n"
        parts.append(part)
    numa = draw(st.integers(min_value=1, max_value=2))
    return f"[topology]\nnuma_nodes = {numa}\n\n" + "\n".join(parts)


# Sixteen plugin processes: `make test` runs it, `make check` leaves it out.
@pytest.mark.slow
@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=random_scenarios(), shares=st.integers(min_value=1, max_value=3), data=st.data())
def test_random_scenarios_properties(tmp_path: Path, body: str, shares: int, data: st.DataObject) -> None:
    path = tmp_path / "random.toml"
    path.write_text('name = "random"\n' + body)
    config = {"simulate": str(path), "fingerprint_period": "1h", "sharing": {"shares": shares}}
    out, _ = stream(config, {"op": "wait", "until": "True"})
    groups = out[2]["groups"]
    check_invariants(groups)
    # Scenarios without power_limit_w overrides have one power limit per model: it stays.
    if "power_limit_w" not in body:
        assert all("power" in g["attributes"] for g in groups)
    assert len(ids(groups)) == expected_device_count(path) * shares
    # Groups hold only identical devices: one name prefix, and a MIG group one profile.
    all_ids = ids(groups)
    pick = data.draw(st.lists(st.sampled_from(all_ids), min_size=1, max_size=5)) if all_ids else []
    if not pick:
        return
    out, _ = run_child([{"op": "config", "config": config}, {"op": "reserve", "ids": pick}])
    physical = list(dict.fromkeys(i.split("::")[0] for i in pick))
    assert out[1]["envs"]["NVIDIA_VISIBLE_DEVICES"] == ",".join(physical)
    assert set(physical) <= {i.split("::")[0] for i in all_ids}, "every reserved ID was fingerprinted"


def test_faulty_scenario_health_over_time() -> None:
    # GPU 0: XID 79 then XID 48; GPU 1: metrics NOT_SUPPORTED; GPU 2: lost after 50 calls, back 20 later.
    path = str(REPO / "scenarios" / "faulty.toml")
    config = {"simulate": path, "fingerprint_period": "1h", "health": {"probe_interval": "100ms"}}
    out, _ = stream(
        config,
        {"op": "wait", "until": "True"},
        {"op": "nvml_view", "ids": []},
        # The XID and the loss overlap in time in either order: look for each from the start.
        {"op": "wait", "until": why_contains("XID 48"), "max_s": 60, "from_start": True},
        {"op": "wait", "until": why_contains("lost"), "max_s": 60, "from_start": True},
        {"op": "wait", "until": "not " + why_contains("lost"), "max_s": 60},
    )
    gpus = out[3]["gpus"]
    for step in out[4:7]:
        assert "timeout" not in step, step
    xid = {d["id"]: d for d in devices(out[4]["groups"])}
    assert "XID 48 (double-bit ECC error)" in xid[gpus[0]]["why"]
    assert xid[gpus[1]]["healthy"] and xid[gpus[3]]["healthy"]
    lost = {d["id"]: d for d in devices(out[5]["groups"])}
    assert not lost[gpus[2]]["healthy"] and "lost" in lost[gpus[2]]["why"].lower()
    assert lost[gpus[1]]["healthy"]
    back = {d["id"]: d for d in devices(out[6]["groups"])}
    assert back[gpus[2]]["healthy"], "GPU 2 answers again"
    assert not back[gpus[0]]["healthy"], "an XID needs a GPU reset to clear"
    assert out[7]["ended"]


def test_double_bit_ecc_event(tmp_path: Path) -> None:
    path = scenario(
        tmp_path,
        """
        [[gpus]]
        model = "a100-sxm4-80gb"
        count = 2

        [[events]]
        gpu = 1
        at_s = 1.5
        type = "double_bit_ecc"
        """,
    )
    out, _ = until_unhealthy(path)
    sick = unhealthy(out[2]["groups"])
    assert len(sick) == 1 and "double-bit" in sick[0]["why"]


def test_stop_returns_while_an_nvml_call_hangs(tmp_path: Path) -> None:
    path = scenario(tmp_path, HANG_L4)
    out, _ = run_child(
        [
            {"op": "config", "config": {"simulate": path}},
            {"op": "start"},
            {"op": "wait", "until": "True", "max_s": 1},
            {"op": "stop", "max_s": 20},
        ]
    )
    assert out[2].get("timeout") and out[2]["count"] == 0, "the scan is still hanging"
    assert out[3]["ended"], "stop must end the stream even while NVML hangs"


@pytest.mark.parametrize("engine", ["native", "python"])
def test_stats_cover_every_offered_device_including_shares(engine: str) -> None:
    path = str(REPO / "scenarios" / "8xh100-mig.toml")
    config = {"simulate": path, "fingerprint_period": "1h", "stats_engine": engine, "sharing": {"shares": 2}}
    out, _ = stream(
        config,
        {"op": "wait", "until": "True"},
        {"op": "stats", "ticks": 2},
        shutdown=True,
    )
    groups = out[2]["groups"]
    for tick in out[3]["ticks"]:
        assert {g["name"]: sorted(d["id"] for d in g["devices"]) for g in groups} == tick


def test_cli_flags_are_the_fallback_and_config_keys_win(tmp_path: Path) -> None:
    one = scenario(tmp_path, '[[gpus]]\nmodel = "l4"\ncount = 1\n', name="one")
    three = scenario(tmp_path, '[[gpus]]\nmodel = "l4"\ncount = 3\n', name="three")
    steps: list[dict[str, Any]] = [{"op": "start"}, {"op": "wait", "until": "True"}, {"op": "stop"}]
    out, _ = run_child([{"op": "plugin", "simulate": one}, *steps])
    assert len(ids(out[2]["groups"])) == 1
    out, _ = run_child([{"op": "plugin", "simulate": one}, {"op": "config", "config": {"simulate": three}}, *steps])
    assert len(ids(out[3]["groups"])) == 3


# ---- failures around NVML: a raising scan, hangs, shutdown, live config changes ----


def test_a_scan_that_raises_keeps_the_stream_and_the_last_devices(tmp_path: Path) -> None:
    # Scans 1 and 3 raise (not an NVML error): the stream must neither end nor drop devices.
    path = scenario(tmp_path, L4_PAIR)
    out, log = run_child(
        [
            {"op": "plugin", "fail_scans": [1, 3]},
            {"op": "config", "config": {"simulate": path, "fingerprint_period": "1s"}},
            {"op": "start"},
            {"op": "wait", "until": "sum(len(g['devices']) for g in groups) == 2", "max_s": 60},
            {"op": "wait_scans", "n": 4, "max_s": 60},
            {"op": "stop"},
            {"op": "shutdown"},
        ]
    )
    assert "timeout" not in out[3], out[3]
    assert out[4]["scans"] >= 4, out[4]
    assert out[5]["ended"] and out[5]["error"] == "", out[5]
    assert "injected scan failure 1" in log and "injected scan failure 3" in log
    # An empty first answer (nothing scanned yet), then the two GPUs, never dropped again.
    assert out[5]["answers"] == 2


def test_reserve_answers_while_nvml_hangs_with_one_stuck_thread(tmp_path: Path) -> None:
    # The only GPU blocks in its first scan: it was never seen, so it is not offered;
    # Reserve answers from what is known, and the blocked GPU holds one thread.
    path = scenario(tmp_path, HANG_L4)
    config = {"simulate": path, "health": {"call_timeout": "1s"}}
    out, log = run_child(
        [
            {"op": "config", "config": config},
            {"op": "reserve", "ids": ["GPU-a", "GPU-a"]},
            {"op": "reserve", "ids": ["GPU-b"]},
            {"op": "threads"},
        ]
    )
    for refused in out[1:3]:
        assert refused["kind"] == "ReservationRefused", refused
        assert "unknown device IDs" in refused["refused"]
    assert out[1]["refused"] == "unknown device IDs: GPU-a"
    assert "nvmlDeviceGetMaxClockInfo did not return within 1s" in log
    # One worker stays in the blocked call; the rest are the pool's idle ones.
    assert out[3]["names"].count("nvml-call") <= 3, out[3]


def test_stats_returns_on_stop_while_nvml_hangs(tmp_path: Path) -> None:
    path = scenario(tmp_path, HANG_L4)
    out, _ = run_child(
        [
            {"op": "config", "config": {"simulate": path}},
            {"op": "stats", "stop_after_s": 1, "max_s": 20},
        ]
    )
    assert out[1] == {"ticks": [], "ended": True, "error": ""}, out[1]


def test_shutdown_waits_for_a_hung_scan_and_leaves_nvml_alone(tmp_path: Path) -> None:
    path = scenario(tmp_path, HANG_L4)
    out, log = run_child(
        [
            {"op": "config", "config": {"simulate": path, "health": {"call_timeout": "1s"}}},
            {"op": "start"},
            {"op": "wait", "until": "True", "max_s": 30},
            {"op": "shutdown"},
            {"op": "stop", "max_s": 20},
            {"op": "reserve", "ids": ["GPU-a"]},
        ]
    )
    assert out[2]["groups"] == [], "answered once the first scan gave up on the blocked GPU"
    assert "an NVML call is still in progress; leaving NVML initialised" in log
    assert "NVML shutdown failed" not in log
    assert out[4]["ended"]
    assert out[5]["kind"] == "ReservationRefused" and "shut down" in out[5]["refused"]


def test_nothing_opens_nvml_after_shutdown(tmp_path: Path) -> None:
    path = scenario(tmp_path, L4_PAIR)
    # Shut down before anything was read: a late Reserve or Stats must not load NVML.
    out, _ = run_child(
        [
            {"op": "config", "config": {"simulate": path}},
            {"op": "shutdown"},
            {"op": "reserve", "ids": ["GPU-a"]},
            {"op": "stats", "ticks": 1, "max_s": 20},
            {"op": "nvml_loaded"},
            {"op": "threads"},
        ]
    )
    assert out[2] == {"refused": "cannot reserve GPU-a: the plugin is shut down", "kind": "ReservationRefused"}
    assert out[3] == {"ticks": [], "ended": True, "error": ""}
    assert out[4] == {"loaded": False}
    assert "nvidia-health" not in out[5]["names"]
    # After a stream: the same late calls are refused / end, with no error.
    out, _ = run_child(
        [
            {"op": "config", "config": {"simulate": path}},
            {"op": "start"},
            {"op": "wait", "until": "True"},
            {"op": "stop"},
            {"op": "shutdown"},
            {"op": "reserve", "ids": ["GPU-a"]},
            {"op": "stats", "ticks": 1, "max_s": 20},
        ]
    )
    assert out[5]["kind"] == "ReservationRefused" and "shut down" in out[5]["refused"]
    assert out[6] == {"ticks": [], "ended": True, "error": ""}


def test_a_shorter_fingerprint_period_applies_at_once(tmp_path: Path) -> None:
    path = scenario(tmp_path, L4_PAIR)
    out, _ = stream(
        {"simulate": path, "fingerprint_period": "1h"},
        {"op": "wait", "until": "len(groups) > 0"},
        {"op": "wait_scans", "n": 1},
        {"op": "config", "config": {"simulate": path, "fingerprint_period": "1s"}},
        # Without the new period applying now, the next scan would be an hour away.
        {"op": "wait_scans", "n": 3, "max_s": 60},
    )
    assert out[3]["scans"] == 1
    assert out[5]["scans"] >= 3, out[5]


def test_health_monitor_follows_health_enabled(tmp_path: Path) -> None:
    path = scenario(tmp_path, L4_PAIR)
    # The event wait lasts the probe interval (at least 500 ms).
    health = {"probe_interval": "500ms"}
    base = {"simulate": path, "fingerprint_period": "1h", "health": health}
    out, _ = run_child(
        [
            {"op": "config", "config": base},
            {"op": "start"},
            {"op": "wait", "until": "len(groups) > 0"},
            {"op": "threads"},
            {"op": "config", "config": {**base, "health": {**health, "enabled": False}}},
            # The watch applies it at once; the watcher ends when its wait in progress returns.
            {"op": "threads", "gone": "nvidia-events", "max_s": 10},
            {"op": "config", "config": {**base, "health": {**health, "enabled": True}}},
            {"op": "threads", "present": "nvidia-events", "max_s": 10},
            {"op": "stop"},
            {"op": "shutdown"},
            {"op": "threads", "gone": "nvidia-events", "max_s": 10},
        ]
    )
    assert "nvidia-events" in out[3]["names"]
    assert "nvidia-events" not in out[5]["names"], "disabling health stops the event watcher"
    assert out[7]["names"].count("nvidia-events") == 1, "re-enabling starts it again, once"
    assert "nvidia-events" not in out[10]["names"]


def test_disabling_the_plugin_ends_an_open_stats_stream(tmp_path: Path) -> None:
    path = scenario(tmp_path, L4_PAIR)
    base = {"simulate": path, "fingerprint_period": "1h", "stats_engine": "python"}
    out, log = run_child(
        [
            {"op": "config", "config": base},
            {"op": "stats_start"},
            {"op": "stats_wait", "ticks": 1},
            {"op": "config", "config": {**base, "enabled": False}},
            {"op": "stats_wait", "ticks": 10**6, "max_s": 30},
            {"op": "stats_stop"},
        ]
    )
    assert out[2]["ticks"], out[2]
    assert out[4]["ended"] and out[4]["error"] == "", out[4]
    assert "ending the stats stream" in log


def test_a_blocked_probe_marks_the_gpu_and_shutdown_keeps_nvml(tmp_path: Path) -> None:
    # The monitor's probe read hangs (after the first scan): shutdown must not
    # nvmlShutdown under it, nor let it free its event set afterwards.
    path = scenario(
        tmp_path,
        """
        [[gpus]]
        model = "l4"
        count = 1

        [[faults]]
        kind = "hang"
        gpu = 0
        function = "nvmlDeviceGetMemoryInfo"
        after_s = 1.0
        duration_ms = 60000
        calls = 1
        """,
    )
    config = {
        "simulate": path,
        "fingerprint_period": "1h",
        "health": {"probe_interval": "100ms", "call_timeout": "500ms"},
    }
    out, log = run_child(
        [
            {"op": "config", "config": config},
            {"op": "start"},
            {"op": "wait", "until": "len(groups) > 0"},
            {"op": "wait", "until": "any('did not return within 500ms' in d['why'] for g in groups for d in g['devices'])"},
            {"op": "stop"},
            {"op": "shutdown"},
            {"op": "threads"},
        ]
    )
    assert "timeout" not in out[2] and "timeout" not in out[3], out[3]
    why = devices(out[3]["groups"])[0]["why"]
    assert why == "nvmlDeviceGetMemoryInfo did not return within 500ms", why
    assert "nvml-call" in out[6]["names"], "a worker is still inside the blocked call"
    assert "an NVML call is still in progress; leaving NVML initialised" in log
    assert "NVML shutdown failed" not in log


@pytest.mark.parametrize("engine", ["native", "python"])
def test_stats_streams_share_one_engine(tmp_path: Path, engine: str) -> None:
    # However many Stats streams are open, the process builds one engine (one NVML
    # session, one pool, one event set); each stream still gets its own ticks.
    path = scenario(tmp_path, L4_PAIR)
    config = {"simulate": path, "stats_engine": engine, "extended_stats": True}
    out, log = run_child(
        [
            {"op": "config", "config": config},
            {"op": "stats_streams", "n": 8, "ticks": 3},
            {"op": "stats_streams", "n": 2, "ticks": 2},
        ]
    )
    for step in out[1:3]:
        for report in step["reports"]:
            assert len(report["ticks"]) >= 2 and report["error"] == "", report
            assert all(len(t["NVIDIA L4"]) == 2 for t in report["ticks"]), report
    # One engine while the 8 were open, a new one for the next streams (the last close freed it).
    assert log.count(f"stats engine: {engine}") == 2, log


def test_a_blocked_gpu_holds_one_thread_however_much_work_comes(tmp_path: Path) -> None:
    # GPU 1's every call blocks from 0.5 s on: scans every second, probes every 100 ms
    # and eight python-engine Stats streams at 20 ms all have work for it.
    path = scenario(
        tmp_path,
        """
        [[gpus]]
        model = "l4"
        count = 3

        [[faults]]
        kind = "hang"
        gpu = 1
        after_s = 0.5
        """,
    )
    config = {
        "simulate": path,
        "fingerprint_period": "1s",
        "stats_engine": "python",
        "health": {"probe_interval": "100ms", "call_timeout": "200ms"},
    }
    out, log = stream(
        config,
        {"op": "wait", "until": "sum(len(g['devices']) for g in groups) == 3"},
        {"op": "wait", "until": why_contains("did not return within 200ms")},
        {"op": "stats_streams", "n": 8, "ticks": 40, "interval": 0.02},
        {"op": "threads"},
    )
    assert "timeout" not in out[3], out[3]
    blocked = unhealthy(out[3]["groups"])
    assert len(blocked) == 1, out[3]
    for report in out[4]["reports"]:
        assert len(report["ticks"]) >= 40, report  # the others kept their pace
    # The pool's workers on time (at most 8) and idle ones (2), plus one for the blocked GPU.
    assert out[4]["names"].count("nvml-call") <= 8 + 2 + 1, out[4]["names"]
    assert out[5]["names"].count("nvml-call") <= 8 + 2 + 1, out[5]["names"]


# Eight H100s; in "mig" the last is in MIG mode, four instances read through their own
# UUIDs (by the stats engines) and its own (by the probes and scans).
HUNG_LAYOUTS = {
    "whole": ('[[gpus]]\nmodel = "h100-sxm5-80gb"\ncount = 8\n', 1, 8),
    "mig": (
        '[[gpus]]\nmodel = "h100-sxm5-80gb"\ncount = 7\n'
        '[[gpus]]\nmodel = "h100-sxm5-80gb"\nmig = ["3g.40gb", "2g.20gb", "1g.10gb", "1g.10gb"]\n',
        7,
        7 + 4,
    ),
}


@pytest.mark.parametrize("layout", list(HUNG_LAYOUTS))
@pytest.mark.parametrize("engine", ["native", "python"])
def test_a_hung_gpu_holds_at_most_one_thread_in_the_whole_process(tmp_path: Path, engine: str, layout: str) -> None:
    # One GPU's every call (its MIG instances' included) blocks for good once scanned.
    # Scans every second, probes every 100 ms, an open Stats stream and then eight
    # more all have work for it, on the Python executor and in the Rust engine's
    # pool (native) alike: whichever enters it first holds its lane, the rest skip
    # it. The simulated driver counts the calls blocked in the hang: exactly the
    # threads the GPU holds.
    gpus, hung, offered = HUNG_LAYOUTS[layout]
    path = scenario(tmp_path, gpus + f'[[faults]]\nkind = "hang"\ngpu = {hung}\nafter_s = 3.0\n')
    config = {
        "simulate": path,
        "fingerprint_period": "1s",
        "stats_engine": engine,
        "health": {"probe_interval": "100ms", "call_timeout": "300ms"},
    }
    out, log = run_child(
        [
            {"op": "config", "config": config},
            {"op": "start"},
            {"op": "wait", "until": f"sum(len(g['devices']) for g in groups) == {offered}"},
            {"op": "stats_start"},
            {"op": "stats_wait", "ticks": 2},
            {"op": "wait", "until": why_contains("did not return within 300ms"), "max_s": 60},
            {"op": "blocked", "gpu": hung, "samples": 100},
            {"op": "stats_streams", "n": 8, "ticks": 20, "interval": 0.02},
            {"op": "blocked", "gpu": hung, "samples": 50},
            {"op": "stats_stop"},
            {"op": "stop"},
        ]
    )
    assert "timeout" not in out[2] and "timeout" not in out[5], out[5]
    stuck = [d["id"] for d in unhealthy(out[5]["groups"])]
    assert len(stuck) == (4 if layout == "mig" else 1), out[5]
    assert f"stats engine: {engine}" in log
    for seen in (out[6], out[8]):
        # Entered (this test can fail), and by one thread only, all along.
        assert seen["most"] == 1 and seen["last"] == 1, (seen, out)
    for report in out[7]["reports"]:
        assert len(report["ticks"]) >= 20 and report["error"] == "", report  # the others kept their pace
    # The stats engine reads it N/A, and says so.
    assert any(f"device {d} did not answer NVML within" in log for d in stuck), log


def test_the_lost_gpu_of_a_one_gpu_node_is_that_gpu_not_the_driver(tmp_path: Path) -> None:
    path = scenario(
        tmp_path,
        """
        [[gpus]]
        model = "l4"

        [[faults]]
        kind = "lost"
        gpu = 0
        after_s = 1.0
        recover_after_s = 1.5
        """,
    )
    config = {"simulate": path, "fingerprint_period": "1s", "health": {"probe_interval": "100ms"}}
    out, log = stream(
        config,
        {"op": "wait", "until": "len(groups) > 0"},
        {"op": "wait", "until": ANY_UNHEALTHY},
        {"op": "wait", "until": ALL_HEALTHY},
    )
    assert "timeout" not in out[3] and "timeout" not in out[4], out
    assert devices(out[3]["groups"])[0]["why"].startswith("GPU is lost or needs a reset"), out[3]
    assert "NVIDIA driver unavailable" not in log


# --- Driver branches: what an older driver's library lacks, the plugin gets another way ---


def branch_scenario(tmp_path: Path, name: str, branch: int, extra: str = "") -> str:
    """Ready-made scenario `name` playing driver `branch` (plus `extra` TOML)."""
    path = tmp_path / f"{name}-{branch}.toml"
    path.write_text(sim_branches.at_branch((REPO / "scenarios" / f"{name}.toml").read_text() + extra, branch))
    return str(path)


def comparable(groups: list[dict[str, Any]]) -> dict[str, Any]:
    """The groups by name: their attributes (all but the driver's version), devices and health."""
    return {
        g["name"]: (
            {k: v for k, v in g["attributes"].items() if k != "driver_version"},
            sorted((d["id"], d["healthy"], d["pci"]) for d in g["devices"]),
        )
        for g in groups
    }


@pytest.mark.parametrize("name", ["8xh100", "8xh100-mig"])
def test_an_8_gpu_node_at_driver_535_shows_what_the_newest_branch_shows(tmp_path: Path, name: str) -> None:
    # 535 has no nvmlDeviceGetNumaNodeId: the NUMA node comes from nvmlDeviceGetMemoryAffinity.
    seen = {}
    for branch in (sim_branches.OLDEST, sim_branches.NEWEST):
        path = branch_scenario(tmp_path, name, branch)
        config = {"simulate": path, "fingerprint_period": "1h", "group_by": ["numa_node"]}
        out, log = stream(config, {"op": "wait", "until": "True", "max_s": 120}, {"op": "stats", "ticks": 1},
                          shutdown=True)
        groups = out[2]["groups"]
        assert len(ids(groups)) == len(set(ids(groups))) == expected_device_count(REPO / "scenarios" / f"{name}.toml")
        assert f"sim/{branch}/libnvidia-ml.so.1" in log, "the branch's own library must be the one loaded"
        assert "is not reported" not in log and "not checked" not in log, log
        assert {g["attributes"]["driver_version"][0] for g in groups} == {sim_branches.version(branch)}
        assert out[3]["ticks"] == [{g["name"]: sorted(d["id"] for d in g["devices"]) for g in groups}]
        seen[branch] = comparable(groups)
    at_535, newest = seen[sim_branches.OLDEST], seen[sim_branches.NEWEST]
    assert at_535 == newest
    whole = sorted(n for n in at_535 if "MIG" not in n)
    assert whole == ["NVIDIA H100 80GB HBM3 (NUMA 0)", "NVIDIA H100 80GB HBM3 (NUMA 1)"], whole
    for n, (attrs, _) in at_535.items():
        assert attrs["numa_node"][0] == int(n.split("NUMA ")[1][0]), n


def test_fabric_at_driver_535_comes_from_the_v1_call_and_its_missing_health_is_said_once(tmp_path: Path) -> None:
    # GPU 3 (the one in MIG mode) never completes its fabric registration.
    not_ready = '\n[[faults]]\nkind = "fabric_not_ready"\ngpu = 3\n'
    seen = {}
    for branch in (sim_branches.OLDEST, sim_branches.NEWEST):
        path = branch_scenario(tmp_path, "gb200-tray", branch, not_ready)
        config = {"simulate": path, "fingerprint_period": "1s", "health": {"probe_interval": "100ms"}}
        out, log = stream(config, {"op": "wait", "until": why_contains("NVLink fabric not ready"), "max_s": 60},
                          {"op": "wait_scans", "n": 3})
        assert "timeout" not in out[2], out[2]
        groups = out[2]["groups"]
        whole = next(g for g in groups if g["name"] == "NVIDIA GB200")
        assert all(d["healthy"] for d in whole["devices"]) and len(whole["devices"]) == 3, whole
        assert whole["attributes"]["fabric_clique"][0] == 32766, whole
        assert whole["attributes"]["fabric_cluster_uuid"][0] == "6d2c4a8e-1f3b-4c7d-9e5a-0b8f2d6c4e1a", whole
        migs = [d for g in groups if "MIG" in g["name"] for d in g["devices"]]
        assert migs and all(d["why"] == "NVLink fabric not ready: in progress" for d in migs), migs
        said = log.count("NVLink fabric health is not checked")
        assert said == (1 if branch == sim_branches.OLDEST else 0), log
        seen[branch] = comparable(groups)
    assert seen[sim_branches.OLDEST] == seen[sim_branches.NEWEST]


def test_a_535_gpu_whose_numa_node_nothing_tells_is_said_once(tmp_path: Path) -> None:
    # 535 lacks nvmlDeviceGetNumaNodeId; with nvmlDeviceGetMemoryAffinity unsupported too,
    # only Linux's sysfs entry of the GPU's PCI address is left.
    fault = '\n[[faults]]\nkind = "not_supported"\nfunctions = ["nvmlDeviceGetMemoryAffinity"]\n'
    path = branch_scenario(tmp_path, "8xh100", sim_branches.OLDEST, fault)
    out, log = stream({"simulate": path, "fingerprint_period": "1s", "group_by": ["numa_node"]},
                      {"op": "wait", "until": "len(groups) > 0"}, {"op": "wait_scans", "n": 2})
    from nomad_device_nvidia.nvidia.fingerprint import _sysfs_numa_node

    for g in out[2]["groups"]:
        for d in g["devices"]:
            # On this machine the simulated bus IDs may name real PCI functions with a node.
            node = _sysfs_numa_node(d["pci"])
            assert g["attributes"].get("numa_node", [None])[0] == node, (g, node)
    nodes = {_sysfs_numa_node(d["pci"]) for d in devices(out[2]["groups"])}
    assert log.count("numa_node is not reported") == (1 if None in nodes else 0), log


def test_each_branch_library_answers_for_exactly_its_functions(tmp_path: Path) -> None:
    code = textwrap.dedent(
        """
        import ctypes, json, sys
        lib = ctypes.CDLL(sys.argv[1])
        print(json.dumps([n for n in json.loads(sys.argv[2]) if hasattr(lib, n)]))
        """
    )
    every = set().union(*(sim_branches.functions(b) for b in sim_branches.BRANCHES))
    full = set(json.loads(subprocess.run([sys.executable, "-c", code, str(sim_branches.library(None)),
                                          json.dumps(sorted(every))], capture_output=True, text=True,
                                         check=True, timeout=60).stdout))
    for branch in sim_branches.BRANCHES:
        has = set(json.loads(subprocess.run([sys.executable, "-c", code, str(sim_branches.library(branch)),
                                             json.dumps(sorted(every))], capture_output=True, text=True,
                                            check=True, timeout=60).stdout))
        assert has == sim_branches.functions(branch) & full, branch
    # What the plugin reads where the older driver lacks the call.
    assert "nvmlDeviceGetNumaNodeId" not in sim_branches.functions(535)
    assert "nvmlDeviceGetGpuFabricInfoV" not in sim_branches.functions(535)
    assert {"nvmlDeviceGetMemoryAffinity", "nvmlDeviceGetGpuFabricInfo"} <= sim_branches.functions(535) & full


@pytest.mark.parametrize("wrong", ["full", "other"])
def test_a_branch_scenario_on_another_branchs_library_fails_init_naming_the_key(tmp_path: Path, wrong: str) -> None:
    path = branch_scenario(tmp_path, "1gpu", sim_branches.OLDEST)
    lib = sim_branches.library(None if wrong == "full" else sim_branches.NEWEST)
    code = "import pynvml, sys\ntry:\n    pynvml.nvmlInit()\nexcept pynvml.NVMLError as e:\n    print(e.value)\n"
    env = {**os.environ, "NVML_SIM_SCENARIO": path, "LD_LIBRARY_PATH": str(lib.parent)}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert proc.stdout.strip() == "999", (proc.stdout, proc.stderr)  # NVML_ERROR_UNKNOWN
    assert "driver.branch: this library" in proc.stderr and "build/sim/535/libnvidia-ml.so.1" in proc.stderr
    env["LD_LIBRARY_PATH"] = str(sim_branches.library(sim_branches.OLDEST).parent)
    code_ok = "import pynvml\npynvml.nvmlInit()\nprint(pynvml.nvmlSystemGetDriverVersion())\n"
    ok = subprocess.run([sys.executable, "-c", code_ok], capture_output=True, text=True, env=env, timeout=60)
    assert ok.stdout.strip() == sim_branches.version(sim_branches.OLDEST), ok.stderr

"""A real Nomad agent (`nomad agent -dev` on 127.0.0.1) with our plugin in its
plugin_dir, on the simulated 8xH100 node: devices on the node, a GPU job placed
and given exactly its GPUs, stats on the client, plugin crash and relaunch, and
an unhealthy GPU (simulated XID) kept out of new placements.

Logs and a step-by-step transcript land in build/e2e/<agent>/.
"""

from __future__ import annotations

import json
import os
import re
import signal
import time
from datetime import datetime, timezone
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from e2e.agent import REPO, AgentError, NomadAgent, attr_value
from e2e.gpu_agent import PLUGIN, job, plugin_spec, running_agent, running_allocs, task_group
from e2e.wheel import SCENARIOS

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

SCENARIO = SCENARIOS / "8xh100-mig.toml"
XID_GPU = int(os.environ.get("NOMAD_E2E_XID_GPU", "0"))  # a full (non-MIG) GPU of the scenario
GIB = 1024


def _start(name: str, scenario: Path) -> Iterator[NomadAgent]:
    with running_agent(NomadAgent(name, [plugin_spec(scenario)])) as agent:
        yield agent


@pytest.fixture(scope="module")
def agent() -> Iterator[NomadAgent]:
    yield from _start("8xh100", SCENARIO)


def _devices(agent: NomadAgent) -> list[dict[str, Any]]:
    return [g for g in agent.node_devices() if g["Vendor"] == "nvidia" and g["Type"] == "gpu"]


def _ids(groups: list[dict[str, Any]], healthy: bool | None = None) -> set[str]:
    return {i["ID"] for g in groups for i in g["Instances"] if healthy is None or i["Healthy"] == healthy}


def _wait_devices(agent: NomadAgent, what: str = "our GPUs on the node", timeout: float = 90) -> list[dict[str, Any]]:
    return agent.wait_for(what, lambda: _devices(agent) or None, timeout)


def _summary(groups: list[dict[str, Any]]) -> str:
    lines = []
    for g in groups:
        keys = ("memory", "compute_capability", "architecture", "mig_profile", "driver_version")
        attrs = ", ".join(f"{k}={attr_value(g, k)}{g['Attributes'][k].get('Unit') or ''}" for k in keys
                          if k in g["Attributes"])
        lines.append(f"{g['Vendor']}/{g['Type']}/{g['Name']}  [{attrs}]")
        for i in g["Instances"]:
            health = "healthy" if i["Healthy"] else f"UNHEALTHY ({i.get('HealthDescription')})"
            bus = (i.get("Locality") or {}).get("PciBusID", "")
            lines.append(f"    {i['ID']}  {health}  {bus}")
    return "\n".join(lines)


def _sections(text: str, titles: tuple[str, ...]) -> str:
    """The named blank-line-separated sections of `nomad ... -verbose` output."""
    out, keep = [], False
    for line in text.splitlines():
        if line in titles:
            keep = True
        elif line and not line[0].isspace() and "=" not in line and keep and line not in titles:
            keep = line.startswith(("nvidia/", "Device Group"))
        if keep:
            out.append(line)
    return "\n".join(out)


GPU_JOB_FILE = Path(__file__).parent / "e2e" / "jobs" / "gpu-env.nomad.hcl"


def _running_alloc(agent: NomadAgent, job: str, timeout: float = 90) -> dict[str, Any]:
    (first, *_) = running_allocs(agent, job, timeout=timeout)
    return agent.alloc(first["ID"])


def _env_of(agent: NomadAgent, alloc_id: str, task: str) -> dict[str, str]:
    def env() -> dict[str, str] | None:
        text = agent.task_log(alloc_id, task)
        pairs = dict(line.split("=", 1) for line in text.splitlines() if "=" in line)
        return pairs if "NOMAD_ALLOC_ID" in pairs else None
    return agent.wait_for(f"task {task}'s environment in its stdout log", env, 60)


def test_node_lists_our_device_groups(agent: NomadAgent) -> None:
    groups = _wait_devices(agent)
    agent.note("node devices (GET /v1/node/:id -> NodeResources.Devices)", _summary(groups))
    ids = _ids(groups)
    assert len(ids) == sum(len(g["Instances"]) for g in groups), "a device ID appears twice"
    assert _ids(groups, healthy=False) == set(), "a device is unhealthy on a fresh simulated node"
    names = {g["Name"] for g in groups}
    assert any("H100" in n for n in names), names
    for g in groups:
        assert isinstance(attr_value(g, "memory"), int) and g["Attributes"]["memory"]["Unit"] == "MiB", g["Attributes"]
        assert attr_value(g, "compute_capability") == "9.0", g["Attributes"]
        assert attr_value(g, "driver_version"), g["Attributes"]
        for i in g["Instances"]:
            assert i["ID"].startswith(("GPU-", "MIG-")), i
    # The same through the CLI an operator uses.
    out = agent.cli("node", "status", "-verbose", agent.node_id).stdout
    agent.note(f"$ nomad node status -verbose {agent.node_id[:8]}  (device sections; full output in cli.log)",
               _sections(out, ("Device Resource Utilization", "Device Group Attributes")))
    for n in names:
        assert f"nvidia/gpu/{n}" in out, f"{n} missing from `nomad node status -verbose`"


def test_gpu_job_gets_exactly_its_two_gpus(agent: NomadAgent) -> None:
    groups = _wait_devices(agent)
    out = agent.cli("job", "run", "-detach", str(GPU_JOB_FILE)).stdout
    agent.note(f"$ nomad job run -detach {GPU_JOB_FILE.relative_to(REPO)}", GPU_JOB_FILE.read_text() + "\n" + out)
    registered = re.search(r"Evaluation ID: (\S+)", out)
    assert registered, out
    ev = agent.wait_eval(registered.group(1))
    assert not ev.get("FailedTGAllocs"), f"job not placed: {json.dumps(ev['FailedTGAllocs'], indent=1)}"
    alloc = _running_alloc(agent, "gpu-env")
    reserved = alloc["AllocatedResources"]["Tasks"]["show-env"]["Devices"]
    assert len(reserved) == 1 and len(reserved[0]["DeviceIDs"]) == 2, reserved
    ids = reserved[0]["DeviceIDs"]
    group = next(g for g in groups if g["Name"] == reserved[0]["Name"])
    assert attr_value(group, "memory") >= 70 * GIB and "mig_profile" not in group["Attributes"], group["Attributes"]
    assert set(ids) <= _ids([group], healthy=True)
    env = _env_of(agent, alloc["ID"], "show-env")
    agent.note(f"alloc {alloc['ID'][:8]}: AllocatedResources devices {reserved[0]['Name']} {ids}; task env",
               "\n".join(f"{k}={v}" for k, v in env.items() if k.startswith(("NVIDIA", "CUDA", "NOMAD_ALLOC_ID"))))
    assert sorted(env["NVIDIA_VISIBLE_DEVICES"].split(",")) == sorted(ids)
    logs = agent.cli("alloc", "logs", alloc["ID"], "show-env").stdout
    assert f"NVIDIA_VISIBLE_DEVICES={env['NVIDIA_VISIBLE_DEVICES']}" in logs


def test_device_stats_reach_the_client(agent: NomadAgent) -> None:
    ids = _ids(_wait_devices(agent))

    def host_stats() -> list[dict[str, Any]] | None:
        stats = agent.api("GET", "/v1/client/stats").get("DeviceStats") or []
        seen = {i for g in stats for i in (g.get("InstanceStats") or {})}
        return stats if seen == ids else None
    stats = agent.wait_for("device stats for every device in GET /v1/client/stats", host_stats, 60)
    one_id, one = next((i, s) for g in stats for i, s in g["InstanceStats"].items())
    agent.note(f"GET /v1/client/stats -> DeviceStats: {len(stats)} groups, {len(ids)} devices; one of them",
               json.dumps({one_id: one}, indent=1)[:2500])
    assert one["Summary"] and one["Summary"].get("Unit"), one
    assert one.get("Stats", {}).get("Attributes"), one

    # The alloc's own stats carry its two devices only.
    alloc = _running_alloc(agent, "gpu-env")
    mine = set(alloc["AllocatedResources"]["Tasks"]["show-env"]["Devices"][0]["DeviceIDs"])

    def alloc_stats() -> set[str] | None:
        usage = agent.api("GET", f"/v1/client/allocation/{alloc['ID']}/stats")
        dev = usage["Tasks"]["show-env"]["ResourceUsage"].get("DeviceStats") or []
        seen = {i for g in dev for i in (g.get("InstanceStats") or {})}
        return seen or None
    seen = agent.wait_for("device stats in the allocation's stats", alloc_stats, 60)
    agent.note(f"GET /v1/client/allocation/{alloc['ID'][:8]}/stats -> DeviceStats for {sorted(seen)}")
    assert seen == mine


def _stats_times(agent: NomadAgent) -> dict[str, float]:
    """Device ID -> the Unix time of its latest sample in GET /v1/client/stats."""
    out = {}
    for g in agent.api("GET", "/v1/client/stats").get("DeviceStats") or []:
        for dev_id, s in (g.get("InstanceStats") or {}).items():
            stamp = s["Timestamp"].rstrip("Z")
            whole, _, frac = stamp.partition(".")
            out[dev_id] = datetime.fromisoformat(whole).replace(tzinfo=timezone.utc).timestamp() + float(f"0.{frac or 0}")
    return out


def test_killed_plugin_is_relaunched_and_devices_come_back(agent: NomadAgent) -> None:
    before = _ids(_wait_devices(agent))
    pids = agent.wait_for("the running plugin process", lambda: agent.plugin_pids(PLUGIN), 30)
    assert len(pids) == 1, f"expected one running plugin process, found {pids}"
    killed_at = time.time()
    os.kill(pids[0], signal.SIGKILL)
    agent.note(f"kill -9 {pids[0]} (the plugin, as the agent launched it)")
    new = agent.wait_for("Nomad to relaunch the plugin",
                         lambda: [p for p in agent.plugin_pids(PLUGIN) if p != pids[0]], 120)
    # The node keeps the last fingerprint while the plugin is down; fresh stats for every
    # device prove the relaunched process has fingerprinted them and streams again.
    agent.wait_for("stats newer than the kill for every device",
                   lambda: (lambda t: set(t) == before and min(t.values()) > killed_at)(_stats_times(agent)), 120)
    groups = _devices(agent)
    assert _ids(groups, healthy=True) == before, _summary(groups)
    agent.note(f"Nomad relaunched the plugin as pid {new[0]}: {len(before)} devices listed and healthy, "
               f"stats for all of them stamped after the kill")
    # Reserve goes to the new process: a job placed now gets its GPU.
    ev = agent.wait_eval(agent.run_job(_job_for("after-relaunch", "", 1)))
    assert not ev.get("FailedTGAllocs"), f"not placed after the relaunch: {json.dumps(ev['FailedTGAllocs'], indent=1)}"
    alloc = agent.wait_for("the after-relaunch allocation to finish", lambda: [
        a for a in agent.job_allocs("after-relaunch") if a["ClientStatus"] in ("complete", "failed")], 60)[0]
    assert alloc["ClientStatus"] == "complete", json.dumps(agent.alloc(alloc["ID"]).get("TaskStates"))[:3000]
    ids = agent.alloc(alloc["ID"])["AllocatedResources"]["Tasks"]["t"]["Devices"][0]["DeviceIDs"]
    env = _env_of(agent, alloc["ID"], "t")
    agent.note("job after-relaunch (count = 1) task env", f"NVIDIA_VISIBLE_DEVICES={env['NVIDIA_VISIBLE_DEVICES']}")
    assert env["NVIDIA_VISIBLE_DEVICES"].split(",") == ids


def _xid_scenario(tmp: Path) -> Path:
    """The 8xH100 scenario plus a critical XID on one full GPU a few seconds after
    the plugin initialises NVML."""
    path = tmp / "8xh100-xid.toml"
    path.write_text(SCENARIO.read_text() + f"\n[[events]]\ngpu = {XID_GPU}\nat_s = 4\nxid = 79\n")
    return path


@pytest.fixture(scope="module")
def xid_agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NomadAgent]:
    yield from _start("8xh100-xid", _xid_scenario(tmp_path_factory.mktemp("xid")))


def _job_for(name: str, group: str, count: int) -> str:
    """A batch job printing its environment, asking for `count` devices of group `group`
    (by name; "" = any NVIDIA GPU)."""
    return job(name, task_group("g", command="/usr/bin/env", device="nvidia/gpu" + (f"/{group}" if group else ""),
                                devices=count, cpu=50, memory=32), type_="batch")


def test_unhealthy_gpu_is_not_used_for_new_placements(xid_agent: NomadAgent) -> None:
    agent = xid_agent

    def sick() -> list[dict[str, Any]] | None:
        groups = _devices(agent)
        return groups if _ids(groups, healthy=False) else None
    groups = agent.wait_for("a device to turn unhealthy after the simulated XID 79", sick, 90)
    agent.note("after XID 79 on GPU index %d" % XID_GPU, _summary(groups))
    bad = _ids(groups, healthy=False)
    assert len(bad) == 1, f"one GPU got the XID, yet unhealthy: {bad}"
    group = next(g for g in groups if bad & _ids([g]))
    bad_instance = next(i for i in group["Instances"] if i["ID"] in bad)
    assert "XID 79" in (bad_instance.get("HealthDescription") or ""), bad_instance
    # `device "nvidia/gpu/<name>"` matches every group of that name (groups may split by attributes).
    same_name = [g for g in groups if g["Name"] == group["Name"]]
    healthy = _ids(same_name, healthy=True)
    assert healthy, f"no healthy {group['Name']} device left to place on"

    # Every healthy device of the group: placed, and the sick one is not among them.
    ev = agent.wait_eval(agent.run_job(_job_for("all-healthy", group["Name"], len(healthy))))
    assert not ev.get("FailedTGAllocs"), f"not placed: {json.dumps(ev['FailedTGAllocs'], indent=1)}"
    alloc = agent.wait_for("the all-healthy allocation", lambda: agent.job_allocs("all-healthy"), 30)[0]
    got = set(agent.alloc(alloc["ID"])["AllocatedResources"]["Tasks"]["t"]["Devices"][0]["DeviceIDs"])
    agent.note(f"job all-healthy (count = {len(healthy)}) got", "\n".join(sorted(got)))
    assert got == healthy and not got & bad

    # One more than the healthy ones: the scheduler does not hand out the sick device.
    agent.wait_for("the all-healthy job to finish", lambda: all(
        a["ClientStatus"] == "complete" for a in agent.job_allocs("all-healthy")), 60)
    ev = agent.wait_eval(agent.run_job(_job_for("one-too-many", group["Name"], len(healthy) + 1)))
    failed = ev.get("FailedTGAllocs") or {}
    agent.note(f"job one-too-many (count = {len(healthy) + 1}): evaluation {ev['Status']}",
               json.dumps(failed, indent=1)[:2000])
    assert failed, "a job needing the unhealthy device was placed"
    assert not agent.job_allocs("one-too-many")
    metrics = failed["g"]
    assert metrics.get("DimensionExhausted") or metrics.get("ConstraintFiltered"), metrics

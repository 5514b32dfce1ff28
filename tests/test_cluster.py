"""GPU scheduling across a simulated cluster, through Nomad's HTTP API.

Starts `scripts/cluster.py` (what `make cluster` runs): a real Nomad server and
three clients on loopback, each with this plugin on a different simulated node
(h100: 8 x H100; a100: 8 x A100 with mixed MIG; gh200: one GH200). Then, with
the job files of docs/cluster.md (tests/e2e/jobs/cluster-*.nomad.hcl): an
8-GPU Hopper job lands on h100, a 1g.5gb MIG slice on a100, a job asking for
more than any node has is not placed ("missing devices" on every node), a
spread uses all three nodes, and draining a node moves its GPU job to the other
node whose devices match. Finally SIGINT, as Ctrl-C: the script must stop
everything and exit 0 with no process of the cluster left.
"""

from __future__ import annotations

import json
import queue
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from e2e.agent import REPO, attr_value, leftover_pids
from e2e.cluster import LOG_ROOT, Api

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

SCRIPT = REPO / "scripts" / "cluster.py"
JOBS = REPO / "tests" / "e2e" / "jobs"
START_TIMEOUT = 120


@dataclass
class RunningCluster:
    proc: subprocess.Popen[str]
    api: Api
    root: Path
    nodes: dict[str, str]  # name -> node ID
    output: list[str]

    def name_of(self, node_id: str) -> str:
        return next(n for n, i in self.nodes.items() if i == node_id)


def _pump(proc: subprocess.Popen[str], lines: queue.Queue[str], seen: list[str]) -> None:
    assert proc.stdout is not None
    for line in proc.stdout:
        seen.append(line)
        lines.put(line)


@pytest.fixture(scope="module")
def cluster() -> Iterator[RunningCluster]:
    proc = subprocess.Popen([sys.executable, str(SCRIPT), "--for-test"], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True, bufsize=1)
    lines: queue.Queue[str] = queue.Queue()
    seen: list[str] = []
    pump = threading.Thread(target=_pump, args=(proc, lines, seen), daemon=True)
    pump.start()
    addr, root = "", None
    nodes: dict[str, str] = {}
    deadline = time.monotonic() + START_TIMEOUT
    try:
        while len(nodes) < 3:
            try:
                line = lines.get(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"scripts/cluster.py not ready within {START_TIMEOUT}s:\n{''.join(seen)}"
                                     f"\nlogs in {LOG_ROOT}") from None
            if m := re.match(r"cluster: ready NOMAD_ADDR=(\S+) root=(\S+)", line):
                addr, root = m.group(1), Path(m.group(2))
            elif m := re.match(r"cluster: node (\w+)=(\S+)", line):
                nodes[m.group(1)] = m.group(2)
            elif proc.poll() is not None and lines.empty():
                raise AssertionError(f"scripts/cluster.py exited {proc.returncode}:\n{''.join(seen)}")
        assert root is not None and set(nodes) == {"h100", "a100", "gh200"}, seen
        api = Api(addr, lambda: None if proc.poll() is None else f"scripts/cluster.py exited ({proc.returncode})")
        yield RunningCluster(proc, api, root, nodes, seen)
    finally:
        # Ctrl-C, as a person stops `make cluster`.
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
        try:
            rc = proc.wait(90)
        except subprocess.TimeoutExpired:
            proc.kill()
            rc = proc.wait(10)
        pump.join(10)  # its stdout is at EOF once the script has exited
        assert proc.stdout is not None
        proc.stdout.close()
        out = "".join(seen)
        left = leftover_pids(root) if root is not None else []
        assert not left, f"processes of the cluster still running after Ctrl-C: {left}\n{out[-3000:]}"
        assert rc == 0, f"scripts/cluster.py exited {rc} after Ctrl-C:\n{out[-3000:]}"
        assert "cluster: stopped; no process of the cluster is left" in out, out[-3000:]
        assert "killed processes still running" not in out, f"the agents left processes behind:\n{out[-3000:]}"


def _device_groups(c: RunningCluster, node: str) -> list[dict[str, Any]]:
    return c.api.gpu_groups(c.nodes[node])


def _owner(c: RunningCluster, node: str, device_ids: list[str]) -> dict[str, Any]:
    """The node's device group that holds every one of these IDs."""
    for g in _device_groups(c, node):
        if set(device_ids) <= {i["ID"] for i in g["Instances"]}:
            return g
    raise AssertionError(f"devices {device_ids} are not all in one device group of node {node}")


def _devices_of(alloc: dict[str, Any], task: str) -> list[str]:
    devices = alloc["AllocatedResources"]["Tasks"][task]["Devices"] or []
    assert len(devices) == 1, devices
    return list(devices[0]["DeviceIDs"])


def _visible_devices(c: RunningCluster, alloc_id: str, task: str) -> list[str]:
    q = urllib.parse.urlencode({"task": task, "type": "stdout", "plain": "true", "origin": "start"})

    def read() -> list[str] | None:
        text = bytes(c.api("GET", f"/v1/client/fs/logs/{alloc_id}?{q}", raw=True)).decode(errors="replace")
        m = re.search(r"^NVIDIA_VISIBLE_DEVICES=(\S+)$", text, re.M)
        return m.group(1).split(",") if m else None
    return c.api.wait_for(f"NVIDIA_VISIBLE_DEVICES in the stdout of alloc {alloc_id[:8]}", read, 60)


@contextmanager
def _job(c: RunningCluster, job_file: str, running: int = 0) -> Iterator[tuple[str, dict[str, Any], list[dict[str, Any]]]]:
    """Runs a job file and purges the job on the way out. With `running`, the scheduler must
    have placed it: yields its first evaluation and that many running allocations."""
    hcl = (JOBS / job_file).read_text()
    job_id = re.search(r'^job "([^"]+)"', hcl, re.M)
    assert job_id, job_file
    job, eval_id = job_id.group(1), c.api.run_job(hcl)
    try:
        ev = c.api.wait_eval(eval_id)
        allocs: list[dict[str, Any]] = []
        if running:
            assert not ev.get("FailedTGAllocs"), json.dumps(ev["FailedTGAllocs"], indent=1)
            allocs = c.api.running_allocs(job, running)
        yield job, ev, allocs
    finally:
        c.api.purge(job)


def test_three_nodes_with_their_simulated_gpus(cluster: RunningCluster) -> None:
    names = {n["Name"]: n for n in cluster.api.nodes()}
    assert set(names) == {"h100", "a100", "gh200"}, sorted(names)
    assert all(n["Status"] == "ready" and n["SchedulingEligibility"] == "eligible" for n in names.values()), names
    [h100] = _device_groups(cluster, "h100")
    assert len(h100["Instances"]) == 8 and attr_value(h100, "compute_capability") == "9.0" and "H100" in h100["Name"]
    a100 = {g["Name"]: g for g in _device_groups(cluster, "a100")}
    mig = [g for g in a100.values() if attr_value(g, "mig_profile") == "1g.5gb"]
    assert len(mig) == 1 and all(i["ID"].startswith("MIG-") for i in mig[0]["Instances"]), sorted(a100)
    assert {attr_value(g, "compute_capability") for g in a100.values()} == {"8.0"}
    [gh200] = _device_groups(cluster, "gh200")
    assert len(gh200["Instances"]) == 1 and attr_value(gh200, "compute_capability") == "9.0" and "GH200" in gh200["Name"]


def test_eight_gpu_hopper_job_lands_on_the_h100_node(cluster: RunningCluster) -> None:
    with _job(cluster, "cluster-8gpu-hopper.nomad.hcl", running=1) as (_, _, [alloc]):
        assert cluster.name_of(alloc["NodeID"]) == "h100"
        ids = _devices_of(alloc, "train")
        assert len(ids) == 8 and len(set(ids)) == 8
        assert attr_value(_owner(cluster, "h100", ids), "compute_capability") == "9.0"
        assert sorted(_visible_devices(cluster, alloc["ID"], "train")) == sorted(ids)


def test_mig_slice_lands_on_the_a100_node(cluster: RunningCluster) -> None:
    with _job(cluster, "cluster-mig-1g5gb.nomad.hcl", running=1) as (_, _, [alloc]):
        assert cluster.name_of(alloc["NodeID"]) == "a100"
        [dev] = _devices_of(alloc, "infer")
        assert dev.startswith("MIG-") and attr_value(_owner(cluster, "a100", [dev]), "mig_profile") == "1g.5gb"
        assert _visible_devices(cluster, alloc["ID"], "infer") == [dev]


def test_more_gpus_than_any_node_has_is_not_placed(cluster: RunningCluster) -> None:
    with _job(cluster, "cluster-too-many.nomad.hcl") as (job, ev, _):
        failed = (ev.get("FailedTGAllocs") or {}).get("g")
        assert failed, f"a job asking for 9 Hopper GPUs was placed: {json.dumps(ev, indent=1)[:3000]}"
        assert failed["NodesEvaluated"] == 3, failed
        assert failed["ConstraintFiltered"] == {"missing devices": 3}, failed
        assert ev.get("BlockedEval"), "no blocked evaluation: the job would not be placed once GPUs appear"
        assert cluster.api.job_allocs(job) == []


def test_spread_uses_all_three_nodes(cluster: RunningCluster) -> None:
    with _job(cluster, "cluster-spread.nomad.hcl", running=3) as (_, _, allocs):
        assert sorted(cluster.name_of(a["NodeID"]) for a in allocs) == ["a100", "gh200", "h100"]
        for a in allocs:
            _owner(cluster, cluster.name_of(a["NodeID"]), _devices_of(a, "infer"))


def test_drain_moves_the_gpu_job_to_the_other_matching_node(cluster: RunningCluster) -> None:
    drained = ""
    try:
        with _job(cluster, "cluster-drain.nomad.hcl", running=1) as (job, _, [first]):
            drained = cluster.name_of(first["NodeID"])
            assert drained in ("h100", "gh200"), f"a job asking for compute capability >= 9.0 runs on {drained}"
            other = {"h100": "gh200", "gh200": "h100"}[drained]
            cluster.api("PUT", f"/v1/node/{first['NodeID']}/drain",
                        {"DrainSpec": {"Deadline": 60 * 10**9, "IgnoreSystemJobs": False}})

            def moved() -> dict[str, Any] | None:
                allocs = [a for a in cluster.api.job_allocs(job) if a["ID"] != first["ID"]
                          and a["DesiredStatus"] == "run" and a["ClientStatus"] == "running"]
                return cluster.api.alloc(allocs[0]["ID"]) if allocs else None
            second = cluster.api.wait_for(f"the job to run again after draining {drained}", moved, 90)
            assert cluster.name_of(second["NodeID"]) == other
            [dev] = _devices_of(second, "infer")
            assert attr_value(_owner(cluster, other, [dev]), "compute_capability") == "9.0"
            assert _visible_devices(cluster, second["ID"], "infer") == [dev]
            cluster.api.wait_for(f"the allocation on {drained} to stop", lambda: cluster.api.alloc(first["ID"])[
                "ClientStatus"] in ("complete", "failed"), 60)
            cluster.api.wait_for(f"the drain of {drained} to finish", lambda: cluster.api.node(first["NodeID"])[
                "DrainStrategy"] is None, 60)
    finally:
        if drained:
            node_id = cluster.nodes[drained]
            cluster.api("PUT", f"/v1/node/{node_id}/drain", {"DrainSpec": None})
            cluster.api("PUT", f"/v1/node/{node_id}/eligibility", {"Eligibility": "eligible"})

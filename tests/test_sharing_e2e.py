"""GPU sharing and isolation through a real Nomad agent.

One `nomad agent -dev` with the plugin on two simulated H100s and

    sharing { shares = 4 }
    reserve { cuda_visible_devices = true  device_nodes = true  dev_root = <a fake /dev> }

runs one job that takes all eight shares at once: three raw_exec tasks and three
exec tasks on one share each, and one raw_exec task on two shares. Every task
prints CUDA_VISIBLE_DEVICES, NVIDIA_VISIBLE_DEVICES and the /dev/nvidia* nodes it
can see, then sleeps. Tasks on shares of one GPU must see that GPU's UUID and no
other; exec tasks (Nomad's exec driver: a chroot, namespaces and the devices cgroup)
must see exactly their GPU's /dev/nvidiaN and the control nodes; raw_exec has no
isolation and sees the host's /dev, so CUDA_VISIBLE_DEVICES is what keeps its CUDA
on its GPU. A ninth share cannot be placed.

There is no NVIDIA driver here, so `dev_root` points at a directory of character
device nodes made with mknod (major 195 as the driver's), which the exec driver
creates in the task's /dev from the plugin's DeviceSpecs. That and the exec driver
need root: the test says so and fails when it is not root.
"""

from __future__ import annotations

import glob
import json
import os
import re
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from e2e import cdi_node
from e2e.agent import REPO, NomadAgent, hcl_string
from e2e.gpu_agent import BlocksAgent, job, plugin_spec, running_agent, running_allocs, shell_group, task_output

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

SCENARIO = REPO / "tests" / "scenarios" / "matrix-2gpu.toml"
SHARES = 4
CONTROL = ("nvidiactl", "nvidia-uvm", "nvidia-uvm-tools")
NVIDIA_MAJOR = 195

def sim_gpus() -> dict[str, int]:
    """UUID -> minor number of the scenario's GPUs, as NVML reports them."""
    return {g["uuid"]: g["minor"] for g in cdi_node.sim_gpus(SCENARIO)}


def fake_dev(root: Path, minors: list[int]) -> Path:
    """A /dev with the nodes the driver would create: /dev/nvidiaN per GPU and the control nodes."""
    dev = root / "dev"
    dev.mkdir()
    nodes = {f"nvidia{m}": m for m in minors} | {"nvidiactl": 255, "nvidia-uvm": 256, "nvidia-uvm-tools": 257}
    for name, minor in nodes.items():
        os.mknod(dev / name, 0o666 | stat.S_IFCHR, os.makedev(NVIDIA_MAJOR, minor))
    return dev


def _libs(binary: str) -> list[str]:
    """The shared objects `binary` loads, its interpreter included, by the paths it names them."""
    out = subprocess.run(["ldd", binary], capture_output=True, text=True, timeout=30, check=True).stdout
    paths = []
    for line in out.splitlines():
        m = re.search(r"=>\s*(/\S+)", line) or re.match(r"\s*(/\S+)", line)
        if m:
            paths.append(m.group(1))
    return paths


def chroot_env() -> dict[str, str]:
    """A minimal chroot for exec tasks: sh and sleep and what they load (host path -> task path).

    Nomad's default chroot copies /bin, /lib, /usr and more per task, which takes tens
    of seconds here; the task script needs only these."""
    wanted = {"/bin/sh": "/bin/sh", "/bin/sleep": "/bin/sleep"}
    for binary in list(wanted):
        for lib in _libs(binary):
            wanted[lib] = lib
    return {os.path.realpath(src): dst for src, dst in wanted.items()}


@pytest.fixture(scope="module")
def gpus() -> dict[str, int]:
    assert cdi_node.SIM_LIB.is_file(), f"no simulated NVML at {cdi_node.SIM_LIB}: run `make sim`"
    found = sim_gpus()
    assert len(found) == 2, found
    return found


@pytest.fixture(scope="module")
def agent(gpus: dict[str, int], tmp_path_factory: pytest.TempPathFactory) -> Iterator[BlocksAgent]:
    assert os.geteuid() == 0, "the exec driver and the device nodes (mknod) need root"
    dev = fake_dev(tmp_path_factory.mktemp("sharing"), sorted(gpus.values()))
    blocks = (f"      sharing {{\n        shares = {SHARES}\n      }}\n"
              "      reserve {\n        cuda_visible_devices = true\n        device_nodes = true\n"
              f"        dev_root = {hcl_string(str(dev))}\n      }}\n")
    chroot = "".join(f"    {hcl_string(k)} = {hcl_string(v)}\n" for k, v in chroot_env().items())
    with running_agent(BlocksAgent("sharing", [plugin_spec(SCENARIO)], plugin_blocks=blocks,
                                   client_blocks=f"  chroot_env {{\n{chroot}  }}\n")) as a:
        yield a


SCRIPT = ('echo "CUDA_VISIBLE_DEVICES=$CUDA_VISIBLE_DEVICES"; echo "NVIDIA_VISIBLE_DEVICES=$NVIDIA_VISIBLE_DEVICES"; '
          'for f in /dev/nvidia*; do [ -e "$f" ] && echo "node=$f"; done; echo listed; exec sleep 3600')


def _group(name: str, driver: str, count: int, shares: int) -> str:
    return shell_group(name, SCRIPT, driver=driver, count=count, devices=shares)


GROUPS = {"raw": ("raw_exec", 3, 1), "exec": ("exec", 3, 1), "pair": ("raw_exec", 1, 2)}
JOB = job("shares", "".join(_group(n, d, c, s) for n, (d, c, s) in GROUPS.items()))


def _task_output(agent: NomadAgent, alloc_id: str) -> dict[str, Any]:
    text = task_output(agent, alloc_id)
    env = dict(line.split("=", 1) for line in text.splitlines() if "=" in line and not line.startswith("node="))
    nodes = sorted(line.split("=", 1)[1] for line in text.splitlines() if line.startswith("node="))
    return {"cuda": env.get("CUDA_VISIBLE_DEVICES", ""), "nvidia": env.get("NVIDIA_VISIBLE_DEVICES", ""),
            "nodes": nodes, "text": text}


@pytest.fixture(scope="module")
def placed(agent: BlocksAgent) -> list[dict[str, Any]]:
    """The job's allocations, all running, each with its share IDs and what its task printed."""
    agent.wait_for("8 shares on the node", lambda: sum(len(g["Instances"]) for g in agent.node_devices()) == 8, 60)
    ev = agent.wait_eval(agent.run_job(JOB))
    assert not ev.get("FailedTGAllocs"), f"not placed: {json.dumps(ev['FailedTGAllocs'], indent=1)}"
    want = sum(c for _, c, _ in GROUPS.values())

    allocs = running_allocs(agent, "shares", want)
    out = []
    for a in allocs:
        full = agent.alloc(a["ID"])
        (dev,) = full["AllocatedResources"]["Tasks"]["t"]["Devices"]
        printed = _task_output(agent, a["ID"])
        out.append({"id": a["ID"], "group": a["TaskGroup"], "shares": sorted(dev["DeviceIDs"]), **printed})
    agent.note("job shares: every allocation's shares and what its task printed", "\n\n".join(
        f"{x['group']} {x['id'][:8]} shares {x['shares']}\n{x['text'].strip()}" for x in sorted(
            out, key=lambda x: (x["group"], x["shares"]))))
    return out


def _gpus_of(shares: list[str]) -> list[str]:
    return sorted({s.split("::")[0] for s in shares})


def test_tasks_on_shares_see_their_gpu_and_no_other(placed: list[dict[str, Any]], gpus: dict[str, int]) -> None:
    used = [s for x in placed for s in x["shares"]]
    assert len(used) == len(set(used)) == 2 * SHARES, f"each share to one task: {used}"
    by_gpu: dict[str, list[dict[str, Any]]] = {}
    for x in placed:
        mine = _gpus_of(x["shares"])
        assert set(mine) <= set(gpus), x["shares"]
        assert sorted(x["nvidia"].split(",")) == mine, x
        assert sorted(x["cuda"].split(",")) == mine, x
        assert len(x["nvidia"].split(",")) == len(mine), "a GPU named twice"
        if len(x["shares"]) == 1:
            by_gpu.setdefault(mine[0], []).append(x)
    # Six one-share tasks on two GPUs: some GPU carries several, and they all see it alone.
    shared = [tasks for tasks in by_gpu.values() if len(tasks) >= 2]
    assert shared, by_gpu
    for gpu, tasks in by_gpu.items():
        assert {t["cuda"] for t in tasks} == {gpu}, tasks


def test_exec_tasks_see_exactly_their_device_nodes(placed: list[dict[str, Any]], gpus: dict[str, int]) -> None:
    execs = [x for x in placed if x["group"] == "exec"]
    assert len(execs) == 3
    for x in execs:
        (gpu,) = _gpus_of(x["shares"])
        want = sorted([f"/dev/nvidia{gpus[gpu]}"] + [f"/dev/{c}" for c in CONTROL])
        assert x["nodes"] == want, f"exec task on {gpu} sees {x['nodes']}, wants {want}"


def test_raw_exec_tasks_see_the_hosts_dev_and_their_cuda_devices(placed: list[dict[str, Any]]) -> None:
    # raw_exec has no isolation: the host's /dev, whatever the reservation says.
    host = sorted(p for p in glob.glob("/dev/nvidia*") if os.path.exists(p))
    raws = [x for x in placed if x["group"] in ("raw", "pair")]
    assert len(raws) == 4
    for x in raws:
        assert x["nodes"] == host, x
        assert sorted(x["cuda"].split(",")) == _gpus_of(x["shares"]), x


def test_a_ninth_share_is_not_placed(agent: BlocksAgent, placed: list[dict[str, Any]]) -> None:
    assert len(placed) == 7
    one_more = job("one-more", _group("g", "raw_exec", 1, 1))
    ev = agent.wait_eval(agent.run_job(one_more))
    failed = ev.get("FailedTGAllocs") or {}
    agent.note(f"job one-more (one more share): evaluation {ev['Status']}", json.dumps(failed, indent=1)[:2000])
    assert "g" in failed, ev
    metrics = failed["g"]
    assert metrics.get("DimensionExhausted") or metrics.get("ConstraintFiltered"), metrics
    assert not [a for a in agent.job_allocs("one-more") if a["ClientStatus"] == "running"]

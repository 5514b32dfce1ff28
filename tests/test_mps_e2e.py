"""MPS through a real Nomad agent: raw_exec tasks see the MPS environment and the
limits of their shares.

One `nomad agent -dev` with the plugin on one simulated GPU and

    sharing { shares = 4 }
    mps { enabled = true  mps_pipe_directory = <a temp dir>  mps_log_directory = <another> }

with tests/mps_standin.py serving the control socket in that pipe directory (the
daemon must answer, or the GPU is unhealthy and nothing is placed). One job takes
all four shares: two raw_exec tasks on one share each, one on two shares; each
prints its CUDA_MPS_* and NVIDIA_VISIBLE_DEVICES. The two-share task must see the
GPU once with the limits of two shares added up. Then the daemon is killed: the
GPU's shares turn unhealthy in Nomad's own API, naming the socket. (Tasks on
several GPUs with different limits: tests/test_mps.py, through Nomad's client code.)
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from e2e.agent import REPO, attr_value
from e2e.gpu_agent import BlocksAgent, job, plugin_spec, running_agent, running_allocs, shell_group, task_output

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

SCENARIO = REPO / "scenarios" / "1gpu.toml"
STANDIN = REPO / "tests" / "mps_standin.py"
SHARES = 4
KEYS = ("NVIDIA_VISIBLE_DEVICES", "CUDA_MPS_PIPE_DIRECTORY", "CUDA_MPS_LOG_DIRECTORY",
        "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE", "CUDA_MPS_PINNED_DEVICE_MEM_LIMIT")


@pytest.fixture(scope="module")
def pipe(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("mps") / "pipe"


@pytest.fixture(scope="module")
def daemon(pipe: Path) -> Iterator[subprocess.Popen[str]]:
    proc = subprocess.Popen([sys.executable, str(STANDIN), str(pipe)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "ready", "stand-in MPS daemon did not start"
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        proc.stdout.close()


@pytest.fixture(scope="module")
def agent(pipe: Path, daemon: subprocess.Popen[str]) -> Iterator[BlocksAgent]:
    blocks = (f"      sharing {{\n        shares = {SHARES}\n      }}\n"
              "      health {\n        probe_interval = \"500ms\"\n      }\n"
              "      mps {\n        enabled = true\n"
              f"        mps_pipe_directory = {json.dumps(str(pipe))}\n"
              f"        mps_log_directory = {json.dumps(str(pipe.parent / 'log'))}\n      }}\n")
    with running_agent(BlocksAgent("mps", [plugin_spec(SCENARIO)], plugin_blocks=blocks)) as a:
        yield a


SCRIPT = "".join(f'echo "{k}=${k}"; ' for k in KEYS) + "echo listed; exec sleep 3600"


GROUPS = {"one": (2, 1), "two": (1, 2)}
JOB = job("mps", "".join(shell_group(n, SCRIPT, count=c, devices=s) for n, (c, s) in GROUPS.items()))


@pytest.fixture(scope="module")
def memory(agent: BlocksAgent) -> int:
    """The GPUs' memory in MiB as Nomad's API shows it, once the node has every share, `mps = "ready"`."""
    def ready() -> list[dict[str, Any]] | None:
        groups = agent.node_devices()
        shares = sum(len(g["Instances"]) for g in groups)
        return groups if shares == SHARES and all(attr_value(g, "mps") == "ready" for g in groups) else None

    (group,) = agent.wait_for(f"{SHARES} shares with mps = ready", ready, 60)
    mib = attr_value(group, "memory")
    assert isinstance(mib, int) and mib > 0, group["Attributes"]
    return mib


@pytest.fixture(scope="module")
def placed(agent: BlocksAgent, memory: int) -> list[dict[str, Any]]:
    ev = agent.wait_eval(agent.run_job(JOB))
    assert not ev.get("FailedTGAllocs"), f"not placed: {json.dumps(ev['FailedTGAllocs'], indent=1)}"
    want = sum(c for c, _ in GROUPS.values())
    out = []
    for a in running_allocs(agent, "mps", want):
        full = agent.alloc(a["ID"])
        (dev,) = full["AllocatedResources"]["Tasks"]["t"]["Devices"]
        text = task_output(agent, a["ID"])
        env = dict(line.split("=", 1) for line in text.splitlines() if "=" in line)
        out.append({"group": a["TaskGroup"], "shares": sorted(dev["DeviceIDs"]), "env": env, "text": text})
    agent.note("job mps: every allocation's shares and what its task printed", "\n\n".join(
        f"{x['group']} shares {x['shares']}\n{x['text'].strip()}" for x in out))
    return out


def test_raw_exec_tasks_get_the_mps_environment_and_their_shares_limits(
        placed: list[dict[str, Any]], memory: int, pipe: Path) -> None:
    assert sorted(x["group"] for x in placed) == ["one", "one", "two"]
    used = [s for x in placed for s in x["shares"]]
    assert len(set(used)) == SHARES, f"every share to one task: {used}"
    (gpu,) = {s.split("::")[0] for s in used}
    for x in placed:
        env = x["env"]
        shares = len(x["shares"])
        assert shares == (2 if x["group"] == "two" else 1), x
        assert env["NVIDIA_VISIBLE_DEVICES"] == gpu, x  # two shares: the GPU once
        assert env["CUDA_MPS_PIPE_DIRECTORY"] == str(pipe), x
        assert env["CUDA_MPS_LOG_DIRECTORY"] == str(pipe.parent / "log"), x
        assert env["CUDA_MPS_ACTIVE_THREAD_PERCENTAGE"] == str(100 * shares // SHARES), x
        assert env["CUDA_MPS_PINNED_DEVICE_MEM_LIMIT"] == f"{gpu}={memory * shares // SHARES}M", x


def test_a_killed_daemon_makes_the_gpus_unhealthy_in_nomad(agent: BlocksAgent, placed: list[dict[str, Any]],
                                                           daemon: subprocess.Popen[str], pipe: Path) -> None:
    daemon.send_signal(signal.SIGKILL)
    daemon.wait(timeout=30)

    def unhealthy() -> list[dict[str, Any]] | None:
        instances = [i for g in agent.node_devices() for i in g["Instances"]]
        return instances if instances and not any(i["Healthy"] for i in instances) else None

    instances = agent.wait_for("every share unhealthy", unhealthy, 60)
    for i in instances:
        assert i["HealthDescription"] == f"MPS control daemon not reachable at {pipe}/control: connection refused", i
    assert {attr_value(g, "mps") for g in agent.node_devices()} == {"unreachable"}

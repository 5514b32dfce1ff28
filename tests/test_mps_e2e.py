"""MPS through a real Nomad agent (issue 22): raw_exec tasks see the MPS environment and the
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
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from e2e.agent import REPO, NomadAgent, PluginSpec, attr_value

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

PLUGIN = "nomad-device-nvidia"
PLUGIN_BIN = Path(os.environ.get("NOMAD_E2E_PLUGIN", REPO / ".venv" / "bin" / PLUGIN))
SIM_LIB = REPO / "build" / "sim" / "libnvidia-ml.so.1"
SCENARIO = REPO / "scenarios" / "1gpu.toml"
STANDIN = REPO / "tests" / "mps_standin.py"
SHARES = 4
KEYS = ("NVIDIA_VISIBLE_DEVICES", "CUDA_MPS_PIPE_DIRECTORY", "CUDA_MPS_LOG_DIRECTORY",
        "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE", "CUDA_MPS_PINNED_DEVICE_MEM_LIMIT")


class MpsAgent(NomadAgent):
    """The agent with the plugin's sharing and mps blocks."""

    def __init__(self, name: str, plugins: list[PluginSpec], blocks: str) -> None:
        super().__init__(name, plugins)
        self._blocks = blocks

    def _write_config(self, fresh: bool = True) -> Path:
        path = super()._write_config(fresh)
        text = path.read_text()
        head = f'plugin "{PLUGIN}" {{\n  config {{\n'
        assert head in text, text
        text = text.replace(head, head + self._blocks)
        path.write_text(text)
        (self.log_dir / "agent.hcl").write_text(text)
        return path


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
def agent(pipe: Path, daemon: subprocess.Popen[str]) -> Iterator[MpsAgent]:
    assert PLUGIN_BIN.is_file(), f"no plugin binary at {PLUGIN_BIN}: run `make native`"
    assert SIM_LIB.is_file(), f"no simulated NVML at {SIM_LIB}: run `make sim`"
    blocks = (f"      sharing {{\n        shares = {SHARES}\n      }}\n"
              "      health {\n        probe_interval = \"500ms\"\n      }\n"
              "      mps {\n        enabled = true\n"
              f"        mps_pipe_directory = {json.dumps(str(pipe))}\n"
              f"        mps_log_directory = {json.dumps(str(pipe.parent / 'log'))}\n      }}\n")
    spec = PluginSpec(PLUGIN, PLUGIN_BIN, {"simulate": str(SCENARIO), "nvml_library": str(SIM_LIB),
                                           "fingerprint_period": "5s"})
    a = MpsAgent("mps", [spec], blocks)
    try:
        a.start()
        a.note(f"agent up: {a.addr}, node {a.node_id}", (a.log_dir / "agent.hcl").read_text())
        yield a
    finally:
        a.stop()


SCRIPT = "".join(f'echo "{k}=${k}"; ' for k in KEYS) + "echo listed; exec sleep 3600"


def _group(name: str, count: int, shares: int) -> str:
    return f"""
  group "{name}" {{
    count = {count}
    restart {{
      attempts = 0
      mode     = "fail"
    }}
    task "t" {{
      driver = "raw_exec"
      config {{
        command = "/bin/sh"
        args    = ["-c", {json.dumps(SCRIPT)}]
      }}
      resources {{
        cpu    = 20
        memory = 16
        device "nvidia/gpu" {{
          count = {shares}
        }}
      }}
    }}
  }}"""


GROUPS = {"one": (2, 1), "two": (1, 2)}
JOB = ('job "mps" {\n  datacenters = ["*"]\n  type = "service"'
       + "".join(_group(n, c, s) for n, (c, s) in GROUPS.items()) + "\n}\n")


@pytest.fixture(scope="module")
def memory(agent: MpsAgent) -> int:
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
def placed(agent: MpsAgent, memory: int) -> list[dict[str, Any]]:
    ev = agent.wait_eval(agent.run_job(JOB))
    assert not ev.get("FailedTGAllocs"), f"not placed: {json.dumps(ev['FailedTGAllocs'], indent=1)}"
    want = sum(c for c, _ in GROUPS.values())

    def running() -> list[dict[str, Any]] | None:
        allocs = agent.job_allocs("mps")
        bad = [a for a in allocs if a["ClientStatus"] in ("failed", "lost")]
        if bad:
            full = agent.alloc(bad[0]["ID"])
            raise AssertionError(f"allocation failed: {json.dumps(full.get('TaskStates'), indent=1)[:3000]}")
        ok = [a for a in allocs if a["ClientStatus"] == "running"]
        return ok if len(ok) == want else None

    out = []
    for a in agent.wait_for(f"{want} allocations running", running, 120):
        full = agent.alloc(a["ID"])
        (dev,) = full["AllocatedResources"]["Tasks"]["t"]["Devices"]

        def listed(alloc_id: str = a["ID"]) -> str | None:
            text = agent.task_log(alloc_id, "t")
            return text if "listed" in text.splitlines() else None

        text = agent.wait_for(f"alloc {a['ID'][:8]} to print its environment", listed, 60)
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


def test_a_killed_daemon_makes_the_gpus_unhealthy_in_nomad(agent: MpsAgent, placed: list[dict[str, Any]],
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

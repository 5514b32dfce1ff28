"""A GPU task in Docker without NVIDIA's container runtime (CDI mode).

Nomad's docker driver switches a task to its `nvidia_runtime` whenever the
reservation's environment has NVIDIA_VISIBLE_DEVICES, and fails the task when
Docker has no such runtime. With `reserve { cdi = true }` the plugin answers with
the device nodes, mounts and environment of NVIDIA's CDI spec instead.

Here: a stand-in driver root (tests/e2e/cdi_node.py: character devices made with
mknod, stand-in driver libraries and programs, the simulated NVML), its CDI spec
written by NVIDIA's own `nvidia-ctk cdi generate`, a private `dockerd` from
Debian's docker.io with only runc (tests/e2e/docker_host.py: its own data root
and socket, no bridge, no iptables), a busybox image imported from Debian's
busybox-static, and a real `nomad agent -dev` whose docker driver talks to that
daemon. A job asks for one of the two GPUs; its container (network_mode "none")
must run under runc and see exactly that GPU's device node and the control
nodes, the driver files mounted (the libraries under their sonames too), the
ldcache folder on LD_LIBRARY_PATH, and no NVIDIA_VISIBLE_DEVICES.

Root is needed (mknod, dockerd); the test installs docker.io when it is missing.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from e2e import cdi_node
from e2e.agent import REPO, NomadAgent, hcl_string
from e2e.docker_host import DockerDaemon, ensure_docker
from e2e.gpu_agent import BlocksAgent, plugin_spec, running_agent, running_allocs

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

SCENARIO = REPO / "tests" / "scenarios" / "matrix-2gpu.toml"
DRIVER_VERSION = "550.90.07"
LIB = "/usr/lib/x86_64-linux-gnu"
# Character devices Docker gives every container itself.
DOCKER_OWN = {"/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom", "/dev/tty", "/dev/console",
              "/dev/pts/ptmx"}


@pytest.fixture(scope="module")
def docker() -> Iterator[DockerDaemon]:
    assert os.geteuid() == 0, "dockerd and the device nodes (mknod) need root"
    ensure_docker()
    daemon = DockerDaemon()
    try:
        daemon.start()
        daemon.import_busybox()
        yield daemon
    finally:
        daemon.stop()
    assert not daemon.root.exists() or not any(daemon.root.iterdir()), f"dockerd left {daemon.root} behind"


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Path:
    assert cdi_node.SIM_LIB.is_file(), f"no simulated NVML at {cdi_node.SIM_LIB}: run `make sim`"
    cdi_node.ensure_tools()
    root = tmp_path_factory.mktemp("cdidocker")
    driver = cdi_node.stand_in_driver(root, DRIVER_VERSION, [0, 1])
    cdi_node.generate_spec(driver, root / "cdi" / "nvidia.yaml", SCENARIO, "uuid")
    return root


@contextmanager
def _agent(name: str, docker: DockerDaemon, node: Path, cdi: bool) -> Iterator[BlocksAgent]:
    plugin_block = (f"      reserve {{\n        cdi = {'true' if cdi else 'false'}\n"
                    f"        cdi_spec_dirs = [{hcl_string(str(node / 'cdi'))}]\n      }}\n")
    # No nvidia runtime in this Docker; the driver's nvidia_runtime stays at its default ("nvidia").
    docker_block = f"""
plugin "docker" {{
  config {{
    endpoint = {hcl_string(docker.endpoint)}
    gc {{
      image = false
    }}
  }}
}}
"""
    with running_agent(BlocksAgent(name, [plugin_spec(SCENARIO)], plugin_blocks=plugin_block, tail=docker_block)) as a:
        a.wait_for("the docker driver and the simulated GPUs on the node", lambda: _ready(a), 120)
        yield a


def _ready(a: NomadAgent) -> bool:
    gpus = [g for g in a.node_devices() if g["Vendor"] == "nvidia" and len(g["Instances"]) == 2]
    return bool(gpus) and a.node()["Attributes"].get("driver.docker") == "1"


@pytest.fixture(scope="module")
def agent(docker: DockerDaemon, node: Path) -> Iterator[BlocksAgent]:
    with _agent("cdi-docker", docker, node, cdi=True) as a:
        yield a


SCRIPT = (
    # No "${": Nomad evaluates it in a task's config.
    'env | while IFS= read -r l; do echo "env=$l"; done; '
    'for f in /dev/* /dev/*/*; do [ -c "$f" ] && [ ! -L "$f" ] && echo "chardev=$f $(stat -c %t:%T "$f")"; done; '
    f'for f in {LIB}/*; do [ -f "$f" ] && set -- $(md5sum "$f") && echo "lib=$f $1"; done; '
    'echo "smi=$(/usr/bin/nvidia-smi)"; echo listed; exec sleep 3600'
)

JOB = """
job "cdi-docker" {{
  datacenters = ["dc1"]
  group "g" {{
    restart {{
      attempts = 0
      mode     = "fail"
    }}
    reschedule {{
      attempts  = 0
      unlimited = false
    }}
    task "t" {{
      driver = "docker"
      config {{
        image        = "{image}"
        network_mode = "none"
        command      = "/bin/sh"
        args         = ["-c", {script}]
      }}
      resources {{
        cpu    = 50
        memory = 32
        device "nvidia/gpu" {{
          count = 1
        }}
      }}
    }}
  }}
}}
"""


def _running(agent: NomadAgent, job: str) -> dict[str, Any]:
    (first, *_) = running_allocs(agent, job, timeout=180, width=4000)
    return agent.alloc(first["ID"])


def test_docker_task_gets_its_gpu_through_cdi_without_the_nvidia_runtime(
    agent: BlocksAgent, docker: DockerDaemon, node: Path
) -> None:
    runtimes = agent.node()["Attributes"].get("driver.docker.runtimes", "")
    assert "runc" in runtimes and "nvidia" not in runtimes, runtimes

    agent.wait_eval(agent.run_job(JOB.format(image=docker.import_busybox(), script=json.dumps(SCRIPT))))
    alloc = _running(agent, "cdi-docker")
    (gpu,) = alloc["AllocatedResources"]["Tasks"]["t"]["Devices"][0]["DeviceIDs"]
    text = agent.wait_for("the task's listing", lambda: t if "listed" in (t := agent.task_log(alloc["ID"], "t"))
                          else None, 120)
    agent.note(f"task output (GPU {gpu})", text)
    out = text.splitlines()

    # Docker ran it with runc: no nvidia runtime was asked for.
    ids = docker.docker("ps", "-q", "--filter", f"label=com.hashicorp.nomad.alloc_id={alloc['ID']}").stdout.split()
    assert len(ids) == 1, ids
    (inspect,) = json.loads(docker.docker("inspect", ids[0].decode()).stdout)
    assert inspect["HostConfig"]["Runtime"] == "runc", inspect["HostConfig"]["Runtime"]
    agent.note("docker inspect: runtime and devices",
               json.dumps({"Runtime": inspect["HostConfig"]["Runtime"], "Devices": inspect["HostConfig"]["Devices"]},
                          indent=1))

    env = dict(line.removeprefix("env=").split("=", 1) for line in out if line.startswith("env=") and "=" in line[4:])
    assert "NVIDIA_VISIBLE_DEVICES" not in env, env
    assert env.get("LD_LIBRARY_PATH") == LIB, env

    # Exactly its GPU's node and the control nodes, with the numbers of the nodes the test made.
    minor = {u: i for i, u in enumerate(_uuids())}[gpu]
    chardevs = dict(line.removeprefix("chardev=").split() for line in out if line.startswith("chardev="))
    nvidia = {p: v for p, v in chardevs.items() if p not in DOCKER_OWN}
    assert nvidia == {f"/dev/nvidia{minor}": f"c3:{minor:x}", "/dev/nvidiactl": "c3:ff",
                      "/dev/nvidia-uvm": "1fe:0", "/dev/nvidia-uvm-tools": "1fe:1"}, chardevs

    # The driver files: each library by its file name and its soname (create-symlinks
    # stand-in), the same bytes as on the host; the stand-in nvidia-smi runs.
    libs = dict(line.removeprefix("lib=").split() for line in out if line.startswith("lib="))
    host = node / "driver" / LIB.lstrip("/")
    for name, soname in {**cdi_node.LIBRARIES, "libnvidia-ml": "libnvidia-ml.so.1"}.items():
        digest = hashlib.md5((host / f"{name}.so.{DRIVER_VERSION}").read_bytes()).hexdigest()
        assert libs.get(f"{LIB}/{name}.so.{DRIVER_VERSION}") == digest, (name, libs)
        assert libs.get(f"{LIB}/{soname}") == digest, (soname, libs)
    assert "smi=stand-in nvidia-smi" in out


def _uuids() -> list[str]:
    from test_cdi import sim_uuids  # the same NVML read as the spec test

    return sim_uuids()


def test_without_cdi_mode_nomad_asks_docker_for_the_missing_nvidia_runtime(docker: DockerDaemon, node: Path) -> None:
    # The failure CDI mode exists for, on the same Docker: NVIDIA_VISIBLE_DEVICES in
    # the reservation makes Nomad's docker driver demand its nvidia runtime.
    with _agent("cdi-docker-off", docker, node, cdi=False) as plain:
        plain.wait_eval(plain.run_job(JOB.format(image=docker.import_busybox(), script=json.dumps(SCRIPT))))
        with pytest.raises(AssertionError) as failed:
            _running(plain, "cdi-docker")
        assert 'requested docker runtime \\"nvidia\\" was not found' in str(failed.value), str(failed.value)[:3000]

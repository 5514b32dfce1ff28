"""A simulated GPU cluster on one machine: a real Nomad server and three clients on loopback.

Each agent is its own `nomad agent` process with its own data dir, ports, node
name, cgroup parent and plugin_dir; each client runs this plugin on a different
simulated node (8xH100, 8xA100 with mixed MIG, GH200) through the simulated
NVML driver. `make cluster` (scripts/cluster.py) starts it for a person;
tests/test_cluster.py starts that same script and schedules jobs through the
server's HTTP API. Every wait is bounded; `stop()` leaves no process behind.
"""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, TypeVar

from e2e.agent import (DENIED_FINGERPRINTERS, NOMAD_BIN, REPO, AgentError, free_ports, hcl_string, http_api,
                       leftover_pids, poll_until)

T = TypeVar("T")

PLUGIN = "nomad-device-nvidia"
PLUGIN_BIN = Path(os.environ.get("NOMAD_E2E_PLUGIN", REPO / ".venv" / "bin" / PLUGIN))
SIM_LIB = REPO / "build" / "sim" / "libnvidia-ml.so.1"
SCENARIOS = REPO / "scenarios"
LOG_ROOT = REPO / "build" / "cluster"


@dataclass(frozen=True)
class NodeSpec:
    name: str  # the node name, also the agent's directory name
    scenario: Path
    what: str  # for people: what the node is


NODES = (
    NodeSpec("h100", SCENARIOS / "8xh100.toml", "8 x H100 80GB (SXM5), compute capability 9.0"),
    NodeSpec("a100", SCENARIOS / "8xa100-mixed-mig.toml",
             "8 x A100 40GB: 4 whole, 4 in MIG mode (1g.5gb, 2g.10gb, 3g.20gb, 4g.20gb, 7g.40gb slices)"),
    NodeSpec("gh200", SCENARIOS / "gh200.toml", "1 x GH200 96GB (Grace Hopper, aarch64 in real life), 9.0"),
)


class Api:
    """Nomad's HTTP API at one address; waits are bounded and fail naming what they waited for."""

    def __init__(self, addr: str, alive: Callable[[], str | None] = lambda: None) -> None:
        self.addr = addr
        self.alive = alive  # returns why the cluster is gone, or None while it is up

    def __call__(self, method: str, path: str, body: object | None = None, raw: bool = False) -> Any:
        return http_api(self.addr, method, path, body, raw)

    def wait_for(self, what: str, probe: Callable[[], T | None], timeout: float, interval: float = 0.25) -> T:
        return poll_until(what, probe, timeout, interval, gone=self.alive)

    # ---- helpers ----------------------------------------------------------
    def nodes(self) -> list[dict[str, Any]]:
        return list(self("GET", "/v1/nodes"))

    def node(self, node_id: str) -> dict[str, Any]:
        return dict(self("GET", f"/v1/node/{node_id}"))

    def gpu_groups(self, node_id: str) -> list[dict[str, Any]]:
        devices = self.node(node_id).get("NodeResources", {}).get("Devices") or []
        return [g for g in devices if g["Vendor"] == "nvidia" and g["Type"] == "gpu"]

    def run_job(self, hcl: str) -> str:
        """Parse HCL through the server (as `nomad job run` does), register it; returns the eval ID."""
        job = self("POST", "/v1/jobs/parse", {"JobHCL": hcl, "Canonicalize": True})
        return str(self("POST", "/v1/jobs", {"Job": job})["EvalID"])

    def wait_eval(self, eval_id: str, timeout: float = 60) -> dict[str, Any]:
        def done() -> dict[str, Any] | None:
            ev = dict(self("GET", f"/v1/evaluation/{eval_id}"))
            return ev if ev["Status"] in ("complete", "failed", "canceled", "blocked") else None
        return self.wait_for(f"evaluation {eval_id} to finish", done, timeout)

    def job_allocs(self, job_id: str) -> list[dict[str, Any]]:
        return list(self("GET", f"/v1/job/{urllib.parse.quote(job_id)}/allocations"))

    def alloc(self, alloc_id: str) -> dict[str, Any]:
        return dict(self("GET", f"/v1/allocation/{alloc_id}"))

    def running_allocs(self, job_id: str, count: int, timeout: float = 90) -> list[dict[str, Any]]:
        """Wait until `count` allocations of the job run (a failed one fails the wait with its task states)."""
        def running() -> list[dict[str, Any]] | None:
            allocs = [a for a in self.job_allocs(job_id) if a["DesiredStatus"] == "run"]
            bad = [a for a in allocs if a["ClientStatus"] in ("failed", "lost")]
            if bad:
                states = self.alloc(bad[0]["ID"]).get("TaskStates")
                raise AssertionError(f"allocation of {job_id} failed: {json.dumps(states, indent=1)[:3000]}")
            ok = [a for a in allocs if a["ClientStatus"] == "running"]
            return [self.alloc(a["ID"]) for a in ok] if len(ok) == count else None
        return self.wait_for(f"{count} running allocation(s) of job {job_id}", running, timeout)

    def purge(self, job_id: str, timeout: float = 60) -> None:
        """Stop and purge the job, and wait until none of its allocations runs (their devices are free)."""
        self("DELETE", f"/v1/job/{urllib.parse.quote(job_id)}?purge=true")

        def stopped() -> bool:
            allocs = self("GET", "/v1/allocations")
            return all(a["ClientStatus"] in ("complete", "failed", "lost") for a in allocs if a["JobID"] == job_id)
        self.wait_for(f"the allocations of job {job_id} to stop", stopped, timeout)


def _parent_death_signal() -> None:
    # In the child before exec: if the process that started the agents dies without
    # stopping them (SIGKILL), the kernel sends each agent SIGTERM, a clean shutdown.
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class Cluster:
    """One server and one client per NodeSpec, under one short temporary root."""

    def __init__(self, nodes: Sequence[NodeSpec] = NODES, nomad_bin: Path = NOMAD_BIN,
                 plugin_bin: Path = PLUGIN_BIN, sim_lib: Path = SIM_LIB,
                 cancel: threading.Event | None = None) -> None:
        for path, what in ((nomad_bin, "make nomad"), (plugin_bin, "make native"), (sim_lib, "make sim")):
            if not path.is_file():
                raise AgentError(f"{path} is missing: run `{what}`")
        for n in nodes:
            if not n.scenario.is_file():
                raise AgentError(f"no scenario {n.scenario}")
        self.nodes = list(nodes)
        self.nomad_bin, self.plugin_bin, self.sim_lib = nomad_bin, plugin_bin, sim_lib
        # Short: task and plugin unix sockets live below it (108-byte limit).
        self.root = Path(tempfile.mkdtemp(prefix="ndc-"))
        shutil.rmtree(LOG_ROOT, ignore_errors=True)
        LOG_ROOT.mkdir(parents=True)
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self._logs: list[IO[bytes]] = []
        self.ports: dict[str, tuple[int, int, int]] = {}
        self.node_ids: dict[str, str] = {}
        self.api = Api("", self.gone)
        self.survivors: dict[int, str] = {}
        self.cancel = cancel or threading.Event()  # set: waits in start() give up at once

    # ---- configuration ----------------------------------------------------
    def _common(self, name: str) -> str:
        http, rpc, serf = self.ports[name]
        return f"""
name = {hcl_string(name)}
data_dir = {hcl_string(str(self.root / name / "data"))}
bind_addr = "127.0.0.1"
log_level = "DEBUG"
disable_update_check = true
ports {{
  http = {http}
  rpc  = {rpc}
  serf = {serf}
}}
advertise {{
  http = "127.0.0.1"
  rpc  = "127.0.0.1"
  serf = "127.0.0.1"
}}
"""

    def _server_config(self) -> str:
        return self._common("server") + """
server {
  enabled          = true
  bootstrap_expect = 1
}
"""

    def _client_config(self, node: NodeSpec) -> str:
        plugin_dir = self.root / node.name / "plugins"
        plugin_dir.mkdir(parents=True)
        # A launcher, not a copy: the plugin block's name must equal the file name in plugin_dir.
        exe = plugin_dir / PLUGIN
        exe.write_text(f'#!/bin/sh\nexec {hcl_string(str(self.plugin_bin))} "$@"\n')
        exe.chmod(0o755)
        server_rpc = self.ports["server"][1]
        return self._common(node.name) + f"""
plugin_dir = {hcl_string(str(plugin_dir))}
client {{
  enabled           = true
  servers           = ["127.0.0.1:{server_rpc}"]
  network_interface = "lo"
  node_class        = {hcl_string(node.name)}
  # Three clients on one host: each its own cgroup tree (and cpuset partitions), so
  # none rewrites another's; a fixed name, so runs do not pile up cgroup directories.
  cgroup_parent     = {hcl_string(f"nomad-cluster-{node.name}")}
  options = {{
    "fingerprint.denylist" = {hcl_string(",".join(DENIED_FINGERPRINTERS))}
  }}
}}
plugin "raw_exec" {{
  config {{
    enabled = true
  }}
}}
plugin "{PLUGIN}" {{
  config {{
    simulate           = {hcl_string(str(node.scenario))}
    nvml_library       = {hcl_string(str(self.sim_lib))}
    fingerprint_period = "5s"
  }}
}}
"""

    # ---- lifecycle ----------------------------------------------------------
    def _launch(self, name: str, config: str) -> None:
        (self.root / name).mkdir(exist_ok=True)
        path = self.root / name / "agent.hcl"
        path.write_text(config)
        shutil.copy(path, LOG_ROOT / f"{name}.hcl")
        log = open(LOG_ROOT / f"{name}.log", "ab")
        self._logs.append(log)
        self.procs[name] = subprocess.Popen(
            [str(self.nomad_bin), "agent", "-config", str(path)], stdout=log, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, cwd=self.root / name, start_new_session=True,
            preexec_fn=_parent_death_signal)

    def gone(self) -> str | None:
        if self.cancel.is_set():
            return "the cluster was asked to stop"
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                return f"the Nomad agent {name} exited ({proc.returncode}); see {LOG_ROOT / (name + '.log')}:\n" \
                       + self.log_tail(name)
        return None

    def log_tail(self, name: str, lines: int = 25) -> str:
        try:
            return "\n".join((LOG_ROOT / f"{name}.log").read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def start(self, timeout: float = 120) -> None:
        """Server first, then the clients; returns once every node is ready with its GPUs listed."""
        ports = free_ports(3 * (1 + len(self.nodes)))
        for i, name in enumerate(["server", *(n.name for n in self.nodes)]):
            self.ports[name] = (ports[3 * i], ports[3 * i + 1], ports[3 * i + 2])
        self.api = Api(f"http://127.0.0.1:{self.ports['server'][0]}", self.gone)
        self._launch("server", self._server_config())
        for node in self.nodes:  # the clients retry the server until it answers
            self._launch(node.name, self._client_config(node))
        self.api.wait_for("the server's HTTP API and an elected leader",
                          lambda: self.api("GET", "/v1/status/leader") or None, timeout)

        def ready() -> dict[str, str] | None:
            by_name = {n["Name"]: n for n in self.api.nodes() if n["Status"] == "ready"}
            if not all(n.name in by_name for n in self.nodes):
                return None
            ids = {n.name: str(by_name[n.name]["ID"]) for n in self.nodes}
            return ids if all(self.api.gpu_groups(i) for i in ids.values()) else None
        self.node_ids = self.api.wait_for("all three client nodes ready, each with its simulated GPUs", ready, timeout)

    def stop(self) -> dict[int, str]:
        """Purge every job, then SIGINT the clients and then the server (SIGKILL of an agent's
        process group after 20 s), then kill whatever of ours still runs (recorded first in
        `survivors`, pid -> command line) and remove the root. Never raises."""
        try:
            if "server" in self.procs and self.procs["server"].poll() is None:
                api = Api(self.api.addr)  # not cancelled by `cancel`: stopping is what it asked for
                try:
                    for job in api("GET", "/v1/jobs"):
                        api("DELETE", f"/v1/job/{urllib.parse.quote(job['ID'])}?purge=true")
                    api.wait_for("allocations to stop", lambda: all(
                        a["ClientStatus"] in ("complete", "failed", "lost") for a in api("GET", "/v1/allocations")),
                        30)
                except Exception:  # noqa: BLE001 - best effort; the kills below are the guarantee
                    pass
            clients = [p for name, p in self.procs.items() if name != "server"]
            for group in (clients, [self.procs[n] for n in ("server",) if n in self.procs]):
                for proc in group:
                    if proc.poll() is None:
                        proc.send_signal(signal.SIGINT)
                for proc in group:
                    try:
                        proc.wait(20)
                    except subprocess.TimeoutExpired:
                        os.killpg(proc.pid, signal.SIGKILL)
                        proc.wait(10)
        except (ProcessLookupError, OSError):
            pass
        finally:
            deadline = time.monotonic() + 3  # a plugin notices its agent's exit within a moment
            while self.leftover_pids() and time.monotonic() < deadline:
                time.sleep(0.1)
            for pid in self.leftover_pids():
                try:
                    self.survivors[pid] = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(
                        errors="replace")
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass
            for log in self._logs:
                log.close()
            shutil.rmtree(self.root, ignore_errors=True)
        return self.survivors

    def leftover_pids(self) -> list[int]:
        """Processes (agents, plugins, executors, tasks) whose command line or cwd is under our root."""
        return leftover_pids(self.root)


"""A real `nomad agent -dev` on loopback, for end-to-end tests.

The agent gets its own data dir, free ports on 127.0.0.1, a plugin_dir holding
launchers for the device plugins under test, and a log file under build/e2e/.
Every wait is bounded and fails with what it was waiting for and the last
thing it saw; `stop()` always leaves no agent, plugin or task process behind.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, TypeVar

T = TypeVar("T")

REPO = Path(__file__).resolve().parents[2]
BUILD = REPO / "build"
NOMAD_BIN = Path(os.environ.get("NOMAD_E2E_NOMAD", BUILD / "bin" / "nomad"))
LOG_ROOT = BUILD / "e2e"

# Fingerprinters that would reach outside the machine (cloud metadata) or look
# for services we do not run; denied so the agent stays on 127.0.0.1.
DENIED_FINGERPRINTERS = ("env_aws", "env_gce", "env_azure", "env_digitalocean", "consul", "vault")


class AgentError(AssertionError):
    """The agent did not do what the test waited for; the message says what and points at the log."""


def free_ports(count: int) -> list[int]:
    """Ports free on 127.0.0.1 right now (all held open together so they differ)."""
    socks = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def http_api(addr: str, method: str, path: str, body: object | None = None, raw: bool = False) -> Any:
    """One call of Nomad's HTTP API: the decoded JSON answer (the bytes with `raw`)."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(addr + path, data=data, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            payload = resp.read()
    except urllib.error.HTTPError as exc:
        raise AgentError(f"{method} {path}: HTTP {exc.code}: {exc.read().decode(errors='replace')[:500]}") from None
    if raw:
        return payload
    return json.loads(payload) if payload else None


def poll_until(what: str, probe: Callable[[], T | None], timeout: float, interval: float, *,
               gone: Callable[[], str | None], context: Callable[[], str] = lambda: "", width: int = 1500) -> T:
    """Poll `probe` until it returns something truthy. Fails naming `what` when `gone()`
    says why the system under test is no longer there, or after `timeout` seconds with
    the last value (or error) seen and `context()`."""
    deadline = time.monotonic() + timeout
    last: object = None
    while True:
        why = gone()
        if why:
            raise AgentError(f"{why} while waiting for {what}")
        try:
            value = probe()
        except (AgentError, OSError, KeyError, ValueError) as exc:
            value, last = None, exc
        else:
            last = value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AgentError(f"timed out after {timeout:.0f}s waiting for {what}; last seen: {last!r:.{width}}{context()}")
        time.sleep(interval)


def leftover_pids(root: Path) -> list[int]:
    """Processes whose command line or cwd is under `root` (this process aside)."""
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            cwd = os.readlink(entry / "cwd")
        except OSError:
            continue
        if str(root) in cmd or cwd.startswith(str(root)):
            out.append(int(entry.name))
    return out


def end_process(proc: subprocess.Popen[bytes] | None, sig: int, grace: float) -> None:
    """Send `sig` to a process started in its own session; SIGKILL its process group
    when it has not exited after `grace` seconds."""
    try:
        if proc is not None and proc.poll() is None:
            proc.send_signal(sig)
            try:
                proc.wait(grace)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)
    except ProcessLookupError:
        pass


def kill_pids(pids: list[int]) -> dict[int, str]:
    """SIGKILL these processes; returns pid -> command line of each one found."""
    killed = {}
    for pid in pids:
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            killed[pid] = cmd
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    return killed


def attr_value(group: dict[str, Any], name: str) -> Any:
    """The value of a device group's attribute in Nomad's API (whichever typed field is set)."""
    a = group["Attributes"].get(name) or {}
    for key in ("Int", "Float", "String", "Bool"):
        if a.get(key) is not None:
            return a[key]
    return None


def hcl_string(value: str) -> str:
    return json.dumps(value)  # a JSON string literal is a valid HCL string literal


def hcl_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, str):
        return hcl_string(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(hcl_value(v) for v in value) + "]"
    raise TypeError(f"no HCL form for {value!r}")


@dataclass(frozen=True)
class PluginSpec:
    """One external plugin: `name` is its file name in plugin_dir, which is also
    the name of its `plugin "<name>"` block in the agent config."""

    name: str
    command: Path  # an executable (a console script, or a shell launcher)
    config: Mapping[str, object] = field(default_factory=dict)
    env: Mapping[str, str] = field(default_factory=dict)


class NomadAgent:
    def __init__(self, name: str, plugins: Sequence[PluginSpec], nomad_bin: Path = NOMAD_BIN) -> None:
        if not nomad_bin.is_file():
            raise AgentError(f"no Nomad binary at {nomad_bin}: build it with `make -C tests/harness nomad`")
        self.name = name
        self.nomad_bin = nomad_bin
        self.plugins = list(plugins)
        # Short path: plugin and task unix sockets live below it (108-byte limit).
        self.root = Path(tempfile.mkdtemp(prefix="nde2e-"))
        self.log_dir = LOG_ROOT / name
        shutil.rmtree(self.log_dir, ignore_errors=True)
        self.log_dir.mkdir(parents=True)
        self.http_port, self.rpc_port, self.serf_port = free_ports(3)
        self.addr = f"http://127.0.0.1:{self.http_port}"
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    # ---- lifecycle -------------------------------------------------------
    def _write_config(self, fresh: bool = True) -> Path:
        plugin_dir = self.root / "plugins"
        plugin_dir.mkdir(exist_ok=not fresh)
        blocks = []
        for p in self.plugins:
            exe = plugin_dir / p.name
            # A launcher, not a copy: the agent scans plugin_dir for executables and the
            # plugin block's name must equal the file name; env carries test-only settings.
            lines = ["#!/bin/sh"]
            lines += [f"export {k}={hcl_string(v)}" for k, v in p.env.items()]
            lines.append(f'exec {hcl_string(str(p.command))} "$@"')
            exe.write_text("\n".join(lines) + "\n")
            exe.chmod(0o755)
            body = "\n".join(f"      {k} = {hcl_value(v)}" for k, v in p.config.items())
            blocks.append(f'plugin "{p.name}" {{\n  config {{\n{body}\n  }}\n}}\n')
        conf = f"""
name = "e2e-{self.name}"
data_dir = {hcl_string(str(self.root / "data"))}
plugin_dir = {hcl_string(str(plugin_dir))}
bind_addr = "127.0.0.1"
log_level = "DEBUG"
disable_update_check = true
ports {{
  http = {self.http_port}
  rpc  = {self.rpc_port}
  serf = {self.serf_port}
}}
advertise {{
  http = "127.0.0.1"
  rpc  = "127.0.0.1"
  serf = "127.0.0.1"
}}
client {{
  enabled = true
  network_interface = "lo"
  options = {{
    "fingerprint.denylist" = {hcl_string(",".join(DENIED_FINGERPRINTERS))}
  }}
}}
plugin "raw_exec" {{
  config {{
    enabled = true
  }}
}}
""" + "\n".join(blocks)
        path = self.root / "agent.hcl"
        path.write_text(conf)
        shutil.copy(path, self.log_dir / "agent.hcl")
        return path

    def start(self, timeout: float = 90.0, attempts: int = 3) -> None:
        """Start the agent and wait for a leader and a ready client node. A port taken
        between choosing it and the agent binding it gets fresh ports and another try."""
        conf = self._write_config()
        for attempt in range(1, attempts + 1):
            self._log = open(self.log_dir / "agent.log", "ab")
            env = dict(os.environ, NOMAD_ADDR=self.addr)
            self.proc = subprocess.Popen(
                [str(self.nomad_bin), "agent", "-dev", "-config", str(conf)],
                stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                cwd=self.root, env=env, start_new_session=True,
            )
            try:
                self.wait_for("the agent's HTTP API and an elected leader", self._leader, timeout)
                break
            except AgentError:
                if attempt == attempts or self.proc.poll() is None or "address already in use" not in self.log_tail(10**6):
                    raise
                self._log.close()
                self.http_port, self.rpc_port, self.serf_port = free_ports(3)
                self.addr = f"http://127.0.0.1:{self.http_port}"
                conf = self._write_config(fresh=False)
        self.node_id = self.wait_for("the client node to register and be ready", self._ready_node, timeout)

    def _leader(self) -> str | None:
        try:
            leader = self.api("GET", "/v1/status/leader")
        except (OSError, AgentError):
            return None
        return str(leader) if leader else None

    def _ready_node(self) -> str | None:
        nodes = self.api("GET", "/v1/nodes")
        ready = [n for n in nodes if n.get("Status") == "ready"]
        return str(ready[0]["ID"]) if ready else None

    def stop(self) -> None:
        """Stop jobs, then the agent (SIGINT as an operator would, SIGKILL of its process
        group after 20 s), then kill any task or plugin process still running from our
        root; those are recorded in `survivors` first (pid -> command line). Never raises."""
        self.survivors: dict[int, str] = {}
        try:
            if self.proc is not None and self.proc.poll() is None:
                try:
                    for job in self.api("GET", "/v1/jobs"):
                        self.api("DELETE", f"/v1/job/{job['ID']}?purge=true")
                    self.wait_for("allocations to stop", self._allocs_done, 30)
                except Exception:  # noqa: BLE001 - best effort; the kills below are the guarantee
                    pass
            end_process(self.proc, signal.SIGINT, 20)
        finally:
            time.sleep(0.5)  # a plugin notices its parent's exit within a moment
            self.survivors = kill_pids(self.leftover_pids())
            if self._log is not None:
                self._log.close()
            shutil.rmtree(self.root, ignore_errors=True)

    def _allocs_done(self) -> bool:
        allocs = self.api("GET", "/v1/allocations")
        return all(a["ClientStatus"] in ("complete", "failed", "lost") for a in allocs)

    def leftover_pids(self) -> list[int]:
        """Processes (executors, tasks, plugins) whose command line or cwd is under our root."""
        return leftover_pids(self.root)

    def plugin_pids(self, name: str) -> list[int]:
        """PIDs of the running plugin `name`: children of the agent running its command
        (the launcher in plugin_dir execs it, so the PID is the one the agent started)."""
        assert self.proc is not None
        spec = next(p for p in self.plugins if p.name == name)
        target = str(spec.command).encode()
        pids = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                cmd = (entry / "cmdline").read_bytes().split(b"\0")
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            if ppid == self.proc.pid and target in cmd:
                pids.append(int(entry.name))
        return pids

    # ---- API -------------------------------------------------------------
    def api(self, method: str, path: str, body: object | None = None, raw: bool = False) -> Any:
        return http_api(self.addr, method, path, body, raw)

    def cli(self, *args: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        res = subprocess.run([str(self.nomad_bin), *args], capture_output=True, text=True, timeout=timeout,
                             env=dict(os.environ, NOMAD_ADDR=self.addr), stdin=subprocess.DEVNULL)
        with open(self.log_dir / "cli.log", "a") as f:
            f.write(f"$ nomad {' '.join(args)}\n{res.stdout}{res.stderr}[exit {res.returncode}]\n\n")
        if check and res.returncode != 0:
            raise AgentError(f"`nomad {' '.join(args)}` exited {res.returncode}:\n{res.stdout}{res.stderr}")
        return res

    def wait_for(self, what: str, probe: Callable[[], T | None], timeout: float, interval: float = 0.25) -> T:
        """Poll `probe` until it returns something truthy; fail naming `what` after `timeout` s."""

        def gone() -> str | None:
            if self.proc is not None and self.proc.poll() is not None:
                return (f"the Nomad agent exited ({self.proc.returncode}); "
                        f"see {self.log_dir / 'agent.log'}:\n{self.log_tail()}")
            return None

        return poll_until(what, probe, timeout, interval, gone=gone,
                          context=lambda: f"; agent log: {self.log_dir / 'agent.log'}\n{self.log_tail()}", width=800)

    def note(self, title: str, body: str = "") -> None:
        """One step of the run for the transcript (build/e2e/<name>/transcript.md)."""
        with open(self.log_dir / "transcript.md", "a") as f:
            f.write(f"### {title}\n")
            if body:
                f.write("```\n" + body.rstrip() + "\n```\n")
            f.write("\n")

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = (self.log_dir / "agent.log").read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    # ---- helpers on the API ----------------------------------------------
    def node(self) -> dict[str, Any]:
        return dict(self.api("GET", f"/v1/node/{self.node_id}"))

    def node_devices(self) -> list[dict[str, Any]]:
        return list(self.node().get("NodeResources", {}).get("Devices") or [])

    def run_job(self, hcl: str) -> str:
        """Parse HCL through the agent (as `nomad job run` does), register it; returns the eval ID."""
        job = self.api("POST", "/v1/jobs/parse", {"JobHCL": hcl, "Canonicalize": True})
        res = self.api("POST", "/v1/jobs", {"Job": job})
        with open(self.log_dir / "jobs.log", "a") as f:
            f.write(f"--- {job['ID']}\n{hcl}\n=> {json.dumps(res)}\n")
        return str(res["EvalID"])

    def job_allocs(self, job_id: str) -> list[dict[str, Any]]:
        return list(self.api("GET", f"/v1/job/{urllib.parse.quote(job_id)}/allocations"))

    def alloc(self, alloc_id: str) -> dict[str, Any]:
        return dict(self.api("GET", f"/v1/allocation/{alloc_id}"))

    def task_log(self, alloc_id: str, task: str, kind: str = "stdout") -> str:
        q = urllib.parse.urlencode({"task": task, "type": kind, "plain": "true", "origin": "start"})
        return bytes(self.api("GET", f"/v1/client/fs/logs/{alloc_id}?{q}", raw=True)).decode(errors="replace")

    def evaluation(self, eval_id: str) -> dict[str, Any]:
        return dict(self.api("GET", f"/v1/evaluation/{eval_id}"))

    def wait_eval(self, eval_id: str, timeout: float = 60) -> dict[str, Any]:
        def done() -> dict[str, Any] | None:
            ev = self.evaluation(eval_id)
            return ev if ev["Status"] in ("complete", "failed", "canceled", "blocked") else None
        return self.wait_for(f"evaluation {eval_id} to finish", done, timeout)

"""What the end-to-end tests of this plugin share on top of `e2e.agent`: the plugin's
spec on a simulated scenario, an agent with extra config blocks, starting and
stopping it with the check that no plugin process outlives it, the task group
they run, and the waits on allocations and on what a task printed.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from e2e.agent import REPO, NomadAgent, PluginSpec

PLUGIN = "nomad-device-nvidia"
PLUGIN_BIN = Path(os.environ.get("NOMAD_E2E_PLUGIN", REPO / ".venv" / "bin" / PLUGIN))
SIM_LIB = REPO / "build" / "sim" / "libnvidia-ml.so.1"

A = TypeVar("A", bound=NomadAgent)


def plugin_spec(scenario: Path, extra: Mapping[str, object] | None = None) -> PluginSpec:
    """Our plugin on the simulated NVML serving `scenario`, fingerprinting every 5 s."""
    assert PLUGIN_BIN.is_file(), f"no plugin binary at {PLUGIN_BIN}: run `make native`"
    assert SIM_LIB.is_file(), f"no simulated NVML at {SIM_LIB}: run `make sim`"
    assert scenario.is_file(), f"no scenario at {scenario}"
    return PluginSpec(PLUGIN, PLUGIN_BIN, {"simulate": str(scenario), "nvml_library": str(SIM_LIB),
                                           "fingerprint_period": "5s", **(extra or {})})


class BlocksAgent(NomadAgent):
    """The agent with HCL added to its config: `plugin_blocks` inside our plugin's config
    block, `client_blocks` inside the client block, `tail` after everything."""

    def __init__(self, name: str, plugins: list[PluginSpec], plugin_blocks: str = "", client_blocks: str = "",
                 tail: str = "") -> None:
        super().__init__(name, plugins)
        self._inserts = {f'plugin "{PLUGIN}" {{\n  config {{\n': plugin_blocks,
                         "client {\n  enabled = true\n": client_blocks}
        self._tail = tail

    def _write_config(self, fresh: bool = True) -> Path:
        path = super()._write_config(fresh)
        text = path.read_text()
        for head, blocks in self._inserts.items():
            if blocks:
                assert head in text, text
                text = text.replace(head, head + blocks)
        text += self._tail
        path.write_text(text)
        (self.log_dir / "agent.hcl").write_text(text)
        return path


@contextmanager
def running_agent(agent: A) -> Iterator[A]:
    """`agent` started (its config in the transcript); on the way out stopped, with the
    processes of ours it left in the transcript and none of them our plugin."""
    try:
        agent.start()
        agent.note(f"agent up: {agent.addr}, node {agent.node_id}", (agent.log_dir / "agent.hcl").read_text())
        yield agent
    finally:
        agent.stop()
        agent.note("agent stopped (SIGINT); processes of ours still running then, killed: "
                   + (", ".join(f"{pid}: {cmd[:120]}" for pid, cmd in agent.survivors.items()) or "none"))
        plugins = {pid: cmd for pid, cmd in agent.survivors.items() if str(PLUGIN_BIN) in cmd}
        assert not plugins, f"plugin processes still running after the agent stopped: {plugins}"


def task_group(name: str, *, command: str, args: str | None = None, count: int = 1, driver: str = "raw_exec",
               device: str = "nvidia/gpu", devices: int = 1, cpu: int = 20, memory: int = 16) -> str:
    """A job's group of `count` allocations with one task "t" that runs `command` (with
    `args`, HCL) and asks for `devices` of `device`; it is never restarted."""
    argline = f"\n        args    = {args}" if args is not None else ""
    return f"""
  group "{name}" {{
    count = {count}
    restart {{
      attempts = 0
      mode     = "fail"
    }}
    task "t" {{
      driver = "{driver}"
      config {{
        command = "{command}"{argline}
      }}
      resources {{
        cpu    = {cpu}
        memory = {memory}
        device {json.dumps(device)} {{
          count = {devices}
        }}
      }}
    }}
  }}"""


def job(name: str, groups: str, type_: str = "service") -> str:
    return f'job "{name}" {{\n  datacenters = ["*"]\n  type = "{type_}"' + groups + "\n}\n"


def shell_group(name: str, script: str, **kw: Any) -> str:
    """`task_group` running `script` with /bin/sh -c."""
    return task_group(name, command="/bin/sh", args=f"[\"-c\", {json.dumps(script)}]", **kw)


def running_allocs(agent: NomadAgent, job_id: str, want: int | None = None, timeout: float = 120,
                   width: int = 3000) -> list[dict[str, Any]]:
    """The job's running allocations once there are `want` of them (None: once there is
    one). An allocation that failed or was lost fails the wait with its task states
    (the first `width` characters)."""
    def running() -> list[dict[str, Any]] | None:
        allocs = agent.job_allocs(job_id)
        bad = [a for a in allocs if a["ClientStatus"] in ("failed", "lost")]
        if bad:
            full = agent.alloc(bad[0]["ID"])
            # A plain AssertionError: the wait passes AgentErrors over as "not yet".
            raise AssertionError(
                f"allocation of {job_id} failed: {json.dumps(full.get('TaskStates'), indent=1)[:width]}")
        ok = [a for a in allocs if a["ClientStatus"] == "running"]
        return ok if (len(ok) == want if want is not None else ok) else None

    what = f"an allocation of {job_id} to run" if want is None else f"{want} allocations of {job_id} running"
    return agent.wait_for(what, running, timeout)


def task_output(agent: NomadAgent, alloc_id: str, last: str = "listed", timeout: float = 60) -> str:
    """The task "t"'s stdout once it has printed the line `last`."""
    def printed() -> str | None:
        text = agent.task_log(alloc_id, "t")
        return text if last in text.splitlines() else None
    return agent.wait_for(f"alloc {alloc_id[:8]} to print its listing", printed, timeout)

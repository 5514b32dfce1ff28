#!/usr/bin/env python3
"""The main job: our plugin on simulated GPUs, seen through Nomad's own client.

Nomad's plugin launcher (built from Nomad's module by `make harness`) starts
.venv/bin/nomad-device-nvidia exactly as the agent would, configures it for
the simulated 8xH100 node, and we drive its REPL: fingerprint, stats, reserve
two GPUs, exit. Then `nomad-device-nvidia probe` shows the same node as an
operator sees it.

Usage: scripts/demo.py [SCENARIO]   (default: scenarios/8xh100-mig.toml)
"""

from __future__ import annotations

import os
import queue
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LAUNCHER = ROOT / "build" / "bin" / "launcher"
PLUGIN = ROOT / ".venv" / "bin" / "nomad-device-nvidia"
SIM_LIB = ROOT / "build" / "sim" / "libnvidia-ml.so.1"


class Repl:
    """Nomad's launcher REPL over pipes, echoing everything it prints."""

    def __init__(self, cmd: list[str]) -> None:
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True, bufsize=1)
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line)

    def send(self, command: str) -> None:
        print(f"\n$ {command}", flush=True)
        assert self.proc.stdin is not None
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()

    def read_until(self, pattern: str, timeout: float = 30.0, echo_lines: int = 10_000) -> str:
        """Echo output (at most `echo_lines` lines) until a block matching `pattern` has been printed in full."""
        seen: list[str] = []
        echoed = 0
        deadline = time.monotonic() + timeout
        matched = False
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.5 if matched else deadline - time.monotonic())
            except queue.Empty:
                if matched:
                    break
                continue
            if echoed < echo_lines:
                print(line, end="", flush=True)
                echoed += 1
            seen.append(line)
            matched = matched or re.search(pattern, line) is not None
        if not matched:
            raise SystemExit(f"demo: timed out waiting for {pattern!r} from the launcher")
        if len(seen) > echoed:
            print(f"    ... ({len(seen) - echoed} more lines)", flush=True)
        return "".join(seen)


def main() -> int:
    scenario = Path(sys.argv[1] if len(sys.argv) > 1 else ROOT / "scenarios" / "8xh100-mig.toml").resolve()
    for path, what in ((LAUNCHER, "make harness"), (PLUGIN, "make native"), (SIM_LIB, "make sim"), (scenario, "")):
        if not path.exists():
            raise SystemExit(f"demo: {path} is missing" + (f"; run `{what}`" if what else ""))
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "plugin.hcl"
        config.write_text(f'config {{\n  simulate     = "{scenario}"\n  nvml_library = "{SIM_LIB}"\n}}\n')
        print(f"== Nomad's launcher driving {PLUGIN.name} on {scenario.name}", flush=True)
        repl = Repl([str(LAUNCHER), "device", str(PLUGIN), str(config)])
        repl.read_until(r"Availabile commands|Available commands")
        repl.send("fingerprint()")
        out = repl.read_until(r"> fingerprint:")
        ids = re.findall(r'ID:\s+"((?:GPU|MIG)-[^"]+)"', out)
        repl.send("stats()")
        repl.read_until(r"> stats:", echo_lines=60)
        repl.send("stop_stats()")
        # The launcher reads stdin afresh for each command: wait for each answer
        # before sending the next, or a line can be lost.
        repl.read_until(r"> stats: stats output closed")
        gpus = [i for i in ids if i.startswith("GPU-")][:2]
        if len(gpus) == 2:
            repl.send(f"reserve({','.join(gpus)})")
            repl.read_until(r"> reserve\(")
        repl.send("exit()")
        repl.proc.wait(timeout=30)
    print(f"\n== {PLUGIN.name} probe --simulate {scenario.name}", flush=True)
    env = dict(os.environ, NOMAD_DEVICE_NVIDIA_SIM_LIB=str(SIM_LIB))
    return subprocess.call([str(PLUGIN), "probe", "--simulate", str(scenario)], env=env)


if __name__ == "__main__":
    sys.exit(main())

"""What the Python runtime costs before any plugin code: the floor under our fixed costs.

Two figures, each beside our plugin's, measured in one run on this machine:

- exec to handshake line: a bare `grpc.aio` server (import asyncio and grpc.aio,
  bind, start, print a go-plugin-shaped line) and our plugin, launched in turn,
  --launches times each; medians. Our plugin's extra is what it adds over the floor.
- idle CPU: a bare `grpc.aio` server with nothing registered, over --window
  seconds after --settle, from /proc/<pid>/task/*/schedstat: ms of CPU per
  second and wake-ups per second (voluntary context switches), per thread.
  (Our plugin's idle figure, with Nomad's client attached, is
  benches/side_by_side.py's.)

    .venv/bin/python benches/runtime_floor.py            # about 40 s
    .venv/bin/python benches/runtime_floor.py --json build/runtime-floor.json

Run it with bytecode compiled (`python -m compileall python/nomad_device_nvidia`), as
pip leaves an installed wheel.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = ROOT / ".venv" / "bin"
# go-plugin's cookie for Nomad plugins; without it our plugin prints help and exits.
COOKIE = {"NOMAD_PLUGIN_MAGIC_COOKIE": "e4327c2e01eabfd75a8a67adb114fb34a757d57eee7728d857a8cec6e91a7255",
          "PLUGIN_PROTOCOL_VERSIONS": "2"}
BARE_SERVER = """
import asyncio, sys, grpc.aio
async def main():
    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    sys.stdout.write(f"1|2|tcp|127.0.0.1:{port}|grpc\\n")
    sys.stdout.flush()
    await asyncio.sleep(3600)
asyncio.run(main())
"""


def _until_line(cmd: list[str], env: dict[str, str]) -> tuple[float, subprocess.Popen[bytes]]:
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    took = (time.perf_counter() - start) * 1000
    if not line:
        proc.wait()
        raise SystemExit(f"{cmd[0]} exited ({proc.returncode}) before a handshake line")
    return took, proc


def handshakes(python: str, plugin: str, launches: int) -> dict[str, dict[str, float]]:
    env = {**os.environ, **COOKIE}
    cases = {"bare grpc.aio server": [python, "-c", BARE_SERVER], "our plugin": [plugin]}
    taken: dict[str, list[float]] = {name: [] for name in cases}
    for i in range(launches):
        for name, cmd in cases.items():  # in turn, so drift on the machine hits both alike
            ms, proc = _until_line(cmd, env)
            taken[name].append(ms)
            proc.kill()
            proc.wait()
        if launches >= 10 and (i + 1) % 10 == 0:
            print(f"  {i + 1}/{launches} launches", file=sys.stderr)
    return {name: {"median_ms": statistics.median(v), "min_ms": min(v)} for name, v in taken.items()}


def _schedstat(pid: int) -> dict[str, tuple[str, int, int]]:
    out = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            run_ns = int(Path(f"/proc/{pid}/task/{tid}/schedstat").read_text().split()[0])
            status = Path(f"/proc/{pid}/task/{tid}/status").read_text()
            comm = Path(f"/proc/{pid}/task/{tid}/comm").read_text().strip()
        except OSError:
            continue  # a thread that ended meanwhile
        switches = int(status.split("voluntary_ctxt_switches:")[1].split()[0])
        out[tid] = (comm, run_ns, switches)
    return out


def idle(python: str, settle: float, window: float) -> tuple[float, float, list[dict[str, float | str]]]:
    """(ms CPU per second, RSS MiB, per-thread figures) of a bare grpc.aio server."""
    _, proc = _until_line([python, "-c", BARE_SERVER], dict(os.environ))
    try:
        time.sleep(settle)
        before, t0 = _schedstat(proc.pid), time.monotonic()
        time.sleep(window)
        after, t1 = _schedstat(proc.pid), time.monotonic()
        rss_kib = int(Path(f"/proc/{proc.pid}/status").read_text().split("VmRSS:")[1].split()[0])
    finally:
        proc.kill()
        proc.wait()
    wall = t1 - t0
    rows: list[tuple[float, float, str]] = []
    for tid, (comm, run_ns, switches) in after.items():
        _, run0, sw0 = before.get(tid, (comm, 0, 0))
        rows.append(((run_ns - run0) / 1e6 / wall, (switches - sw0) / wall, comm))
    rows.sort(reverse=True)
    threads: list[dict[str, float | str]] = [{"comm": c, "cpu_ms_per_s": ms, "wakeups_per_s": w} for ms, w, c in rows]
    return sum(ms for ms, _, _ in rows), rss_kib / 1024, threads


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--python", default=str(VENV_BIN / "python"), help="interpreter with grpcio (default: .venv's)")
    p.add_argument("--plugin", default=str(VENV_BIN / "nomad-device-nvidia"), help="our plugin executable")
    p.add_argument("--launches", type=int, default=20)
    p.add_argument("--settle", type=float, default=5.0)
    p.add_argument("--window", type=float, default=15.0)
    p.add_argument("--json", type=Path, help="also write the results here")
    args = p.parse_args(argv)
    grpc_version = subprocess.run([args.python, "-c", "import grpc; print(grpc.__version__)"],
                                  capture_output=True, text=True, check=True).stdout.strip()
    shakes = handshakes(args.python, args.plugin, args.launches)
    cpu, rss, threads = idle(args.python, args.settle, args.window)
    print(f"grpcio {grpc_version}, {os.cpu_count()} CPUs")
    print(f"exec to handshake line, median of {args.launches} launches each, in turn:")
    for name, h in shakes.items():
        print(f"  {name:22s} {h['median_ms']:7.1f} ms (min {h['min_ms']:.1f})")
    print(f"bare grpc.aio server idle: {cpu:.2f} ms CPU/s, RSS {rss:.1f} MiB, {len(threads)} threads:")
    for t in threads:
        print(f"  {t['comm']!s:16s} {float(t['cpu_ms_per_s']):6.3f} ms/s  {float(t['wakeups_per_s']):5.1f} wake-ups/s")
    if args.json:
        result = {"grpcio": grpc_version, "cpus": os.cpu_count(), "handshake": shakes,
                  "bare_server_idle": {"cpu_ms_per_s": cpu, "rss_mib": rss, "threads": threads}}
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0

if __name__ == "__main__":
    sys.exit(main())

"""What the Python runtime costs before any plugin code: the floor under our fixed costs.

Measured in one run on this machine:

- exec to handshake line: a bare `grpc.aio` server (import asyncio and grpc.aio,
  bind, start, print a go-plugin-shaped line) and our plugin, launched in turn,
  --launches times each; medians. Our plugin's extra is what it adds over the floor.
- idle CPU and RSS of two servers with nothing registered, over --window seconds
  after --settle, from /proc/<pid>/task/*/schedstat: ms of CPU per second and
  wake-ups per second (voluntary context switches), per thread.
  - the bare `grpc.aio` server;
  - the same server with what the design fixes besides: protobuf with Nomad's
    generated messages, and nvidia-ml-py with NVML initialised on --nvml-dir's
    libnvidia-ml.so.1 (the simulated one, --scenario, by default; pass the
    driver's directory on a GPU node) and a handle to each device. Its RSS is
    the floor under our plugin's.
  (Our plugin's idle figures, with Nomad's client attached, are
  benches/side_by_side.py's.)
Both keep Python's ssl out, as our plugin does (sdk.serve).

    .venv/bin/python benches/runtime_floor.py            # about 60 s
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
import sys
sys.modules["ssl"] = None  # as sdk.serve does without AutoMTLS
import asyncio, grpc.aio
async def main():
    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    sys.stdout.write(f"1|2|tcp|127.0.0.1:{port}|grpc\\n")
    sys.stdout.flush()
    await asyncio.sleep(3600)
asyncio.run(main())
"""
# The dependencies first, then the bare server.
DEPS_SERVER = """
import google.protobuf, pynvml
from nomad_device_nvidia._proto.nomad import base_pb2, device_pb2
from nomad_device_nvidia._proto.goplugin import grpc_broker_pb2, grpc_controller_pb2, grpc_stdio_pb2
pynvml.nvmlInit()
handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())]
""" + BARE_SERVER
# JSON key -> (name printed, code)
SERVERS = {"bare_server_idle": ("bare grpc.aio server", BARE_SERVER),
           "with_dependencies_idle": ("with protobuf and NVML", DEPS_SERVER)}


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


def idle(python: str, code: str, env: dict[str, str], settle: float,
         window: float) -> tuple[float, float, list[dict[str, float | str]]]:
    """(ms CPU per second, RSS MiB, per-thread figures) of the server `code`."""
    _, proc = _until_line([python, "-c", code], env)
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
    p.add_argument("--nvml-dir", type=Path, default=ROOT / "build" / "sim",
                   help="directory of the libnvidia-ml.so.1 the second server loads (default: the simulated one)")
    p.add_argument("--scenario", type=Path, default=ROOT / "benches" / "scenarios" / "side-by-side-8.toml",
                   help="the simulated driver's scenario (default: 8 GPUs, as side_by_side.py's)")
    p.add_argument("--json", type=Path, help="also write the results here")
    args = p.parse_args(argv)
    grpc_version = subprocess.run([args.python, "-c", "import grpc; print(grpc.__version__)"],
                                  capture_output=True, text=True, check=True).stdout.strip()
    shakes = handshakes(args.python, args.plugin, args.launches)
    deps_env = {**os.environ, "LD_LIBRARY_PATH": str(args.nvml_dir), "NVML_SIM_SCENARIO": str(args.scenario)}
    idles = {key: idle(args.python, code, deps_env if code is DEPS_SERVER else dict(os.environ),
                       args.settle, args.window) for key, (_, code) in SERVERS.items()}
    print(f"grpcio {grpc_version}, {os.cpu_count()} CPUs")
    print(f"exec to handshake line, median of {args.launches} launches each, in turn:")
    for name, h in shakes.items():
        print(f"  {name:22s} {h['median_ms']:7.1f} ms (min {h['min_ms']:.1f})")
    for key, (cpu, rss, threads) in idles.items():
        print(f"{SERVERS[key][0]} idle: {cpu:.2f} ms CPU/s, RSS {rss:.1f} MiB, {len(threads)} threads:")
        for t in threads:
            print(f"  {t['comm']!s:16s} {float(t['cpu_ms_per_s']):6.3f} ms/s  "
                  f"{float(t['wakeups_per_s']):5.1f} wake-ups/s")
    if args.json:
        result = {"grpcio": grpc_version, "cpus": os.cpu_count(), "handshake": shakes,
                  **{key: {"cpu_ms_per_s": cpu, "rss_mib": rss, "threads": threads}
                     for key, (cpu, rss, threads) in idles.items()}}
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0

if __name__ == "__main__":
    sys.exit(main())

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

The streaming floor (STREAM_SERVER) is the reference for our Stats path: a bare
`grpc.aio` server with only what Nomad's client calls (the go-plugin services, PluginInfo,
ConfigSchema, SetConfig, Fingerprint, Stats, Reserve) that answers each call with bytes
captured once from our plugin (`capture_answers`: our plugin on the simulated node, its
third Stats answer at 100 ms), and streams that StatsResponse at the requested interval
from a timer on its event loop: no plugin code, no protobuf, no NVML. What it costs per
answer is grpcio's own cost of sending one. benches/side_by_side.py --floor drives it
with the same `harness cost` run as the two plugins and reports its CPU and wakes per
answer, per thread (`floor_plugin` gives the command that starts it).
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Mapping
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
# The streaming floor: python -c STREAM_SERVER ANSWERS.json (what capture_answers writes).
# Raw bytes both ways (no (de)serializers): grpcio and asyncio only.
STREAM_SERVER = """
import sys
sys.modules["ssl"] = None  # as sdk.serve does without AutoMTLS
import asyncio, base64, json, os, signal
import grpc, grpc.aio

BASE = "hashicorp.nomad.plugins.base.proto.BasePlugin"
DEVICE = "hashicorp.nomad.plugins.device.DevicePlugin"

def varint(buf, i):
    n = shift = 0
    while True:
        b = buf[i]
        i += 1
        n |= (b & 0x7F) << shift
        shift += 7
        if b < 0x80:
            return n, i

def fields(buf):
    # Protobuf wire format, read by hand: the floor loads no protobuf.
    i = 0
    while i < len(buf):
        key, i = varint(buf, i)
        kind = key & 7
        if kind == 0:
            value, i = varint(buf, i)
        elif kind == 2:
            size, i = varint(buf, i)
            value, i = buf[i:i + size], i + size
        else:
            value, i = None, i + (8 if kind == 1 else 4)
        yield key >> 3, value

def interval_of(request):
    # StatsRequest.collection_interval (1): Duration seconds (1), nanos (2); unset: 1 s
    for num, value in fields(request):
        if num == 1 and isinstance(value, bytes):
            parts = dict(fields(value))
            seconds = parts.get(1, 0) + parts.get(2, 0) / 1e9
            return seconds if seconds > 0 else 1.0
    return 1.0

async def main(path):
    with open(path) as f:
        answers = {k: base64.b64decode(v) for k, v in json.load(f).items()}
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    def const(data):
        async def answer(request, context):
            return data
        return grpc.unary_unary_rpc_method_handler(answer)

    async def shutdown(request, context):
        stop.set()
        return b""

    async def until_stop():
        await stop.wait()

    async def stdio(request, context):
        await until_stop()
        return
        yield

    async def broker(requests, context):
        async def drain():
            async for _ in requests:
                pass
        waits = [asyncio.ensure_future(drain()), asyncio.ensure_future(until_stop())]
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waits:
                w.cancel()
        return
        yield

    async def fingerprint(request, context):
        yield answers["fingerprint"]
        await until_stop()

    async def stats(request, context):
        interval, data = interval_of(request), answers["stats"]
        due = loop.time()
        while not stop.is_set():
            yield data
            due += interval
            await asyncio.sleep(max(0.0, due - loop.time()))

    handlers = [
        grpc.method_handlers_generic_handler("grpc.health.v1.Health", {"Check": const(b"\\x08\\x01")}),  # SERVING
        grpc.method_handlers_generic_handler("plugin.GRPCController", {
            "Shutdown": grpc.unary_unary_rpc_method_handler(shutdown)}),
        grpc.method_handlers_generic_handler("plugin.GRPCStdio", {
            "StreamStdio": grpc.unary_stream_rpc_method_handler(stdio)}),
        grpc.method_handlers_generic_handler("plugin.GRPCBroker", {
            "StartStream": grpc.stream_stream_rpc_method_handler(broker)}),
        grpc.method_handlers_generic_handler(BASE, {
            "PluginInfo": const(answers["plugin_info"]), "ConfigSchema": const(answers["config_schema"]),
            "SetConfig": const(b"")}),
        grpc.method_handlers_generic_handler(DEVICE, {
            "Fingerprint": grpc.unary_stream_rpc_method_handler(fingerprint),
            "Stats": grpc.unary_stream_rpc_method_handler(stats),
            "Reserve": const(b"")}),
    ]
    server = grpc.aio.server(handlers=handlers, options=[("grpc.so_reuseport", 0)])
    sock = os.path.join(os.environ.get("PLUGIN_UNIX_SOCKET_DIR") or "/tmp", f"grpc-floor-{os.getpid()}.sock")
    server.add_insecure_port("unix:" + sock)
    await server.start()
    line = f"1|2|unix|{sock}|grpc|"
    if os.environ.get("PLUGIN_MULTIPLEX_GRPC"):
        line += "|false"
    sys.stdout.write(line + "\\n")
    sys.stdout.flush()
    try:
        await stop.wait()
        await server.stop(0.5)
    finally:
        try:
            os.unlink(sock)
        except OSError:
            pass

asyncio.run(main(sys.argv[1]))
"""
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


BASE_SERVICE = "hashicorp.nomad.plugins.base.proto.BasePlugin"
DEVICE_SERVICE = "hashicorp.nomad.plugins.device.DevicePlugin"


def capture_answers(plugin: str | Path, env: Mapping[str, str], out: Path, *, interval: float = 0.1,
                    nth: int = 3, timeout: float = 60.0) -> dict[str, int]:
    """Our plugin's answers, as the bytes it sends, written to `out` for STREAM_SERVER.

    Our plugin runs on `env`'s node with its default config (SetConfig with no config),
    a Fingerprint stream open, and a Stats stream at `interval`; its `nth` Stats answer
    is kept (the first ones may lack the values that need two samples). PluginInfo is
    the floor's own (its version: grpcio's). Returns the size of each answer and the
    devices fingerprinted.
    """
    import grpc
    from google.protobuf import duration_pb2

    from nomad_device_nvidia._proto.nomad import base_pb2, device_pb2

    proc = subprocess.Popen([str(plugin)], env={**os.environ, **COOKIE, **env},
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    assert proc.stdout is not None
    try:
        fields = proc.stdout.readline().decode().strip().split("|")
        if len(fields) < 5:
            raise RuntimeError(f"{plugin}: no go-plugin handshake line (exit status {proc.poll()})")
        target = f"unix:{fields[3]}" if fields[2] == "unix" else fields[3]
        # Our answers at 4,096 GPUs are over grpcio's 4 MiB default; Nomad's client takes any size.
        with grpc.insecure_channel(target, options=[("grpc.max_receive_message_length", -1)]) as channel:
            # No (de)serializers: bytes in, the plugin's own bytes out.
            def unary(service: str, method: str, request: bytes = b"") -> bytes:
                answer: bytes = channel.unary_unary(f"/{service}/{method}")(request, timeout=timeout)
                return answer

            schema = unary(BASE_SERVICE, "ConfigSchema")
            unary(BASE_SERVICE, "SetConfig", base_pb2.SetConfigRequest(plugin_api_version="v0.1.0").SerializeToString())
            fp_call = channel.unary_stream(f"/{DEVICE_SERVICE}/Fingerprint")(b"", timeout=timeout)
            fingerprint: bytes = next(fp_call)
            request = device_pb2.StatsRequest(collection_interval=duration_pb2.Duration(nanos=round(interval * 1e9)))
            st_call = channel.unary_stream(f"/{DEVICE_SERVICE}/Stats")(request.SerializeToString(),
                                                                      timeout=timeout + nth * interval)
            for _ in range(nth):
                stats: bytes = next(st_call)
            st_call.cancel()
            fp_call.cancel()
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        proc.stdout.close()
    devices = sum(len(g.devices) for g in device_pb2.FingerprintResponse.FromString(fingerprint).device_group)
    stat_devices = sum(len(g.instance_stats) for g in device_pb2.StatsResponse.FromString(stats).groups)
    if stat_devices != devices:
        raise RuntimeError(f"{plugin}: Stats answer {nth} covers {stat_devices} devices of {devices}")
    info = base_pb2.PluginInfoResponse(type=base_pb2.DEVICE, plugin_api_versions=["v0.1.0"], name="grpc-floor",
                                       plugin_version=grpc.__version__).SerializeToString()
    answers = {"plugin_info": info, "config_schema": schema, "fingerprint": fingerprint, "stats": stats}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({k: base64.b64encode(v).decode() for k, v in answers.items()}) + "\n")
    return {"devices": devices, **{f"{k}_bytes": len(v) for k, v in answers.items()}}


def floor_plugin(python: str | Path, answers: Path) -> list[str]:
    """The command that starts the streaming floor on `answers` (capture_answers' file)."""
    return [str(python), "-c", STREAM_SERVER, str(answers)]


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

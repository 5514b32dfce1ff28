#!/usr/bin/env python3
"""The real-GPU check (scripts/gpu-check.sh runs it): the plugin against this machine's
NVIDIA driver, in one report.

Read-only: it loads the driver's NVML, starts the plugin (which only reads),
asks for a reservation (Reserve only returns what a task would get) and runs
nvidia-smi queries; it changes no GPU setting and writes only to a temporary
directory (and, when NVIDIA's nvidia-cuda-mps-control is installed, runs an MPS
control daemon of its own there for a moment, then tells it to quit). It needs a checkout where `make build` has run (.venv with the
plugin, build/bin/launcher and build/bin/harness).

Sections: driver, probe, Nomad's launcher (fingerprint, stats, reserve), Nomad's
client code (harness: handshake, fingerprint, stats, reserve, extended stats,
device nodes), MPS (NVIDIA's real control daemon, when installed), native vs python stats engine on the real devices, engine
benchmarks at the real device count, the `bench` subcommand (when the plugin
has one), every attribute against nvidia-smi.

Usage: scripts/gpu-check.sh [--nvml-library PATH] [--out FILE]
  development only: --simulate SCENARIO (the simulated driver stands in for the
  real one) and --nvidia-smi-sample DIR (recorded nvidia-smi answers instead of
  running nvidia-smi), to test this script where no GPU is.
Exit: 0 every section passed, 1 a section failed, 2 no NVIDIA driver (nothing checked).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import os
import platform
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = ROOT / ".venv" / "bin"
PLUGIN = VENV_BIN / "nomad-device-nvidia"
LAUNCHER = ROOT / "build" / "bin" / "launcher"
HARNESS = ROOT / "build" / "bin" / "harness"
SIM_LIB = ROOT / "build" / "sim" / "libnvidia-ml.so.1"

PASS, FAIL, NOTE = "PASS", "FAIL", "NOTE"

# ---------------------------------------------------------------------------------------
# The report


@dataclass
class Section:
    title: str
    status: str
    seconds: float
    body: str


@dataclass
class Report:
    header: list[str] = field(default_factory=list)
    sections: list[Section] = field(default_factory=list)

    def run(self, title: str, fn: Callable[[], tuple[str, str]]) -> Section:
        print(f"gpu-check: {title} ...", file=sys.stderr, flush=True)
        started = time.monotonic()
        try:
            status, body = fn()
        except Exception as exc:  # noqa: BLE001 - a failed section is reported, the next one runs
            status, body = FAIL, f"{type(exc).__name__}: {exc}\n" + "".join(traceback.format_exc(limit=6))[-3000:]
        section = Section(title, status, time.monotonic() - started, body.rstrip())
        self.sections.append(section)
        print(f"gpu-check: {title}: {status} ({section.seconds:.1f}s)", file=sys.stderr, flush=True)
        return section

    def render(self) -> str:
        out = ["# nomad-device-nvidia gpu-check", ""]
        out += self.header + [""]
        out.append("| section | result | time |")
        out.append("| --- | --- | --- |")
        out += [f"| {s.title} | {s.status} | {s.seconds:.1f}s |" for s in self.sections]
        for s in self.sections:
            out += ["", f"## {s.title}: {s.status}", "", "```", s.body, "```"]
        return "\n".join(out) + "\n"

    @property
    def failed(self) -> bool:
        return any(s.status == FAIL for s in self.sections)


def _run(cmd: Sequence[str], timeout: float, env: Mapping[str, str] | None = None,
         input_text: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout, env=dict(env or os.environ),
                          input=input_text, stdin=None if input_text is not None else subprocess.DEVNULL)


# ---------------------------------------------------------------------------------------
# The driver


@dataclass
class Target:
    """Where NVML comes from: the system's driver, a given library, or (development) the simulator."""

    nvml_library: str  # "" = the system's libnvidia-ml.so.1
    simulate: str  # "" = a real driver

    def plugin_config(self, extra: str = "") -> str:
        lines = []
        if self.simulate:
            lines.append(f"  simulate = {json.dumps(self.simulate)}")
        if self.nvml_library:
            lines.append(f"  nvml_library = {json.dumps(self.nvml_library)}")
        return "config {\n" + "\n".join(lines + [extra]) + "\n}\n"

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH",)}
        env["PYTHONDONTWRITEBYTECODE"] = "1"
        if self.simulate:
            env["NVML_SIM_SCENARIO"] = self.simulate
            env["NOMAD_DEVICE_NVIDIA_SIM_LIB"] = self.nvml_library
        return env

    def probe_args(self) -> list[str]:
        args = []
        if self.simulate:
            args += ["--simulate", self.simulate]
        if self.nvml_library:
            args += ["--nvml-library", self.nvml_library]
        return args


_nvml: list[ctypes.CDLL] = []


def load_driver(target: Target) -> tuple[bool, str]:
    """Load NVML into this process (RTLD_GLOBAL, so pynvml and the native engine resolve
    libnvidia-ml.so.1 to it) and initialise it. (ok, what happened)."""
    name = target.nvml_library or "libnvidia-ml.so.1"
    if target.simulate:
        os.environ["NVML_SIM_SCENARIO"] = target.simulate
    try:
        lib = ctypes.CDLL(name, mode=ctypes.RTLD_GLOBAL)
    except OSError as exc:
        return False, f"libnvidia-ml.so.1 could not be loaded ({exc})"
    _nvml.append(lib)
    import pynvml

    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as exc:
        return False, f"{name} loaded, but nvmlInit failed: {exc}"
    path = next((line.split()[-1] for line in Path("/proc/self/maps").read_text().splitlines()
                 if "libnvidia-ml" in line or (target.nvml_library and target.nvml_library in line)), name)
    return True, path


def driver_section(target: Target, where: str) -> tuple[str, str]:
    import pynvml

    lines = [f"NVML library: {where}"]
    lines.append(f"driver version: {pynvml.nvmlSystemGetDriverVersion()}")
    cuda = pynvml.nvmlSystemGetCudaDriverVersion()
    lines.append(f"CUDA driver version: {cuda // 1000}.{(cuda % 1000) // 10}")
    count = pynvml.nvmlDeviceGetCount()
    lines.append(f"GPUs: {count}")
    for i in range(count):
        h = pynvml.nvmlDeviceGetHandleByIndex(i)
        lines.append(f"  {i}: {pynvml.nvmlDeviceGetName(h)}  {pynvml.nvmlDeviceGetUUID(h)}")
    return (PASS if count else FAIL), "\n".join(lines)


# ---------------------------------------------------------------------------------------
# The plugin, as an operator and as Nomad sees it


def probe_section(target: Target, state: dict[str, Any]) -> tuple[str, str]:
    env = target.env()
    table = _run([str(PLUGIN), "probe", *target.probe_args()], 120, env)
    js = _run([str(PLUGIN), "probe", "--json", *target.probe_args()], 120, env)
    body = f"$ nomad-device-nvidia probe\n{table.stdout}{table.stderr[-2000:]}"
    if js.returncode != 0:
        return FAIL, body + f"\nprobe --json exited {js.returncode}:\n{js.stderr[-2000:]}"
    groups = json.loads(js.stdout)["groups"]
    state["probe"] = groups
    devices = [d for g in groups for d in g["devices"]]
    unhealthy = [d["id"] for d in devices if not d["healthy"]]
    no_stats = [d["id"] for d in devices if not d["stats"]]
    body += f"\n{len(groups)} groups, {len(devices)} devices; unhealthy: {unhealthy or 'none'}; " \
            f"without stats: {no_stats or 'none'}"
    ok = table.returncode == 0 and devices and not unhealthy and not no_stats
    return (PASS if ok else FAIL), body


def launcher_section(target: Target, state: dict[str, Any], tmp: Path) -> tuple[str, str]:
    sys.path.insert(0, str(ROOT / "scripts"))
    from demo import Repl

    config = tmp / "launcher.hcl"
    config.write_text(target.plugin_config())
    env = target.env()
    old = dict(os.environ)
    os.environ.clear()
    os.environ.update(env)
    captured: list[str] = []
    try:
        with contextlib.redirect_stdout(_Tee(captured)):
            repl = Repl([str(LAUNCHER), "device", str(PLUGIN), str(config)])
            try:
                repl.read_until(r"Availabile commands|Available commands", timeout=60)
                repl.send("fingerprint()")
                fp = repl.read_until(r"> fingerprint:", timeout=60, echo_lines=150)
                repl.send("stats()")
                repl.read_until(r"> stats:", timeout=60, echo_lines=60)
                repl.send("stop_stats()")
                repl.read_until(r"> stats: stats output closed", timeout=30)
                ids = re.findall(r'ID:\s+"((?:GPU|MIG)-[^"]+)"', fp)
                gpus = [i for i in ids if i.startswith("GPU-")][:2] or ids[:1]
                if gpus:
                    repl.send(f"reserve({','.join(gpus)})")
                    reserve = repl.read_until(r"> reserve\(", timeout=30)
                else:
                    reserve = ""
                repl.send("exit()")
                repl.proc.wait(timeout=30)
            finally:
                if repl.proc.poll() is None:
                    repl.proc.kill()
    except SystemExit as exc:  # demo.Repl's bounded waits end this way
        return FAIL, "".join(captured)[-6000:] + f"\n{exc}"
    finally:
        os.environ.clear()
        os.environ.update(old)
    probe_ids = {d["id"] for g in state.get("probe", []) for d in g["devices"]}
    problems = []
    if probe_ids and set(ids) != probe_ids:
        problems.append(f"launcher fingerprint IDs differ from probe's: {sorted(set(ids) ^ probe_ids)}")
    if gpus and "NVIDIA_VISIBLE_DEVICES" not in reserve:
        problems.append("the reserve answer has no NVIDIA_VISIBLE_DEVICES")
    text = "".join(captured)  # bounded: Repl echoes at most echo_lines lines of each answer
    return (FAIL if problems or not ids else PASS), "\n".join(problems + [text])


class _Tee:
    def __init__(self, into: list[str]) -> None:
        self.into = into

    def write(self, s: str) -> int:
        self.into.append(s)
        return len(s)

    def flush(self) -> None:
        pass


def _harness(args: Sequence[str], env: Mapping[str, str], timeout: float = 120) -> dict[str, list[dict[str, Any]]]:
    res = _run([str(HARNESS), *args], timeout, env)
    by: dict[str, list[dict[str, Any]]] = {}
    for line in res.stdout.splitlines():
        if line.startswith("{"):
            ev = json.loads(line)
            by.setdefault(str(ev["event"]), []).append(ev)
    if res.returncode != 0 or "error" in by:
        raise RuntimeError(f"harness {args[0]} exited {res.returncode}: {by.get('error')}\n{res.stderr[-2000:]}")
    return by


def harness_section(target: Target, state: dict[str, Any], tmp: Path) -> tuple[str, str]:
    env = target.env()
    lines: list[str] = []
    problems: list[str] = []
    lat = _harness(["handshake-latency", "--plugin", str(PLUGIN), "-n", "5"], env)["handshake_latency"][0]
    hs = lat.get("handshake") or {}
    lines.append(f"exec to handshake, 5 launches: median {hs.get('median_ms', hs.get('p50_ms'))} ms "
                 f"({json.dumps({k: v for k, v in hs.items() if k != 'samples_ms'})})")
    plain = tmp / "plain.hcl"
    plain.write_text(target.plugin_config())
    by = _harness(["session", "--plugin", str(PLUGIN), "--config", str(plain), "--fingerprints", "1", "--stats", "3",
                   "--interval", "1s", "--reserve-first", "2", "--logs"], env)
    groups = by["fingerprint"][0]["groups"]
    ids = {d["id"] for g in groups for d in g["devices"]}
    lines.append(f"fingerprint: {len(groups)} groups, {len(ids)} devices: "
                 + ", ".join(f"{g['name']} x{len(g['devices'])}" for g in groups))
    bad = [g["name"] for g in groups if g.get("validate_error")]
    if bad:
        problems.append(f"groups Nomad's Validate() refuses: {bad}")
    probe_ids = {d["id"] for g in state.get("probe", []) for d in g["devices"]}
    if probe_ids and ids != probe_ids:
        problems.append(f"fingerprint IDs differ from probe's: {sorted(ids ^ probe_ids)}")
    for n, st in enumerate(by.get("stats", [])):
        seen = {i for g in st["groups"] for i in g["ids"]}
        if seen != ids:
            problems.append(f"stats answer {n}: devices {sorted(seen ^ ids)} missing or extra")
    lines.append(f"stats: {len(by.get('stats', []))} answers, each for all {len(ids)} devices"
                 if not problems else "stats: see problems")
    last = by["stats"][-1]["groups"] if by.get("stats") else []
    if last:
        one = next(iter(last[0]["instances"].items()))
        lines.append(f"one device's stats: {json.dumps(one[1]['stats']['Attributes'], sort_keys=True)[:1500]}")
    res = by["reserve"][0]
    lines.append(f"reserve {res['ids']}: {json.dumps(res['reservation'])}")
    if res["error"] or sorted(res["reservation"]["envs"].get("NVIDIA_VISIBLE_DEVICES", "").split(",")) != sorted(
            res["ids"]):
        problems.append(f"reserve: {res}")
    warnings = [str(e["entry"].get("@message")) for e in by.get("log", [])
                if e.get("from_plugin") and str(e["entry"].get("@level")) in ("warn", "error")]
    lines.append(f"plugin warnings/errors: {warnings or 'none'}")
    if not target.simulate and warnings:
        problems.append(f"the plugin logged warnings or errors on a real driver: {warnings}")
    # Extended stats and device nodes, as a raw_exec task without the container runtime would get them.
    ext = tmp / "extended.hcl"
    ext.write_text(target.plugin_config("  extended_stats = true\n  reserve {\n    cuda_visible_devices = true\n"
                                        "    device_nodes = true\n  }"))
    by = _harness(["session", "--plugin", str(PLUGIN), "--config", str(ext), "--fingerprints", "1", "--stats", "2",
                   "--interval", "1s", "--reserve-first", "1"], env)
    st = by["stats"][-1]["groups"]
    one = next(iter(st[0]["instances"].values()))["stats"]
    lines.append(f"extended stats groups: {sorted(one.get('Nested', {}))}")
    res = by["reserve"][0]
    lines.append(f"reserve with device nodes: {json.dumps(res['reservation'])}")
    missing = [d["host_path"] for d in res["reservation"].get("devices", []) if not Path(d["host_path"]).exists()]
    if not target.simulate and (missing or not res["reservation"].get("devices")):
        problems.append(f"device nodes not on this host: {missing or 'none returned'}")
    return (FAIL if problems else PASS), "\n".join(problems + lines)


# ---------------------------------------------------------------------------------------
# MPS: NVIDIA's real control daemon, found and lost by the plugin's check

MPS_CONTROL = "nvidia-cuda-mps-control"


def _socket_types(path: Path) -> str:
    """Which unix socket types the control socket accepts a connection of (the plugin tries both)."""
    out = []
    for name, kind in (("seqpacket", socket.SOCK_SEQPACKET), ("stream", socket.SOCK_STREAM)):
        s = socket.socket(socket.AF_UNIX, kind)
        try:
            s.settimeout(3)
            s.connect(str(path))
            out.append(f"{name} accepted")
        except OSError as exc:
            out.append(f"{name}: {exc}")
        finally:
            s.close()
    return ", ".join(out)


def _until(what: Callable[[], bool], limit: float) -> bool:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if what():
            return True
        time.sleep(0.2)
    return what()


def mps_section(target: Target, tmp: Path) -> tuple[str, str]:
    """Start `nvidia-cuda-mps-control -d` on a pipe directory of our own, see the plugin's check
    and a Reserve find it (`mps = "ready"`, the MPS environment), tell it to quit, see it gone."""
    binary = shutil.which(MPS_CONTROL)
    if binary is None:
        return NOTE, f"{MPS_CONTROL} is not installed here (CUDA's MPS); not checked"
    if target.simulate:
        return NOTE, f"simulated driver: {binary} needs a real GPU; not checked"
    from nomad_device_nvidia.nvidia import mps

    pipe, logs = tmp / "mps-pipe", tmp / "mps-log"
    pipe.mkdir()
    logs.mkdir()
    env = target.env() | {"CUDA_MPS_PIPE_DIRECTORY": str(pipe), "CUDA_MPS_LOG_DIRECTORY": str(logs)}
    lines, problems = [], []
    res = _run([binary, "-d"], 30, env)
    lines.append(f"{binary} -d: exit {res.returncode} {res.stderr.strip()[-500:]}")
    if res.returncode != 0:
        return FAIL, "\n".join(lines)
    try:
        if not _until(lambda: mps.probe(str(pipe), 3.0) == "", 20):
            problems.append(f"the plugin's check never reached the daemon: {mps.probe(str(pipe), 3.0)}")
        lines.append(f"control socket {pipe / 'control'}: {_socket_types(pipe / 'control')}")
        conf = tmp / "mps.hcl"
        conf.write_text(target.plugin_config(
            f"  sharing {{\n    shares = 2\n  }}\n  mps {{\n    enabled = true\n"
            f"    mps_pipe_directory = {json.dumps(str(pipe))}\n    mps_log_directory = {json.dumps(str(logs))}\n  }}"))
        by = _harness(["session", "--plugin", str(PLUGIN), "--config", str(conf), "--fingerprints", "1",
                       "--reserve-first", "1"], env)
        states = {g["name"]: (g["attributes"].get("mps") or {}).get("value") for g in by["fingerprint"][0]["groups"]}
        lines.append(f"mps attribute per group: {states}")
        if "ready" not in states.values():
            problems.append("no group has mps = ready while the daemon runs")
        reserved = by["reserve"][0]
        lines.append(f"reserve {reserved['ids']}: {json.dumps(reserved['reservation'])}")
    finally:
        quit_res = _run([binary], 30, env, input_text="quit\n")
        lines.append(f"echo quit | {MPS_CONTROL}: exit {quit_res.returncode}")
    if not _until(lambda: mps.probe(str(pipe), 3.0) != "", 20):
        problems.append("the plugin's check still reaches the daemon after quit")
    lines.append(f"after quit: {mps.probe(str(pipe), 3.0)}")
    control_log = logs / "control.log"
    if control_log.exists():
        lines.append("control.log (last lines):\n" + "\n".join(control_log.read_text().splitlines()[-10:]))
    return (FAIL if problems else PASS), "\n".join(problems + lines)


# ---------------------------------------------------------------------------------------
# Native vs python engine on the devices there are


def tracked_devices() -> list[Any]:
    """Every device the plugin would offer here, as the stats engines track them."""
    from nomad_device_nvidia.nvidia.grouping import tracked_on_this_node

    return tracked_on_this_node()


Value = tuple[str, Any]  # ("str", text) | ("int", n) | ("float", x) | ("frac", (num, den)) | ("bool", b)


def _value(v: Any) -> Value:
    if v.HasField("string_val"):
        return ("str", v.string_val.value)
    if v.HasField("bool_val"):
        return ("bool", v.bool_val.value)
    if v.HasField("int_denominator_val"):
        return ("frac", (v.int_numerator_val.value, v.int_denominator_val.value))
    if v.HasField("int_numerator_val"):
        return ("int", v.int_numerator_val.value)
    if v.HasField("float_denominator_val"):
        return ("frac", (v.float_numerator_val.value, v.float_denominator_val.value))
    if v.HasField("float_numerator_val"):
        return ("float", v.float_numerator_val.value)
    return ("none", None)


def flatten(data: bytes) -> dict[tuple[str, str, str], tuple[Value, str, str]]:
    """One StatsResponse as {(group, device, stat path): (value, unit, desc)}; the summary is stat "summary"."""
    from nomad_device_nvidia._proto.nomad import device_pb2

    resp = device_pb2.StatsResponse.FromString(data)
    out: dict[tuple[str, str, str], tuple[Value, str, str]] = {}

    def walk(group: str, dev: str, prefix: str, obj: Any) -> None:
        for name, v in obj.attributes.items():
            out[(group, dev, prefix + name)] = (_value(v), v.unit, v.desc)
        for name, sub in obj.nested.items():
            walk(group, dev, f"{prefix}{name}/", sub)

    for g in resp.groups:
        for dev, ds in g.instance_stats.items():
            out[(g.name, dev, "summary")] = (_value(ds.summary), ds.summary.unit, ds.summary.desc)
            walk(g.name, dev, "", ds.stats)
    return out


# How much a value may move between the python reads before and after the native one.
# Stats not listed must be equal in all three reads (support, totals, units, text).
COUNTERS = ("ECC L1 errors", "ECC L2 errors", "ECC memory errors", "Energy/Total energy consumption", "XID/XID count")
MOVING: dict[str, Callable[[float, float], float]] = {  # stat -> tolerance(value, denominator)
    "GPU utilization": lambda v, d: 10,
    "Memory utilization": lambda v, d: 10,
    "Encoder utilization": lambda v, d: 10,
    "Decoder utilization": lambda v, d: 10,
    "Temperature": lambda v, d: 3,
    "Power usage": lambda v, d: max(10.0, 0.05 * d),
    "Memory state": lambda v, d: max(64.0, 0.01 * d),
    "summary": lambda v, d: max(64.0, 0.01 * d),
    "BAR1 buffer state": lambda v, d: 64,
    "Clocks/SM clock": lambda v, d: max(100.0, 0.1 * v),
    "Clocks/Memory clock": lambda v, d: max(100.0, 0.1 * v),
}
ANY_VALUE = ("PCIe/PCIe TX throughput", "PCIe/PCIe RX throughput", "Throttle/Clock throttle reasons")
# GPM values are rates over each reader's own sample period: activity percentages
# move by more than a sampled gauge, throughputs by anything.
GPM_PREFIX = "GPM/"
GPM_PERCENT_TOLERANCE = 15.0


def _rule(stat: str, unit: str) -> str:
    """How a stat may differ between engines: "any" (form only), "counter", "moving" or "static"."""
    if stat in ANY_VALUE or (stat.startswith(GPM_PREFIX) and unit != "%"):
        return "any"
    if stat in COUNTERS:
        return "counter"
    if stat in MOVING or stat.startswith(GPM_PREFIX):
        return "moving"
    return "static"


def _tolerance(stat: str, value: float, denominator: float) -> float:
    return GPM_PERCENT_TOLERANCE if stat.startswith(GPM_PREFIX) else MOVING[stat](value, denominator)


def compare_reads(before: Mapping[tuple[str, str, str], tuple[Value, str, str]],
                  native: Mapping[tuple[str, str, str], tuple[Value, str, str]],
                  after: Mapping[tuple[str, str, str], tuple[Value, str, str]]) -> list[str]:
    """What the native read got wrong, judged against python reads just before and after it."""
    problems = []
    if set(native) != set(before):
        problems.append(f"stats only in one engine: native {sorted(set(native) - set(before))[:10]}, "
                        f"python {sorted(set(before) - set(native))[:10]}")
    for key in sorted(set(native) & set(before) & set(after)):
        (nv, nunit, ndesc), (pv, punit, pdesc), (av, _, _) = native[key], before[key], after[key]
        where = f"{key[1]} {key[2]!r}"
        if (nunit, ndesc) != (punit, pdesc):
            problems.append(f"{where}: unit/desc native {(nunit, ndesc)} python {(punit, pdesc)}")
        if nv[0] != pv[0] or nv[0] != av[0]:
            problems.append(f"{where}: value kind native {nv} python {pv}/{av}")
            continue
        stat = key[2]
        kind = nv[0]
        rule = _rule(stat, nunit)
        if kind in ("str", "bool", "none"):
            if not nv == pv == av and rule != "any":
                problems.append(f"{where}: native {nv[1]!r}, python {pv[1]!r} then {av[1]!r}")
            continue
        if kind == "frac":
            (nnum, nden), (pnum, pden), (anum, aden) = nv[1], pv[1], av[1]
            if not nden == pden == aden:
                problems.append(f"{where}: total native {nden}, python {pden} then {aden}")
            n, lo, hi, den = float(nnum), float(min(pnum, anum)), float(max(pnum, anum)), float(nden)
        else:
            n, lo, hi, den = float(nv[1]), float(min(pv[1], av[1])), float(max(pv[1], av[1])), 0.0
        if rule == "any":
            continue
        if rule == "counter":
            if not lo <= n <= hi:
                problems.append(f"{where}: counter native {n:g} outside python's {lo:g}..{hi:g}")
        elif rule == "moving":
            tol = _tolerance(stat, n, den)
            if not lo - tol <= n <= hi + tol:
                problems.append(f"{where}: native {n:g} outside python's {lo:g}..{hi:g} +/- {tol:g}")
        elif not n == lo == hi:
            problems.append(f"{where}: native {n:g}, python {lo:g}..{hi:g} (should not move)")
    return problems


@contextlib.contextmanager
def _engines(devices: Sequence[Any], extended: bool, batched: bool | None) -> Iterator[tuple[Any, Any]]:
    from nomad_device_nvidia.nvidia.stats.contract import EngineOptions
    from nomad_device_nvidia.nvidia.stats.native import NativeStatsEngine
    from nomad_device_nvidia.nvidia.stats.python import PythonStatsEngine

    opts = EngineOptions(extended=extended, batched=batched)
    py, na = PythonStatsEngine(opts), NativeStatsEngine(opts)
    try:
        py.track(devices)
        na.track(devices)
        yield py, na
    finally:
        py.close()
        na.close()


def differential_section(state: dict[str, Any]) -> tuple[str, str]:
    devices = tracked_devices()
    state["device_count"] = len(devices)
    lines = [f"{len(devices)} devices; each round: python read, native read, python read; the native values must "
             "equal python's where they cannot move, lie between python's two reads (counters) or within a "
             "tolerance of them (utilization 10 points, temperature 3 C, power 5% of the limit, memory 1%, "
             "clocks 10%, GPM activity 15 points); PCIe and GPM throughput and throttle reasons only by form"]
    problems: list[str] = []
    for extended, batched in ((False, None), (True, None), (True, False), (False, True)):
        with _engines(devices, extended, batched) as (py, na):
            py.collect()
            na.collect()  # the first tick opens handles and event sets
            for r in range(3):
                before, native, after = flatten(py.collect()), flatten(na.collect()), flatten(py.collect())
                found = compare_reads(before, native, after)
                problems += [f"[extended={extended} batched={batched} round {r}] {p}" for p in found]
                if r == 0:
                    lines.append(f"extended={extended} batched={batched}: {len(native)} values per read"
                                 + ("" if found else ", native within python's reads"))
    return (FAIL if problems else PASS), "\n".join(problems[:60] + lines)


def bench_section(state: dict[str, Any], target: Target) -> tuple[str, str]:
    devices = tracked_devices()
    n = len(devices)
    lines = [f"time per stats tick on the {n} devices of this machine (25 ticks after 3 warm-up ticks):",
             "| engine | extended | median ms | p90 ms | CPU ms per tick |", "| --- | --- | --- | --- | --- |"]
    for extended in (False, True):
        from nomad_device_nvidia.nvidia.stats.contract import EngineOptions
        from nomad_device_nvidia.nvidia.stats.native import NativeStatsEngine
        from nomad_device_nvidia.nvidia.stats.python import PythonStatsEngine

        for name, cls in (("native", NativeStatsEngine), ("python", PythonStatsEngine)):
            engine = cls(EngineOptions(extended=extended))
            try:
                engine.track(devices)
                for _ in range(3):
                    engine.collect()
                walls = []
                cpu0 = time.process_time()
                for _ in range(25):
                    t0 = time.perf_counter()
                    engine.collect()
                    walls.append((time.perf_counter() - t0) * 1e3)
                cpu = (time.process_time() - cpu0) / 25 * 1e3
            finally:
                engine.close()
            walls.sort()
            lines.append(f"| {name} | {extended} | {statistics.median(walls):.2f} | {walls[int(0.9 * 24)]:.2f} | "
                         f"{cpu:.2f} |")
    # The committed benchmark suite (benches/), on the simulated driver, at this device count.
    env = dict(target.env(), BENCH_SIZES=str(n))
    res = _run([str(VENV_BIN / "python"), "-m", "pytest", str(ROOT / "benches"), "-k", "test_tick",
                "--benchmark-enable", "-q", "--benchmark-columns=median,mean,rounds", "-p", "no:cacheprovider"],
               180, env)
    table = [ln for ln in res.stdout.splitlines() if ln.strip() and not ln.startswith(("=", "-"))]
    lines += ["", f"benches/ (simulated driver at 0 and 50 us per call) at BENCH_SIZES={n}: exit {res.returncode}",
              *table[-30:]]
    return (PASS if res.returncode == 0 else FAIL), "\n".join(lines)


def bench_command_section(target: Target) -> tuple[str, str]:
    env = target.env()
    helped = _run([str(PLUGIN), "bench", "--help"], 60, env)
    # A subcommand prints its own usage line ("usage: nomad-device-nvidia bench ...", as probe does);
    # without one the top-level parser answers with its own help.
    if helped.returncode != 0 or "nomad-device-nvidia bench" not in helped.stdout:
        return NOTE, "this version of the plugin has no `bench` subcommand (`nomad-device-nvidia bench --help` " \
                     "prints no bench usage); nothing to run"
    args = target.probe_args() if "--nvml-library" in helped.stdout else []
    res = _run([str(PLUGIN), "bench", *args], 150, env)
    return (PASS if res.returncode == 0 else FAIL), f"$ nomad-device-nvidia bench {' '.join(args)}\n" \
                                                    f"{res.stdout[-8000:]}{res.stderr[-2000:]}"


# ---------------------------------------------------------------------------------------
# Every attribute against nvidia-smi

QUERY = ("index", "uuid", "name", "pci.bus_id", "memory.total", "power.limit", "clocks.max.graphics",
         "clocks.max.memory", "pcie.link.gen.max", "pcie.link.width.max", "driver_version", "compute_cap",
         "persistence_mode", "display_mode", "mig.mode.current")
NA = ("[N/A]", "N/A", "[Not Supported]", "Not Supported", "[Unknown Error]", "")
PCIE_LANE_MB_PER_S = {1: 250, 2: 500, 3: 1024, 4: 2048, 5: 3072, 6: 4096}  # the plugin's table (docs/attributes.md)


@dataclass
class Smi:
    """nvidia-smi's answers: the CSV query, `-L` and `-q`."""

    csv: str
    listing: str
    query: str
    missing_fields: list[str] = field(default_factory=list)


def run_nvidia_smi(sample: Path | None) -> Smi:
    if sample is not None:
        return Smi((sample / "query-gpu.csv").read_text(), (sample / "L.txt").read_text(),
                   (sample / "q.txt").read_text())
    fields = list(QUERY)
    missing = []
    for _ in range(len(QUERY)):
        res = _run(["nvidia-smi", f"--query-gpu={','.join(fields)}", "--format=csv"], 60)
        bad = re.search(r'Field "([^"]+)" is not a valid field to query', res.stdout + res.stderr)
        if res.returncode == 0 or not bad:
            break
        missing.append(bad.group(1))
        fields.remove(bad.group(1))  # an older nvidia-smi: check what it can answer
    if res.returncode != 0:
        raise RuntimeError(f"nvidia-smi --query-gpu exited {res.returncode}: {res.stdout}{res.stderr}")
    listing = _run(["nvidia-smi", "-L"], 60).stdout
    query = _run(["nvidia-smi", "-q"], 120).stdout
    return Smi(res.stdout, listing, query, missing)


def parse_csv(text: str) -> list[dict[str, str]]:
    """nvidia-smi --format=csv: a header of `field [unit]` names, then one row per GPU."""
    lines = [ln for ln in text.splitlines() if ln.strip()]
    header = [re.sub(r"\s*\[.*\]$", "", h.strip()) for h in lines[0].split(",")]
    return [dict(zip(header, (c.strip() for c in ln.split(",")), strict=True)) for ln in lines[1:]]


def parse_listing(text: str) -> dict[str, list[tuple[str, str]]]:
    """`nvidia-smi -L`: GPU UUID -> its MIG devices as (profile, MIG UUID)."""
    out: dict[str, list[tuple[str, str]]] = {}
    gpu = ""
    for line in text.splitlines():
        if m := re.match(r"GPU \d+: .*\(UUID: (\S+)\)", line):
            gpu = m.group(1)
            out[gpu] = []
        elif (m := re.match(r"\s+MIG\s+(\S+)\s+Device\s+\d+:\s+\(UUID:\s+(\S+)\)", line)) and gpu:
            out[gpu].append((m.group(1), m.group(2)))
    return out


def parse_query(text: str) -> dict[str, dict[str, str]]:
    """`nvidia-smi -q`: normalised bus ID -> the few facts the CSV query lacks, and "" -> node-wide ones."""
    out: dict[str, dict[str, str]] = {"": {}}
    cur = out[""]
    section = ""
    for line in text.splitlines():
        if m := re.match(r"^GPU ([0-9A-Fa-f:.]+)\s*$", line):
            cur = out.setdefault(bus_id(m.group(1)), {})
            section = ""
            continue
        m = re.match(r"^(\s*)([^:]+?)\s*(?::\s*(.*?))?\s*$", line)
        if not m or not m.group(2).strip():
            continue
        indent, key, value = len(m.group(1)), m.group(2), m.group(3) or ""
        if not value:  # a heading such as "    BAR1 Memory Usage"
            section = key if indent <= 4 else section
            continue
        if key == "CUDA Version":
            out[""]["cuda_version"] = value
        elif key == "Product Architecture":
            cur["architecture"] = value
        elif section == "BAR1 Memory Usage" and key == "Total" and indent == 8:
            cur["bar1"] = value
    return out


def bus_id(text: str) -> str:
    """NVML's `00000000:2A:00.0` and sysfs' `0000:2a:00.0` to one form."""
    m = re.match(r"^(?:([0-9a-fA-F]+):)?([0-9a-fA-F]{2}):([0-9a-fA-F]{2})\.([0-7])$", text.strip())
    if not m:
        return text.strip().lower()
    return f"{int(m.group(1) or '0', 16):04x}:{m.group(2).lower()}:{m.group(3).lower()}.{m.group(4)}"


def _number(text: str) -> float | None:
    if text.strip() in NA:
        return None
    m = re.match(r"^\s*(-?[0-9]+(?:\.[0-9]+)?)", text)
    return float(m.group(1)) if m else None


def _flag(text: str) -> str:
    return {"Enabled": "1", "Disabled": "0"}.get(text.strip(), "N/A")


def compare_attributes(groups: Sequence[Mapping[str, Any]], smi: Smi,
                       numa: Callable[[str], int | None] | None = None) -> tuple[list[str], list[str]]:
    """Each attribute the plugin reports (probe --json groups) against nvidia-smi's answer.
    Returns (mismatches, a table of every comparison)."""
    rows = parse_csv(smi.csv)
    listing = parse_listing(smi.listing)
    q = parse_query(smi.query)
    by_id: dict[str, tuple[Mapping[str, Any], Mapping[str, Any]]] = {}
    for g in groups:
        for d in g["devices"]:
            by_id[d["id"].split("::")[0]] = (g, d)
    bad: list[str] = []
    table = ["| GPU | device | attribute | plugin | nvidia-smi | |", "| --- | --- | --- | --- | --- | --- |"]

    def check(gpu: str, dev: str, attr: str, ours: Any, theirs: Any, equal: bool | None = None) -> None:
        ok = (ours == theirs) if equal is None else equal
        table.append(f"| {gpu} | {dev} | {attr} | {ours} | {theirs} | {'ok' if ok else 'MISMATCH'} |")
        if not ok:
            bad.append(f"GPU {gpu} {dev}: {attr}: plugin {ours!r}, nvidia-smi {theirs!r}")

    def attr(g: Mapping[str, Any], name: str) -> Any:
        a = g["attributes"].get(name)
        return None if a is None else a["value"]

    seen: set[str] = set()
    for row in rows:
        gpu = row.get("index", "?")
        uuid = row.get("uuid", "")
        migs = listing.get(uuid, [])
        mig_on = row.get("mig.mode.current", "").strip() == "Enabled" or bool(migs)
        devices = [(m_uuid, profile) for profile, m_uuid in migs] if mig_on else [(uuid, "")]
        if mig_on and not migs:
            bad.append(f"GPU {gpu}: MIG mode is on but nvidia-smi -L lists no MIG device")
        for dev_id, profile in devices:
            short = dev_id[:12]
            if dev_id not in by_id:
                check(gpu, short, "offered to Nomad", False, True)
                continue
            seen.add(dev_id)
            g, d = by_id[dev_id]
            check(gpu, short, "pci bus id", bus_id(d["pci_bus_id"]), bus_id(row.get("pci.bus_id", "")))
            if mig_on:
                check(gpu, short, "mig_profile", attr(g, "mig_profile"), profile)
                if attr(g, "parent_uuid") is not None:
                    check(gpu, short, "parent_uuid", attr(g, "parent_uuid"), uuid)
            else:
                check(gpu, short, "name", g["name"].split(" (")[0] if " (NUMA" in g["name"] else g["name"],
                      row.get("name"))
                if "memory.total" in row:
                    check(gpu, short, "memory (MiB)", attr(g, "memory"), _int(row["memory.total"]))
            if "power.limit" in row:
                theirs = _number(row["power.limit"])
                ours = attr(g, "power")
                if ours is not None:  # left out when a group's GPUs differ
                    check(gpu, short, "power (W)", ours, theirs if theirs is None else int(theirs),
                          ours == (0 if theirs is None else int(theirs)) or (
                              theirs is not None and abs(ours - theirs) < 1))
            for key, col in (("cores_clock", "clocks.max.graphics"), ("memory_clock", "clocks.max.memory")):
                if col in row:
                    check(gpu, short, f"{key} (MHz)", attr(g, key), _int(row[col]))
            if "pcie.link.gen.max" in row and "pcie.link.width.max" in row and attr(g, "pci_bandwidth") is not None:
                gen, width = _int(row["pcie.link.gen.max"]), _int(row["pcie.link.width.max"])
                theirs_bw = PCIE_LANE_MB_PER_S.get(gen or 0, 0) * (width or 0)
                check(gpu, short, "pci_bandwidth (MB/s)", attr(g, "pci_bandwidth"),
                      f"{theirs_bw} (gen {gen} x{width})", attr(g, "pci_bandwidth") == theirs_bw)
            if "driver_version" in row:
                check(gpu, short, "driver_version", attr(g, "driver_version"), row["driver_version"])
            if "compute_cap" in row:
                check(gpu, short, "compute_capability", attr(g, "compute_capability"), row["compute_cap"])
            for key, col in (("persistence_mode", "persistence_mode"), ("display_state", "display_mode")):
                if col in row and attr(g, key) is not None:
                    check(gpu, short, key, attr(g, key), _flag(row[col]))
            facts = q.get(bus_id(row.get("pci.bus_id", "")), {})
            if "architecture" in facts:
                check(gpu, short, "architecture", attr(g, "architecture"), facts["architecture"].lower())
            if "bar1" in facts:
                theirs_bar1 = _int(facts["bar1"])
                check(gpu, short, "bar1 (MiB)", attr(g, "bar1"), theirs_bar1)
            if "cuda_version" in q[""]:
                check(gpu, short, "cuda_driver_version", attr(g, "cuda_driver_version"), q[""]["cuda_version"])
            if numa is not None and attr(g, "numa_node") is not None:
                check(gpu, short, "numa_node (sysfs)", attr(g, "numa_node"), numa(d["pci_bus_id"]))
    extra = sorted(set(by_id) - seen)
    if extra:
        bad.append(f"offered to Nomad but not listed by nvidia-smi: {extra}")
    if smi.missing_fields:
        table.append(f"(this nvidia-smi cannot answer {smi.missing_fields}; those attributes were not compared)")
    return bad, table


def _int(text: str) -> int | None:
    n = _number(text)
    return None if n is None else int(n)


def sysfs_numa(pci_bus_id: str) -> int | None:
    try:
        n = int(Path(f"/sys/bus/pci/devices/{bus_id(pci_bus_id)}/numa_node").read_text())
    except (OSError, ValueError):
        return None
    return n if n >= 0 else None


def nvidia_smi_section(state: dict[str, Any], sample: Path | None) -> tuple[str, str]:
    if "probe" not in state:
        return FAIL, "no probe answer to compare (see the probe section)"
    smi = run_nvidia_smi(sample)
    bad, table = compare_attributes(state["probe"], smi, None if sample is not None else sysfs_numa)
    src = f"recorded sample {sample}" if sample is not None else "nvidia-smi --query-gpu=" + ",".join(QUERY) \
        + " --format=csv, nvidia-smi -L, nvidia-smi -q"
    return (FAIL if bad else PASS), "\n".join([f"against {src}", *bad, *table])


# ---------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="scripts/gpu-check.sh", description=__doc__.splitlines()[0])
    ap.add_argument("--nvml-library", default="", help="load this libnvidia-ml.so.1 instead of the system's")
    ap.add_argument("--out", type=Path, help="also write the report to this file")
    ap.add_argument("--simulate", default="", help=argparse.SUPPRESS)
    ap.add_argument("--nvidia-smi-sample", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    started = time.monotonic()
    for path, what in ((PLUGIN, "make native"), (LAUNCHER, "make harness"), (HARNESS, "make harness")):
        if not path.exists():
            print(f"gpu-check: {path} is missing; run `make build` in this checkout first ({what})", file=sys.stderr)
            return 1
    target = Target(nvml_library=str(Path(args.nvml_library).resolve()) if args.nvml_library else
                    (str(SIM_LIB) if args.simulate else ""),
                    simulate=str(Path(args.simulate).resolve()) if args.simulate else "")
    report = Report()
    commit = _run(["git", "-C", str(ROOT), "describe", "--always", "--dirty"], 30).stdout.strip()
    version = _run([str(PLUGIN), "--version"], 60).stdout.strip()
    report.header = [f"- host: {platform.node()}, {platform.machine()}, Linux {platform.release()}, "
                     f"{os.cpu_count()} CPUs", f"- plugin: {version} (checkout {commit})",
                     f"- date: {time.strftime('%Y-%m-%d %H:%M:%S %Z')}"]
    if target.simulate:
        report.header.append(f"- SIMULATED DRIVER ({target.simulate}): a test of this script, not of a GPU")
    ok, where = load_driver(target)
    if not ok:
        report.sections.append(Section("driver", FAIL, 0.0, f"no NVIDIA driver on this machine: {where}.\n"
                                       "Nothing to check: run this where an NVIDIA driver is installed "
                                       "(`nvidia-smi` works)."))
        _emit(report, args.out)
        return 2
    state: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp_s:
        tmp = Path(tmp_s)
        report.run("driver", lambda: driver_section(target, where))
        report.run("probe", lambda: probe_section(target, state))
        report.run("Nomad's launcher: fingerprint, stats, reserve", lambda: launcher_section(target, state, tmp))
        report.run("Nomad's client code (harness): handshake, fingerprint, stats, reserve",
                   lambda: harness_section(target, state, tmp))
        report.run("MPS: NVIDIA's control daemon", lambda: mps_section(target, tmp))
        report.run("native vs python stats engine on these devices", lambda: differential_section(state))
        report.run("stats engine benchmarks at this device count", lambda: bench_section(state, target))
        report.run("`bench` subcommand", lambda: bench_command_section(target))
        report.run("every attribute against nvidia-smi", lambda: nvidia_smi_section(state, args.nvidia_smi_sample))
    report.header.append(f"- total: {time.monotonic() - started:.0f}s")
    _emit(report, args.out)
    return 1 if report.failed else 0


def _emit(report: Report, out: Path | None) -> None:
    text = report.render()
    sys.stdout.write(text)
    if out is not None:
        out.write_text(text)


if __name__ == "__main__":
    sys.exit(main())

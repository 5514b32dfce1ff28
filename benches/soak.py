"""Soak: one plugin process under hours' worth of what Nomad and operators do to it.

The plugin runs on 56 simulated GPUs (tests/scenarios/soak-56gpu.toml, plus the
faults and events below, timed to the run's length) and is spoken to with plain
gRPC as go-plugin's host would. Until `--ticks` Stats answers have arrived:

- `--streams` Stats streams stay open at `--interval`, each cancelled after a
  random number of ticks and reopened at once; a few times in the run every
  Stats stream is closed together (the stats engine is dropped) and reopened;
- two Fingerprint streams are open, each cancelled and reopened every few seconds;
- SetConfig changes the config every tenth of the run: extended stats on (a new
  stats engine), two GPUs ignored, sharing of 2, a shorter fingerprint period;
- the simulated driver reports a critical XID on one GPU, then loses that GPU and
  brings it back (a reset, which clears the XID), loses a second GPU for a while,
  reports XID 48 on a third near the end, a burst of 200 application XIDs (31) in
  one second, and an application XID (13) every 2 s throughout.

After every tick a sampler reads the plugin's RSS (and anonymous RSS), threads, open fds and CPU time
from /proc. At the end the run asserts that they plateau (bounds below), that no
stream failed or stalled, and that health followed the faults; it writes a
summary with a condensed series (`--json`) and a plot (`--plot`).

    make soak                                   # the full run: docs/soak.json, docs/soak.png
    .venv/bin/python benches/soak.py --ticks 6000 --json build/soak-short.json   # what `make test` runs

Exit status 0 when every bound held, 1 otherwise (the failed checks are printed
and are in the JSON's "failures").
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import re
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import msgpack

from nomad_device_nvidia._proto.nomad import base_pb2, device_pb2
from nomad_device_nvidia.sdk.handshake import MAGIC_COOKIE_KEY, MAGIC_COOKIE_VALUE

REPO = Path(__file__).resolve().parent.parent
PLUGIN = Path(os.environ.get("NOMAD_DEVICE_NVIDIA_BIN") or REPO / ".venv" / "bin" / "nomad-device-nvidia")
SIM_LIB = REPO / "build" / "sim" / "libnvidia-ml.so.1"
BASE_SCENARIO = REPO / "tests" / "scenarios" / "soak-56gpu.toml"
WORK = REPO / "build" / "soak"

BASE = "/hashicorp.nomad.plugins.base.proto.BasePlugin/"
DEVICE = "/hashicorp.nomad.plugins.device.DevicePlugin/"

GPUS = 56
# GPU indexes the faults and events pick.
XID_GPU = 5  # critical XID 79, then lost and back: the reset clears it
LOST_GPU = 20  # lost for a while, back
LATE_XID_GPU = 9  # XID 48 near the end: unhealthy at the end
BURST_GPU = 11  # 200 application XIDs (31) in one second: stays healthy
APP_XID_GPU = 7  # an application XID (13) every 2 s: stays healthy
IGNORED = (50, 51)  # ignored_gpu_ids in one of the configs

# The bounds the run asserts (the README of the figures: docs/reliability.md).
WARMUP = 0.10  # the first tenth of the ticks is warm-up, not judged
RSS_GROWTH_MIB = 4.0  # max anonymous RSS in the second half over its max in 10-50 %
THREAD_GROWTH = 2  # max threads in the second half over max in 10-50 %
FD_GROWTH = 2  # the same for open fds
CPU_GROWTH = 1.25  # CPU per tick in the last quarter over the second quarter (plus CPU_SLACK_MS)
CPU_SLACK_MS = 0.2
RSS_MAX_MIB = 200.0
THREADS_MAX = 80
FDS_MAX = 200
STALL_S = 2.0  # the longest a stream may go without an answer, beyond its interval


def _raw(data: bytes) -> bytes:
    return data


# --- the simulated machine ---

_UUIDS = r"""
import ctypes, json, sys
ctypes.CDLL(sys.argv[1], mode=ctypes.RTLD_GLOBAL)
import pynvml as n
n.nvmlInit()
print(json.dumps([n.nvmlDeviceGetUUID(n.nvmlDeviceGetHandleByIndex(i)) for i in range(n.nvmlDeviceGetCount())]))
n.nvmlShutdown()
"""


def gpu_uuids(scenario: Path) -> list[str]:
    """UUIDs by NVML index, from a fresh process on the same scenario (UUIDs depend on its name only)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("NVML_SIM_")}
    env["NVML_SIM_SCENARIO"] = str(scenario)
    out = subprocess.run([sys.executable, "-c", _UUIDS, str(SIM_LIB)], capture_output=True, text=True, env=env,
                         timeout=60, check=True)
    uuids: list[str] = json.loads(out.stdout)
    return uuids


@dataclass(frozen=True)
class Plan:
    """When things happen, in seconds after NVML's init (the simulated clock) or after the start."""

    duration_s: float
    xid_at: float
    lost_at: float
    back_at: float
    lost2_at: float
    back2_at: float
    burst_at: float
    late_xid_at: float
    configs_at: tuple[float, ...]
    close_all_at: tuple[float, ...]


def make_plan(duration_s: float) -> Plan:
    d = duration_s
    return Plan(duration_s=d, xid_at=0.15 * d, lost_at=0.30 * d, back_at=0.38 * d, lost2_at=0.55 * d,
                back2_at=0.62 * d, burst_at=0.45 * d, late_xid_at=0.80 * d,
                configs_at=tuple(k * d / 10 for k in range(1, 10)),
                close_all_at=(0.25 * d, 0.50 * d, 0.75 * d))


def write_scenario(plan: Plan, path: Path) -> None:
    lines = [BASE_SCENARIO.read_text(), "# --- appended by benches/soak.py for this run ---"]
    lines += ["[[faults]]", 'kind = "lost"', f"gpu = {XID_GPU}", f"after_s = {plan.lost_at:.3f}",
              f"recover_after_s = {plan.back_at - plan.lost_at:.3f}", ""]
    lines += ["[[faults]]", 'kind = "lost"', f"gpu = {LOST_GPU}", f"after_s = {plan.lost2_at:.3f}",
              f"recover_after_s = {plan.back2_at - plan.lost2_at:.3f}", ""]
    events = [(plan.xid_at, XID_GPU, 79), (plan.late_xid_at, LATE_XID_GPU, 48)]
    events += [(plan.burst_at + k / 200, BURST_GPU, 31) for k in range(200)]
    t = 2.0
    while t < plan.duration_s * 1.5 + 60:
        events.append((t, APP_XID_GPU, 13))
        t += 2.0
    for at, gpu, xid in sorted(events):
        lines += ["[[events]]", f"gpu = {gpu}", f"at_s = {at:.4f}", 'type = "xid"', f"xid = {xid}", ""]
    path.write_text("\n".join(lines) + "\n")


def configs(scenario: Path, uuids: list[str]) -> list[tuple[str, dict[str, Any]]]:
    base: dict[str, Any] = {"simulate": str(scenario), "nvml_library": str(SIM_LIB), "fingerprint_period": "5s",
                            "health": {"probe_interval": "1s", "call_timeout": "3s"}}
    return [
        ("base", base),
        ("extended_stats", {**base, "extended_stats": True}),
        ("ignore 2 GPUs", {**base, "ignored_gpu_ids": [uuids[i] for i in IGNORED]}),
        ("shares = 2", {**base, "sharing": {"shares": 2}}),
        ("fingerprint_period 2s", {**base, "fingerprint_period": "2s"}),
    ]


# --- the plugin process ---


class Plugin:
    def __init__(self, log_path: Path) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PLUGIN_", "NVML_SIM_"))}
        env[MAGIC_COOKIE_KEY] = MAGIC_COOKIE_VALUE
        env["PLUGIN_PROTOCOL_VERSIONS"] = "2"
        self._log = open(log_path, "w")
        self.proc = subprocess.Popen([str(PLUGIN)], env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=self._log)
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], 30)
        line = self.proc.stdout.readline().decode() if ready else ""
        if not line:
            self.kill()
            raise RuntimeError(f"no handshake line within 30 s; see {log_path}")
        _core, _app, network, address, _proto = line.strip().split("|")[:5]
        target = f"unix:{address}" if network == "unix" else address
        self.channel = grpc.insecure_channel(target, options=[("grpc.max_receive_message_length", 64 << 20)])
        self.pid = self.proc.pid

    def set_config(self, config: dict[str, Any]) -> None:
        call = self.channel.unary_unary(BASE + "SetConfig", request_serializer=_raw, response_deserializer=_raw)
        call(base_pb2.SetConfigRequest(msgpack_config=msgpack.packb(config)).SerializeToString(), timeout=30)

    def stream(self, method: str, request: bytes) -> Any:
        return self.channel.unary_stream(DEVICE + method, request_serializer=_raw, response_deserializer=_raw)(request)

    def proc_figures(self) -> tuple[float, float, int, int, float]:
        """(RSS MiB, anonymous RSS MiB, threads, open fds, CPU seconds) of the plugin now."""
        rss = anon = threads = 0
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1])
            elif line.startswith("RssAnon:"):
                anon = int(line.split()[1])
            elif line.startswith("Threads:"):
                threads = int(line.split()[1])
        fds = len(os.listdir(f"/proc/{self.pid}/fd"))
        stat = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        cpu = (int(stat[11]) + int(stat[12])) / os.sysconf("SC_CLK_TCK")
        return rss / 1024, anon / 1024, threads, fds, cpu

    def stop(self) -> tuple[int | None, float]:
        """SIGTERM, as the agent's kill does after Shutdown; (exit code, seconds to exit)."""
        self.channel.close()
        at = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        try:
            code: int | None = self.proc.wait(10)
        except subprocess.TimeoutExpired:
            code = None
            self.kill()
        self._log.close()
        return code, time.monotonic() - at

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


# --- the run ---


@dataclass
class Sample:
    tick: int
    t: float
    rss_mib: float
    anon_mib: float
    threads: int
    fds: int
    cpu_s: float


@dataclass
class Run:
    plugin: Plugin
    target: int
    interval: float
    streams: int
    seed: int
    t0: float = field(default_factory=time.monotonic)
    lock: threading.Lock = field(default_factory=threading.Lock)
    ticked: threading.Condition = field(default_factory=threading.Condition)
    ticks: int = 0
    stop: threading.Event = field(default_factory=threading.Event)
    close_all: int = 0  # bumped to make every Stats stream close and reopen
    close_all_pending: bool = False  # while set, closed slots wait before reopening
    samples: list[Sample] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    stats_cycles: int = 0
    fingerprint_cycles: int = 0
    fingerprint_answers: int = 0
    max_gap_s: float = 0.0
    device_counts: dict[int, int] = field(default_factory=dict)
    health: dict[str, list[tuple[float, bool, str]]] = field(default_factory=dict)
    first_devices_at: float | None = None
    marks: list[tuple[float, str]] = field(default_factory=list)

    def now(self) -> float:
        return time.monotonic() - self.t0

    def error(self, what: str) -> None:
        with self.lock:
            self.errors.append(f"{self.now():.1f}s {what}")

    def mark(self, what: str) -> None:
        with self.lock:
            self.marks.append((self.now(), what))

    def follow(self, what: str, call: Any, answer: Callable[[bytes], bool]) -> None:
        """Reads the stream `call` until `answer` (given each message) says it is done, then
        cancels it. An end the soak did not ask for is an error: the plugin ending the stream,
        or any error but the soak's own cancel."""
        answers = 0
        try:
            for raw in call:
                answers += 1
                if answer(raw):
                    break
            else:
                self.error(f"{what} ended by the plugin after {answers} answers")
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.CANCELLED:
                self.error(f"{what}: {exc.code()} {exc.details()}")
        finally:
            call.cancel()

    # Stats: one slot keeps one stream open, reopening it when it is done.
    def stats_slot(self, k: int) -> None:
        rng = random.Random(self.seed * 1000 + k)
        req = device_pb2.StatsRequest()
        req.collection_interval.seconds = int(self.interval)
        req.collection_interval.nanos = int(round((self.interval % 1) * 1e9))
        payload = req.SerializeToString()
        while not self.stop.is_set():
            lifetime = rng.randint(20, 400)
            epoch = self.close_all
            got, last = 0, time.monotonic()

            def answer(raw: bytes) -> bool:
                nonlocal got, last
                now = time.monotonic()
                resp = device_pb2.StatsResponse.FromString(raw)
                n = sum(len(g.instance_stats) for g in resp.groups)
                with self.lock:
                    self.max_gap_s = max(self.max_gap_s, now - last) if got else self.max_gap_s
                    self.device_counts[n] = self.device_counts.get(n, 0) + 1
                last = now
                got += 1
                with self.ticked:
                    self.ticks += 1
                    self.ticked.notify_all()
                return got >= lifetime or epoch != self.close_all or self.stop.is_set()

            self.follow(f"stats stream {k}", self.plugin.stream("Stats", payload), answer)
            with self.lock:
                self.stats_cycles += 1
            while epoch != self.close_all and self.close_all_pending and not self.stop.is_set():
                time.sleep(0.01)  # every slot closes before any reopens

    def fingerprint_slot(self, k: int) -> None:
        rng = random.Random(self.seed * 2000 + k)
        payload = device_pb2.FingerprintRequest().SerializeToString()
        while not self.stop.is_set():
            call = self.plugin.stream("Fingerprint", payload)
            timer = threading.Timer(rng.uniform(3, 10), call.cancel)
            timer.start()

            def answer(raw: bytes) -> bool:
                self._fingerprint(device_pb2.FingerprintResponse.FromString(raw))
                return self.stop.is_set()

            try:
                self.follow(f"fingerprint stream {k}", call, answer)
            finally:
                timer.cancel()
            with self.lock:
                self.fingerprint_cycles += 1

    def _fingerprint(self, resp: Any) -> None:
        now = self.now()
        with self.lock:
            self.fingerprint_answers += 1
            devices = [d for g in resp.device_group for d in g.devices]
            if devices and self.first_devices_at is None:
                self.first_devices_at = now
            for d in devices:
                gpu = d.ID.split("::")[0]
                seen = self.health.setdefault(gpu, [])
                if not seen or (seen[-1][1], seen[-1][2]) != (d.healthy, d.health_description):
                    seen.append((now, d.healthy, d.health_description))

    def sampler(self) -> None:
        seen = -1
        while True:
            with self.ticked:
                while self.ticks == seen and not self.stop.is_set():
                    self.ticked.wait(1.0)
                tick = self.ticks
            if self.stop.is_set():
                return
            seen = tick
            try:
                rss, anon, threads, fds, cpu = self.plugin.proc_figures()
            except OSError as exc:
                self.error(f"reading /proc of the plugin: {exc}")
                return
            self.samples.append(Sample(tick, self.now(), rss, anon, threads, fds, cpu))


def run(args: argparse.Namespace) -> dict[str, Any]:
    WORK.mkdir(parents=True, exist_ok=True)
    rate = args.streams / args.interval
    duration = args.ticks / rate
    plan = make_plan(duration)
    scenario = WORK / f"soak-{args.ticks}.toml"
    write_scenario(plan, scenario)
    uuids = gpu_uuids(scenario)
    assert len(uuids) == GPUS, uuids
    cfgs = configs(scenario, uuids)
    plugin = Plugin(WORK / f"plugin-{args.ticks}.log")
    r = Run(plugin=plugin, target=args.ticks, interval=args.interval, streams=args.streams, seed=args.seed)
    threads: list[threading.Thread] = []
    exit_code: int | None = None
    exit_s = 0.0
    try:
        plugin.set_config(cfgs[0][1])
        r.mark("config: base")
        for k in range(2):
            threads.append(threading.Thread(target=r.fingerprint_slot, args=(k,), daemon=True))
        threads.append(threading.Thread(target=r.sampler, daemon=True))
        for k in range(args.streams):
            threads.append(threading.Thread(target=r.stats_slot, args=(k,), daemon=True))
        for t in threads:
            t.start()
        # The schedule counts from NVML's init, which the first Fingerprint stream triggers.
        deadline = time.monotonic() + 60
        while r.first_devices_at is None and time.monotonic() < deadline:
            time.sleep(0.05)
        if r.first_devices_at is None:
            raise RuntimeError("no devices within 60 s of the first Fingerprint")
        start = r.first_devices_at
        schedule: list[tuple[float, Callable[[], None]]] = []
        for i, at in enumerate(plan.configs_at):
            name, cfg = cfgs[(i + 1) % len(cfgs)]

            def apply(name: str = name, cfg: dict[str, Any] = cfg) -> None:
                try:
                    plugin.set_config(cfg)
                    r.mark(f"config: {name}")
                except grpc.RpcError as exc:
                    r.error(f"SetConfig {name}: {exc.code()} {exc.details()}")
            schedule.append((start + at, apply))
        for at in plan.close_all_at:
            def close() -> None:
                r.close_all_pending = True
                r.close_all += 1
                r.mark("every Stats stream closed and reopened")
                time.sleep(0.3)
                r.close_all_pending = False
            schedule.append((start + at, close))
        schedule.sort(key=lambda s: s[0])
        limit = time.monotonic() + duration * 3 + 120
        last_report = 0.0
        while r.ticks < r.target:
            if time.monotonic() > limit:
                r.error(f"only {r.ticks} of {r.target} ticks within {duration * 3 + 120:.0f} s")
                break
            while schedule and r.now() >= schedule[0][0]:
                schedule.pop(0)[1]()
            if args.progress and r.now() - last_report >= 30:
                last_report = r.now()
                s = r.samples[-1] if r.samples else None
                print(f"{r.now():7.0f}s {r.ticks:7d} ticks"
                      + (f"  rss {s.rss_mib:.1f} MiB  threads {s.threads}  fds {s.fds}" if s else ""), flush=True)
            with r.ticked:
                r.ticked.wait(0.2)
    finally:
        r.stop.set()
        with r.ticked:
            r.ticked.notify_all()
        for t in threads:
            t.join(15)
        if any(t.is_alive() for t in threads):
            r.error("a client thread did not end within 15 s")
        if plugin.proc.poll() is None:
            exit_code, exit_s = plugin.stop()
        else:
            r.error(f"the plugin exited on its own with {plugin.proc.returncode}")
            plugin.kill()
    return judge(r, plan, uuids, cfgs, exit_code, exit_s, args)


# --- the verdict ---


def _window(samples: list[Sample], lo: float, hi: float) -> list[Sample]:
    n = samples[-1].tick if samples else 0
    return [s for s in samples if lo * n <= s.tick <= hi * n]


def _cpu_ms_per_tick(part: list[Sample]) -> float:
    if len(part) < 2 or part[-1].tick == part[0].tick:
        return 0.0
    return (part[-1].cpu_s - part[0].cpu_s) * 1000 / (part[-1].tick - part[0].tick)


def series(samples: list[Sample], buckets: int = 200) -> list[dict[str, float]]:
    if not samples:
        return []
    n = samples[-1].tick
    out = []
    per: dict[int, list[Sample]] = {}
    for s in samples:
        per.setdefault(min(buckets - 1, s.tick * buckets // max(1, n)), []).append(s)
    prev: Sample | None = None
    for b in sorted(per):
        part = per[b]
        last = part[-1]
        base = prev or part[0]
        cpu = (last.cpu_s - base.cpu_s) * 1000 / max(1, last.tick - base.tick)
        out.append({"tick": last.tick, "t_s": round(last.t, 2), "rss_mib": round(max(s.rss_mib for s in part), 2),
                    "anon_mib": round(max(s.anon_mib for s in part), 2),
                    "threads": max(s.threads for s in part), "fds": max(s.fds for s in part),
                    "cpu_ms_per_tick": round(cpu, 4)})
        prev = last
    return out


def judge(r: Run, plan: Plan, uuids: list[str], cfgs: list[tuple[str, dict[str, Any]]], exit_code: int | None,
          exit_s: float, args: argparse.Namespace) -> dict[str, Any]:
    failures = list(r.errors)
    s = r.samples
    if not s:
        failures.append("no samples")
        return {"failures": failures}
    early, late = _window(s, WARMUP, 0.5), _window(s, 0.5, 1.0)
    q2, q4 = _window(s, 0.25, 0.5), _window(s, 0.75, 1.0)
    # Judged on anonymous memory (the heap: what a leak grows); RSS also counts file pages
    # (shared libraries) that the kernel drops and reloads under memory pressure.
    rss_early, rss_late = max(x.anon_mib for x in early), max(x.anon_mib for x in late)
    thr_early, thr_late = max(x.threads for x in early), max(x.threads for x in late)
    fd_early, fd_late = max(x.fds for x in early), max(x.fds for x in late)
    cpu_q2, cpu_q4 = _cpu_ms_per_tick(q2), _cpu_ms_per_tick(q4)
    wall = s[-1].t - s[0].t
    cpu_total = s[-1].cpu_s - s[0].cpu_s

    def check(ok: bool, what: str) -> None:
        if not ok:
            failures.append(what)

    check(r.ticks >= r.target, f"{r.ticks} ticks, wanted {r.target}")
    check(rss_late - rss_early <= RSS_GROWTH_MIB,
          f"anonymous RSS grew {rss_late - rss_early:.1f} MiB from the first to the second half (bound {RSS_GROWTH_MIB})")
    check(thr_late - thr_early <= THREAD_GROWTH, f"threads grew from {thr_early} to {thr_late}")
    check(fd_late - fd_early <= FD_GROWTH, f"fds grew from {fd_early} to {fd_late}")
    check(cpu_q4 <= cpu_q2 * CPU_GROWTH + CPU_SLACK_MS,
          f"CPU per tick grew from {cpu_q2:.3f} ms to {cpu_q4:.3f} ms")
    check(max(x.rss_mib for x in s) <= RSS_MAX_MIB, f"RSS reached {max(x.rss_mib for x in s):.1f} MiB")
    check(max(x.threads for x in s) <= THREADS_MAX, f"threads reached {max(x.threads for x in s)}")
    check(max(x.fds for x in s) <= FDS_MAX, f"fds reached {max(x.fds for x in s)}")
    check(r.max_gap_s <= args.interval + STALL_S, f"a Stats stream waited {r.max_gap_s:.2f} s for an answer")
    check(exit_code == 0 and exit_s <= 2.0, f"exit after SIGTERM: code {exit_code} in {exit_s:.2f} s")
    expected_counts = {GPUS, GPUS - len(IGNORED), 2 * GPUS}
    check(set(r.device_counts) <= expected_counts,
          f"Stats answers with device counts {sorted(r.device_counts)}, expected within {sorted(expected_counts)}")

    def states(i: int) -> list[tuple[float, bool, str]]:
        return r.health.get(uuids[i], [])

    xid = states(XID_GPU)
    got_xid = [k for k, e in enumerate(xid) if not e[1] and "XID 79" in e[2]]
    check(bool(got_xid), f"GPU {XID_GPU} never unhealthy with XID 79: {xid}")
    if got_xid:
        after = xid[got_xid[0]:]
        check(any("lost" in e[2].lower() for e in after if not e[1]), f"GPU {XID_GPU} not seen lost: {xid}")
        check(after[-1][1], f"GPU {XID_GPU} not healthy again after its reset: {xid}")
    lost2 = states(LOST_GPU)
    check(any(not e[1] for e in lost2) and bool(lost2) and lost2[-1][1], f"GPU {LOST_GPU} not lost and back: {lost2}")
    late = states(LATE_XID_GPU)
    check(bool(late) and not late[-1][1] and "XID 48" in late[-1][2], f"GPU {LATE_XID_GPU} at the end: {late}")
    for i in (APP_XID_GPU, BURST_GPU):
        check(all(e[1] for e in states(i)), f"GPU {i} (application XIDs only) turned unhealthy: {states(i)}")
    others = [u for i, u in enumerate(uuids) if i not in (XID_GPU, LOST_GPU, LATE_XID_GPU)]
    sick = [u for u in others if any(not e[1] for e in r.health.get(u, []))]
    check(not sick, f"GPUs without a fault turned unhealthy: {sick[:3]}")

    levels: dict[str, int] = {}
    log = WORK / f"plugin-{args.ticks}.log"
    for line in log.read_text(errors="replace").splitlines():
        try:
            lvl = str(json.loads(line).get("@level", "?"))
        except ValueError:
            lvl = "unparsed"
        levels[lvl] = levels.get(lvl, 0) + 1

    return {
        "command": " ".join(["benches/soak.py", *sys.argv[1:]]),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "kernel": platform.release()},
        "gpus": GPUS, "target_ticks": r.target, "ticks": r.ticks, "stats_streams": r.streams, "interval_s": r.interval,
        "wall_s": round(wall, 1), "ticks_per_s": round(r.ticks / wall, 1) if wall else None,
        "stats_stream_cycles": r.stats_cycles, "fingerprint_stream_cycles": r.fingerprint_cycles,
        "fingerprint_answers": r.fingerprint_answers, "set_configs": sum(1 for _, m in r.marks if m.startswith("config")),
        "max_stats_gap_s": round(r.max_gap_s, 3), "device_counts": {str(k): v for k, v in sorted(r.device_counts.items())},
        "rss_mib": {"first_sample": round(s[0].rss_mib, 1), "max": round(max(x.rss_mib for x in s), 1),
                    "last": round(s[-1].rss_mib, 1)},
        "anon_rss_mib": {"first_sample": round(s[0].anon_mib, 1), "max_10_50pct": round(rss_early, 1),
                         "max_50_100pct": round(rss_late, 1), "last": round(s[-1].anon_mib, 1)},
        "threads": {"first_sample": s[0].threads, "max_10_50pct": thr_early, "max_50_100pct": thr_late,
                    "last": s[-1].threads},
        "fds": {"first_sample": s[0].fds, "max_10_50pct": fd_early, "max_50_100pct": fd_late, "last": s[-1].fds},
        "cpu": {"ms_per_tick_25_50pct": round(cpu_q2, 4), "ms_per_tick_75_100pct": round(cpu_q4, 4),
                "mean_cores": round(cpu_total / wall, 3) if wall else None, "total_s": round(cpu_total, 1)},
        "exit_after_sigterm": {"code": exit_code, "seconds": round(exit_s, 3)},
        "plugin_log_lines": levels,
        "bounds": {"warmup": WARMUP, "rss_growth_mib": RSS_GROWTH_MIB, "thread_growth": THREAD_GROWTH,
                   "fd_growth": FD_GROWTH, "cpu_growth": CPU_GROWTH, "cpu_slack_ms": CPU_SLACK_MS,
                   "rss_max_mib": RSS_MAX_MIB, "threads_max": THREADS_MAX, "fds_max": FDS_MAX, "stall_s": STALL_S},
        "plan_s_after_init": {k: v for k, v in plan.__dict__.items()},
        "marks": [{"t_s": round(t, 2), "what": m} for t, m in r.marks],
        "health": {f"gpu{i}": [{"t_s": round(t, 2), "healthy": ok, "desc": d} for t, ok, d in states(i)]
                   for i in (XID_GPU, LOST_GPU, LATE_XID_GPU, APP_XID_GPU, BURST_GPU)},
        "failures": failures,
        "series": series(s),
    }


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pts = result["series"]
    ticks = [p["tick"] / 1000 for p in pts]
    fig, axes = plt.subplots(4, 1, figsize=(9, 9), sharex=True)
    panels = [("rss_mib", "RSS, anon. (MiB)"), ("threads", "threads"), ("fds", "open fds"), ("cpu_ms_per_tick", "CPU ms / tick")]
    # Ticks of each mark, from the series' time axis.
    def tick_at(t: float) -> float:
        for p in pts:
            if p["t_s"] >= t:
                return float(p["tick"]) / 1000
        return ticks[-1]
    marks = [(tick_at(m["t_s"]), m["what"]) for m in result["marks"]]
    for ax, (key, label) in zip(axes, panels):
        ax.plot(ticks, [p[key] for p in pts], lw=1.2, label="RSS" if key == "rss_mib" else None)
        if key == "rss_mib":
            ax.plot(ticks, [p["anon_mib"] for p in pts], lw=1.2, label="anonymous (judged)")
            ax.legend(loc="lower right", fontsize=8)
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        for x, what in marks:
            ax.axvline(x, color="grey" if what.startswith("config") else "tab:orange", lw=0.6, alpha=0.6)
        lo = min(min(p[key], p.get("anon_mib", p[key])) if key == "rss_mib" else p[key] for p in pts)
        hi = max(p[key] for p in pts)
        ax.set_ylim(0 if key != "rss_mib" else lo * 0.9, hi * 1.15 + (0.1 if key == "cpu_ms_per_tick" else 1))
    axes[-1].set_xlabel("Stats ticks (thousands); grey: SetConfig, orange: every Stats stream closed and reopened")
    fig.suptitle(f"soak: {result['ticks']:,} Stats ticks on {result['gpus']} simulated GPUs, "
                 f"{result['stats_streams']} streams with churn, {result['wall_s']:.0f} s")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


SOAK_BEGIN, SOAK_END = "<!-- soak:begin -->", "<!-- soak:end -->"


def doc_section(result: dict[str, Any]) -> str:
    """The soak's part of docs/reliability.md, from its JSON (so the two cannot drift)."""
    b = result["bounds"]
    anon, rss, thr, fds, cpu = (result["anon_rss_mib"], result["rss_mib"], result["threads"], result["fds"],
                                result["cpu"])
    health = result["health"]

    def story(key: str) -> str:
        said: list[str] = []
        for e in health[key]:
            # The scan says "GPU N: <why>", a probe "<why>": the same state for this summary.
            text = "healthy" if e["healthy"] else re.sub(r"^GPU \d+: ", "", e["desc"].split(";")[0].split(" (")[0])
            if not said or said[-1] != text:
                said.append(text)
        return " → ".join(said) or "(no answer)"

    rows = [
        ("Stats ticks", f"{result['ticks']:,} in {result['wall_s']:,.0f} s ({result['ticks_per_s']:g} a second), "
                        f"{result['stats_streams']} streams at {result['interval_s'] * 1000:g} ms on "
                        f"{result['gpus']} GPUs", f"at least {result.get('target_ticks', 100_000):,}"),
        ("churn", f"{result['stats_stream_cycles']:,} Stats and {result['fingerprint_stream_cycles']:,} Fingerprint "
                  f"streams opened and cancelled; every Stats stream closed at once 3 times; "
                  f"{result['set_configs']} SetConfig calls", ""),
        ("anonymous RSS (MiB)", f"{anon['first_sample']} at the first tick; max {anon['max_10_50pct']} in 10-50 % of "
                                f"the run, {anon['max_50_100pct']} in 50-100 %; {anon['last']} at the end",
         f"second half at most {b['rss_growth_mib']:g} MiB over the first"),
        ("RSS (MiB)", f"{rss['first_sample']} first, {rss['max']} max, {rss['last']} last",
         f"at most {b['rss_max_mib']:g}"),
        ("threads", f"{thr['first_sample']} first; max {thr['max_10_50pct']} in 10-50 %, {thr['max_50_100pct']} in "
                    f"50-100 %; {thr['last']} last", f"growth at most {b['thread_growth']}, at most {b['threads_max']}"),
        ("open fds", f"{fds['first_sample']} first; max {fds['max_10_50pct']} / {fds['max_50_100pct']}; {fds['last']} "
                     "last", f"growth at most {b['fd_growth']}, at most {b['fds_max']}"),
        ("plugin CPU per tick", f"{cpu['ms_per_tick_25_50pct']:.2f} ms in 25-50 %, {cpu['ms_per_tick_75_100pct']:.2f} ms "
                                f"in 75-100 % ({cpu['mean_cores']:.2f} of a core on average)",
         f"last quarter at most {b['cpu_growth']:g} x the second + {b['cpu_slack_ms']:g} ms"),
        ("longest wait for a Stats answer", f"{result['max_stats_gap_s']:.2f} s",
         f"at most the interval + {b['stall_s']:g} s"),
        ("stream errors", "none" if not [f for f in result["failures"] if "stream" in f] else "see failures", "none"),
        ("health", f"GPU {XID_GPU}: {story(f'gpu{XID_GPU}')}; GPU {LOST_GPU}: {story(f'gpu{LOST_GPU}')}; "
                   f"GPU {LATE_XID_GPU}: {story(f'gpu{LATE_XID_GPU}')}; GPUs {APP_XID_GPU} and {BURST_GPU} "
                   "(application XIDs only): "
                   + ("healthy throughout" if all(e["healthy"] for k in (f"gpu{APP_XID_GPU}", f"gpu{BURST_GPU}")
                                                  for e in health[k]) else "UNHEALTHY"),
         "as the faults say"),
        ("exit after SIGTERM", f"code {result['exit_after_sigterm']['code']} in "
                               f"{result['exit_after_sigterm']['seconds']:.2f} s", "code 0 within 2 s"),
        ("plugin log lines", ", ".join(f"{n:,} {lvl}" for lvl, n in sorted(result["plugin_log_lines"].items())), ""),
    ]
    lines = [f"Command: `make soak` (`{result['command']}`, niced), on {result['machine']['cpus']} CPUs, "
             f"Python {result['machine']['python']}. Result: "
             + ("every bound held." if not result["failures"] else "FAILED: " + "; ".join(result["failures"])),
             "", "| | measured | bound |", "| --- | --- | --- |"]
    lines += [f"| {a} | {m} | {c} |" for a, m, c in rows]
    lines += ["", "![soak: anonymous RSS, threads, fds and CPU per tick over the run](soak.png)", ""]
    return "\n".join(lines)


def doc_with_section(doc: str, result: dict[str, Any]) -> str:
    if SOAK_BEGIN not in doc or SOAK_END not in doc:
        raise ValueError(f"no {SOAK_BEGIN} ... {SOAK_END} section")
    head, rest = doc.split(SOAK_BEGIN, 1)
    _, tail = rest.split(SOAK_END, 1)
    return f"{head}{SOAK_BEGIN}\n{doc_section(result)}{SOAK_END}{tail}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--ticks", type=int, default=100_000, help="Stats answers to receive in all (default 100,000)")
    p.add_argument("--streams", type=int, default=12, help="Stats streams open at a time (default 12)")
    p.add_argument("--interval", type=float, default=0.1, help="Stats interval in seconds (default 0.1, the floor)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--json", type=Path, help="write the summary and series here")
    p.add_argument("--plot", type=Path, help="write the plot here (PNG)")
    p.add_argument("--progress", action="store_true", help="a line every 30 s")
    p.add_argument("--doc", type=Path, help="rewrite this file's soak section (between the soak markers) from the run")
    p.add_argument("--doc-from", type=Path, help="with --doc: from this JSON instead of running")
    args = p.parse_args(argv)
    if args.doc and args.doc_from:
        args.doc.write_text(doc_with_section(args.doc.read_text(), json.loads(args.doc_from.read_text())))
        return 0
    for path in (PLUGIN, SIM_LIB, BASE_SCENARIO):
        if not path.exists():
            print(f"soak: {path} missing (make native sim)", file=sys.stderr)
            return 2
    result = run(args)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    if args.plot and result.get("series"):
        plot(result, args.plot)
    if args.doc and result.get("series"):
        args.doc.write_text(doc_with_section(args.doc.read_text(), result))
    brief = {k: v for k, v in result.items() if k not in ("series", "health", "marks", "plan_s_after_init")}
    print(json.dumps(brief, indent=1))
    for f in result["failures"]:
        print("FAILED:", f, file=sys.stderr)
    return 1 if result["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())

"""`nomad-device-nvidia bench`: how fast this node's stats are collected, without Nomad.

On the node's driver (or the simulated one with --simulate), for the devices
the plugin would offer: ticks per second and process CPU per device per tick
of the native and python engines, the wall time of one tick at each worker
count of the native engine, and NVML's own cost per call for the calls a tick
makes. Prints a table, or JSON with --json; a progress line goes to stderr on
runs longer than a few seconds.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

ENGINES = ("native", "python")
WORKER_COUNTS = (1, 2, 4, 8, 16, 32)
_PROGRESS_AFTER_S = 3.0
_CALL_REPEATS = 200


class BenchError(Exception):
    """A problem the operator can fix; printed as one line."""


@dataclass
class EngineRun:
    engine: str
    devices: int
    ticks: int
    seconds: float
    ticks_per_second: float
    cpu_us_per_device_tick: float
    tick_ms_median: float
    tick_ms_p99: float


@dataclass
class Report:
    driver: str
    simulated: bool
    devices: int
    extended: bool
    library: str = ""  # which NVML library, for a person (path, driver version, branch)
    engines: list[EngineRun] = field(default_factory=list)
    workers: dict[str, float] = field(default_factory=dict)  # worker count -> median tick ms
    nvml_us_per_call: dict[str, float] = field(default_factory=dict)


def _duration(text: str) -> float:
    from nomad_device_nvidia.sdk import parse_duration

    try:
        seconds = parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if not 0.1 <= seconds <= 3600:
        raise argparse.ArgumentTypeError(f"must be between 100ms and 1h, got {text!r}")
    return seconds


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="nomad-device-nvidia bench",
        description="Measure stats collection on this node's GPUs: engine throughput and CPU, "
        "tick time by worker count, and NVML's cost per call.",
    )
    p.add_argument("--simulate", default="", metavar="SCENARIO", help="use the simulated driver with this scenario")
    p.add_argument("--nvml-library", default="", metavar="PATH", help="load this libnvidia-ml.so.1")
    p.add_argument("--devices", default="", metavar="N|ID,ID",
                   help="a subset: the first N devices, or these device IDs (default: all)")
    p.add_argument("--duration", type=_duration, default=5.0, metavar="D",
                   help="how long each engine runs, as a Go duration (default 5s)")
    p.add_argument("--engines", default=",".join(ENGINES), help="engines to run, comma-separated (default: both)")
    p.add_argument("--extended", action="store_true", help="with extended stats (clocks, energy, PCIe, XID, GPM)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    return p


def _pick(offered: Sequence[Any], spec: str) -> list[Any]:
    if not spec:
        return list(offered)
    if spec.isdigit():
        n = int(spec)
        if not 1 <= n <= len(offered):
            raise BenchError(f"--devices {spec}: this node has {len(offered)} devices")
        return list(offered[:n])
    wanted = [s.strip() for s in spec.split(",") if s.strip()]
    by_id = {o.device_id: o for o in offered}
    unknown = [w for w in wanted if w not in by_id]
    if unknown:
        raise BenchError(f"--devices: unknown device IDs: {', '.join(unknown[:5])}"
                         + (f" and {len(unknown) - 5} more" if len(unknown) > 5 else ""))
    return [by_id[w] for w in wanted]


def _progress(label: str, started: float, total: float, ticks: int) -> None:
    sys.stderr.write(f"\rbench: {label} {time.monotonic() - started:5.1f}/{total:.1f} s, {ticks} ticks")
    sys.stderr.flush()


def _run_engine(kind: str, tracked: Sequence[Any], extended: bool, seconds: float) -> EngineRun:
    from nomad_device_nvidia.nvidia.stats.choose import EngineOptions, make_stats_engine

    engine = make_stats_engine(kind, options=EngineOptions(extended=extended))
    try:
        engine.track(tracked)
        for _ in range(3):  # warm: handles, registrations, first samples
            engine.collect()
        walls: list[float] = []
        show = seconds >= _PROGRESS_AFTER_S
        # Process CPU: the calling thread and the engine's workers.
        started_at, cpu_at = time.monotonic(), time.process_time()
        next_progress = started_at + 1.0
        while time.monotonic() - started_at < seconds:
            t0 = time.perf_counter()
            engine.collect()
            walls.append(time.perf_counter() - t0)
            if show and time.monotonic() >= next_progress:
                _progress(kind, started_at, seconds, len(walls))
                next_progress += 1.0
        elapsed = time.monotonic() - started_at
        cpu = time.process_time() - cpu_at
        if show:
            sys.stderr.write("\n")
    finally:
        engine.close()
    ticks = len(walls)
    walls.sort()
    readers = len({t.uuid for t in tracked}) or 1
    return EngineRun(
        engine=kind,
        devices=len(tracked),
        ticks=ticks,
        seconds=round(elapsed, 3),
        ticks_per_second=round(ticks / elapsed, 1),
        cpu_us_per_device_tick=round(cpu / ticks / readers * 1e6, 2) if ticks else 0.0,
        tick_ms_median=round(statistics.median(walls) * 1e3, 4) if walls else 0.0,
        tick_ms_p99=round(walls[min(len(walls) - 1, int(len(walls) * 0.99))] * 1e3, 4) if walls else 0.0,
    )


def _by_workers(tracked: Sequence[Any], extended: bool) -> dict[str, float]:
    from nomad_device_nvidia.nvidia.stats.contract import EngineOptions
    from nomad_device_nvidia.nvidia.stats.native import NativeStatsEngine

    out: dict[str, float] = {}
    readers = len({t.uuid for t in tracked})
    for workers in WORKER_COUNTS:
        if workers > max(1, readers) and workers != WORKER_COUNTS[0]:
            break
        engine = NativeStatsEngine(EngineOptions(extended=extended, max_workers=workers))
        try:
            engine.track(tracked)
            engine.collect()
            walls = []
            for _ in range(20):
                t0 = time.perf_counter()
                engine.collect()
                walls.append(time.perf_counter() - t0)
        finally:
            engine.close()
        out[str(workers)] = round(statistics.median(walls) * 1e3, 4)
    return out


def _call_costs(uuid: str) -> dict[str, float]:
    """NVML's cost per call, as nvidia-ml-py sees it, for the calls of one device's read."""
    import pynvml

    h = pynvml.nvmlDeviceGetHandleByUUID(uuid)
    calls: dict[str, Callable[[], Any]] = {
        "nvmlDeviceGetMemoryInfo": lambda: pynvml.nvmlDeviceGetMemoryInfo(h),
        "nvmlDeviceGetUtilizationRates": lambda: pynvml.nvmlDeviceGetUtilizationRates(h),
        "nvmlDeviceGetEncoderUtilization": lambda: pynvml.nvmlDeviceGetEncoderUtilization(h),
        "nvmlDeviceGetDecoderUtilization": lambda: pynvml.nvmlDeviceGetDecoderUtilization(h),
        "nvmlDeviceGetTemperature": lambda: pynvml.nvmlDeviceGetTemperature(h, pynvml.NVML_TEMPERATURE_GPU),
        "nvmlDeviceGetPowerUsage": lambda: pynvml.nvmlDeviceGetPowerUsage(h),
        "nvmlDeviceGetPowerManagementLimit": lambda: pynvml.nvmlDeviceGetPowerManagementLimit(h),
        "nvmlDeviceGetBAR1MemoryInfo": lambda: pynvml.nvmlDeviceGetBAR1MemoryInfo(h),
        "nvmlDeviceGetDetailedEccErrors": lambda: pynvml.nvmlDeviceGetDetailedEccErrors(
            h, pynvml.NVML_MEMORY_ERROR_TYPE_CORRECTED, pynvml.NVML_VOLATILE_ECC
        ),
    }
    out: dict[str, float] = {}
    for name, call in calls.items():
        try:
            call()
        except pynvml.NVMLError:
            continue  # not supported on this device: the tick does not pay for it either
        t0 = time.perf_counter()
        for _ in range(_CALL_REPEATS):
            call()
        out[name] = round((time.perf_counter() - t0) / _CALL_REPEATS * 1e6, 2)
    return out


def run(args: argparse.Namespace) -> Report:
    import pynvml

    from nomad_device_nvidia.nvidia import grouping
    from nomad_device_nvidia.nvidia.nvml import diagnosis
    from nomad_device_nvidia.nvidia.nvml.library import NvmlLoadError, load_nvml

    engines = [e.strip() for e in args.engines.split(",") if e.strip()]
    bad = [e for e in engines if e not in ENGINES]
    if bad or not engines:
        raise BenchError(f"--engines: choose from {', '.join(ENGINES)}, got {args.engines!r}")
    try:
        source = load_nvml(args.nvml_library or None, args.simulate or None)
        pynvml.nvmlInit()
    except NvmlLoadError as exc:
        raise BenchError(str(exc)) from None
    except pynvml.NVMLError as exc:
        why = (diagnosis.not_found() if exc.value == pynvml.NVML_ERROR_LIBRARY_NOT_FOUND
               else diagnosis.init_failed(exc, source.path))
        raise BenchError(f"{why} (to measure without a GPU: try --simulate)") from None
    try:
        tracked = _pick(grouping.tracked_on_this_node(), args.devices)
        if not tracked:
            raise BenchError("no NVIDIA devices on this node")
        driver = str(pynvml.nvmlSystemGetDriverVersion())
        report = Report(driver=driver, simulated=source.simulated, devices=len(tracked),
                        extended=args.extended, library=diagnosis.library(source.path, driver, source.simulated))
        for kind in engines:
            report.engines.append(_run_engine(kind, tracked, args.extended, args.duration))
        if "native" in engines:
            report.workers = _by_workers(tracked, args.extended)
        report.nvml_us_per_call = _call_costs(tracked[0].uuid)
        return report
    finally:
        pynvml.nvmlShutdown()


def render(report: Report) -> str:
    lines = [
        f"driver {report.driver}{' (SIMULATED)' if report.simulated else ''}, {report.devices} devices"
        f"{', extended stats' if report.extended else ''}",
        f"NVML: {report.library}",
        "",
        f"{'engine':<8} {'ticks/s':>10} {'CPU us/device/tick':>19} {'tick ms (median)':>17} {'tick ms (p99)':>14}",
    ]
    for e in report.engines:
        lines.append(f"{e.engine:<8} {e.ticks_per_second:>10.1f} {e.cpu_us_per_device_tick:>19.2f} "
                     f"{e.tick_ms_median:>17.4f} {e.tick_ms_p99:>14.4f}")
    if report.workers:
        lines += ["", "native engine, one tick by worker count (median ms):",
                  "  " + "  ".join(f"{w} workers: {ms:.4f}" for w, ms in report.workers.items())]
    if report.nvml_us_per_call:
        lines += ["", "NVML per call (us, through nvidia-ml-py, first device):"]
        width = max(len(k) for k in report.nvml_us_per_call)
        lines += [f"  {k:<{width}}  {v:.2f}" for k, v in report.nvml_us_per_call.items()]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str]) -> int:
    args = _parser().parse_args(list(argv))
    try:
        report = run(args)
    except BenchError as exc:
        print(f"nomad-device-nvidia bench: {exc}", file=sys.stderr)
        return 2
    sys.stdout.write(json.dumps(asdict(report), indent=2) + "\n" if args.json else render(report))
    return 0

"""Time per stats tick and plugin CPU per device, native vs python engine,
side by side: 8, 56 (8 GPUs x 7 MIG), 512 and 4,096 simulated devices, with
the simulated driver at zero latency and at 50 us per call.

Run: make bench (all sizes), or BENCH_SIZES=8,56 for a quick run.
benches/plot.py turns the JSON into docs/benchmarks.{json,png}.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest
from conftest import SIZES, pick

from nomad_device_nvidia.nvidia.stats.choose import EngineOptions, TrackedDevice, make_stats_engine
from nomad_device_nvidia.nvidia.stats.native import NativeStatsEngine

# Rough seconds per device per tick, to keep each benchmark near a few seconds.
COST = {("native", "0us"): 3e-6, ("python", "0us"): 2e-4, ("native", "50us"): 1e-4, ("python", "50us"): 1.5e-3}


def rounds_for(engine: str, latency: str, size: int) -> int:
    return max(3, min(200, int(2.0 / (COST[engine, latency] * size))))


def measure(benchmark: object, collect: Callable[[], bytes], devices: int, rounds: int,
            spacing: float = 0.0) -> None:
    """Times `rounds` ticks; `spacing` seconds of sleep before each (untimed, no CPU)."""
    collect()  # warm up: handles resolved, threads started
    walls: list[float] = []

    def tick() -> bytes:
        t0 = time.perf_counter()
        out = collect()
        walls.append(time.perf_counter() - t0)
        return out

    setup = (lambda: time.sleep(spacing)) if spacing else None
    cpu0 = time.process_time()
    result = benchmark.pedantic(tick, setup=setup, rounds=rounds, iterations=1)  # type: ignore[attr-defined]
    cpu = time.process_time() - cpu0
    wall = sum(walls)
    assert result
    extra = benchmark.extra_info  # type: ignore[attr-defined]
    extra["devices"] = devices
    extra["rounds"] = rounds
    # Process CPU (all threads, the simulated driver's own work included).
    extra["cpu_per_tick_s"] = cpu / rounds
    extra["cpu_per_device_us"] = cpu / rounds / devices * 1e6
    extra["wall_per_tick_s"] = wall / rounds


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("engine", ["native", "python"])
def test_tick(benchmark: object, machine: tuple[str, list[TrackedDevice]], engine: str, size: int) -> None:
    latency, devices = machine
    chosen = pick(devices, size)
    assert len(chosen) == size
    benchmark.group = f"tick {latency} {size} devices"  # type: ignore[attr-defined]
    benchmark.extra_info.update(engine=engine, latency=latency)  # type: ignore[attr-defined]
    stats = make_stats_engine(engine)
    try:
        stats.track(chosen)
        measure(benchmark, stats.collect, size, rounds_for(engine, latency, size))
    finally:
        stats.close()


@pytest.mark.parametrize("workers", [1, 32])
def test_parallel_gain_64(benchmark: object, machine: tuple[str, list[TrackedDevice]], workers: int) -> None:
    """64 devices: the native engine with one worker (serial) vs the pool."""
    latency, devices = machine
    chosen = pick(devices, 64)
    benchmark.group = f"parallel {latency} 64 devices"  # type: ignore[attr-defined]
    benchmark.extra_info.update(engine="native", latency=latency, workers=workers)  # type: ignore[attr-defined]
    stats = NativeStatsEngine(EngineOptions(max_workers=workers, timeout=10.0))
    try:
        stats.track(chosen)
        measure(benchmark, stats.collect, 64, 30 if latency == "50us" else 200)
    finally:
        stats.close()

"""The cost of extended stats with GPM: a tick with `extended_stats`
on GPUs that have GPM (the bench machine's H100s and their MIG instances: one
GPM sample and one metrics computation per device and tick, on top of the
extended reads) against the plain tick, per engine and size.

Target: the extended tick with GPM at most 2x the plain tick (CPU per tick).
Run: make bench (all sizes), or BENCH_SIZES=8,56 for a quick run; the groups
are "gpm <latency> <size> devices <engine>", extra_info has cpu_per_tick_s.
"""

from __future__ import annotations

import time

import pytest
from conftest import SIZES, pick

from stats_sim import decode
from test_stats_bench import measure, rounds_for

from nomad_device_nvidia.nvidia.stats.choose import EngineOptions, TrackedDevice, make_stats_engine
from nomad_device_nvidia.nvidia.stats.python import GPM_MIN_INTERVAL

# Both engines take a GPM sample only when the last one is at least GPM_MIN_INTERVAL old
# (nvml.h); extended ticks are spaced so that each measured tick takes one, as on a node.
SPACING_S = GPM_MIN_INTERVAL + 0.005


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("engine", ["native", "python"])
@pytest.mark.parametrize("mode", ["plain", "extended"])
def test_gpm_tick(benchmark: object, machine: tuple[str, list[TrackedDevice]], engine: str, size: int,
                  mode: str) -> None:
    latency, devices = machine
    chosen = pick(devices, size)
    extended = mode == "extended"
    benchmark.group = f"gpm {latency} {size} devices {engine}"  # type: ignore[attr-defined]
    benchmark.extra_info.update(engine=engine, latency=latency, mode=mode)  # type: ignore[attr-defined]
    stats = make_stats_engine(engine, options=EngineOptions(extended=extended, timeout=10.0))
    try:
        stats.track(chosen)
        stats.collect()  # the first tick takes the first GPM sample
        if extended:
            # What is measured really carries GPM values for every device.
            time.sleep(SPACING_S)
            resp = decode(stats.collect())
            gpm = [ds.stats.nested["GPM"] for g in resp.groups for ds in g.instance_stats.values()]
            assert len(gpm) == size
            assert all(o.attributes["Graphics activity"].HasField("float_numerator_val") for o in gpm)
        # More calls per device when extended: fewer rounds for the same time, and at
        # most 30 of them, as each waits out the GPM interval first.
        rounds = max(3, rounds_for(engine, latency, size) // (2 if extended else 1))
        if extended:
            measure(benchmark, stats.collect, size, min(rounds, 30), spacing=SPACING_S)
        else:
            measure(benchmark, stats.collect, size, rounds)
    finally:
        stats.close()

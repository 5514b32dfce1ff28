"""One health probe round (`health.probe_all`, as the device watch runs it every
probe_interval): 8, 56 (8 GPUs x 7 MIG), 512 and 4,096 simulated devices, with
the simulated driver at zero latency and at 50 us per call.

The round runs through a real Executor (one hand-off to its worker, each
GPU's lane held while it is read) and records into a HealthBook. Its CPU per
round divided by probe_interval (5 s by default) is the probes' share of the
plugin's idle CPU. Run: make bench, or BENCH_SIZES=8,56 for a quick run.
"""

from __future__ import annotations

import time
from operator import attrgetter

import pytest
from conftest import SIZES, pick

from nomad_device_nvidia.nvidia import fingerprint as fp
from nomad_device_nvidia.nvidia.nvml.executor import Executor, direct
from nomad_device_nvidia.nvidia.health.book import HealthBook
from nomad_device_nvidia.nvidia.fingerprint import physical_devices
from nomad_device_nvidia.nvidia.health.probes import probe_all

# The bench scenarios: GPUs 0-7 have 7 MIG instances each, the rest are whole GPUs.
_MIG_GPUS = 8
# Rough seconds per device per round, to keep each benchmark near a few seconds.
_COST = {"0us": 4e-5, "50us": 3e-4}


def devices_of_size(size: int) -> list[fp.GpuDevice]:
    """conftest.pick's devices of this size; only the GPUs it can choose from are scanned."""
    whole = size if size <= 8 else max(0, size - 7 * _MIG_GPUS)
    devices = [dev for i in range(_MIG_GPUS + whole) for dev in fp.scan_gpu(direct, i, []).devices]
    return pick(devices, size, attrgetter("id"))


@pytest.mark.parametrize("size", SIZES)
def test_probe_round(benchmark: object, machine: tuple[str, object], size: int) -> None:
    latency, _ = machine
    devices = devices_of_size(size)
    assert len(devices) == size
    changes: list[None] = []
    book = HealthBook(lambda: changes.append(None))
    runner = Executor(timeout=10.0, max_workers=2, name="bench")
    benchmark.group = f"probe round {latency} {size} devices"  # type: ignore[attr-defined]
    try:
        assert probe_all(runner, devices, book) == set()  # warm up; every device answers
        rounds = max(3, min(100, int(2.0 / (_COST[latency] * size))))
        cpu0 = time.process_time()
        benchmark.pedantic(probe_all, args=(runner, devices, book), rounds=rounds,  # type: ignore[attr-defined]
                           iterations=1)
        cpu = time.process_time() - cpu0
    finally:
        runner.close()
    assert all(book.status(d.id) == (True, "") for d in devices) and not changes
    extra = benchmark.extra_info  # type: ignore[attr-defined]
    extra.update(latency=latency, devices=size, gpus=len(physical_devices(devices)), rounds=rounds)
    # Process CPU (the runner's worker and the simulated driver included).
    extra["cpu_per_round_s"] = cpu / rounds
    extra["idle_ms_per_s_at_5s"] = cpu / rounds / 5.0 * 1000

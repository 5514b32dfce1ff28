"""Shared setup for the stats benchmarks: the simulated driver on a bench
scenario, and the device sets of each size.

Sizes come from BENCH_SIZES (comma-separated, default "8,56,512,4096");
CI runs the small ones: BENCH_SIZES=8,56.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from operator import attrgetter
from pathlib import Path
from typing import TypeVar

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

from stats_sim import nvml_session, tracked_devices  # noqa: E402

from nomad_device_nvidia.nvidia.stats.contract import TrackedDevice  # noqa: E402

D = TypeVar("D")
SIZES = [int(s) for s in os.environ.get("BENCH_SIZES", "8,56,512,4096").split(",") if s.strip()]
SCENARIOS = {"0us": HERE / "scenarios" / "bench-zero.toml", "50us": HERE / "scenarios" / "bench-50us.toml"}


def pick(devices: list[D], size: int, device_id: Callable[[D], str] = attrgetter("device_id")) -> list[D]:
    """8 -> 8 whole GPUs; 56 -> the 8 x 7 MIG instances; larger -> the MIG
    instances plus whole GPUs up to the size. `device_id` reads a device's ID."""
    mig = [d for d in devices if device_id(d).startswith("MIG-")]
    whole = [d for d in devices if not device_id(d).startswith("MIG-")]
    if size <= 8:
        return whole[:size]
    if size <= len(mig):
        return mig[:size]
    return mig + whole[: size - len(mig)]


@pytest.fixture(scope="module", params=list(SCENARIOS))
def machine(request: pytest.FixtureRequest) -> Iterator[tuple[str, list[TrackedDevice]]]:
    with nvml_session(SCENARIOS[request.param]):
        yield request.param, tracked_devices()

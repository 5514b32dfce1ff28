"""Helpers for the stats tests and benches: the simulated libnvidia-ml.so.1,
scenario sessions, the tracked set as the fingerprint would build it, and
decoding an engine's bytes for comparison."""

from __future__ import annotations

import ctypes
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pynvml

from nomad_device_nvidia._proto.nomad import device_pb2
from nomad_device_nvidia.nvidia.stats.choose import EngineOptions, StatsEngine, make_stats_engine
from nomad_device_nvidia.nvidia.stats.contract import TrackedDevice

REPO = Path(__file__).resolve().parent.parent
SIM_LIB = Path(os.environ.get("NOMAD_DEVICE_NVIDIA_SIM_LIB", REPO / "build" / "sim" / "libnvidia-ml.so.1"))

# Three H100s: GPUs 0 and 1 whole, GPU 2 in MIG mode with three instances.
MIXED_GPUS = """[[gpus]]
model = "h100-sxm5-80gb"
count = 2
[[gpus]]
model = "h100-sxm5-80gb"
count = 1
mig = ["3g.40gb", "2g.20gb", "1g.10gb"]
"""
MIXED = 'name = "stats-mixed"\n' + MIXED_GPUS

# XIDs for MIXED_GPUS, due a while after the engines' first tick registered the GPUs
# (nvml.h records no event from before the registration): 79 and 48 on GPU 0, 13 on
# GPU 2 (in MIG mode).
XID_EVENTS = """[[events]]
gpu = 0
at_s = 3.0
xid = 79
[[events]]
gpu = 0
at_s = 3.0
xid = 48
[[events]]
gpu = 2
at_s = 3.0
xid = 13
"""


def write(tmp_path: Path, text: str, name: str = "scenario.toml") -> Path:
    """The scenario `text` as a file in `tmp_path`."""
    p = tmp_path / name
    p.write_text(text)
    return p


_loaded: list[ctypes.CDLL] = []


def load_sim() -> None:
    """Loads the simulated library once, before pynvml or Rust open NVML, so
    both resolve libnvidia-ml.so.1 to it (same SONAME)."""
    if _loaded:
        return
    if not SIM_LIB.is_file():
        raise RuntimeError(f"simulated NVML not built: {SIM_LIB} is missing (run `make sim`)")
    # A private copy: `make sim` rewrites build/sim in place, and a mapped
    # library rewritten under a running process crashes it (SIGBUS).
    # Once loaded, later opens resolve by SONAME, so the copy can go.
    tmp = Path(tempfile.mkdtemp(prefix="nvml-sim-"))
    try:
        copy = tmp / "libnvidia-ml.so.1"
        shutil.copyfile(SIM_LIB, copy)
        _loaded.append(ctypes.CDLL(str(copy), mode=ctypes.RTLD_GLOBAL))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@contextmanager
def nvml_session(scenario: Path) -> Iterator[None]:
    """NVML initialised on `scenario`. The simulator reads the file at the
    first nvmlInit, so every engine in the block must be closed at its end."""
    load_sim()
    os.environ["NVML_SIM_SCENARIO"] = str(scenario)
    pynvml.nvmlInit()
    try:
        yield
    finally:
        pynvml.nvmlShutdown()


def tracked_devices() -> list[TrackedDevice]:
    """GPUs, or their MIG instances when MIG is on; grouped by device name."""
    out: list[TrackedDevice] = []
    for i in range(pynvml.nvmlDeviceGetCount()):
        gpu = pynvml.nvmlDeviceGetHandleByIndex(i)
        try:
            mig_on = pynvml.nvmlDeviceGetMigMode(gpu)[0] == pynvml.NVML_DEVICE_MIG_ENABLE
        except pynvml.NVMLError:
            mig_on = False
        if not mig_on:
            uuid = pynvml.nvmlDeviceGetUUID(gpu)
            out.append(TrackedDevice(uuid, uuid, pynvml.nvmlDeviceGetName(gpu)))
            continue
        for j in range(pynvml.nvmlDeviceGetMaxMigDeviceCount(gpu)):
            try:
                mig = pynvml.nvmlDeviceGetMigDeviceHandleByIndex(gpu, j)
            except pynvml.NVMLError:
                continue
            uuid = pynvml.nvmlDeviceGetUUID(mig)
            out.append(TrackedDevice(uuid, uuid, pynvml.nvmlDeviceGetName(mig)))
    return out


def decode(data: bytes, *, clear_timestamps: bool = True) -> device_pb2.StatsResponse:
    resp = device_pb2.StatsResponse.FromString(data)
    if clear_timestamps:
        for g in resp.groups:
            for ds in g.instance_stats.values():
                ds.ClearField("timestamp")
    return resp


def value_form(v: object) -> object:
    """A StatValue as a plain value: "N/A", an int, a float, or (num, den)."""
    if v.HasField("string_val"):  # type: ignore[attr-defined]
        return v.string_val.value  # type: ignore[attr-defined]
    if v.HasField("float_numerator_val"):  # type: ignore[attr-defined]
        return v.float_numerator_val.value  # type: ignore[attr-defined]
    if v.HasField("int_denominator_val"):  # type: ignore[attr-defined]
        return (v.int_numerator_val.value, v.int_denominator_val.value)  # type: ignore[attr-defined]
    return v.int_numerator_val.value  # type: ignore[attr-defined]


# The tick deadline of tests that compare values: one a hang misses, not a loaded machine
# (ten test workers on two cores), where a 1 s deadline turns a device's values into N/A.
PATIENT_S = 30.0
PATIENT = EngineOptions(timeout=PATIENT_S)


def patient_engine(kind: str = "native", extended: bool = False) -> StatsEngine:
    """make_stats_engine with the PATIENT_S tick deadline."""
    return make_stats_engine(kind, extended, options=PATIENT)


@contextmanager
def tracking(
    kind: str, devices: list[TrackedDevice], extended: bool = False, *, options: EngineOptions | None = None
) -> Iterator[StatsEngine]:
    """A new engine of `kind` (make_stats_engine's arguments) tracking `devices`, closed on leaving."""
    engine = make_stats_engine(kind, extended, options=options or PATIENT)
    try:
        engine.track(devices)
        yield engine
    finally:
        engine.close()

"""Differential test: the native engine and the pure-Python reference engine
decode to the same StatsResponse (timestamps aside) over generated simulated
scenarios, faults and XID events, GPM stats included (GPUs with and without
GPM, MIG instances, GPM calls that fail).

The simulator's values are a pure function of the scenario and of how many
times each metric was read, so each engine gets its own fresh copy of the
same scenario (same name = same UUIDs; another path = fresh counters) and
both see the same sequence of values.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from stats_sim import PATIENT_S, decode, nvml_session, tracked_devices

from nomad_device_nvidia._proto.nomad import device_pb2
from nomad_device_nvidia.nvidia.fingerprint import host_memory
from nomad_device_nvidia.nvidia.grouping import share_ids
from nomad_device_nvidia.nvidia.stats.contract import EngineOptions, TrackedDevice
from nomad_device_nvidia.nvidia.stats.native import NativeStatsEngine
from nomad_device_nvidia.nvidia.stats.python import PythonStatsEngine

MODELS = ["h100-sxm5-80gb", "a100-sxm4-40gb", "a100-sxm4-80gb", "gh200-96gb", "l4", "gb200"]
MIG_LAYOUTS = {
    "gb200": [["3g.93gb", "2g.46gb", "1g.23gb", "1g.23gb"], ["7g.186gb"]],
    "h100-sxm5-80gb": [["1g.10gb"] * 7, ["3g.40gb", "2g.20gb", "1g.10gb"], ["7g.80gb"], []],
    "a100-sxm4-80gb": [["3g.40gb", "3g.40gb"], ["1g.10gb", "2g.20gb"]],
    "a100-sxm4-40gb": [["1g.5gb"] * 7, ["4g.20gb"]],
}
# Functions the engines call, to make unsupported one GPU at a time.
FUNCTIONS = [
    "nvmlDeviceGetMemoryInfo",
    "nvmlDeviceGetUtilizationRates",
    "nvmlDeviceGetEncoderUtilization",
    "nvmlDeviceGetDecoderUtilization",
    "nvmlDeviceGetTemperature",
    "nvmlDeviceGetPowerUsage",
    "nvmlDeviceGetPowerManagementLimit",
    "nvmlDeviceGetBAR1MemoryInfo",
    "nvmlDeviceGetDetailedEccErrors",
    "nvmlDeviceGetFieldValues",
    "nvmlDeviceGetClockInfo",
    "nvmlDeviceGetPcieThroughput",
    "nvmlDeviceGetCurrentClocksEventReasons",
    "nvmlDeviceGetTotalEnergyConsumption",
    "nvmlGpmQueryDeviceSupport",
    "nvmlGpmSampleGet",
    "nvmlGpmMigSampleGet",
    "nvmlGpmMetricsGet",
]
FIELDS = [7, 9, 11, 83]
GENERATORS = [
    'kind = "random"\nmin = 0\nmax = 100',
    'kind = "sine"\nmin = 10\nmax = 90\nperiod = 5',
    'kind = "ramp"\nmin = 0\nmax = 100\nperiod = 7',
    'kind = "counter"\nvalue = 3\nstep = 2',
]
METRICS = [
    "utilization_gpu",
    "temperature_c",
    "power_w",
    "ecc_corrected",
    "utilization_encoder",
    "clock_sm_mhz",
    "gpm_graphics_util",
    "gpm_sm_occupancy",
    "gpm_tensor_util",
    "gpm_pcie_tx_mibps",
    "gpm_nvlink_rx_mibps",
]
# Of MIG devices: their memory and their own GPM metrics.
MIG_METRICS = ["memory_used_mib", "gpm_sm_util", "gpm_dram_bw_util", "gpm_nvlink_tx_mibps"]
# Hopper and later have GPM; a group may turn it off (or on, for the others).
GPM_MODELS = {"h100-sxm5-80gb", "gh200-96gb", "gb200"}


@st.composite
def scenario(draw: st.DrawFn) -> str:
    lines = [f'name = "diff-{draw(st.integers(0, 10**6))}"']
    gpu_count = 0
    whole: list[int] = []  # indexes of GPUs not in MIG mode
    for _ in range(draw(st.integers(1, 2))):
        model = draw(st.sampled_from(MODELS))
        count = draw(st.integers(1, 3))
        lines += ["[[gpus]]", f'model = "{model}"', f"count = {count}"]
        if draw(st.integers(0, 4)) == 0:
            lines.append(f"gpm = {'false' if model in GPM_MODELS else 'true'}")
        if model in MIG_LAYOUTS and draw(st.booleans()):
            layout = draw(st.sampled_from(MIG_LAYOUTS[model]))
            lines.append("mig = [" + ", ".join(f'"{p}"' for p in layout) + "]")
            for metric in draw(st.lists(st.sampled_from(MIG_METRICS), max_size=2, unique=True)):
                gen = draw(st.sampled_from(GENERATORS)).replace("\n", ", ")
                lines.append(f"mig_stats.{metric} = {{ {gen} }}")
        else:
            whole += range(gpu_count, gpu_count + count)
        for metric in draw(st.lists(st.sampled_from(METRICS), max_size=4, unique=True)):
            gen = draw(st.sampled_from(GENERATORS)).replace("\n", ", ")
            lines.append(f"stats.{metric} = {{ {gen} }}")
        gpu_count += count
    for _ in range(draw(st.integers(0, 2))):
        gpu = draw(st.integers(0, gpu_count - 1))
        lines += ["[[faults]]", 'kind = "not_supported"', f"gpu = {gpu}"]
        funcs = draw(st.lists(st.sampled_from(FUNCTIONS), max_size=3, unique=True))
        fields = draw(st.lists(st.sampled_from(FIELDS), max_size=2, unique=True))
        if not funcs and not fields:
            funcs = [FUNCTIONS[0]]
        lines.append("functions = [" + ", ".join(f'"{f}"' for f in funcs) + "]")
        lines.append(f"fields = {fields}")
    if whole and draw(st.booleans()):
        # A GPU that falls off the bus after some calls. Calls are counted per
        # GPU, so only whole GPUs (one reader each, calls in one order in both
        # engines), and after the enumeration's few calls.
        gpu = draw(st.sampled_from(whole))
        lines += ["[[faults]]", 'kind = "lost"', f"gpu = {gpu}", f"after_calls = {draw(st.integers(8, 40))}"]
    for _ in range(draw(st.integers(0, 3))):
        # Events due at 0 s, before either engine registers its GPUs: nvml.h
        # records none of them, so both engines must count 0 whatever the timing
        # (XIDs that are counted: tests/test_sim_strict.py, test_stats_engines.py).
        kind = draw(st.sampled_from(["xid", "xid", "pstate"]))
        gpu = draw(st.integers(0, gpu_count - 1))
        lines += ["[[events]]", f"gpu = {gpu}", "at_s = 0.0", f'type = "{kind}"', f"xid = {draw(st.integers(1, 150))}"]
    return "\n".join(lines) + "\n"


def run(
    engine_kind: str, path: Path, extended: bool, batched: bool, ticks: int, shares: int
) -> list[device_pb2.StatsResponse]:
    # A read that missed a short deadline would read N/A in one engine only (stats_sim.PATIENT_S).
    opts = EngineOptions(extended=extended, batched=batched, timeout=PATIENT_S)
    with nvml_session(path):
        # With sharing, every device is tracked under `shares` IDs (one read each tick).
        devices = [TrackedDevice(s, d.uuid, d.group) for d in tracked_devices() for s in share_ids(d.device_id, shares)]
        engine = NativeStatsEngine(opts) if engine_kind == "native" else PythonStatsEngine(opts)
        try:
            engine.track(devices)
            return [strip_time_based(decode(engine.collect())) for _ in range(ticks)]
        finally:
            engine.close()


HOST_MIB = host_memory().total // 2**20


def strip_time_based(resp: device_pb2.StatsResponse) -> device_pb2.StatsResponse:
    """Energy grows with wall-clock time in the simulator, and a GPU without memory
    info shows the host's memory, whose use moves: keep only their form."""
    for g in resp.groups:
        for ds in g.instance_stats.values():
            for mem in (ds.stats.attributes["Memory state"], ds.summary):
                if mem.int_denominator_val.value == HOST_MIB:
                    mem.int_numerator_val.value = 1
            energy = ds.stats.nested.get("Energy")
            if energy is not None:
                for v in energy.attributes.values():
                    if v.HasField("int_numerator_val"):
                        v.int_numerator_val.value = 1
    return resp


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=scenario(), extended=st.booleans(), batched=st.booleans(), ticks=st.integers(1, 3), shares=st.integers(1, 3))
def test_native_matches_python(text: str, extended: bool, batched: bool, ticks: int, shares: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        # Same scenario text, two files: the simulator keeps per-file state.
        a, b = Path(tmp, "a.toml"), Path(tmp, "b.toml")
        a.write_text(text)
        b.write_text(text)
        python = run("python", a, extended, batched, ticks, shares)
        native = run("native", b, extended, batched, ticks, shares)
    assert len(python) == len(native) == ticks
    for p, n in zip(python, native):
        assert [g.name for g in n.groups] == [g.name for g in p.groups]
        assert n == p

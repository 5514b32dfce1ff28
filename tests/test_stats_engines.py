"""Both stats engines on the simulated driver: the Go plugin's stats vocabulary,
values as NVML reports them, N/A on faults, a hung GPU, engine selection."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pynvml
import pytest
import sim_branches
from stats_sim import MIXED, XID_EVENTS, decode, nvml_session, patient_engine, tracked_devices, tracking, value_form, write

from nomad_device_nvidia.nvidia.stats import vocabulary as stats_vocabulary
from nomad_device_nvidia.nvidia.config import MAX_SHARES
from nomad_device_nvidia.nvidia.grouping import share_ids
from nomad_device_nvidia.nvidia.stats.choose import EngineOptions, StatsEngine, TrackedDevice, make_stats_engine
from nomad_device_nvidia.nvidia.stats.native import NativeStatsEngine
from nomad_device_nvidia.nvidia.stats.python import GPM_MIN_INTERVAL, PythonStatsEngine

STANDARD = {s.name: s for s in stats_vocabulary.STANDARD}



@pytest.fixture
def mixed(tmp_path: Path) -> Iterator[list[TrackedDevice]]:
    with nvml_session(write(tmp_path, MIXED)):
        yield tracked_devices()


@pytest.mark.parametrize("kind", ["native", "python"])
def test_stats_follow_the_go_plugin_and_nvml(mixed: list[TrackedDevice], kind: str) -> None:
    with tracking(kind, mixed) as engine:
        assert isinstance(engine, NativeStatsEngine if kind == "native" else PythonStatsEngine)
        resp = decode(engine.collect(), clear_timestamps=False)
    groups = {g.name: g for g in resp.groups}
    assert set(groups) == {d.group for d in mixed}
    assert [g.name for g in resp.groups] == sorted(groups)
    seen = set()
    for d in mixed:
        g = groups[d.group]
        assert (g.vendor, g.type) == ("nvidia", "gpu")
        ds = g.instance_stats[d.device_id]
        seen.add(d.device_id)
        attrs = ds.stats.attributes
        assert set(attrs) == set(STANDARD)
        for name, v in attrs.items():
            assert (v.unit, v.desc) == (STANDARD[name].unit, STANDARD[name].desc), name
        assert ds.summary == attrs["Memory state"]
        assert ds.timestamp.seconds > 0
        h = pynvml.nvmlDeviceGetHandleByUUID(d.uuid)
        mem = pynvml.nvmlDeviceGetMemoryInfo(h)
        used, total = value_form(attrs["Memory state"])  # type: ignore[misc]
        assert total == mem.total // 2**20
        assert 0 <= used <= total
        assert not ds.stats.nested
    assert seen == {d.device_id for d in mixed}
    # MIG instances report their own memory, smaller than a whole GPU's.
    mig = [d for d in mixed if "MIG" in d.device_id]
    full = [d for d in mixed if "MIG" not in d.device_id]
    assert len(mig) == 3 and len(full) == 2
    mig_totals = {value_form(groups[d.group].instance_stats[d.device_id].stats.attributes["Memory state"])[1] for d in mig}  # type: ignore[index]
    assert max(mig_totals) < 81559  # type: ignore[operator]


def test_full_gpu_values(mixed: list[TrackedDevice]) -> None:
    with tracking("native", mixed) as engine:
        resp = decode(engine.collect())
    d = next(d for d in mixed if "MIG" not in d.device_id)
    attrs = next(g for g in resp.groups if g.name == d.group).instance_stats[d.device_id].stats.attributes
    h = pynvml.nvmlDeviceGetHandleByUUID(d.uuid)
    limit_w = pynvml.nvmlDeviceGetPowerManagementLimit(h) // 1000
    power = value_form(attrs["Power usage"])
    assert isinstance(power, tuple) and power[1] == limit_w and 0 <= power[0] <= limit_w
    for name in ("GPU utilization", "Memory utilization", "Encoder utilization", "Decoder utilization"):
        assert 0 <= value_form(attrs[name]) <= 100, name  # type: ignore[operator]
    assert isinstance(value_form(attrs["Temperature"]), int)
    bar1 = pynvml.nvmlDeviceGetBAR1MemoryInfo(h)
    assert value_form(attrs["BAR1 buffer state"])[1] == bar1.bar1Total // 2**20  # type: ignore[index]
    for name in ("ECC L1 errors", "ECC L2 errors", "ECC memory errors"):
        assert isinstance(value_form(attrs[name]), int), name


@pytest.mark.parametrize("kind", ["native", "python"])
@pytest.mark.parametrize("by_options", [False, True])
def test_extended_stats_are_nested_objects(mixed: list[TrackedDevice], kind: str, by_options: bool) -> None:
    if by_options:
        engine_of = tracking(kind, mixed, options=EngineOptions(extended=True, timeout=5.0))
    else:
        engine_of = tracking(kind, mixed, extended=True)
    with engine_of as engine:
        resp = decode(engine.collect())
    for g in resp.groups:
        for ds in g.instance_stats.values():
            # H100s (and their MIG instances) have GPM.
            assert set(ds.stats.nested) == {"Clocks", "Energy", "PCIe", "Throttle", "XID", "GPM"}
            assert set(ds.stats.nested["Clocks"].attributes) == {"SM clock", "Memory clock"}
            assert ds.stats.nested["Clocks"].attributes["SM clock"].unit == "MHz"
            assert len(ds.stats.attributes) == 11


GPM_NAMES = [
    "Graphics activity",
    "SM activity",
    "SM occupancy",
    "Tensor activity",
    "DRAM bandwidth utilization",
    "PCIe TX",
    "PCIe RX",
    "NVLink TX",
    "NVLink RX",
]

GPM = """
name = "stats-gpm"
[[gpus]]                    # GPU 0: GPM, constants
model = "gb200"
stats.gpm_graphics_util = 87.5
stats.gpm_sm_util = 72.25
stats.gpm_sm_occupancy = 41.0
stats.gpm_tensor_util = 63.754
stats.gpm_dram_bw_util = 55.5
stats.gpm_pcie_tx_mibps = 1200
stats.gpm_pcie_rx_mibps = 3400
stats.gpm_nvlink_tx_mibps = 250000
stats.gpm_nvlink_rx_mibps = 245000
[[gpus]]                    # GPU 1: no GPM (Ampere)
model = "a100-sxm4-80gb"
[[gpus]]                    # GPU 2: MIG, each instance its own values
model = "gb200"
mig = ["3g.93gb", "1g.23gb"]
mig_stats.gpm_graphics_util = { kind = "counter", value = 10, step = 1 }
mig_stats.gpm_nvlink_rx_mibps = 1000
[[gpus]]                    # GPU 3: GPM whose samples fail
model = "h100-sxm5-80gb"
[[faults]]
kind = "not_supported"
gpu = 3
function = "nvmlGpmSampleGet"
"""


@pytest.mark.parametrize("kind", ["native", "python"])
def test_gpm_stats_of_gpus_and_mig_instances(tmp_path: Path, kind: str) -> None:
    with nvml_session(write(tmp_path, GPM)):
        devices = tracked_devices()
        gpus = [pynvml.nvmlDeviceGetUUID(pynvml.nvmlDeviceGetHandleByIndex(i)) for i in range(4)]
        engine = patient_engine(kind, extended=True)
        try:
            engine.track(devices)
            ticks = []
            for _ in range(4):
                # nvml.h: GPM samples more than 100 ms apart; the engines take none sooner.
                time.sleep(GPM_MIN_INTERVAL + 0.05)
                ticks.append(decode(engine.collect()))
        finally:
            engine.close()
    names = {s.name: s for s in stats_vocabulary.GPM_STATS}
    assert list(names) == GPM_NAMES
    for n, resp in enumerate(ticks):
        stats = {dev: ds for g in resp.groups for dev, ds in g.instance_stats.items()}
        assert set(stats) == {d.device_id for d in devices}
        assert "GPM" not in stats[gpus[1]].stats.nested, "a GPU without GPM sends nothing extra"
        assert set(stats[gpus[1]].stats.nested) == {"Clocks", "Energy", "PCIe", "Throttle", "XID"}
        with_gpm = [dev for dev in stats if dev != gpus[1]]
        assert len(with_gpm) == 4
        for dev in with_gpm:
            gpm = stats[dev].stats.nested["GPM"].attributes
            assert sorted(gpm) == sorted(GPM_NAMES), dev
            for name, v in gpm.items():
                assert (v.unit, v.desc) == (names[name].unit, names[name].desc)
                assert v.unit == ("%" if GPM_NAMES.index(name) < 5 else "MB/s")
            forms = {name: value_form(v) for name, v in gpm.items()}
            if n == 0 or dev == gpus[3]:
                # The first tick has no interval yet; GPU 3's samples fail.
                assert set(forms.values()) == {"N/A"}, (n, dev, forms)
                continue
            if dev == gpus[0]:
                assert forms == {
                    "Graphics activity": 87.5,
                    "SM activity": 72.25,
                    "SM occupancy": 41.0,
                    "Tensor activity": 63.75,  # two decimals
                    "DRAM bandwidth utilization": 55.5,
                    "PCIe TX": 1258,  # 1200 MiB/s in MB/s
                    "PCIe RX": 3565,
                    "NVLink TX": 262144,
                    "NVLink RX": 256901,
                }
            else:
                # A MIG instance's own values: the counter at its n+1-th sample.
                assert forms["Graphics activity"] == 10.0 + n + 1, (n, dev)
                assert forms["NVLink RX"] == 1049
                assert all(isinstance(forms[k], float) for k in GPM_NAMES[:5])
                assert all(isinstance(forms[k], int) for k in GPM_NAMES[5:])


# MIXED with XID_EVENTS, a P-state change, and an XID not due within the test.
XIDS = MIXED + XID_EVENTS + """[[events]]
gpu = 1
at_s = 3.0
type = "pstate"
[[events]]
gpu = 1
at_s = 3600.0
xid = 31
"""


def test_extended_stats_count_xids_in_both_engines(tmp_path: Path) -> None:
    """Each engine has its own event set beside the others in the process (as
    beside the health monitor's) and counts every XID once; MIG instances
    report their parent GPU's."""
    with nvml_session(write(tmp_path, XIDS)):
        devices = tracked_devices()
        gpus = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(3)]
        expected = {pynvml.nvmlDeviceGetUUID(gpus[0]): 2, pynvml.nvmlDeviceGetUUID(gpus[1]): 0}
        for j in range(3):
            expected[pynvml.nvmlDeviceGetUUID(pynvml.nvmlDeviceGetMigDeviceHandleByIndex(gpus[2], j))] = 1
        assert {d.device_id for d in devices} == set(expected)
        ghost = TrackedDevice("GPU-ghost", "GPU-00000000-0000-0000-0000-000000000000", "Ghost")
        engines = [patient_engine(kind, extended=True) for kind in ("native", "python", "native")]
        try:
            for engine in engines:
                engine.track([*devices, ghost])
                engine.collect()  # registers the GPUs on the engine's set

            def counts(engine: StatsEngine) -> dict[str, object]:
                return {
                    device_id: value_form(ds.stats.nested["XID"].attributes["XID count"])
                    for g in decode(engine.collect()).groups
                    for device_id, ds in g.instance_stats.items()
                }

            want = {**expected, "GPU-ghost": "N/A"}
            limit = time.monotonic() + 60  # only catches a hang
            while time.monotonic() < limit and any(counts(e) != want for e in engines):
                time.sleep(0.2)
            for _ in range(2):  # counts stay: no new XIDs came due
                for engine in engines:
                    assert counts(engine) == want
            plain = patient_engine("native")
            plain.track(devices)
            assert all(not ds.stats.nested for g in decode(plain.collect()).groups for ds in g.instance_stats.values())
            plain.close()
        finally:
            for engine in engines:
                engine.close()


NOT_SUPPORTED = """
name = "stats-not-supported"
[[gpus]]
model = "h100-sxm5-80gb"
count = 2
[[faults]]
kind = "not_supported"
gpu = 1
functions = ["nvmlDeviceGetTemperature", "nvmlDeviceGetBAR1MemoryInfo"]
"""


@pytest.mark.parametrize("kind", ["native", "python"])
def test_what_nvml_cannot_tell_reads_na(tmp_path: Path, kind: str) -> None:
    with nvml_session(write(tmp_path, NOT_SUPPORTED)):
        devices = tracked_devices()
        with tracking(kind, devices) as engine:
            resp = decode(engine.collect())
        broken = pynvml.nvmlDeviceGetUUID(pynvml.nvmlDeviceGetHandleByIndex(1))
    (group,) = resp.groups
    for device_id, ds in group.instance_stats.items():
        a = ds.stats.attributes
        na = device_id == broken
        assert (value_form(a["Temperature"]) == "N/A") is na
        assert (value_form(a["BAR1 buffer state"]) == "N/A") is na
        assert a["Temperature"].unit == "C"
        assert value_form(a["Memory state"]) != "N/A"


def hang_scenario(duration_ms: int) -> str:
    """Three GPUs; GPU 0's first utilization call hangs for `duration_ms`."""
    return f"""
name = "stats-hang-{duration_ms}"
[[gpus]]
model = "h100-sxm5-80gb"
count = 3
[[faults]]
kind = "hang"
gpu = 0
function = "nvmlDeviceGetUtilizationRates"
duration_ms = {duration_ms}
calls = 1
"""


def wait_for(condition: Callable[[], bool], what: str, limit_s: float = 60.0) -> None:
    """Polls `condition` (a bounded wait, not a timing assertion)."""
    deadline = time.monotonic() + limit_s
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not within {limit_s} s")
        time.sleep(0.05)


def wait_for_nvml_released() -> None:
    """After the session's nvmlShutdown: waits until no engine holds NVML
    initialised (a read hung past close holds it until it returns), so the
    next test's nvmlInit loads its own scenario."""

    def released() -> bool:
        try:
            pynvml.nvmlDeviceGetCount()
        except pynvml.NVMLError_Uninitialized:
            return True
        return False

    wait_for(released, "NVML released by the engine")


def test_a_hung_gpu_reads_na_without_stalling_the_others(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="nomad_device_nvidia.nvidia.stats.native")
    # The hang far outlasts the timeout, and the timeout is far beyond a
    # healthy read even on a loaded machine: which devices read N/A does not
    # depend on scheduling.
    with nvml_session(write(tmp_path, hang_scenario(10_000))):
        devices = tracked_devices()
        hung = pynvml.nvmlDeviceGetUUID(pynvml.nvmlDeviceGetHandleByIndex(0))
        engine = NativeStatsEngine(EngineOptions(timeout=2.0, max_workers=2))
        try:
            engine.track(devices)
            ticks = [decode(engine.collect()) for _ in range(2)]
            for resp in ticks:
                (group,) = resp.groups
                for device_id, ds in group.instance_stats.items():
                    forms = {value_form(v) for v in ds.stats.attributes.values()}
                    assert (forms == {"N/A"}) is (device_id == hung), device_id
            warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
            assert len(warnings) == 1, warnings
            assert hung in warnings[0].getMessage()

            # Once the call returns the GPU answers again (the sim hangs one call).
            def answers() -> bool:
                ds = decode(engine.collect()).groups[0].instance_stats[hung]
                return value_form(ds.stats.attributes["Memory state"]) != "N/A"

            wait_for(answers, "the hung GPU answering again")
            assert any("answers again" in r.getMessage() for r in caplog.records)
        finally:
            engine.close()


def test_closing_during_a_hang_keeps_its_log(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """What the Rust engine logs while closing (a read still hung) reaches
    the logger, though the engine is gone by then."""
    caplog.set_level(logging.INFO, logger="nomad_device_nvidia.nvidia.stats.native")
    with nvml_session(write(tmp_path, hang_scenario(10_000))):
        hung = pynvml.nvmlDeviceGetUUID(pynvml.nvmlDeviceGetHandleByIndex(0))
        engine = NativeStatsEngine(EngineOptions(timeout=0.5))
        engine.track(tracked_devices())
        # A tick whose worker is not scheduled before its deadline never starts the
        # read (a loaded machine): tick until the engine reports the read as hung.
        for _ in range(20):
            engine.collect()
            if any("did not answer NVML" in r.getMessage() for r in caplog.records):
                break
        else:
            pytest.fail(f"the hung read never started: {caplog.records}")
        engine.close()
    closing = [r for r in caplog.records if "closing while" in r.getMessage()]
    assert len(closing) == 1 and hung in closing[0].getMessage(), caplog.records
    assert closing[0].levelno == logging.WARNING
    wait_for_nvml_released()


SHARED = """
name = "stats-shared"
[[gpus]]
model = "h100-sxm5-80gb"
count = 2
# A counter advances once per read: a GPU read once per tick shows +1 per tick.
stats.temperature_c = { kind = "counter", value = 30, step = 1 }
"""


@pytest.mark.parametrize("kind", ["native", "python"])
def test_shares_of_a_gpu_are_read_once(tmp_path: Path, kind: str) -> None:
    with nvml_session(write(tmp_path, SHARED)):
        shared, single = tracked_devices()
        shares = [TrackedDevice(sid, shared.uuid, shared.group) for sid in share_ids(shared.device_id, MAX_SHARES)]
        with tracking(kind, [*shares, single]) as engine:
            ticks = [decode(engine.collect()) for _ in range(3)]
    temperatures = []
    for resp in ticks:
        (group,) = resp.groups
        assert set(group.instance_stats) == {d.device_id for d in [*shares, single]}
        first = group.instance_stats[shares[0].device_id]
        for d in shares:
            assert group.instance_stats[d.device_id] == first, d.device_id
        temperature = value_form(first.stats.attributes["Temperature"])
        # The unshared GPU, read once per tick, has the same counter.
        assert temperature == value_form(group.instance_stats[single.device_id].stats.attributes["Temperature"])
        temperatures.append(temperature)
    assert isinstance(temperatures[0], int)
    assert temperatures == [temperatures[0] + t for t in range(3)]


def test_track_replaces_the_set(mixed: list[TrackedDevice]) -> None:
    engine = patient_engine("native")
    try:
        engine.track(mixed)
        assert sum(len(g.instance_stats) for g in decode(engine.collect()).groups) == len(mixed)
        engine.track(mixed[:1] + mixed[:1])
        (group,) = decode(engine.collect()).groups
        assert list(group.instance_stats) == [mixed[0].device_id]
        engine.track([])
        assert engine.collect() == b""
    finally:
        engine.close()


def test_unknown_uuid_reads_na_and_warns(mixed: list[TrackedDevice], caplog: pytest.LogCaptureFixture) -> None:
    ghost = TrackedDevice("GPU-ghost", "GPU-00000000-0000-0000-0000-000000000000", "Ghost")
    for kind in ("native", "python"):
        caplog.clear()
        engine = patient_engine(kind)
        try:
            engine.track([ghost])
            for _ in range(2):
                (group,) = decode(engine.collect()).groups
                assert {value_form(v) for v in group.instance_stats["GPU-ghost"].stats.attributes.values()} == {"N/A"}
        finally:
            engine.close()
        assert len([r for r in caplog.records if "GPU-ghost" in r.getMessage()]) == 1, kind


def test_closed_native_engine_says_so(mixed: list[TrackedDevice]) -> None:
    engine = NativeStatsEngine()
    engine.close()
    engine.close()
    with pytest.raises(RuntimeError, match="closed"):
        engine.collect()


def test_engine_choice(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, mixed: list[TrackedDevice]) -> None:
    with pytest.raises(ValueError, match="'fast'"):
        make_stats_engine("fast")
    monkeypatch.setitem(sys.modules, "nomad_device_nvidia.nvidia.stats.native", None)
    engine = make_stats_engine("native")
    assert isinstance(engine, PythonStatsEngine)
    assert any(r.levelno == logging.WARNING and "python engine" in r.getMessage() for r in caplog.records)


def test_native_engine_reports_a_missing_library() -> None:
    with pytest.raises(RuntimeError, match="cannot load NVML.*no-such-lib"):
        NativeStatsEngine(EngineOptions(library="/nonexistent/no-such-lib.so"))


def _key(name: str) -> bytes:
    """A map entry's key as encoded (field 1, length, text): where a stat or topic starts."""
    return b"\x0a" + bytes([len(name)]) + name.encode()


def test_native_bytes_follow_the_vocabulary_table(tmp_path: Path) -> None:
    # One H100: the nested topics (in the table's order, GPM last), then the
    # standard stats in the table's order, as the Rust code generated from
    # stats/vocabulary.json writes them. (The python engine's map order is
    # protobuf's own; the other tests compare its contents.)
    with nvml_session(write(tmp_path, 'name = "stats-order"\n[[gpus]]\nmodel = "h100-sxm5-80gb"\n')):
        engine = patient_engine("native", extended=True)
        try:
            engine.track(tracked_devices())
            engine.collect()  # the first GPM tick has no interval; the second has every stat
            data = engine.collect()
        finally:
            engine.close()
    names: list[str] = []
    for topic, stats in stats_vocabulary.EXTENDED:
        names += [topic, *(s.name for s in stats)]
    names += [stats_vocabulary.GPM, *(s.name for s in stats_vocabulary.GPM_STATS)]
    names += [s.name for s in stats_vocabulary.STANDARD]
    at = [data.find(_key(n)) for n in names]
    assert -1 not in at, [n for n, i in zip(names, at) if i < 0]
    assert at == sorted(at), [n for n, _ in sorted(zip(names, at), key=lambda p: p[1])]
    (ds,) = decode(data).groups[0].instance_stats.values()
    assert ds.summary == ds.stats.attributes[stats_vocabulary.SUMMARY.name]


def test_the_engines_do_not_import_their_chooser() -> None:
    # stats_engine picks an engine and imports both; they import only the shared
    # contract (stats.contract) and the vocabulary, so there is no import cycle.
    code = (
        "import sys\n"
        "import nomad_device_nvidia.nvidia.stats.python, nomad_device_nvidia.nvidia.stats.native\n"
        "print('nomad_device_nvidia.nvidia.stats.choose' in sys.modules)\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "False"


def test_docs_show_every_stat_of_the_table() -> None:
    # docs/stats.md renders the table for operators: a row per stat, as sent.
    doc = (Path(__file__).resolve().parent.parent / "docs" / "stats.md").read_text()
    rows = [f"| {s.name} | {s.unit} | {s.desc} |" for s in stats_vocabulary.STANDARD]
    rows += [f"| {t} | {s.name} | {s.unit} | {s.desc} |" for t, stats in stats_vocabulary.EXTENDED for s in stats]
    rows += [f"| {s.name} | {s.unit} | {s.desc} | `{s.nvml_metric}` |" for s in stats_vocabulary.GPM_STATS]
    missing = [r for r in rows if r not in doc]
    assert not missing, f"docs/stats.md lacks rows for {missing}"


# Eight GPUs (two in MIG mode) whose every metric is constant, so two processes read the same values.
EIGHT_CONSTANT = """
name = "stats-branches"
[topology]
numa_nodes = 2
[[gpus]]
model = "h100-sxm5-80gb"
count = 6
[gpus.stats]
utilization_gpu = 61
utilization_memory = 37
utilization_encoder = 5
utilization_decoder = 7
temperature_c = 54
memory_temperature_c = 61
power_w = 412
memory_used_mib = 30000
bar1_used_mib = 1024
ecc_corrected = 3
ecc_uncorrected = 0
[[gpus]]
model = "h100-sxm5-80gb"
count = 2
mig = ["3g.40gb", "2g.20gb", "1g.10gb"]
[gpus.stats]
utilization_gpu = 40
temperature_c = 49
power_w = 300
[gpus.mig_stats]
memory_used_mib = 4096
"""

# Run in a child: the test process has the library with every function loaded, and a
# process holds one libnvidia-ml.so.1.
STATS_AT_BRANCH = """
import json, sys
from pathlib import Path
from stats_sim import decode, nvml_session, patient_engine, tracked_devices
out = {}
with nvml_session(Path(sys.argv[1])):
    devices = tracked_devices()
    for kind in ("native", "python"):
        engine = patient_engine(kind)
        try:
            engine.track(devices)
            out[kind] = str(decode(engine.collect()))
        finally:
            engine.close()
print(json.dumps(out))
"""


def test_both_engines_read_the_same_stats_at_driver_535_as_at_the_newest_branch(tmp_path: Path) -> None:
    seen = {}
    for branch in (sim_branches.OLDEST, sim_branches.NEWEST):
        scenario = write(tmp_path, sim_branches.at_branch(EIGHT_CONSTANT, branch), f"{branch}.toml")
        env = {**os.environ, "NOMAD_DEVICE_NVIDIA_SIM_LIB": str(sim_branches.library(branch))}
        env.pop("NVML_SIM_SCENARIO", None)
        proc = subprocess.run([sys.executable, "-c", STATS_AT_BRANCH, str(scenario)], capture_output=True, text=True,
                              env=env, cwd=Path(__file__).parent, timeout=120)
        assert proc.returncode == 0, proc.stderr[-4000:]
        seen[branch] = json.loads(proc.stdout)
    for kind in ("native", "python"):
        at_535 = seen[sim_branches.OLDEST][kind]
        assert at_535 == seen[sim_branches.NEWEST][kind], kind
        # 6 whole GPUs and 6 MIG instances; the GPUs' constant power read as set.
        assert at_535.count("instance_stats {") == 12, at_535
        assert at_535.count("value: 412\n") == 6, at_535

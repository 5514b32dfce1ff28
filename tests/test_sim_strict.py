"""The plugin against the simulated driver answering as nvml.h documents, with each
answer the header allows where it allows two (the scenario's `[choices]`, see
docs/simulated-driver.md): utilization on a MIG-enabled GPU, events only from their
registration on, early event-wait timeouts, what a whole GPU answers when asked for its
MIG parent, invalid event masks, and GPM samples closer than the driver's refresh."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pynvml
import pytest
from stats_sim import MIXED_GPUS, XID_EVENTS, decode, nvml_session, patient_engine, tracked_devices, tracking, value_form, write
from test_nvidia_sim import devices, scenario, stream

from nomad_device_nvidia.nvidia.stats.choose import TrackedDevice
from nomad_device_nvidia.nvidia.stats.python import GPM_MIN_INTERVAL

UTILIZATION = ("GPU utilization", "Memory utilization", "Encoder utilization", "Decoder utilization")

# Where nvml.h allows two answers: each test runs with each.
EARLY_TIMEOUTS = ["", "event_wait_early_timeout_every = 2\n"]
NOT_A_MIG_DEVICE = ['not_a_mig_device = "INVALID_ARGUMENT"\n', 'not_a_mig_device = "NOT_SUPPORTED"\n']
GPM_CLOSE = ['gpm_close_samples = "zero"\n', 'gpm_close_samples = "error"\n']


def by_device(data: bytes) -> dict[str, Any]:
    return {dev: ds for g in decode(data).groups for dev, ds in g.instance_stats.items()}


def test_a_mig_enabled_gpu_tracked_whole_reads_na_for_utilization_in_both_engines(tmp_path: Path) -> None:
    """MIG mode turned on since the last fingerprint: the engines still track the GPU
    whole. nvml.h: its utilization, encoder and decoder reads are not supported."""
    text = """name = "strict-mig-parent"
[[gpus]]
model = "h100-sxm5-80gb"
[[gpus]]
model = "h100-sxm5-80gb"
mig = ["3g.40gb"]
"""
    with nvml_session(write(tmp_path, text)):
        plain, parent = (pynvml.nvmlDeviceGetUUID(pynvml.nvmlDeviceGetHandleByIndex(i)) for i in range(2))
        tracked = [TrackedDevice(u, u, "H100") for u in (plain, parent)]
        sent = {}
        for kind in ("native", "python"):
            with tracking(kind, tracked) as engine:
                stats = by_device(engine.collect())
            sent[kind] = {dev: {n: value_form(v) for n, v in ds.stats.attributes.items()} for dev, ds in stats.items()}
    for kind, got in sent.items():
        for name in UTILIZATION:
            assert got[parent][name] == "N/A", (kind, name)
            assert isinstance(got[plain][name], int), (kind, name)
        # The rest of the MIG-enabled GPU is read as usual.
        assert isinstance(got[parent]["Temperature"], int), kind
        assert isinstance(got[parent]["Memory state"], tuple), kind
    # Both engines send N/A for the same stats.
    forms = {kind: {dev: {n for n, v in attrs.items() if v == "N/A"} for dev, attrs in got.items()} for kind, got in sent.items()}
    assert forms["native"] == forms["python"]


@pytest.mark.parametrize("early", EARLY_TIMEOUTS, ids=["waits-run-out", "early-timeouts"])
@pytest.mark.parametrize("not_mig", NOT_A_MIG_DEVICE, ids=["invalid-argument", "not-supported"])
def test_both_engines_count_xids_whatever_the_driver_answers(tmp_path: Path, early: str, not_mig: str) -> None:
    """XIDs due after the engines registered are counted once per set, a MIG instance
    counting its GPU's, whichever answer a whole GPU gives for its MIG parent and
    whether waits return early."""
    text = f'name = "strict-xids"\n[choices]\n{early}{not_mig}' + MIXED_GPUS + XID_EVENTS
    with nvml_session(write(tmp_path, text)):
        tracked = tracked_devices()
        gpus = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(3)]
        expected = {pynvml.nvmlDeviceGetUUID(gpus[0]): 2, pynvml.nvmlDeviceGetUUID(gpus[1]): 0}
        for j in range(3):  # GPU 2's MIG instances
            expected[pynvml.nvmlDeviceGetUUID(pynvml.nvmlDeviceGetMigDeviceHandleByIndex(gpus[2], j))] = 1
        engines = {kind: patient_engine(kind, extended=True) for kind in ("native", "python")}
        got: dict[str, dict[str, object]] = {}
        try:
            for engine in engines.values():
                engine.track(tracked)
                engine.collect()  # registers every GPU on the engine's set
            limit = time.monotonic() + 60  # only catches a hang
            while time.monotonic() < limit:
                for kind, engine in engines.items():
                    got[kind] = {
                        dev: value_form(ds.stats.nested["XID"].attributes["XID count"])
                        for dev, ds in by_device(engine.collect()).items()
                    }
                if all(g == expected for g in got.values()):
                    break
                time.sleep(0.2)
        finally:
            for engine in engines.values():
                engine.close()
    assert got["native"] == expected
    assert got["python"] == expected


@pytest.mark.parametrize("close", GPM_CLOSE, ids=["zeros", "error"])
@pytest.mark.parametrize("kind", ["native", "python"])
def test_gpm_ticks_closer_than_the_refresh_take_no_sample(tmp_path: Path, kind: str, close: str) -> None:
    """A tick right after another (two Stats streams) sends the last interval's GPM
    values again, never what two reads of one driver snapshot give (zeros, or an
    error); ticks at least 100 ms apart take a sample each."""
    text = f"""name = "strict-gpm"
[choices]
{close}
[[gpus]]
model = "h100-sxm5-80gb"
stats.gpm_graphics_util = {{ kind = "counter", value = 10, step = 1 }}
"""
    with nvml_session(write(tmp_path, text)):
        tracked = tracked_devices()
        dev = tracked[0].device_id
        engine = patient_engine(kind, extended=True)

        def graphics() -> object:
            return value_form(by_device(engine.collect())[dev].stats.nested["GPM"].attributes["Graphics activity"])

        try:
            engine.track(tracked)
            assert graphics() == "N/A"  # sample 1: no interval yet
            time.sleep(GPM_MIN_INTERVAL + 0.05)
            first = graphics()  # sample 2
            again = graphics()  # at once: no new sample (or, on a slow machine, sample 3)
            time.sleep(GPM_MIN_INTERVAL + 0.05)
            later = graphics()
        finally:
            engine.close()
    assert first == 12.0
    assert again in (12.0, 13.0), again
    assert isinstance(again, float) and later == again + 1


@pytest.mark.parametrize("early", EARLY_TIMEOUTS, ids=["waits-run-out", "early-timeouts"])
def test_health_sees_xids_with_early_timeouts_and_on_a_gpu_without_ecc(tmp_path: Path, early: str) -> None:
    """The event watcher marks XIDs whether waits run their time or return early, also
    on a GPU without ECC (which records no ECC events: nvml.h registers none of a mask
    with a type the GPU lacks, so the watcher registers what the GPU has)."""
    path = scenario(
        tmp_path,
        f"""
        [choices]
        {early}
        [[gpus]]
        model = "h100-sxm5-80gb"
        [[gpus]]
        model = "h100-sxm5-80gb"
        ecc = false

        [[events]]
        gpu = 0
        at_s = 3.0
        xid = 48

        [[events]]
        gpu = 1
        at_s = 3.0
        xid = 79
        """,
    )
    both = "sum(not d['healthy'] for g in groups for d in g['devices']) == 2"
    out, log = stream({"simulate": path, "fingerprint_period": "1h"}, {"op": "wait", "until": both, "max_s": 60})
    assert "timeout" not in out[2], out[2]
    why = sorted(d["why"] for d in devices(out[2]["groups"]))
    assert "XID 48" in why[0] and "XID 79" in why[1], why
    assert "XID events not supported" not in log, log[-2000:]

"""The health book's conditions and recovery rules, and the probe round's decisions, driven directly.

`HealthBook` takes only a callback, and `record_probe` / `record_stuck` take what
a probe read (a `ProbeResult`, a `CallTimeout`): no NVML, no thread, no sleep.
What NVML answers to make these results is covered over the simulated driver
(test_nvidia_sim.py, test_health_faults.py).
"""

from __future__ import annotations

import logging
import threading

import pynvml
import pytest

from nomad_device_nvidia.nvidia.fingerprint import GpuDevice, ScanFailure
from nomad_device_nvidia.nvidia.health.book import (
    DRIVER,
    ECC,
    FABRIC,
    LOST,
    READ,
    RETIREMENT,
    XID,
    HealthBook,
    xid_description,
)
from nomad_device_nvidia.nvidia.health.probes import ProbeResult, record_probe, record_stuck
from nomad_device_nvidia.nvidia.nvml.executor import CallTimeout


class Err(pynvml.NVMLError):
    """An NVML error whose text needs no library (pynvml's asks nvmlErrorString, and caches it)."""

    def __str__(self) -> str:
        return f"code {self.value}"


class Book:
    def __init__(self) -> None:
        self.changes = 0
        self.book = HealthBook(self._changed)

    def _changed(self) -> None:
        self.changes += 1


@pytest.fixture
def b() -> Book:
    return Book()


def gpu(uuid: str, index: int = 0) -> GpuDevice:
    return GpuDevice(id=uuid, name="NVIDIA H100", pci_bus_id=f"0000:0{index}:00.0", slot=(index, -1), attributes={})


def mig(uuid: str, parent: str, j: int) -> GpuDevice:
    return GpuDevice(id=uuid, name="MIG 1g.10gb", pci_bus_id="0000:00:00.0", slot=(0, j), attributes={},
                     parent_uuid=parent)


# --- conditions ---


def test_a_device_without_conditions_is_healthy(b: Book) -> None:
    assert b.book.status("GPU-a") == (True, "")
    b.book.answered("GPU-a")
    b.book.clear("GPU-a", READ, XID)
    assert b.changes == 0


def test_a_condition_tells_a_change_once_and_logs_once(b: Book, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="nomad_device_nvidia.nvidia.health.book")
    b.book.mark("GPU-a", READ, "NVML error: code 999")
    b.book.mark("GPU-a", READ, "NVML error: code 999")
    assert b.changes == 1
    assert b.book.status("GPU-a") == (False, "NVML error: code 999")
    # A new description of the same cause is a change to tell, not a new "unhealthy" line.
    b.book.mark("GPU-a", READ, "NVML error: code 3")
    assert b.changes == 2
    unhealthy = [r for r in caplog.records if "unhealthy" in r.getMessage()]
    assert [r.getMessage() for r in unhealthy] == ["device GPU-a unhealthy: NVML error: code 999"]
    b.book.clear("GPU-a", READ)
    assert b.changes == 3 and b.book.status("GPU-a") == (True, "")
    assert caplog.records[-1].getMessage() == "device GPU-a is healthy again"


def test_conditions_are_described_in_a_fixed_order(b: Book) -> None:
    for cause in (READ, FABRIC, RETIREMENT, ECC, XID, LOST, DRIVER):
        b.book.mark("GPU-a", cause, cause)
    assert b.book.status("GPU-a") == (False, "driver; lost; xid; ecc; retirement; fabric; read")
    assert b.book.having(FABRIC) == {"GPU-a"} and b.book.having(XID) == {"GPU-a"}
    assert b.book.having(FABRIC) - {"GPU-a"} == set()


def test_devices_are_independent(b: Book) -> None:
    b.book.mark("GPU-a", XID, "XID 79 reported")
    assert b.book.status("GPU-b") == (True, "")
    assert b.book.having(XID) == {"GPU-a"}


def test_xids_are_listed_by_kind_not_by_event(b: Book) -> None:
    for xid in (79, 79, 48, 79, 13, 94, 95, 48):
        b.book.mark_xid("GPU-a", xid)
    why = b.book.status("GPU-a")[1]
    assert why == (f"{xid_description(79)}, {xid_description(48)}, {xid_description(13)} "
                   "and 2 more XIDs reported")
    # One change per new kind (79, 48, 13, 94, 95), none per repeat.
    assert b.changes == 5
    assert xid_description(79) == "XID 79 (GPU has fallen off the bus)" and xid_description(13) == "XID 13"


# --- recovery ---


def test_a_failed_read_clears_when_the_device_answers(b: Book) -> None:
    b.book.failed("GPU-a", ScanFailure("NVML error: code 999", lost=False))
    assert b.book.having(READ) == {"GPU-a"}
    b.book.answered("GPU-a")
    assert b.book.status("GPU-a") == (True, "")


def test_xid_and_ecc_stay_through_answers_until_the_gpu_is_reset(b: Book) -> None:
    b.book.mark_xid("GPU-a", 48)
    b.book.mark("GPU-a", ECC, "double-bit ECC error")
    b.book.failed("GPU-a", ScanFailure("NVML error: code 999", lost=False))
    b.book.answered("GPU-a")
    # The read is over; the XID and ECC conditions need a reset.
    assert b.book.status("GPU-a") == (False, f"{xid_description(48)} reported; double-bit ECC error")
    # Lost, then answering again: the GPU was reset; everything it carried is cleared.
    b.book.failed("GPU-a", ScanFailure("GPU is lost or needs a reset (NVML: code 15)", lost=True))
    assert b.book.having(LOST) == {"GPU-a"}
    b.book.answered("GPU-a")
    assert b.book.status("GPU-a") == (True, "")
    # The XID list starts afresh after the reset.
    b.book.mark_xid("GPU-a", 13)
    assert b.book.status("GPU-a") == (False, "XID 13 reported")


def test_a_driver_that_came_back_counts_as_a_reset(b: Book) -> None:
    b.book.mark_xid("GPU-a", 79)
    b.book.mark("GPU-a", DRIVER, "NVIDIA driver unavailable; waiting for it to come back")
    b.book.answered("GPU-a")
    assert b.book.status("GPU-a") == (True, "")


def test_polled_conditions_are_not_cleared_by_an_answer(b: Book) -> None:
    b.book.mark("GPU-a", RETIREMENT, "pending page retirement")
    b.book.mark("GPU-a", FABRIC, "NVLink fabric not ready: in progress")
    b.book.answered("GPU-a")
    assert b.book.having(RETIREMENT) == {"GPU-a"} and b.book.having(FABRIC) == {"GPU-a"}


def test_retain_forgets_devices_no_longer_found_without_telling(b: Book) -> None:
    b.book.mark_xid("GPU-a", 79)
    b.book.mark("GPU-b", READ, "x")
    changes = b.changes
    b.book.retain(["GPU-b"])
    assert b.changes == changes  # a forgotten device is no longer offered: nothing to re-send
    assert b.book.status("GPU-a") == (True, "") and b.book.having(READ) == {"GPU-b"}
    # Found again, it starts with a fresh XID list.
    b.book.mark_xid("GPU-a", 13)
    assert b.book.status("GPU-a") == (False, "XID 13 reported")


def test_changes_made_together_are_told_once_and_seen_at_once(b: Book) -> None:
    with b.book.together():
        b.book.mark("GPU-a", READ, "x")
        with b.book.together():  # nested: told when the outer block ends
            b.book.mark("GPU-b", READ, "x")
        assert b.changes == 0
        b.book.clear("GPU-a", READ)
        b.book.mark("GPU-a", LOST, "y")
    assert b.changes == 1
    with b.book.together():  # nothing changed: nothing to tell
        b.book.mark("GPU-a", LOST, "y")
    assert b.changes == 1

    # A reader on another thread sees the block's changes all or none: here, all.
    seen: list[tuple[bool, str]] = []
    reading = threading.Event()

    def read() -> None:
        reading.set()
        with b.book.together():
            seen.extend(b.book.status(d) for d in ("GPU-c", "GPU-d"))

    reader = threading.Thread(target=read)
    with b.book.together():
        reader.start()
        assert reading.wait(60)
        b.book.mark("GPU-c", READ, "z")
        b.book.mark("GPU-d", READ, "z")
    reader.join(60)
    assert seen == [(False, "z"), (False, "z")]


# --- the probe round's decisions ---

A, M1, M2 = "GPU-a", "MIG-1", "MIG-2"


def members() -> list[GpuDevice]:
    return [mig(M1, A, 0), mig(M2, A, 1)]


def test_a_probe_that_answered_clears_reads_and_sets_polled_state(b: Book) -> None:
    for d in (M1, M2):
        b.book.failed(d, ScanFailure("NVML error: code 999", lost=False))
    record_probe(b.book, members(), ProbeResult({M1: None, M2: None}, retirement="pending row remapping",
                                                fabric="NVLink fabric not ready: in progress"))
    for d in (M1, M2):
        assert b.book.status(d) == (False, "pending row remapping; NVLink fabric not ready: in progress")
    record_probe(b.book, members(), ProbeResult({M1: None, M2: None}, retirement="", fabric=""))
    assert b.book.status(M1) == (True, "") and b.book.status(M2) == (True, "")


def test_unknown_polled_state_leaves_it_as_it_was(b: Book) -> None:
    b.book.mark(M1, RETIREMENT, "pending page retirement")
    b.book.mark(M1, FABRIC, "NVLink fabric not ready")
    # One member failed, so the GPU's memory and fabric state were not read (None).
    record_probe(b.book, members(), ProbeResult({M1: None, M2: Err(pynvml.NVML_ERROR_UNKNOWN)}, retirement=None))
    assert b.book.having(RETIREMENT) == {M1} and b.book.having(FABRIC) == {M1}
    assert b.book.status(M2) == (False, "NVML error: code 999")


def test_a_probe_error_marks_lost_or_read(b: Book) -> None:
    record_probe(b.book, [gpu(A)], ProbeResult({A: Err(pynvml.NVML_ERROR_GPU_IS_LOST)}, retirement=None))
    assert b.book.having(LOST) == {A}
    assert b.book.status(A) == (False, "GPU is lost or needs a reset (NVML: code 15)")
    record_probe(b.book, [gpu("GPU-b")], ProbeResult({"GPU-b": Err(pynvml.NVML_ERROR_UNKNOWN)}, retirement=None))
    assert b.book.having(READ) == {"GPU-b"}


@pytest.mark.parametrize("code", [pynvml.NVML_ERROR_DRIVER_NOT_LOADED, pynvml.NVML_ERROR_UNINITIALIZED,
                                  pynvml.NVML_ERROR_LIB_RM_VERSION_MISMATCH])
def test_a_driver_error_is_left_to_the_scan(b: Book, code: int) -> None:
    b.book.mark(A, READ, "earlier")
    record_probe(b.book, [gpu(A)], ProbeResult({A: Err(code)}, retirement=None))
    # Neither marked nor cleared: about the driver, not this GPU.
    assert b.book.status(A) == (False, "earlier") and b.changes == 1


def test_a_stuck_probe_marks_every_device_of_its_gpu(b: Book) -> None:
    timeout = CallTimeout("nvmlDeviceGetMemoryInfo", 3.0, A)
    record_stuck(b.book, members(), timeout)
    assert b.book.status(M1) == (False, str(timeout)) and b.book.status(M2) == (False, str(timeout))
    assert "nvmlDeviceGetMemoryInfo" in str(timeout)
    # The call returned and the next probe answered: healthy again.
    record_probe(b.book, members(), ProbeResult({M1: None, M2: None}, retirement="", fabric=""))
    assert b.book.status(M1) == (True, "") and b.book.status(M2) == (True, "")

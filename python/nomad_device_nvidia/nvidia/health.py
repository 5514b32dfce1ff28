"""Per-device health: what is wrong with each device, and the NVML event monitor.

A device is healthy when it has no open condition. Conditions come from NVML
events (critical XIDs, double-bit ECC), from reads that fail (lost GPU, other
NVML errors) and from polled state (pending page retirement / row remapping).
Recovery: a failed read clears when the device answers again; an XID or ECC
condition clears when the GPU is seen going away and answering again (a
driver reset), which is what an operator does to recover such a GPU.
"""

from __future__ import annotations

import ctypes
import logging
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import pynvml

from nomad_device_nvidia.nvidia.config import HealthConfig
from nomad_device_nvidia.nvidia.fingerprint import (
    UNSUPPORTED_CODES,
    GpuDevice,
    ScanFailure,
    failure_of,
    physical_devices,
)

log = logging.getLogger(__name__)

LOST = "lost"
READ = "read"
XID = "xid"
ECC = "ecc"
RETIREMENT = "retirement"
_ORDER = (LOST, XID, ECC, RETIREMENT, READ)
# Conditions only a GPU reset clears.
_RESET_CLEARED = (LOST, XID, ECC)

_NO_INSTANCE = 0xFFFFFFFF
_EVENT_TYPES = pynvml.nvmlEventTypeXidCriticalError | pynvml.nvmlEventTypeDoubleBitEccError

# Short meanings of the XIDs operators meet most, to make health_description useful.
XID_MEANINGS = {
    48: "double-bit ECC error",
    61: "internal micro-controller breakpoint",
    62: "internal micro-controller halt",
    63: "ECC page retirement or row remapping event",
    64: "ECC page retirement or row remapping failure",
    74: "NVLink error",
    79: "GPU has fallen off the bus",
    92: "high single-bit ECC error rate",
    94: "contained ECC error",
    95: "uncontained ECC error",
    119: "GSP RPC timeout",
    120: "GSP error",
}


def xid_description(xid: int) -> str:
    meaning = XID_MEANINGS.get(xid)
    return f"XID {xid} ({meaning})" if meaning else f"XID {xid}"


class HealthBook:
    """Open conditions per device ID; thread-safe; calls `on_change` after a change."""

    def __init__(self, on_change: Callable[[], None]) -> None:
        self._lock = threading.Lock()
        self._conditions: dict[str, dict[str, str]] = {}
        self._on_change = on_change

    def _apply(self, change: Callable[[], bool]) -> None:
        with self._lock:
            changed = change()
        if changed:
            self._on_change()

    def mark(self, device_id: str, cause: str, description: str) -> None:
        def change() -> bool:
            conds = self._conditions.setdefault(device_id, {})
            if conds.get(cause) == description:
                return False
            if cause not in conds:
                log.warning("device %s unhealthy: %s", device_id, description)
            conds[cause] = description
            return True

        self._apply(change)

    def clear(self, device_id: str, *causes: str) -> None:
        def change() -> bool:
            conds = self._conditions.get(device_id, {})
            gone = [c for c in causes if c in conds]
            for c in gone:
                del conds[c]
            if gone and not conds:
                log.info("device %s is healthy again", device_id)
            return bool(gone)

        self._apply(change)

    def failed(self, device_id: str, failure: ScanFailure) -> None:
        self.mark(device_id, LOST if failure.lost else READ, failure.description)

    def answered(self, device_id: str) -> None:
        """The device answered a read: read errors are over, and a GPU back from lost was reset."""
        with self._lock:
            was_lost = LOST in self._conditions.get(device_id, {})
        self.clear(device_id, READ, *(_RESET_CLEARED if was_lost else ()))

    def retain(self, device_ids: Iterable[str]) -> None:
        keep = set(device_ids)

        def change() -> bool:
            gone = [d for d in self._conditions if d not in keep]
            for d in gone:
                del self._conditions[d]
            return False  # forgotten devices are no longer offered; nothing to re-send

        self._apply(change)

    def causes(self, device_id: str) -> set[str]:
        with self._lock:
            return set(self._conditions.get(device_id, {}))

    def status(self, device_id: str) -> tuple[bool, str]:
        with self._lock:
            conds = self._conditions.get(device_id)
            if not conds:
                return True, ""
            return False, "; ".join(conds[c] for c in _ORDER if c in conds)

    def unhealthy(self) -> list[str]:
        with self._lock:
            return sorted(d for d, conds in self._conditions.items() if conds)


def _address(handle: Any) -> int:
    return int(ctypes.cast(handle, ctypes.c_void_p).value or 0)


def check_memory_retirement(devices: Sequence[GpuDevice], book: HealthBook) -> None:
    """Poll pending page retirement / row remapping on each physical GPU."""
    for uuid, members in physical_devices(devices).items():
        problem = ""
        try:
            handle = pynvml.nvmlDeviceGetHandleByUUID(uuid)
            problem = _retirement_problem(handle)
        except pynvml.NVMLError:
            continue  # a GPU that does not answer is reported by the scan or the probe
        for dev in members:
            if problem:
                book.mark(dev.id, RETIREMENT, problem)
            else:
                book.clear(dev.id, RETIREMENT)


def _retirement_problem(handle: Any) -> str:
    try:
        if pynvml.nvmlDeviceGetRetiredPagesPendingStatus(handle):
            return "pending page retirement after uncorrectable ECC errors (reset the GPU)"
    except pynvml.NVMLError as exc:
        if exc.value not in UNSUPPORTED_CODES:
            raise
    try:
        _corr, _uncorr, pending, failed = pynvml.nvmlDeviceGetRemappedRows(handle)
    except pynvml.NVMLError as exc:
        if exc.value not in UNSUPPORTED_CODES:
            raise
        return ""
    if failed:
        return "row remapping failed after uncorrectable ECC errors"
    if pending:
        return "pending row remapping after uncorrectable ECC errors (reset the GPU)"
    return ""


def probe(devices: Iterable[GpuDevice], book: HealthBook) -> None:
    """One cheap read per device: records failures and recoveries."""
    for dev in devices:
        try:
            handle = pynvml.nvmlDeviceGetHandleByUUID(dev.id)
            pynvml.nvmlDeviceGetMemoryInfo(handle)
        except pynvml.NVMLError as exc:
            book.failed(dev.id, failure_of(exc))
            continue
        book.answered(dev.id)


class HealthMonitor:
    """A thread that waits on NVML events and probes the devices (loss and recovery)."""

    def __init__(self, book: HealthBook, config: HealthConfig, wait_ms: int = 500) -> None:
        self._book = book
        self._config = config
        self._wait_ms = wait_ms
        self._lock = threading.Lock()
        self._devices: tuple[GpuDevice, ...] = ()
        self._resync = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._event_set: Any = None
        self._by_address: dict[int, str] = {}
        self._wait_error_logged = False

    def configure(self, config: HealthConfig) -> None:
        with self._lock:
            self._config = config

    def track(self, devices: Sequence[GpuDevice]) -> None:
        with self._lock:
            changed = tuple(devices) != self._devices
            self._devices = tuple(devices)
        if changed:
            self._resync.set()

    def start(self) -> None:
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name="nvidia-health", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> bool:
        """Stop the thread; False when it is still inside an NVML call after `timeout`.

        The thread frees its event set itself on the way out, so the caller must
        keep NVML initialised (no nvmlShutdown) until this has returned True.
        """
        self._stop.set()
        thread = self._thread
        if thread is None:
            return True
        thread.join(timeout=timeout)
        if thread.is_alive():
            log.warning("the health monitor is still inside an NVML call after %.0fs", timeout)
            return False
        self._thread = None
        return True

    # -- the thread --

    def _run(self) -> None:
        next_probe = 0.0
        try:
            while not self._stop.is_set():
                if self._resync.is_set():
                    self._resync.clear()
                    self._register()
                if self._event_set is not None:
                    self._wait_for_event()
                else:
                    self._stop.wait(self._wait_ms / 1000)
                now = time.monotonic()
                if now >= next_probe:
                    # Every device, not only unhealthy ones: a GPU can be lost without
                    # any event, and one cheap read per device per interval finds it.
                    with self._lock:
                        interval, devices = self._config.probe_interval, self._devices
                    probe(devices, self._book)
                    next_probe = now + interval
        except Exception:  # the monitor must never take the plugin down
            log.exception("health monitor stopped unexpectedly")
        finally:
            self._free()

    def _free(self) -> None:
        if self._event_set is not None:
            try:
                pynvml.nvmlEventSetFree(self._event_set)
            except pynvml.NVMLError as exc:
                log.debug("freeing the NVML event set failed: %s", exc)
            self._event_set = None
        self._by_address = {}

    def _register(self) -> None:
        self._free()
        with self._lock:
            devices = self._devices
        physical = physical_devices(devices)
        if not physical:
            return
        try:
            event_set = pynvml.nvmlEventSetCreate()
        except pynvml.NVMLError as exc:
            log.warning("NVML events unavailable (%s); health relies on probes and scans", exc)
            return
        by_address: dict[int, str] = {}
        unsupported = []
        for uuid in physical:
            try:
                handle = pynvml.nvmlDeviceGetHandleByUUID(uuid)
                pynvml.nvmlDeviceRegisterEvents(handle, _EVENT_TYPES, event_set)
            except pynvml.NVMLError as exc:
                if exc.value in UNSUPPORTED_CODES:
                    unsupported.append(uuid)
                else:
                    log.warning("cannot watch GPU %s for XID events: %s", uuid, exc)
                continue
            by_address[_address(handle)] = uuid
        if unsupported:
            log.info("XID events not supported on %d GPU(s), e.g. %s", len(unsupported), unsupported[0])
        self._event_set = event_set
        self._by_address = by_address

    def _wait_for_event(self) -> None:
        try:
            data = pynvml.nvmlEventSetWait_v2(self._event_set, self._wait_ms)
        except pynvml.NVMLError as exc:
            if exc.value == pynvml.NVML_ERROR_TIMEOUT:
                return
            if exc.value in UNSUPPORTED_CODES:
                log.info("waiting on NVML events is not supported (%s); health relies on probes", exc)
                self._free()
                return
            # Which device failed is unknown: probe them all, so only the ones that
            # do not answer are marked, never the whole node.
            if not self._wait_error_logged:
                log.warning("reading an NVML event failed (%s); probing the devices instead", exc)
                self._wait_error_logged = True
            with self._lock:
                devices = self._devices
            probe(devices, self._book)
            self._stop.wait(self._wait_ms / 1000)
            return
        self._wait_error_logged = False
        self._handle_event(data)

    def _handle_event(self, data: Any) -> None:
        uuid = self._by_address.get(_address(data.device))
        if uuid is None:
            try:
                uuid = pynvml.nvmlDeviceGetUUID(data.device)
            except pynvml.NVMLError as exc:
                log.warning("NVML event type 0x%x for an unknown device ignored (%s)", data.eventType, exc)
                return
        with self._lock:
            devices = [d for d in self._devices if d.physical_uuid == uuid]
            ignored = self._config.ignored_xids
        gi, ci = int(data.gpuInstanceId), int(data.computeInstanceId)
        if gi != _NO_INSTANCE:
            scoped = [d for d in devices if d.gpu_instance_id in (None, gi)]
            if ci != _NO_INSTANCE:
                scoped = [d for d in scoped if d.compute_instance_id in (None, ci)]
            devices = scoped or devices
        if data.eventType & pynvml.nvmlEventTypeXidCriticalError:
            xid = int(data.eventData)
            if xid in ignored:
                log.info("GPU %s reported %s, an application fault; device stays healthy", uuid, xid_description(xid))
                return
            for dev in devices:
                self._book.mark(dev.id, XID, f"{xid_description(xid)} reported")
        elif data.eventType & pynvml.nvmlEventTypeDoubleBitEccError:
            for dev in devices:
                self._book.mark(dev.id, ECC, "uncorrectable (double-bit) ECC error")
            check_memory_retirement(devices, self._book)

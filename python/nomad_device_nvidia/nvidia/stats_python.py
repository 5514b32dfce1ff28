"""The pure-Python stats engine (nvidia-ml-py + protobuf classes).

The reference the native engine is tested against, the fallback when the
extension cannot load, and the benchmarks' baseline. It reads the same NVML
calls in the same way, one device after another, and relies on the plugin
having called ``pynvml.nvmlInit``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import pynvml

from nomad_device_nvidia._proto.nomad import device_pb2, structs_pb2
from nomad_device_nvidia.nvidia.fingerprint import DEVICE_TYPE, NOT_AVAILABLE, VENDOR

# Private there, shared on purpose: XID events name a GPU by the same handle
# address the health monitor keys them by.
from nomad_device_nvidia.nvidia.health import _address
from nomad_device_nvidia.nvidia.stats_engine import EngineOptions, TrackedDevice

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Stat:
    name: str
    unit: str
    desc: str


# HashiCorp's Go plugin vocabulary, byte for byte.
POWER = Stat(
    "Power usage",
    "W",
    "Power usage for this GPU in watts and its associated circuitry (e.g. memory) / Maximum GPU Power",
)
GPU_UTIL = Stat(
    "GPU utilization",
    "%",
    "Percent of time over the past sample period during which one or more kernels were executing on the GPU.",
)
MEM_UTIL = Stat("Memory utilization", "%", "Percentage of bandwidth used during the past sample period")
ENC_UTIL = Stat(
    "Encoder utilization", "%", "Percent of time over the past sample period during which GPU Encoder was used"
)
DEC_UTIL = Stat(
    "Decoder utilization", "%", "Percent of time over the past sample period during which GPU Decoder was used"
)
TEMPERATURE = Stat("Temperature", "C", "Temperature of the Unit")
MEMORY = Stat("Memory state", "MiB", "UsedMemory / TotalMemory")
BAR1 = Stat("BAR1 buffer state", "MiB", "UsedBAR1 / TotalBAR1")
ECC_L1 = Stat("ECC L1 errors", "#", "Requested L1Cache error counter for the device")
ECC_L2 = Stat("ECC L2 errors", "#", "Requested L2Cache error counter for the device")
ECC_DEVICE = Stat("ECC memory errors", "#", "Requested memory error counter for the device")

# Extended stats: nested objects by topic.
SM_CLOCK = Stat("SM clock", "MHz", "Current SM clock speed")
MEM_CLOCK = Stat("Memory clock", "MHz", "Current memory clock speed")
TOTAL_ENERGY = Stat("Total energy consumption", "mJ", "Energy consumed by the GPU since the driver was last loaded")
PCIE_TX = Stat("PCIe TX throughput", "KB/s", "PCIe transmit throughput over a 20 ms interval")
PCIE_RX = Stat("PCIe RX throughput", "KB/s", "PCIe receive throughput over a 20 ms interval")
THROTTLE_REASONS = Stat(
    "Clock throttle reasons",
    "bitmask",
    "Active clock event (throttle) reasons, a bitmask of nvmlClocksEventReason values",
)

XID_COUNT = Stat(
    "XID count",
    "#",
    "Critical XID errors reported for this GPU (for a MIG instance, its parent GPU) since stats collection started",
)
EXTENDED = (
    ("Clocks", (SM_CLOCK, MEM_CLOCK)),
    ("Energy", (TOTAL_ENERGY,)),
    ("PCIe", (PCIE_TX, PCIE_RX)),
    ("Throttle", (THROTTLE_REASONS,)),
    ("XID", (XID_COUNT,)),
)

MIB = 1 << 20
# Field IDs of the batched read (NVML_FI_DEV_*).
FI_ECC_SBE_VOL_L1 = 7
FI_ECC_SBE_VOL_L2 = 9
FI_ECC_SBE_VOL_DEV = 11
FI_TOTAL_ENERGY = 83
_BATCH_FALLBACK = (pynvml.NVML_ERROR_FUNCTION_NOT_FOUND, pynvml.NVML_ERROR_NOT_SUPPORTED)
# Events taken per tick at most, as in the native engine (src_rust/stats_core/src/xid.rs).
MAX_EVENTS_PER_TICK = 4096

# A reading: None ("N/A"), an int, or a (numerator, denominator) pair.
Reading = int | tuple[int, int] | None


def stat_value(stat: Stat, reading: Reading) -> structs_pb2.StatValue:
    v = structs_pb2.StatValue(unit=stat.unit, desc=stat.desc)
    if reading is None:
        v.string_val.value = NOT_AVAILABLE
    elif isinstance(reading, tuple):
        v.int_numerator_val.value, v.int_denominator_val.value = reading
    else:
        v.int_numerator_val.value = reading
    return v


def _try(call: Callable[[], Any]) -> Any:
    """A call's result, or None when NVML cannot tell (any NVML error)."""
    try:
        return call()
    except pynvml.NVMLError:
        return None


def _field_int(fv: Any) -> int | None:
    if fv.nvmlReturn != pynvml.NVML_SUCCESS:
        return None
    attr = {
        pynvml.NVML_VALUE_TYPE_DOUBLE: "dVal",
        pynvml.NVML_VALUE_TYPE_UNSIGNED_INT: "uiVal",
        pynvml.NVML_VALUE_TYPE_UNSIGNED_LONG: "ulVal",
        pynvml.NVML_VALUE_TYPE_UNSIGNED_LONG_LONG: "ullVal",
        pynvml.NVML_VALUE_TYPE_SIGNED_LONG_LONG: "sllVal",
        pynvml.NVML_VALUE_TYPE_SIGNED_INT: "siVal",
        6: "usVal",  # NVML_VALUE_TYPE_UNSIGNED_SHORT
    }.get(fv.valueType)
    return None if attr is None else int(getattr(fv.value, attr))


def _memory(h: Any) -> Reading:
    m = _try(lambda: pynvml.nvmlDeviceGetMemoryInfo(h))
    return None if m is None else (m.used // MIB, m.total // MIB)


def _bar1(h: Any) -> Reading:
    b = _try(lambda: pynvml.nvmlDeviceGetBAR1MemoryInfo(h))
    return None if b is None else (b.bar1Used // MIB, b.bar1Total // MIB)


def _power(h: Any) -> Reading:
    usage = _try(lambda: pynvml.nvmlDeviceGetPowerUsage(h))
    if usage is None:
        return None
    limit = _try(lambda: pynvml.nvmlDeviceGetPowerManagementLimit(h))
    return None if limit is None else (usage // 1000, limit // 1000)


class XidCounter:
    """XID critical errors per physical GPU from an event set of the engine's
    own, made the same way as the native engine's (src_rust/stats_core/src/xid.rs):
    a MIG instance counts its parent GPU's XIDs."""

    def __init__(self) -> None:
        self._set = pynvml.nvmlEventSetCreate()
        self._counts: dict[int, int] = {}  # GPU handle address -> XIDs; present once registered

    def watch(self, handle: Any) -> int:
        """Registers the GPU of `handle` (itself, or a MIG instance's parent) once; returns its key."""
        try:
            gpu = pynvml.nvmlDeviceGetDeviceHandleFromMigDeviceHandle(handle)
        except pynvml.NVMLError as exc:
            # INVALID_ARGUMENT: not a MIG instance, so the GPU itself.
            if exc.value not in (pynvml.NVML_ERROR_INVALID_ARGUMENT, pynvml.NVML_ERROR_FUNCTION_NOT_FOUND):
                raise
            gpu = handle
        key = _address(gpu)
        if key not in self._counts:
            pynvml.nvmlDeviceRegisterEvents(gpu, pynvml.nvmlEventTypeXidCriticalError, self._set)
            self._counts[key] = 0
        return key

    def drain(self) -> None:
        """Takes every waiting event without blocking."""
        for _ in range(MAX_EVENTS_PER_TICK):
            try:
                e = pynvml.nvmlEventSetWait_v2(self._set, 0)
            except pynvml.NVMLError:  # NVML_ERROR_TIMEOUT: nothing more waiting
                return
            if e.eventType & pynvml.nvmlEventTypeXidCriticalError:
                key = _address(e.device)
                if key in self._counts:
                    self._counts[key] += 1

    def count(self, key: int) -> int | None:
        return self._counts.get(key)

    def close(self) -> None:
        try:
            pynvml.nvmlEventSetFree(self._set)
        except pynvml.NVMLError:
            pass


class PythonStatsEngine:
    def __init__(self, options: EngineOptions = EngineOptions()) -> None:
        self._options = options
        self._groups: list[tuple[str, list[TrackedDevice]]] = []
        # One per distinct UUID, the first tracked device reading it (named in
        # logs), in tracked order: shares of a GPU are read once per tick.
        self._readers: list[TrackedDevice] = []
        self._handles: dict[str, Any] = {}
        self._handle_reported: set[str] = set()
        self._fields: bool | None = None
        self._xid: XidCounter | None = None
        self._xid_gpu: dict[str, int] = {}  # UUID -> XidCounter key
        self._xid_reported: set[str] = set()
        if options.extended:
            try:
                self._xid = XidCounter()
            except pynvml.NVMLError as exc:
                log.warning("XID events unavailable (%s); XID counts read N/A", exc)

    def track(self, devices: Sequence[TrackedDevice]) -> None:
        # Same order and de-duplication as the native engine: groups by name,
        # devices by ID, the first of a repeated ID kept.
        by_group: dict[str, dict[str, TrackedDevice]] = {}
        for d in devices:
            by_group.setdefault(d.group, {}).setdefault(d.device_id, d)
        self._groups = [(g, [devs[k] for k in sorted(devs)]) for g, devs in sorted(by_group.items())]
        readers: dict[str, TrackedDevice] = {}
        for _, group_devices in self._groups:
            for d in group_devices:
                readers.setdefault(d.uuid, d)
        self._readers = list(readers.values())
        self._watch_xids()

    def _watch_xids(self) -> None:
        """Registers the GPUs of tracked devices for XIDs, in tracked order (the
        native engine makes the same calls in the same order)."""
        if self._xid is None:
            return
        uuids = {d.uuid for d in self._readers}
        self._xid_gpu = {u: k for u, k in self._xid_gpu.items() if u in uuids}
        self._xid_reported &= uuids
        for d in self._readers:
            if d.uuid in self._xid_gpu:
                continue
            h = self._handle(d)
            if h is None:
                continue
            try:
                self._xid_gpu[d.uuid] = self._xid.watch(h)
            except pynvml.NVMLError as exc:
                if d.uuid not in self._xid_reported:
                    self._xid_reported.add(d.uuid)
                    log.warning("device %s: cannot watch XID events (%s); its XID count reads N/A", d.device_id, exc)

    def collect(self) -> bytes:
        now = time.time_ns()
        resp = device_pb2.StatsResponse()
        if self._xid is not None and self._groups:
            self._xid.drain()
        # Each GPU read once, in tracked order; its shares get copies.
        read = {d.uuid: self._stats(d) for d in self._readers}
        for name, devices in self._groups:
            group = resp.groups.add(vendor=VENDOR, type=DEVICE_TYPE, name=name)
            for d in devices:
                ds = group.instance_stats[d.device_id]
                ds.CopyFrom(read[d.uuid])
                ds.timestamp.seconds, ds.timestamp.nanos = divmod(now, 1_000_000_000)
        data: bytes = resp.SerializeToString()
        return data

    def close(self) -> None:
        self._groups = []
        self._readers = []
        self._handles.clear()
        if self._xid is not None:
            self._xid.close()
            self._xid = None

    def _handle(self, d: TrackedDevice) -> Any:
        h = self._handles.get(d.uuid)
        if h is not None:
            return h
        try:
            h = pynvml.nvmlDeviceGetHandleByUUID(d.uuid)
        except pynvml.NVMLError as exc:
            if d.uuid not in self._handle_reported:
                self._handle_reported.add(d.uuid)
                log.warning("device %s: no NVML handle for UUID %s (%s); its stats read N/A", d.device_id, d.uuid, exc)
            return None
        self._handle_reported.discard(d.uuid)
        self._handles[d.uuid] = h
        return h

    def _stats(self, d: TrackedDevice) -> device_pb2.DeviceStats:
        """One read of the GPU `d` names (by its UUID)."""
        ds = device_pb2.DeviceStats()
        h = self._handle(d)
        readings = self._read(h) if h is not None else {}
        if self._xid is not None and d.uuid in self._xid_gpu:
            readings[XID_COUNT.name] = self._xid.count(self._xid_gpu[d.uuid])
        attrs = ds.stats.attributes
        for stat in (POWER, GPU_UTIL, MEM_UTIL, ENC_UTIL, DEC_UTIL, TEMPERATURE, MEMORY, BAR1, ECC_L1, ECC_L2, ECC_DEVICE):
            attrs[stat.name].CopyFrom(stat_value(stat, readings.get(stat.name)))
        ds.summary.CopyFrom(attrs[MEMORY.name])
        if self._options.extended:
            nested = ds.stats.nested
            for topic, stats in EXTENDED:
                obj = nested[topic]
                for stat in stats:
                    obj.attributes[stat.name].CopyFrom(stat_value(stat, readings.get(stat.name)))
        return ds

    def _read(self, h: Any) -> dict[str, Reading]:
        r: dict[str, Reading] = {MEMORY.name: _memory(h)}
        util = _try(lambda: pynvml.nvmlDeviceGetUtilizationRates(h))
        if util is not None:
            r[GPU_UTIL.name], r[MEM_UTIL.name] = util.gpu, util.memory
        enc = _try(lambda: pynvml.nvmlDeviceGetEncoderUtilization(h))
        r[ENC_UTIL.name] = None if enc is None else enc[0]
        dec = _try(lambda: pynvml.nvmlDeviceGetDecoderUtilization(h))
        r[DEC_UTIL.name] = None if dec is None else dec[0]
        r[TEMPERATURE.name] = _try(lambda: pynvml.nvmlDeviceGetTemperature(h, pynvml.NVML_TEMPERATURE_GPU))
        r[POWER.name] = _power(h)
        r[BAR1.name] = _bar1(h)
        extended = self._options.extended
        if not (self._use_fields() and self._read_fields(h, r)):
            ecc = _try(
                lambda: pynvml.nvmlDeviceGetDetailedEccErrors(
                    h, pynvml.NVML_MEMORY_ERROR_TYPE_CORRECTED, pynvml.NVML_VOLATILE_ECC
                )
            )
            if ecc is not None:
                r[ECC_L1.name], r[ECC_L2.name], r[ECC_DEVICE.name] = ecc.l1Cache, ecc.l2Cache, ecc.deviceMemory
            if extended:
                r[TOTAL_ENERGY.name] = _try(lambda: pynvml.nvmlDeviceGetTotalEnergyConsumption(h))
        if extended:
            r[SM_CLOCK.name] = _try(lambda: pynvml.nvmlDeviceGetClockInfo(h, pynvml.NVML_CLOCK_SM))
            r[MEM_CLOCK.name] = _try(lambda: pynvml.nvmlDeviceGetClockInfo(h, pynvml.NVML_CLOCK_MEM))
            r[PCIE_TX.name] = _try(lambda: pynvml.nvmlDeviceGetPcieThroughput(h, pynvml.NVML_PCIE_UTIL_TX_BYTES))
            r[PCIE_RX.name] = _try(lambda: pynvml.nvmlDeviceGetPcieThroughput(h, pynvml.NVML_PCIE_UTIL_RX_BYTES))
            r[THROTTLE_REASONS.name] = _try(lambda: pynvml.nvmlDeviceGetCurrentClocksEventReasons(h))
        return r

    def _use_fields(self) -> bool:
        if self._fields is None:
            # Without nvmlDeviceGetDetailedEccErrors (deprecated in NVML 13),
            # field values are the only way to the ECC counters.
            try:
                pynvml._nvmlGetFunctionPointer("nvmlDeviceGetDetailedEccErrors")
                self._fields = self._options.use_fields
            except pynvml.NVMLError:
                self._fields = True
        return self._fields

    def _read_fields(self, h: Any, r: dict[str, Reading]) -> bool:
        """The batched read; False when NVML cannot answer field values at all."""
        ids = [FI_ECC_SBE_VOL_L1, FI_ECC_SBE_VOL_L2, FI_ECC_SBE_VOL_DEV]
        if self._options.extended:
            ids.append(FI_TOTAL_ENERGY)
        try:
            values = pynvml.nvmlDeviceGetFieldValues(h, ids)
        except pynvml.NVMLError as exc:
            return exc.value not in _BATCH_FALLBACK
        r[ECC_L1.name], r[ECC_L2.name], r[ECC_DEVICE.name] = (_field_int(v) for v in values[:3])
        if self._options.extended:
            r[TOTAL_ENERGY.name] = _field_int(values[3])
        return True

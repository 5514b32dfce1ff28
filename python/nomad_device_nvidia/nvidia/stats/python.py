"""The pure-Python stats engine (nvidia-ml-py + protobuf classes).

The reference the native engine is tested against, the fallback when the
extension cannot load, and the benchmarks' baseline. It makes the same NVML
calls in the same way, each device's reads as one job on that GPU's
`Executor` lane, so a tick waits at most `timeout` for any device (one that
does not answer reads N/A), and relies on the plugin having called
``pynvml.nvmlInit``.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import pynvml

from nomad_device_nvidia._proto.nomad import device_pb2, structs_pb2
from nomad_device_nvidia.nvidia.nvml.executor import Calls, CallTimeout, Executor, RunnerClosed
from nomad_device_nvidia.nvidia.nvml.fields import field_int, handle_address
from nomad_device_nvidia.nvidia.fingerprint import DEVICE_TYPE, NOT_AVAILABLE, VENDOR, host_memory

# Private there, shared on purpose: XID events name a GPU by the same handle
# address the health monitor keys them by.
from nomad_device_nvidia.nvidia.stats.contract import EngineOptions, TrackedDevice
from nomad_device_nvidia.nvidia.stats.vocabulary import EXTENDED, GPM, GPM_STATS, STANDARD, STATS, SUMMARY, Stat

log = logging.getLogger(__name__)


# The vocabulary is one table for both engines (stats/vocabulary.json); these
# names link its entries to the readings below.
POWER = STATS["POWER"]
GPU_UTIL = STATS["GPU_UTIL"]
MEM_UTIL = STATS["MEM_UTIL"]
ENC_UTIL = STATS["ENC_UTIL"]
DEC_UTIL = STATS["DEC_UTIL"]
TEMPERATURE = STATS["TEMPERATURE"]
MEMORY = STATS["MEMORY"]
BAR1 = STATS["BAR1"]
ECC_L1 = STATS["ECC_L1"]
ECC_L2 = STATS["ECC_L2"]
ECC_DEVICE = STATS["ECC_DEVICE"]
SM_CLOCK = STATS["SM_CLOCK"]
MEM_CLOCK = STATS["MEM_CLOCK"]
TOTAL_ENERGY = STATS["TOTAL_ENERGY"]
PCIE_TX = STATS["PCIE_TX"]
PCIE_RX = STATS["PCIE_RX"]
THROTTLE_REASONS = STATS["THROTTLE_REASONS"]
XID_COUNT = STATS["XID_COUNT"]
# The NVML metric behind each GPM stat, in GPM_STATS order.
GPM_METRIC_IDS: tuple[int, ...] = tuple(getattr(pynvml, s.nvml_metric) for s in GPM_STATS)
_GPM_PERCENT = tuple(s.scale == "percent" for s in GPM_STATS)
_NOT_MIG = (pynvml.NVML_ERROR_INVALID_ARGUMENT, pynvml.NVML_ERROR_NOT_SUPPORTED, pynvml.NVML_ERROR_FUNCTION_NOT_FOUND)
_NO_GPM = (pynvml.NVML_ERROR_NOT_SUPPORTED, pynvml.NVML_ERROR_FUNCTION_NOT_FOUND)
# nvml.h: GPM samples should be more than 100 ms apart (as gpm.rs's MIN_INTERVAL).
GPM_MIN_INTERVAL = 0.1

MIB = 1 << 20
# Field IDs of the batched read (NVML_FI_DEV_*).
FI_ECC_SBE_VOL_L1 = 7
FI_ECC_SBE_VOL_L2 = 9
FI_ECC_SBE_VOL_DEV = 11
FI_TOTAL_ENERGY = 83
_BATCH_FALLBACK = (pynvml.NVML_ERROR_FUNCTION_NOT_FOUND, pynvml.NVML_ERROR_NOT_SUPPORTED)
# Workers of an engine that has no runner of the plugin's (benchmarks, tests):
# a tick is one job; more are only needed beside ticks blocked in NVML.
_OWN_WORKERS = 4
# Events taken per tick at most, as in the native engine (src_rust/stats_core/src/xid.rs).
MAX_EVENTS_PER_TICK = 4096

# A reading: None ("N/A"), an int, a (numerator, denominator) pair, or a float (GPM).
Reading = int | float | tuple[int, int] | None


def stat_value(stat: Stat, reading: Reading) -> structs_pb2.StatValue:
    v = structs_pb2.StatValue(unit=stat.unit, desc=stat.desc)
    if reading is None:
        v.string_val.value = NOT_AVAILABLE
    elif isinstance(reading, float):
        v.float_numerator_val.value = reading
    elif isinstance(reading, tuple):
        v.int_numerator_val.value, v.int_denominator_val.value = reading
    else:
        v.int_numerator_val.value = reading
    return v


def _try(c: Calls, fn: Callable[..., Any], *args: Any) -> Any:
    """A call's result, or None when NVML cannot tell (any NVML error)."""
    try:
        return c(fn, *args)
    except pynvml.NVMLError:
        return None


def _memory(c: Calls, h: Any) -> Reading:
    try:
        m = c(pynvml.nvmlDeviceGetMemoryInfo, h)
    except pynvml.NVMLError as exc:
        if exc.value != pynvml.NVML_ERROR_NOT_SUPPORTED:
            return None
        # No dedicated memory (an integrated GPU such as GB10): it uses the host's.
        host = host_memory()
        return (host.used // MIB, host.total // MIB) if host.total else None
    return (m.used // MIB, m.total // MIB)


def _bar1(c: Calls, h: Any) -> Reading:
    b = _try(c, pynvml.nvmlDeviceGetBAR1MemoryInfo, h)
    return None if b is None else (b.bar1Used // MIB, b.bar1Total // MIB)


def _power(c: Calls, h: Any) -> Reading:
    usage = _try(c, pynvml.nvmlDeviceGetPowerUsage, h)
    if usage is None:
        return None
    limit = _try(c, pynvml.nvmlDeviceGetPowerManagementLimit, h)
    return None if limit is None else (usage // 1000, limit // 1000)


def gpm_percent(value: float) -> float | None:
    """A GPM percentage as sent: two decimals, rounded as the native engine does."""
    if not math.isfinite(value):
        return None
    return math.floor(max(value, 0.0) * 100.0 + 0.5) / 100.0


def gpm_mb(value: float) -> int | None:
    """NVML's MiB/s as MB/s (10^6 bytes), a whole number."""
    if not math.isfinite(value):
        return None
    return int(math.floor(max(value, 0.0) * 1.048576 + 0.5))


_gpm_local = threading.local()


def _metrics_get() -> Any:
    """This thread's nvmlGpmMetricsGet argument (19 KB with the whole metric array): one
    per worker, not one per device."""
    get = getattr(_gpm_local, "get", None)
    if get is None:
        get = _gpm_local.get = pynvml.c_nvmlGpmMetricsGet_t()
    return get


class GpmReader:
    """One device's GPM state, made the same way as the native engine's
    (src_rust/stats_core/src/gpm.rs), with the same NVML calls in the same order:
    the support query until it answers, the MIG parent and GPU instance lookups
    until they answer, then each tick one sample and the metrics between it and
    the previous tick's (the first tick has no interval: N/A). A tick within
    GPM_MIN_INTERVAL of the last sample (nvml.h: samples closer than 100 ms read one
    snapshot of the counters twice) takes none and repeats the last readings."""

    def __init__(self) -> None:
        self.supported: bool | None = None  # None: the query has not answered yet
        self._mig: tuple[Any, int] | None = None  # a MIG instance's GPU and GPU instance id
        self._resolved = False
        self._samples: list[Any] = []
        self._last: int | None = None
        self._last_at: float | None = None  # monotonic, after the last sample's call returned
        self._last_out: list[Reading] | None = None

    def read(self, c: Calls, h: Any) -> list[Reading] | None:
        """This tick's readings in GPM_STATS order; None for a device without GPM."""
        if self.supported is None:
            try:
                self.supported = bool(c(pynvml.nvmlGpmQueryDeviceSupport, h).isSupportedDevice)
            except pynvml.NVMLError as exc:
                if exc.value not in _NO_GPM:
                    return None  # asked again next tick
                self.supported = False
        if not self.supported:
            return None
        na: list[Reading] = [None] * len(GPM_STATS)
        if not self._resolved:
            try:
                parent = c(pynvml.nvmlDeviceGetDeviceHandleFromMigDeviceHandle, h)
            except pynvml.NVMLError as exc:
                if exc.value not in _NOT_MIG:
                    return na
                self._resolved = True  # a whole GPU
            else:
                try:
                    self._mig = (parent, int(c(pynvml.nvmlDeviceGetGpuInstanceId, h)))
                except pynvml.NVMLError:
                    return na
                self._resolved = True
        if not self._samples:
            try:
                self._samples = [c(pynvml.nvmlGpmSampleAlloc), c(pynvml.nvmlGpmSampleAlloc)]
            except pynvml.NVMLError:
                return na
        if self._last_at is not None and self._last_out is not None:
            if time.monotonic() - self._last_at <= GPM_MIN_INTERVAL:
                return list(self._last_out)
        cur = 0 if self._last is None else 1 - self._last
        try:
            if self._mig is None:
                c(pynvml.nvmlGpmSampleGet, h, self._samples[cur])
            else:
                c(pynvml.nvmlGpmMigSampleGet, self._mig[0], self._mig[1], self._samples[cur])
        except pynvml.NVMLError:
            return na  # the last good sample stays: the next interval starts there
        prev, self._last, self._last_at = self._last, cur, time.monotonic()
        self._last_out = out = self._metrics(c, prev, cur)
        return list(out)

    def _metrics(self, c: Calls, prev: int | None, cur: int) -> list[Reading]:
        na: list[Reading] = [None] * len(GPM_STATS)
        if prev is None:
            return na
        get = _metrics_get()
        get.version = pynvml.NVML_GPM_METRICS_GET_VERSION
        get.numMetrics = len(GPM_METRIC_IDS)
        get.sample1, get.sample2 = self._samples[prev], self._samples[cur]
        for k, metric in enumerate(GPM_METRIC_IDS):
            get.metrics[k].metricId = metric
        try:
            c(pynvml.nvmlGpmMetricsGet, get)
        except pynvml.NVMLError:
            return na
        out: list[Reading] = []
        for k in range(len(GPM_METRIC_IDS)):
            m = get.metrics[k]
            if m.nvmlReturn != pynvml.NVML_SUCCESS:
                out.append(None)
            else:
                out.append(gpm_percent(m.value) if _GPM_PERCENT[k] else gpm_mb(m.value))
        return out

    def free(self, c: Calls) -> None:
        samples, self._samples, self._last = self._samples, [], None
        self._last_at = self._last_out = None
        for s in samples:
            try:
                c(pynvml.nvmlGpmSampleFree, s)
            except pynvml.NVMLError:
                pass


class XidCounter:
    """XID critical errors per physical GPU from an event set of the engine's
    own, made the same way as the native engine's (src_rust/stats_core/src/xid.rs):
    a MIG instance counts its parent GPU's XIDs."""

    def __init__(self, event_set: Any) -> None:
        self._set = event_set
        self._counts: dict[int, int] = {}  # GPU handle address -> XIDs; present once registered

    def watch(self, handle: Any, c: Calls) -> int:
        """Registers the GPU of `handle` (itself, or a MIG instance's parent) once; returns its key."""
        try:
            gpu = c(pynvml.nvmlDeviceGetDeviceHandleFromMigDeviceHandle, handle)
        except pynvml.NVMLError as exc:
            # INVALID_ARGUMENT or NOT_SUPPORTED (nvml.h lists both): not a MIG
            # instance, so the GPU itself.
            if exc.value not in _NOT_MIG:
                raise
            gpu = handle
        key = handle_address(gpu)
        if key not in self._counts:
            c(pynvml.nvmlDeviceRegisterEvents, gpu, pynvml.nvmlEventTypeXidCriticalError, self._set)
            self._counts[key] = 0
        return key

    def drain(self, c: Calls) -> None:
        """Takes every waiting event without blocking."""
        for _ in range(MAX_EVENTS_PER_TICK):
            try:
                e = c(pynvml.nvmlEventSetWait_v2, self._set, 0)
            except pynvml.NVMLError:  # NVML_ERROR_TIMEOUT: nothing more waiting
                return
            if e.eventType & pynvml.nvmlEventTypeXidCriticalError:
                key = handle_address(e.device)
                if key in self._counts:
                    self._counts[key] += 1

    def count(self, key: int) -> int | None:
        return self._counts.get(key)

    def close(self, c: Calls) -> None:
        try:
            c(pynvml.nvmlEventSetFree, self._set)
        except pynvml.NVMLError:
            pass


class _Tick:
    """Set once the tick's caller stopped waiting: a tick still running stops at the next GPU."""

    cancelled = False


class PythonStatsEngine:
    def __init__(self, options: EngineOptions = EngineOptions()) -> None:
        self._options = options
        self._calls = options.calls or Executor(options.timeout, max_workers=_OWN_WORKERS, name="stats")
        self._own_calls = options.calls is None
        self._lock = threading.Lock()  # collect() against close() from another thread
        self._groups: list[tuple[str, list[TrackedDevice]]] = []
        # One per distinct UUID, the first tracked device reading it (named in
        # logs), in tracked order: shares of a GPU are read once per tick.
        self._readers: list[TrackedDevice] = []
        self._handles: dict[str, Any] = {}
        self._handle_reported: set[str] = set()
        self._hung_reported: set[str] = set()
        self._fields: bool | None = None
        self._xid: XidCounter | None = None
        self._xid_gpu: dict[str, int] = {}  # UUID -> XidCounter key
        self._xid_reported: set[str] = set()
        self._gpm: dict[str, GpmReader] = {}  # UUID -> its GPM state (extended stats)
        self._ticks = 0
        self._closed = False
        if options.extended:
            try:
                self._xid = XidCounter(self._calls.call(("xid", id(self)), pynvml.nvmlEventSetCreate))
            except (pynvml.NVMLError, CallTimeout) as exc:
                log.warning("XID events unavailable (%s); XID counts read N/A", exc)

    def track(self, devices: Sequence[TrackedDevice]) -> None:
        # Same order and de-duplication as the native engine: groups by name,
        # devices by ID, the first of a repeated ID kept. The XID registrations
        # run on the devices' lanes under the tick deadline; one not done by then
        # is made as part of a later read of that device.
        by_group: dict[str, dict[str, TrackedDevice]] = {}
        for d in devices:
            by_group.setdefault(d.group, {}).setdefault(d.device_id, d)
        groups = [(g, [devs[k] for k in sorted(devs)]) for g, devs in sorted(by_group.items())]
        readers: dict[str, TrackedDevice] = {}
        for _, group_devices in groups:
            for d in group_devices:
                readers.setdefault(d.uuid, d)
        uuids = set(readers)
        with self._lock:
            self._groups = groups
            self._readers = list(readers.values())
            self._xid_gpu = {u: k for u, k in self._xid_gpu.items() if u in uuids}
            self._xid_reported &= uuids
            if self._xid is None:
                return
            deadline = time.monotonic() + self._options.timeout
            pending = [d for d in self._readers if d.uuid not in self._xid_gpu]

            def register(c: Calls) -> None:
                for d in pending:
                    if time.monotonic() >= deadline or not c.hold(d.lane, deadline):
                        continue  # registered by a later read
                    try:
                        h = self._handle(c, d)
                        if h is not None:
                            self._watch_xid(c, d, h)
                    finally:
                        c.release(d.lane)

            if pending:
                self._calls.wait_until(self._calls.submit(("stats", id(self), "track"), register), deadline)

    def _watch_xid(self, c: Calls, d: TrackedDevice, h: Any) -> None:
        """Registers the GPU of `d` for XIDs once (inside its read, under the deadline)."""
        if self._xid is None or d.uuid in self._xid_gpu:
            return
        try:
            self._xid_gpu[d.uuid] = self._xid.watch(h, c)
        except pynvml.NVMLError as exc:
            if d.uuid not in self._xid_reported:
                self._xid_reported.add(d.uuid)
                log.warning("device %s: cannot watch XID events (%s); its XID count reads N/A", d.device_id, exc)

    def collect(self) -> bytes:
        with self._lock:
            if self._closed:
                raise RuntimeError("stats engine is closed")
            return self._collect()

    def _collect(self) -> bytes:
        now = time.time_ns()
        deadline = time.monotonic() + self._options.timeout
        resp = device_pb2.StatsResponse()
        xid, readers = self._xid, self._readers
        read: dict[str, device_pb2.DeviceStats] = {}
        tick = _Tick()
        xid_lane = ("xid", id(self))

        # The whole tick is one job, reading the GPUs one after another (threads
        # would only fight over the GIL), each while holding its lane: a GPU
        # busy elsewhere, or blocked since an earlier tick, is skipped.
        def work(c: Calls) -> None:
            if xid is not None and readers and c.hold(xid_lane, deadline):
                try:  # before the reads, which take the counts; skipped while a drain is blocked
                    xid.drain(c)
                finally:
                    c.release(xid_lane)
            for d in readers:
                if tick.cancelled:
                    return
                # The physical GPU's lane: a MIG instance's read waits for its siblings'
                # and none follows a read stuck on their GPU.
                if not c.hold(d.lane, deadline):
                    continue
                try:
                    stats = self._stats(c, d)
                finally:
                    c.release(d.lane)
                if not tick.cancelled:
                    read[d.uuid] = stats

        self._ticks += 1
        job = self._calls.submit(("stats", id(self), self._ticks), work, what="the python stats engine's read")
        self._calls.wait_until(job, deadline)
        tick.cancelled = True  # a tick still running stops at the next GPU
        for d in readers:
            if d.uuid in read:
                if d.uuid in self._hung_reported:
                    self._hung_reported.discard(d.uuid)
                    log.info("device %s answers again", d.device_id)
                continue
            if d.uuid not in self._hung_reported:
                self._hung_reported.add(d.uuid)
                log.warning(
                    "device %s did not answer NVML within %gs; its stats read N/A until it does",
                    d.device_id,
                    self._options.timeout,
                )
            read[d.uuid] = self._unavailable(d.uuid)
        for name, devices in self._groups:
            group = resp.groups.add(vendor=VENDOR, type=DEVICE_TYPE, name=name)
            for d in devices:
                ds = group.instance_stats[d.device_id]
                ds.CopyFrom(read[d.uuid])
                ds.timestamp.seconds, ds.timestamp.nanos = divmod(now, 1_000_000_000)
        data: bytes = resp.SerializeToString()
        return data

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._groups = []
            lanes = {d.uuid: d.lane for d in self._readers}
            self._readers = []
            self._handles.clear()
            xid, self._xid = self._xid, None
            gpm, self._gpm = self._gpm, {}
        # Each device's sample buffers are freed on its lane, so never under a read
        # still in progress there (a device whose lane is busy keeps its two buffers).
        deadline = time.monotonic() + self._options.timeout

        def free(c: Calls) -> None:
            for uuid, reader in gpm.items():
                lane = lanes.get(uuid, uuid)
                if c.hold(lane, deadline):
                    try:
                        reader.free(c)
                    finally:
                        c.release(lane)

        try:
            if gpm:
                self._calls.wait_until(self._calls.submit(("stats", id(self), "close"), free), deadline)
        except RunnerClosed:  # the plugin is shutting down: the process frees them
            pass
        if xid is not None:
            try:
                self._calls.run(("xid", id(self)), xid.close)
            except Exception as exc:  # a drain still blocked, or the runner shut down
                log.debug("freeing the XID event set skipped: %s", exc)
        if self._own_calls:
            self._calls.close()

    def _handle(self, c: Calls, d: TrackedDevice) -> Any:
        h = self._handles.get(d.uuid)
        if h is not None:
            return h
        try:
            h = c(pynvml.nvmlDeviceGetHandleByUUID, d.uuid)
        except pynvml.NVMLError as exc:
            if d.uuid not in self._handle_reported:
                self._handle_reported.add(d.uuid)
                log.warning("device %s: no NVML handle for UUID %s (%s); its stats read N/A", d.device_id, d.uuid, exc)
            return None
        self._handle_reported.discard(d.uuid)
        self._handles[d.uuid] = h
        return h

    def _unavailable(self, uuid: str = "") -> device_pb2.DeviceStats:
        """Every value N/A; a GPU known to have GPM keeps its GPM stats (as N/A)."""
        reader = self._gpm.get(uuid)
        gpm: list[Reading] | None = [None] * len(GPM_STATS) if reader is not None and reader.supported else None
        return self._assemble({}, gpm)

    def _stats(self, c: Calls, d: TrackedDevice) -> device_pb2.DeviceStats:
        """One read of the GPU `d` names (by its UUID)."""
        h = self._handle(c, d)
        readings = self._read(c, h) if h is not None else {}
        gpm: list[Reading] | None = None
        if h is not None and self._options.extended:
            gpm = self._gpm.setdefault(d.uuid, GpmReader()).read(c, h)
        if h is not None:
            self._watch_xid(c, d, h)
        xid = self._xid
        if xid is not None and d.uuid in self._xid_gpu:
            readings[XID_COUNT.name] = xid.count(self._xid_gpu[d.uuid])
        return self._assemble(readings, gpm)

    def _assemble(self, readings: dict[str, Reading], gpm: list[Reading] | None = None) -> device_pb2.DeviceStats:
        ds = device_pb2.DeviceStats()
        attrs = ds.stats.attributes
        for stat in STANDARD:
            attrs[stat.name].CopyFrom(stat_value(stat, readings.get(stat.name)))
        ds.summary.CopyFrom(attrs[SUMMARY.name])
        if self._options.extended:
            nested = ds.stats.nested
            for topic, stats in EXTENDED:
                obj = nested[topic]
                for stat in stats:
                    obj.attributes[stat.name].CopyFrom(stat_value(stat, readings.get(stat.name)))
            if gpm is not None:
                obj = nested[GPM]
                for stat, reading in zip(GPM_STATS, gpm):
                    obj.attributes[stat.name].CopyFrom(stat_value(stat, reading))
        return ds

    def _read(self, c: Calls, h: Any) -> dict[str, Reading]:
        r: dict[str, Reading] = {MEMORY.name: _memory(c, h)}
        util = _try(c, pynvml.nvmlDeviceGetUtilizationRates, h)
        if util is not None:
            r[GPU_UTIL.name], r[MEM_UTIL.name] = util.gpu, util.memory
        enc = _try(c, pynvml.nvmlDeviceGetEncoderUtilization, h)
        r[ENC_UTIL.name] = None if enc is None else enc[0]
        dec = _try(c, pynvml.nvmlDeviceGetDecoderUtilization, h)
        r[DEC_UTIL.name] = None if dec is None else dec[0]
        r[TEMPERATURE.name] = _try(c, pynvml.nvmlDeviceGetTemperature, h, pynvml.NVML_TEMPERATURE_GPU)
        r[POWER.name] = _power(c, h)
        r[BAR1.name] = _bar1(c, h)
        extended = self._options.extended
        if not (self._use_fields() and self._read_fields(c, h, r)):
            ecc = _try(
                c, pynvml.nvmlDeviceGetDetailedEccErrors, h, pynvml.NVML_MEMORY_ERROR_TYPE_CORRECTED, pynvml.NVML_VOLATILE_ECC
            )
            if ecc is not None:
                r[ECC_L1.name], r[ECC_L2.name], r[ECC_DEVICE.name] = ecc.l1Cache, ecc.l2Cache, ecc.deviceMemory
            if extended:
                r[TOTAL_ENERGY.name] = _try(c, pynvml.nvmlDeviceGetTotalEnergyConsumption, h)
        if extended:
            r[SM_CLOCK.name] = _try(c, pynvml.nvmlDeviceGetClockInfo, h, pynvml.NVML_CLOCK_SM)
            r[MEM_CLOCK.name] = _try(c, pynvml.nvmlDeviceGetClockInfo, h, pynvml.NVML_CLOCK_MEM)
            r[PCIE_TX.name] = _try(c, pynvml.nvmlDeviceGetPcieThroughput, h, pynvml.NVML_PCIE_UTIL_TX_BYTES)
            r[PCIE_RX.name] = _try(c, pynvml.nvmlDeviceGetPcieThroughput, h, pynvml.NVML_PCIE_UTIL_RX_BYTES)
            r[THROTTLE_REASONS.name] = _try(c, pynvml.nvmlDeviceGetCurrentClocksEventReasons, h)
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

    def _read_fields(self, c: Calls, h: Any, r: dict[str, Reading]) -> bool:
        """The batched read; False when NVML cannot answer field values at all."""
        ids = [FI_ECC_SBE_VOL_L1, FI_ECC_SBE_VOL_L2, FI_ECC_SBE_VOL_DEV]
        if self._options.extended:
            ids.append(FI_TOTAL_ENERGY)
        try:
            values = c(pynvml.nvmlDeviceGetFieldValues, h, ids)
        except pynvml.NVMLError as exc:
            return exc.value not in _BATCH_FALLBACK
        r[ECC_L1.name], r[ECC_L2.name], r[ECC_DEVICE.name] = (field_int(v) for v in values[:3])
        if self._options.extended:
            r[TOTAL_ENERGY.name] = field_int(values[3])
        return True

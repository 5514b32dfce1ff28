"""Enumerate GPUs and MIG instances over NVML: the devices and their attributes.

The attribute names and units below are HashiCorp's plugin's, then ours
(grouping.py turns the devices into Nomad's device groups). A device whose
reads fail is kept (from the previous scan when possible) and reported with
the failure, so one bad GPU never hides the others.
"""

from __future__ import annotations

import ctypes
import logging
import re
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import pynvml

from nomad_device_nvidia.nvidia.nvml.executor import Calls, direct
from nomad_device_nvidia.nvidia.nvml.fields import field_int
from nomad_device_nvidia.sdk import Attribute

log = logging.getLogger(__name__)

VENDOR = "nvidia"
DEVICE_TYPE = "gpu"
NOT_AVAILABLE = "N/A"

# Attribute names (HashiCorp's first, then ours) and units.
MEMORY = "memory"
POWER = "power"
BAR1 = "bar1"
DRIVER_VERSION = "driver_version"
CORES_CLOCK = "cores_clock"
MEMORY_CLOCK = "memory_clock"
PCI_BANDWIDTH = "pci_bandwidth"
DISPLAY_STATE = "display_state"
PERSISTENCE_MODE = "persistence_mode"
COMPUTE_CAPABILITY = "compute_capability"
ARCHITECTURE = "architecture"
CUDA_DRIVER_VERSION = "cuda_driver_version"
NUMA_NODE = "numa_node"
MIG_PROFILE = "mig_profile"
PARENT_UUID = "parent_uuid"
SHARES = "shares"
FABRIC_CLUSTER_UUID = "fabric_cluster_uuid"
FABRIC_CLIQUE = "fabric_clique"
NVLINK_LINKS = "nvlink_links"
NVLINK_BANDWIDTH = "nvlink_bandwidth"

MIB = "MiB"
WATT = "W"
MHZ = "MHz"
MB_PER_S = "MB/s"

_ARCHITECTURES = {
    2: "kepler",
    3: "maxwell",
    4: "pascal",
    5: "volta",
    6: "turing",
    7: "ampere",
    8: "ada",
    9: "hopper",
    10: "blackwell",
    13: "rubin",
}

# MB/s per PCIe lane by generation, as HashiCorp's plugin computes pci_bandwidth.
_PCIE_LANE_MB_PER_S = {1: 256, 2: 512, 3: 1024, 4: 2048, 5: 3072, 6: 4096}

# Calls answering these simply do not know the value (the attribute is left out,
# the health check skipped); the one definition both modules use.
UNSUPPORTED_CODES = frozenset({pynvml.NVML_ERROR_NOT_SUPPORTED, pynvml.NVML_ERROR_FUNCTION_NOT_FOUND})
# Codes that mean the GPU itself is gone or must be reset.
LOST_CODES = frozenset({pynvml.NVML_ERROR_GPU_IS_LOST, pynvml.NVML_ERROR_RESET_REQUIRED})
_NO_MIG_AT_INDEX = frozenset({pynvml.NVML_ERROR_NOT_FOUND, pynvml.NVML_ERROR_INVALID_ARGUMENT})

T = TypeVar("T")

# nvmlGpuFabricState_t
FABRIC_NOT_SUPPORTED = 0
FABRIC_NOT_STARTED = 1
FABRIC_IN_PROGRESS = 2
FABRIC_COMPLETED = 3
_FABRIC_STATES = {FABRIC_NOT_STARTED: "not started", FABRIC_IN_PROGRESS: "in progress"}
# The fabric health mask's fields (shift, width) and the value of each that means trouble.
_FABRIC_MASK_TRUE = 1
_FABRIC_MASK_PROBLEMS = (
    (0, 0x3, "bandwidth degraded"),
    (2, 0x3, "route recovery in progress"),
    (4, 0x3, "route unhealthy"),
    (6, 0x3, "access timeout recovery in progress"),
)
_FABRIC_CONFIG_SHIFT, _FABRIC_CONFIG_WIDTH = 8, 0xF
_FABRIC_CONFIG_PROBLEMS = {
    2: "incorrect system GUID",
    3: "incorrect chassis serial number",
    4: "no partition",
    5: "insufficient NVLinks",
    6: "incompatible GPU firmware",
    7: "invalid location",
    8: "GPU state invalid",
}
# NVML_FI_DEV_NVLINK_LINK_COUNT, NVML_FI_DEV_NVLINK_SPEED_MBPS_COMMON
_FI_NVLINK_LINK_COUNT = 91
_FI_NVLINK_SPEED_MBPS_COMMON = 90


@dataclass(frozen=True)
class GpuDevice:
    """One schedulable physical unit: a whole GPU, or a MIG instance."""

    id: str  # GPU UUID or MIG instance UUID
    name: str
    pci_bus_id: str
    slot: tuple[int, int]  # (GPU index, MIG index or -1): where the next scan finds it again
    attributes: Mapping[str, Attribute]  # the group-level ones, identical within a group
    numa_node: int | None = None
    parent_uuid: str = ""
    minor: int | None = None  # /dev/nvidia<minor> of the physical GPU
    gpu_instance_id: int | None = None
    compute_instance_id: int | None = None

    @property
    def physical_uuid(self) -> str:
        return self.parent_uuid or self.id


@dataclass(frozen=True)
class ScanFailure:
    """A read that failed; `lost` when NVML says the GPU is gone or needs a reset."""

    description: str
    lost: bool


@dataclass(frozen=True)
class Inventory:
    driver_version: str
    cuda_driver_version: str
    devices: tuple[GpuDevice, ...]
    # Devices whose reads failed in the scan that produced this inventory.
    failures: Mapping[str, ScanFailure] = field(default_factory=dict)
    # The whole enumeration failed (count or driver version); devices are the previous ones.
    fatal: str = ""


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        value = value.decode(errors="replace")
    return str(value).rstrip("\x00").strip()


def _optional(c: Calls, fn: Callable[..., T], *args: Any) -> T | None:
    """The value, or None when NVML cannot tell (other errors propagate)."""
    try:
        return c(fn, *args)
    except pynvml.NVMLError as exc:
        if exc.value in UNSUPPORTED_CODES:
            log.debug("%s not supported here; that attribute is left out", getattr(fn, "__name__", fn))
            return None
        raise


def failure_of(exc: pynvml.NVMLError) -> ScanFailure:
    if exc.value in LOST_CODES:
        return ScanFailure(f"GPU is lost or needs a reset (NVML: {exc})", True)
    return ScanFailure(f"NVML error: {exc}", False)


def cuda_version_text(raw: int) -> str:
    return f"{raw // 1000}.{(raw % 1000) // 10}"


def pcie_bandwidth(generation: int, width: int) -> int:
    return _PCIE_LANE_MB_PER_S.get(generation, 0) * width


def _mig_profile(c: Calls, name: str, mig_handle: Any) -> str | None:
    marker = " MIG "
    if marker in name:
        return name.rsplit(marker, 1)[1].strip()
    attrs = _optional(c, pynvml.nvmlDeviceGetAttributes, mig_handle)
    if attrs is None:
        return None
    return f"{attrs.gpuInstanceSliceCount}g.{round(attrs.memorySizeMB / 1024)}gb"


def _gpu_attributes(c: Calls, gpu: Any, notices: Notices) -> dict[str, Attribute]:
    """Attributes read from the physical GPU (for a MIG instance, its parent)."""
    attrs: dict[str, Attribute] = {}
    # Power limit, not the momentary draw: a fingerprint attribute must not change
    # with load (HashiCorp's plugin reports 0 where NVML cannot tell; so do we).
    power = _optional(c, pynvml.nvmlDeviceGetPowerManagementLimit, gpu)
    attrs[POWER] = Attribute(int(power or 0) // 1000, WATT)
    bar1 = _optional(c, pynvml.nvmlDeviceGetBAR1MemoryInfo, gpu)
    if bar1 is not None:  # unified-memory parts (GH200) have no BAR1
        attrs[BAR1] = Attribute(int(bar1.bar1Total) // 2**20, MIB)
    gen = _optional(c, pynvml.nvmlDeviceGetMaxPcieLinkGeneration, gpu) or 0
    width = _optional(c, pynvml.nvmlDeviceGetMaxPcieLinkWidth, gpu) or 0
    attrs[PCI_BANDWIDTH] = Attribute(pcie_bandwidth(int(gen), int(width)), MB_PER_S)
    # Max clocks: the current ones drop at idle and would churn the fingerprint.
    for key, clock in ((CORES_CLOCK, pynvml.NVML_CLOCK_GRAPHICS), (MEMORY_CLOCK, pynvml.NVML_CLOCK_MEM)):
        mhz = _optional(c, pynvml.nvmlDeviceGetMaxClockInfo, gpu, clock)
        if mhz is not None:
            attrs[key] = Attribute(int(mhz), MHZ)
    # HashiCorp's plugin prints these NVML enable states as numbers ("0"/"1").
    display = _optional(c, pynvml.nvmlDeviceGetDisplayMode, gpu)
    attrs[DISPLAY_STATE] = Attribute(NOT_AVAILABLE if display is None else str(int(display)))
    persistence = _optional(c, pynvml.nvmlDeviceGetPersistenceMode, gpu)
    attrs[PERSISTENCE_MODE] = Attribute(NOT_AVAILABLE if persistence is None else str(int(persistence)))
    cc = _optional(c, pynvml.nvmlDeviceGetCudaComputeCapability, gpu)
    if cc is not None:
        attrs[COMPUTE_CAPABILITY] = Attribute(f"{cc[0]}.{cc[1]}")
    arch = _optional(c, pynvml.nvmlDeviceGetArchitecture, gpu)
    if arch is not None and int(arch) in _ARCHITECTURES:
        attrs[ARCHITECTURE] = Attribute(_ARCHITECTURES[int(arch)])
    _nvlink_attributes(c, gpu, attrs)
    fabric = read_fabric(c, gpu, notices)
    # Only once the fabric manager has registered the GPU: before that NVML has no
    # cluster or clique for it (and the GPU is unhealthy, see health/probes.py).
    if fabric is not None and fabric.ready:
        attrs[FABRIC_CLUSTER_UUID] = Attribute(fabric.cluster_uuid)
        attrs[FABRIC_CLIQUE] = Attribute(fabric.clique)
    return attrs


def _nvlink_attributes(c: Calls, gpu: Any, attrs: dict[str, Attribute]) -> None:
    """NVLink links present and their bandwidth (links x the common link speed), when NVML reports them."""
    try:
        links, speed = c(pynvml.nvmlDeviceGetFieldValues, gpu, [_FI_NVLINK_LINK_COUNT, _FI_NVLINK_SPEED_MBPS_COMMON])
    except pynvml.NVMLError as exc:
        if exc.value in UNSUPPORTED_CODES:
            return
        raise
    n = field_int(links)
    if not n:
        return
    attrs[NVLINK_LINKS] = Attribute(n)
    mbps = field_int(speed)
    if mbps:
        attrs[NVLINK_BANDWIDTH] = Attribute(n * mbps, MB_PER_S)


@dataclass(frozen=True)
class FabricInfo:
    """A GPU's registration with the NVLink fabric manager (nvmlDeviceGetGpuFabricInfoV)."""

    state: int  # FABRIC_*
    status: int  # the registration's NVML return code (meaningful once completed)
    cluster_uuid: str  # "" until assigned
    clique: int
    health_mask: int | None  # None: only the unversioned call answered (no mask)

    @property
    def ready(self) -> bool:
        return self.state == FABRIC_COMPLETED and self.status == pynvml.NVML_SUCCESS and bool(self.cluster_uuid)

    def problem(self) -> str:
        """What keeps the GPU from NVLink work, "" when nothing does."""
        if self.state != FABRIC_COMPLETED:
            return f"NVLink fabric not ready: {_FABRIC_STATES.get(self.state, f'state {self.state}')}"
        if self.status != pynvml.NVML_SUCCESS:
            return f"NVLink fabric registration failed ({_error_name(self.status)})"
        if self.health_mask is None:
            return ""
        problems = [
            what
            for shift, width, what in _FABRIC_MASK_PROBLEMS
            if (self.health_mask >> shift) & width == _FABRIC_MASK_TRUE
        ]
        config = (self.health_mask >> _FABRIC_CONFIG_SHIFT) & _FABRIC_CONFIG_WIDTH
        if config > 1:  # 0: not reported, 1: correct
            problems.append(f"incorrect configuration ({_FABRIC_CONFIG_PROBLEMS.get(config, config)})")
        return f"NVLink fabric unhealthy: {', '.join(problems)}" if problems else ""


def _error_name(code: int) -> str:
    """An NVML return code by its name (no NVML call: the names are pynvml's constants)."""
    for name in dir(pynvml):
        if name.startswith("NVML_ERROR_") and getattr(pynvml, name) == code:
            return name
    return f"NVML error {code}"


def _uuid_text(raw: bytes) -> str:
    # uuid.UUID(bytes=raw)'s text; the uuid module would load platform at start-up.
    if len(raw) != 16:
        raise ValueError(f"a UUID is 16 bytes, got {len(raw)}")
    h = raw.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def read_fabric(c: Calls, gpu: Any, notices: Notices | None = None) -> FabricInfo | None:
    """The GPU's NVLink fabric registration; None where NVML reports no fabric
    (before Hopper, or a GPU in none). `notices` hears that the fabric's health cannot
    be read on this driver; None for a caller that leaves saying it to the scan (the probes)."""
    mask: int | None
    try:
        info: Any = pynvml.c_nvmlGpuFabricInfo_v2_t()
        c(pynvml.nvmlDeviceGetGpuFabricInfoV, gpu, ctypes.byref(info))
        mask = int(info.healthMask)
    except pynvml.NVMLError as exc:
        if exc.value != pynvml.NVML_ERROR_FUNCTION_NOT_FOUND:
            if exc.value in UNSUPPORTED_CODES:
                return None
            raise
        # A driver older than the versioned call.
        info = pynvml.c_nvmlGpuFabricInfo_t()
        try:
            c(pynvml.nvmlDeviceGetGpuFabricInfo, gpu, ctypes.byref(info))
        except pynvml.NVMLError as exc2:
            if exc2.value in UNSUPPORTED_CODES:
                return None
            raise
        mask = None
    # The state is one byte in nvml.h, padded; pynvml reads four.
    state = int(info.state) & 0xFF
    if state == FABRIC_NOT_SUPPORTED:
        return None
    if mask is None and notices is not None:
        notices.once(
            "fabric_health",
            "NVLink fabric health is not checked: this NVIDIA driver lacks nvmlDeviceGetGpuFabricInfoV "
            "(branch 550 and later have it); the fabric's state and registration still come from "
            "nvmlDeviceGetGpuFabricInfo",
        )
    raw = bytes(info.clusterUuid)
    return FabricInfo(
        state=state,
        status=int(info.status),
        cluster_uuid=_uuid_text(raw) if any(raw) else "",
        clique=int(info.cliqueId),
        health_mask=mask,
    )


@dataclass(frozen=True)
class _GpuFacts:
    uuid: str
    pci_bus_id: str
    attributes: Mapping[str, Attribute]
    numa_node: int | None
    minor: int | None


class Notices:
    """Things this driver cannot report, each logged once by whoever owns this object
    (the device watch: once per plugin, not once per scan). Thread-safe: GPUs are
    scanned in parallel."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._told: set[str] = set()

    def once(self, key: str, message: str) -> None:
        with self._lock:
            if key in self._told:
                return
            self._told.add(key)
        log.warning("%s", message)


# Nodes asked of nvmlDeviceGetMemoryAffinity: 64 words of 64 bits, Linux's MAX_NUMNODES at most.
_NODE_SET_WORDS = 64


# NVML's busId: "DDDDDDDD:BB:DD.F" (32-bit domain, 8 hex digits), upper case.
_PCI_ADDRESS = re.compile(r"(?:([0-9a-fA-F]{1,8}):)?([0-9a-fA-F]{1,2}):([0-9a-fA-F]{1,2})\.([0-7])")


def sysfs_bus_id(nvml_bus_id: str) -> str:
    """NVML's PCI bus ID ("00000000:2A:00.0") as the kernel names it in sysfs ("0000:2a:00.0").

    Nomad's NUMA-aware scheduling looks an instance's HwLocality.PciBusID up
    among the entry names of /sys/bus/pci/devices (client/lib/numalib), which
    the kernel writes as "%04x:%02x:%02x.%d"; Nomad's equalBusID forgives the
    domain's leading zeros but not upper-case hex. An ID that is not a PCI
    address is passed on lower-cased, the nearest guess.
    """
    text = nvml_bus_id.strip()
    m = _PCI_ADDRESS.fullmatch(text)
    if m is None:
        return text.lower()
    domain, bus, device, function = m.groups()
    return f"{int(domain or '0', 16):04x}:{int(bus, 16):02x}:{int(device, 16):02x}.{function}"


def _sysfs_numa_node(pci_bus_id: str) -> int | None:
    """The node Linux gives the GPU's PCI function."""
    if not pci_bus_id:
        return None
    try:
        with open(f"/sys/bus/pci/devices/{sysfs_bus_id(pci_bus_id)}/numa_node") as f:
            node = int(f.read().strip())
    except (OSError, ValueError):
        return None
    return node if node >= 0 else None


def _numa_node(c: Calls, gpu: Any, pci_bus_id: str, notices: Notices) -> int | None:
    """The GPU's NUMA node: nvmlDeviceGetNumaNodeId, or where the driver predates it (535),
    the one node of nvmlDeviceGetMemoryAffinity at node scope, else Linux's sysfs."""
    try:
        numa = int(c(pynvml.nvmlDeviceGetNumaNodeId, gpu))
        return numa if numa >= 0 else None
    except pynvml.NVMLError as exc:
        if exc.value != pynvml.NVML_ERROR_FUNCTION_NOT_FOUND:
            if exc.value in UNSUPPORTED_CODES:
                return None
            raise
    words = _optional(c, pynvml.nvmlDeviceGetMemoryAffinity, gpu, _NODE_SET_WORDS, pynvml.NVML_AFFINITY_SCOPE_NODE)
    if words is not None:
        nodes = [i * 64 + b for i, w in enumerate(words) for b in range(64) if int(w) >> b & 1]
        if len(nodes) == 1:
            return nodes[0]
    node = _sysfs_numa_node(pci_bus_id)
    if node is None:
        notices.once(
            NUMA_NODE,
            "numa_node is not reported: this NVIDIA driver lacks nvmlDeviceGetNumaNodeId (branch 550 and "
            "later have it), and neither nvmlDeviceGetMemoryAffinity nor /sys/bus/pci/devices/*/numa_node "
            "names one node for the GPUs; group_by = [\"numa_node\"] cannot split them",
        )
    return node


def _gpu_facts(c: Calls, gpu: Any, uuid: str, notices: Notices) -> _GpuFacts:
    pci = _optional(c, pynvml.nvmlDeviceGetPciInfo, gpu)
    bus_id = _text(pci.busId) if pci is not None else ""
    minor = _optional(c, pynvml.nvmlDeviceGetMinorNumber, gpu)
    return _GpuFacts(
        uuid=uuid,
        pci_bus_id=bus_id,
        attributes=_gpu_attributes(c, gpu, notices),
        numa_node=_numa_node(c, gpu, bus_id, notices),
        minor=int(minor) if minor is not None else None,
    )


def _memory_mib(c: Calls, handle: Any) -> int:
    info = _optional(c, pynvml.nvmlDeviceGetMemoryInfo, handle)
    if info is None:
        # No dedicated memory (an integrated GPU such as GB10): it uses the host's.
        return host_memory().total // 2**20
    return int(info.total) // 2**20


def _read_gpu(c: Calls, handle: Any, uuid: str, index: int, facts: _GpuFacts) -> GpuDevice:
    attrs = dict(facts.attributes)
    attrs[MEMORY] = Attribute(_memory_mib(c, handle), MIB)
    return GpuDevice(
        id=uuid,
        name=_text(_optional(c, pynvml.nvmlDeviceGetName, handle) or "") or NOT_AVAILABLE,
        pci_bus_id=facts.pci_bus_id,
        slot=(index, -1),
        attributes=attrs,
        numa_node=facts.numa_node,
        minor=facts.minor,
    )


def _read_mig(c: Calls, mig: Any, uuid: str, slot: tuple[int, int], facts: _GpuFacts) -> GpuDevice:
    name = _text(_optional(c, pynvml.nvmlDeviceGetName, mig) or "") or NOT_AVAILABLE
    attrs = dict(facts.attributes)
    attrs[MEMORY] = Attribute(_memory_mib(c, mig), MIB)
    profile = _mig_profile(c, name, mig)
    if profile:
        attrs[MIG_PROFILE] = Attribute(profile)
    gi = _optional(c, pynvml.nvmlDeviceGetGpuInstanceId, mig)
    ci = _optional(c, pynvml.nvmlDeviceGetComputeInstanceId, mig)
    return GpuDevice(
        id=uuid,
        name=name,
        pci_bus_id=facts.pci_bus_id,
        slot=slot,
        attributes=attrs,
        numa_node=facts.numa_node,
        parent_uuid=facts.uuid,
        minor=facts.minor,
        gpu_instance_id=None if gi is None else int(gi),
        compute_instance_id=None if ci is None else int(ci),
    )


def _mig_enabled(c: Calls, gpu: Any) -> bool:
    mode = _optional(c, pynvml.nvmlDeviceGetMigMode, gpu)
    return mode is not None and bool(mode[0] == pynvml.NVML_DEVICE_MIG_ENABLE)


@dataclass
class GpuScan:
    """What one GPU's part of a scan found: its devices and the reads that failed."""

    devices: list[GpuDevice] = field(default_factory=list)
    failures: dict[str, ScanFailure] = field(default_factory=dict)

    def keep_previous(self, failure: ScanFailure, devices: Iterable[GpuDevice], where: str) -> None:
        kept = list(devices)
        for dev in kept:
            self.devices.append(dev)
            self.failures[dev.id] = failure
        if not kept:
            log.warning("NVML read failed for %s, not seen before, skipped until it answers: %s", where, failure.description)


def scan_gpu(c: Calls, index: int, prior: Sequence[GpuDevice], notices: Notices | None = None) -> GpuScan:
    """Read GPU `index` and its MIG instances; `prior` are its devices in the last scan.
    `notices` says once what this driver cannot report (None: a fresh one, for this GPU alone)."""
    notices = Notices() if notices is None else notices
    out = GpuScan()
    by_slot = {dev.slot: dev for dev in prior}
    uuid = ""
    try:
        gpu = c(pynvml.nvmlDeviceGetHandleByIndex, index)
        uuid = _text(c(pynvml.nvmlDeviceGetUUID, gpu))
        facts = _gpu_facts(c, gpu, uuid, notices)
        if not _mig_enabled(c, gpu):
            out.devices.append(_read_gpu(c, gpu, uuid, index, facts))
            return out
        count = int(c(pynvml.nvmlDeviceGetMaxMigDeviceCount, gpu))
    except pynvml.NVMLError as exc:
        out.keep_previous(failure_of(exc), prior, f"GPU {uuid or index}")
        return out
    for j in range(count):
        mig_uuid = ""
        try:
            mig = c(pynvml.nvmlDeviceGetMigDeviceHandleByIndex, gpu, j)
        except pynvml.NVMLError as exc:
            if exc.value in _NO_MIG_AT_INDEX:
                continue
            kept = [by_slot[(index, j)]] if (index, j) in by_slot else []
            out.keep_previous(failure_of(exc), kept, f"MIG instance {j} of {uuid}")
            continue
        try:
            mig_uuid = _text(c(pynvml.nvmlDeviceGetUUID, mig))
            out.devices.append(_read_mig(c, mig, mig_uuid, (index, j), facts))
        except pynvml.NVMLError as exc:
            where = f"MIG instance {mig_uuid or j} of {uuid}"
            kept = [by_slot[(index, j)]] if (index, j) in by_slot else []
            out.keep_previous(failure_of(exc), kept, where)
    return out


@dataclass(frozen=True)
class SystemInfo:
    driver_version: str
    cuda_driver_version: str
    count: int


def read_system(c: Calls) -> SystemInfo:
    """Driver version and GPU count; raises pynvml.NVMLError when NVML cannot enumerate."""
    driver = _text(c(pynvml.nvmlSystemGetDriverVersion))
    count = int(c(pynvml.nvmlDeviceGetCount))
    try:
        cuda_raw = _optional(c, pynvml.nvmlSystemGetCudaDriverVersion)
    except pynvml.NVMLError:
        cuda_raw = None
    return SystemInfo(driver, cuda_version_text(int(cuda_raw)) if cuda_raw else "", count)


def failed_enumeration(previous: Inventory | None, fatal: str, failure: ScanFailure) -> Inventory:
    """The previous devices, every one marked with `failure` (worded as a probe words it,
    so the description does not change between scans and probes); `fatal` is for the log."""
    devices = previous.devices if previous else ()
    return Inventory(
        driver_version=previous.driver_version if previous else "",
        cuda_driver_version=previous.cuda_driver_version if previous else "",
        devices=devices,
        failures={d.id: failure for d in devices},
        fatal=fatal,
    )


def assemble(system: SystemInfo, parts: Iterable[GpuScan]) -> Inventory:
    """One inventory from the GPUs' parts, in index order."""
    failures: dict[str, ScanFailure] = {}
    # A UUID can only appear once; a broken driver repeating one must not make Nomad see it twice.
    seen: set[str] = set()
    unique = []
    for part in parts:
        failures.update(part.failures)
        for dev in part.devices:
            if dev.id in seen:
                log.warning("NVML reported device %s twice; keeping the first", dev.id)
                continue
            seen.add(dev.id)
            unique.append(dev)
    return Inventory(
        driver_version=system.driver_version,
        cuda_driver_version=system.cuda_driver_version,
        devices=tuple(unique),
        failures={k: v for k, v in failures.items() if k in seen},
    )


def prior_by_index(previous: Inventory | None) -> dict[int, list[GpuDevice]]:
    out: dict[int, list[GpuDevice]] = {}
    if previous is not None:
        for dev in previous.devices:
            out.setdefault(dev.slot[0], []).append(dev)
    return out


def scan(previous: Inventory | None, c: Calls = direct, notices: Notices | None = None) -> Inventory:
    """Read every GPU and MIG instance, one after another. NVML must be initialised.

    Never raises for NVML errors: a failed read keeps the device from
    `previous` (same GPU/MIG index) and records the failure. The plugin runs
    the same steps under deadlines, one GPU per lane (device_watch.py).
    """
    try:
        system = read_system(c)
    except pynvml.NVMLError as exc:
        return failed_enumeration(previous, f"NVML enumeration failed ({exc})", failure_of(exc))
    prior = prior_by_index(previous)
    notices = Notices() if notices is None else notices
    return assemble(system, (scan_gpu(c, i, prior.get(i, []), notices) for i in range(system.count)))


def host_memory() -> HostMemory:
    """The host's memory from /proc/meminfo (zeros when it cannot be read)."""
    values: dict[str, int] = {}
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                key, _, rest = line.partition(":")
                if key in ("MemTotal", "MemAvailable"):
                    values[key] = int(rest.split()[0]) * 1024
    except (OSError, ValueError, IndexError) as exc:
        log.warning("cannot read the host's memory from /proc/meminfo: %s", exc)
    return HostMemory(total=values.get("MemTotal", 0), available=values.get("MemAvailable", 0))


@dataclass(frozen=True)
class HostMemory:
    total: int  # bytes
    available: int

    @property
    def used(self) -> int:
        return max(0, self.total - self.available)


def physical_devices(devices: Sequence[GpuDevice]) -> dict[str, list[GpuDevice]]:
    """Devices by the UUID of the physical GPU they live on."""
    out: dict[str, list[GpuDevice]] = {}
    for dev in devices:
        out.setdefault(dev.physical_uuid, []).append(dev)
    return out

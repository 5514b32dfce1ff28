"""Nomad's view of the scanned devices: groups of identical devices, shares, offered IDs.

Parity with HashiCorp's plugin: groups by device name; device ID = GPU UUID,
or the MIG instance UUID when MIG is enabled (the parent is then not offered);
locality = PCI bus ID, here in the kernel's sysfs form (see sysfs_bus_id).

Nomad gives a job any device of a group whose attributes match, so a group
attribute is only set when it holds for every member. Per-device facts (NUMA
node, parent GPU) therefore become group attributes only when the operator
asks for groups split by them (`group_by`), or when the members agree anyway.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar

from nomad_device_nvidia.nvidia.fingerprint import (
    ARCHITECTURE,
    BAR1,
    COMPUTE_CAPABILITY,
    CORES_CLOCK,
    CUDA_DRIVER_VERSION,
    DEVICE_TYPE,
    DRIVER_VERSION,
    MEMORY,
    MEMORY_CLOCK,
    MIG_PROFILE,
    NUMA_NODE,
    PARENT_UUID,
    SHARES,
    VENDOR,
    GpuDevice,
    Inventory,
    sysfs_bus_id,
)
from nomad_device_nvidia.nvidia.stats.contract import TrackedDevice
from nomad_device_nvidia.sdk import Attribute, Device, DeviceGroup

SHARE_SEPARATOR = "::"
T = TypeVar("T")


@dataclass(frozen=True)
class Offered:
    """One device ID as Nomad sees it (a share, when sharing is on)."""

    id: str
    device: GpuDevice
    group: str


def is_visible(dev: GpuDevice, ignored: frozenset[str]) -> bool:
    # Ignoring a GPU also ignores the MIG instances carved out of it.
    return dev.id not in ignored and not (dev.parent_uuid and dev.parent_uuid in ignored)


def share_ids(device_id: str, shares: int) -> list[str]:
    if shares <= 1:
        return [device_id]
    return [f"{device_id}{SHARE_SEPARATOR}{k}" for k in range(shares)]


# What a SKU fixes, so the same model never splits over an operator's setting:
# power (`nvidia-smi -pl`), persistence and display mode can be changed at run
# time, and pci_bandwidth depends on the slot. Those stay group attributes only
# while every member agrees on them.
GROUPING_ATTRIBUTES = (MEMORY, BAR1, CORES_CLOCK, MEMORY_CLOCK, COMPUTE_CAPABILITY, ARCHITECTURE, MIG_PROFILE)


def variant_key(attrs: Mapping[str, Attribute]) -> tuple[Attribute | None, ...]:
    return tuple(attrs.get(k) for k in GROUPING_ATTRIBUTES)


def _shared_attributes(members: Sequence[GpuDevice]) -> dict[str, Attribute]:
    """The attributes every member has with the same value."""
    first, rest = members[0].attributes, members[1:]
    return {k: a for k, a in first.items() if all(m.attributes.get(k) == a for m in rest)}


def group_name(name: str, variant: int, numa_node: int | None = None, parent_uuid: str = "") -> str:
    """`name`, then in one parenthesis: the variant number (from 2), `NUMA <n>`, the parent GPU's UUID.

    Each part comes from the devices' own facts, so a group keeps its name
    whatever other devices come and go (the variant rank aside, as before).
    """
    parts = [str(variant)] if variant > 1 else []
    if numa_node is not None:
        parts.append(f"NUMA {numa_node}")
    if parent_uuid:
        parts.append(parent_uuid)
    return f"{name} ({', '.join(parts)})" if parts else name


def _split(members: Sequence[GpuDevice], group_by: Collection[str]) -> list[tuple[int | None, str, list[GpuDevice]]]:
    """Members split by NUMA node and/or parent GPU, as `group_by` asks; a device without
    the fact (NUMA node unknown, a whole GPU has no parent) goes to the part without it."""
    parts: dict[tuple[int | None, str], list[GpuDevice]] = {}
    for dev in members:
        numa = dev.numa_node if NUMA_NODE in group_by else None
        parent = dev.parent_uuid if PARENT_UUID in group_by else ""
        parts.setdefault((numa, parent), []).append(dev)
    ordered = sorted(parts.items(), key=lambda kv: (-1 if kv[0][0] is None else kv[0][0], kv[0][1]))
    return [(numa, parent, devs) for (numa, parent), devs in ordered]


def _only(values: set[T]) -> T | None:
    return next(iter(values)) if len(values) == 1 else None


def render(
    inventory: Inventory,
    health: Callable[[str], tuple[bool, str]],
    ignored: frozenset[str],
    shares: int,
    *,
    group_by: Collection[str] = (),
) -> tuple[list[DeviceGroup], list[Offered]]:
    """Group identical devices by name; returns the groups and every offered ID.

    `group_by` (the `group_by` config key) may hold "numa_node" and/or
    "parent_uuid": each group is then split by that fact of its devices.
    """
    visible = [d for d in inventory.devices if is_visible(d, ignored)]
    # Same name and same SKU attributes = one group. Same-name devices that differ
    # in one (another memory size) get a numbered group of their own, so a group
    # never mixes devices a constraint would tell apart.
    by_name: dict[str, dict[tuple[Attribute | None, ...], list[GpuDevice]]] = {}
    for dev in sorted(visible, key=lambda d: d.id):
        by_name.setdefault(dev.name, {}).setdefault(variant_key(dev.attributes), []).append(dev)

    common: dict[str, Attribute] = {DRIVER_VERSION: Attribute(inventory.driver_version)}
    if inventory.cuda_driver_version:
        common[CUDA_DRIVER_VERSION] = Attribute(inventory.cuda_driver_version)

    groups: list[DeviceGroup] = []
    offered: list[Offered] = []
    for name in sorted(by_name):
        # The plain name goes to the largest variant (ties: lowest UUID), so a
        # job's `device "nvidia/gpu/<name>"` keeps meaning the node's main model.
        # Variants are ranked over the whole node before any split, so variant 2
        # is the same model on every NUMA node.
        variants = sorted(by_name[name].values(), key=lambda devs: (-len(devs), devs[0].id))
        for n, variant in enumerate(variants, start=1):
            for numa_part, parent_part, members in _split(variant, group_by):
                group = group_name(name, n, numa_part, parent_part)
                groups.append(_group(group, members, common, shares, health, offered))
    return groups, offered


def _group(
    name: str,
    members: Sequence[GpuDevice],
    common: Mapping[str, Attribute],
    shares: int,
    health: Callable[[str], tuple[bool, str]],
    offered: list[Offered],
) -> DeviceGroup:
    attrs = _shared_attributes(members)
    attrs.update(common)
    # Per-device facts: a group attribute only when every member has the same one,
    # so a constraint on it never matches a group holding devices it is false for.
    numa = _only({d.numa_node for d in members})
    if numa is not None:
        attrs[NUMA_NODE] = Attribute(numa)
    parent = _only({d.parent_uuid for d in members})
    if parent:
        attrs[PARENT_UUID] = Attribute(parent)
    if shares > 1:
        attrs[SHARES] = Attribute(shares)
    devices = []
    for dev in members:
        healthy, why = health(dev.id)
        bus = sysfs_bus_id(dev.pci_bus_id)
        for sid in share_ids(dev.id, shares):
            devices.append(Device(id=sid, healthy=healthy, health_description=why, pci_bus_id=bus))
            offered.append(Offered(sid, dev, name))
    return DeviceGroup(VENDOR, DEVICE_TYPE, name, tuple(devices), attrs)


def tracked(offered: Iterable[Offered]) -> list[TrackedDevice]:
    """What the stats engines read for these offered IDs."""
    return [TrackedDevice(device_id=o.id, uuid=o.device.id, group=o.group, gpu=o.device.physical_uuid) for o in offered]


def tracked_on_this_node() -> list[TrackedDevice]:
    """Every device the plugin would offer here (all healthy, nothing ignored, no sharing),
    for tools that drive the engines without the plugin (bench, gpu-check). NVML must be initialised."""
    from nomad_device_nvidia.nvidia.fingerprint import scan

    _groups, offered = render(scan(None), lambda _id: (True, ""), frozenset(), 1)
    return tracked(offered)

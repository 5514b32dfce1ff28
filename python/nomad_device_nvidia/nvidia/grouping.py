"""Nomad's view of the scanned devices: groups of identical devices, shares, offered IDs.

Parity with HashiCorp's plugin: groups by device name; device ID = GPU UUID,
or the MIG instance UUID when MIG is enabled (the parent is then not offered);
locality = PCI bus ID.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

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
)
from nomad_device_nvidia.sdk import Attribute, Device, DeviceGroup

SHARE_SEPARATOR = "::"

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


def render(
    inventory: Inventory,
    health: Callable[[str], tuple[bool, str]],
    ignored: frozenset[str],
    shares: int,
) -> tuple[list[DeviceGroup], list[Offered]]:
    """Group identical devices by name; returns the groups and every offered ID."""
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
        variants = sorted(by_name[name].values(), key=lambda devs: (-len(devs), devs[0].id))
        for n, members in enumerate(variants, start=1):
            group_name = name if n == 1 else f"{name} ({n})"
            attrs = _shared_attributes(members)
            attrs.update(common)
            numa = {d.numa_node for d in members}
            if len(numa) == 1 and None not in numa:
                attrs[NUMA_NODE] = Attribute(numa.pop() or 0)
            parents = sorted({d.parent_uuid for d in members if d.parent_uuid})
            if parents:
                attrs[PARENT_UUID] = Attribute(",".join(parents))
            if shares > 1:
                attrs[SHARES] = Attribute(shares)
            devices = []
            for dev in members:
                healthy, why = health(dev.id)
                for sid in share_ids(dev.id, shares):
                    devices.append(Device(id=sid, healthy=healthy, health_description=why, pci_bus_id=dev.pci_bus_id))
                    offered.append(Offered(sid, dev, group_name))
            groups.append(DeviceGroup(VENDOR, DEVICE_TYPE, group_name, tuple(devices), attrs))
    return groups, offered

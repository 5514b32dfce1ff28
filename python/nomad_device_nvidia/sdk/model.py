"""What a device plugin tells Nomad: device groups, their devices, reservations.

Plain frozen dataclasses; the services turn them into Nomad's protobuf messages.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Union

AttributeValue = Union[bool, int, float, str]


@dataclass(frozen=True)
class Attribute:
    """A typed value with an optional unit ("MiB", "W", "MHz", "MB/s", ...)."""

    value: AttributeValue
    unit: str = ""


@dataclass(frozen=True)
class Device:
    """One schedulable device instance."""

    id: str
    healthy: bool = True
    health_description: str = ""
    pci_bus_id: str = ""


@dataclass(frozen=True)
class DeviceGroup:
    """Devices that are interchangeable for scheduling (same vendor, type, name, attributes)."""

    vendor: str
    device_type: str
    name: str
    devices: tuple[Device, ...]
    attributes: Mapping[str, Attribute] = field(default_factory=dict)


@dataclass(frozen=True)
class Mount:
    task_path: str
    host_path: str
    read_only: bool = False


@dataclass(frozen=True)
class DeviceSpec:
    """A device node to expose to the task, with cgroup permissions ("r", "w", "m")."""

    task_path: str
    host_path: str
    permissions: str = "rw"


@dataclass(frozen=True)
class Reservation:
    """What a task needs to use the devices it was given."""

    envs: Mapping[str, str]
    mounts: tuple[Mount, ...] = ()
    devices: tuple[DeviceSpec, ...] = ()


@dataclass(frozen=True)
class PluginInfo:
    name: str
    version: str

"""What a device plugin tells Nomad: device groups, their devices, reservations, stats.

Plain frozen dataclasses; the services turn them into Nomad's protobuf messages
(`sdk.convert`). The stats models mirror Nomad's StatsResponse message
(plugins/device/proto/device.proto and plugins/shared/structs/proto/stats.proto,
here proto/nomad/device.proto and structs.proto) field by field.
"""

from __future__ import annotations

import time
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


@dataclass(frozen=True)
class StatValue:
    """One measurement (Nomad's StatValue): the fields that are not None say what kind of value it is.

    A number sets one numerator; a fraction ("used / total") sets a numerator and
    its denominator of the same kind; text sets `string_val`, a flag `bool_val`.
    Nomad shows "numerator / denominator unit". `of` and `fraction` build the
    usual shapes.
    """

    float_numerator_val: float | None = None
    float_denominator_val: float | None = None
    int_numerator_val: int | None = None
    int_denominator_val: int | None = None
    string_val: str | None = None
    bool_val: bool | None = None
    unit: str = ""
    desc: str = ""

    @classmethod
    def of(cls, value: AttributeValue, unit: str = "", desc: str = "") -> StatValue:
        """A single value, in the field its Python type names (int, float, str or bool)."""
        # bool first: it is a subclass of int.
        if isinstance(value, bool):
            return cls(bool_val=value, unit=unit, desc=desc)
        if isinstance(value, int):
            return cls(int_numerator_val=value, unit=unit, desc=desc)
        if isinstance(value, float):
            return cls(float_numerator_val=value, unit=unit, desc=desc)
        if isinstance(value, str):
            return cls(string_val=value, unit=unit, desc=desc)
        raise TypeError(f"a stat value is a bool, int, float or str, not {type(value).__name__}")

    @classmethod
    def fraction(cls, numerator: float, denominator: float, unit: str = "", desc: str = "") -> StatValue:
        """`numerator / denominator`: int fields when both are ints, float fields otherwise."""
        if isinstance(numerator, bool) or isinstance(denominator, bool):
            raise TypeError("a fraction is of numbers, not bools")
        if isinstance(numerator, int) and isinstance(denominator, int):
            return cls(int_numerator_val=numerator, int_denominator_val=denominator, unit=unit, desc=desc)
        return cls(float_numerator_val=float(numerator), float_denominator_val=float(denominator),
                   unit=unit, desc=desc)


@dataclass(frozen=True)
class StatObject:
    """Named values and named groups of values (Nomad's StatObject)."""

    attributes: Mapping[str, StatValue] = field(default_factory=dict)
    nested: Mapping[str, StatObject] = field(default_factory=dict)


@dataclass(frozen=True)
class DeviceStats:
    """One device's stats at one time (Nomad's DeviceStats).

    `summary` is the device's headline figure (Nomad's CLI and UI show it per
    device); `stats` holds every value. `timestamp_ns` is when they were read,
    in nanoseconds since the epoch; it defaults to when this object is made.
    """

    summary: StatValue | None = None
    stats: StatObject | None = None
    timestamp_ns: int = field(default_factory=time.time_ns)


@dataclass(frozen=True)
class DeviceGroupStats:
    """The stats of one device group's devices, keyed by device ID (Nomad's DeviceGroupStats).

    `vendor`, `device_type` and `name` are those of the `DeviceGroup` the devices
    were fingerprinted in (the message's field for `device_type` is `type`).
    """

    vendor: str
    device_type: str
    name: str
    instance_stats: Mapping[str, DeviceStats] = field(default_factory=dict)


@dataclass(frozen=True)
class StatsResponse:
    """One answer of the Stats stream: every group's stats (Nomad's StatsResponse)."""

    groups: tuple[DeviceGroupStats, ...] = ()

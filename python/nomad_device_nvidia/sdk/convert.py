"""Model dataclasses to Nomad's protobuf messages."""

from __future__ import annotations

from collections.abc import Sequence

from nomad_device_nvidia._proto.nomad import device_pb2, structs_pb2
from nomad_device_nvidia.sdk.model import Attribute, DeviceGroup, Reservation


def attribute_pb(attr: Attribute) -> structs_pb2.Attribute:
    value = attr.value
    # bool first: it is a subclass of int.
    if isinstance(value, bool):
        return structs_pb2.Attribute(bool_val=value, unit=attr.unit)
    if isinstance(value, int):
        return structs_pb2.Attribute(int_val=value, unit=attr.unit)
    if isinstance(value, float):
        return structs_pb2.Attribute(float_val=value, unit=attr.unit)
    return structs_pb2.Attribute(string_val=str(value), unit=attr.unit)


def fingerprint_pb(groups: Sequence[DeviceGroup]) -> device_pb2.FingerprintResponse:
    out = device_pb2.FingerprintResponse()
    for group in groups:
        g = out.device_group.add(vendor=group.vendor, device_type=group.device_type, device_name=group.name)
        for dev in group.devices:
            d = g.devices.add(ID=dev.id, healthy=dev.healthy, health_description=dev.health_description)
            if dev.pci_bus_id:
                d.hw_locality.pci_bus_id = dev.pci_bus_id
        for key, attr in group.attributes.items():
            g.attributes[key].CopyFrom(attribute_pb(attr))
    return out


def reservation_pb(res: Reservation) -> device_pb2.ReserveResponse:
    out = device_pb2.ReserveResponse()
    cr = out.container_res
    cr.envs.update(res.envs)
    for m in res.mounts:
        cr.mounts.add(task_path=m.task_path, host_path=m.host_path, read_only=m.read_only)
    for d in res.devices:
        cr.devices.add(task_path=d.task_path, host_path=d.host_path, permissions=d.permissions)
    return out

"""Model dataclasses to Nomad's protobuf messages, and stats messages back to models."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Union

from nomad_device_nvidia._proto.nomad import device_pb2, structs_pb2
from nomad_device_nvidia.sdk.model import (
    Attribute,
    DeviceGroup,
    DeviceGroupStats,
    DeviceStats,
    Reservation,
    StatObject,
    StatsResponse,
    StatValue,
)

# What a plugin's stats() may yield: the typed model, or a StatsResponse
# message already serialized (the fast path). A protobuf StatsResponse message
# is still taken, for plugins written before the models; new code yields a model.
StatsItem = Union[StatsResponse, bytes, device_pb2.StatsResponse]


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


# StatValue's fields that travel in protobuf wrapper messages, by their shared name.
_WRAPPED = ("float_numerator_val", "float_denominator_val", "int_numerator_val", "int_denominator_val",
            "string_val", "bool_val")


def stat_value_pb(value: StatValue, out: Any) -> None:
    """Fill the StatValue message `out` (fresh or a map entry) from `value`."""
    # Each wrapper is set only when given: a set wrapper, even 0 or "", is a value to Nomad.
    for name in _WRAPPED:
        given = getattr(value, name)
        if given is not None:
            getattr(out, name).value = given
    out.unit = value.unit
    out.desc = value.desc


def _stat_object_pb(obj: StatObject, out: Any) -> None:
    for name, value in obj.attributes.items():
        stat_value_pb(value, out.attributes[name])
    for name, sub in obj.nested.items():
        _stat_object_pb(sub, out.nested[name])


def stats_pb(resp: StatsResponse) -> device_pb2.StatsResponse:
    out = device_pb2.StatsResponse()
    for group in resp.groups:
        g = out.groups.add(vendor=group.vendor, type=group.device_type, name=group.name)
        for dev_id, dev in group.instance_stats.items():
            d = g.instance_stats[dev_id]
            if dev.summary is not None:
                stat_value_pb(dev.summary, d.summary)
            if dev.stats is not None:
                d.stats.SetInParent()  # an empty StatObject is still sent, as given
                _stat_object_pb(dev.stats, d.stats)
            d.timestamp.FromNanoseconds(dev.timestamp_ns)
    return out


def stats_bytes(item: StatsItem) -> bytes:
    """The wire form of one item a plugin's stats() yielded.

    bytes are taken as an already serialized StatsResponse and returned
    untouched (the fast path: nothing checks them); a `StatsResponse` model is
    encoded; a protobuf StatsResponse message is serialized. Anything else is a
    TypeError naming its type.
    """
    if isinstance(item, bytes):
        return item
    if isinstance(item, StatsResponse):
        return bytes(stats_pb(item).SerializeToString())
    if isinstance(item, device_pb2.StatsResponse):
        return bytes(item.SerializeToString())
    raise TypeError("stats() must yield a StatsResponse or serialized StatsResponse bytes, "
                    f"not {type(item).__name__}")


def _wrapped(msg: Any, name: str) -> Any:
    return getattr(msg, name).value if msg.HasField(name) else None


def _stat_value(msg: Any) -> StatValue:
    return StatValue(**{name: _wrapped(msg, name) for name in _WRAPPED}, unit=msg.unit, desc=msg.desc)


def _stat_object(msg: Any) -> StatObject:
    return StatObject(attributes={k: _stat_value(v) for k, v in msg.attributes.items()},
                      nested={k: _stat_object(v) for k, v in msg.nested.items()})


def stats_from_bytes(data: bytes) -> StatsResponse:
    """A serialized StatsResponse as the models: what Nomad reads from what a plugin sent.

    For clients and tests of a plugin (the CLI's probe, a plugin's own tests);
    unset fields are None, an unset timestamp is 0. Raises ValueError when
    `data` is not a StatsResponse.
    """
    try:
        msg = device_pb2.StatsResponse.FromString(data)
    except Exception as exc:  # protobuf's DecodeError, and whatever a broken message raises besides
        raise ValueError(f"not a serialized StatsResponse: {exc}") from None
    return StatsResponse(groups=tuple(
        DeviceGroupStats(vendor=g.vendor, device_type=g.type, name=g.name, instance_stats={
            dev_id: DeviceStats(summary=_stat_value(d.summary) if d.HasField("summary") else None,
                                stats=_stat_object(d.stats) if d.HasField("stats") else None,
                                timestamp_ns=d.timestamp.ToNanoseconds() if d.HasField("timestamp") else 0)
            for dev_id, d in g.instance_stats.items()})
        for g in msg.groups))

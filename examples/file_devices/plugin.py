#!/usr/bin/env python3
"""A device plugin where every file in a directory is a device.

The same idea as Nomad's own example device plugin, written on the public
`nomad_device_nvidia.sdk` API: add a file and a device appears; make it
unreadable and the device turns unhealthy; a task that reserves devices gets
each file mounted read-only under /tmp/task-mounts/.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from nomad_device_nvidia.sdk import (Attribute, ConfigError, Device, DeviceGroup, DeviceGroupStats, DevicePlugin,
                                     DeviceStats, Mount, PluginDisabled, PluginInfo, Reservation,
                                     ReservationRefused, StatsResponse, StatValue, hclspec, parse_duration, serve)


@dataclass(frozen=True)
class Config:
    enabled: bool = True
    dir: str = "."
    list_period: float = 5.0


class FileDevices(DevicePlugin):
    def __init__(self) -> None:
        self.config = Config()

    def info(self) -> PluginInfo:
        return PluginInfo(name="file-devices", version="0.1.0")

    def config_spec(self) -> hclspec.Spec:
        return hclspec.obj({"enabled": hclspec.attr("enabled", "bool", True),
                            "dir": hclspec.attr("dir", "string", "."),
                            "list_period": hclspec.attr("list_period", "string", "5s")})

    def set_config(self, config: Mapping[str, Any]) -> None:
        unknown = set(config) - {"enabled", "dir", "list_period"}
        if unknown:
            raise ConfigError(sorted(unknown)[0], "unknown key")
        enabled, root = config.get("enabled", True), config.get("dir", ".")
        if not isinstance(enabled, bool):
            raise ConfigError("enabled", f"must be a bool, got {enabled!r}")
        if not isinstance(root, str) or not os.path.isdir(root):
            raise ConfigError("dir", f"must name a directory, got {root!r}")
        try:
            period = parse_duration(config.get("list_period", "5s"))
        except ValueError as exc:
            raise ConfigError("list_period", str(exc)) from None
        if period <= 0:
            raise ConfigError("list_period", "must be positive")
        self.config = Config(enabled, root, period)

    def _groups(self) -> list[DeviceGroup]:
        root = self.config.dir
        names = sorted(n for n in os.listdir(root) if os.path.isfile(os.path.join(root, n)))
        devices = tuple(Device(id=n, healthy=os.access(os.path.join(root, n), os.R_OK),
                               health_description="" if os.access(os.path.join(root, n), os.R_OK) else "unreadable")
                        for n in names)
        return [DeviceGroup("nomad", "file", "mock", devices, {"dir": Attribute(root)})] if devices else []

    def _size(self, name: str) -> int:
        return os.path.getsize(os.path.join(self.config.dir, name))

    def fingerprint(self, stop: threading.Event) -> Iterator[Sequence[DeviceGroup]]:
        if not self.config.enabled:
            raise PluginDisabled()
        while True:
            yield self._groups()
            if stop.wait(self.config.list_period):
                return

    def stats(self, interval: float, stop: threading.Event) -> Iterator[StatsResponse]:
        if not self.config.enabled:
            raise PluginDisabled()
        while True:
            yield StatsResponse(tuple(
                DeviceGroupStats(g.vendor, g.device_type, g.name, {
                    d.id: DeviceStats(summary=StatValue.of(self._size(d.id), "bytes", "file size"))
                    for d in g.devices})
                for g in self._groups()))
            if stop.wait(interval):
                return

    def reserve(self, device_ids: Sequence[str]) -> Reservation:
        known = {d.id for g in self._groups() for d in g.devices}
        unknown = [i for i in device_ids if i not in known]
        if unknown:
            raise ReservationRefused(f"unknown device IDs: {', '.join(unknown)}")
        return Reservation(envs={"FILE_DEVICES": ",".join(device_ids)},
                           mounts=tuple(Mount(f"/tmp/task-mounts/{i}", os.path.join(os.path.abspath(self.config.dir), i),
                                              read_only=True) for i in device_ids))


if __name__ == "__main__":
    from nomad_device_nvidia.sdk import logs

    logs.configure()
    sys.exit(serve(FileDevices()))

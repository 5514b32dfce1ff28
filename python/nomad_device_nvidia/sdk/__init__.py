"""Write a Nomad device plugin in Python.

Implement `DevicePlugin` and call `serve(plugin)` from the plugin's entry
point; the go-plugin transport, Nomad's BasePlugin and DevicePlugin services,
config decoding and logging are handled here. Nothing in this package knows
about NVIDIA.
"""

from nomad_device_nvidia.sdk import hclspec
from nomad_device_nvidia.sdk.config import decode_config, parse_duration
from nomad_device_nvidia.sdk.errors import ConfigError, PluginDisabled, ReservationRefused
from nomad_device_nvidia.sdk.model import (
    Attribute,
    Device,
    DeviceGroup,
    DeviceSpec,
    Mount,
    PluginInfo,
    Reservation,
)
from nomad_device_nvidia.sdk.plugin import DevicePlugin


def serve(plugin: DevicePlugin, *, network: str = "unix", parent_pid: int | None = None) -> int:
    """Serve `plugin` over go-plugin (see `sdk.server`); returns the exit code."""
    from nomad_device_nvidia.sdk.server import serve as _serve

    return _serve(plugin, network=network, parent_pid=parent_pid)


__all__ = [
    "Attribute", "ConfigError", "Device", "DeviceGroup", "DevicePlugin", "DeviceSpec", "Mount",
    "PluginDisabled", "PluginInfo", "Reservation", "ReservationRefused", "decode_config", "hclspec",
    "parse_duration", "serve",
]

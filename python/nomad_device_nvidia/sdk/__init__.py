"""Write a Nomad device plugin in Python.

Implement `DevicePlugin` and call `serve(plugin)` from the plugin's entry
point; the go-plugin transport, Nomad's BasePlugin and DevicePlugin services,
config decoding and logging are handled here. Nothing in this package knows
about NVIDIA.

The names below load on first use, so `sdk.handshake` and `sdk.stopping` can
be imported before protobuf and grpcio (the CLI takes signals that early).
"""

from __future__ import annotations

import importlib

TYPE_CHECKING = False  # not typing's: importing typing here would cost the CLI's early start
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

    from nomad_device_nvidia.sdk import hclspec, logs
    from nomad_device_nvidia.sdk.config import decode_config, parse_duration
    from nomad_device_nvidia.sdk.convert import stats_from_bytes
    from nomad_device_nvidia.sdk.errors import ConfigError, PluginDisabled, ReservationRefused
    from nomad_device_nvidia.sdk.limits import Limits
    from nomad_device_nvidia.sdk.model import (
        Attribute,
        Device,
        DeviceGroup,
        DeviceGroupStats,
        DeviceSpec,
        DeviceStats,
        Mount,
        PluginInfo,
        Reservation,
        StatObject,
        StatsResponse,
        StatValue,
    )
    from nomad_device_nvidia.sdk.plugin import DevicePlugin
    from nomad_device_nvidia.sdk.stopping import StopRequests
    from nomad_device_nvidia.sdk.streams import StopEvent

_WHERE = {
    "hclspec": "", "logs": "", "decode_config": "config", "parse_duration": "config",
    "ConfigError": "errors", "PluginDisabled": "errors", "ReservationRefused": "errors",
    "Limits": "limits", "StopRequests": "stopping", "StopEvent": "streams", "DevicePlugin": "plugin",
    "Attribute": "model", "Device": "model", "DeviceGroup": "model", "DeviceSpec": "model", "Mount": "model",
    "PluginInfo": "model", "Reservation": "model", "DeviceGroupStats": "model", "DeviceStats": "model",
    "StatObject": "model", "StatsResponse": "model", "StatValue": "model", "stats_from_bytes": "convert",
}


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    if module == "":
        return importlib.import_module(f"{__name__}.{name}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def serve(plugin: DevicePlugin | Callable[[], DevicePlugin], *, network: str = "unix", parent_pid: int | None = None,
          limits: Limits | None = None, stops: StopRequests | None = None) -> int:
    """Serve `plugin` over go-plugin (see `sdk.server`); returns the exit code.

    `plugin` may be a function that makes the plugin, called right after the
    handshake line, so the plugin's own imports do not delay the handshake.
    """
    import os
    import sys

    from nomad_device_nvidia.sdk import handshake

    if not handshake.client_cert(os.environ):
        # asyncio imports ssl for TLS on its own transports, which the server never
        # uses; only AutoMTLS (sdk.tls) needs it. Kept out, the handshake line comes
        # about 10 ms sooner and RSS is ~4 MiB smaller (no libssl, no libcrypto).
        sys.modules.setdefault("ssl", None)  # type: ignore[arg-type]
    from nomad_device_nvidia.sdk.limits import DEFAULT_LIMITS
    from nomad_device_nvidia.sdk.server import serve as _serve

    return _serve(plugin, network=network, parent_pid=parent_pid, limits=limits or DEFAULT_LIMITS, stops=stops)


__all__ = [
    "Attribute", "ConfigError", "Device", "DeviceGroup", "DeviceGroupStats", "DevicePlugin", "DeviceSpec",
    "DeviceStats", "Limits", "Mount", "PluginDisabled", "PluginInfo", "Reservation", "ReservationRefused",
    "StatObject", "StatValue", "StatsResponse", "StopEvent", "StopRequests", "decode_config", "hclspec", "logs",
    "parse_duration", "serve", "stats_from_bytes",
]

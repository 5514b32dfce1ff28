"""Nomad's BasePlugin and DevicePlugin services over a `DevicePlugin`.

The Stats stream is registered with an identity serializer: a plugin may
yield already serialized StatsResponse bytes (the Rust engine does), and
grpcio sends them untouched.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from typing import Any, NoReturn

import grpc

from nomad_device_nvidia._proto.nomad import base_pb2, device_pb2
from nomad_device_nvidia.sdk.config import ConfigDecodeError, decode_config
from nomad_device_nvidia.sdk.convert import fingerprint_pb, reservation_pb
from nomad_device_nvidia.sdk.errors import ConfigError, PluginDisabled, ReservationRefused
from nomad_device_nvidia.sdk.plugin import DevicePlugin

log = logging.getLogger(__name__)

BASE_SERVICE = "hashicorp.nomad.plugins.base.proto.BasePlugin"
DEVICE_SERVICE = "hashicorp.nomad.plugins.device.DevicePlugin"
# Nomad's device plugin API version (plugins/device.ApiVersion010).
API_VERSIONS = ("v0.1.0",)
DEFAULT_STATS_INTERVAL = 1.0


class StreamRegistry:
    """Stop events of the open streams, so shutdown can end them all at once."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._events: set[threading.Event] = set()
        self._closed = False

    def open(self, context: grpc.ServicerContext) -> threading.Event:
        stop = threading.Event()
        with self._lock:
            if self._closed:
                stop.set()
            self._events.add(stop)
        # False means the RPC has already ended: stop at once.
        if not context.add_callback(stop.set):
            stop.set()
        return stop

    def close(self, stop: threading.Event) -> None:
        with self._lock:
            self._events.discard(stop)

    def stop_all(self) -> None:
        with self._lock:
            self._closed = True
            for event in self._events:
                event.set()


def _abort_for(exc: BaseException, context: grpc.ServicerContext, what: str) -> NoReturn:
    if isinstance(exc, PluginDisabled):
        context.abort(grpc.StatusCode.UNKNOWN, str(exc))
    if isinstance(exc, (ConfigError, ConfigDecodeError, ReservationRefused)):
        context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
    log.error(f"{what} failed", exc_info=exc)
    context.abort(grpc.StatusCode.INTERNAL, f"{what} failed: {exc}")
    raise AssertionError("context.abort returned")  # it always raises


class BasePluginService:
    def __init__(self, plugin: DevicePlugin) -> None:
        self._plugin = plugin

    def PluginInfo(self, request: base_pb2.PluginInfoRequest, context: grpc.ServicerContext) -> base_pb2.PluginInfoResponse:
        info = self._plugin.info()
        return base_pb2.PluginInfoResponse(type=base_pb2.DEVICE, plugin_api_versions=list(API_VERSIONS),
                                           plugin_version=info.version, name=info.name)

    def ConfigSchema(self, request: base_pb2.ConfigSchemaRequest, context: grpc.ServicerContext) -> base_pb2.ConfigSchemaResponse:
        return base_pb2.ConfigSchemaResponse(spec=self._plugin.config_spec())

    def SetConfig(self, request: base_pb2.SetConfigRequest, context: grpc.ServicerContext) -> base_pb2.SetConfigResponse:
        if request.plugin_api_version and request.plugin_api_version not in API_VERSIONS:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                          f"unsupported plugin API version {request.plugin_api_version!r}; supported: {', '.join(API_VERSIONS)}")
        try:
            self._plugin.set_config(decode_config(request.msgpack_config))
        except Exception as exc:
            log.warning("config rejected; the previous config stays in force", extra={"error": str(exc)})
            _abort_for(exc, context, "SetConfig")
        return base_pb2.SetConfigResponse()

    def handler(self) -> grpc.GenericRpcHandler:
        return grpc.method_handlers_generic_handler(BASE_SERVICE, {
            "PluginInfo": grpc.unary_unary_rpc_method_handler(
                self.PluginInfo, base_pb2.PluginInfoRequest.FromString, base_pb2.PluginInfoResponse.SerializeToString),
            "ConfigSchema": grpc.unary_unary_rpc_method_handler(
                self.ConfigSchema, base_pb2.ConfigSchemaRequest.FromString, base_pb2.ConfigSchemaResponse.SerializeToString),
            "SetConfig": grpc.unary_unary_rpc_method_handler(
                self.SetConfig, base_pb2.SetConfigRequest.FromString, base_pb2.SetConfigResponse.SerializeToString),
        })


def _identity(data: bytes) -> bytes:
    return data


class DevicePluginService:
    def __init__(self, plugin: DevicePlugin, streams: StreamRegistry) -> None:
        self._plugin = plugin
        self._streams = streams

    def Fingerprint(self, request: device_pb2.FingerprintRequest, context: grpc.ServicerContext) -> Iterator[device_pb2.FingerprintResponse]:
        stop = self._streams.open(context)
        last: Any = None
        try:
            for groups in self._plugin.fingerprint(stop):
                if stop.is_set():
                    return
                current = list(groups)
                if current == last:
                    continue
                last = current
                yield fingerprint_pb(current)
        except Exception as exc:
            _abort_for(exc, context, "Fingerprint")
        finally:
            self._streams.close(stop)

    def Stats(self, request: device_pb2.StatsRequest, context: grpc.ServicerContext) -> Iterator[bytes]:
        stop = self._streams.open(context)
        ci = request.collection_interval
        interval = ci.seconds + ci.nanos / 1e9
        if interval <= 0:
            interval = DEFAULT_STATS_INTERVAL
        try:
            for item in self._plugin.stats(interval, stop):
                if stop.is_set():
                    return
                yield item if isinstance(item, bytes) else item.SerializeToString()
        except Exception as exc:
            _abort_for(exc, context, "Stats")
        finally:
            self._streams.close(stop)

    def Reserve(self, request: device_pb2.ReserveRequest, context: grpc.ServicerContext) -> device_pb2.ReserveResponse:
        try:
            return reservation_pb(self._plugin.reserve(list(request.device_ids)))
        except Exception as exc:
            _abort_for(exc, context, "Reserve")

    def handler(self) -> grpc.GenericRpcHandler:
        return grpc.method_handlers_generic_handler(DEVICE_SERVICE, {
            "Fingerprint": grpc.unary_stream_rpc_method_handler(
                self.Fingerprint, device_pb2.FingerprintRequest.FromString, device_pb2.FingerprintResponse.SerializeToString),
            "Stats": grpc.unary_stream_rpc_method_handler(
                self.Stats, device_pb2.StatsRequest.FromString, _identity),
            "Reserve": grpc.unary_unary_rpc_method_handler(
                self.Reserve, device_pb2.ReserveRequest.FromString, device_pb2.ReserveResponse.SerializeToString),
        })

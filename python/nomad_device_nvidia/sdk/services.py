"""Nomad's BasePlugin and DevicePlugin services over a `DevicePlugin`.

The Stats stream is registered with an identity serializer: a plugin may
yield already serialized StatsResponse bytes (the Rust engine does), and
grpcio sends them untouched.

Every stream counts against its kind's bound (`limits`); a request that does
not parse is answered INVALID_ARGUMENT by its handler (not grpcio's INTERNAL);
error messages are cut to `Limits.error_chars`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, NoReturn, TypeVar

import grpc

from nomad_device_nvidia._proto.nomad import base_pb2, device_pb2
from nomad_device_nvidia.sdk.config import ConfigDecodeError, decode_config
from nomad_device_nvidia.sdk.convert import fingerprint_pb, reservation_pb
from nomad_device_nvidia.sdk.errors import ConfigError, PluginDisabled, ReservationRefused
from nomad_device_nvidia.sdk.limits import DEFAULT_LIMITS, FINGERPRINT, STATS, Limits, bounded
from nomad_device_nvidia.sdk.plugin import DevicePlugin

log = logging.getLogger(__name__)

BASE_SERVICE = "hashicorp.nomad.plugins.base.proto.BasePlugin"
DEVICE_SERVICE = "hashicorp.nomad.plugins.device.DevicePlugin"
# Nomad's device plugin API version (plugins/device.ApiVersion010).
API_VERSIONS = ("v0.1.0",)
# A client over a stream bound gets one warning line per kind this often, with the count refused.
_REFUSAL_LOG_EVERY_S = 10.0

M = TypeVar("M")


class StreamRegistry:
    """The open streams, counted by kind against their bounds, so shutdown can end them all at once."""

    def __init__(self, limits: Limits = DEFAULT_LIMITS) -> None:
        self._limits = limits
        self._lock = threading.Lock()
        self._open: dict[threading.Event, str] = {}
        self._counts: dict[str, int] = {}
        self._refused: dict[str, int] = {}  # refusals since the last log line, by kind
        self._refusal_logged: dict[str, float] = {}
        self._closed = False

    def open(self, context: grpc.ServicerContext, kind: str) -> threading.Event:
        """Count a new stream of `kind`; over its bound, end the RPC with RESOURCE_EXHAUSTED."""
        bound = self._limits.stream_bound(kind)
        stop = threading.Event()
        with self._lock:
            refused = self._counts.get(kind, 0) >= bound
            if refused:
                self._refused[kind] = self._refused.get(kind, 0) + 1
                now = time.monotonic()
                log_now = now - self._refusal_logged.get(kind, -_REFUSAL_LOG_EVERY_S) >= _REFUSAL_LOG_EVERY_S
                if log_now:
                    self._refusal_logged[kind] = now
                    count, self._refused[kind] = self._refused[kind], 0
            else:
                self._counts[kind] = self._counts.get(kind, 0) + 1
                self._open[stop] = kind
                if self._closed:
                    stop.set()
        if refused:
            if log_now:  # not under the lock: a slow stderr must not hold up other streams
                log.warning("stream refused: too many open", extra={"stream": kind, "bound": bound,
                                                                     "refused": count})
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                          f"too many open {kind} streams: this plugin serves at most {bound} at a time; "
                          "close one before opening another")
        # False means the RPC has already ended: stop at once.
        if not context.add_callback(stop.set):
            stop.set()
        return stop

    def close(self, stop: threading.Event) -> None:
        with self._lock:
            kind = self._open.pop(stop, None)
            if kind is not None:
                self._counts[kind] -= 1

    def stop_all(self) -> None:
        with self._lock:
            self._closed = True
            for event in self._open:
                event.set()


class _Undecodable:
    """A request that could not be parsed; its handler answers INVALID_ARGUMENT with `message`."""

    def __init__(self, message: str) -> None:
        self.message = message


def lenient(parse: Callable[[bytes], M]) -> Callable[[bytes], M | _Undecodable]:
    """A request deserializer that hands a parse failure to the handler instead of answering INTERNAL."""

    def decode(data: bytes) -> M | _Undecodable:
        try:
            return parse(data)
        except Exception as exc:  # DecodeError, and whatever a broken message raises besides
            return _Undecodable(f"the request is not a valid protobuf message: {exc}")

    return decode


def decoded(request: M | _Undecodable, context: grpc.ServicerContext, limits: Limits = DEFAULT_LIMITS) -> M:
    if isinstance(request, _Undecodable):
        context.abort(grpc.StatusCode.INVALID_ARGUMENT, bounded(request.message, limits.error_chars))
        raise AssertionError("context.abort returned")  # it always raises
    return request


def _abort_for(exc: BaseException, context: grpc.ServicerContext, what: str, limits: Limits) -> NoReturn:
    # Bounded: a status travels in an HTTP/2 trailer, and a message naming a
    # 4 MiB input would be refused by the client or fill the agent's log.
    text = bounded(str(exc), limits.error_chars)
    if isinstance(exc, PluginDisabled):
        context.abort(grpc.StatusCode.UNKNOWN, text)
    if isinstance(exc, (ConfigError, ConfigDecodeError, ReservationRefused)):
        context.abort(grpc.StatusCode.INVALID_ARGUMENT, text)
    log.error(f"{what} failed", exc_info=exc)
    context.abort(grpc.StatusCode.INTERNAL, bounded(f"{what} failed: {exc}", limits.error_chars))
    raise AssertionError("context.abort returned")  # it always raises


class BasePluginService:
    def __init__(self, plugin: DevicePlugin, limits: Limits = DEFAULT_LIMITS) -> None:
        self._plugin = plugin
        self._limits = limits

    def PluginInfo(self, request: base_pb2.PluginInfoRequest | _Undecodable,
                   context: grpc.ServicerContext) -> base_pb2.PluginInfoResponse:
        decoded(request, context, self._limits)
        info = self._plugin.info()
        return base_pb2.PluginInfoResponse(type=base_pb2.DEVICE, plugin_api_versions=list(API_VERSIONS),
                                           plugin_version=info.version, name=info.name)

    def ConfigSchema(self, request: base_pb2.ConfigSchemaRequest | _Undecodable,
                     context: grpc.ServicerContext) -> base_pb2.ConfigSchemaResponse:
        decoded(request, context, self._limits)
        return base_pb2.ConfigSchemaResponse(spec=self._plugin.config_spec())

    def SetConfig(self, request: base_pb2.SetConfigRequest | _Undecodable,
                  context: grpc.ServicerContext) -> base_pb2.SetConfigResponse:
        req: base_pb2.SetConfigRequest = decoded(request, context, self._limits)
        if req.plugin_api_version and req.plugin_api_version not in API_VERSIONS:
            version = bounded(repr(req.plugin_api_version), 64)
            context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                          f"unsupported plugin API version {version}; supported: {', '.join(API_VERSIONS)}")
        try:
            self._plugin.set_config(decode_config(req.msgpack_config))
        except Exception as exc:
            log.warning("config rejected; the previous config stays in force",
                        extra={"error": bounded(str(exc), self._limits.error_chars)})
            _abort_for(exc, context, "SetConfig", self._limits)
        return base_pb2.SetConfigResponse()

    def handler(self) -> grpc.GenericRpcHandler:
        return grpc.method_handlers_generic_handler(BASE_SERVICE, {
            "PluginInfo": grpc.unary_unary_rpc_method_handler(
                self.PluginInfo, lenient(base_pb2.PluginInfoRequest.FromString),
                base_pb2.PluginInfoResponse.SerializeToString),
            "ConfigSchema": grpc.unary_unary_rpc_method_handler(
                self.ConfigSchema, lenient(base_pb2.ConfigSchemaRequest.FromString),
                base_pb2.ConfigSchemaResponse.SerializeToString),
            "SetConfig": grpc.unary_unary_rpc_method_handler(
                self.SetConfig, lenient(base_pb2.SetConfigRequest.FromString),
                base_pb2.SetConfigResponse.SerializeToString),
        })


def _identity(data: bytes) -> bytes:
    return data


def _seconds(duration: Any) -> float:
    # Any int64 seconds and int32 nanos, normalised or not, give a finite float.
    return float(duration.seconds) + float(duration.nanos) / 1e9


class DevicePluginService:
    def __init__(self, plugin: DevicePlugin, streams: StreamRegistry, limits: Limits = DEFAULT_LIMITS) -> None:
        self._plugin = plugin
        self._streams = streams
        self._limits = limits
        self._clamp_lock = threading.Lock()
        self._clamp_logged: float | None = None

    def stats_interval(self, request: device_pb2.StatsRequest) -> float:
        """The request's collection interval clamped to the limits; unset means the default."""
        lim = self._limits
        asked = _seconds(request.collection_interval)
        if asked == 0:
            return lim.default_stats_interval
        interval = min(max(asked, lim.min_stats_interval), lim.max_stats_interval)
        if interval != asked:
            with self._clamp_lock:  # one line per requested value, not one per stream a client reopens
                first = self._clamp_logged != asked
                self._clamp_logged = asked
            if first:
                log.warning("Stats collection interval out of range; clamped",
                            extra={"requested_seconds": asked, "interval_seconds": interval,
                                   "min_seconds": lim.min_stats_interval, "max_seconds": lim.max_stats_interval})
        return interval

    def Fingerprint(self, request: device_pb2.FingerprintRequest | _Undecodable,
                    context: grpc.ServicerContext) -> Iterator[device_pb2.FingerprintResponse]:
        decoded(request, context, self._limits)
        stop = self._streams.open(context, FINGERPRINT)
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
            _abort_for(exc, context, "Fingerprint", self._limits)
        finally:
            self._streams.close(stop)

    def Stats(self, request: device_pb2.StatsRequest | _Undecodable, context: grpc.ServicerContext) -> Iterator[bytes]:
        req: device_pb2.StatsRequest = decoded(request, context, self._limits)
        stop = self._streams.open(context, STATS)
        try:
            interval = self.stats_interval(req)
            for item in self._plugin.stats(interval, stop):
                if stop.is_set():
                    return
                yield item if isinstance(item, bytes) else item.SerializeToString()
        except Exception as exc:
            _abort_for(exc, context, "Stats", self._limits)
        finally:
            self._streams.close(stop)

    def Reserve(self, request: device_pb2.ReserveRequest | _Undecodable,
                context: grpc.ServicerContext) -> device_pb2.ReserveResponse:
        req: device_pb2.ReserveRequest = decoded(request, context, self._limits)
        try:
            return reservation_pb(self._plugin.reserve(list(req.device_ids)))
        except Exception as exc:
            _abort_for(exc, context, "Reserve", self._limits)

    def handler(self) -> grpc.GenericRpcHandler:
        return grpc.method_handlers_generic_handler(DEVICE_SERVICE, {
            "Fingerprint": grpc.unary_stream_rpc_method_handler(
                self.Fingerprint, lenient(device_pb2.FingerprintRequest.FromString),
                device_pb2.FingerprintResponse.SerializeToString),
            "Stats": grpc.unary_stream_rpc_method_handler(
                self.Stats, lenient(device_pb2.StatsRequest.FromString), _identity),
            "Reserve": grpc.unary_unary_rpc_method_handler(
                self.Reserve, lenient(device_pb2.ReserveRequest.FromString),
                device_pb2.ReserveResponse.SerializeToString),
        })

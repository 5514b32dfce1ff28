"""Nomad's BasePlugin and DevicePlugin services over a `DevicePlugin`, for grpc.aio.

The handlers run on the event loop and never block it: a stream runs the
plugin's iterator on a thread of its own (`streams.pump`), unless the plugin
answers Stats from the loop itself (`DevicePlugin.stats_stream`); SetConfig
and Reserve run on the offload pool, PluginInfo and ConfigSchema answer inline.

The Stats stream is registered with an identity serializer: a plugin may
yield already serialized StatsResponse bytes (the Rust engine does), and
grpcio sends them untouched.

Every stream counts against its kind's bound (`limits`); a request that does
not parse is answered INVALID_ARGUMENT by its handler (not grpcio's INTERNAL);
error messages are cut to `Limits.error_chars`.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any, TypeAlias, TypeVar

import grpc
import grpc.aio

from nomad_device_nvidia._proto.nomad import base_pb2, device_pb2
from nomad_device_nvidia.sdk.config import ConfigDecodeError, decode_config
from nomad_device_nvidia.sdk.convert import fingerprint_pb, reservation_pb, stats_bytes
from nomad_device_nvidia.sdk.errors import ConfigError, PluginDisabled, ReservationRefused
from nomad_device_nvidia.sdk.limits import DEFAULT_LIMITS, FINGERPRINT, STATS, Limits, bounded
from nomad_device_nvidia.sdk.plugin import DevicePlugin
from nomad_device_nvidia.sdk.streams import Offload, StopEvent, StreamRefused, StreamRegistry, pump

log = logging.getLogger(__name__)

BASE_SERVICE = "hashicorp.nomad.plugins.base.proto.BasePlugin"
DEVICE_SERVICE = "hashicorp.nomad.plugins.device.DevicePlugin"
# Nomad's device plugin API version (plugins/device.ApiVersion010).
API_VERSIONS = ("v0.1.0",)

# The most a status message takes on the wire (gRPC clients refuse trailers
# over 8 KiB at random and always over 16 KiB).
_STATUS_WIRE_BYTES = 4096

M = TypeVar("M")
R = TypeVar("R")
Context: TypeAlias = "grpc.aio.ServicerContext[Any, Any]"


class Abort(Exception):
    """Ends the RPC with `code` and `message`; raised anywhere in a handler, answered by its wrapper."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def answering(handler: Callable[[Any, Context], Awaitable[R]]) -> Callable[[Any, Context], Awaitable[R]]:
    """A unary handler whose `Abort` becomes the RPC's status."""

    @functools.wraps(handler)
    async def run(request: Any, context: Context) -> R:
        try:
            return await handler(request, context)
        except Abort as abort:
            status = (abort.code, abort.message)
        # A status, not context.abort: grpc.aio keeps the AbortError that abort
        # raises in a reference cycle with the handler's frames, so each refusal
        # would hold its request (up to 16 MiB) until the GC happened to run.
        finish(context, *status)
        return None  # type: ignore[return-value]  # the status is the answer

    return run


def answering_stream(handler: Callable[[Any, Context], AsyncIterator[R]]) -> Callable[[Any, Context], AsyncIterator[R]]:
    """A streaming handler whose `Abort` becomes the RPC's status."""

    @functools.wraps(handler)
    async def run(request: Any, context: Context) -> AsyncIterator[R]:
        try:
            async for item in handler(request, context):
                yield item
            return
        except Abort as abort:
            status = (abort.code, abort.message)
        finish(context, *status)  # not context.abort: see `answering`

    return run


def finish(context: Context, code: grpc.StatusCode, message: str) -> None:
    """End the RPC with `code` once its handler returns; `message` cut to what a client accepts."""
    context.set_code(code)
    context.set_details(wire_bounded(message, _STATUS_WIRE_BYTES))


def wire_bounded(text: str, limit: int) -> str:
    """`text` cut so that it takes at most `limit` bytes in a grpc-message trailer.

    gRPC percent-encodes every byte outside printable ASCII, so a character
    can take up to 12 bytes there; clients drop trailers past a few KiB.
    """
    def size(t: str) -> int:
        return sum(1 if 0x20 <= ord(ch) < 0x7F and ch != "%" else 3 * len(ch.encode("utf-8", "replace"))
                   for ch in t)

    if size(text) <= limit:
        return text
    keep = len(text)
    while keep > 0 and size(text[:keep]) + len(f"... ({len(text)} more characters)") > limit:
        keep = keep * 3 // 4
    return text[:keep] + f"... ({len(text) - keep} more characters)"


def open_stream(streams: StreamRegistry, context: Context, kind: str) -> StopEvent:
    """Count a stream against its bound (RESOURCE_EXHAUSTED over it); its stop is set when the RPC ends."""
    try:
        stop = streams.open(kind)
    except StreamRefused as exc:
        raise Abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc)) from None
    context.add_done_callback(lambda _: stop.set())
    if context.done():  # ended before the callback was in place
        stop.set()
    return stop


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


def decoded(request: M | _Undecodable, limits: Limits = DEFAULT_LIMITS) -> M:
    if isinstance(request, _Undecodable):
        raise Abort(grpc.StatusCode.INVALID_ARGUMENT, bounded(request.message, limits.error_chars))
    return request


def abort_for(exc: BaseException, what: str, limits: Limits) -> Abort:
    """The status for an exception a plugin raised: its own errors by kind, anything else INTERNAL (logged)."""
    # Bounded: a status travels in an HTTP/2 trailer, and a message naming a
    # 4 MiB input would be refused by the client or fill the agent's log.
    text = bounded(str(exc), limits.error_chars)
    if isinstance(exc, PluginDisabled):
        return Abort(grpc.StatusCode.UNKNOWN, text)
    if isinstance(exc, (ConfigError, ConfigDecodeError, ReservationRefused)):
        return Abort(grpc.StatusCode.INVALID_ARGUMENT, text)
    log.error(f"{what} failed", exc_info=exc)
    return Abort(grpc.StatusCode.INTERNAL, bounded(f"{what} failed: {exc}", limits.error_chars))


class BasePluginService:
    def __init__(self, plugin: DevicePlugin, limits: Limits = DEFAULT_LIMITS, offload: Offload | None = None) -> None:
        self._plugin = plugin
        self._limits = limits
        self._offload = offload or Offload(limits.unary_workers)

    async def PluginInfo(self, request: base_pb2.PluginInfoRequest | _Undecodable,
                         context: Context) -> base_pb2.PluginInfoResponse:
        decoded(request, self._limits)
        info = self._plugin.info()
        return base_pb2.PluginInfoResponse(type=base_pb2.DEVICE, plugin_api_versions=list(API_VERSIONS),
                                           plugin_version=info.version, name=info.name)

    async def ConfigSchema(self, request: base_pb2.ConfigSchemaRequest | _Undecodable,
                           context: Context) -> base_pb2.ConfigSchemaResponse:
        decoded(request, self._limits)
        return base_pb2.ConfigSchemaResponse(spec=self._plugin.config_spec())

    async def SetConfig(self, request: base_pb2.SetConfigRequest | _Undecodable,
                        context: Context) -> base_pb2.SetConfigResponse:
        req: base_pb2.SetConfigRequest = decoded(request, self._limits)
        if req.plugin_api_version and req.plugin_api_version not in API_VERSIONS:
            version = bounded(repr(req.plugin_api_version), 64)
            raise Abort(grpc.StatusCode.INVALID_ARGUMENT,
                        f"unsupported plugin API version {version}; supported: {', '.join(API_VERSIONS)}")
        try:
            await self._offload.run(lambda: self._plugin.set_config(decode_config(req.msgpack_config)))
        except Exception as exc:
            log.warning("config rejected; the previous config stays in force",
                        extra={"error": bounded(str(exc), self._limits.error_chars)})
            raise abort_for(exc, "SetConfig", self._limits) from None
        return base_pb2.SetConfigResponse()

    def handler(self) -> grpc.GenericRpcHandler:
        return grpc.method_handlers_generic_handler(BASE_SERVICE, {
            "PluginInfo": grpc.unary_unary_rpc_method_handler(
                answering(self.PluginInfo), lenient(base_pb2.PluginInfoRequest.FromString),
                base_pb2.PluginInfoResponse.SerializeToString),
            "ConfigSchema": grpc.unary_unary_rpc_method_handler(
                answering(self.ConfigSchema), lenient(base_pb2.ConfigSchemaRequest.FromString),
                base_pb2.ConfigSchemaResponse.SerializeToString),
            "SetConfig": grpc.unary_unary_rpc_method_handler(
                answering(self.SetConfig), lenient(base_pb2.SetConfigRequest.FromString),
                base_pb2.SetConfigResponse.SerializeToString),
        })


def _identity(data: bytes) -> bytes:
    return data


def _seconds(duration: Any) -> float:
    # Any int64 seconds and int32 nanos, normalised or not, give a finite float.
    return float(duration.seconds) + float(duration.nanos) / 1e9


class DevicePluginService:
    def __init__(self, plugin: DevicePlugin, streams: StreamRegistry, limits: Limits = DEFAULT_LIMITS,
                 offload: Offload | None = None) -> None:
        self._plugin = plugin
        self._streams = streams
        self._limits = limits
        self._offload = offload or Offload(limits.unary_workers)
        self._clamp_logged: float | None = None

    def stats_interval(self, request: device_pb2.StatsRequest) -> float:
        """The request's collection interval clamped to the limits; unset means the default."""
        lim = self._limits
        asked = _seconds(request.collection_interval)
        if asked == 0:
            return lim.default_stats_interval
        interval = min(max(asked, lim.min_stats_interval), lim.max_stats_interval)
        if interval != asked:
            # One line per requested value, not one per stream a client reopens
            # (called on the event loop only: no lock).
            first = self._clamp_logged != asked
            self._clamp_logged = asked
            if first:
                log.warning("Stats collection interval out of range; clamped",
                            extra={"requested_seconds": asked, "interval_seconds": interval,
                                   "min_seconds": lim.min_stats_interval, "max_seconds": lim.max_stats_interval})
        return interval

    def _fingerprints(self, stop: StopEvent) -> Iterator[device_pb2.FingerprintResponse]:
        """Runs on the stream's thread: the plugin's answers, each sent only if it differs from the last."""
        last: Any = None
        for groups in self._plugin.fingerprint(stop):
            if stop.is_set():
                return
            current = list(groups)
            if current == last:
                continue
            last = current
            yield fingerprint_pb(current)

    async def Fingerprint(self, request: device_pb2.FingerprintRequest | _Undecodable,
                          context: Context) -> AsyncIterator[device_pb2.FingerprintResponse]:
        decoded(request, self._limits)
        stop = open_stream(self._streams, context, FINGERPRINT)
        try:
            async for answer in pump(self._fingerprints, stop, "fingerprint"):
                yield answer
        except Exception as exc:
            raise abort_for(exc, "Fingerprint", self._limits) from None
        finally:
            self._streams.close(stop)

    async def Stats(self, request: device_pb2.StatsRequest | _Undecodable, context: Context) -> AsyncIterator[bytes]:
        req: device_pb2.StatsRequest = decoded(request, self._limits)
        stop = open_stream(self._streams, context, STATS)
        interval = self.stats_interval(req)

        def answers(stop: StopEvent) -> Iterator[bytes]:
            for item in self._plugin.stats(interval, stop):
                if stop.is_set():
                    return
                yield stats_bytes(item)

        try:
            # On the loop when the plugin can (no thread, no hand-over per answer).
            items = self._plugin.stats_stream(interval, stop)
            if items is not None:
                try:
                    async for item in items:
                        if stop.is_set():
                            return
                        yield stats_bytes(item)
                finally:
                    aclose = getattr(items, "aclose", None)
                    if aclose is not None:
                        await aclose()
                return
            async for answer in pump(answers, stop, "stats"):
                yield answer
        except Exception as exc:
            raise abort_for(exc, "Stats", self._limits) from None
        finally:
            self._streams.close(stop)

    async def Reserve(self, request: device_pb2.ReserveRequest | _Undecodable,
                      context: Context) -> device_pb2.ReserveResponse:
        req: device_pb2.ReserveRequest = decoded(request, self._limits)
        try:
            return await self._offload.run(lambda: reservation_pb(self._plugin.reserve(list(req.device_ids))))
        except Exception as exc:
            raise abort_for(exc, "Reserve", self._limits) from None

    def handler(self) -> grpc.GenericRpcHandler:
        return grpc.method_handlers_generic_handler(DEVICE_SERVICE, {
            "Fingerprint": grpc.unary_stream_rpc_method_handler(
                answering_stream(self.Fingerprint), lenient(device_pb2.FingerprintRequest.FromString),
                device_pb2.FingerprintResponse.SerializeToString),
            "Stats": grpc.unary_stream_rpc_method_handler(
                answering_stream(self.Stats), lenient(device_pb2.StatsRequest.FromString), _identity),
            "Reserve": grpc.unary_unary_rpc_method_handler(
                answering(self.Reserve), lenient(device_pb2.ReserveRequest.FromString),
                device_pb2.ReserveResponse.SerializeToString),
        })

"""The services go-plugin's host expects beside the plugin's own.

- grpc.health.v1: "plugin" SERVING (the host's health checks ping it).
- plugin.GRPCController: Shutdown asks the process to stop gracefully.
- plugin.GRPCStdio: the host streams our stdout/stderr from here; our logs go
  to the real stderr, so the stream stays open and sends nothing.
- plugin.GRPCBroker: for sub-plugin connections, which device plugins never
  open; the stream is accepted and drained until the host closes it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from nomad_device_nvidia._proto.goplugin import (
    grpc_broker_pb2,
    grpc_controller_pb2,
    grpc_stdio_pb2,
)
from nomad_device_nvidia.sdk.limits import BROKER, STDIO
from nomad_device_nvidia.sdk.services import StreamRegistry

HEALTH_SERVICE_NAME = "plugin"


def _empty_from(data: bytes) -> object:
    from google.protobuf import empty_pb2

    return empty_pb2.Empty.FromString(data)


class GoPluginServices:
    def __init__(self, request_shutdown: Callable[[], None], streams: StreamRegistry) -> None:
        self._request_shutdown = request_shutdown
        self._streams = streams
        self.health = health.HealthServicer()
        self.health.set(HEALTH_SERVICE_NAME, health_pb2.HealthCheckResponse.SERVING)

    def Shutdown(self, request: grpc_controller_pb2.Empty, context: grpc.ServicerContext) -> grpc_controller_pb2.Empty:
        self._request_shutdown()
        return grpc_controller_pb2.Empty()

    def StreamStdio(self, request: object, context: grpc.ServicerContext) -> Iterator[grpc_stdio_pb2.StdioData]:
        stop = self._streams.open(context, STDIO)
        try:
            stop.wait()
        finally:
            self._streams.close(stop)
        return
        yield  # pragma: no cover - makes this a generator

    def StartStream(self, requests: Iterator[grpc_broker_pb2.ConnInfo], context: grpc.ServicerContext) -> Iterator[grpc_broker_pb2.ConnInfo]:
        stop = self._streams.open(context, BROKER)
        try:
            for _ in requests:
                pass  # no sub-plugins to connect
        finally:
            self._streams.close(stop)
        return
        yield  # pragma: no cover

    def register(self, server: grpc.Server) -> None:
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        server.add_generic_rpc_handlers((
            grpc.method_handlers_generic_handler("plugin.GRPCController", {
                "Shutdown": grpc.unary_unary_rpc_method_handler(
                    self.Shutdown, grpc_controller_pb2.Empty.FromString, grpc_controller_pb2.Empty.SerializeToString),
            }),
            grpc.method_handlers_generic_handler("plugin.GRPCStdio", {
                "StreamStdio": grpc.unary_stream_rpc_method_handler(
                    self.StreamStdio, _empty_from, grpc_stdio_pb2.StdioData.SerializeToString),
            }),
            grpc.method_handlers_generic_handler("plugin.GRPCBroker", {
                "StartStream": grpc.stream_stream_rpc_method_handler(
                    self.StartStream, grpc_broker_pb2.ConnInfo.FromString, grpc_broker_pb2.ConnInfo.SerializeToString),
            }),
        ))

    def set_not_serving(self) -> None:
        self.health.enter_graceful_shutdown()

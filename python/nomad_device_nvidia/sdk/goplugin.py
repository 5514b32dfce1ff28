"""The services go-plugin's host expects beside the plugin's own.

- grpc.health.v1: "plugin" SERVING (the host's health checks ping it).
- plugin.GRPCController: Shutdown asks the process to stop gracefully.
- plugin.GRPCStdio: the host streams our stdout/stderr from here; our logs go
  to the real stderr, so the stream stays open and sends nothing.
- plugin.GRPCBroker: for sub-plugin connections, which device plugins never
  open; the stream is accepted and drained until the host closes it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import Any, Protocol

import grpc
import grpc.aio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio

from nomad_device_nvidia._proto.goplugin import (
    grpc_broker_pb2,
    grpc_controller_pb2,
    grpc_stdio_pb2,
)
from nomad_device_nvidia.sdk.limits import BROKER, STDIO
from nomad_device_nvidia.sdk.services import Abort, answering_stream, finish, open_stream
from nomad_device_nvidia.sdk.streams import StreamRegistry, stopped

HEALTH_SERVICE_NAME = "plugin"


class Registry(Protocol):
    """What takes handlers: a grpc.aio.Server, or anything with its two methods."""

    def add_generic_rpc_handlers(self, handlers: Sequence[grpc.GenericRpcHandler]) -> None: ...

    def add_registered_method_handlers(self, service: str, handlers: Mapping[str, grpc.RpcMethodHandler]) -> None: ...


def _empty_from(data: bytes) -> object:
    from google.protobuf import empty_pb2

    return empty_pb2.Empty.FromString(data)


class GoPluginServices:
    """Build inside the running event loop (the health servicer binds to it)."""

    def __init__(self, request_shutdown: Callable[[], None], streams: StreamRegistry) -> None:
        self._request_shutdown = request_shutdown
        self._streams = streams
        self.health = health_aio.HealthServicer()

    async def start(self) -> None:
        await self.health.set(HEALTH_SERVICE_NAME, health_pb2.HealthCheckResponse.SERVING)

    async def Shutdown(self, request: grpc_controller_pb2.Empty,
                       context: grpc.aio.ServicerContext[Any, Any]) -> grpc_controller_pb2.Empty:
        self._request_shutdown()
        return grpc_controller_pb2.Empty()

    async def StreamStdio(self, request: object,
                          context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[grpc_stdio_pb2.StdioData]:
        stop = open_stream(self._streams, context, STDIO)
        try:
            await stopped(stop)
        finally:
            self._streams.close(stop)
        return
        yield  # pragma: no cover - makes this a generator

    async def StartStream(self, requests: AsyncIterator[grpc_broker_pb2.ConnInfo],
                          context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[grpc_broker_pb2.ConnInfo]:
        try:
            stop = open_stream(self._streams, context, BROKER)
        except Abort as abort:
            finish(context, abort.code, abort.message)
            return
        async def drain() -> None:
            async for _ in requests:
                pass  # no sub-plugins to connect

        # Until the host closes it, or the plugin stops: a stream still open when
        # the server stops would be cancelled, and grpcio prints a traceback for it.
        draining, stopping = asyncio.ensure_future(drain()), asyncio.ensure_future(stopped(stop))
        try:
            await asyncio.wait((draining, stopping), return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (draining, stopping):
                task.cancel()
            self._streams.close(stop)
        return
        yield  # pragma: no cover

    def register(self, server: Registry) -> None:
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        server.add_generic_rpc_handlers((
            grpc.method_handlers_generic_handler("plugin.GRPCController", {
                "Shutdown": grpc.unary_unary_rpc_method_handler(
                    self.Shutdown, grpc_controller_pb2.Empty.FromString, grpc_controller_pb2.Empty.SerializeToString),
            }),
            grpc.method_handlers_generic_handler("plugin.GRPCStdio", {
                "StreamStdio": grpc.unary_stream_rpc_method_handler(
                    answering_stream(self.StreamStdio), _empty_from, grpc_stdio_pb2.StdioData.SerializeToString),
            }),
            grpc.method_handlers_generic_handler("plugin.GRPCBroker", {
                "StartStream": grpc.stream_stream_rpc_method_handler(
                    self.StartStream, grpc_broker_pb2.ConnInfo.FromString, grpc_broker_pb2.ConnInfo.SerializeToString),
            }),
        ))

    async def set_not_serving(self) -> None:
        await self.health.enter_graceful_shutdown()

"""Run a DevicePlugin as a go-plugin gRPC server until the host lets it go.

The process stops on: the controller's Shutdown, SIGTERM or SIGINT, or the
death of the process that launched it (Nomad's agent killed with SIGKILL must
not leave us orphaned); see `stopping` for how none of these can deadlock.
Streams are bounded per kind (`limits`). The server is grpc.aio on the main
thread's event loop: an idle plugin has no thread of ours that wakes up, and
each open stream costs one thread of the plugin's (see `streams`).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import sys
import threading
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar, Union

import grpc.aio

from nomad_device_nvidia.sdk import handshake
from nomad_device_nvidia.sdk.handshake import HandshakeError, Listener
from nomad_device_nvidia.sdk.limits import DEFAULT_LIMITS, Limits
from nomad_device_nvidia.sdk.plugin import DevicePlugin
from nomad_device_nvidia.sdk.stopping import SHUTDOWN_RPC, StopRequests, describe, remove_dir
from nomad_device_nvidia.sdk.streams import Offload, StreamRegistry

if TYPE_CHECKING:  # ssl and the relay load only when the host asks for AutoMTLS
    from nomad_device_nvidia.sdk.hclspec import Spec
    from nomad_device_nvidia.sdk.model import DeviceGroup, PluginInfo, Reservation
    from nomad_device_nvidia.sdk.tls import ServerTLS, TLSRelay

log = logging.getLogger(__name__)

B = TypeVar("B")

# A plugin, or what makes one: made after the handshake line, so the host is
# not kept waiting on the plugin's own imports (it connects meanwhile, and its
# first call is answered once the plugin is made).
PluginSource = Union[DevicePlugin, Callable[[], DevicePlugin]]


class _LateHandlers:
    """The server's only handler, filled in right after the handshake line.

    The services' modules (protobuf, the generated messages, the models) take
    a third of the start-up, and nothing before the line needs them: they load
    while the host connects. grpcio takes handlers only before start, so this
    one is registered then and holds what is added later. No call reaches it
    empty: nothing between the line and the filling awaits, so the loop takes
    no call in between.
    """

    def __init__(self) -> None:
        self._methods: dict[str, grpc.RpcMethodHandler] = {}
        self._generic: list[grpc.GenericRpcHandler] = []

    def add_generic_rpc_handlers(self, handlers: Sequence[grpc.GenericRpcHandler]) -> None:
        self._generic.extend(handlers)

    def add_registered_method_handlers(self, service: str, handlers: Mapping[str, grpc.RpcMethodHandler]) -> None:
        self._methods.update({f"/{service}/{method}": handler for method, handler in handlers.items()})

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        """What grpcio asks of a generic handler: the handler for this call's method, or None."""
        method = self._methods.get(handler_call_details.method)
        if method is not None:
            return method
        for handler in self._generic:
            found = handler.service(handler_call_details)
            if found is not None:
                return found
        return None


class _Deferred(DevicePlugin):
    """Stands for the plugin `make` returns, made on first use."""

    def __init__(self, make: Callable[[], DevicePlugin]) -> None:
        self._make = make
        self._plugin: DevicePlugin | None = None
        self._lock = threading.Lock()

    def get(self) -> DevicePlugin:
        plugin = self._plugin
        if plugin is None:
            with self._lock:
                if self._plugin is None:
                    self._plugin = self._make()
                plugin = self._plugin
        return plugin

    def info(self) -> PluginInfo:
        return self.get().info()

    def config_spec(self) -> Spec:
        return self.get().config_spec()

    def set_config(self, config: Mapping[str, Any]) -> None:
        self.get().set_config(config)

    def fingerprint(self, stop: threading.Event) -> Iterator[Sequence[DeviceGroup]]:
        return iter(self.get().fingerprint(stop))

    def stats(self, interval: float, stop: threading.Event) -> Iterator[Any]:
        return iter(self.get().stats(interval, stop))

    def stats_stream(self, interval: float, stop: threading.Event) -> AsyncIterator[Any] | None:
        return self.get().stats_stream(interval, stop)

    def reserve(self, device_ids: Sequence[str]) -> Reservation:
        return self.get().reserve(device_ids)

    def shutdown(self) -> None:
        if self._plugin is not None:
            self._plugin.shutdown()


def _first_port(env: Mapping[str, str], bind: Callable[[int], B | None]) -> B:
    """What `bind` gives for the first port of the plugin port range it can bind."""
    for port in handshake.tcp_port_range(env):
        bound = bind(port)
        if bound is not None:
            return bound
    raise HandshakeError("no free tcp port in the plugin port range")


class _Endpoint:
    """Binds the gRPC server where the host will connect, directly or behind the TLS relay."""

    def __init__(self, server: grpc.aio.Server, network: str, env: Mapping[str, str], sock_dir: str,
                 limits: Limits) -> None:
        self._server = server
        self._limits = limits
        self._network = network
        self._env = env
        self._dir = sock_dir
        self._relay: TLSRelay | None = None

    @property
    def directory(self) -> str:
        return self._dir

    def bind(self, tls: ServerTLS | None) -> Listener:
        if tls is None:
            if self._network == "unix":
                path = os.path.join(self._dir, "plugin.sock")
                if not self._add(f"unix:{path}"):
                    raise HandshakeError(f"cannot listen on unix socket {path}")
                return Listener("unix", path)
            return _first_port(self._env, lambda port: Listener("tcp", f"127.0.0.1:{port}")
                               if self._add(f"127.0.0.1:{port}") else None)
        backend = os.path.join(self._dir, "grpc.sock")
        if not self._add(f"unix:{backend}"):
            raise HandshakeError(f"cannot listen on unix socket {backend}")
        from nomad_device_nvidia.sdk.tls import TLSRelay

        public, listener = self._public_socket()
        self._relay = TLSRelay(tls.context, public, backend, max_connections=self._limits.tls_connections,
                               handshake_timeout=self._limits.tls_handshake_timeout)
        self._relay.start()
        return listener

    def _add(self, target: str) -> int:
        try:
            return int(self._server.add_insecure_port(target))
        except RuntimeError:
            return 0

    def _public_socket(self) -> tuple[socket.socket, Listener]:
        if self._network == "unix":
            path = os.path.join(self._dir, "plugin.sock")
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.bind(path)
            return sock, Listener("unix", path)

        def bind(port: int) -> tuple[socket.socket, Listener] | None:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                sock.close()
                return None
            return sock, Listener("tcp", f"127.0.0.1:{port}")

        return _first_port(self._env, bind)

    def close(self) -> None:
        if self._relay is not None:
            self._relay.close()
        import shutil  # only here: it loads three compression modules

        shutil.rmtree(self._dir, ignore_errors=True)


def serve(plugin: PluginSource, *, network: str = "unix", env: Mapping[str, str] | None = None,
          parent_pid: int | None = None, limits: Limits = DEFAULT_LIMITS, stops: StopRequests | None = None) -> int:
    """Serve `plugin` to a go-plugin host; returns the process exit code.

    `plugin` may be a function that makes the plugin: it is called right after
    the handshake line, so a plugin with heavy imports does not delay it.

    `parent_pid` is the launching process as seen at the very start of the
    program (before imports), so a host that died while we started is noticed.
    `stops`, when given, was installed as early as the program could (see
    cli.py), so a signal during the imports is taken too; serve installs it
    otherwise (it must run in the main thread). Once a stop is taken, further
    SIGTERM and SIGINT are ignored for the rest of the process's life.
    """
    parent = os.getppid() if parent_pid is None else parent_pid
    env = os.environ if env is None else env
    if not handshake.cookie_ok(env):
        sys.stderr.write(handshake.NOT_A_COMMAND)
        return 1
    if stops is None:
        stops = StopRequests()
    stops.install()
    stops.serving()
    stops.watch_parent(parent)
    served = plugin if isinstance(plugin, DevicePlugin) else _Deferred(plugin)
    return asyncio.run(_serve(served, network, env, limits, stops))


async def _serve(plugin: DevicePlugin, network: str, env: Mapping[str, str], limits: Limits,
                 stops: StopRequests) -> int:
    streams = StreamRegistry(limits)
    handlers = _LateHandlers()
    server = grpc.aio.server(handlers=(handlers,),
                             options=[("grpc.so_reuseport", 0),
                                      ("grpc.max_receive_message_length", limits.max_request_bytes)],
                             maximum_concurrent_rpcs=limits.max_concurrent_rpcs)
    offload = Offload(limits.unary_workers, name="plugin-call")
    endpoint: _Endpoint | None = None
    try:
        version = handshake.negotiate_version(env)
        endpoint = _Endpoint(server, network, env, handshake.private_dir(env), limits)
        tls = None
        cert = handshake.client_cert(env)
        if cert:
            from nomad_device_nvidia.sdk.tls import auto_mtls

            tls = auto_mtls(cert, endpoint.directory)
        listener = endpoint.bind(tls)
        await server.start()
    except (HandshakeError, RuntimeError, OSError) as exc:
        if endpoint is not None:
            endpoint.close()
        sys.stderr.write(f"Error preparing plugin: {exc}\n")
        return 1

    sys.stdout.write(handshake.handshake_line(version, listener, tls.handshake_cert if tls else "", env) + "\n")
    sys.stdout.flush()
    # Nothing may follow the handshake on stdout: send any stray write to stderr.
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    # The host connects meanwhile; its calls wait in grpcio until the loop runs again.
    from nomad_device_nvidia.sdk.goplugin import GoPluginServices
    from nomad_device_nvidia.sdk.services import BasePluginService, DevicePluginService

    goplugin = GoPluginServices(lambda: stops.request(SHUTDOWN_RPC), streams)
    goplugin.register(handlers)
    handlers.add_generic_rpc_handlers((BasePluginService(plugin, limits, offload).handler(),
                                       DevicePluginService(plugin, streams, limits, offload).handler()))
    await goplugin.start()  # the first await since the line: every handler is in place
    try:
        info = plugin.info()  # a deferred plugin is made here
    except Exception as exc:
        log.exception("the plugin could not be made")
        sys.stderr.write(f"Error preparing plugin: {exc}\n")
        endpoint.close()
        return 1
    log.info("plugin serving", extra={"plugin": info.name, "version": info.version,
                                       "network": listener.network, "address": listener.address})
    reason = await stops.wait_async()
    stops.ignore_further()
    # From here the process is gone within limits.exit_deadline, whatever hangs.
    stops.exit_by(limits.exit_deadline, 0, remove_dir(endpoint.directory))
    log.info("plugin shutting down", extra={"reason": describe(reason)})
    try:
        await goplugin.set_not_serving()
        streams.stop_all()
        await server.stop(limits.shutdown_grace)
        try:
            # Off the loop: grpcio still finishes the calls that just ended while
            # the plugin takes its time (a loop blocked here let a finished stream
            # be cancelled later, which grpcio reports with a traceback).
            await offload.run(plugin.shutdown)
        except Exception:
            log.exception("plugin shutdown failed")
    finally:
        endpoint.close()
    return 0

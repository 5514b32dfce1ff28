"""Run a DevicePlugin as a go-plugin gRPC server until the host lets it go.

The process stops on: the controller's Shutdown, SIGTERM or SIGINT, or the
death of the process that launched it (Nomad's agent killed with SIGKILL must
not leave us orphaned).
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import sys
import threading
from collections.abc import Mapping
from concurrent import futures
from types import FrameType
from typing import TYPE_CHECKING

import grpc

from nomad_device_nvidia.sdk import handshake
from nomad_device_nvidia.sdk.goplugin import GoPluginServices
from nomad_device_nvidia.sdk.handshake import HandshakeError, Listener
from nomad_device_nvidia.sdk.plugin import DevicePlugin
from nomad_device_nvidia.sdk.services import BasePluginService, DevicePluginService, StreamRegistry

if TYPE_CHECKING:  # ssl and the relay load only when the host asks for AutoMTLS
    from nomad_device_nvidia.sdk.tls import ServerTLS, TLSRelay

log = logging.getLogger(__name__)

PARENT_POLL_SECONDS = 0.2
SHUTDOWN_GRACE_SECONDS = 2.0
# Each open stream holds a worker; Nomad keeps about four open per plugin.
MAX_WORKERS = 32


class _Endpoint:
    """Binds the gRPC server where the host will connect, directly or behind the TLS relay."""

    def __init__(self, server: grpc.Server, network: str, env: Mapping[str, str], sock_dir: str) -> None:
        self._server = server
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
            for port in handshake.tcp_port_range(self._env):
                if self._add(f"127.0.0.1:{port}"):
                    return Listener("tcp", f"127.0.0.1:{port}")
            raise HandshakeError("no free tcp port in the plugin port range")
        backend = os.path.join(self._dir, "grpc.sock")
        if not self._add(f"unix:{backend}"):
            raise HandshakeError(f"cannot listen on unix socket {backend}")
        from nomad_device_nvidia.sdk.tls import TLSRelay

        public, listener = self._public_socket()
        self._relay = TLSRelay(tls.context, public, backend)
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
        for port in handshake.tcp_port_range(self._env):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                sock.close()
                continue
            return sock, Listener("tcp", f"127.0.0.1:{port}")
        raise HandshakeError("no free tcp port in the plugin port range")

    def close(self) -> None:
        if self._relay is not None:
            self._relay.close()
        shutil.rmtree(self._dir, ignore_errors=True)


def _watch_parent(parent: int, stop: threading.Event, done: threading.Event) -> None:
    if parent == 1:
        return  # launched by init (or an agent that is PID 1 of a container): nothing to watch
    while True:
        if os.getppid() != parent:
            log.warning("the process that launched the plugin is gone; exiting", extra={"parent_pid": parent})
            stop.set()
            return
        if done.wait(PARENT_POLL_SECONDS):
            return


def serve(plugin: DevicePlugin, *, network: str = "unix", env: Mapping[str, str] | None = None,
          parent_pid: int | None = None) -> int:
    """Serve `plugin` to a go-plugin host; returns the process exit code.

    `parent_pid` is the launching process as seen at the very start of the
    program (before imports), so a host that died while we started is noticed.
    """
    parent = os.getppid() if parent_pid is None else parent_pid
    env = os.environ if env is None else env
    if not handshake.cookie_ok(env):
        sys.stderr.write(handshake.NOT_A_COMMAND)
        return 1
    stop = threading.Event()
    streams = StreamRegistry()
    goplugin = GoPluginServices(stop, streams)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=MAX_WORKERS, thread_name_prefix="grpc"),
                         options=[("grpc.so_reuseport", 0)])
    goplugin.register(server)
    server.add_generic_rpc_handlers((BasePluginService(plugin).handler(),
                                     DevicePluginService(plugin, streams).handler()))
    endpoint: _Endpoint | None = None
    try:
        version = handshake.negotiate_version(env)
        endpoint = _Endpoint(server, network, env, handshake.private_dir(env))
        tls = None
        if env.get("PLUGIN_CLIENT_CERT"):
            from nomad_device_nvidia.sdk.tls import auto_mtls

            tls = auto_mtls(env["PLUGIN_CLIENT_CERT"], endpoint.directory)
        listener = endpoint.bind(tls)
        server.start()
    except (HandshakeError, RuntimeError, OSError) as exc:
        if endpoint is not None:
            endpoint.close()
        sys.stderr.write(f"Error preparing plugin: {exc}\n")
        return 1

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    done = threading.Event()
    threading.Thread(target=_watch_parent, args=(parent, stop, done), name="parent-watch", daemon=True).start()

    sys.stdout.write(handshake.handshake_line(version, listener, tls.handshake_cert if tls else "", env) + "\n")
    sys.stdout.flush()
    # Nothing may follow the handshake on stdout: send any stray write to stderr.
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    info = plugin.info()
    log.info("plugin serving", extra={"plugin": info.name, "version": info.version,
                                       "network": listener.network, "address": listener.address})
    try:
        while not stop.wait(1.0):
            pass
    finally:
        log.info("plugin shutting down")
        done.set()
        goplugin.set_not_serving()
        streams.stop_all()
        server.stop(SHUTDOWN_GRACE_SECONDS).wait()
        try:
            plugin.shutdown()
        except Exception:
            log.exception("plugin shutdown failed")
        endpoint.close()
        for s, handler in previous.items():
            signal.signal(s, handler)
    return 0

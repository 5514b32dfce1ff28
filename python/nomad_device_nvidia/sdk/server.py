"""Run a DevicePlugin as a go-plugin gRPC server until the host lets it go.

The process stops on: the controller's Shutdown, SIGTERM or SIGINT, or the
death of the process that launched it (Nomad's agent killed with SIGKILL must
not leave us orphaned).
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from collections.abc import Mapping
from concurrent import futures
from types import FrameType

import grpc

from nomad_device_nvidia.sdk import handshake
from nomad_device_nvidia.sdk.goplugin import GoPluginServices
from nomad_device_nvidia.sdk.handshake import HandshakeError, Listener
from nomad_device_nvidia.sdk.plugin import DevicePlugin
from nomad_device_nvidia.sdk.services import BasePluginService, DevicePluginService, StreamRegistry

log = logging.getLogger(__name__)

PARENT_POLL_SECONDS = 0.2
SHUTDOWN_GRACE_SECONDS = 2.0
# Each open stream holds a worker; Nomad keeps about four open per plugin.
MAX_WORKERS = 32


def _bind(server: grpc.Server, listener: Listener, env: Mapping[str, str], creds: grpc.ServerCredentials | None) -> Listener:
    def add(target: str) -> int:
        try:
            return int(server.add_secure_port(target, creds) if creds else server.add_insecure_port(target))
        except RuntimeError:
            return 0

    if listener.network == "unix":
        if not add(listener.grpc_target):
            raise HandshakeError(f"cannot listen on unix socket {listener.address}")
        return listener
    for port in handshake.tcp_port_range(env):
        if add(f"127.0.0.1:{port}"):
            return Listener("tcp", f"127.0.0.1:{port}", f"127.0.0.1:{port}")
    raise HandshakeError("no free tcp port in the plugin port range")


def _watch_parent(stop: threading.Event, done: threading.Event) -> None:
    parent = os.getppid()
    if parent == 1:
        return  # launched by init: nothing to watch
    while not done.wait(PARENT_POLL_SECONDS):
        if os.getppid() != parent:
            log.warning("the process that launched the plugin is gone; exiting", extra={"parent_pid": parent})
            stop.set()
            return


def serve(plugin: DevicePlugin, *, network: str = "unix", env: Mapping[str, str] | None = None) -> int:
    """Serve `plugin` to a go-plugin host; returns the process exit code."""
    env = os.environ if env is None else env
    if not handshake.cookie_ok(env):
        sys.stderr.write(handshake.NOT_A_COMMAND)
        return 1
    try:
        version = handshake.negotiate_version(env)
        server_cert, creds = "", None
        if env.get("PLUGIN_CLIENT_CERT"):
            from nomad_device_nvidia.sdk.tls import auto_mtls

            tls = auto_mtls(env["PLUGIN_CLIENT_CERT"])
            server_cert, creds = tls.handshake_cert, tls.credentials
        listener = handshake.unix_listener(env) if network == "unix" else Listener("tcp", "", "")
    except (HandshakeError, RuntimeError, ValueError) as exc:
        sys.stderr.write(f"Error preparing plugin: {exc}\n")
        return 1

    stop = threading.Event()
    streams = StreamRegistry()
    goplugin = GoPluginServices(stop, streams)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=MAX_WORKERS, thread_name_prefix="grpc"),
                         options=[("grpc.so_reuseport", 0)])
    goplugin.register(server)
    server.add_generic_rpc_handlers((BasePluginService(plugin).handler(),
                                     DevicePluginService(plugin, streams).handler()))
    try:
        listener = _bind(server, listener, env, creds)
        server.start()
    except HandshakeError as exc:
        listener.cleanup()
        sys.stderr.write(f"Error preparing plugin: {exc}\n")
        return 1

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    done = threading.Event()
    threading.Thread(target=_watch_parent, args=(stop, done), name="parent-watch", daemon=True).start()

    sys.stdout.write(handshake.handshake_line(version, listener, server_cert, env) + "\n")
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
        listener.cleanup()
        for s, handler in previous.items():
            signal.signal(s, handler)
    return 0

"""A plugin process launched as go-plugin's host would, spoken to with plain gRPC.

For what Nomad's client cannot send (undecodable requests, 100,000 IDs, many
streams of one kind, raw msgpack) and for reading the process's /proc figures.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import grpc

from nomad_device_nvidia._proto.nomad import base_pb2, device_pb2
from nomad_device_nvidia.sdk.handshake import MAGIC_COOKIE_KEY, MAGIC_COOKIE_VALUE

BASE = "/hashicorp.nomad.plugins.base.proto.BasePlugin/"
DEVICE = "/hashicorp.nomad.plugins.device.DevicePlugin/"
STDIO = "/plugin.GRPCStdio/StreamStdio"
BROKER = "/plugin.GRPCBroker/StartStream"
HEALTH = "/grpc.health.v1.Health/Check"


def _raw(data: bytes) -> bytes:
    return data


def plugin_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PLUGIN_")}
    env[MAGIC_COOKIE_KEY] = MAGIC_COOKIE_VALUE
    env["PLUGIN_PROTOCOL_VERSIONS"] = "2"
    env.update(extra)
    return env


class Plugin:
    """One plugin process: its handshake, a gRPC channel to it, its stderr lines and /proc."""

    def __init__(self, argv: Sequence[str | Path], env: dict[str, str] | None = None) -> None:
        self.proc = subprocess.Popen([str(a) for a in argv], env=env or plugin_env(), stdin=subprocess.DEVNULL,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None and self.proc.stderr is not None
        self.line = self.proc.stdout.readline()
        self.log: list[str] = []
        self._log_changed = threading.Condition()
        self._reader = threading.Thread(target=self._read_stderr, daemon=True)
        self._reader.start()
        if not self.line:
            self.proc.wait(30)
            self._reader.join(5)
            self.proc.stdout.close()
            self.proc.stderr.close()
            raise AssertionError(f"no handshake line; stderr: {''.join(self.log)[-3000:]}")
        parts = self.line.rstrip("\n").split("|")
        self.network, self.address = parts[2], parts[3]
        target = f"unix:{self.address}" if self.network == "unix" else self.address
        self.channel = grpc.insecure_channel(target, options=[("grpc.max_send_message_length", 64 << 20),
                                                              ("grpc.max_receive_message_length", 64 << 20)])

    def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            with self._log_changed:
                self.log.append(line)
                self._log_changed.notify_all()

    def wait_log(self, text: str, timeout: float = 10.0, count: int = 1) -> list[str]:
        """Bounded wait for `count` stderr lines containing `text`."""
        deadline = time.monotonic() + timeout
        with self._log_changed:
            while True:
                found = [line for line in self.log if text in line]
                if len(found) >= count or time.monotonic() >= deadline:
                    return found
                self._log_changed.wait(max(0.0, deadline - time.monotonic()))

    def logged(self, text: str) -> list[str]:
        with self._log_changed:
            return [line for line in self.log if text in line]

    # -- calls (raw bytes in, so a test can send what no client library would) --

    def unary(self, method: str, request: bytes, timeout: float = 10.0) -> bytes:
        call = self.channel.unary_unary(method, request_serializer=_raw, response_deserializer=_raw)
        return bytes(call(request, timeout=timeout))

    def stream(self, method: str, request: bytes, timeout: float | None = None) -> Any:
        call = self.channel.unary_stream(method, request_serializer=_raw, response_deserializer=_raw)
        return call(request, timeout=timeout)

    def info(self, timeout: float = 10.0) -> base_pb2.PluginInfoResponse:
        return base_pb2.PluginInfoResponse.FromString(
            self.unary(BASE + "PluginInfo", base_pb2.PluginInfoRequest().SerializeToString(), timeout))

    def set_config(self, msgpack_config: bytes, timeout: float = 30.0) -> None:
        self.unary(BASE + "SetConfig", base_pb2.SetConfigRequest(msgpack_config=msgpack_config).SerializeToString(),
                   timeout)

    def reserve(self, ids: Sequence[str], timeout: float = 30.0) -> device_pb2.ReserveResponse:
        return device_pb2.ReserveResponse.FromString(
            self.unary(DEVICE + "Reserve", device_pb2.ReserveRequest(device_ids=list(ids)).SerializeToString(),
                       timeout))

    def fingerprint(self) -> Any:
        return self.stream(DEVICE + "Fingerprint", device_pb2.FingerprintRequest().SerializeToString())

    def stats(self, seconds: int = 1, nanos: int = 0) -> Any:
        req = device_pb2.StatsRequest()
        req.collection_interval.seconds, req.collection_interval.nanos = seconds, nanos
        return self.stream(DEVICE + "Stats", req.SerializeToString())

    def first_ids(self, timeout: float = 30.0) -> list[str]:
        """The device IDs of the first Fingerprint answer (the stream is closed after it)."""
        call = self.fingerprint()
        try:
            resp = device_pb2.FingerprintResponse.FromString(next_within(call, timeout))
        finally:
            call.cancel()
        return [d.ID for g in resp.device_group for d in g.devices]

    # -- the process --

    @property
    def pid(self) -> int:
        return self.proc.pid

    def status(self) -> dict[str, int]:
        """Threads, VmRSS (KiB) and open fds of the plugin process."""
        out = {}
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("Threads", "VmRSS"):
                out[key] = int(value.split()[0])
        out["fds"] = len(os.listdir(f"/proc/{self.pid}/fd"))
        return out

    def stop(self, timeout: float = 10.0) -> int:
        self.channel.close()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"plugin {self.pid} did not exit within {timeout} s of SIGTERM") from None
        self._reader.join(5)
        assert self.proc.stdout is not None and self.proc.stderr is not None
        self.proc.stdout.close()
        self.proc.stderr.close()
        return code


def next_within(call: Any, timeout: float) -> bytes:
    """The stream's next response; one not there within `timeout` cancels the call (a bounded wait)."""
    timer = threading.Timer(timeout, call.cancel)
    timer.start()
    try:
        return bytes(next(call))
    finally:
        timer.cancel()

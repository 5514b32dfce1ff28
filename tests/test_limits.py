"""Limits: stream bounds that leave unary calls answered, the Stats interval clamp,
the AutoMTLS relay's bounds, bounded error messages.

Through Nomad's client code (the Go harness `limits` command) where it can open
the streams, plain gRPC from Python for what it cannot send.
"""

from __future__ import annotations

import base64
import datetime
import json
import queue
import socket
import ssl
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import msgpack
import pytest

from conftest import REPO_ROOT, HarnessRun
from nomad_device_nvidia._proto.nomad import base_pb2, device_pb2
from nomad_device_nvidia.sdk.limits import DEFAULT_LIMITS, bounded
from plugin_proc import BASE, BROKER, DEVICE, HEALTH, STDIO, Plugin, next_within, plugin_env

SIM_LIB = REPO_ROOT / "build" / "sim" / "libnvidia-ml.so.1"
SCENARIO = REPO_ROOT / "scenarios" / "1gpu.toml"
LIM = DEFAULT_LIMITS


def sim_config(**extra: Any) -> bytes:
    return msgpack.packb({"simulate": str(SCENARIO), "nvml_library": str(SIM_LIB), "fingerprint_period": "1s",
                          **extra})


@pytest.fixture
def plugin(plugin_bin: Path) -> Iterator[Plugin]:
    p = Plugin([plugin_bin])
    try:
        p.set_config(sim_config())
        yield p
    finally:
        assert p.stop() == 0


def test_bounds_hold_through_nomads_client(run_harness: Callable[..., HarnessRun], plugin_bin: Path,
                                           tmp_path: Path) -> None:
    cfg = tmp_path / "config.hcl"
    cfg.write_text(f'config {{\n  simulate = "{SCENARIO}"\n  nvml_library = "{SIM_LIB}"\n}}\n')
    nfp, nst = LIM.fingerprint_streams + 4, 40
    run = run_harness("limits", "--plugin", plugin_bin, "--config", cfg, "--fingerprints", str(nfp),
                      "--stats", str(nst), "--interval", "200ms", "--within", "30s", "--reserve", "GPU-nope").ok()
    unary = {e["call"]: e for e in run.of("unary")}
    assert set(unary) == {"PluginInfo", "ConfigSchema", "SetConfig", "Reserve", "health"}
    for call, e in unary.items():
        # Answered at all while every stream is open (30 s is a hang guard, not a latency bound).
        assert e["answered"], f"{call} not answered with {nfp} + {nst} streams asked for: {e}"
        if call != "Reserve":
            assert e["error"] is None, e
    assert "InvalidArgument" in unary["Reserve"]["error"] and "GPU-nope" in unary["Reserve"]["error"]
    limits = run.one("limits")
    for kind, opened, bound in (("fingerprint", nfp, LIM.fingerprint_streams), ("stats", nst, LIM.stats_streams)):
        got = limits[kind]
        assert got["opened"] == got["answered"] == opened, got
        assert (got["accepted"], got["refused"], got["other_errors"]) == (bound, opened - bound, []), got
        assert f"ResourceExhausted desc = too many open {kind.capitalize()} streams" in got["refusal"], got
        assert f"at most {bound} at a time" in got["refusal"], got
    assert limits["stats"]["still_flowing"] == LIM.stats_streams, limits
    assert limits["closed"] == nfp + nst and not limits["plugin_exited"]
    down = run.one("shutdown")
    assert down["exited"] and down["graceful"] and down["exit_code"] == 0, down
    print(f"{nfp} Fingerprint + {nst} Stats streams asked for; unary answers (ms): "
          + ", ".join(f"{c} {e['ms']}" for c, e in unary.items()))


class _Open:
    """Streams of one method opened at once; which ended (refused) and which stay open."""

    def __init__(self, open_one: Callable[[], Any], n: int) -> None:
        self.ended: queue.Queue[Any] = queue.Queue()
        self.calls = [open_one() for _ in range(n)]
        for call in self.calls:
            call.add_done_callback(self.ended.put)

    def wait_ended(self, n: int, timeout: float = 10.0) -> list[Any]:
        deadline = time.monotonic() + timeout
        out = []
        while len(out) < n:
            out.append(self.ended.get(timeout=max(0.0, deadline - time.monotonic())))
        return out

    def cancel(self) -> None:
        for call in self.calls:
            call.cancel()


def _broker_requests(stop: threading.Event) -> Iterator[bytes]:
    stop.wait()  # the host never sends a ConnInfo; the stream stays open until cancelled
    return
    yield b""


def test_every_stream_kind_bounded_and_unary_calls_answered(plugin: Plugin) -> None:
    over = 5
    stop_broker = threading.Event()
    broker = plugin.channel.stream_stream(BROKER, request_serializer=bytes, response_deserializer=bytes)
    kinds = {
        "Fingerprint": (plugin.fingerprint, LIM.fingerprint_streams),
        "Stats": (plugin.stats, LIM.stats_streams),
        "StreamStdio": (lambda: plugin.stream(STDIO, b""), LIM.stdio_streams),
        "GRPCBroker.StartStream": (lambda: broker(_broker_requests(stop_broker)), LIM.broker_streams),
    }
    opened = {kind: _Open(open_one, bound + over) for kind, (open_one, bound) in kinds.items()}
    try:
        for kind, streams in opened.items():
            bound = kinds[kind][1]
            refused = streams.wait_ended(over)
            for call in refused:
                assert call.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, (kind, call.code(), call.details())
                assert call.details() == (f"too many open {kind} streams: this plugin serves at most {bound} "
                                          "at a time; close one before opening another")
            still_open = [c for c in streams.calls if not c.done()]
            assert len(still_open) == bound, (kind, len(still_open))
        # Every stream kind at its bound: each unary call is answered at once.
        answered = {}
        for name, method, request in (
            ("PluginInfo", BASE + "PluginInfo", b""),
            ("ConfigSchema", BASE + "ConfigSchema", b""),
            ("SetConfig", BASE + "SetConfig", base_pb2.SetConfigRequest(msgpack_config=sim_config()).SerializeToString()),
            ("Reserve", DEVICE + "Reserve", b""),
            ("health", HEALTH, b"\n\x06plugin"),
        ):
            began = time.monotonic()
            plugin.unary(method, request, timeout=2.0)
            answered[name] = round((time.monotonic() - began) * 1000, 1)
        status = plugin.status()
        print(f"all kinds at their bound: unary answers (ms) {answered}; plugin {status}")
        assert len(plugin.logged("stream refused: too many open")) == len(kinds)  # one line per kind, not per refusal
    finally:
        for streams in opened.values():
            streams.cancel()
        stop_broker.set()


def test_a_closed_stream_frees_its_slot(plugin: Plugin) -> None:
    full = _Open(plugin.stats, LIM.stats_streams)
    try:
        for call in full.calls:
            next_within(call, 10.0)
        extra = plugin.stats()
        with pytest.raises(grpc.RpcError) as refused:
            next_within(extra, 10.0)
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        full.calls[0].cancel()
        full.wait_ended(1)
        # The slot is free once the plugin has seen the cancel; bounded retries, not a sleep.
        deadline = time.monotonic() + 10
        while True:
            again = plugin.stats()
            try:
                next_within(again, 10.0)
                break
            except grpc.RpcError as exc:
                assert exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and time.monotonic() < deadline
        again.cancel()
    finally:
        full.cancel()


def test_stats_interval_clamped_with_one_log_line(plugin: Plugin) -> None:
    # 1 ns: clamped to the floor; responses come an interval apart, not in a busy loop.
    tiny = plugin.stats(0, 1)
    first = time.monotonic()
    for _ in range(4):
        next_within(tiny, 10.0)
    spread = time.monotonic() - first
    tiny.cancel()
    again = plugin.stats(0, 1)
    next_within(again, 10.0)
    again.cancel()
    assert spread >= 2 * LIM.min_stats_interval, f"4 answers in {spread:.3f} s: the floor does not hold"
    lines = plugin.wait_log('"requested_seconds": 1e-09')
    assert len(lines) == 1, lines  # two streams, one line
    entry = json.loads(lines[0])
    assert entry["@message"] == "Stats collection interval out of range; clamped"
    assert entry["interval_seconds"] == LIM.min_stats_interval

    # Huge, negative and denormalised durations: clamped, never INTERNAL or an overflow.
    for seconds, nanos, used in ((2**63 - 1, 999_999_999, LIM.max_stats_interval), (-(2**63), -999_999_999,
                                 LIM.min_stats_interval), (-1, 0, LIM.min_stats_interval),
                                 (0, -1, LIM.min_stats_interval), (7200, 0, LIM.max_stats_interval)):
        call = plugin.stats(seconds, nanos)
        device_pb2.StatsResponse.FromString(next_within(call, 10.0))
        call.cancel()
        with pytest.raises(grpc.RpcError) as ended:
            next_within(call, 10.0)
        assert ended.value.code() == grpc.StatusCode.CANCELLED
        asked = float(seconds) + nanos / 1e9
        found = plugin.wait_log(f'"requested_seconds": {json.dumps(asked)}')
        assert len(found) == 1 and json.loads(found[0])["interval_seconds"] == used, found
    # In range: no line.
    call = plugin.stats(0, 999_999_999)
    next_within(call, 10.0)
    call.cancel()
    assert not plugin.logged('"requested_seconds": 0.999999999')
    assert not plugin.logged("Stats failed")


def test_reserve_refusals_are_bounded(plugin: Plugin) -> None:
    ids = [f"GPU-{i:08d}-0000-0000-0000-not-here-at-all" for i in range(100_000)]  # 4.9 MB, as long as UUIDs
    with pytest.raises(grpc.RpcError) as many:
        plugin.reserve(ids)
    details = many.value.details()
    assert many.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert details == "unknown device IDs: " + ", ".join(ids[:5]) + " and 99,995 more (100,000 in all)"
    # One ID of a MiB, and one with control characters: named cut short, on one line.
    with pytest.raises(grpc.RpcError) as huge:
        plugin.reserve(["G" * (1 << 20), "bad\nid\x00"])
    details = huge.value.details()
    assert details.startswith("unknown device IDs: " + "G" * 80 + "... (1,048,576 characters), bad\\nid\\x00"), details
    assert len(details) < 200
    # Not UTF-8 (protobuf strings must be): a clear refusal, not INTERNAL.
    with pytest.raises(grpc.RpcError) as bad:
        plugin.unary(DEVICE + "Reserve", b"\n\x03\xff\xfeA")
    assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "not a valid protobuf message" in bad.value.details() and "UTF-8" in bad.value.details()
    # Over the request size bound: grpcio's own refusal, naming the sizes.
    request = device_pb2.ReserveRequest(device_ids=["x" * LIM.max_request_bytes]).SerializeToString()
    with pytest.raises(grpc.RpcError) as too_big:
        plugin.unary(DEVICE + "Reserve", request)
    assert too_big.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert f"larger than max ({len(request)} vs. {LIM.max_request_bytes})" in too_big.value.details()
    ok = plugin.reserve(plugin.first_ids()[:1] * 3)
    assert ok.container_res.envs["NVIDIA_VISIBLE_DEVICES"].count("GPU-") == 1


def test_config_refusals_are_bounded(plugin: Plugin) -> None:
    with pytest.raises(grpc.RpcError) as huge_key:
        plugin.set_config(msgpack.packb({"k" * (1 << 20): 1}))
    details = huge_key.value.details()
    assert huge_key.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert details.startswith('config key "kkkk') and details.endswith(" more characters)"), details[-100:]
    assert len(details) <= LIM.error_chars
    line = plugin.wait_log("config rejected")[-1]
    assert len(line) < LIM.error_chars + 300, len(line)
    assert plugin.reserve(plugin.first_ids()[:1]).container_res.envs["NVIDIA_VISIBLE_DEVICES"]


def test_bounded_text() -> None:
    assert bounded("short", 10) == "short"
    for n in (41, 1000, 10**6):
        text = bounded("x" * n, 40)
        kept = text.index("...")
        assert len(text) <= 40 and text.endswith(" more characters)") and set(text[:kept]) == {"x"}, text
        assert kept + int(text[kept:].split("(")[1].split()[0]) == n, text


# --- the AutoMTLS relay ---

def _client_cert(tmp_path: Path) -> tuple[str, Path]:
    """A one-time client certificate as go-plugin makes it (self-signed CA, client auth) and its key file."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .sign(key, hashes.SHA256()))
    pem = cert.public_bytes(serialization.Encoding.PEM).decode()
    keyfile = tmp_path / "client.pem"
    keyfile.write_bytes(cert.public_bytes(serialization.Encoding.PEM) + key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return pem, keyfile


def _closed_by_peer(sock: socket.socket, timeout: float) -> bool:
    sock.settimeout(timeout)
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def test_tls_relay_bounds_connections_and_handshakes(tmp_path: Path) -> None:
    bound, handshake_timeout = 3, 0.5
    pem, keyfile = _client_cert(tmp_path)
    plugin = Plugin([sys.executable, REPO_ROOT / "tests" / "limits_plugin.py", f"tls_connections={bound}",
                     f"tls_handshake_timeout={handshake_timeout}"], env=plugin_env(PLUGIN_CLIENT_CERT=pem))
    try:
        server_der = base64.b64decode(plugin.line.rstrip("\n").split("|")[5] + "==")
        idle = []
        for i in range(bound):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.connect(plugin.address)
            if i == 0:
                s.sendall(b"\x16\x03\x01\x02")  # the start of a TLS record, then nothing
            idle.append(s)
        began = time.monotonic()
        extra = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        extra.connect(plugin.address)
        assert _closed_by_peer(extra, 5.0), "a connection over the bound was not closed"
        assert plugin.wait_log("TLS connection refused: too many open")
        for s in idle:
            assert _closed_by_peer(s, 10.0), "a connection that never finished its handshake was kept"
        dropped_after = time.monotonic() - began
        assert dropped_after >= handshake_timeout * 0.9
        # The slots are free again: a real client completes its handshake.
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.load_verify_locations(cadata=server_der)
        ctx.load_cert_chain(keyfile)
        ctx.set_alpn_protocols(["h2"])
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as raw:
            raw.settimeout(10)
            raw.connect(plugin.address)
            with ctx.wrap_socket(raw, server_hostname="localhost") as tls:
                assert tls.selected_alpn_protocol() == "h2"
        for s in (*idle, extra):
            s.close()
        print(f"over-bound connection closed at once; idle handshakes dropped after {dropped_after:.2f} s")
    finally:
        assert plugin.stop() == 0

"""go-plugin's launch contract, plugin side: cookie, protocol version, listener, handshake line."""

from __future__ import annotations

import os

# Light on purpose: the CLI reads the cookie from here before it takes its
# signals, so nothing here imports typing, dataclasses or tempfile.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping

CORE_PROTOCOL_VERSION = 1
# Nomad's base.Handshake.
APP_PROTOCOL_VERSION = 2
MAGIC_COOKIE_KEY = "NOMAD_PLUGIN_MAGIC_COOKIE"
MAGIC_COOKIE_VALUE = "e4327c2e01eabfd75a8a67adb114fb34a757d57eee7728d857a8cec6e91a7255"

NOT_A_COMMAND = (
    "This binary is a plugin. These are not meant to be executed directly.\n"
    "Please execute the program that consumes these plugins, which will\n"
    "load any plugins automatically\n"
)


class HandshakeError(Exception):
    """The host's launch environment cannot be served; the message says why."""


def cookie_ok(env: Mapping[str, str]) -> bool:
    return env.get(MAGIC_COOKIE_KEY) == MAGIC_COOKIE_VALUE


def client_cert(env: Mapping[str, str]) -> str:
    """The host's certificate when it asks for AutoMTLS, else empty."""
    return env.get("PLUGIN_CLIENT_CERT", "")


def negotiate_version(env: Mapping[str, str]) -> int:
    """The app protocol both sides speak; the host lists its versions in PLUGIN_PROTOCOL_VERSIONS."""
    offered = env.get("PLUGIN_PROTOCOL_VERSIONS", "").strip()
    if not offered:
        return APP_PROTOCOL_VERSION
    versions = set()
    for part in offered.split(","):
        try:
            versions.add(int(part))
        except ValueError:
            raise HandshakeError(f"PLUGIN_PROTOCOL_VERSIONS has an invalid version {part!r}") from None
    if APP_PROTOCOL_VERSION not in versions:
        raise HandshakeError(f"the host speaks plugin protocol versions {sorted(versions)}; "
                             f"this plugin speaks {APP_PROTOCOL_VERSION}")
    return APP_PROTOCOL_VERSION


class Listener:
    """Where the host connects: a unix socket path, or host:port on loopback."""

    __slots__ = ("address", "network")

    def __init__(self, network: str, address: str) -> None:
        self.network = network  # "unix" or "tcp"
        self.address = address

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Listener) and (self.network, self.address) == (other.network, other.address)

    def __hash__(self) -> int:
        return hash((self.network, self.address))

    def __repr__(self) -> str:
        return f"Listener({self.network!r}, {self.address!r})"


def private_dir(env: Mapping[str, str]) -> str:
    """A fresh 0700 directory for our sockets, so no other user can connect to (or replace) them.

    Created under PLUGIN_UNIX_SOCKET_DIR when the host sets it, else under
    $TMPDIR or /tmp, and shared with PLUGIN_UNIX_SOCKET_GROUP when that is set,
    as go-plugin does. Made here, not with tempfile, which loads shutil and
    random before the handshake line.
    """
    parent = env.get("PLUGIN_UNIX_SOCKET_DIR") or env.get("TMPDIR") or "/tmp"
    path = ""
    for _ in range(100):
        path = os.path.join(parent, "plugin" + os.urandom(6).hex())
        try:
            os.mkdir(path, 0o700)
            break
        except FileExistsError:
            continue
    else:
        raise FileExistsError(f"no free name for a socket directory in {parent}")
    group = env.get("PLUGIN_UNIX_SOCKET_GROUP")
    if group:
        _share_with_group(path, group)
    return path


def _share_with_group(path: str, group: str) -> None:
    import grp

    try:
        gid = int(group) if group.isdigit() else grp.getgrnam(group).gr_gid
    except KeyError:
        raise HandshakeError(f"PLUGIN_UNIX_SOCKET_GROUP names an unknown group {group!r}") from None
    os.chown(path, -1, gid)
    os.chmod(path, 0o770)


def tcp_port_range(env: Mapping[str, str]) -> range:
    """PLUGIN_MIN_PORT..PLUGIN_MAX_PORT (go-plugin's defaults when unset)."""
    try:
        lo = int(env.get("PLUGIN_MIN_PORT") or 10000)
        hi = int(env.get("PLUGIN_MAX_PORT") or 25000)
    except ValueError:
        raise HandshakeError("PLUGIN_MIN_PORT and PLUGIN_MAX_PORT must be integers") from None
    if not 0 < lo <= hi < 65536:
        raise HandshakeError(f"invalid plugin port range {lo}..{hi}")
    return range(lo, hi + 1)


def handshake_line(version: int, listener: Listener, server_cert: str, env: Mapping[str, str]) -> str:
    line = f"{CORE_PROTOCOL_VERSION}|{version}|{listener.network}|{listener.address}|grpc|{server_cert}"
    # A host that sets PLUGIN_MULTIPLEX_GRPC reads a seventh field; we do not
    # multiplex broker connections over one socket.
    if env.get("PLUGIN_MULTIPLEX_GRPC"):
        line += "|false"
    return line

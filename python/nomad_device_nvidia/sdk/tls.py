"""go-plugin's AutoMTLS, plugin side.

The host puts its one-time client certificate (PEM) in PLUGIN_CLIENT_CERT.
We make a one-time server certificate the way go-plugin does (self signed,
CA, for "localhost"), require the host's certificate from every client, and
return ours for the handshake line (base64 DER, unpadded).

grpcio's TLS cannot be used: go-plugin's client key is ECDSA P-521 and
grpcio's server never offers that signature scheme, so the Go client sends
no certificate. TLS is therefore terminated with Python's `ssl` in front of
the gRPC server's private plaintext socket (see `TLSRelay`).
`cryptography` is imported only here, so plain starts stay cheap.
"""

from __future__ import annotations

import base64
import datetime
import logging
import os
import selectors
import socket
import ssl
import threading
import time
from dataclasses import dataclass

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServerTLS:
    context: ssl.SSLContext
    handshake_cert: str  # base64 (raw, no padding) of the DER certificate


def auto_mtls(client_cert_pem: str, key_dir: str) -> ServerTLS:
    """Make the server side of AutoMTLS; key material is written to `key_dir` (0700) only to load it."""
    try:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise RuntimeError(
            "the host asked for AutoMTLS (PLUGIN_CLIENT_CERT is set) but the 'cryptography' package is "
            "not installed; install nomad-device-nvidia[tls]") from exc

    try:
        x509.load_pem_x509_certificate(client_cert_pem.encode())
    except ValueError as exc:
        raise RuntimeError(f"PLUGIN_CLIENT_CERT is not a PEM certificate: {exc}") from None

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost"),
                      x509.NameAttribute(NameOID.ORGANIZATION_NAME, "nomad-device-nvidia")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(seconds=30))
        .not_valid_after(now + datetime.timedelta(days=365 * 30))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_encipherment=True, key_agreement=True,
                                     key_cert_sign=True, content_commitment=False, data_encipherment=False,
                                     crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                       critical=False)
        .sign(key, hashes.SHA256())
    )
    pem_path = os.path.join(key_dir, "server.pem")
    fd = os.open(pem_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))
        f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))
    try:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(pem_path)
    finally:
        os.unlink(pem_path)
    context.verify_mode = ssl.CERT_REQUIRED
    context.load_verify_locations(cadata=client_cert_pem)
    context.set_alpn_protocols(["h2"])  # grpc-go refuses a TLS server that does not negotiate h2
    der = cert.public_bytes(serialization.Encoding.DER)
    return ServerTLS(context, base64.b64encode(der).decode().rstrip("="))


class TLSRelay:
    """Accept TLS on the public socket; relay the plaintext to the gRPC server's private socket.

    One thread per connection (go-plugin opens one), driving an `ssl.SSLObject`
    over memory buffers so a single thread can serve both directions. At most
    `max_connections` at a time (more are closed at once), and a client that
    has not finished its TLS handshake within `handshake_timeout` is dropped.
    """

    def __init__(self, context: ssl.SSLContext, public: socket.socket, backend_path: str, *,
                 max_connections: int = 16, handshake_timeout: float = 10.0) -> None:
        self._context = context
        self._public = public
        self._backend_path = backend_path
        self._handshake_timeout = handshake_timeout
        self._slots = threading.BoundedSemaphore(max_connections)
        self._max_connections = max_connections
        self._refused = 0
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._accept, name="tls-accept", daemon=True)

    def start(self) -> None:
        self._public.listen(16)
        self._thread.start()

    def close(self) -> None:
        self._closed.set()
        try:
            self._public.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._public.close()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                conn, _ = self._public.accept()
            except OSError:
                return
            if not self._slots.acquire(blocking=False):
                conn.close()
                self._refused += 1
                if self._refused in (1, 10, 100) or self._refused % 1000 == 0:  # a flood logs a few lines
                    log.warning("TLS connection refused: too many open",
                                extra={"bound": self._max_connections, "refused": self._refused})
                continue
            threading.Thread(target=self._serve, args=(conn,), name="tls-conn", daemon=True).start()

    def _serve(self, raw: socket.socket) -> None:
        try:
            self._relay(raw)
        finally:
            self._slots.release()

    def _relay(self, raw: socket.socket) -> None:
        incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        tls = self._context.wrap_bio(incoming, outgoing, server_side=True)
        backend: socket.socket | None = None
        deadline = time.monotonic() + self._handshake_timeout
        try:
            while True:  # handshake, against the deadline
                try:
                    tls.do_handshake()
                    break
                except ssl.SSLWantReadError:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        raise TimeoutError("TLS handshake not finished in time") from None
                    raw.settimeout(remaining)
                    raw.sendall(outgoing.read())
                    data = raw.recv(65536)
                    if not data:
                        return
                    incoming.write(data)
            raw.settimeout(None)
            raw.sendall(outgoing.read())
            backend = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            backend.connect(self._backend_path)
            self._pump(raw, backend, tls, incoming, outgoing)
        except (OSError, ssl.SSLError) as exc:  # TimeoutError (socket.timeout) is an OSError
            if not self._closed.is_set():
                log.debug("TLS connection ended", extra={"error": str(exc)})
        finally:
            raw.close()
            if backend is not None:
                backend.close()

    def _pump(self, raw: socket.socket, backend: socket.socket, tls: ssl.SSLObject,
              incoming: ssl.MemoryBIO, outgoing: ssl.MemoryBIO) -> None:
        sel = selectors.DefaultSelector()
        sel.register(raw, selectors.EVENT_READ, "raw")
        sel.register(backend, selectors.EVENT_READ, "backend")
        try:
            while not self._closed.is_set():
                for key, _ in sel.select(timeout=1.0):
                    sock: socket.socket = key.fileobj  # type: ignore[assignment]
                    data = sock.recv(262144)
                    if not data:
                        return
                    if key.data == "raw":
                        incoming.write(data)
                        while True:
                            try:
                                plain = tls.read(262144)
                            except ssl.SSLWantReadError:
                                break
                            except ssl.SSLZeroReturnError:
                                return
                            if not plain:
                                return
                            backend.sendall(plain)
                    else:
                        tls.write(data)
                    pending = outgoing.read()
                    if pending:
                        raw.sendall(pending)
        finally:
            sel.close()

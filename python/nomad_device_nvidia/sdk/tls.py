"""go-plugin's AutoMTLS, plugin side.

The host puts its one-time client certificate (PEM) in PLUGIN_CLIENT_CERT.
We make a one-time server certificate the same way go-plugin does (self
signed, CA, for "localhost"), require the host's certificate from every
client, and return our certificate for the handshake line (base64 DER,
unpadded). `cryptography` is imported only here, so plain starts stay cheap.
"""

from __future__ import annotations

import base64
import datetime
from dataclasses import dataclass

import grpc


@dataclass(frozen=True)
class ServerTLS:
    credentials: grpc.ServerCredentials
    handshake_cert: str  # base64 (raw, no padding) of the DER certificate


def auto_mtls(client_cert_pem: str) -> ServerTLS:
    try:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise RuntimeError(
            "the host asked for AutoMTLS (PLUGIN_CLIENT_CERT is set) but the 'cryptography' package is "
            "not installed; install nomad-device-nvidia[tls]") from exc

    # Refuse a malformed client certificate up front with a clear message.
    x509.load_pem_x509_certificate(client_cert_pem.encode())

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
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    creds = grpc.ssl_server_credentials([(key_pem, cert_pem)], root_certificates=client_cert_pem.encode(),
                                        require_client_auth=True)
    der = cert.public_bytes(serialization.Encoding.DER)
    return ServerTLS(creds, base64.b64encode(der).decode().rstrip("="))

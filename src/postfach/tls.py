"""TLS: a self-signed certificate on first run, and server contexts (TLS 1.2 and newer only).

Server policy (`server_context`): TLS 1.2 or 1.3; for TLS 1.2 only ECDHE key exchange with an
AEAD cipher (AES-GCM, ChaCha20-Poly1305) -- no RC4, 3DES, CBC, static RSA, DHE, export or
anonymous suites (TLS 1.3 suites are all AEAD); no compression (CRIME), no renegotiation.

`ReloadableTls` lets SIGHUP swap the certificate under running listeners: they keep one SSL
context whose handshake callback points each new connection at the newest one, so
connections already open keep the session they have and new ones get the new certificate.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import ssl
from pathlib import Path
from typing import Final

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


def ensure_self_signed(cert: Path, key: Path, hostname: str) -> bool:
    """Create a self-signed certificate for hostname and loopback if none exists. True if made."""
    if cert.exists() and key.exists():
        return False
    cert.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    private = ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] = [x509.DNSName(hostname), x509.DNSName("localhost")]
    names += [x509.IPAddress(ipaddress.ip_address(a)) for a in ("127.0.0.1", "::1")]
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname)])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(private.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=825))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(private, hashes.SHA256())
    )
    fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(
            private.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
    cert.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    return True


#: TLS 1.2 suites: forward secrecy and authenticated encryption only.
SERVER_CIPHERS: Final = "ECDHE+AESGCM:ECDHE+CHACHA20:!aNULL:!eNULL:!MD5:!SHA1:!DSS"


def server_context(cert: Path, key: Path) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers(SERVER_CIPHERS)
    ctx.options |= (
        ssl.OP_NO_COMPRESSION
        | ssl.OP_NO_RENEGOTIATION
        | ssl.OP_CIPHER_SERVER_PREFERENCE
        | ssl.OP_SINGLE_ECDH_USE
    )
    ctx.load_cert_chain(cert, key)
    return ctx


class ReloadableTls:
    """The server SSL context every listener holds, with a certificate that can be replaced.

    ``context`` never changes (asyncio servers and STARTTLS upgrades keep a reference to it).
    Its SNI callback -- OpenSSL calls it for every ClientHello, with or without a server name --
    moves each new handshake to the newest context, so `reload` affects only handshakes that
    start afterwards.
    """

    def __init__(self, cert: Path, key: Path) -> None:
        self.context = server_context(cert, key)
        self._current = self.context
        self.context.sni_callback = self._select
        self.cert, self.key = cert, key

    def _select(
        self, conn: ssl.SSLSocket | ssl.SSLObject, server_name: str | None, ctx: ssl.SSLContext
    ) -> None:
        current = self._current
        if conn.context is not current:
            conn.context = current

    def reload(self, cert: Path, key: Path) -> str:
        """Load cert and key into a new context and use it from now on; its SHA-256
        fingerprint. Raises (OSError, ssl.SSLError, ValueError) and keeps the old one if the
        files are unreadable, malformed or do not match."""
        fresh = server_context(cert, key)
        shown = fingerprint(cert)
        self._current = fresh
        self.cert, self.key = cert, key
        return shown


def fingerprint(cert: Path) -> str:
    c = x509.load_pem_x509_certificate(cert.read_bytes())
    return c.fingerprint(hashes.SHA256()).hex(":").upper()

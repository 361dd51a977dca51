"""DKIM signing (RFC 6376) of submitted mail, one RSA key per sender domain (services ring).

Keys are made on first use (RSA 2048, RFC 8301) and kept as
``<data>/dkim/<domain>/<selector>.pem`` (mode 0600). ``postfach domain dkim DOMAIN`` prints
the TXT record to publish at ``<selector>._domainkey.<domain>``. Signing uses dkimpy with
relaxed/relaxed canonicalisation, which survives the header re-folding and trailing-space
changes common on the way.
"""

from __future__ import annotations

import base64
import logging
import os
import threading
from pathlib import Path

import dkim as dkimpy
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

log = logging.getLogger(__name__)

# RFC 6376 §5.4.1: From must be signed; these others should be (and are oversigned by nobody).
SIGNED_HEADERS = (
    b"from", b"to", b"cc", b"subject", b"date", b"message-id", b"reply-to", b"in-reply-to",
    b"references", b"mime-version", b"content-type", b"content-transfer-encoding",
)  # fmt: skip


class DkimKeys:
    def __init__(self, data_dir: Path, selector: str = "postfach") -> None:
        self.directory = Path(data_dir) / "dkim"
        self.selector = selector
        self._lock = threading.Lock()

    def key_path(self, domain: str) -> Path:
        domain = domain.lower().rstrip(".")
        if not domain or "/" in domain or domain.startswith("."):
            raise ValueError(f"not a domain: {domain!r}")
        return self.directory / domain / f"{self.selector}.pem"

    def private_key(self, domain: str) -> bytes:
        """The domain's PEM key, generated (and stored durably) if there is none yet."""
        path = self.key_path(domain)
        with self._lock:
            if path.exists():
                return path.read_bytes()
            key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
            pem = key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.TraditionalOpenSSL,  # PKCS#1, what dkimpy reads
                serialization.NoEncryption(),
            )
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            tmp = path.with_suffix(f".{os.getpid()}.tmp")  # one per worker process
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(pem)
                f.flush()
                os.fsync(f.fileno())
            try:
                os.link(tmp, path)  # the first process's key wins; a later one uses it
            except FileExistsError:
                return path.read_bytes()
            finally:
                os.unlink(tmp)
            log.info("event=dkim_key_created domain=%s selector=%s", domain, self.selector)
            return pem

    def dns_name(self, domain: str) -> str:
        return f"{self.selector}._domainkey.{domain.lower().rstrip('.')}"

    def dns_value(self, domain: str) -> str:
        """The TXT record's value: ``v=DKIM1; k=rsa; p=<base64 SubjectPublicKeyInfo>``."""
        key = serialization.load_pem_private_key(self.private_key(domain), password=None)
        der = key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        return f"v=DKIM1; k=rsa; p={base64.b64encode(der).decode()}"

    def zone_record(self, domain: str) -> str:
        """The record in zone-file syntax, the value split in strings of at most 255 octets."""
        value = self.dns_value(domain)
        chunks = " ".join(f'"{value[i : i + 250]}"' for i in range(0, len(value), 250))
        return f"{self.dns_name(domain)}. IN TXT ( {chunks} )"

    def sign(self, message: bytes, domain: str) -> bytes:
        """The message with a DKIM-Signature header for ``domain`` prepended (CRLF lines)."""
        header: bytes = dkimpy.sign(
            message,
            self.selector.encode(),
            domain.lower().encode(),
            self.private_key(domain),
            canonicalize=(b"relaxed", b"relaxed"),
            include_headers=[h for h in SIGNED_HEADERS if _has_header(message, h)] or [b"from"],
            linesep=b"\r\n",
        )
        return header + message


def _has_header(message: bytes, name: bytes) -> bool:
    end = message.find(b"\r\n\r\n")
    head = message if end < 0 else message[: end + 2]
    return any(line.lower().startswith(name + b":") for line in head.split(b"\r\n"))

"""Passwords and certificate pins in ``fetch.toml`` and ``sync.toml`` (pure core).

Shared by `postfach.client.config` (``postfach fetch``) and `postfach.client.sync.account`
(``postfach sync``); a module of its own so that ``postfach sync`` does not import the fetch
configuration (its policies and UIDL state) to read its own file.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Callable, Mapping
from typing import Any

from postfach.client.errors import FetchConfigError

__all__ = ["format_fingerprint", "parse_fingerprint", "secrets_and_pin"]


def parse_fingerprint(text: str) -> bytes:
    """``SHA256:AB:CD:...`` (what ``postfach`` prints), bare hex with or without colons, or
    ``SHA256:`` + base64 as OpenSSH shows it -> the 32-octet digest."""
    t = text.strip()
    if t[:7].upper() == "SHA256:":
        t = t[7:]
    hexdigits = t.replace(":", "").replace(" ", "")
    if re.fullmatch(r"[0-9A-Fa-f]{64}", hexdigits):
        return bytes.fromhex(hexdigits)
    if re.fullmatch(r"[A-Za-z0-9+/]{43}=?", t):
        try:
            digest = base64.b64decode(t.rstrip("=") + "=", validate=True)
        except binascii.Error:
            digest = b""
        if len(digest) == 32:
            return digest
    raise FetchConfigError(
        f"not a SHA-256 fingerprint: {text!r} (use SHA256: and 64 hex digits, as postfach prints)"
    )


def format_fingerprint(digest: bytes) -> str:
    return "SHA256:" + digest.hex(":").upper()


def secrets_and_pin(
    v: Mapping[str, Any],
    string: Callable[[str], str | None],
    where: str,
    tls: object,
) -> tuple[str | tuple[str, ...] | None, str | None, bytes | None]:
    """``password_command`` or ``password_file`` (exactly one), and the ``fingerprint`` pin.

    Shared by ``fetch.toml`` and ``sync.toml``; raises FetchConfigError naming ``where``.
    """
    command: str | tuple[str, ...] | None
    raw = v.get("password_command")
    if isinstance(raw, list):
        if not raw or not all(isinstance(a, str) and a for a in raw):
            raise FetchConfigError(f"{where}: password_command must be a string or a list")
        command = tuple(raw)
    else:
        command = string("password_command") if raw is not None else None
    password_file = string("password_file")
    if (command is None) == (password_file is None):
        raise FetchConfigError(f"{where}: set exactly one of password_command or password_file")
    fp_text = string("fingerprint")
    fingerprint = None
    if fp_text is not None:
        try:
            fingerprint = parse_fingerprint(fp_text)
        except FetchConfigError as exc:
            raise FetchConfigError(f"{where}: {exc}") from None
    if tls == "none" and (fingerprint is not None or "ca_file" in v):
        raise FetchConfigError(f'{where}: fingerprint and ca_file need tls = "tls" or "starttls"')
    return command, password_file, fingerprint

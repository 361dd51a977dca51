"""SASL PLAIN (RFC 4616) and LOGIN decoding (pure core, shared by POP3, SMTP and IMAP).

Only decoding lives here: checking the credentials is the caller's business. Every exchange is a
small state machine with the same shape, so a protocol drives both mechanisms alike::

    exchange = start_exchange("PLAIN", initial_response)   # initial_response: str | None
    while exchange.challenge is not None:
        send("+ " + exchange.challenge)                     # base64; "" for an empty challenge
        line = receive()
        if is_cancel(line):
            ...                                            # the client gave up: reply with an error
        exchange.respond(line)                             # raises SaslError on malformed input
    credentials = exchange.credentials()

Base64 is decoded strictly (RFC 4648 alphabet, padding required, no whitespace). An initial
response of ``"="`` means an empty one (RFC 4954, RFC 5034).
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from typing import Final, Protocol

__all__ = [
    "CANCEL",
    "MECHANISMS",
    "LoginExchange",
    "PlainExchange",
    "SaslCredentials",
    "SaslError",
    "SaslExchange",
    "UnknownMechanism",
    "decode_base64",
    "decode_plain",
    "encode_base64",
    "is_cancel",
    "parse_plain",
    "start_exchange",
]

#: The mechanisms this module can decode, in order of preference for advertising.
MECHANISMS: Final = ("PLAIN", "LOGIN")

#: A client line that cancels an exchange (RFC 4954, RFC 5034, RFC 3501).
CANCEL: Final = "*"

#: Upper bound for any decoded identity or password (RFC 4616 requires at least 255).
MAX_FIELD_OCTETS: Final = 1024

_USERNAME_CHALLENGE: Final = "VXNlcm5hbWU6"  # base64("Username:"), what LOGIN clients expect
_PASSWORD_CHALLENGE: Final = "UGFzc3dvcmQ6"  # base64("Password:")


class SaslError(ValueError):
    """Malformed SASL client input: bad base64, bad UTF-8, missing or empty fields."""


class UnknownMechanism(SaslError):
    """The client asked for a mechanism this module does not implement."""


@dataclass(frozen=True, slots=True)
class SaslCredentials:
    authzid: str  # "" when the client does not ask to act as someone else
    authcid: str
    password: str

    def __repr__(self) -> str:  # never put a password into a log line by accident
        return f"SaslCredentials(authzid={self.authzid!r}, authcid={self.authcid!r}, password=***)"


def decode_base64(text: str) -> bytes:
    """Strict base64 decoding of one client line; ``"="`` (and ``""``) decode to ``b""``."""
    if text in ("", "="):
        return b""
    try:
        raw = text.encode("ascii")
    except UnicodeEncodeError:
        raise SaslError("response is not base64") from None
    if len(raw) % 4 or len(raw) - len(raw.rstrip(b"=")) > 2:
        raise SaslError("response is not base64")
    try:
        return base64.b64decode(raw, validate=True)
    except binascii.Error:
        raise SaslError("response is not base64") from None


def encode_base64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _utf8(field: bytes, what: str) -> str:
    if len(field) > MAX_FIELD_OCTETS:
        raise SaslError(f"{what} too long")
    try:
        return field.decode("utf-8")
    except UnicodeDecodeError:
        raise SaslError(f"{what} is not UTF-8") from None


def parse_plain(message: bytes) -> tuple[str, str, str]:
    """RFC 4616 ``[authzid] NUL authcid NUL passwd`` -> ``(authzid, authcid, password)``."""
    parts = message.split(b"\x00")
    if len(parts) != 3:
        raise SaslError("PLAIN message needs exactly two NUL separators")
    authzid, authcid, passwd = parts
    if not authcid:
        raise SaslError("PLAIN authentication identity is empty")
    if not passwd:
        raise SaslError("PLAIN password is empty")
    return _utf8(authzid, "authzid"), _utf8(authcid, "authcid"), _utf8(passwd, "password")


def decode_plain(b64: str) -> tuple[str, str, str]:
    """Decode a base64 PLAIN response into ``(authzid, authcid, password)``.

    Raises SaslError on malformed input; ``"="`` (an empty response) is malformed for PLAIN.
    """
    return parse_plain(decode_base64(b64))


def is_cancel(line: str) -> bool:
    return line.strip() == CANCEL


class SaslExchange(Protocol):
    """One server-side authentication exchange."""

    @property
    def mechanism(self) -> str: ...

    @property
    def challenge(self) -> str | None:
        """The base64 challenge to send next, or None when the client has said everything."""
        ...

    def respond(self, b64: str) -> None:
        """Feed the client's answer to the current challenge; raises SaslError."""
        ...

    def credentials(self) -> SaslCredentials:
        """The decoded credentials; only valid once ``challenge`` is None."""
        ...


class PlainExchange:
    """PLAIN: one (possibly initial) response carrying everything."""

    mechanism: Final = "PLAIN"

    def __init__(self, initial_response: str | None = None) -> None:
        self._creds: SaslCredentials | None = None
        if initial_response is not None:
            self.respond(initial_response)

    @property
    def challenge(self) -> str | None:
        return "" if self._creds is None else None

    def respond(self, b64: str) -> None:
        if self._creds is not None:
            raise SaslError("PLAIN exchange already complete")
        self._creds = SaslCredentials(*decode_plain(b64))

    def credentials(self) -> SaslCredentials:
        if self._creds is None:
            raise SaslError("PLAIN exchange not complete")
        return self._creds


class LoginExchange:
    """LOGIN (draft-murchison-sasl-login): username, then password, each base64 on its own line.

    Some clients send the username as an initial response (``AUTH LOGIN dXNlcg==``); that is
    accepted and the exchange goes straight to the password challenge.
    """

    mechanism: Final = "LOGIN"

    def __init__(self, initial_response: str | None = None) -> None:
        self._username: str | None = None
        self._password: str | None = None
        if initial_response is not None:
            self.respond(initial_response)

    @property
    def challenge(self) -> str | None:
        if self._username is None:
            return _USERNAME_CHALLENGE
        if self._password is None:
            return _PASSWORD_CHALLENGE
        return None

    def respond(self, b64: str) -> None:
        if self._username is None:
            username = _utf8(decode_base64(b64), "username")
            if not username:
                raise SaslError("LOGIN username is empty")
            self._username = username
        elif self._password is None:
            password = _utf8(decode_base64(b64), "password")
            if not password:
                raise SaslError("LOGIN password is empty")
            self._password = password
        else:
            raise SaslError("LOGIN exchange already complete")

    @property
    def username(self) -> str | None:
        return self._username

    def credentials(self) -> SaslCredentials:
        if self._username is None or self._password is None:
            raise SaslError("LOGIN exchange not complete")
        return SaslCredentials("", self._username, self._password)


def start_exchange(mechanism: str, initial_response: str | None = None) -> SaslExchange:
    """Begin an exchange for ``mechanism`` (case-insensitive).

    Raises UnknownMechanism for anything but PLAIN and LOGIN, SaslError for a malformed initial
    response.
    """
    mech = mechanism.upper()
    if mech == "PLAIN":
        return PlainExchange(initial_response)
    if mech == "LOGIN":
        return LoginExchange(initial_response)
    raise UnknownMechanism(f"unsupported SASL mechanism {mechanism!r}")

"""POP3 wire format, sans I/O (pure core; RFC 1939, RFC 2449).

``Pop3Connection`` turns received bytes into events, in the manner of h11: feed it with
``receive_data`` and pull events with ``next_event`` until it returns ``NEED_DATA``. Lines are
parsed lazily, one per ``next_event`` call, so the caller may switch the parser into SASL mode
(``expect_sasl_response``) or throw away pipelined input (``discard_buffer``, for STLS) between
two events and have that apply to the very next line.

The reply builders produce complete wire lines. ``dot_stuff`` and ``multiline_parts`` do their
work with a handful of ``bytes.replace``/``join`` calls, never a Python loop over lines, so
sending a large message costs a few memory copies.

No asyncio, no sockets, no clock.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Final, Literal, TypeAlias

from postfach.errors import Pop3Err

__all__ = [
    "ALLOWED",
    "COMMANDS",
    "MAX_COMMAND_LINE",
    "MAX_SASL_LINE",
    "NEED_DATA",
    "Command",
    "Event",
    "LineTooLong",
    "Pop3Connection",
    "SaslResponse",
    "State",
    "dot_stuff",
    "err",
    "multiline",
    "multiline_parts",
    "ok",
    "top_of_message",
]

#: RFC 2449 section 4: a command line is at most 255 octets including the CRLF.
MAX_COMMAND_LINE: Final = 255
#: A client line inside an AUTH exchange (base64 of credentials) may be longer (RFC 5034 sets
#: no limit; this mirrors the 12288 octets RFC 4954 asks SMTP servers to accept).
MAX_SASL_LINE: Final = 12288 + 2


class State(enum.Enum):
    AUTHORIZATION = "AUTHORIZATION"
    TRANSACTION = "TRANSACTION"
    UPDATE = "UPDATE"


#: Which commands each state accepts. NOOP is TRANSACTION-only as RFC 1939 says; CAPA works in
#: both AUTHORIZATION and TRANSACTION (RFC 2449); UPDATE accepts nothing (the connection is
#: closing). APOP is deliberately absent.
ALLOWED: Final[dict[State, frozenset[str]]] = {
    State.AUTHORIZATION: frozenset({"USER", "PASS", "AUTH", "STLS", "CAPA", "QUIT"}),
    State.TRANSACTION: frozenset(
        {"STAT", "LIST", "RETR", "DELE", "NOOP", "RSET", "QUIT", "TOP", "UIDL", "CAPA"}
    ),
    State.UPDATE: frozenset(),
}

#: Every command this server knows, in any state.
COMMANDS: Final = frozenset(name for names in ALLOWED.values() for name in names)


# ---- events ---------------------------------------------------------------------------------


class _Sentinel(enum.Enum):
    NEED_DATA = "NEED_DATA"


#: ``next_event`` returns this when no complete line is buffered.
NEED_DATA: Final = _Sentinel.NEED_DATA


@dataclass(frozen=True, slots=True)
class Command:
    """One command line.

    ``name`` is the keyword in upper case, ``args`` the whitespace-separated arguments, and
    ``tail`` everything after the keyword and its single separating space, verbatim (RFC 1939
    lets PASS treat spaces as part of the password).
    """

    name: str
    args: tuple[str, ...] = ()
    tail: str = ""


@dataclass(frozen=True, slots=True)
class SaslResponse:
    """A client line inside an AUTH exchange, returned verbatim (minus the line end)."""

    line: str

    def __repr__(self) -> str:  # it carries credentials
        return "SaslResponse(line=***)"


@dataclass(frozen=True, slots=True)
class LineTooLong:
    """A line over the limit was received and thrown away; ``octets`` counts what was dropped."""

    octets: int


Event: TypeAlias = Command | SaslResponse | LineTooLong | Literal[_Sentinel.NEED_DATA]


class Pop3Connection:
    """Splits the client byte stream into events.

    Lines end with CRLF; a bare LF is accepted too. A line longer than the limit is discarded
    up to and including its line end and then reported once as ``LineTooLong``, so memory stays
    bounded however long the line is.
    """

    def __init__(
        self, max_line: int = MAX_COMMAND_LINE, max_sasl_line: int = MAX_SASL_LINE
    ) -> None:
        if max_line < 3 or max_sasl_line < 3:
            raise ValueError("line limits must allow at least one octet and CRLF")
        self._max_line = max_line
        self._max_sasl_line = max_sasl_line
        self._buf = bytearray()
        self._scanned = 0  # this many octets at the front of _buf hold no LF
        self._discarded = 0  # > 0: inside an overlong line, this many octets dropped so far
        self._sasl = False

    def receive_data(self, data: bytes) -> None:
        self._buf += data

    @property
    def buffered(self) -> int:
        """Octets received but not yet returned as events."""
        return len(self._buf)

    @property
    def line_octets(self) -> int:
        """Octets of the line in progress, those kept and those thrown away as too long."""
        return len(self._buf) + self._discarded

    def expect_sasl_response(self) -> None:
        """Return the next line verbatim as a SaslResponse (with the longer SASL limit)."""
        self._sasl = True

    def discard_buffer(self) -> int:
        """Drop everything buffered (pipelined plaintext after STLS); returns the octet count."""
        n = len(self._buf)
        self._buf.clear()
        self._scanned = 0
        self._discarded = 0
        self._sasl = False
        return n

    def next_event(self) -> Event:
        limit = self._max_sasl_line if self._sasl else self._max_line
        nl = self._buf.find(b"\n", self._scanned)
        if nl < 0:
            # The line is surely too long once its first `limit` octets hold no LF: even if the
            # last of them is the CR, the content alone is already limit - 1 > limit - 2.
            if self._discarded or len(self._buf) >= limit:
                self._discarded += len(self._buf)
                self._buf.clear()
                self._scanned = 0
            else:
                self._scanned = len(self._buf)
            return NEED_DATA

        raw = bytes(self._buf[:nl])
        del self._buf[: nl + 1]
        self._scanned = 0
        sasl, self._sasl = self._sasl, False
        if self._discarded:
            dropped = self._discarded + nl + 1
            self._discarded = 0
            return LineTooLong(dropped)
        if raw.endswith(b"\r"):
            raw = raw[:-1]
        if len(raw) + 2 > limit:
            return LineTooLong(nl + 1)
        text = raw.decode("utf-8", errors="replace")
        if sasl:
            return SaslResponse(text)
        return _parse_command(text)


def _parse_command(text: str) -> Command:
    keyword, _, tail = text.partition(" ")
    # Tolerate tabs and runs of spaces between arguments; PASS uses `tail` instead.
    return Command(keyword.strip().upper(), tuple(tail.split()), tail)


# ---- replies --------------------------------------------------------------------------------


def _clean(text: str) -> str:
    """Keep reply text on one line whatever it contains."""
    if "\r" in text or "\n" in text:
        text = text.replace("\r", " ").replace("\n", " ")
    return text


def ok(text: str = "") -> bytes:
    """``+OK text`` CRLF."""
    text = _clean(text)
    return f"+OK {text}\r\n".encode() if text else b"+OK\r\n"


def err(text: str, code: str | None = None) -> bytes:
    """``-ERR [CODE] text`` CRLF (RFC 2449 response codes such as ``AUTH`` or ``IN-USE``)."""
    return Pop3Err(_clean(text), code).reply()


def _stuffed_parts(data: bytes) -> list[bytes]:
    if not data:
        return []
    parts: list[bytes] = []
    if data.startswith(b"."):
        parts.append(b".")
    # A line starts after every LF (bare LFs included, so a client splitting on LF is safe too).
    # Most messages have no line starting with a dot: look first, with rfind (CPython's reverse
    # search scans about twice as fast as find/replace/count do for this two-byte needle).
    parts.append(data.replace(b"\n.", b"\n..") if data.rfind(b"\n.") >= 0 else data)
    if not data.endswith(b"\r\n"):
        if data.endswith(b"\n"):  # bare LF at the very end: make it a CRLF
            parts[-1] = parts[-1][:-1]
        parts.append(b"\r\n")
    return parts


def dot_stuff(data: bytes) -> bytes:
    """Byte-stuff a multi-line body (RFC 1939 section 3).

    Every line starting with "." gets another "."; the result ends with CRLF (unless ``data`` is
    empty), ready for the terminating ``.\\r\\n``.
    """
    return b"".join(_stuffed_parts(bytes(data)))


def multiline_parts(first_line: str, body: bytes) -> list[bytes]:
    """A multi-line reply as a few large chunks, to be written one after another.

    ``first_line`` is the text after ``+OK``; ``body`` is stuffed here, so pass raw content.
    """
    return [ok(first_line), *_stuffed_parts(bytes(body)), b".\r\n"]


def multiline(first_line: str, body: bytes) -> bytes:
    """``+OK first_line`` CRLF, dot-stuffed ``body``, ``.`` CRLF."""
    return b"".join(multiline_parts(first_line, body))


def top_of_message(message: bytes, lines: int) -> bytes:
    """The header, the blank line and the first ``lines`` body lines (RFC 1939 TOP).

    ``message`` is CRLF-normalised. A message without a blank line is all header and is returned
    whole.
    """
    if lines < 0:
        raise ValueError("line count must not be negative")
    if message.startswith(b"\r\n"):
        body_start = 2
    else:
        end = message.find(b"\r\n\r\n")
        if end < 0:
            return message
        body_start = end + 4
    if lines == 0:
        return message[:body_start]
    if message.count(b"\n", body_start) < lines:
        return message
    pos = body_start
    for _ in range(lines):  # bounded by the line count the client asked for
        pos = message.index(b"\n", pos) + 1
    return message[:pos]

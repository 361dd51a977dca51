"""POP3 client, sans I/O (pure core; RFC 1939, RFC 2449, RFC 5034, RFC 2595).

The client-role twin of ``postfach.pop3.protocol``, in the manner of h11: the caller moves bytes,
this module only turns commands into bytes and received bytes into replies. It knows which
commands answer with a multi-line reply, so several commands may be in flight at once
(RFC 2449 PIPELINING) and their replies come back in order::

    conn = Pop3ClientConnection()          # the server speaks first: the greeting is expected
    sock.sendall(conn.send("RETR", "1") + conn.send("RETR", "2"))
    while (reply := conn.next_event()) is NEED_DATA:
        conn.receive_data(sock.recv(65536))

Multi-line bodies are found with one ``bytes.find`` per received chunk (never a Python loop over
lines) and dot-unstuffed with one ``bytes.replace``, so a large message costs a few copies.

No asyncio, no sockets, no clock.
"""

from __future__ import annotations

import enum
from collections import deque
from dataclasses import dataclass
from typing import Final, Literal, TypeAlias

from postfach.client.errors import Pop3ProtocolError

__all__ = [
    "MAX_COMMAND_LINE",
    "NEED_DATA",
    "Pop3ClientConnection",
    "Reply",
    "parse_capa",
    "parse_list",
    "parse_stat",
    "parse_uidl",
]

#: RFC 2449 section 4: a command line is at most 255 octets including the CRLF.
MAX_COMMAND_LINE: Final = 255
#: RFC 2449 allows status lines of 512 octets; be lenient with servers that exceed it.
MAX_STATUS_LINE: Final = 8192
#: The largest multi-line body (a message) accepted before giving up on the connection.
MAX_BODY: Final = 1 << 30

#: Commands whose +OK reply is always multi-line (RFC 1939, RFC 2449).
_MULTILINE_ALWAYS: Final = frozenset({"CAPA", "RETR", "TOP"})
#: Commands whose +OK reply is multi-line when they carry no argument.
_MULTILINE_WITHOUT_ARGS: Final = frozenset({"LIST", "UIDL"})


class _Sentinel(enum.Enum):
    NEED_DATA = "NEED_DATA"


#: ``next_event`` returns this when no complete reply is buffered.
NEED_DATA: Final = _Sentinel.NEED_DATA


class _Expect(enum.Enum):
    SINGLE = "single"
    MULTILINE = "multiline"
    SASL = "sasl"  # AUTH: "+ challenge" lines until +OK / -ERR


@dataclass(frozen=True, slots=True)
class Reply:
    """One server reply.

    ``text`` follows ``+OK``/``-ERR`` with any RFC 2449 response code removed into ``code``;
    ``body`` is the unstuffed content of a multi-line reply (lines end as the server sent them,
    CRLF on a correct server). ``continuation`` marks a ``+ challenge`` line inside AUTH.
    """

    ok: bool
    text: str
    command: str
    code: str | None = None
    body: bytes | None = None
    continuation: bool = False


Event: TypeAlias = Reply | Literal[_Sentinel.NEED_DATA]


def _split_code(text: str) -> tuple[str | None, str]:
    """``[IN-USE] text`` -> ("IN-USE", "text") (RFC 2449 section 8)."""
    if text.startswith("["):
        end = text.find("]")
        if end > 1:
            return text[1:end].upper(), text[end + 1 :].lstrip()
    return None, text


class Pop3ClientConnection:
    """Frames the server's byte stream into replies, matching them to the commands sent."""

    def __init__(self, *, max_status_line: int = MAX_STATUS_LINE, max_body: int = MAX_BODY) -> None:
        self._max_status = max_status_line
        self._max_body = max_body
        self._buf = bytearray()
        # (command name, what its reply looks like); the greeting is the first reply.
        self._pending: deque[tuple[str, _Expect]] = deque([("greeting", _Expect.SINGLE)])
        self._scan = 0  # the multi-line terminator search resumes here

    # ---- sending ----------------------------------------------------------------------------

    def send(self, name: str, *args: str) -> bytes:
        """The wire bytes of one command; its reply is now expected after those already pending.

        Raises ValueError (our bug, not the server's) for CR/LF inside a command or a line over
        RFC 2449's 255 octets.
        """
        name = name.upper()
        line = " ".join((name, *args))
        if "\r" in line or "\n" in line or "\0" in line:
            raise ValueError(f"{name}: CR, LF or NUL inside a command")
        data = line.encode("utf-8") + b"\r\n"
        if len(data) > MAX_COMMAND_LINE:
            raise ValueError(f"{name}: command line longer than {MAX_COMMAND_LINE} octets")
        if name in _MULTILINE_ALWAYS or (name in _MULTILINE_WITHOUT_ARGS and not args):
            expect = _Expect.MULTILINE
        elif name == "AUTH":
            expect = _Expect.SASL
        else:
            expect = _Expect.SINGLE
        self._pending.append((name, expect))
        return data

    def send_sasl(self, line: str) -> bytes:
        """A client line answering a ``+`` continuation inside AUTH (RFC 5034 section 4)."""
        if not self._pending or self._pending[0][1] is not _Expect.SASL:
            raise ValueError("no AUTH exchange in progress")
        if "\r" in line or "\n" in line:
            raise ValueError("CR or LF inside a SASL line")
        return line.encode("ascii") + b"\r\n"

    # ---- receiving --------------------------------------------------------------------------

    def receive_data(self, data: bytes) -> None:
        self._buf += data

    @property
    def buffered(self) -> int:
        """Octets received but not yet returned in a reply."""
        return len(self._buf)

    @property
    def pending(self) -> int:
        """Replies still expected."""
        return len(self._pending)

    @property
    def awaiting(self) -> str | None:
        """The command whose reply comes next (``"greeting"`` first), or None."""
        return self._pending[0][0] if self._pending else None

    def next_event(self) -> Event:
        if not self._pending:
            if self._buf:
                raise Pop3ProtocolError(
                    f"server sent data nobody asked for: {bytes(self._buf[:40])!r}"
                )
            return NEED_DATA
        nl = self._buf.find(b"\n")
        if nl < 0:
            if len(self._buf) > self._max_status:
                raise Pop3ProtocolError(f"status line longer than {self._max_status} octets")
            return NEED_DATA
        if nl + 1 > self._max_status:
            raise Pop3ProtocolError(f"status line longer than {self._max_status} octets")
        name, expect = self._pending[0]
        raw = bytes(self._buf[:nl]).rstrip(b"\r")
        status, _, rest = raw.partition(b" ")
        text = rest.decode("utf-8", errors="replace")
        upper = status.upper()
        if expect is _Expect.SASL and raw.startswith(b"+") and upper != b"+OK":
            # "+ base64" or a bare "+": a continuation; the AUTH reply stays pending.
            del self._buf[: nl + 1]
            return Reply(True, raw[1:].strip().decode("ascii", errors="replace"), name,
                         continuation=True)  # fmt: skip
        if upper not in (b"+OK", b"-ERR"):
            raise Pop3ProtocolError(f"not a POP3 reply to {name}: {raw[:60]!r}")
        ok = upper == b"+OK"
        code, text = _split_code(text)
        if not ok or expect is not _Expect.MULTILINE:
            del self._buf[: nl + 1]
            self._pending.popleft()
            self._scan = 0
            return Reply(ok, text, name, code)
        body_end, after = self._find_terminator(nl)
        if body_end < 0:
            return NEED_DATA
        body = bytes(self._buf[nl + 1 : body_end])
        del self._buf[:after]
        self._pending.popleft()
        self._scan = 0
        # RFC 1939 section 3: a line starting with "." was sent with one more "." in front.
        if body.startswith(b".."):
            body = body[1:]
        if b"\n.." in body:
            body = body.replace(b"\n..", b"\n.")
        return Reply(True, text, name, code, body)

    def _find_terminator(self, nl: int) -> tuple[int, int]:
        """(end of body, end of terminator) of the multi-line reply whose status line ends at
        ``nl``, or (-1, -1) while incomplete. The terminator is a line holding only ".",
        normally CRLF "." CRLF; a bare LF before or after the dot is tolerated."""
        start = max(nl, self._scan)
        hits = [
            (i, i + len(t)) for t in (b"\n.\r\n", b"\n.\n") if (i := self._buf.find(t, start)) >= 0
        ]
        if not hits:
            if len(self._buf) - nl > self._max_body + 8:
                raise Pop3ProtocolError(f"multi-line reply larger than {self._max_body} octets")
            self._scan = max(nl, len(self._buf) - 4)
            return -1, -1
        i, after = min(hits)
        return i + 1, after


# ---- parsing reply contents --------------------------------------------------------------------


def _lines(body: bytes) -> list[str]:
    return [line.strip() for line in body.decode("utf-8", errors="replace").splitlines()]


def parse_capa(body: bytes) -> dict[str, tuple[str, ...]]:
    """CAPA (RFC 2449 section 5): capability name (upper case) -> its arguments."""
    caps: dict[str, tuple[str, ...]] = {}
    for line in _lines(body):
        if line:
            name, *args = line.split()
            caps[name.upper()] = tuple(args)
    return caps


def parse_stat(text: str) -> tuple[int, int]:
    """``+OK nn mm`` of STAT (RFC 1939 section 5): (message count, octets)."""
    parts = text.split()
    if len(parts) < 2 or not parts[0].isdigit() or not parts[1].isdigit():
        raise Pop3ProtocolError(f"malformed STAT reply: {text[:60]!r}")
    return int(parts[0]), int(parts[1])


def _listing(body: bytes, what: str) -> list[tuple[int, str]]:
    out: list[tuple[int, str]] = []
    for line in _lines(body):
        if not line:
            continue
        parts = line.split()
        if len(parts) < 2 or not parts[0].isdigit() or int(parts[0]) < 1:
            raise Pop3ProtocolError(f"malformed {what} line: {line[:60]!r}")
        out.append((int(parts[0]), parts[1]))
    return out


def parse_list(body: bytes) -> dict[int, int]:
    """LIST without argument: message number -> size in octets."""
    out: dict[int, int] = {}
    for number, size in _listing(body, "LIST"):
        if not size.isdigit():
            raise Pop3ProtocolError(f"malformed LIST size for message {number}: {size[:20]!r}")
        out[number] = int(size)
    return out


def parse_uidl(body: bytes) -> dict[int, str]:
    """UIDL without argument: message number -> unique-id (RFC 1939 section 7).

    A unique-id is 1 to 70 characters 0x21-0x7E; longer ones are accepted (some servers send
    them), control characters are not. Two messages with the same unique-id make the listing
    useless for telling messages apart, so that is an error.
    """
    out: dict[int, str] = {}
    seen: set[str] = set()
    for number, uid in _listing(body, "UIDL"):
        if any(not 0x21 <= ord(c) <= 0x7E for c in uid):
            raise Pop3ProtocolError(f"UIDL of message {number} has invalid characters")
        if uid in seen:
            raise Pop3ProtocolError(
                f"the server gave two messages the same UIDL {uid!r}; it cannot be trusted"
            )
        seen.add(uid)
        out[number] = uid
    return out

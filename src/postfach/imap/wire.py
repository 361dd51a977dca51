"""IMAP command framing, sans I/O (pure core; RFC 9051 §2.2, §4.3, RFC 7888, RFC 3516).

``ImapFramer`` splits the client byte stream into whole commands, literals included, in the
manner of h11: feed it with ``receive_data`` and pull events with ``next_event`` until it
returns ``NEED_DATA``::

    framer.receive_data(chunk)
    while (ev := framer.next_event()) is not NEED_DATA:
        match ev:
            case bytes():            cmd = parse_command(ev, utf8_enabled=...)
            case NeedContinuation(): write(continuation(ev.text))   # or framer.abort_command()
            case LineTooLong() | LiteralTooLarge(): write(tagged(ev.tag, "BAD"/"NO", ...))
            case SaslResponse() | IdleLine(): ...                  # only after expect_*()

Events
------
``bytes``
    One complete command: its lines and literals exactly as received, except that the line end
    after every literal marker is normalised to CRLF and the final line end is removed. So
    ``b'a1 LOGIN {5}\\r\\nalice "pw"'`` is one event; `postfach.imap.parser` takes it as is.
``NeedContinuation``
    The client sent a synchronising literal ``{n}`` (or ``~{n}``) that fits the limits; the
    adapter writes ``+ text`` (`postfach.imap.response.continuation`) and keeps feeding. The
    framer is already reading the literal when it returns this event, so it never asks twice.
    Instead of answering ``+`` the session may refuse (for instance ``NO [TRYCREATE]`` on an
    APPEND to a mailbox that does not exist): it calls ``abort_command()`` and replies with a
    tagged NO; the client sends no literal and the next line is a new command.
``LineTooLong(tag)``
    A line (the text between two literals, or before the first) is longer than ``max_line``,
    or the command as a whole outgrew ``max_command``. Reported as soon as it is known, before
    the rest arrives; the framer then discards the line up to its LF without buffering it. If
    the dropped line ended in a non-synchronising literal ``{n+}`` the n octets that follow are
    discarded too, and so is the rest of that command, so nothing inside a literal is ever
    mistaken for a command. The session answers ``tag BAD`` (and may close the connection).
``LiteralTooLarge(tag, size, synchronizing)``
    A literal announced more than ``max_literal`` octets (``max_nonsync_literal`` for ``{n+}``,
    to implement LITERAL-), or would push the whole command past ``max_command``. Reported
    when the ``{n}`` line arrives, before any literal octet is buffered.

    * Synchronising ``{n}``: no ``+`` is sent, so the client sends no literal; the command is
      over. Answer ``tag NO [TOOBIG] ...`` (RFC 7889) or ``tag BAD``.
    * Non-synchronising ``{n+}``: the client sends the n octets regardless. **Choice:** the
      event is reported at once (not after the octets arrived), and the framer then silently
      discards the n octets and the rest of the command (following non-synchronising literals
      included). The session answers ``tag BAD [TOOBIG] ...`` as RFC 7888 §4 and §5 require; as
      the BAD may reach the client while it is still sending, the adapter is also free to close
      the connection instead of reading megabytes it will throw away (``discarding`` tells how
      many octets are still to be skipped).

One-shot modes
--------------
``expect_sasl_response(tag)`` makes the very next line a ``SaslResponse`` (RFC 9051 §6.2.2: a
base64 line or ``*``; limit ``max_sasl_line``); ``expect_idle_done(tag)`` makes it an
``IdleLine`` (RFC 9051 §6.3.13: the client should send ``DONE``; check it with
`postfach.imap.parser.parse_done`). No literal is recognised in either. Events are produced
lazily, one per ``next_event`` call, so a mode set between two events applies to the next line
even if it was already buffered (a client pipelining ``a IDLE`` and ``DONE``). ``discard_buffer``
drops pipelined plaintext after STARTTLS (RFC 9051 §6.2.1).

Line ends: CRLF, and a bare LF is accepted too.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from typing import Final, Literal, TypeAlias

__all__ = [
    "DEFAULT_MAX_LINE",
    "DEFAULT_MAX_LITERAL",
    "DEFAULT_MAX_SASL_LINE",
    "NEED_DATA",
    "Event",
    "IdleLine",
    "ImapFramer",
    "LineTooLong",
    "LiteralTooLarge",
    "NeedContinuation",
    "SaslResponse",
    "tag_of",
]

#: RFC 7162 §4 asks servers to accept command lines of at least 8192 octets.
DEFAULT_MAX_LINE: Final = 8192
#: A literal above this is refused before it is read (APPENDLIMIT, RFC 7889).
DEFAULT_MAX_LITERAL: Final = 64 * 1024 * 1024
#: An AUTHENTICATE continuation line (base64 of credentials).
DEFAULT_MAX_SASL_LINE: Final = 12288

# `{n}`, `{n+}`, `~{n}`, `~{n+}` at the very end of a line (RFC 9051 §9 literal, RFC 7888,
# RFC 3516 literal8). 20 digits is more than any number64; larger sizes are still "too large".
_MARKER: Final = re.compile(rb"(~?)\{([0-9]{1,20})(\+?)\}\Z")
_TAIL_KEEP: Final = 32  # octets of a discarded line kept to find a literal marker at its end
_MAX_TAG: Final = 64  # a longer first token is not reported back as a tag
# RFC 9051 §9: tag = 1*<any ASTRING-CHAR except "+">; ASTRING-CHAR = ATOM-CHAR / "]".
_TAG: Final = re.compile(rb"[!#$&'+,\-./0-9:;<=>?@A-Z\[\]^_`a-z|}~]+")


class _Sentinel(enum.Enum):
    NEED_DATA = "NEED_DATA"


#: ``next_event`` returns this when no complete event is buffered.
NEED_DATA: Final = _Sentinel.NEED_DATA


@dataclass(frozen=True, slots=True)
class NeedContinuation:
    """Answer ``+ text`` CRLF: the client waits for it before sending a ``size``-octet literal."""

    text: str = "Ready for literal data"
    tag: str = "*"
    size: int = 0


@dataclass(frozen=True, slots=True)
class LineTooLong:
    """A line over ``max_line`` (or a command over ``max_command``); it is being discarded."""

    tag: str


@dataclass(frozen=True, slots=True)
class LiteralTooLarge:
    """A literal over the limit was announced; nothing of it is (or will be) buffered."""

    tag: str
    size: int
    synchronizing: bool = True


@dataclass(frozen=True, slots=True)
class SaslResponse:
    """One line inside an AUTHENTICATE exchange (after ``expect_sasl_response``)."""

    line: bytes

    def __repr__(self) -> str:  # it carries credentials
        return "SaslResponse(line=***)"

    @property
    def text(self) -> str:
        return self.line.decode("ascii", errors="replace")


@dataclass(frozen=True, slots=True)
class IdleLine:
    """The line a client sent while idling (after ``expect_idle_done``); should be ``DONE``."""

    line: bytes


Event: TypeAlias = (
    bytes
    | NeedContinuation
    | LineTooLong
    | LiteralTooLarge
    | SaslResponse
    | IdleLine
    | Literal[_Sentinel.NEED_DATA]
)


class _Mode(enum.Enum):
    COMMAND = "COMMAND"
    SASL = "SASL"
    IDLE = "IDLE"


def tag_of(line: bytes) -> str:
    """The tag at the start of ``line``, or ``"*"`` when there is no valid one."""
    token = line[: _MAX_TAG + 1].split(b" ", 1)[0]
    if len(token) > _MAX_TAG or not _TAG.fullmatch(token) or b"+" in token:
        return "*"
    return token.decode("ascii")


def _marker(line: bytes | bytearray) -> tuple[int, bool] | None:
    """``(size, synchronizing)`` when the line ends in a literal marker."""
    m = _MARKER.search(line)
    if m is None:
        return None
    return int(m.group(2)), not m.group(3)


class ImapFramer:
    """Splits the client byte stream into complete commands and the events around them.

    Limits: ``max_line`` octets per line (excluding its line end), ``max_literal`` octets per
    literal, ``max_nonsync_literal`` per ``{n+}`` literal (default: ``max_literal``; 4096 for
    LITERAL-), ``max_command`` for a whole command with all its literals (default:
    ``4 * max_literal + 64 * max_line``, room for a MULTIAPPEND of a few messages), and
    ``max_sasl_line`` for AUTHENTICATE lines. Memory held is bounded by ``max_command`` plus
    whatever the caller feeds between two ``next_event`` loops.
    """

    def __init__(
        self,
        max_line: int = DEFAULT_MAX_LINE,
        max_literal: int = DEFAULT_MAX_LITERAL,
        *,
        max_nonsync_literal: int | None = None,
        max_command: int | None = None,
        max_sasl_line: int = DEFAULT_MAX_SASL_LINE,
        continuation_text: str = "Ready for literal data",
    ) -> None:
        if max_line < 16 or max_sasl_line < 16:
            raise ValueError("line limits must be at least 16 octets")
        if max_literal < 0:
            raise ValueError("max_literal must not be negative")
        self.max_line = max_line
        self.max_literal = max_literal
        self.max_nonsync_literal = (
            max_literal if max_nonsync_literal is None else max_nonsync_literal
        )
        self.max_command = 4 * max_literal + 64 * max_line if max_command is None else max_command
        self.max_sasl_line = max_sasl_line
        self._continuation_text = continuation_text
        self._buf = bytearray()
        self._scanned = 0  # this many octets at the front of _buf hold no LF
        self._mode = _Mode.COMMAND
        self._mode_tag = "*"
        self._reset_command()
        self._discard_left = 0  # octets of a refused literal still to be skipped
        self._discard_command = False  # skipping the rest of a refused command
        self._discard_line = False  # skipping an overlong line up to its LF
        self._tail = b""  # the last octets of the line being skipped

    def _reset_command(self) -> None:
        self._cmd = bytearray()
        self._tag = "*"
        self._literal_left = 0  # octets of the current literal still to be copied into _cmd

    # ---- feeding and state ------------------------------------------------------------------

    def receive_data(self, data: bytes) -> None:
        """Append received octets; call ``next_event`` until ``NEED_DATA`` afterwards."""
        self._buf += data

    @property
    def buffered(self) -> int:
        """Octets held: received but not yet returned, plus the command assembled so far."""
        return len(self._buf) + len(self._cmd)

    @property
    def partial(self) -> bytes:
        """The command read so far, up to and including the ``{n}`` CRLF of the literal a
        ``NeedContinuation`` asks for: lets the session look at (say) the APPEND mailbox
        before it decides between ``+`` and ``abort_command``."""
        return bytes(self._cmd)

    @property
    def discarding(self) -> int:
        """Octets of a refused non-synchronising literal still to be read and thrown away."""
        return self._discard_left

    @property
    def in_command(self) -> bool:
        """True between the first line of a command and its end (e.g. waiting for a literal)."""
        return bool(self._cmd) or self._literal_left > 0

    def _check_idle(self, what: str) -> None:
        if self.in_command or self._discard_left or self._discard_command or self._discard_line:
            raise RuntimeError(f"{what} while a command is being read")

    def expect_sasl_response(self, tag: str = "*") -> None:
        """Return the next line as a ``SaslResponse`` (one line only; ``tag`` for errors)."""
        self._check_idle("expect_sasl_response")
        self._mode, self._mode_tag = _Mode.SASL, tag

    def expect_idle_done(self, tag: str = "*") -> None:
        """Return the next line as an ``IdleLine`` (one line only; ``tag`` for errors)."""
        self._check_idle("expect_idle_done")
        self._mode, self._mode_tag = _Mode.IDLE, tag

    def abort_command(self) -> None:
        """Forget the command being read: the session refused a literal instead of sending ``+``.

        Call it right after a ``NeedContinuation``; the client then sends no literal and its
        next line is a new command.
        """
        self._reset_command()

    def discard_buffer(self) -> int:
        """Drop everything buffered and any command in progress (STARTTLS); returns the count."""
        n = len(self._buf)
        self._buf.clear()
        self._scanned = 0
        self._reset_command()
        self._discard_left = 0
        self._discard_command = False
        self._discard_line = False
        self._tail = b""
        self._mode = _Mode.COMMAND
        return n

    # ---- events ------------------------------------------------------------------------------

    def next_event(self) -> Event:
        buf = self._buf
        while True:
            if self._discard_left:
                n = min(len(buf), self._discard_left)
                del buf[:n]
                self._discard_left -= n
                if self._discard_left:
                    return NEED_DATA
                continue
            if self._literal_left:
                n = min(len(buf), self._literal_left)
                self._cmd += buf[:n]
                del buf[:n]
                self._literal_left -= n
                if self._literal_left:
                    return NEED_DATA
                continue

            nl = buf.find(b"\n", self._scanned)
            if self._discard_line:
                if nl < 0:
                    self._tail = (self._tail + bytes(buf[-_TAIL_KEEP:]))[-_TAIL_KEEP:]
                    buf.clear()
                    self._scanned = 0
                    return NEED_DATA
                tail = self._tail + bytes(buf[max(0, nl - _TAIL_KEEP) : nl])
                self._tail = tail[:-1] if tail.endswith(b"\r") else tail
                del buf[: nl + 1]
                self._scanned = 0
                self._discard_line = False
                if self._discard_command:
                    self._skip_after(self._tail)
                self._tail = b""
                continue

            limit = self.max_sasl_line if self._mode is _Mode.SASL else self.max_line
            if nl < 0:
                # Surely too long once limit + 2 octets hold no LF (the last may be the CR).
                if len(buf) >= limit + 2:
                    if (ev := self._start_line_discard(buf)) is not None:
                        return ev
                    continue
                self._scanned = len(buf)
                return NEED_DATA

            end = nl - 1 if nl > 0 and buf[nl - 1] == 0x0D else nl
            if end > limit:
                if (ev := self._start_line_discard(buf)) is not None:
                    return ev
                continue
            line = bytes(buf[:end])
            del buf[: nl + 1]
            self._scanned = 0

            if self._mode is not _Mode.COMMAND:
                mode, self._mode = self._mode, _Mode.COMMAND
                return SaslResponse(line) if mode is _Mode.SASL else IdleLine(line)
            if self._discard_command:
                self._skip_after(line)
                continue

            if not self._cmd:
                self._tag = tag_of(line)
            marker = _marker(line)
            if len(self._cmd) + len(line) + 2 > self.max_command:
                tag = self._tag
                self._reset_command()
                self._skip_after(line)
                return LineTooLong(tag)
            if marker is None:
                self._cmd += line
                command = bytes(self._cmd)
                self._reset_command()
                return command

            size, sync = marker
            allowed = self.max_literal if sync else min(self.max_literal, self.max_nonsync_literal)
            if size > allowed or len(self._cmd) + len(line) + 2 + size > self.max_command:
                tag = self._tag
                self._reset_command()
                if not sync:
                    self._discard_left = size
                    self._discard_command = True
                return LiteralTooLarge(tag, size, sync)
            self._cmd += line
            self._cmd += b"\r\n"
            self._literal_left = size
            if sync:
                return NeedContinuation(self._continuation_text, self._tag, size)

    def _start_line_discard(self, buf: bytearray) -> LineTooLong | None:
        """Begin skipping an overlong line; report it unless its command was already refused."""
        reported = not self._discard_command
        if self._mode is not _Mode.COMMAND:
            tag = self._mode_tag
            self._mode = _Mode.COMMAND
            self._discard_command = False  # a SASL or IDLE line holds no literal
        else:
            tag = self._tag if self._cmd else tag_of(bytes(buf[: _MAX_TAG + 1]))
            self._discard_command = True  # look for a `{n+}` at the end of the dropped line
        self._reset_command()
        self._discard_line = True
        self._tail = b""
        self._scanned = 0
        return LineTooLong(tag) if reported else None

    def _skip_after(self, line_end: bytes | bytearray) -> None:
        """A refused command's line ended: skip a following ``{n+}`` literal, else it is over."""
        marker = _marker(line_end)
        if marker is not None and not marker[1]:
            self._discard_left = marker[0]
            self._discard_command = True
        else:
            # No literal, or a synchronising one the client will not send without our "+".
            self._discard_command = False

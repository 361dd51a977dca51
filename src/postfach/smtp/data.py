"""Reading the message after DATA in blocks instead of line by line (adapter over aiosmtpd).

aiosmtpd's ``smtp_DATA`` awaits ``readuntil(b"\\r\\n")`` once per line and joins the lines at
the end: for a 20 KB message about 280 awaits, list appends and joins, a quarter of the CPU an
inbound delivery cost. `BlockDataSMTP` reads whatever the socket delivered (``read``), finds the
end of the message with one ``bytes.find`` per block, and undoes dot-stuffing with one
``bytes.replace`` at the end. The outcome is the one aiosmtpd produces, byte for byte:

* lines are the octets between CRLFs; a bare CR or LF is data (the smuggling check in
  `postfach.delivery` refuses it next to a dot line);
* the message ends at the first line that is exactly ``.`` (RFC 5321 §4.1.1.4); a leading dot
  of any other line is removed (§4.5.2);
* a line longer than ``line_length_limit`` octets with its CRLF makes the transaction fail with
  ``500`` and more than ``data_size_limit`` octets with ``552``, each answered after the end of
  the message arrived (§4.2.5) and without keeping the rest of the data in memory;
* octets after the end line (pipelined commands) are put back into the reader for the command
  loop.

Reads go through ``self._reader.read``, which `postfach.smtp.graceful` guards like
``readuntil`` (a stopping server gives the client its grace period), and the DATA deadline of
`postfach.smtp.limits` counts octets as they arrive, independent of how they are read.

``BDAT`` (RFC 3030 CHUNKING) needs none of this: each chunk is exactly the octets its command
announced, with no dot-stuffing and no end line. The chunks are kept in the envelope until
``BDAT ... LAST``, and the whole message then goes to the same DATA hook with the same limits
(size ``552``, line length ``500``). A chunk that cannot be kept (no recipient yet, over the size
limit, after a chunk that failed) is still read to its end and thrown away, so that its octets
are never taken for commands.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import Iterator

from aiosmtpd.lmtp import LMTP
from aiosmtpd.smtp import MISSING, SMTP, syntax

log = logging.getLogger("postfach.smtp.data")

# More than the reader ever holds (flow control pauses the socket at 2 x its 1001-octet limit,
# plus one socket read of at most 256 KiB): read() empties it, so octets after the end line
# can be put back with feed_data() in order.
_BLOCK = 1 << 40
_END_AT_START = b".\r\n"
_END = b"\r\n.\r\n"

_NOMINAL, _TOO_LONG, _TOO_MUCH = 0, 1, 2
_LINE_TOO_LONG = "500 Line too long (see RFC5321 4.5.3.1.6)"
_TOO_MUCH_DATA = "552 Error: Too much mail data"
#: at most this much of a BDAT chunk is read at a time (a chunk thrown away is never held whole)
_CHUNK_BLOCK = 1 << 20
#: the reader's limit while message data arrives (after DATA, or a BDAT chunk; it stops reading
#: the socket at twice its limit). aiosmtpd gives the reader the 1,001-octet line limit, so
#: every message over 2 KB paused and resumed the socket: two ``epoll_ctl`` calls and the
#: selector bookkeeping around them per message. Commands keep the small limit.
_DATA_READER_LIMIT = 64 * 1024


@contextlib.contextmanager
def roomy_reader(reader: asyncio.StreamReader) -> Iterator[None]:
    """``reader`` with `_DATA_READER_LIMIT` as its limit for the block (asyncio keeps the limit in
    an undocumented attribute: where it has none, the reader is left as it is)."""
    saved = getattr(reader, "_limit", None)
    if not isinstance(saved, int) or saved >= _DATA_READER_LIMIT:
        yield
        return
    reader._limit = _DATA_READER_LIMIT  # type: ignore[attr-defined]
    try:
        yield
    finally:
        reader._limit = saved  # type: ignore[attr-defined]


class MessageReader:
    """The state of one DATA transfer: feed blocks until `feed` returns the octets after the
    end line; then `state` and `content()` tell the outcome (pure, no I/O: unit-testable)."""

    __slots__ = ("_limit", "_max_line", "_parts", "_tail", "size", "state")

    def __init__(self, max_line: int, limit: int | None) -> None:
        self._parts: list[bytes] = []
        # Octets after the last CRLF seen: always the start of a line (or, once a too-long line
        # has been dropped, a stand-in that cannot match the start of an end line).
        self._tail = b""
        self._max_line = max_line
        self._limit = limit or 0
        self.size = 0  # octets of message data so far, as sent (dot-stuffed)
        self.state = _NOMINAL

    def feed(self, block: bytes) -> bytes | None:
        """Take the next octets; None while the message goes on, else what followed its end."""
        buf = self._tail + block if self._tail else block
        if buf.startswith(_END_AT_START):
            end = 0
        else:
            end = buf.find(_END)
            if end >= 0:
                end += 2  # keep the CRLF that ends the last line
        if end >= 0:
            self._take(buf[:end])
            self._tail = b""
            return buf[end + 3 :]
        cut = buf.rfind(b"\r\n") + 2
        if cut >= 2:
            self._take(buf[:cut])
            buf = buf[cut:]
        self._tail = buf
        if len(buf) > self._max_line:  # a line this long cannot end within the limit
            self._fail(_TOO_LONG)
            # Keep its last octet (a CR that the next block's LF completes); "x" is no dot.
            self._tail = b"x" + buf[-1:]
        elif self.state == _NOMINAL and self._limit and self.size + len(buf) > self._limit:
            self._fail(_TOO_MUCH)
        return None

    def _take(self, lines: bytes) -> None:
        """Complete lines (each ends with CRLF)."""
        if not lines:
            return
        self.size += len(lines)
        if self.state != _NOMINAL:
            return
        if self._limit and self.size > self._limit:
            self._fail(_TOO_MUCH)
            return
        if len(lines) > self._max_line and _has_long_line(lines, self._max_line):
            self._fail(_TOO_LONG)
            return
        self._parts.append(lines)

    def _fail(self, state: int) -> None:
        if self.state == _NOMINAL:
            self.state = state
            self._parts.clear()  # nothing more is kept

    def content(self) -> bytes:
        """The message with dot-stuffing undone (only in the nominal state)."""
        data = b"".join(self._parts)
        self._parts.clear()
        if data.startswith(b"."):
            data = data[1:]
        return data.replace(b"\r\n.", b"\r\n")


def _has_long_line(lines: bytes, limit: int) -> bool:
    """Whether a line of ``lines`` (complete lines, each ending with CRLF) is longer than
    ``limit`` octets with its CRLF. One backward search per window of ``limit`` octets instead of
    splitting into lines: ``pos`` is always the start of a line, and the last CRLF that ends
    within ``limit`` octets of it ends a run of lines that are all short enough."""
    pos, end = 0, len(lines)
    while end - pos > limit:
        crlf = lines.rfind(b"\r\n", pos, pos + limit)
        if crlf < 0:
            return True
        pos = crlf + 2
    return False


def parse_bdat(arg: str | None) -> tuple[int, bool] | None:
    """``BDAT`` arguments (RFC 3030 §2: ``chunk-size [SP "LAST"]``): the size and whether the
    chunk is the last one; None for anything else (aiosmtpd passes None for no argument)."""
    m = _BDAT_ARGS.fullmatch(arg or "")
    if m is None:
        return None
    return int(m[1]), m[2] is not None


_BDAT_ARGS = re.compile(r"([0-9]{1,18})(?: +(LAST))?", re.IGNORECASE)
BDAT_SYNTAX = "501 5.5.4 Syntax: BDAT chunk-size [LAST]"
#: the reply to a chunk before the last (held back like MAIL's and RCPT's by
#: `postfach.smtp.replies`, so a pipelined chunk's reply travels with the next one)
BDAT_CHUNK_OK = "250 2.0.0 Chunk of {} octets received"


class ChunkedMessage:
    """The chunks of one BDAT transfer so far: kept in the transaction's envelope, so that
    RSET, a new EHLO and the end of the transaction forget them with the envelope."""

    __slots__ = ("_parts", "size")

    def __init__(self) -> None:
        self._parts: list[bytes] = []
        self.size = 0

    def add(self, chunk: bytes) -> None:
        self.size += len(chunk)
        self._parts.append(chunk)

    def content(self) -> bytes:
        data = b"".join(self._parts)
        self._parts.clear()
        return data


class BlockDataSMTP(SMTP):
    """aiosmtpd ``SMTP`` with ``smtp_DATA`` reading blocks (see the module docstring) and
    ``smtp_BDAT`` (RFC 3030 CHUNKING) taking the message in chunks of a stated size."""

    @syntax("DATA")
    async def smtp_DATA(self, arg: str) -> None:
        if await self.check_helo_needed():
            return
        if await self.check_auth_needed("DATA"):
            return
        assert self.envelope is not None
        if getattr(self.envelope, "postfach_chunks", None) is not None:
            await self.push("503 5.5.1 Error: DATA after BDAT")
            return
        if not self.envelope.rcpt_tos:
            await self.push("503 Error: need RCPT command")
            return
        if arg:
            await self.push("501 Syntax: DATA")
            return
        msg = MessageReader(self.line_length_limit, self.data_size_limit)
        reader = self._reader
        with roomy_reader(reader):  # from before the 354: the client sends the data on it
            await self.push("354 End data with <CR><LF>.<CR><LF>")
            while True:
                block = await self._read_message_octets(_BLOCK)
                if not block:  # end of input: the session is being torn down
                    return
                rest = msg.feed(block)
                if rest is not None:
                    break
        # The reader was emptied by read(): what followed the end line goes back in order.
        if rest and not reader.at_eof():
            reader.feed_data(rest)
        if msg.state != _NOMINAL:
            await self._refuse(_LINE_TOO_LONG if msg.state == _TOO_LONG else _TOO_MUCH_DATA)
            return
        await self._finish(msg.content())

    @syntax("BDAT chunk-size [LAST]")
    async def smtp_BDAT(self, arg: str | None) -> None:
        parsed = parse_bdat(arg)
        if parsed is None:
            # The chunk's length is unknown, so whatever follows is read as commands.
            await self.push(BDAT_SYNTAX)
            return
        size, last = parsed
        envelope = self.envelope
        assert envelope is not None
        chunks: ChunkedMessage | None = getattr(envelope, "postfach_chunks", None)
        # The chunk follows the command whatever the reply will be (RFC 3030 §2: a refused
        # chunk is read and thrown away): kept only when it can become part of a message.
        so_far = chunks.size if chunks is not None else 0
        limit = self.data_size_limit
        keep = bool(envelope.rcpt_tos) and (not limit or so_far + size <= limit)
        chunk = await self._read_chunk(size, keep)
        if chunk is None:  # end of input: the session is being torn down
            return
        if await self.check_helo_needed():
            return
        if await self.check_auth_needed("BDAT"):
            return
        if not envelope.rcpt_tos:
            # Also every chunk a client pipelined after one that failed (RFC 3030 §2).
            await self.push("503 5.5.1 Error: need RCPT command")
            return
        if not keep:
            await self._refuse(_TOO_MUCH_DATA, whole_message=last)
            return
        if chunks is None:
            chunks = ChunkedMessage()
            envelope.postfach_chunks = chunks  # type: ignore[attr-defined]
        chunks.add(chunk)
        if not last:
            await self.push(BDAT_CHUNK_OK.format(size))
            return
        content = chunks.content()
        if len(content) > self.line_length_limit and _has_long_line(
            content if content.endswith(b"\r\n") else content + b"\r\n", self.line_length_limit
        ):
            await self._refuse(_LINE_TOO_LONG)
            return
        await self._finish(content)

    async def _refuse(self, reply: str, *, whole_message: bool = True) -> None:
        """The message (or a chunk of it) is refused and the transaction ends. LMTP answers the
        end of a message once per accepted recipient (RFC 2033 §4.2), refusals included: a
        single reply left an LMTP client waiting for the others."""
        assert self.envelope is not None
        count = len(self.envelope.rcpt_tos) if whole_message and isinstance(self, LMTP) else 1
        await self.push("\r\n".join([reply] * max(count, 1)))
        self._set_post_data_state()  # type: ignore[no-untyped-call]

    async def _read_chunk(self, size: int, keep: bool) -> bytes | None:
        """The ``size`` octets after a BDAT command (thrown away unless ``keep``: b""), or None
        if the connection ended first."""
        parts: list[bytes] = []
        left = size
        with roomy_reader(self._reader):
            while left:
                block = await self._read_message_octets(min(left, _CHUNK_BLOCK))
                if not block:
                    return None
                left -= len(block)
                if keep:
                    parts.append(block)
        return b"".join(parts)

    async def _read_message_octets(self, limit: int) -> bytes:
        """Up to ``limit`` octets of message data (DATA or a BDAT chunk); b"" at end of input,
        when the connection is closed on our side too (the session is being torn down)."""
        try:
            block: bytes = await self._reader.read(limit)
        except asyncio.CancelledError:
            log.info("event=connection_lost_in_data")
            self._writer.close()
            raise
        if not block:
            self._writer.close()
        return block

    async def _finish(self, content: bytes) -> None:
        """The whole message is here: to the handler's DATA hook, and its reply to the client."""
        assert self.envelope is not None
        if not self._decode_data:
            self.envelope.content = content
        elif self.enable_SMTPUTF8:
            self.envelope.content = content.decode("utf-8", "surrogateescape")
        else:
            try:
                self.envelope.content = content.decode("ascii")
            except UnicodeDecodeError:
                await self.push("500 Error: strict ASCII mode")
                return
        self.envelope.original_content = content
        status = await self._call_handler_hook("DATA")
        self._set_post_data_state()  # type: ignore[no-untyped-call]
        await self.push("250 OK" if status is MISSING else status)

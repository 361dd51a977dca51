"""Fuzz targets for the hostile-input surfaces (issue 6): one function per target.

Each target takes arbitrary bytes and checks **invariants**, not just "no exception": a broken
invariant is an ``AssertionError`` (or any other exception escaping the code under test), which
atheris reports as a crash and hypothesis as a falsifying example. The same functions are run by

* ``tests/fuzz/run_atheris.py`` (coverage-guided, in a child process; driven by
  ``tests/reliability/test_fuzz.py``) and
* ``tests/unit/test_fuzz_properties.py`` (hypothesis, deterministic, fast).

Targets (``TARGETS`` maps the names used on the command line):

``imap_framer``   `postfach.imap.wire.ImapFramer`: the events do not depend on how the stream is
                  cut into chunks; commands respect the line/literal/command limits; memory held
                  never exceeds the limits; every refused line or literal has a valid tag.
``imap_parser``   `postfach.imap.parser.parse_command`: a command dataclass with the command's
                  tag, or ``ParseError`` whose tag and text fit on one response line; nothing else.
``pop3``          `postfach.pop3.protocol.Pop3Connection` (chunking independence, bounded
                  buffer) and `postfach.pop3.session.Pop3Session` over an in-memory maildrop:
                  every reply is one ``+OK``/``-ERR``/``+`` line or a well-formed multi-line
                  reply, RETR returns the exact message, no internal error.
``mime``          `postfach.mime.structure.parse` and `postfach.mime.stored.parse_for_storage`:
                  offsets nest inside the message, header + body reproduce each entity's bytes,
                  the JSON round trip is exact, BODYSTRUCTURE/ENVELOPE/search text never fail and
                  BODYSTRUCTURE tokenizes as balanced IMAP data.
``sasl``          `postfach.auth.sasl`: base64 decoding, PLAIN parsing and whole PLAIN/LOGIN
                  exchanges return credentials that re-encode to the input, or raise
                  ``SaslError``; nothing else.
"""

from __future__ import annotations

import base64
import dataclasses
import re
from collections.abc import Callable, Coroutine, Iterator, Sequence
from typing import Any, TypeVar

from postfach.auth import sasl
from postfach.client.parse import tokenize
from postfach.imap import commands
from postfach.imap.parser import ParseError, parse_command, parse_done
from postfach.imap.wire import (
    NEED_DATA,
    IdleLine,
    ImapFramer,
    LineTooLong,
    LiteralTooLarge,
    NeedContinuation,
    SaslResponse,
)
from postfach.mime.stored import load_parsed, parse_for_storage
from postfach.mime.structure import (
    Part,
    find_section,
    from_json,
    imap_bodystructure,
    imap_envelope,
    normalize_crlf,
    parse,
    search_text,
    section_range,
    to_json,
)
from postfach.pop3 import protocol as pop3
from postfach.pop3.session import Maildrop, MaildropEntry, Pop3Session, Pop3Settings

T = TypeVar("T")

# A tag as the framer reports it (RFC 9051 §9 tag: ASTRING-CHAR except "+"), or "*".
_TAG = re.compile(r"\*|[!#$&',\-./0-9:;<=>?@A-Z\[\]^_`a-z|}~]{1,64}")
_TAG_ANY_LENGTH = re.compile(r"\*|[!#$&',\-./0-9:;<=>?@A-Z\[\]^_`a-z|}~]+")
# Text the session puts on a response line: no line break, no NUL.
_ONE_LINE = re.compile(r"[^\r\n\x00]*")


def _chunks(data: bytes, cuts: bytes) -> Iterator[bytes]:
    """``data`` cut into pieces whose sizes come from the octets of ``cuts`` (1..64)."""
    pos = 0
    i = 0
    while pos < len(data):
        size = (cuts[i % len(cuts)] % 64) + 1 if cuts else len(data)
        yield data[pos : pos + size]
        pos += size
        i += 1


# ---- IMAP framer ------------------------------------------------------------------------------

_MAX_LINE = 64
_MAX_LITERAL = 200
_MAX_NONSYNC = 40
_MAX_COMMAND = 600
_MAX_SASL = 80


def _framer_events(data: bytes, pieces: Sequence[bytes]) -> list[object]:
    """Feed ``pieces`` to a small-limit framer and record what a session would see.

    The simulated session answers ``+`` to every other literal and aborts the rest, and after a
    command ending in ``AUTHENTICATE ...`` or ``IDLE`` reads the next line in SASL/IDLE mode, so
    that every mode is reached.
    """
    framer = ImapFramer(
        _MAX_LINE,
        _MAX_LITERAL,
        max_nonsync_literal=_MAX_NONSYNC,
        max_command=_MAX_COMMAND,
        max_sasl_line=_MAX_SASL,
    )
    bound = _MAX_COMMAND + max(_MAX_LINE, _MAX_SASL) + 2
    events: list[object] = []
    continuations = 0
    for piece in pieces:
        framer.receive_data(piece)
        while True:
            ev = framer.next_event()
            if ev is NEED_DATA:
                break
            if isinstance(ev, bytes):
                _check_framed_command(ev)
                events.append(ev)
                word = ev.split(b" ", 2)[1:2]
                if word and word[0].upper() == b"AUTHENTICATE":
                    framer.expect_sasl_response(_tag_or_star(ev))
                elif word and word[0].upper() == b"IDLE":
                    framer.expect_idle_done(_tag_or_star(ev))
            elif isinstance(ev, NeedContinuation):
                assert 0 <= ev.size <= _MAX_LITERAL, ev
                assert _TAG.fullmatch(ev.tag), ev
                assert framer.partial.endswith(b"}\r\n"), framer.partial[-40:]
                continuations += 1
                if continuations % 2 == 0:
                    framer.abort_command()
                    events.append(("abort", ev.tag, ev.size))
                else:
                    events.append(ev)
            elif isinstance(ev, (LineTooLong, LiteralTooLarge)):
                assert _TAG.fullmatch(ev.tag), ev
                events.append(ev)
            elif isinstance(ev, SaslResponse):
                assert len(ev.line) <= _MAX_SASL and b"\n" not in ev.line, ev.line[:80]
                events.append(("sasl", ev.line))
            elif isinstance(ev, IdleLine):
                assert len(ev.line) <= _MAX_LINE and b"\n" not in ev.line, ev.line[:80]
                events.append(("idle", ev.line))
            else:  # pragma: no cover - the Event union is closed
                raise AssertionError(f"unknown event {ev!r}")
            # Memory: the assembled command plus at most one partial line.
            assert framer.buffered <= bound + len(piece), (framer.buffered, bound)
        assert framer.buffered <= bound, (framer.buffered, bound)
    return events


def _tag_or_star(command: bytes) -> str:
    tag = command.split(b" ", 1)[0].decode("ascii", "replace")
    return tag if _TAG.fullmatch(tag) and "+" not in tag else "*"


def _check_framed_command(cmd: bytes) -> None:
    assert len(cmd) <= _MAX_COMMAND, len(cmd)
    # Between literals, no line is longer than the limit and no bare line end survives.
    pos = 0
    while True:
        nl = cmd.find(b"\r\n", pos)
        segment = cmd[pos:] if nl < 0 else cmd[pos:nl]
        assert len(segment) <= _MAX_LINE, (len(segment), segment[:40])
        if nl < 0:
            assert b"\n" not in segment, segment[:80]
            return
        m = re.search(rb"~?\{([0-9]{1,20})\+?\}\Z", segment)
        assert m is not None, f"CRLF inside a command without a literal marker: {segment!r}"
        size = int(m.group(1))
        assert size <= _MAX_LITERAL, size
        pos = nl + 2 + size
        assert pos <= len(cmd), "literal cut short"


def fuzz_imap_framer(data: bytes) -> None:
    """Events are the same whether the stream arrives at once, octet by octet or in chunks."""
    if not data:
        return
    cuts, stream = data[:4], data[4:]
    whole = _framer_events(stream, [stream])
    small = bytes(c % 8 for c in cuts)  # pieces of 1 to 8 octets: every split point is hit
    chunked = _framer_events(stream, list(_chunks(stream, small)))
    assert whole == chunked, (whole, chunked)
    if len(stream) <= 128:
        single = _framer_events(stream, [stream[i : i + 1] for i in range(len(stream))])
        assert whole == single, (whole, single)
    # And each complete command survives the parser (BAD or a command).
    for ev in whole:
        if isinstance(ev, bytes):
            _parse_checked(ev, False)


# ---- IMAP parser ------------------------------------------------------------------------------

_COMMAND_TYPES: tuple[type, ...] = tuple(
    t
    for t in vars(commands).values()
    if isinstance(t, type) and dataclasses.is_dataclass(t) and hasattr(t, "__dataclass_fields__")
)


def _parse_checked(data: bytes, utf8: bool) -> object | None:
    try:
        cmd = parse_command(data, utf8_enabled=utf8)
    except ParseError as exc:
        assert isinstance(exc.tag, str) and (exc.tag == "*" or data.startswith(exc.tag.encode()))
        assert _TAG_ANY_LENGTH.fullmatch(exc.tag), exc.tag
        assert _ONE_LINE.fullmatch(exc.text), exc.text
        assert exc.code is None or re.fullmatch(r"[A-Z0-9.\-]+", exc.code), exc.code
        return None
    assert isinstance(cmd, _COMMAND_TYPES), type(cmd)
    tag = getattr(cmd, "tag", None)
    assert isinstance(tag, str) and data.startswith(tag.encode() + b" "), (tag, data[:40])
    return cmd


def fuzz_imap_parser(data: bytes) -> None:
    """``parse_command`` gives a command or ``ParseError``, in both name encodings."""
    _parse_checked(data, False)
    _parse_checked(data, True)
    try:
        done = parse_done(data)
    except ParseError as exc:
        assert exc.tag == "*" and _ONE_LINE.fullmatch(exc.text)
    else:
        assert data.rstrip(b"\r\n").upper() == b"DONE" and isinstance(done, commands.Done)


# ---- POP3 -------------------------------------------------------------------------------------

POP3_PASSWORD = "secret"
POP3_MESSAGES = (
    b"From: a@example.org\r\nSubject: one\r\n\r\nHello\r\n.dot line\r\n",
    b"Subject: two\r\n\r\n.\r\n..\r\n\r\n",
    b"no header at all\r\n",
    b"",
)


def _drive(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine that never really waits (the in-memory backend) without an event loop."""
    try:
        coro.send(None)
    except StopIteration as stop:
        return stop.value  # type: ignore[no-any-return]
    coro.close()
    raise AssertionError("the POP3 session awaited something real")


class _Maildrop:
    def __init__(self) -> None:
        self._entries = [MaildropEntry(f"u{i}", len(m)) for i, m in enumerate(POP3_MESSAGES)]
        self.committed: list[frozenset[int]] = []
        self.released = 0

    @property
    def entries(self) -> Sequence[MaildropEntry]:
        return self._entries

    async def read(self, index: int) -> bytes:
        return POP3_MESSAGES[index]

    async def commit(self, deleted: Any) -> None:
        self.committed.append(frozenset(deleted))

    async def release(self) -> None:
        self.released += 1


class _Backend:
    def __init__(self) -> None:
        self.drops: list[_Maildrop] = []

    async def authenticate(self, username: str, password: str, remote_ip: str) -> str | None:
        return "bob" if username.lower() == "bob" and password == POP3_PASSWORD else None

    async def open_maildrop(self, account: str) -> Maildrop:
        drop = _Maildrop()
        self.drops.append(drop)
        return drop


def _pop3_events(pieces: Sequence[bytes]) -> list[object]:
    conn = pop3.Pop3Connection()
    out: list[object] = []
    for piece in pieces:
        conn.receive_data(piece)
        while (ev := conn.next_event()) is not pop3.NEED_DATA:
            if isinstance(ev, pop3.Command):
                # A garbage keyword is fine (the session answers -ERR), but it is one word.
                assert " " not in ev.name and ev.name == ev.name.strip(), ev
                assert all(a and not any(c.isspace() for c in a) for a in ev.args), ev
            out.append(ev)
            if isinstance(ev, pop3.Command) and ev.name == "AUTH":
                conn.expect_sasl_response()
        assert conn.buffered <= pop3.MAX_SASL_LINE + len(piece), conn.buffered
    return out


def _unstuff(body: bytes) -> bytes:
    lines = body.split(b"\r\n")
    return b"\r\n".join(line[1:] if line.startswith(b".") else line for line in lines)


def _check_pop3_reply(reply: bytes, command: pop3.Command | None) -> None:
    assert reply.endswith(b"\r\n"), reply[-40:]
    first, _, rest = reply.partition(b"\r\n")
    assert first.startswith((b"+OK", b"-ERR", b"+ ")) or first == b"+", first
    assert b"\n" not in first and b"\r" not in first
    if not rest:
        return
    # A multi-line reply: dot-stuffed, ends with CRLF "." CRLF.
    assert first.startswith(b"+OK"), first
    assert rest.endswith(b".\r\n"), rest[-40:]
    body = rest[:-3]
    for line in body.split(b"\r\n")[:-1]:
        assert not line.startswith(b".") or line.startswith(b".."), line
    if command is not None and command.name == "RETR":
        number = int(command.args[0])
        expected = POP3_MESSAGES[number - 1]
        got = _unstuff(body)
        if expected:
            assert got == expected, (got, expected)


def fuzz_pop3(data: bytes) -> None:
    """The POP3 line splitter and a whole session with a logged-in user and four messages."""
    if not data:
        return
    cuts, stream = data[:4], data[4:]
    whole = _pop3_events([stream])
    assert whole == _pop3_events(list(_chunks(stream, cuts))), "chunking changed the events"

    backend = _Backend()
    session = Pop3Session(
        backend,
        Pop3Settings(hostname="fuzz.example", allow_plaintext=True, max_errors=1000),
        remote_ip="127.0.0.1",
    )
    session.receive_data(b"USER bob\r\nPASS " + POP3_PASSWORD.encode() + b"\r\n")
    for piece in _chunks(stream, cuts):
        session.receive_data(piece)
    conn = pop3.Pop3Connection()  # mirrors the session's splitter to know which command ran
    conn.receive_data(b"USER bob\r\nPASS " + POP3_PASSWORD.encode() + b"\r\n" + stream)
    replies = 0
    while (reply := _drive(session.next_reply())) is not None:
        replies += 1
        ev = conn.next_event()
        command = ev if isinstance(ev, pop3.Command) else None
        text = reply.data
        if text.startswith((b"+ ", b"+\r\n")):  # a SASL challenge: the next line answers it
            conn.expect_sasl_response()
        assert b"internal error" not in text, (command, text)
        _check_pop3_reply(text, command)
        if reply.start_tls:
            break  # the adapter would start TLS now; nothing more is read in plaintext
        if reply.close:
            assert _drive(session.next_reply()) is None
            break
    assert replies >= 2
    _drive(session.close())
    for drop in backend.drops:
        assert drop.released >= 1, "a maildrop lock was left behind"


# ---- MIME -------------------------------------------------------------------------------------


def _walk(part: Part, lo: int, hi: int, depth: int = 0) -> Iterator[Part]:
    assert lo <= part.header_start <= part.header_end == part.body_start <= part.body_end <= hi, (
        lo,
        part.header_start,
        part.header_end,
        part.body_start,
        part.body_end,
        hi,
    )
    yield part
    previous = part.body_start
    for child in part.children:
        assert child.header_start >= previous, "sibling parts overlap"
        yield from _walk(child, part.body_start, part.body_end, depth + 1)
        previous = child.body_end
    if part.message is not None:
        yield from _walk(part.message, part.body_start, part.body_end, depth + 1)


def _numbered(part: Part, prefix: tuple[int, ...] = ()) -> Iterator[tuple[tuple[int, ...], Part]]:
    """IMAP part numbers of the multipart children in the tree (the first 50 per level)."""
    for n, child in enumerate(part.children[:50], 1):
        section = (*prefix, n)
        yield section, child
        inner = child.message
        yield from _numbered(inner if inner is not None else child, section)


def _imap_tokens(data: bytes) -> list[object]:
    """Tokenize IMAP data that may hold ``{n}`` CRLF literals (as FETCH sends it)."""
    segments: list[bytes] = []
    literals: list[bytes] = []
    pos = 0
    while (crlf := data.find(b"\r\n", pos)) >= 0:
        m = re.search(rb"\{([0-9]+)\}\Z", data[pos:crlf])
        assert m is not None, f"CRLF outside a literal: {data[max(0, crlf - 40) : crlf]!r}"
        segments.append(data[pos:crlf])
        size = int(m.group(1))
        literals.append(data[crlf + 2 : crlf + 2 + size])
        assert len(literals[-1]) == size, "literal shorter than announced"
        pos = crlf + 2 + size
    segments.append(data[pos:])
    return list(tokenize(segments, literals))


def fuzz_mime(data: bytes) -> None:
    """Offsets lie inside the message and reproduce its bytes; storage and IMAP views hold.

    Delivery stores CRLF-normalised messages; IMAP APPEND stores the client's octets exactly
    (bare LF and CR included), so both forms are checked.
    """
    message = normalize_crlf(data)
    assert normalize_crlf(message) == message, "normalize_crlf is not idempotent"
    assert message.count(b"\r") == message.count(b"\n") == message.count(b"\r\n")
    _check_mime(message)
    if message != data and data:
        _check_mime(data)


def _check_mime(message: bytes) -> None:
    root = parse(message)
    assert root.header_start == 0 and root.body_end == len(message)
    for part in _walk(root, 0, len(message)):
        # Header and body of every entity are adjacent slices of the message.
        entity = message[part.header_start : part.body_end]
        header = message[part.header_start : part.header_end]
        body = message[part.body_start : part.body_end]
        assert header + body == entity
        assert part.type == part.type.lower() and part.subtype == part.subtype.lower()
    assert from_json(to_json(root)) == root, "JSON round trip changed the tree"
    stored = load_parsed(parse_for_storage(message))
    assert stored.part == root
    rng = section_range(root, ())
    assert rng is not None and message[rng[0] : rng[1]] == message, "BODY[] is not the message"
    for section, child in _numbered(root):
        assert find_section(root, section) is child, section
        got = section_range(root, section)
        assert got == (child.body_start, child.body_end), (section, got)
    for extended, rev2 in ((False, False), (True, True)):
        bs = imap_bodystructure(root, message, extended, imap4rev2=rev2)
        tokens = _imap_tokens(bs)
        assert len(tokens) == 1 and isinstance(tokens[0], list), bs[:200]
    tokens = _imap_tokens(imap_envelope(stored.envelope))
    assert len(tokens) == 1 and isinstance(tokens[0], list) and len(tokens[0]) == 10, tokens
    headers, text = search_text(message, root)
    # The full-text index stores these in SQLite, which takes valid UTF-8 only.
    headers.encode("utf-8")
    text.encode("utf-8")


# ---- SASL -------------------------------------------------------------------------------------


def fuzz_sasl(data: bytes) -> None:
    """Decoding returns exact values or raises ``SaslError``, never anything else."""
    text = data.decode("utf-8", "replace")
    try:
        raw = sasl.decode_base64(text)
    except sasl.SaslError:
        pass
    else:
        assert base64.b64decode(sasl.encode_base64(raw)) == raw
        assert text in ("", "=") or base64.b64decode(text, validate=True) == raw
    try:
        authzid, authcid, password = sasl.parse_plain(data)
    except sasl.SaslError:
        pass
    else:
        joined = b"\x00".join(f.encode() for f in (authzid, authcid, password))
        assert joined == data and authcid and password
    # Whole exchanges: the first octet picks the mechanism, lines are split at LF.
    mechanism = ("PLAIN", "LOGIN", "plain", "login", "CRAM-MD5")[data[0] % 5] if data else "PLAIN"
    lines = data[1:].split(b"\n")
    try:
        initial = lines[0].decode("utf-8", "replace") if len(lines) > 1 else None
        rest = lines[1:] if initial is not None else lines
        exchange = sasl.start_exchange(mechanism, initial)
        for line in rest:
            if exchange.challenge is None:
                break
            exchange.respond(line.decode("utf-8", "replace"))
        if exchange.challenge is None:
            creds = exchange.credentials()
            assert creds.authcid and creds.password
            for value in (creds.authzid, creds.authcid, creds.password):
                assert len(value.encode()) <= sasl.MAX_FIELD_OCTETS
    except sasl.SaslError:
        pass


TARGETS: dict[str, Callable[[bytes], None]] = {
    "imap_framer": fuzz_imap_framer,
    "imap_parser": fuzz_imap_parser,
    "pop3": fuzz_pop3,
    "mime": fuzz_mime,
    "sasl": fuzz_sasl,
}

"""The sans-IO POP3 core: byte transcripts, line limits, reply builders, dot-stuffing."""

from __future__ import annotations

import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from postfach.pop3.protocol import (
    ALLOWED,
    COMMANDS,
    MAX_COMMAND_LINE,
    NEED_DATA,
    Command,
    Event,
    LineTooLong,
    Pop3Connection,
    SaslResponse,
    State,
    dot_stuff,
    err,
    multiline,
    multiline_parts,
    ok,
    top_of_message,
)

pytestmark = pytest.mark.timeout(30)


def C(name: str, *args: str, tail: str | None = None) -> Command:
    return Command(name, args, " ".join(args) if tail is None else tail)


def drain(conn: Pop3Connection) -> list[Event]:
    out: list[Event] = []
    while (ev := conn.next_event()) is not NEED_DATA:
        out.append(ev)
    return out


def parse_bulk(data: bytes) -> list[Event]:
    conn = Pop3Connection()
    conn.receive_data(data)
    return drain(conn)


def parse_bytewise(data: bytes) -> list[Event]:
    conn = Pop3Connection()
    out: list[Event] = []
    for i in range(len(data)):
        conn.receive_data(data[i : i + 1])
        out.extend(drain(conn))
    return out


TRANSCRIPTS: list[tuple[str, bytes, list[Event]]] = [
    ("simple", b"STAT\r\n", [C("STAT")]),
    ("args", b"USER bob\r\nLIST 1\r\n", [C("USER", "bob"), C("LIST", "1")]),
    ("lowercase keyword", b"retr 3\r\n", [C("RETR", "3")]),
    ("bare LF", b"STAT\nNOOP\n", [C("STAT"), C("NOOP")]),
    ("mixed endings", b"STAT\r\nNOOP\nQUIT\r\n", [C("STAT"), C("NOOP"), C("QUIT")]),
    ("empty line", b"\r\n\n", [C(""), C("")]),
    ("pass keeps spaces", b"PASS  my secret \r\n", [C("PASS", "my", "secret", tail=" my secret ")]),
    ("tabs and runs", b"TOP 1\t 2\r\n", [C("TOP", "1", "2", tail="1\t 2")]),
    ("partial line waits", b"STAT\r\nNOO", [C("STAT")]),
    ("CR alone is content", b"NO\rOP\r\n", [C("NO\rOP")]),
    ("bad utf-8", b"USER b\xffb\r\n", [C("USER", "b\ufffdb")]),
    ("NUL in line", b"USER a\x00b\r\n", [C("USER", "a\x00b")]),
    (
        "longest allowed line",
        b"USER " + b"x" * (MAX_COMMAND_LINE - 7) + b"\r\n",
        [C("USER", "x" * (MAX_COMMAND_LINE - 7))],
    ),
    (
        "longest allowed line with bare LF",
        b"USER " + b"x" * (MAX_COMMAND_LINE - 7) + b"\n",
        [C("USER", "x" * (MAX_COMMAND_LINE - 7))],
    ),
    (
        "one octet too long",
        b"USER " + b"x" * (MAX_COMMAND_LINE - 6) + b"\r\nNOOP\r\n",
        [LineTooLong(MAX_COMMAND_LINE + 1), C("NOOP")],
    ),
    (
        "very long line is discarded then reported",
        b"STAT\r\n" + b"A" * 5000 + b"\r\nNOOP\r\n",
        [C("STAT"), LineTooLong(5002), C("NOOP")],
    ),
    (
        "long line with bare LF",
        b"X" * 300 + b"\nQUIT\n",
        [LineTooLong(301), C("QUIT")],
    ),
    ("unterminated long line reports nothing yet", b"Y" * 1000, []),
]


@pytest.mark.parametrize(
    ("data", "expected"), [t[1:] for t in TRANSCRIPTS], ids=[t[0] for t in TRANSCRIPTS]
)
def test_transcript(data: bytes, expected: list[Event]) -> None:
    assert parse_bulk(data) == expected
    assert parse_bytewise(data) == expected


def test_unterminated_long_line_keeps_memory_bounded() -> None:
    conn = Pop3Connection()
    for _ in range(100):
        conn.receive_data(b"Z" * 10_000)
        assert conn.next_event() is NEED_DATA
        assert conn.buffered < MAX_COMMAND_LINE
    conn.receive_data(b"\r\nSTAT\r\n")
    assert drain(conn) == [LineTooLong(1_000_002), C("STAT")]


def test_events_are_lazy_so_sasl_mode_applies_to_the_next_line() -> None:
    conn = Pop3Connection()
    long_b64 = "QUJD" * 200  # 800 octets: too long for a command, fine for SASL
    conn.receive_data(f"AUTH PLAIN\r\n{long_b64}\r\n{long_b64}\r\nNOOP\r\n".encode())
    assert conn.next_event() == C("AUTH", "PLAIN")
    conn.expect_sasl_response()
    assert conn.next_event() == SaslResponse(long_b64)
    # SASL mode lasts for one line only.
    assert conn.next_event() == LineTooLong(802)
    assert conn.next_event() == C("NOOP")
    assert conn.next_event() is NEED_DATA


def test_sasl_line_is_verbatim_and_case_preserved() -> None:
    conn = Pop3Connection()
    conn.expect_sasl_response()
    conn.receive_data(b"dXNlcg==\r\n")
    ev = conn.next_event()
    assert ev == SaslResponse("dXNlcg==")
    assert "dXNlcg" not in repr(ev)


def test_sasl_line_limit() -> None:
    conn = Pop3Connection(max_sasl_line=20)
    conn.expect_sasl_response()
    conn.receive_data(b"x" * 30 + b"\r\nSTAT\r\n")
    assert drain(conn) == [LineTooLong(32), C("STAT")]


def test_discard_buffer_drops_pipelined_input() -> None:
    conn = Pop3Connection()
    conn.receive_data(b"STLS\r\nUSER evil\r\nPASS x\r\npartial")
    assert conn.next_event() == C("STLS")
    assert conn.discard_buffer() == len(b"USER evil\r\nPASS x\r\npartial")
    assert conn.next_event() is NEED_DATA
    conn.receive_data(b"CAPA\r\n")
    assert drain(conn) == [C("CAPA")]


def test_discard_buffer_ends_discard_mode() -> None:
    conn = Pop3Connection()
    conn.receive_data(b"Q" * 400)
    assert conn.next_event() is NEED_DATA
    conn.discard_buffer()
    conn.receive_data(b"NOOP\r\n")
    assert drain(conn) == [C("NOOP")]


def test_invalid_limits() -> None:
    with pytest.raises(ValueError):
        Pop3Connection(max_line=2)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.binary(max_size=400), max_size=8))
def test_garbage_never_raises_and_chunking_does_not_matter(chunks: list[bytes]) -> None:
    data = b"".join(chunks)
    conn = Pop3Connection()
    got: list[Event] = []
    for chunk in chunks:
        conn.receive_data(chunk)
        got.extend(drain(conn))
    assert got == parse_bulk(data)
    assert got == parse_bytewise(data)
    for ev in got:
        assert isinstance(ev, Command | LineTooLong)
    assert len(got) == data.count(b"\n")


# ---- states ---------------------------------------------------------------------------------


def test_allowed_table() -> None:
    assert set(ALLOWED) == set(State)
    assert ALLOWED[State.UPDATE] == frozenset()
    assert "APOP" not in COMMANDS
    assert "NOOP" in ALLOWED[State.TRANSACTION]
    assert "NOOP" not in ALLOWED[State.AUTHORIZATION]
    assert "CAPA" in ALLOWED[State.AUTHORIZATION] & ALLOWED[State.TRANSACTION]
    assert "QUIT" in ALLOWED[State.AUTHORIZATION] & ALLOWED[State.TRANSACTION]
    assert ALLOWED[State.AUTHORIZATION] == {"USER", "PASS", "AUTH", "STLS", "CAPA", "QUIT"}
    for cmd in ("STAT", "LIST", "RETR", "DELE", "RSET", "TOP", "UIDL"):
        assert cmd in ALLOWED[State.TRANSACTION]
        assert cmd not in ALLOWED[State.AUTHORIZATION]


# ---- replies --------------------------------------------------------------------------------


def test_ok_and_err() -> None:
    assert ok() == b"+OK\r\n"
    assert ok("2 320") == b"+OK 2 320\r\n"
    assert ok("a\r\nb") == b"+OK a  b\r\n"
    assert err("no such message") == b"-ERR no such message\r\n"
    assert err("locked", "IN-USE") == b"-ERR [IN-USE] locked\r\n"
    assert err("x\ny", "AUTH") == b"-ERR [AUTH] x y\r\n"


def test_multiline() -> None:
    assert multiline("2 messages", b"1 10\r\n2 20\r\n") == (
        b"+OK 2 messages\r\n1 10\r\n2 20\r\n.\r\n"
    )
    assert multiline("empty", b"") == b"+OK empty\r\n.\r\n"
    assert multiline("dots", b".\r\n") == b"+OK dots\r\n..\r\n.\r\n"
    parts = multiline_parts("x", b"body\r\n")
    assert b"".join(parts) == b"+OK x\r\nbody\r\n.\r\n"
    assert len(parts) == 3


@pytest.mark.parametrize(
    ("raw", "stuffed"),
    [
        (b"", b""),
        (b"\r\n", b"\r\n"),
        (b".", b"..\r\n"),
        (b".\r\n", b"..\r\n"),
        (b"..", b"...\r\n"),
        (b"..\r\n", b"...\r\n"),
        (b".start\r\n", b"..start\r\n"),
        (b"a\r\n.\r\nb\r\n", b"a\r\n..\r\nb\r\n"),
        (b"a\r\n..\r\n", b"a\r\n...\r\n"),
        (b"a\r\n.b\r\n.c", b"a\r\n..b\r\n..c\r\n"),
        (b"no newline", b"no newline\r\n"),
        (b"x\r\n.", b"x\r\n..\r\n"),
        (b"bare LF\n", b"bare LF\r\n"),
        (b"a\n.b\r\n", b"a\n..b\r\n"),
        (b"a.b\r\n. .\r\n", b"a.b\r\n.. .\r\n"),
        (b"\r\n.\r\n", b"\r\n..\r\n"),
    ],
)
def test_dot_stuff(raw: bytes, stuffed: bytes) -> None:
    assert dot_stuff(raw) == stuffed


def _unstuff_reference(wire: bytes) -> bytes:
    """What a client does: strip one leading dot from every line (line-by-line, slow, obvious)."""
    lines = wire.split(b"\r\n")
    return b"\r\n".join(line[1:] if line.startswith(b".") else line for line in lines)


crlf_text = st.lists(
    st.sampled_from([b".", b"..", b"a", b" ", b"\r\n", b".\r\n", b"x.y"]), max_size=40
).map(b"".join)


@settings(max_examples=300, deadline=None)
@given(crlf_text)
def test_dot_stuff_round_trip(raw: bytes) -> None:
    wire = dot_stuff(raw)
    full = b"+OK\r\n" + wire + b".\r\n"
    # The first ".\r\n" at a line start is the terminator, and only the real one.
    assert full.index(b"\r\n.\r\n") == len(full) - 5
    if raw:
        assert wire.endswith(b"\r\n")
    expected = raw if raw.endswith(b"\r\n") or not raw else raw + b"\r\n"
    assert _unstuff_reference(wire) == expected


def test_dot_stuff_is_fast_on_big_messages() -> None:
    body = (b"." + b"x" * 70 + b"\r\n") * 75_000  # ~5.3 MB, every line needs stuffing
    start = time.perf_counter()
    out = dot_stuff(body)
    elapsed = time.perf_counter() - start
    assert len(out) == len(body) + 75_000
    assert elapsed < 0.5


def test_dot_stuff_without_dots_does_not_grow() -> None:
    body = b"hello\r\n" * 1000
    assert dot_stuff(body) == body


# ---- TOP ------------------------------------------------------------------------------------

MSG = b"From: a\r\nSubject: s\r\n\r\nline1\r\nline2\r\n.line3\r\n"


@pytest.mark.parametrize(
    ("lines", "expected"),
    [
        (0, b"From: a\r\nSubject: s\r\n\r\n"),
        (1, b"From: a\r\nSubject: s\r\n\r\nline1\r\n"),
        (2, b"From: a\r\nSubject: s\r\n\r\nline1\r\nline2\r\n"),
        (3, MSG),
        (4, MSG),
        (10**9, MSG),
    ],
)
def test_top_of_message(lines: int, expected: bytes) -> None:
    assert top_of_message(MSG, lines) == expected


def test_top_of_message_edge_cases() -> None:
    assert top_of_message(b"From: a\r\nX: y\r\n", 3) == b"From: a\r\nX: y\r\n"  # no body
    assert top_of_message(b"\r\nbody1\r\nbody2\r\n", 1) == b"\r\nbody1\r\n"  # no header
    assert top_of_message(b"H: 1\r\n\r\nno newline at end", 5) == b"H: 1\r\n\r\nno newline at end"
    assert top_of_message(b"H: 1\r\n\r\n", 0) == b"H: 1\r\n\r\n"
    assert top_of_message(b"", 2) == b""
    with pytest.raises(ValueError):
        top_of_message(MSG, -1)

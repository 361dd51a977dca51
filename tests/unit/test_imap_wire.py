"""ImapFramer: whole commands with literals, continuations, limits, SASL and IDLE lines."""

from __future__ import annotations

import pytest

from postfach.imap.wire import (
    NEED_DATA,
    Event,
    IdleLine,
    ImapFramer,
    LineTooLong,
    LiteralTooLarge,
    NeedContinuation,
    SaslResponse,
    tag_of,
)

CONT = NeedContinuation("Ready for literal data", "a1", 5)


def drain(framer: ImapFramer) -> list[Event]:
    out: list[Event] = []
    while (ev := framer.next_event()) is not NEED_DATA:
        out.append(ev)
    return out


def whole(raw: bytes, max_line: int, max_literal: int) -> list[Event]:
    f = ImapFramer(max_line, max_literal)
    f.receive_data(raw)
    return drain(f)


def bytewise(raw: bytes, max_line: int, max_literal: int) -> list[Event]:
    f = ImapFramer(max_line, max_literal)
    out: list[Event] = []
    for i in range(len(raw)):
        f.receive_data(raw[i : i + 1])
        out.extend(drain(f))
    return out


CASES: list[tuple[str, bytes, list[Event]]] = [
    ("simple", b"a1 NOOP\r\n", [b"a1 NOOP"]),
    ("bare LF", b"a1 NOOP\n", [b"a1 NOOP"]),
    ("pipelined", b"a1 NOOP\r\na2 CAPABILITY\r\n", [b"a1 NOOP", b"a2 CAPABILITY"]),
    ("empty line", b"\r\n", [b""]),
    (
        "sync literal",
        b"a1 LOGIN {5}\r\nalice pw\r\n",
        [CONT, b"a1 LOGIN {5}\r\nalice pw"],
    ),
    (
        "literal marker with bare LF is normalised",
        b"a1 LOGIN {5}\nalice pw\n",
        [CONT, b"a1 LOGIN {5}\r\nalice pw"],
    ),
    ("literal+", b"a1 LOGIN {5+}\r\nalice pw\r\n", [b"a1 LOGIN {5+}\r\nalice pw"]),
    (
        "literal8 with NUL and CRLF inside",
        b"a1 APPEND x ~{4}\r\n\x00\r\n\n\r\n",
        [NeedContinuation(tag="a1", size=4), b"a1 APPEND x ~{4}\r\n\x00\r\n\n"],
    ),
    (
        "two literals",
        b"a1 LOGIN {1}\r\na {2+}\r\nbc\r\n",
        [NeedContinuation(tag="a1", size=1), b"a1 LOGIN {1}\r\na {2+}\r\nbc"],
    ),
    (
        "zero-length literal",
        b"a1 LOGIN {0}\r\n x\r\n",
        [NeedContinuation(tag="a1", size=0), b"a1 LOGIN {0}\r\n x"],
    ),
    ("literal is not a marker mid-line", b"a1 X {5} y\r\n", [b"a1 X {5} y"]),
    (
        "line too long",
        b"a1 " + b"x" * 40 + b"\r\na2 NOOP\r\n",
        [LineTooLong("a1"), b"a2 NOOP"],
    ),
    (
        "line of exactly max_line is fine",
        b"a1 " + b"x" * 29 + b"\r\n",
        [b"a1 " + b"x" * 29],
    ),
    (
        "too long line ending in {n+}: the literal is skipped too",
        b"a1 " + b"x" * 40 + b" {6+}\r\na3 BAD\r\na2 NOOP\r\n",
        [LineTooLong("a1"), b"a2 NOOP"],
    ),
    (
        "too long line ending in sync {n}: the client waits, nothing skipped",
        b"a1 " + b"x" * 40 + b" {6}\r\na2 NOOP\r\n",
        [LineTooLong("a1"), b"a2 NOOP"],
    ),
    (
        "too long continuation line after a literal",
        b"a1 LOGIN {1+}\r\nx " + b"y" * 40 + b"\r\na2 NOOP\r\n",
        [LineTooLong("a1"), b"a2 NOOP"],
    ),
    (
        "sync literal too large",
        b"a1 APPEND x {101}\r\na2 NOOP\r\n",
        [LiteralTooLarge("a1", 101, True), b"a2 NOOP"],
    ),
    (
        "nonsync literal too large: literal and rest of command skipped",
        b"a1 APPEND x {101+}\r\n" + b"z" * 101 + b" {3+}\r\nabc\r\na2 NOOP\r\n",
        [LiteralTooLarge("a1", 101, False), b"a2 NOOP"],
    ),
    (
        "invalid tag reported as *",
        b"a+1 " + b"x" * 40 + b"\r\n",
        [LineTooLong("*")],
    ),
]
# max_line=32, max_literal=100 throughout this table.


@pytest.mark.parametrize(("raw", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_framing_whole_and_byte_at_a_time(raw: bytes, expected: list[Event]) -> None:
    assert whole(raw, 32, 100) == expected
    assert bytewise(raw, 32, 100) == expected


def test_continuation_is_asked_once_and_carries_tag_and_size() -> None:
    f = ImapFramer()
    f.receive_data(b"t7 LOGIN {3}\r\n")
    assert f.next_event() == NeedContinuation(tag="t7", size=3)
    assert f.next_event() is NEED_DATA
    assert f.in_command
    f.receive_data(b"bob")
    assert f.next_event() is NEED_DATA
    f.receive_data(b" x\r\n")
    assert f.next_event() == b"t7 LOGIN {3}\r\nbob x"
    assert not f.in_command


def test_abort_command_after_refusing_the_continuation() -> None:
    f = ImapFramer()
    f.receive_data(b"a1 APPEND nope {3}\r\n")
    assert isinstance(f.next_event(), NeedContinuation)
    assert f.partial == b"a1 APPEND nope {3}\r\n"
    f.abort_command()
    assert f.partial == b""
    f.receive_data(b"a2 NOOP\r\n")
    assert drain(f) == [b"a2 NOOP"]


def test_ten_megabyte_sync_literal_refused_before_buffering() -> None:
    f = ImapFramer(max_line=8192, max_literal=1 << 20)
    f.receive_data(b"a1 APPEND INBOX {10485760}\r\n")
    assert f.next_event() == LiteralTooLarge("a1", 10485760, True)
    assert f.buffered == 0
    f.receive_data(b"a2 NOOP\r\n")
    assert drain(f) == [b"a2 NOOP"]


def test_ten_megabyte_nonsync_literal_discarded_in_constant_memory() -> None:
    f = ImapFramer(max_line=8192, max_literal=1 << 20)
    size = 10 << 20
    f.receive_data(b"a1 APPEND INBOX {%d+}\r\n" % size)
    assert f.next_event() == LiteralTooLarge("a1", size, False)
    chunk = b"A" * 65536
    sent = 0
    while sent < size:
        f.receive_data(chunk)
        sent += len(chunk)
        assert f.next_event() is NEED_DATA
        assert f.buffered == 0
    assert f.discarding == 0
    f.receive_data(b"\r\na2 NOOP\r\n")
    assert drain(f) == [b"a2 NOOP"]


def test_hundred_kilobyte_line_refused_in_constant_memory() -> None:
    f = ImapFramer(max_line=8192)
    f.receive_data(b"a1 SEARCH ")
    events: list[Event] = []
    for _ in range(100):
        f.receive_data(b"x" * 1024)
        events.extend(drain(f))
        assert f.buffered <= 8192 + 2 + 1024
    f.receive_data(b"\r\na2 NOOP\r\n")
    events.extend(drain(f))
    assert events == [LineTooLong("a1"), b"a2 NOOP"]


def test_literal_minus_limit_for_nonsync_literals() -> None:
    f = ImapFramer(max_literal=1 << 20, max_nonsync_literal=4096)
    f.receive_data(b"a1 APPEND x {4097+}\r\n")
    assert f.next_event() == LiteralTooLarge("a1", 4097, False)
    f.receive_data(b"m" * 4097 + b"\r\n")
    assert f.next_event() is NEED_DATA
    f.receive_data(b"a2 APPEND x {4097}\r\n")
    assert f.next_event() == NeedContinuation(tag="a2", size=4097)


def test_max_command_limits_many_literals() -> None:
    f = ImapFramer(max_line=64, max_literal=100, max_command=150)
    f.receive_data(b"a1 APPEND x {90+}\r\n" + b"m" * 90 + b" {90+}\r\n")
    assert f.next_event() == LiteralTooLarge("a1", 90, False)
    f.receive_data(b"m" * 90 + b"\r\na2 NOOP\r\n")
    assert drain(f) == [b"a2 NOOP"]


def test_sasl_mode_applies_to_the_next_line_only() -> None:
    f = ImapFramer()
    f.receive_data(b"a1 AUTHENTICATE PLAIN\r\nAGFsaWNlAHB3 {5}\r\na2 NOOP\r\n")
    assert f.next_event() == b"a1 AUTHENTICATE PLAIN"
    f.expect_sasl_response("a1")
    ev = f.next_event()
    assert ev == SaslResponse(b"AGFsaWNlAHB3 {5}")  # no literal inside SASL lines
    assert isinstance(ev, SaslResponse)
    assert ev.text == "AGFsaWNlAHB3 {5}"
    assert "AGF" not in repr(ev)
    assert f.next_event() == b"a2 NOOP"


def test_sasl_line_limit_and_tag() -> None:
    f = ImapFramer(max_sasl_line=100)
    f.expect_sasl_response("a9")
    f.receive_data(b"Q" * 200 + b"\r\na2 NOOP\r\n")
    assert drain(f) == [LineTooLong("a9"), b"a2 NOOP"]


def test_idle_mode() -> None:
    f = ImapFramer()
    f.receive_data(b"a1 IDLE\r\nDONE\r\na2 NOOP\r\n")
    assert f.next_event() == b"a1 IDLE"
    f.expect_idle_done("a1")
    assert f.next_event() == IdleLine(b"DONE")
    assert f.next_event() == b"a2 NOOP"


def test_mode_change_mid_command_is_a_local_error() -> None:
    f = ImapFramer()
    f.receive_data(b"a1 LOGIN {3}\r\n")
    f.next_event()
    with pytest.raises(RuntimeError):
        f.expect_idle_done()


def test_discard_buffer_after_starttls() -> None:
    f = ImapFramer()
    f.receive_data(b"a1 STARTTLS\r\na2 LOGIN injected x\r\n")
    assert f.next_event() == b"a1 STARTTLS"
    assert f.discard_buffer() == len(b"a2 LOGIN injected x\r\n")
    assert f.next_event() is NEED_DATA


def test_tag_of() -> None:
    assert tag_of(b"A001 NOOP") == "A001"
    assert tag_of(b"a]b x") == "a]b"
    assert tag_of(b"a+b NOOP") == "*"
    assert tag_of(b'a"b NOOP') == "*"
    assert tag_of(b"") == "*"
    assert tag_of(b"x" * 100) == "*"


def test_invalid_limits() -> None:
    with pytest.raises(ValueError):
        ImapFramer(max_line=3)


@pytest.mark.parametrize("module", ["wire", "parser", "sequence", "response", "utf7"])
def test_imap_core_modules_import_no_io(module: str) -> None:
    import ast
    from pathlib import Path

    import postfach.imap

    source = Path(postfach.imap.__file__).parent / f"{module}.py"
    forbidden = {"asyncio", "sqlite3", "socket", "ssl", "selectors", "threading", "time"}
    for node in ast.walk(ast.parse(source.read_text())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        else:
            continue
        for name in names:
            assert name.split(".")[0] not in forbidden, f"{module} imports {name}"
            assert not name.startswith("postfach.") or name.startswith("postfach.imap."), name

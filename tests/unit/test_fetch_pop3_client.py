"""The sans-IO POP3 client core: replies framed from bytes, whole and split at every byte."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from postfach.client.errors import Pop3ProtocolError
from postfach.client.pop3 import (
    NEED_DATA,
    Pop3ClientConnection,
    Reply,
    parse_capa,
    parse_list,
    parse_stat,
    parse_uidl,
)
from postfach.pop3.protocol import dot_stuff, multiline

pytestmark = pytest.mark.timeout(30)


def drain(conn: Pop3ClientConnection) -> list[Reply]:
    out: list[Reply] = []
    while (ev := conn.next_event()) is not NEED_DATA:
        out.append(ev)
    return out


def run(commands: list[tuple[str, ...]], server: bytes, bytewise: bool = False) -> list[Reply]:
    conn = Pop3ClientConnection()
    for c in commands:
        conn.send(*c)
    if not bytewise:
        conn.receive_data(server)
        return drain(conn)
    out: list[Reply] = []
    for i in range(len(server)):
        conn.receive_data(server[i : i + 1])
        out.extend(drain(conn))
    return out


GREETING = b"+OK POP3 ready <1.2@host>\r\n"

CASES: list[tuple[str, list[tuple[str, ...]], bytes, list[Reply]]] = [
    ("greeting", [], GREETING, [Reply(True, "POP3 ready <1.2@host>", "greeting")]),
    (
        "single and error with code",
        [("USER", "a"), ("PASS", "b")],
        GREETING + b"+OK\r\n-ERR [AUTH] bad password\r\n",
        [
            Reply(True, "POP3 ready <1.2@host>", "greeting"),
            Reply(True, "", "USER"),
            Reply(False, "bad password", "PASS", "AUTH"),
        ],
    ),
    (
        "pipelined retr with stuffing and an empty body",
        [("RETR", "1"), ("LIST",), ("RETR", "2")],
        GREETING
        + multiline("1 octets", b"..x\r\n.\r\nA\r\n")
        + b"+OK 0 messages\r\n.\r\n"
        + b"-ERR no such message\r\n",
        [
            Reply(True, "POP3 ready <1.2@host>", "greeting"),
            Reply(True, "1 octets", "RETR", None, b"..x\r\n.\r\nA\r\n"),
            Reply(True, "0 messages", "LIST", None, b""),
            Reply(False, "no such message", "RETR"),
        ],
    ),
    (
        "LIST with argument is single-line",
        [("LIST", "1"), ("UIDL", "1")],
        GREETING + b"+OK 1 120\r\n+OK 1 abc\r\n",
        [
            Reply(True, "POP3 ready <1.2@host>", "greeting"),
            Reply(True, "1 120", "LIST"),
            Reply(True, "1 abc", "UIDL"),
        ],
    ),
    (
        "bare LF server",
        [("RETR", "1")],
        b"+OK hi\n+OK\nline\n..dot\n.\n",
        [Reply(True, "hi", "greeting"), Reply(True, "", "RETR", None, b"line\n.dot\n")],
    ),
    (
        "sasl continuation",
        [("AUTH", "PLAIN")],
        GREETING + b"+ \r\n+OK logged in\r\n",
        [
            Reply(True, "POP3 ready <1.2@host>", "greeting"),
            Reply(True, "", "AUTH", continuation=True),
            Reply(True, "logged in", "AUTH"),
        ],
    ),
]


@pytest.mark.parametrize(("commands", "server", "expected"), [c[1:] for c in CASES],
                         ids=[c[0] for c in CASES])  # fmt: skip
def test_transcripts_whole_and_bytewise(
    commands: list[tuple[str, ...]], server: bytes, expected: list[Reply]
) -> None:
    assert run(commands, server) == expected
    assert run(commands, server, bytewise=True) == expected


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=400))
def test_any_body_survives_stuffing(body: bytes) -> None:
    """Whatever the server stuffs, the client unstuffs back (CRLF-normalised line ends)."""
    wire = GREETING + multiline("", body)
    replies = run([("RETR", "1")], wire)
    stuffed = dot_stuff(body)
    assert replies[1].body is not None
    assert dot_stuff(replies[1].body) == stuffed


def test_large_message_is_found_without_rescanning() -> None:
    body = b"x" * 70 + b"\r\n"
    data = body * 20000  # 1.4 MB
    conn = Pop3ClientConnection()
    conn.send("RETR", "1")
    wire = GREETING + multiline("", data)
    replies: list[Reply] = []
    for i in range(0, len(wire), 1000):
        conn.receive_data(wire[i : i + 1000])
        replies += drain(conn)
    assert len(replies) == 2 and replies[1].body == data
    assert conn.buffered == 0 and conn.pending == 0


def test_errors_are_remote_protocol_errors() -> None:
    conn = Pop3ClientConnection()
    conn.receive_data(b"HELLO\r\n")
    with pytest.raises(Pop3ProtocolError, match="not a POP3 reply"):
        conn.next_event()
    conn = Pop3ClientConnection()
    conn.receive_data(GREETING + b"+OK unexpected\r\n")
    conn.next_event()
    with pytest.raises(Pop3ProtocolError, match="nobody asked"):
        conn.next_event()
    conn = Pop3ClientConnection(max_status_line=64)
    conn.receive_data(b"+OK " + b"x" * 100)
    with pytest.raises(Pop3ProtocolError, match="longer"):
        conn.next_event()
    conn = Pop3ClientConnection(max_body=100)
    conn.send("RETR", "1")
    conn.receive_data(GREETING + b"+OK\r\n" + b"y" * 200)
    conn.next_event()
    with pytest.raises(Pop3ProtocolError, match="larger"):
        conn.next_event()


def test_commands_are_checked_locally() -> None:
    conn = Pop3ClientConnection()
    assert conn.send("retr", "1") == b"RETR 1\r\n"
    with pytest.raises(ValueError, match="CR"):
        conn.send("USER", "a\r\nDELE 1")
    with pytest.raises(ValueError, match="255"):
        conn.send("USER", "a" * 300)
    with pytest.raises(ValueError, match="AUTH"):
        conn.send_sasl("abc")


def test_listings() -> None:
    caps = parse_capa(b"TOP\r\nUIDL\r\nSASL PLAIN LOGIN\r\nPIPELINING\r\n")
    assert caps["SASL"] == ("PLAIN", "LOGIN") and "PIPELINING" in caps
    assert parse_stat("2 320") == (2, 320)
    assert parse_list(b"1 120\r\n2 200\r\n") == {1: 120, 2: 200}
    assert parse_uidl(b"1 whqtswO00WBw418f9t5JxYwZ\r\n2 QhdPYR:00WBw1Ph7x7\r\n") == {
        1: "whqtswO00WBw418f9t5JxYwZ",
        2: "QhdPYR:00WBw1Ph7x7",
    }
    for bad in (b"x 1\r\n", b"1\r\n", b"0 a\r\n"):
        with pytest.raises(Pop3ProtocolError):
            parse_uidl(bad)
    with pytest.raises(Pop3ProtocolError, match="same UIDL"):
        parse_uidl(b"1 a\r\n2 a\r\n")
    with pytest.raises(Pop3ProtocolError):
        parse_stat("many")
    with pytest.raises(Pop3ProtocolError):
        parse_list(b"1 big\r\n")

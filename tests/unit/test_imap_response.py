"""Response serialisation: strings, literals, status lines, date-time."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from postfach.imap.response import (
    astring,
    continuation,
    date_time,
    flag_list,
    format_date_time,
    literal,
    literal_prefix,
    mailbox_name,
    nstring,
    parse_date_time,
    parse_date_time_offset,
    quoted,
    tagged,
    untagged,
    untagged_status,
)


@pytest.mark.parametrize(
    ("value", "utf8", "expected"),
    [
        ("hello", False, b'"hello"'),
        ("", False, b'""'),
        ('say "hi" \\o/', False, b'"say \\"hi\\" \\\\o/"'),
        ("line\r\nbreak", False, b"{11}\r\nline\r\nbreak"),
        ("Grüße", False, b"{7}\r\nGr\xc3\xbc\xc3\x9fe"),
        ("Grüße", True, b'"Gr\xc3\xbc\xc3\x9fe"'),
        (b"\xff\xfe", True, b"{2}\r\n\xff\xfe"),  # not UTF-8
        (b"a\x00b", False, b"~{3}\r\na\x00b"),
    ],
)
def test_quoted(value: str | bytes, utf8: bool, expected: bytes) -> None:
    assert quoted(value, utf8=utf8) == expected


def test_astring_nstring_literal() -> None:
    assert astring("INBOX.Sent") == b"INBOX.Sent"
    assert astring("a]b") == b"a]b"
    assert astring("two words") == b'"two words"'
    assert astring("NIL") == b'"NIL"'
    assert astring("") == b'""'
    assert astring("a(b") == b'"a(b"'
    assert astring("50%") == b'"50%"'
    assert nstring(None) == b"NIL"
    assert nstring(b"x") == b'"x"'
    assert literal(b"abc") == b"{3}\r\nabc"
    assert literal(b"abc", binary=True) == b"~{3}\r\nabc"
    assert literal_prefix(10) == b"{10}\r\n"
    assert literal_prefix(10, binary=True) == b"~{10}\r\n"


def test_mailbox_name() -> None:
    assert mailbox_name("inbox", False) == b"INBOX"
    assert mailbox_name("\u0131nbox", True) == b'"\xc4\xb1nbox"'  # dotless i: not INBOX
    assert mailbox_name("Entwürfe", False) == b"Entw&APw-rfe"
    assert mailbox_name("Entwürfe", True) == b'"Entw\xc3\xbcrfe"'
    assert mailbox_name("Sent Items", False) == b'"Sent Items"'
    assert mailbox_name("a&b", False) == b"a&-b"


def test_status_lines() -> None:
    assert tagged("a1", "OK", None, "LOGIN completed") == b"a1 OK LOGIN completed\r\n"
    assert tagged("a1", "no", "TRYCREATE", "no such\r\nmailbox") == (
        b"a1 NO [TRYCREATE] no such  mailbox\r\n"
    )
    assert tagged("a1", "OK") == b"a1 OK completed\r\n"
    assert untagged_status("BYE", None, "bye") == b"* BYE bye\r\n"
    assert (
        untagged_status("OK", "UIDVALIDITY 3", "UIDs valid")
        == b"* OK [UIDVALIDITY 3] UIDs valid\r\n"
    )
    assert untagged("3 EXISTS") == b"* 3 EXISTS\r\n"
    assert untagged(b"1 FETCH (BODY[] {1}\r\nx)") == b"* 1 FETCH (BODY[] {1}\r\nx)\r\n"
    assert continuation() == b"+ \r\n"
    assert continuation("Ready") == b"+ Ready\r\n"
    assert flag_list(["\\Seen", "$Forwarded"]) == "(\\Seen $Forwarded)"
    assert flag_list([]) == "()"


def test_date_time() -> None:
    assert format_date_time(1704103200) == '"01-Jan-2024 10:00:00 +0000"'
    assert format_date_time(1704103200, 90) == '"01-Jan-2024 11:30:00 +0130"'
    assert format_date_time(1704103200, -300) == '"01-Jan-2024 05:00:00 -0500"'
    assert format_date_time(0, -60) == '"31-Dec-1969 23:00:00 -0100"'
    assert date_time(1704103200) == b'"01-Jan-2024 10:00:00 +0000"'
    assert parse_date_time('"01-Jan-2024 10:00:00 +0000"') == 1704103200
    assert parse_date_time(" 1-jan-2024 11:00:00 +0100") == 1704103200
    assert parse_date_time("1-JAN-2024 05:00:00 -0500") == 1704103200
    assert parse_date_time_offset('"17-Jul-1996 02:44:25 -0700"') == (837596665, -420)


@pytest.mark.parametrize(
    "text",
    [
        "",
        '"',
        '"01-Jan-2024 10:00:00 +0000',
        "32-Jan-2024 10:00:00 +0000",
        "29-Feb-2023 10:00:00 +0000",
        "01-Foo-2024 10:00:00 +0000",
        "01-Jan-2024 24:00:00 +0000",
        "01-Jan-2024 10:00:00 +0060",
        "01-Jan-2024 10:00:00 +2500",
        "01-Jan-2024 10:00:00",
        "01-Jan-24 10:00:00 +0000",
        "001-Jan-2024 10:00:00 +0000",
    ],
)
def test_parse_date_time_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_date_time(text)


@given(
    st.integers(0, 4102444800),  # 1970..2100
    st.integers(-23 * 60 - 59, 23 * 60 + 59),
)
def test_date_time_round_trip(seconds: int, offset: int) -> None:
    text = format_date_time(seconds, offset)
    assert parse_date_time_offset(text) == (seconds, offset)

"""Maildir names and flags, mbox framing, quoting and status headers (pure)."""

from __future__ import annotations

from pathlib import Path

import pytest

from postfach.mailfile import (
    add_status_headers,
    from_line,
    from_line_date,
    maildir_info,
    maildir_parse_name,
    mbox_entry,
    mbox_quote,
    mbox_unquote,
    split_mbox,
    strip_status_headers,
)

DATA = Path(__file__).resolve().parents[3] / "shared" / "data"


def test_maildir_flags_both_ways() -> None:
    unique, flags = maildir_parse_name("1700000000.M1P2.host:2,DFPRST")
    assert unique == "1700000000.M1P2.host"
    assert flags == {"\\Draft", "\\Flagged", "$Forwarded", "\\Answered", "\\Seen", "\\Deleted"}
    assert maildir_info(flags) == ":2,DFPRST"
    assert maildir_parse_name("x:2,ab") == ("x", frozenset())  # Dovecot keyword letters
    assert maildir_parse_name("plain") == ("plain", frozenset())
    assert maildir_info([]) == ":2,"


def test_from_lines() -> None:
    line = from_line("zoe@example.de", 1672740180)
    assert line == b"From zoe@example.de Tue Jan  3 10:03:00 2023\n"
    assert from_line_date(line) == 1672740180
    assert from_line_date(b"From x Sat Jan 13 10:44:00 2024 remote from y") == 1705142640
    assert from_line_date(b"From x garbage") is None
    assert from_line("a b", 0).startswith(b"From ab Thu Jan  1 00:00:00 1970")


def test_mboxrd_quoting_round_trips() -> None:
    body = b"From here\n>From there\n>>From everywhere\nFrom\n"
    quoted = mbox_quote(body)
    assert quoted == b">From here\n>>From there\n>>>From everywhere\nFrom\n"
    assert mbox_unquote(quoted) == body


def test_split_and_write() -> None:
    one = b"Subject: 1\n\nFrom me\n"
    two = b"Subject: 2\n\nbody\n\n"
    text = mbox_entry(one, "a@x", 0) + mbox_entry(two.replace(b"\n", b"\r\n"), "b@y", 60)
    msgs = list(split_mbox(b"text before the first message\n\n" + text))
    assert [m.data for m in msgs] == [one, two]
    assert [m.sender for m in msgs] == ["a@x", "b@y"]
    assert [m.date for m in msgs] == [0, 60]
    assert list(split_mbox(b"")) == []


def test_status_headers() -> None:
    msg = b"Subject: x\nStatus: RO\nX-Status: AFD\nX-Keywords: $Label1 work\n\tmore\n\nbody\n"
    data, flags = strip_status_headers(msg)
    assert data == b"Subject: x\n\nbody\n"
    assert flags == {"\\Seen", "\\Answered", "\\Flagged", "\\Deleted", "$Label1", "work", "more"}
    back = add_status_headers(data, flags)
    assert back == (
        b"Subject: x\nStatus: RO\nX-Status: ADF\nX-Keywords: $Label1 more work\n\nbody\n"
    )
    assert strip_status_headers(back)[1] == flags
    plain = b"Subject: y\n\nStatus: RO in the body\n"
    assert strip_status_headers(plain) == (plain, frozenset())
    assert add_status_headers(plain, []) is plain
    assert add_status_headers(b"Subject: z", ["\\Seen"]) == b"Subject: z\nStatus: RO\n"


@pytest.mark.parametrize("name", ["test.mbox", "torture.mbox"])
def test_shared_mboxes_round_trip(name: str) -> None:
    path = DATA / name
    assert path.exists(), path
    raw = path.read_bytes()
    msgs = list(split_mbox(raw))
    assert len(msgs) == {"test.mbox": 200, "torture.mbox": 40}[name]
    again = b"".join(mbox_entry(m.data, m.sender, m.date or 0) for m in msgs)
    assert again == raw.replace(b"\r\n", b"\n")

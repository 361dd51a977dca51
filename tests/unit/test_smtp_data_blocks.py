"""`postfach.smtp.data.MessageReader`: the message after DATA, found in blocks of any size.

Every case is fed whole, one octet at a time, and split in two at every position: the message,
the state and the octets after the end line must not depend on how the socket cut the input.
"""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from postfach.smtp.data import MessageReader, _has_long_line, roomy_reader

NOMINAL, TOO_LONG, TOO_MUCH = 0, 1, 2


def splits(data: bytes) -> list[list[bytes]]:
    ways = [[data], [data[i : i + 1] for i in range(len(data))]]
    ways += [[data[:i], data[i:]] for i in range(1, len(data))]
    return ways


def run(
    pieces: list[bytes], max_line: int = 1001, limit: int | None = None
) -> tuple[int, bytes, bytes]:
    msg = MessageReader(max_line, limit)
    for n, piece in enumerate(pieces):
        rest = msg.feed(piece)
        if rest is not None:
            rest += b"".join(pieces[n + 1 :])
            return msg.state, msg.content() if msg.state == NOMINAL else b"", rest
    raise AssertionError("no end line found")


CASES = [
    # (input after DATA, message, octets after the end line)
    (b".\r\n", b"", b""),
    (b".\r\nQUIT\r\n", b"", b"QUIT\r\n"),
    (b"Subject: x\r\n\r\nbody\r\n.\r\n", b"Subject: x\r\n\r\nbody\r\n", b""),
    (b"a\r\n.\r\nMAIL FROM:<b@c>\r\n", b"a\r\n", b"MAIL FROM:<b@c>\r\n"),
    # dot-stuffing undone at the start of every line, the first included
    (b"..x\r\n..\r\n...\r\n.\r\n", b".x\r\n.\r\n..\r\n", b""),
    (b"a\r\n.b.\r\n.\r\n", b"a\r\nb.\r\n", b""),
    # a dot after a bare LF or CR is data, and no end line (the smuggling check sees it)
    (b"a\n.\nb\r\n.\r\n", b"a\n.\nb\r\n", b""),
    (b"a\n.\r\nb\r\n.\r\n", b"a\n.\r\nb\r\n", b""),
    (b"a\r\n.\nb\r\n.\r\n", b"a\r\n\nb\r\n", b""),
    (b"a\r.\r\nb\r\n.\r\n", b"a\r.\r\nb\r\n", b""),
    (b"a\r\r\n.\r\n", b"a\r\r\n", b""),
    (b"end.\r\n.\r\n.\r\n", b"end.\r\n", b".\r\n"),
]


@pytest.mark.parametrize(("data", "message", "after"), CASES)
def test_message_and_what_follows(data: bytes, message: bytes, after: bytes) -> None:
    for pieces in splits(data):
        assert run(pieces) == (NOMINAL, message, after), pieces


def test_longest_line_allowed_and_one_octet_more() -> None:
    ok = b"x" * 999 + b"\r\n"  # 1001 octets with the CRLF: aiosmtpd's limit
    for pieces in splits(b"a\r\n" + ok + b".\r\nNOOP\r\n")[:40]:
        assert run(pieces) == (NOMINAL, b"a\r\n" + ok, b"NOOP\r\n")
    long = b"a\r\n" + b"x" * 1000 + b"\r\nb\r\n.\r\nNOOP\r\n"
    for pieces in [[long], [long[:500], long[500:]], [long[:1002], long[1002:]]]:
        assert run(pieces) == (TOO_LONG, b"", b"NOOP\r\n")


def test_endless_line_is_not_kept() -> None:
    msg = MessageReader(1001, None)
    for _ in range(100):
        assert msg.feed(b"y" * 10_000) is None
    assert msg.state == TOO_LONG
    assert len(msg._tail) < 10
    assert msg.feed(b"\r\n.\r\nQUIT\r\n") == b"QUIT\r\n"


def test_size_limit_counts_octets_as_sent() -> None:
    body = b"0123456789abcd\r\n" * 8  # 128 octets
    assert run([body + b".\r\n"], limit=128) == (NOMINAL, body, b"")
    for pieces in splits(body + b"z\r\n.\r\nRSET\r\n")[:3]:
        assert run(pieces, limit=128) == (TOO_MUCH, b"", b"RSET\r\n")
    stuffed = b"." + body  # the stuffing dot counts, as it did in aiosmtpd
    assert run([stuffed + b".\r\n"], limit=128)[0] == TOO_MUCH


@given(
    st.lists(st.binary(max_size=40).map(lambda b: b.replace(b"\r\n", b"\r")), max_size=30),
    st.integers(min_value=2, max_value=45),
)
@settings(max_examples=400, deadline=None)
def test_long_line_search_agrees_with_splitting(lines: list[bytes], limit: int) -> None:
    # The windowed backward search finds a too-long line exactly when splitting into lines does.
    block = b"".join(line + b"\r\n" for line in lines)
    by_split = max(map(len, block.split(b"\r\n"))) + 2 > limit
    assert _has_long_line(block, limit) == by_split


class _Transport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.pauses = 0

    def pause_reading(self) -> None:
        self.pauses += 1

    def resume_reading(self) -> None:
        pass


def test_message_data_does_not_stop_the_socket_but_commands_keep_their_bound() -> None:
    # aiosmtpd's reader stops reading the socket once it holds twice its 1,001-octet line limit:
    # every message over 2 KB paused and resumed the socket. While message data arrives it may
    # hold more; afterwards the small bound is back for commands.
    async def run() -> tuple[int, int]:
        reader = asyncio.StreamReader(limit=1001)
        transport = _Transport()
        reader.set_transport(transport)
        with roomy_reader(reader):
            reader.feed_data(b"x" * 20_000)
            during = transport.pauses
            assert len(await reader.read(1 << 20)) == 20_000
        reader.feed_data(b"y" * 3_000)
        return during, transport.pauses

    during, after = asyncio.run(run())
    assert during == 0
    assert after == 1

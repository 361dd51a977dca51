"""Message data read in blocks over a real socket: pipelined transactions, dot-stuffing and
the line and size limits behave as they did when aiosmtpd read line by line."""

from __future__ import annotations

from support import RunningServer, smtp_replies


def transaction(body: bytes, rcpt: bytes = b"alice@example.org") -> bytes:
    return b"MAIL FROM:<a@remote.example>\r\nRCPT TO:<" + rcpt + b">\r\nDATA\r\n" + body


def test_two_pipelined_transactions_in_one_write(server: RunningServer) -> None:
    server.add_user("alice@example.org")
    first = b"Subject: one\r\n\r\n..leading dot\r\nend.\r\n.\r\n"
    second = b"Subject: two\r\n\r\n" + (b"word " * 15 + b"\r\n") * 3000 + b"...\r\n.\r\n"
    data = b"EHLO x\r\n" + transaction(first) + transaction(second) + b"QUIT\r\n"
    replies = smtp_replies(server.port("smtp"), data, 10)
    codes = [r[:3] for r in replies]
    assert codes == [b"250", *[b"250", b"250", b"354", b"250"] * 2, b"221"]
    one, two = server.inbox("alice@example.org")
    assert one.endswith(b"\r\n\r\n.leading dot\r\nend.\r\n")
    assert two.endswith(b"word \r\n..\r\n") and len(two) > 231_000


def test_message_split_across_many_small_writes(server: RunningServer) -> None:
    server.add_user("alice@example.org")
    body = b"Subject: slow\r\n\r\n" + b"line of text.\r\n" * 40 + b".stuffed\r\n"
    data = b"EHLO x\r\n" + transaction(body + b".\r\n") + b"QUIT\r\n"
    replies = smtp_replies(server.port("smtp"), data, 6, step=7)
    assert replies[4].startswith(b"250 2.0.0") and replies[5].startswith(b"221")
    [msg] = server.inbox("alice@example.org")
    assert msg.endswith(b"line of text.\r\nstuffed\r\n")


def test_too_long_line_is_refused_and_the_session_goes_on(server: RunningServer) -> None:
    server.add_user("alice@example.org")
    bad = b"Subject: long\r\n\r\n" + b"x" * 5000 + b"\r\n.\r\n"
    good = b"Subject: fine\r\n\r\nshort\r\n.\r\n"
    data = b"EHLO x\r\n" + transaction(bad) + transaction(good) + b"QUIT\r\n"
    replies = smtp_replies(server.port("smtp"), data, 10)
    assert replies[4].startswith(b"500 5.5.2 Line too long")
    assert replies[8].startswith(b"250 2.0.0") and replies[9].startswith(b"221")
    [msg] = server.inbox("alice@example.org")
    assert msg.endswith(b"Subject: fine\r\n\r\nshort\r\n")

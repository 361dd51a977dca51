"""CHUNKING (RFC 3030 BDAT) over real sockets: the message arrives in chunks of a stated size,
with no dot-stuffing and no end line; a refused chunk is read and thrown away, so its octets are
never taken for commands."""

from __future__ import annotations

import base64
import smtplib
import socket
from pathlib import Path

from support import PASSWORD, RunningServer, smtp_replies, start_server

ALICE = "alice@example.org"


def body_of(message: bytes) -> bytes:
    """The message as the client sent it: what follows the trace headers postfach adds."""
    assert message.startswith(b"Return-Path: ")
    return message[message.index(b"\r\n\t") :].split(b"\r\n", 3)[3]


def bdat(chunk: bytes, last: bool = False) -> bytes:
    return b"BDAT %d%s\r\n" % (len(chunk), b" LAST" if last else b"") + chunk


ENVELOPE = b"MAIL FROM:<a@remote.example>\r\nRCPT TO:<alice@example.org>\r\n"
# What DATA would need dot-stuffed and would end at: BDAT carries it as it is.
BODY = b"Subject: chunks\r\n\r\n.\r\n..two dots\r\nMAIL FROM:<x@y>\r\nlast line\r\n"


def test_ehlo_offers_chunking_on_every_smtp_listener(server: RunningServer) -> None:
    for port, hello in (("smtp", b"EHLO"), ("submission", b"EHLO"), ("lmtp", b"LHLO")):
        with socket.create_connection(("127.0.0.1", server.port(port)), timeout=20) as sock:
            f = sock.makefile("rb")
            assert f.readline().startswith(b"220 ")
            sock.sendall(hello + b" x\r\n")
            lines = [f.readline()]
            while lines[-1][3:4] == b"-":
                lines.append(f.readline())
        assert b"250-CHUNKING\r\n" in lines, port


def test_one_pipelined_write_with_bdat_last_stores_the_octets_unchanged(
    server: RunningServer,
) -> None:
    server.add_user(ALICE)
    data = b"EHLO x\r\n" + ENVELOPE + bdat(BODY, last=True) + b"QUIT\r\n"
    replies = smtp_replies(server.port("smtp"), data, 5)
    assert [r[:9] for r in replies] == [
        b"250 ENHAN", b"250 2.1.0", b"250 2.1.5", b"250 2.0.0", b"221 2.0.0"
    ]  # fmt: skip
    [msg] = server.inbox(ALICE)
    assert body_of(msg) == BODY


def test_chunks_are_joined_and_each_is_acknowledged(server: RunningServer) -> None:
    server.add_user(ALICE)
    # Chunk boundaries inside a header, between CR and LF, and an empty last chunk.
    one, two, three = BODY[:5], BODY[5:16], BODY[16:]
    assert two.endswith(b"\r") and three.startswith(b"\n")
    data = (
        b"EHLO x\r\n" + ENVELOPE + bdat(one) + bdat(two) + bdat(three) + bdat(b"", last=True)
        + b"QUIT\r\n"
    )  # fmt: skip
    replies = smtp_replies(server.port("smtp"), data, 8)
    assert replies[3:6] == [
        b"250 2.0.0 Chunk of 5 octets received",
        b"250 2.0.0 Chunk of 11 octets received",
        b"250 2.0.0 Chunk of %d octets received" % len(three),
    ]
    assert replies[6] == b"250 2.0.0 OK"
    [msg] = server.inbox(ALICE)
    assert body_of(msg) == BODY


def test_bdat_without_a_recipient_is_refused_and_its_octets_are_not_commands(
    server: RunningServer,
) -> None:
    server.add_user(ALICE)
    sneaky = b"QUIT\r\n"  # read as a command, it would end the session
    data = (
        b"EHLO x\r\n" + bdat(sneaky, last=True)
        + ENVELOPE + bdat(BODY, last=True) + b"QUIT\r\n"
    )  # fmt: skip
    replies = smtp_replies(server.port("smtp"), data, 6)
    assert replies[1] == b"503 5.5.1 Error: need RCPT command"
    assert [r[:3] for r in replies[2:]] == [b"250", b"250", b"250", b"221"]
    assert [body_of(m) for m in server.inbox(ALICE)] == [BODY]


def test_data_after_bdat_is_a_bad_sequence_and_rset_forgets_the_chunks(
    server: RunningServer,
) -> None:
    server.add_user(ALICE)
    data = (
        b"EHLO x\r\n" + ENVELOPE + bdat(b"Subject: lost\r\n") + b"DATA\r\n" + b"RSET\r\n"
        + ENVELOPE + bdat(BODY, last=True) + b"QUIT\r\n"
    )  # fmt: skip
    replies = smtp_replies(server.port("smtp"), data, 10)
    assert replies[4] == b"503 5.5.1 Error: DATA after BDAT"
    assert replies[5].startswith(b"250 ") and replies[8] == b"250 2.0.0 OK"
    assert [body_of(m) for m in server.inbox(ALICE)] == [BODY]


def test_bad_bdat_arguments_get_a_syntax_error(server: RunningServer) -> None:
    server.add_user(ALICE)
    data = b"EHLO x\r\n" + ENVELOPE + b"BDAT\r\nBDAT x LAST\r\nBDAT 5 FIRST\r\nNOOP\r\nQUIT\r\n"
    replies = smtp_replies(server.port("smtp"), data, 8)
    assert replies[3:6] == [b"501 5.5.4 Syntax: BDAT chunk-size [LAST]"] * 3
    assert replies[6].startswith(b"250 ") and replies[7].startswith(b"221 ")
    assert server.inbox(ALICE) == []


def test_too_much_data_is_refused_and_pipelined_chunks_after_it_are_thrown_away(
    tmp_path: Path,
) -> None:
    srv = start_server(tmp_path / "data", toml='[limits]\nmax_message_size = "10K"\n')
    try:
        srv.add_user(ALICE)
        big = b"x" * 70 + b"\r\n"
        data = (
            b"EHLO x\r\n" + ENVELOPE + bdat(big * 100) + bdat(big * 100) + bdat(big, last=True)
            + ENVELOPE + bdat(BODY, last=True) + b"QUIT\r\n"
        )  # fmt: skip
        replies = smtp_replies(srv.port("smtp"), data, 10)
        assert replies[3].startswith(b"250 2.0.0 Chunk of 7200")
        assert replies[4] == b"552 5.3.4 Error: Too much mail data"
        # The sender may already have sent more chunks (RFC 3030 §2): read, refused, skipped.
        assert replies[5] == b"503 5.5.1 Error: need RCPT command"
        assert replies[8] == b"250 2.0.0 OK" and replies[9].startswith(b"221 ")
        assert [body_of(m) for m in srv.inbox(ALICE)] == [BODY]
    finally:
        srv.stop()


def test_a_full_mailbox_refuses_the_last_chunk_with_mailbox_full(server: RunningServer) -> None:
    server.add_user(ALICE, quota=200)
    data = b"EHLO x\r\n" + ENVELOPE + bdat(BODY + b"x" * 300 + b"\r\n", last=True) + b"QUIT\r\n"
    replies = smtp_replies(server.port("smtp"), data, 5)
    assert replies[3].startswith(b"552 5.2.2 Mailbox full")
    assert server.inbox(ALICE) == []


def test_lmtp_bdat_last_answers_per_recipient(server: RunningServer) -> None:
    server.add_user(ALICE, quota=200)
    server.add_user("bob@example.org")
    data = (
        b"LHLO x\r\nMAIL FROM:<a@remote.example>\r\nRCPT TO:<alice@example.org>\r\n"
        b"RCPT TO:<bob@example.org>\r\n" + bdat(BODY) + bdat(b"x" * 300 + b"\r\n", last=True)
        + b"QUIT\r\n"
    )  # fmt: skip
    replies = smtp_replies(server.port("lmtp"), data, 8)
    assert replies[4] == b"250 2.0.0 Chunk of %d octets received" % len(BODY)
    assert replies[5].startswith(b"552 5.2.2 Mailbox full: <alice@example.org>")
    assert replies[6] == b"250 2.0.0 <bob@example.org> delivered"
    [msg] = server.inbox("bob@example.org")
    assert body_of(msg) == BODY + b"x" * 300 + b"\r\n"


def test_submission_takes_bdat_after_login(server: RunningServer) -> None:
    server.add_user(ALICE)
    server.add_user("bob@example.org")
    message = b"From: <alice@example.org>\r\nTo: <bob@example.org>\r\nSubject: s\r\n\r\nHi.\r\n"
    with smtplib.SMTP("127.0.0.1", server.port("submission"), timeout=30) as s:
        s.ehlo("client.example")
        assert s.has_extn("chunking")
        s.putcmd("BDAT", "3 LAST")  # before AUTH: refused, its 3 octets skipped
        s.send(b"abc")
        assert s.getreply()[0] == 530
        auth = base64.b64encode(f"\0{ALICE}\0{PASSWORD}".encode()).decode()
        assert s.docmd("AUTH", f"PLAIN {auth}")[0] == 235
        assert s.docmd("MAIL", "FROM:<alice@example.org>")[0] == 250
        assert s.docmd("RCPT", "TO:<bob@example.org>")[0] == 250
        s.putcmd("BDAT", f"{len(message)} LAST")
        s.send(message)
        code, text = s.getreply()
        assert code == 250, text
    [msg] = server.inbox("bob@example.org")
    assert b"\r\nSubject: s\r\n\r\nHi.\r\n" in msg


def test_a_transaction_arriving_a_few_octets_at_a_time(server: RunningServer) -> None:
    server.add_user(ALICE)
    data = b"EHLO x\r\n" + ENVELOPE + bdat(BODY[:30]) + bdat(BODY[30:], last=True) + b"QUIT\r\n"
    replies = smtp_replies(server.port("smtp"), data, 6, step=3)
    assert [r[:9] for r in replies] == [
        b"250 ENHAN", b"250 2.1.0", b"250 2.1.5", b"250 2.0.0", b"250 2.0.0", b"221 2.0.0"
    ]  # fmt: skip
    assert [body_of(m) for m in server.inbox(ALICE)] == [BODY]


def test_binarymime_is_not_offered(server: RunningServer) -> None:
    server.add_user(ALICE)
    data = b"EHLO x\r\nMAIL FROM:<a@remote.example> BODY=BINARYMIME\r\nQUIT\r\n"
    replies = smtp_replies(server.port("smtp"), data, 3)
    assert replies[1].startswith(b"501 ")


def test_a_client_that_waits_for_each_chunk_gets_its_reply(server: RunningServer) -> None:
    """The reply to a chunk before the last is held back only while more pipelined input is
    already there: a client that sends one chunk and waits gets it at once."""
    server.add_user(ALICE)
    with smtplib.SMTP("127.0.0.1", server.port("smtp"), timeout=20) as s:
        s.ehlo("x")
        assert s.docmd("MAIL", "FROM:<a@remote.example>")[0] == 250
        assert s.docmd("RCPT", f"TO:<{ALICE}>")[0] == 250
        for chunk, last in ((BODY[:20], False), (BODY[20:], True)):
            s.putcmd("BDAT", f"{len(chunk)}{' LAST' if last else ''}")
            s.send(chunk)
            code, text = s.getreply()
            assert code == 250, text
    assert [body_of(m) for m in server.inbox(ALICE)] == [BODY]


def test_bdat_and_data_store_the_same_bytes_for_the_shared_corpus(server: RunningServer) -> None:
    """Every message of test.mbox and torture.mbox (nested MIME, NUL octets, long lines, 8-bit
    headers ...), sent once with DATA to alice and once with BDAT to bob: the same reply, and
    the same stored octets after the trace headers. BDAT has no dot-stuffing and no end line,
    but the checks after the message (size, line length, smuggling) and the line-end
    normalisation are the same."""
    import re

    from postfach.mailfile import split_mbox

    corpus = Path(__file__).resolve().parents[3] / "shared" / "data"
    messages = [
        re.sub(rb"\r\n|\n|\r(?!\n)", b"\r\n", m.data)  # as a mail program sends it
        for name in ("test.mbox", "torture.mbox")
        for m in split_mbox((corpus / name).read_bytes())
    ]
    assert len(messages) == 240
    server.add_user(ALICE)
    server.add_user("bob@example.org")
    data_codes, bdat_codes = [], []
    with smtplib.SMTP("127.0.0.1", server.port("smtp"), timeout=30) as s:
        for m in messages:
            try:
                s.sendmail("a@remote.example", [ALICE], m)
                data_codes.append(250)
            except smtplib.SMTPDataError as exc:
                data_codes.append(exc.smtp_code)
    with socket.create_connection(("127.0.0.1", server.port("smtp")), timeout=30) as sock:
        f = sock.makefile("rb")
        assert f.readline().startswith(b"220 ")
        sock.sendall(b"EHLO x\r\n")
        while f.readline()[3:4] == b"-":
            pass
        for m in messages:
            envelope = b"MAIL FROM:<a@remote.example>\r\nRCPT TO:<bob@example.org>\r\n"
            sock.sendall(envelope + bdat(m, last=True))
            replies = [f.readline() for _ in range(3)]
            assert [r[:3] for r in replies[:2]] == [b"250", b"250"], replies
            bdat_codes.append(int(replies[2][:3]))
    assert bdat_codes == data_codes
    assert 500 in data_codes and data_codes.count(250) > 200  # the corpus has both kinds
    assert [body_of(x) for x in server.inbox("bob@example.org")] == [
        body_of(x) for x in server.inbox(ALICE)
    ]


def test_lmtp_refuses_a_message_once_per_recipient(server: RunningServer) -> None:
    """RFC 2033 §4.2: after the message, one reply per accepted recipient, also when the
    message itself is refused (a line too long, with DATA and with BDAT). Before, LMTP sent a
    single reply there, and a client waited for the second one until its timeout."""
    server.add_user(ALICE)
    server.add_user("bob@example.org")
    envelope = (
        b"MAIL FROM:<a@remote.example>\r\nRCPT TO:<alice@example.org>\r\n"
        b"RCPT TO:<bob@example.org>\r\n"
    )
    long_line = b"Subject: long\r\n\r\n" + b"x" * 5000 + b"\r\n"
    data = (
        b"LHLO x\r\n" + envelope + b"DATA\r\n" + long_line + b".\r\n"
        + envelope + bdat(long_line, last=True) + b"QUIT\r\n"
    )  # fmt: skip
    replies = smtp_replies(server.port("lmtp"), data, 13)
    line_too_long = b"500 5.5.2 Line too long (see RFC5321 4.5.3.1.6)"
    assert replies[4].startswith(b"354 ") and replies[5:7] == [line_too_long] * 2
    assert replies[10:12] == [line_too_long] * 2
    assert replies[12].startswith(b"221 ")
    assert server.inbox(ALICE) == [] and server.inbox("bob@example.org") == []

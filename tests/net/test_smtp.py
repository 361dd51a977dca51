"""Inbound SMTP (MX) and LMTP over real loopback sockets with smtplib."""

from __future__ import annotations

import smtplib
import socket
import ssl
from pathlib import Path

import pytest

from postfach.store.api import INBOX
from support import RunningServer, message, start_server


def inbox_bytes(server: RunningServer, name: str) -> list[bytes]:
    acc = server.store.get_account(name)
    assert acc is not None
    box = server.store.get_mailbox(acc.id, INBOX)
    assert box is not None
    return [server.store.read_blob(m.blob) for m in server.store.list_messages(box.id)]


def test_ehlo_advertises_extensions(server: RunningServer) -> None:
    with smtplib.SMTP("127.0.0.1", server.port("smtp")) as s:
        code, _ = s.ehlo("client.example")
        assert code == 250
        for ext in ("size", "8bitmime", "smtputf8", "pipelining", "enhancedstatuscodes"):
            assert s.has_extn(ext), ext
        assert s.has_extn("starttls")
        assert int(s.esmtp_features["size"]) == server.app.config.max_message_size


def test_delivers_with_trace_headers(server: RunningServer) -> None:
    server.add_user("alice@example.org")
    assert server.send(["alice@example.org"], message("first")) == {}
    [stored] = inbox_bytes(server, "alice@example.org")
    assert stored.startswith(b"Return-Path: <sender@remote.example>\r\nReceived: from ")
    assert b"by mx.example.org (postfach) with ESMTP id " in stored
    assert stored.endswith(b"Hi there.\r\n")


def test_relaying_is_refused(server: RunningServer) -> None:
    with smtplib.SMTP("127.0.0.1", server.port("smtp")) as s:
        s.ehlo("x")
        s.mail("a@remote.example")
        code, text = s.rcpt("victim@elsewhere.example")
        assert (code, text[:5]) == (554, b"5.7.1")


@pytest.mark.parametrize(
    "rcpt",
    [
        "victim%elsewhere.example@example.org",
        "elsewhere.example!victim@example.org",
        '"victim@elsewhere.example"@example.org',
        "@example.org:victim@elsewhere.example",
    ],
)
def test_relay_tricks_are_refused(server: RunningServer, rcpt: str) -> None:
    server.add_user("alice@example.org")
    with smtplib.SMTP("127.0.0.1", server.port("smtp")) as s:
        s.ehlo("x")
        s.mail("a@remote.example")
        code, _ = s.rcpt(rcpt)
        assert code >= 500


def test_unknown_user(server: RunningServer) -> None:
    server.add_user("alice@example.org")
    with smtplib.SMTP("127.0.0.1", server.port("smtp")) as s:
        s.ehlo("x")
        s.mail("a@remote.example")
        code, text = s.rcpt("nobody@example.org")
        assert (code, text[:5]) == (550, b"5.1.1")


def test_alias_and_catch_all(server: RunningServer) -> None:
    server.add_user("alice@example.org")
    server.add_user("bob@example.org")
    server.store.add_alias("info@example.org", "alice@example.org")
    server.store.add_alias("@example.org", "bob@example.org")
    assert server.send(["info@example.org", "random@example.org"], message()) == {}
    assert len(inbox_bytes(server, "alice@example.org")) == 1
    assert len(inbox_bytes(server, "bob@example.org")) == 1


def rcpt_replies(server: RunningServer, port: str, rcpts: list[str]) -> list[tuple[int, bytes]]:
    with smtplib.SMTP("127.0.0.1", server.port(port)) as s:
        s.ehlo("x") if port == "smtp" else s.docmd("LHLO", "x")
        s.mail("a@remote.example")
        replies = [s.rcpt(r) for r in rcpts]
        s.rset()
        return [(code, text[:5]) for code, text in replies]


def test_postmaster_is_always_accepted(server: RunningServer) -> None:
    # RFC 5321 §4.5.1: RCPT TO:<Postmaster> without a domain, and postmaster@ every local
    # domain, in any case. Without a route of their own they reach the server's postmaster:
    # the primary domain's postmaster route, else its oldest account.
    server.add_user("alice@example.org")
    server.add_user("bob@example.org")
    server.add_user("carol@other.example")
    rcpts = ["<postmaster>", "Postmaster", "POSTMASTER@example.org", "postmaster@Other.Example"]
    for port in ("smtp", "lmtp"):
        assert rcpt_replies(server, port, rcpts) == [(250, b"2.1.5")] * 4
    assert server.send(["Postmaster"], message("bare")) == {}
    assert server.send(["postmaster@other.example"], message("other")) == {}
    assert len(inbox_bytes(server, "alice@example.org")) == 2
    assert inbox_bytes(server, "bob@example.org") == []
    assert inbox_bytes(server, "carol@other.example") == []
    # A route of the domain's own wins; an alias for the primary domain moves bare postmaster.
    server.store.add_alias("postmaster@other.example", "carol@other.example")
    server.store.add_alias("postmaster@example.org", "bob@example.org")
    assert server.send(["postmaster@OTHER.example"], message("carol")) == {}
    assert server.send(["postmaster"], message("bob")) == {}
    assert len(inbox_bytes(server, "carol@other.example")) == 1
    assert len(inbox_bytes(server, "bob@example.org")) == 1
    # Only postmaster is special: other bare names are still refused.
    assert rcpt_replies(server, "smtp", ["abuse", "alice"]) == [(553, b"5.1.3")] * 2


def test_postmaster_of_the_hostname_domain(tmp_path: Path) -> None:
    # The server's hostname is a local domain: that is the primary domain, whatever was
    # added first.
    srv = start_server(tmp_path / "data", POSTFACH_HOSTNAME="mail.example.net")
    try:
        srv.add_user("alice@example.org")
        srv.add_user("root@mail.example.net")
        assert srv.send(["postmaster"], message()) == {}
        assert inbox_bytes(srv, "root@mail.example.net") != []
        assert inbox_bytes(srv, "alice@example.org") == []
    finally:
        srv.stop()


def test_postmaster_without_accounts_is_unknown(server: RunningServer) -> None:
    server.store.add_domain("example.org")
    assert rcpt_replies(server, "smtp", ["postmaster"]) == [(550, b"5.1.1")]


def test_enhanced_codes_before_ehlo_and_after_helo(server: RunningServer) -> None:
    # RFC 2034 §3: enhanced codes are promised once EHLO has advertised them. Before EHLO
    # aiosmtpd's replies carry none; after HELO our own (MAIL, RCPT, DATA) carry them as after
    # EHLO (as Postfix does: a code in the text harms no client), aiosmtpd's own do not.
    server.add_user("alice@example.org")
    with smtplib.SMTP("127.0.0.1", server.port("smtp")) as s:
        assert s.docmd("MAIL", "FROM:<a@remote.example>") == (503, b"Error: send HELO first")
        assert s.docmd("FOO")[1].startswith(b"Error: command")
        assert s.helo("client.example")[0] == 250
        assert not s.does_esmtp
        assert s.mail("a@remote.example") == (250, b"2.1.0 Sender OK")
        assert s.rcpt("nobody@example.org")[1].startswith(b"5.1.1 ")
        assert s.rcpt("x@elsewhere.example")[1].startswith(b"5.7.1 ")
        assert s.rcpt("alice@example.org") == (250, b"2.1.5 Recipient OK")
        assert s.data(message("helo")) == (250, b"2.0.0 OK")
        assert s.docmd("FOO")[1].startswith(b"Error: command")
        assert s.docmd("NOOP") == (250, b"OK")
    [stored] = inbox_bytes(server, "alice@example.org")
    assert b"(postfach) with SMTP id " in stored  # RFC 3848: HELO is plain SMTP


def test_full_mailbox_refused_at_rcpt_and_at_data(server: RunningServer) -> None:
    server.add_user("alice@example.org", quota=3000)
    server.add_user("bob@example.org")
    # Exceeds at DATA (no SIZE declared): the whole message is refused with 552 5.2.2.
    with smtplib.SMTP("127.0.0.1", server.port("smtp")) as s:
        s.ehlo("x")
        s.mail("a@remote.example")
        assert s.rcpt("alice@example.org")[0] == 250
        code, text = s.data(message(size=4000))
        assert code == 552 and text.startswith(b"5.2.2 Mailbox full")
    # Declared SIZE too big for alice: per-recipient refusal at RCPT, bob still gets it.
    with smtplib.SMTP("127.0.0.1", server.port("smtp")) as s:
        s.ehlo("x")
        s.mail("a@remote.example", ["SIZE=4000"])
        assert s.rcpt("alice@example.org")[0] == 552
        assert s.rcpt("bob@example.org")[0] == 250
        assert s.data(message(size=4000))[0] == 250
    # Fill alice up to the last byte; then she is refused at RCPT already, SIZE or not.
    assert server.send(["alice@example.org"], message(size=2000)) == {}
    acc = server.store.get_account("alice@example.org")
    assert acc is not None
    server.store.set_quota(acc.name, acc.used_bytes, 0)
    with smtplib.SMTP("127.0.0.1", server.port("smtp")) as s:
        s.ehlo("x")
        s.mail("a@remote.example")
        code, text = s.rcpt("alice@example.org")
        assert code == 552 and text.startswith(b"5.2.2")
    assert len(inbox_bytes(server, "alice@example.org")) == 1
    assert len(inbox_bytes(server, "bob@example.org")) == 1


def test_full_mailbox_temporary_when_configured(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "postfach.toml").write_text('[quota]\nfull_reply = "temporary"\n')
    srv = start_server(data)
    try:
        srv.add_user("alice@example.org", quota=100)
        with smtplib.SMTP("127.0.0.1", srv.port("smtp")) as s:
            s.ehlo("x")
            s.mail("a@remote.example")
            assert s.rcpt("alice@example.org")[0] == 250
            code, text = s.data(message(size=500))
            assert (code, text[:5]) == (452, b"4.2.2")
    finally:
        srv.stop()


def test_message_size_limit(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "postfach.toml").write_text('[limits]\nmax_message_size = "10K"\n')
    srv = start_server(data)
    try:
        srv.add_user("alice@example.org")
        with smtplib.SMTP("127.0.0.1", srv.port("smtp")) as s:
            s.ehlo("x")
            assert s.esmtp_features["size"] == "10240"
            code, _ = s.mail("a@remote.example", ["SIZE=20000"])
            assert code == 552
    finally:
        srv.stop()


def raw_session(port: int, lines: list[bytes]) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.recv(1024)
        sock.sendall(b"".join(lines))
        out = b""
        while not out.endswith(b"\r\n") or b"\r\n221 " not in b"\r\n" + out:
            chunk = sock.recv(65536)
            if not chunk:
                break
            out += chunk
        return out


def test_bare_lf_smuggling_is_refused(server: RunningServer) -> None:
    server.add_user("alice@example.org")
    smuggled = (
        b"Subject: x\r\n\r\nbody\n.\nMAIL FROM:<admin@example.org>\r\n"
        b"RCPT TO:<alice@example.org>\r\nDATA\r\nforged\r\n.\r\n"
    )
    out = raw_session(
        server.port("smtp"),
        [b"EHLO x\r\n", b"MAIL FROM:<a@remote.example>\r\n", b"RCPT TO:<alice@example.org>\r\n",
         b"DATA\r\n", smuggled, b"QUIT\r\n"],
    )  # fmt: skip
    assert b"550 5.5.2" in out
    assert inbox_bytes(server, "alice@example.org") == []


def test_bare_lf_text_is_normalised(server: RunningServer) -> None:
    server.add_user("alice@example.org")
    out = raw_session(
        server.port("smtp"),
        [b"EHLO x\r\n", b"MAIL FROM:<a@remote.example>\r\n", b"RCPT TO:<alice@example.org>\r\n",
         b"DATA\r\n", b"Subject: x\r\n\r\nline one\nline two\r\n.\r\n", b"QUIT\r\n"],
    )  # fmt: skip
    assert b"250 2.0.0" in out
    [stored] = inbox_bytes(server, "alice@example.org")
    assert stored.endswith(b"\r\n\r\nline one\r\nline two\r\n")


def test_starttls(server: RunningServer) -> None:
    server.add_user("alice@example.org")
    ctx = ssl.create_default_context(cafile=str(server.app.config.cert_path))
    with smtplib.SMTP("localhost", server.port("smtp")) as s:
        s.starttls(context=ctx)
        s.ehlo("x")
        assert not s.has_extn("starttls")
        s.sendmail("a@remote.example", ["alice@example.org"], message())
    [stored] = inbox_bytes(server, "alice@example.org")
    assert b"with ESMTPS id" in stored


def test_lmtp_answers_per_recipient(server: RunningServer) -> None:
    server.add_user("alice@example.org", quota=200)
    server.add_user("bob@example.org")
    lmtp = smtplib.LMTP("127.0.0.1", server.port("lmtp"))
    try:
        lmtp.ehlo_or_helo_if_needed()
        refused = lmtp.sendmail(
            "a@remote.example", ["alice@example.org", "bob@example.org"], message(size=1000)
        )
    finally:
        lmtp.quit()
    assert refused == {
        "alice@example.org": (552, b"5.2.2 Mailbox full: <alice@example.org> is over quota")
    }
    assert len(inbox_bytes(server, "bob@example.org")) == 1
    assert inbox_bytes(server, "alice@example.org") == []


def test_smtputf8_address(server: RunningServer) -> None:
    server.add_user("alice@example.org")
    server.store.add_alias("jörg@example.org", "alice@example.org")
    with smtplib.SMTP("127.0.0.1", server.port("smtp")) as s:
        s.ehlo("x")
        s.mail("absender@remote.example", ["SMTPUTF8"])
        assert s.rcpt("jörg@example.org")[0] == 250
        assert s.data("Subject: grüße\r\n\r\nhallo\r\n".encode())[0] == 250
    assert len(inbox_bytes(server, "alice@example.org")) == 1


def test_partial_delivery_bounces_to_a_local_sender(server: RunningServer) -> None:
    server.add_user("alice@example.org", quota=2000)
    server.add_user("carol@example.org")
    server.add_user("bob@example.org")
    with smtplib.SMTP("127.0.0.1", server.port("smtp")) as s:
        s.ehlo("x")
        s.mail("bob@example.org")  # no SIZE: the quota only shows at end of DATA
        assert s.rcpt("alice@example.org")[0] == 250
        assert s.rcpt("carol@example.org")[0] == 250
        assert s.data(message("big one", size=3000))[0] == 250
    assert len(inbox_bytes(server, "carol@example.org")) == 1
    assert inbox_bytes(server, "alice@example.org") == []
    [bounce] = inbox_bytes(server, "bob@example.org")
    assert b"Return-Path: <>" in bounce
    assert b"Final-Recipient: rfc822; alice@example.org" in bounce
    assert b"Status: 5.2.2" in bounce and b"Subject: big one" in bounce

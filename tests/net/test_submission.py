"""Message submission (RFC 6409) on loopback with smtplib: AUTH, TLS policy, sender checks,
local routing with quota, DSN parameters, Sent copies, and an open-relay battery."""

from __future__ import annotations

import email
import logging
import smtplib
import ssl
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest

from postfach.errors import StoreError
from postfach.store.api import INBOX
from support import PASSWORD, RunningServer, start_server

ALICE = "alice@example.org"
BOB = "bob@example.org"


def mailbox(server: RunningServer, name: str, box: str = INBOX) -> list[bytes]:
    acc = server.store.get_account(name)
    assert acc is not None
    mb = server.store.get_mailbox(acc.id, box)
    assert mb is not None
    return [server.store.read_blob(m.blob) for m in server.store.list_messages(mb.id)]


def msg(frm: str = ALICE, to: str = BOB, subject: str = "hello", extra: str = "") -> bytes:
    return (
        f"From: Alice <{frm}>\r\nTo: <{to}>\r\nSubject: {subject}\r\n{extra}\r\nHi Bob.\r\n"
    ).encode()


@pytest.fixture
def users(server: RunningServer) -> RunningServer:
    server.add_user(ALICE)
    server.add_user(BOB)
    return server


def login(server: RunningServer, user: str = ALICE) -> smtplib.SMTP:
    s = smtplib.SMTP("127.0.0.1", server.port("submission"), timeout=30)
    s.ehlo("client.example")
    s.login(user, PASSWORD)
    return s


def test_ehlo_advertises_extensions(server: RunningServer) -> None:
    with smtplib.SMTP("127.0.0.1", server.port("submission")) as s:
        code, _ = s.ehlo("client.example")
        assert code == 250
        for ext in ("size", "8bitmime", "smtputf8", "pipelining", "enhancedstatuscodes", "dsn",
                    "starttls", "auth"):  # fmt: skip
            assert s.has_extn(ext), ext
        assert set(s.esmtp_features["auth"].split()) == {"PLAIN", "LOGIN"}


def test_mail_without_auth_is_refused(users: RunningServer) -> None:
    with smtplib.SMTP("127.0.0.1", users.port("submission")) as s:
        s.ehlo("x")
        code, text = s.mail(ALICE)
        assert (code, text[:5]) == (530, b"5.7.0")
        code, _ = s.rcpt(BOB)
        assert code == 530


@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN"])
def test_auth_mechanisms(users: RunningServer, mechanism: str) -> None:
    with smtplib.SMTP("127.0.0.1", users.port("submission")) as s:
        s.ehlo("x")
        s.user, s.password = ALICE, PASSWORD
        auth = s.auth_plain if mechanism == "PLAIN" else s.auth_login
        code, text = s.auth(mechanism, auth, initial_response_ok=mechanism == "PLAIN")
        assert (code, text[:5]) == (235, b"2.7.0")
        assert s.sendmail(ALICE, [BOB], msg()) == {}
    [stored] = mailbox(users, BOB)
    assert b"with ESMTPA id" in stored  # RFC 3848


def test_wrong_password(users: RunningServer) -> None:
    with smtplib.SMTP("127.0.0.1", users.port("submission")) as s:
        s.ehlo("x")
        with pytest.raises(smtplib.SMTPAuthenticationError) as exc:
            s.login(ALICE, "wrong")
        assert exc.value.smtp_code == 535 and exc.value.smtp_error.startswith(b"5.7.8")


def test_starttls_required_before_auth(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "postfach.toml").write_text("[auth]\nallow_plaintext_on_loopback = false\n")
    srv = start_server(data)
    try:
        srv.add_user(ALICE)
        srv.add_user(BOB)
        ctx = ssl.create_default_context(cafile=str(srv.app.config.cert_path))
        with smtplib.SMTP("localhost", srv.port("submission")) as s:
            s.ehlo("x")
            assert not s.has_extn("auth")
            assert s.docmd("AUTH", "PLAIN AGFsaWNlAHg=")[0] == 538
            assert s.mail(ALICE)[0] == 530
            s.starttls(context=ctx)
            s.ehlo("x")
            assert s.has_extn("auth")
            s.login(ALICE, PASSWORD)
            assert s.sendmail(ALICE, [BOB], msg()) == {}
        [stored] = mailbox(srv, BOB)
        assert b"with ESMTPSA id" in stored
    finally:
        srv.stop()


def test_implicit_tls_submissions(users: RunningServer) -> None:
    ctx = ssl.create_default_context(cafile=str(users.app.config.cert_path))
    with smtplib.SMTP_SSL("localhost", users.port("submissions"), context=ctx) as s:
        s.ehlo("x")
        assert not s.has_extn("starttls")
        s.login(ALICE, PASSWORD)
        assert s.sendmail(ALICE, [BOB], msg()) == {}
    assert len(mailbox(users, BOB)) == 1


def test_auth_sessions_log_no_aiosmtpd_warnings(
    users: RunningServer, caplog: pytest.LogCaptureFixture
) -> None:
    # Every connection used to log "auth_required == True but auth_require_tls == False"
    # (implicit TLS, plaintext on loopback) and every AUTH to warn "Session.login_data is
    # deprecated": our TLS policy and sessions now tell aiosmtpd what they mean.
    ctx = ssl.create_default_context(cafile=str(users.app.config.cert_path))
    caplog.set_level(logging.DEBUG, logger="mail.log")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with smtplib.SMTP_SSL("localhost", users.port("submissions"), context=ctx) as s:
            s.login(ALICE, PASSWORD)
            assert s.sendmail(ALICE, [BOB], msg()) == {}
        with smtplib.SMTP("localhost", users.port("submission")) as s:
            s.starttls(context=ctx)
            s.login(ALICE, PASSWORD)
            assert s.sendmail(ALICE, [BOB], msg()) == {}
        with login(users) as s:  # plaintext on loopback, allowed by default
            assert s.sendmail(ALICE, [BOB], msg()) == {}
    assert len(mailbox(users, BOB)) == 3
    assert [str(w.message) for w in caught if "aiosmtpd" in w.filename] == []
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []


def test_envelope_sender_must_be_the_account(users: RunningServer) -> None:
    with login(users) as s:
        code, text = s.mail(BOB)
        assert (code, text[:5]) == (553, b"5.7.1")
        code, text = s.mail("")
        assert code == 553
        code, _ = s.mail(ALICE)
        assert code == 250


def test_alias_may_be_used_as_sender(users: RunningServer) -> None:
    users.store.add_alias("info@example.org", ALICE)
    users.store.add_alias("@example.org", BOB)  # a catch-all does not make every address Bob's
    with login(users) as s:
        assert s.sendmail("info@example.org", [BOB], msg(frm="info@example.org")) == {}
    with login(users, BOB) as s:
        assert s.mail("random@example.org")[0] == 553


def test_from_header_must_be_the_account(users: RunningServer) -> None:
    with login(users) as s:
        s.mail(ALICE)
        s.rcpt(BOB)
        code, text = s.data(msg(frm=BOB))
        assert (code, text[:5]) == (553, b"5.7.1")
        s.rset()
        s.mail(ALICE)
        s.rcpt(BOB)
        code, text = s.data(msg(extra=f"Sender: {BOB}\r\n"))
        assert (code, text[:5]) == (553, b"5.7.1")
    assert mailbox(users, BOB) == []


def test_message_id_and_date_added(users: RunningServer) -> None:
    with login(users) as s:
        s.sendmail(ALICE, [BOB], msg())
        s.sendmail(ALICE, [BOB], msg(extra="Message-ID: <mine@client>\r\nDate: x\r\n"))
    first, second = (email.message_from_bytes(m) for m in mailbox(users, BOB))
    assert first["Message-ID"].endswith("@mx.example.org>")
    assert first["Date"] and first["DKIM-Signature"]
    assert second["Message-ID"] == "<mine@client>" and second["Date"] == "x"
    assert len(second.get_all("Message-ID")) == 1


def test_full_local_mailbox_is_accepted_and_bounced(users: RunningServer) -> None:
    users.add_user("carol@example.org", quota=100)
    with login(users) as s:
        s.mail(ALICE, ["RET=HDRS", "ENVID=env+2B1"])
        assert s.rcpt("carol@example.org")[0] == 250  # accepted despite the full mailbox
        assert s.rcpt(BOB)[0] == 250
        assert s.data(msg(subject="for carol"))[0] == 250
    assert len(mailbox(users, BOB)) == 1
    assert mailbox(users, "carol@example.org") == []
    [dsn] = mailbox(users, ALICE)
    parsed = email.message_from_bytes(dsn)
    assert parsed["Return-Path"] == "<>"
    assert parsed.get_content_type() == "multipart/report"
    assert b"Final-Recipient: rfc822; carol@example.org" in dsn
    assert b"Status: 5.2.2" in dsn and b"Subject: for carol" in dsn
    assert b"Original-Envelope-Id: env+1" in dsn  # xtext decoded


def test_full_local_mailbox_refused_at_rcpt_when_configured(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "postfach.toml").write_text('[submission]\nfull_mailbox = "refuse"\n')
    srv = start_server(data)
    try:
        srv.add_user(ALICE)
        srv.add_user("carol@example.org", messages=1)
        assert srv.send(["carol@example.org"], b"Subject: fill\r\n\r\nx\r\n") == {}  # full
        with login(srv) as s:
            s.mail(ALICE)
            code, text = s.rcpt("carol@example.org")
            assert (code, text[:5]) == (552, b"5.2.2")
    finally:
        srv.stop()


def test_unknown_local_recipient(users: RunningServer) -> None:
    with login(users) as s:
        s.mail(ALICE)
        code, text = s.rcpt("nobody@example.org")
        assert (code, text[:5]) == (550, b"5.1.1")


def test_bare_postmaster_is_delivered_locally(users: RunningServer) -> None:
    # RFC 5321 §4.5.1 on submission too: <postmaster> is the server's postmaster (here the
    # primary domain's postmaster route, bob), never a queued remote address.
    users.store.add_alias("postmaster@example.org", BOB)
    with login(users) as s:
        assert s.sendmail(ALICE, ["Postmaster"], msg(to="postmaster")) == {}
    assert len(mailbox(users, BOB)) == 1


def test_dsn_parameters(users: RunningServer) -> None:
    with login(users) as s:
        assert s.mail(ALICE, ["RET=FULL", "ENVID=abc"])[0] == 250
        code, _ = s.rcpt(BOB, ["NOTIFY=SUCCESS,FAILURE", "ORCPT=rfc822;Bob+40example.org"])
        assert code == 250
        assert s.rcpt("x@example.org", ["NOTIFY=NEVER,SUCCESS"])[0] == 501
        assert s.rcpt("x@example.org", ["NOTIFY=SOMETIMES"])[0] == 501
        assert s.data(msg())[0] == 250
        s.rset()
        assert s.mail(ALICE, ["RET=ALL"])[0] == 501
    # NOTIFY=SUCCESS for a local recipient: a "delivered" DSN with the original recipient.
    [dsn] = mailbox(users, ALICE)
    assert b"Action: delivered" in dsn and b"Original-Recipient: rfc822;Bob@example.org" in dsn


def test_sent_copy_immediate(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "postfach.toml").write_text(
        f'[submission]\nsent_copy = ["{ALICE}"]\nsent_copy_window = 0\n'
    )
    srv = start_server(data)
    try:
        srv.add_user(ALICE)
        srv.add_user(BOB)
        with login(srv) as s:
            s.sendmail(ALICE, [BOB], msg(subject="copy me"))
        with login(srv, BOB) as s:
            s.sendmail(BOB, [ALICE], msg(frm=BOB, to=ALICE))
        [copy] = mailbox(srv, ALICE, "Sent")
        assert b"Subject: copy me" in copy and not copy.startswith(b"Return-Path")
        assert mailbox(srv, BOB, "Sent") == []  # bob has no sent_copy
    finally:
        srv.stop()


def windowed_server(tmp_path: Path, window: float) -> RunningServer:
    data = tmp_path / "data"
    data.mkdir()
    (data / "postfach.toml").write_text(
        f'[submission]\nsent_copy = "auto"\nsent_copy_window = {window}\n[queue]\npoll = 0.1\n'
    )
    srv = start_server(data)
    srv.add_user(ALICE)
    srv.add_user(BOB)
    return srv


@pytest.fixture
def windowed(tmp_path: Path) -> Iterator[RunningServer]:
    srv = windowed_server(tmp_path, 0.5)
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture
def slow_window(tmp_path: Path) -> Iterator[RunningServer]:
    srv = windowed_server(tmp_path, 4)  # time enough for the client's IMAP login and APPEND
    try:
        yield srv
    finally:
        srv.stop()


def wait_for(pred: object, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():  # type: ignore[operator]
            return
        time.sleep(0.05)
    raise AssertionError("condition not met in time")


def test_sent_copy_after_window(windowed: RunningServer) -> None:
    with login(windowed) as s:
        s.sendmail(ALICE, [BOB], msg(subject="later"))
    assert mailbox(windowed, ALICE, "Sent") == []
    wait_for(lambda: len(mailbox(windowed, ALICE, "Sent")) == 1)


def test_sent_copy_not_duplicated_when_client_appends(slow_window: RunningServer) -> None:
    import imaplib

    srv = slow_window
    body = msg(subject="mine", extra="Message-ID: <own@client>\r\n")
    with login(srv) as s:
        s.sendmail(ALICE, [BOB], body)
    imap = imaplib.IMAP4("127.0.0.1", srv.port("imap"))
    imap.login(ALICE, PASSWORD)
    assert imap.append("Sent", "(\\Seen)", None, body)[0] == "OK"
    imap.logout()
    queue = srv.app.queue
    assert queue is not None
    wait_for(lambda: queue.next_sent_copy() is None)  # the pending copy was looked at
    assert len(mailbox(srv, ALICE, "Sent")) == 1


RELAY_TRICKS = [
    "victim@elsewhere.example",
    "victim%elsewhere.example@example.org",
    "elsewhere.example!victim@example.org",
    '"victim@elsewhere.example"@example.org',
    "@example.org:victim@elsewhere.example",
    "<@example.org:victim@elsewhere.example>",
    "victim@elsewhere.example@example.org",
    "victim@[127.0.0.1]",
]


@pytest.mark.parametrize("rcpt", RELAY_TRICKS)
def test_open_relay_battery_without_auth(users: RunningServer, rcpt: str) -> None:
    with smtplib.SMTP("127.0.0.1", users.port("submission")) as s:
        s.ehlo("x")
        code, _ = s.mail("someone@elsewhere.example")
        assert code == 530
        code, _ = s.docmd("RCPT", f"TO:<{rcpt.strip('<>')}>")
        assert code >= 500, rcpt
        code, _ = s.docmd("DATA")
        assert code >= 500
    assert users.app.queue is not None and users.app.queue.messages() == []


# (A source route is stripped by the parser, RFC 5321 §3.6.1, so with AUTH it is an ordinary
# remote recipient and not listed here.)
@pytest.mark.parametrize("rcpt", RELAY_TRICKS[1:4])
def test_address_tricks_refused_even_with_auth(users: RunningServer, rcpt: str) -> None:
    with login(users) as s:
        s.mail(ALICE)
        code, _ = s.docmd("RCPT", f"TO:<{rcpt.strip('<>')}>")
        assert code >= 500, rcpt


def test_sent_copy_per_account_setting(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "postfach.toml").write_text("[submission]\nsent_copy_window = 0\n")
    srv = start_server(data)
    try:
        srv.add_user(ALICE)
        srv.add_user(BOB)
        with pytest.raises(StoreError, match="use one of auto, off"):
            srv.store.set_account_setting(ALICE, "sent_copy", "sometimes")
        assert srv.store.set_account_setting(ALICE, "sent_copy", "auto").sent_copy == "auto"
        with login(srv) as s:
            s.sendmail(ALICE, [BOB], msg(subject="copied by setting"))
        with login(srv, BOB) as s:
            s.sendmail(BOB, [ALICE], msg(frm=BOB, to=ALICE))
        [copy] = mailbox(srv, ALICE, "Sent")
        assert b"Subject: copied by setting" in copy
        assert mailbox(srv, BOB, "Sent") == []
    finally:
        srv.stop()

"""How the outbound client talks to a peer it cannot fully trust: a STARTTLS handshake that fails
(opportunistic TLS falls back to plaintext once; a smarthost with ``tls = "starttls"`` does not)
and a 7-bit peer (8-bit bodies are converted to quoted-printable, UTF-8 headers bounce 5.6.7)."""

from __future__ import annotations

import email
import logging
import smtplib
import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dkim
import pytest

from outbound_support import FakeResolver, Peer, wait_for
from postfach.store.api import INBOX
from support import PASSWORD, RunningServer, start_server

ALICE = "alice@example.org"
CAROL = "carol@remote.test"
FAST = "[queue]\nfirst_retry = 0.2\npoll = 0.1\n"


def inbox(server: RunningServer) -> list[bytes]:
    acc = server.store.get_account(ALICE)
    assert acc is not None
    mb = server.store.get_mailbox(acc.id, INBOX)
    assert mb is not None
    return [server.store.read_blob(m.blob) for m in server.store.list_messages(mb.id)]


def submit(server: RunningServer, msg: bytes, utf8: bool = False) -> None:
    with smtplib.SMTP("127.0.0.1", server.port("submission"), timeout=30) as s:
        s.ehlo("client.example")
        s.login(ALICE, PASSWORD)
        options = ["BODY=8BITMIME", *(["SMTPUTF8"] if utf8 else [])]
        assert s.sendmail(ALICE, [CAROL], msg, options) == {}


def plain(subject: str = "hello") -> bytes:
    return f"From: <{ALICE}>\r\nTo: <{CAROL}>\r\nSubject: {subject}\r\n\r\nHello.\r\n".encode()


def broken_tls() -> ssl.SSLContext:
    """A server context without a certificate: every handshake fails (no shared cipher)."""
    return ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[Any]:
    started: list[RunningServer] = []
    peers: list[Peer] = []

    def make(toml: str = FAST, **peer_kw: Any) -> tuple[RunningServer, Peer]:
        peer = Peer(tmp_path, **peer_kw)
        peers.append(peer)
        data = tmp_path / "data"
        data.mkdir(exist_ok=True)
        (data / "postfach.toml").write_text(toml.replace("PEERPORT", str(peer.port)))
        res = FakeResolver(
            mx={"remote.test": [(10, "mx.remote.test")]},
            addresses={"mx.remote.test": ["127.0.0.1"]},
        )
        srv = start_server(data, app_options={"resolver": res, "mx_port": peer.port})
        started.append(srv)
        srv.add_user(ALICE)
        return srv, peer

    yield make
    for s in started:
        s.stop()
    for p in peers:
        p.stop()


# ---- STARTTLS failures -------------------------------------------------------------------------


def test_failed_opportunistic_handshake_retries_the_same_mx_in_plaintext(
    servers: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="postfach.smtp.client")
    srv, peer = servers(tls_context=broken_tls())
    submit(srv, plain("over plaintext"))
    wait_for(lambda: peer.messages, what="delivery after the TLS failure")
    [got] = peer.messages
    assert not got.tls and got.rcpt_tos == [CAROL] and b"Subject: over plaintext" in got.data
    assert peer.handler.ehlos == 2  # the failed TLS session, then one plaintext session
    fallbacks = [r for r in caplog.records if "event=outbound_tls_fallback" in r.getMessage()]
    assert len(fallbacks) == 1 and "mx.remote.test" in fallbacks[0].getMessage()
    wait_for(lambda: srv.app.queue.messages() == [], what="queue empty")
    assert inbox(srv) == []


def test_a_refused_starttls_goes_on_in_plaintext_on_the_same_connection(
    servers: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="postfach.smtp.client")
    srv, peer = servers(starttls_refusal="454 4.7.0 TLS not available due to local problem")
    submit(srv, plain("refused tls"))
    wait_for(lambda: peer.messages, what="delivery")
    assert not peer.messages[0].tls and peer.handler.ehlos == 1  # one session, no redial
    assert "event=outbound_starttls_refused" in caplog.text
    assert "event=outbound_tls_fallback" not in caplog.text


def test_a_smarthost_refusing_starttls_with_5xx_defers_and_never_bounces(servers: Any) -> None:
    toml = FAST + '[relay]\nhost = "127.0.0.1"\nport = PEERPORT\ntls = "starttls"\nverify = false\n'
    srv, peer = servers(toml, starttls_refusal="554 5.7.0 no TLS for you")

    def deferred() -> bool:
        m = srv.app.queue.messages()
        return bool(m) and m[0].recipients[0].attempts >= 2

    submit(srv, plain())
    wait_for(deferred, what="two deferred attempts")
    reply = srv.app.queue.messages()[0].recipients[0].last_reply or ""
    assert reply.startswith("451 4.7.0") and "refused STARTTLS: 554" in reply
    assert peer.messages == [] and inbox(srv) == []


def test_starttls_smarthost_never_falls_back_to_plaintext(servers: Any) -> None:
    toml = FAST + '[relay]\nhost = "127.0.0.1"\nport = PEERPORT\ntls = "starttls"\nverify = false\n'
    srv, peer = servers(toml, tls_context=broken_tls())
    submit(srv, plain())

    def deferred() -> bool:
        m = srv.app.queue.messages()
        return bool(m) and m[0].recipients[0].attempts >= 2

    wait_for(deferred, what="two deferred attempts")
    [queued] = srv.app.queue.messages()
    assert "4.7.0" in (queued.recipients[0].last_reply or "")
    assert "TLS handshake" in (queued.recipients[0].last_reply or "")
    assert peer.messages == []  # nothing went out in plaintext
    assert inbox(srv) == []  # deferred, not bounced


# ---- 8-bit bodies and 7-bit servers -----------------------------------------------------------

NO_DKIM = FAST + "[submission]\ndkim = false\n"
TEXT = "Grüße aus Köln \u2013 Straße, Café, naïve résumé.\r\n" * 30
HTML = "<p>Grüße \u2013 schön</p>\r\n"


def eight_bit() -> bytes:
    return (
        f"From: <{ALICE}>\r\nTo: <{CAROL}>\r\nSubject: umlauts\r\nMIME-Version: 1.0\r\n"
        'Content-Type: multipart/alternative; boundary="alt"\r\n\r\n'
        "--alt\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n"
        f"\r\n{TEXT}--alt\r\nContent-Type: text/html; charset=utf-8\r\n"
        f"Content-Transfer-Encoding: 8bit\r\n\r\n{HTML}--alt--\r\n"
    ).encode()


def texts(data: bytes) -> list[str]:
    msg = email.message_from_bytes(data)
    out = []
    for part in msg.walk():
        if part.get_content_maintype() == "text":
            payload = part.get_payload(decode=True)
            assert isinstance(payload, bytes)
            out.append(payload.decode("utf-8").replace("\r\n", "\n"))
    return out


EXPECTED = [TEXT.replace("\r\n", "\n")[:-1], HTML.replace("\r\n", "\n")[:-1]]


def test_8bit_goes_out_unchanged_to_a_server_with_8bitmime(servers: Any) -> None:
    srv, peer = servers(NO_DKIM)
    submit(srv, eight_bit())
    wait_for(lambda: peer.messages, what="delivery")
    [got] = peer.messages
    assert "BODY=8BITMIME" in got.mail_options
    assert texts(eight_bit()) == EXPECTED  # what the receivers below must decode
    assert got.data.endswith(eight_bit())  # after our Received header: byte for byte


def test_8bit_is_converted_for_a_server_without_8bitmime(servers: Any) -> None:
    srv, peer = servers(NO_DKIM)
    peer.handler.hide_extensions = {"8BITMIME"}
    submit(srv, eight_bit())
    wait_for(lambda: peer.messages, what="delivery")
    [got] = peer.messages
    assert not any(o.startswith("BODY=") for o in got.mail_options)
    assert max(got.data) < 0x80  # 7-bit clean
    assert b"Content-Transfer-Encoding: quoted-printable" in got.data
    assert b"Subject: umlauts\r\n" in got.data and b'boundary="alt"' in got.data
    assert texts(got.data) == EXPECTED


def test_a_dkim_signed_8bit_message_is_converted_before_signing(servers: Any) -> None:
    """The signature must survive a 7-bit hop: submission converts first, then signs."""
    srv, peer = servers()
    peer.handler.hide_extensions = {"8BITMIME"}
    submit(srv, eight_bit())
    wait_for(lambda: peer.messages, what="delivery")
    [got] = peer.messages
    assert max(got.data) < 0x80 and texts(got.data) == EXPECTED
    txt = srv.app.outbound.signer.__self__.dns_value("example.org").encode()  # type: ignore
    assert dkim.verify(got.data, dnsfunc=lambda name, timeout=5: txt)


def test_utf8_headers_bounce_with_5_6_9_when_smtputf8_is_missing(servers: Any) -> None:
    srv, peer = servers(NO_DKIM)
    msg = f"From: <{ALICE}>\r\nTo: <{CAROL}>\r\nSubject: Grüße\r\n\r\nHallo.\r\n".encode()
    submit(srv, msg, utf8=True)
    wait_for(lambda: inbox(srv), what="a DSN")
    [dsn] = inbox(srv)
    assert b"Status: 5.6.9" in dsn and b"Final-Recipient: rfc822; carol@remote.test" in dsn
    assert peer.messages == []


def test_utf8_headers_go_out_with_smtputf8_when_offered(servers: Any) -> None:
    srv, peer = servers(NO_DKIM, smtputf8=True)
    msg = f"From: <{ALICE}>\r\nTo: <{CAROL}>\r\nSubject: Grüße\r\n\r\nHallo.\r\n".encode()
    submit(srv, msg, utf8=True)
    wait_for(lambda: peer.messages, what="delivery")
    [got] = peer.messages
    assert "SMTPUTF8" in got.mail_options and "Subject: Grüße".encode() in got.data

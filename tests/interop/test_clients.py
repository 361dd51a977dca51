"""Real mail programs against a real server: fetchmail, getmail6, curl and swaks on loopback.

Each test proves one thing a user of that program relies on; the message bytes the programs
fetch are compared with the bytes in the store, not just counted.
"""

from __future__ import annotations

import re
import smtplib
from collections.abc import Callable
from pathlib import Path

import pytest
from interop_clients import (
    ALICE,
    FETCHMAIL_NOMAIL,
    FETCHMAIL_OK,
    Fetchmail,
    Getmail,
    curl,
    filler_body,
    foreign_cert,
    md5_fingerprint,
    requires,
    stored,
    subject,
    swaks,
    usage,
)

from support import PASSWORD, RunningServer, message

pytestmark = pytest.mark.interop

BOB = "bob@example.org"
CREDENTIALS = f"{ALICE}:{PASSWORD}"


def deliver(server: RunningServer, *subjects: str) -> None:
    for s in subjects:
        assert server.send([ALICE], message(s, body=f"This is {s}.\r\n")) == {}


def fill(server: RunningServer, user: str = ALICE, size: int = 1500) -> int:
    """Deliver messages of ``size`` bytes until the account's quota refuses one."""
    n = 0
    while True:
        try:
            server.send([user], message(f"filler {n}", size=size))
        except (smtplib.SMTPDataError, smtplib.SMTPRecipientsRefused):
            return n
        n += 1
        assert n < 50, "the quota never refused anything"


# ---- 1. fetchmail: delete and keep/uidl ------------------------------------------------------


@requires("fetchmail")
def test_fetchmail_without_keep_fetches_all_and_empties_the_server(
    server: RunningServer, tmp_path: Path
) -> None:
    server.add_user(ALICE)
    deliver(server, "first", "second", "third")
    on_server = stored(server)
    fm = Fetchmail(server, tmp_path / "fetchmail")
    r = fm.run()
    assert r.returncode == FETCHMAIL_OK, r
    assert "3 messages for alice@example.org" in r.output, r
    assert "DELE 3" in r.output, r
    assert fm.fetched() == on_server  # byte for byte, in order
    assert stored(server) == []
    assert usage(server) == (0, 0)
    again = fm.run()
    assert again.returncode == FETCHMAIL_NOMAIL, again
    assert len(fm.fetched()) == 3


@requires("fetchmail")
def test_fetchmail_keep_uidl_fetches_only_new_mail(server: RunningServer, tmp_path: Path) -> None:
    server.add_user(ALICE)
    deliver(server, "old one", "old two")
    fm = Fetchmail(server, tmp_path / "fetchmail", keep=True)
    first = fm.run()
    assert first.returncode == FETCHMAIL_OK, first
    assert "DELE" not in first.output, first
    assert fm.fetched() == stored(server)
    assert usage(server)[0] == 2  # kept on the server

    deliver(server, "the new one")
    second = fm.run()
    assert second.returncode == FETCHMAIL_OK, second
    assert "3 messages (2 seen) for alice@example.org" in second.output, second
    fetched = fm.fetched()
    assert len(fetched) == 3  # exactly one more
    assert subject(fetched[2]) == "the new one"
    assert fetched[2] == stored(server)[2]
    assert fetched[2].endswith(b"\r\n\r\nThis is the new one.\r\n")

    third = fm.run()
    assert third.returncode == FETCHMAIL_NOMAIL, third
    assert len(fm.fetched()) == 3
    assert len(stored(server)) == 3


# ---- 2. fetchmail over TLS with the certificate checked --------------------------------------


@requires("fetchmail")
@pytest.mark.parametrize("tls", ["stls", "implicit"])
def test_fetchmail_tls_checks_the_certificate(
    server: RunningServer, tmp_path: Path, tls: str
) -> None:
    server.add_user(ALICE)
    deliver(server, f"over {tls}")
    on_server = stored(server)

    stranger = Fetchmail(server, tmp_path / "stranger", tls=tls, cert=foreign_cert(tmp_path))
    refused = stranger.run()
    assert refused.returncode not in (FETCHMAIL_OK, FETCHMAIL_NOMAIL), refused
    assert "certificate verify failed" in refused.output, refused
    assert "PASS" not in refused.output, refused  # no password went out
    assert stranger.fetched() == []

    fm = Fetchmail(server, tmp_path / "fetchmail", tls=tls)
    r = fm.run()
    assert r.returncode == FETCHMAIL_OK, r
    assert "SSL/TLS: using protocol TLSv1." in r.output, r
    assert "Server certificate verification error" not in r.output, r
    if tls == "stls":
        assert "POP3> STLS" in r.output and "upgrade to TLS succeeded" in r.output, r
    assert fm.fetched() == on_server
    assert stored(server) == []


@requires("fetchmail")
def test_fetchmail_pop3s_with_pinned_fingerprint(server: RunningServer, tmp_path: Path) -> None:
    server.add_user(ALICE)
    deliver(server, "pinned")
    on_server = stored(server)

    wrong = md5_fingerprint(foreign_cert(tmp_path))
    stranger = Fetchmail(server, tmp_path / "stranger", tls="fingerprint", fingerprint=wrong)
    refused = stranger.run()
    assert refused.returncode not in (FETCHMAIL_OK, FETCHMAIL_NOMAIL), refused
    assert "fingerprints do not match" in refused.output, refused
    assert stranger.fetched() == []

    right = md5_fingerprint(server.app.config.cert_path)
    fm = Fetchmail(server, tmp_path / "fetchmail", tls="fingerprint", fingerprint=right)
    r = fm.run()
    assert r.returncode == FETCHMAIL_OK, r
    assert "fingerprints match" in r.output, r
    assert fm.fetched() == on_server


# ---- 3. getmail6: delete and keep, plain and SSL ---------------------------------------------


@requires("getmail")
@pytest.mark.parametrize("ssl", [False, True], ids=["pop3", "pop3s"])
def test_getmail_delete_fetches_all_and_empties_the_server(
    server: RunningServer, make_getmail: Callable[..., Getmail], ssl: bool
) -> None:
    server.add_user(ALICE)
    deliver(server, "g one", "g two", "g three")
    on_server = stored(server)
    gm = make_getmail("getmail", delete=True, ssl=ssl)
    r = gm.run()
    assert r.returncode == 0, r
    assert "3 messages" in r.output and "retrieved" in r.output, r
    assert sorted(gm.fetched()) == sorted(on_server)
    assert stored(server) == []
    assert usage(server) == (0, 0)


@requires("getmail")
@pytest.mark.parametrize("ssl", [False, True], ids=["pop3", "pop3s"])
def test_getmail_keep_fetches_only_new_mail(
    server: RunningServer, make_getmail: Callable[..., Getmail], ssl: bool
) -> None:
    server.add_user(ALICE)
    deliver(server, "k one", "k two")
    gm = make_getmail("getmail", delete=False, ssl=ssl)
    first = gm.run()
    assert first.returncode == 0, first
    assert sorted(gm.fetched()) == sorted(stored(server))
    assert usage(server)[0] == 2

    deliver(server, "k new")
    second = gm.run()
    assert second.returncode == 0, second
    fetched = gm.fetched()
    assert len(fetched) == 3, second
    new = [m for m in fetched if subject(m) == "k new"]
    assert new == [stored(server)[2]]

    third = gm.run()
    assert third.returncode == 0, third
    assert len(gm.fetched()) == 3
    assert len(stored(server)) == 3


@requires("getmail")
def test_getmail_ssl_refuses_a_certificate_it_cannot_verify(
    server: RunningServer, make_getmail: Callable[..., Getmail], tmp_path: Path
) -> None:
    server.add_user(ALICE)
    deliver(server, "not for strangers")
    gm = make_getmail("getmail", delete=True, ssl=True, ca_certs=foreign_cert(tmp_path))
    r = gm.run()
    assert r.returncode != 0, r
    assert "CERTIFICATE_VERIFY_FAILED" in r.output or "certificate verify failed" in r.output, r
    assert gm.fetched() == []
    assert len(stored(server)) == 1


# ---- 4. curl: POP3, POP3S, STLS, SMTP --------------------------------------------------------

TRICKY_BODY = (
    ".a line starting with a dot\r\n"
    "..two dots\r\n"
    ".\r\n"
    "8-bit: Gr\u00fc\u00dfe aus K\u00f6ln\r\n"
    "trailing spaces   \r\n"
    "\r\n"
    "end\r\n"
)


@requires("curl")
def test_curl_pop3_list_and_retrieve_byte_exact(server: RunningServer, tmp_path: Path) -> None:
    server.add_user(ALICE)
    server.send([ALICE], message("tricky", body=TRICKY_BODY))
    deliver(server, "plain second")
    on_server = stored(server)
    url = f"pop3://127.0.0.1:{server.port('pop3')}"

    listing = curl(tmp_path, "-u", CREDENTIALS, f"{url}/")
    assert listing.returncode == 0, listing
    expected = "".join(f"{i} {len(m)}\r\n" for i, m in enumerate(on_server, 1))
    assert listing.output == expected, listing

    out = tmp_path / "1.eml"
    got = curl(tmp_path, "-u", CREDENTIALS, "-o", str(out), f"{url}/1")
    assert got.returncode == 0, got
    assert out.read_bytes() == on_server[0]  # dot-unstuffed, 8-bit clean, byte for byte
    assert on_server[0].endswith(TRICKY_BODY.encode())
    assert len(stored(server)) == 2  # RETR alone deletes nothing


@requires("curl")
def test_curl_pop3s_with_cacert(server: RunningServer, tmp_path: Path) -> None:
    server.add_user(ALICE)
    deliver(server, "over pop3s")
    on_server = stored(server)
    url = f"pop3s://127.0.0.1:{server.port('pop3s')}/1"

    untrusted = curl(tmp_path, "-u", CREDENTIALS, url)
    assert untrusted.returncode == 60, untrusted  # CURLE_PEER_FAILED_VERIFICATION

    out = tmp_path / "1.eml"
    cacert = str(server.app.config.cert_path)
    got = curl(tmp_path, "--cacert", cacert, "-u", CREDENTIALS, "-o", str(out), url)
    assert got.returncode == 0, got
    assert out.read_bytes() == on_server[0]


@requires("curl")
def test_curl_ssl_reqd_uses_stls(server: RunningServer, tmp_path: Path) -> None:
    server.add_user(ALICE)
    deliver(server, "over stls")
    on_server = stored(server)
    out = tmp_path / "1.eml"
    cacert = str(server.app.config.cert_path)
    url = f"pop3://127.0.0.1:{server.port('pop3')}/1"
    r = curl(
        tmp_path, "-v", "--max-time", "8", "--ssl-reqd", "--cacert", cacert,
        "-u", CREDENTIALS, "-o", str(out), url,
    )  # fmt: skip
    assert r.returncode == 0, r
    assert "> STLS" in r.output and "SSL certificate verify ok" in r.output, r
    # The credentials (curl prefers SASL PLAIN) went only after the handshake, and the
    # capabilities were asked again: RFC 2595 says forget what was said in plaintext.
    handshake = r.output.index("SSL connection using")
    assert handshake < r.output.index("> AUTH PLAIN"), r
    assert "< STLS" not in r.output[handshake:], r
    assert out.read_bytes() == on_server[0]


@requires("curl")
def test_curl_pop3_custom_commands_uidl_top_dele(server: RunningServer, tmp_path: Path) -> None:
    server.add_user(ALICE)
    deliver(server, "c one", "c two")
    on_server = stored(server)
    url = f"pop3://127.0.0.1:{server.port('pop3')}"

    uidl = curl(tmp_path, "-u", CREDENTIALS, "-X", "UIDL", f"{url}/")
    assert uidl.returncode == 0, uidl
    ids = [line.split() for line in uidl.output.splitlines()]
    assert [n for n, _ in ids] == ["1", "2"] and len({u for _, u in ids}) == 2, uidl

    top = curl(tmp_path, "-u", CREDENTIALS, "-X", "TOP 1 0", f"{url}/")
    assert top.returncode == 0, top
    head = on_server[0][: on_server[0].index(b"\r\n\r\n") + 4]
    assert top.output.encode() == head, top

    # curl sends QUIT when it closes the connection: the UPDATE state expunges message 1.
    dele = curl(tmp_path, "-u", CREDENTIALS, "-X", "DELE", "-I", f"{url}/1")
    assert dele.returncode == 0, dele
    assert stored(server) == on_server[1:]
    uidl_after = curl(tmp_path, "-u", CREDENTIALS, "-X", "UIDL", f"{url}/")
    assert uidl_after.output.split() == ["1", ids[1][1]], uidl_after  # UIDL of msg 2 is stable


@requires("curl")
def test_curl_pop3s_large_message_byte_exact(server: RunningServer, tmp_path: Path) -> None:
    server.add_user(ALICE)
    server.send([ALICE], message("big one", size=3_000_000))
    [on_server] = stored(server)
    out = tmp_path / "big.eml"
    cacert = str(server.app.config.cert_path)
    url = f"pop3s://127.0.0.1:{server.port('pop3s')}/1"
    r = curl(tmp_path, "--cacert", cacert, "-u", CREDENTIALS, "-o", str(out), url)
    assert r.returncode == 0, r
    assert len(out.read_bytes()) == len(on_server) > 3_000_000
    assert out.read_bytes() == on_server


@requires("curl")
def test_curl_smtp_upload_delivers(server: RunningServer, tmp_path: Path) -> None:
    server.add_user(ALICE)
    mail = tmp_path / "upload.eml"
    data = (
        b"From: Curl <curl@remote.example>\r\nTo: alice@example.org\r\n"
        b"Subject: via curl\r\n\r\nUploaded.\r\n"
    )
    mail.write_bytes(data)
    r = curl(
        tmp_path,
        f"smtp://127.0.0.1:{server.port('smtp')}",
        "--mail-from", "curl@remote.example",
        "--mail-rcpt", ALICE,
        "--upload-file", str(mail),
    )  # fmt: skip
    assert r.returncode == 0, r
    [got] = stored(server)
    assert subject(got) == "via curl"
    assert got.startswith(b"Return-Path: <curl@remote.example>\r\nReceived: ")
    assert got.endswith(data)


@requires("curl")
def test_curl_smtp_to_a_full_mailbox_gets_552(server: RunningServer, tmp_path: Path) -> None:
    server.add_user(ALICE, quota=5000)
    assert fill(server) >= 2
    before = usage(server)
    mail = tmp_path / "upload.eml"
    mail.write_bytes(message("one too many", size=1500))
    r = curl(
        tmp_path,
        "-v",
        f"smtp://127.0.0.1:{server.port('smtp')}",
        "--mail-from", "curl@remote.example",
        "--mail-rcpt", ALICE,
        "--upload-file", str(mail),
    )  # fmt: skip
    assert r.returncode != 0, r
    assert "< 552 5.2.2" in r.output, r
    assert usage(server) == before

    # curl declares SIZE=; a message that cannot fit is refused already at RCPT.
    mail.write_bytes(message("far too big", size=6000))
    r = curl(
        tmp_path,
        "-v",
        f"smtp://127.0.0.1:{server.port('smtp')}",
        "--mail-from", "curl@remote.example",
        "--mail-rcpt", ALICE,
        "--upload-file", str(mail),
    )  # fmt: skip
    assert r.returncode == 55, r  # "RCPT failed: 552"
    assert "SIZE=" in r.output and "< 552 5.2.2" in r.output, r
    assert "> DATA" not in r.output, r
    assert usage(server) == before


# ---- 5. swaks --------------------------------------------------------------------------------


@requires("swaks")
def test_swaks_delivers(server: RunningServer, tmp_path: Path) -> None:
    server.add_user(ALICE)
    r = swaks(
        server, tmp_path, "--to", ALICE, "--header", "Subject: hello from swaks",
        "--body", "Sent by swaks.",
    )  # fmt: skip
    assert r.returncode == 0, r
    assert "<-  250 2.0.0" in r.output, r
    [got] = stored(server)
    assert subject(got) == "hello from swaks"
    assert b"\r\n\r\nSent by swaks." in got


@requires("swaks")
def test_swaks_unknown_user_gets_550(server: RunningServer, tmp_path: Path) -> None:
    server.add_user(ALICE)
    r = swaks(server, tmp_path, "--to", "nobody@example.org")
    assert r.returncode != 0, r
    assert "550 5.1.1" in r.output, r
    assert stored(server) == []


@requires("swaks")
def test_swaks_starttls_delivers(server: RunningServer, tmp_path: Path) -> None:
    server.add_user(ALICE)
    cert = str(server.app.config.cert_path)
    stranger = swaks(
        server, tmp_path, "--to", ALICE, "--tls", "--tls-verify",
        "--tls-ca-path", str(foreign_cert(tmp_path)),
    )  # fmt: skip
    assert stranger.returncode != 0, stranger
    assert "certificate verify failed" in stranger.output, stranger
    r = swaks(
        server, tmp_path, "--to", ALICE, "--tls", "--tls-verify", "--tls-ca-path", cert,
        "--header", "Subject: over starttls",
    )  # fmt: skip
    assert r.returncode == 0, r
    assert "=== TLS started with cipher TLSv1." in r.output, r
    assert "~> RCPT TO:<alice@example.org>" in r.output, r  # the envelope went encrypted
    [got] = stored(server)
    assert subject(got) == "over starttls"
    assert b"(postfach) with ESMTPS id " in got


@requires("swaks")
def test_swaks_full_mailbox_gets_552(server: RunningServer, tmp_path: Path) -> None:
    server.add_user(ALICE, quota=5000)
    assert fill(server) >= 2
    before = usage(server)
    r = swaks(server, tmp_path, "--to", ALICE, "--body", filler_body(1500))
    assert r.returncode != 0, r
    assert "552 5.2.2" in r.output, r
    assert usage(server) == before


@requires("swaks")
def test_swaks_relay_attempt_gets_554(server: RunningServer, tmp_path: Path) -> None:
    server.add_user(ALICE)
    r = swaks(server, tmp_path, "--to", "victim@elsewhere.example")
    assert r.returncode != 0, r
    assert "554 5.7.1" in r.output, r


@requires("swaks")
def test_swaks_pipelining(server: RunningServer, tmp_path: Path) -> None:
    server.add_user(ALICE)
    server.add_user(BOB)
    r = swaks(
        server, tmp_path, "--pipeline", "--to", f"{ALICE},{BOB}",
        "--header", "Subject: pipelined",
    )  # fmt: skip
    assert r.returncode == 0, r
    assert "250-PIPELINING" in r.output, r
    lines = [line for line in r.output.splitlines() if line.startswith((" -> ", "<-  "))]
    mail = lines.index(" -> MAIL FROM:<sender@remote.example>")
    # The whole envelope went out in one go, before the first reply came back.
    assert lines[mail : mail + 4] == [
        " -> MAIL FROM:<sender@remote.example>",
        f" -> RCPT TO:<{ALICE}>",
        f" -> RCPT TO:<{BOB}>",
        " -> DATA",
    ], r
    assert lines[mail + 4 : mail + 8] == [
        "<-  250 2.1.0 Sender OK",
        "<-  250 2.1.5 Recipient OK",
        "<-  250 2.1.5 Recipient OK",
        "<-  354 End data with <CR><LF>.<CR><LF>",
    ], r
    assert [subject(m) for m in stored(server)] == ["pipelined"]
    assert [subject(m) for m in stored(server, BOB)] == ["pipelined"]


@requires("swaks")
def test_swaks_lmtp_answers_per_recipient(server: RunningServer, tmp_path: Path) -> None:
    server.add_user(ALICE)
    server.add_user(BOB)
    r = swaks(
        server, tmp_path, "--protocol", "LMTP", "--server", f"127.0.0.1:{server.port('lmtp')}",
        "--to", f"{ALICE},nobody@example.org,{BOB}", "--header", "Subject: over lmtp",
    )  # fmt: skip
    assert r.returncode == 0, r
    assert " -> LHLO client.example" in r.output, r
    assert "<** 550 5.1.1" in r.output, r
    # RFC 2033: after the final dot one reply per accepted recipient, in RCPT order.
    lines = r.output.splitlines()
    dot = lines.index(" -> .")
    assert lines[dot + 1 : dot + 3] == [
        f"<-  250 2.0.0 <{ALICE}> delivered",
        f"<-  250 2.0.0 <{BOB}> delivered",
    ], r
    assert [subject(m) for m in stored(server)] == ["over lmtp"]
    assert [subject(m) for m in stored(server, BOB)] == ["over lmtp"]


# RFC 2034 §3/§4: once ENHANCEDSTATUSCODES is advertised, the text of *every* 2xx/4xx/5xx reply
# other than the greeting and the EHLO answer starts with a status code.
# swaks prefixes replies with four characters: "<-  ", "<** " (error), "<~  " (under TLS).
ENHANCED = re.compile(r"([245])\d\d[ -]\1\.\d{1,3}\.\d{1,3} ")


@requires("swaks")
def test_swaks_every_reply_has_an_enhanced_status_code(
    server: RunningServer, tmp_path: Path
) -> None:
    server.add_user(ALICE)
    r = swaks(server, tmp_path, "--pipeline", "--to", "nobody@example.org")
    assert "550 5.1.1" in r.output, r
    replies = [line for line in r.output.splitlines() if line[:1] == "<" and line[4:7].isdigit()]
    ehlo_end = next(i for i, line in enumerate(replies) if line[4:8] == "250 ")
    missing = [
        line
        for line in replies[ehlo_end + 1 :]
        if line[4] in "245" and not ENHANCED.match(line[4:])
    ]
    assert missing == [], r

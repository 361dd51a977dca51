"""swaks and curl as submission clients (RFC 6409, RFC 8314) against a real postfach on
loopback: AUTH PLAIN/LOGIN over STARTTLS and implicit TLS, sender checks, no relaying without
AUTH, and a remote recipient that leaves through the queue to a loopback peer."""

from __future__ import annotations

import os
import shutil
import smtplib
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from interop_clients import ALICE, curl, requires, run, stored

from outbound_support import FakeResolver, Peer, PostfixPeer, wait_for
from support import PASSWORD, RunningServer, start_server

pytestmark = pytest.mark.interop

BOB = "bob@example.org"
CAROL = "carol@remote.test"


@pytest.fixture
def peer(tmp_path: Path) -> Iterator[Peer]:
    p = Peer(tmp_path)
    try:
        yield p
    finally:
        p.stop()


@pytest.fixture
def srv(tmp_path: Path, peer: Peer) -> Iterator[RunningServer]:
    data = tmp_path / "data"
    data.mkdir()
    (data / "postfach.toml").write_text("[queue]\nfirst_retry = 0.2\npoll = 0.1\n")
    resolver = FakeResolver(
        mx={"remote.test": [(10, "mx.remote.test")]}, addresses={"mx.remote.test": ["127.0.0.1"]}
    )
    s = start_server(data, app_options={"resolver": resolver, "mx_port": peer.port})
    s.add_user(ALICE)
    s.add_user(BOB)
    try:
        yield s
    finally:
        s.stop()


def swaks_submit(srv: RunningServer, home: Path, port: str, *args: str) -> object:
    return run(
        ["swaks", "--server", f"127.0.0.1:{srv.port(port)}", "--helo", "client.example",
         "--timeout", "20", *args],
        home,
    )  # fmt: skip


@requires("swaks")
@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN"])
def test_swaks_starttls_auth_local_delivery(
    srv: RunningServer, tmp_path: Path, mechanism: str
) -> None:
    r = swaks_submit(
        srv, tmp_path, "submission", "--tls", "--auth", mechanism, "--auth-user", ALICE,
        "--auth-password", PASSWORD, "--from", ALICE, "--to", BOB,
        "--header", f"From: {ALICE}", "--header", f"Subject: via swaks {mechanism}",
    )  # fmt: skip
    assert r.returncode == 0, r  # type: ignore[attr-defined]
    assert "<~  235 2.7.0" in r and "STARTTLS" in r
    [msg] = stored(srv, BOB)
    assert f"Subject: via swaks {mechanism}".encode() in msg
    assert b"with ESMTPSA id" in msg and b"message-id:" in msg.lower()


@requires("swaks")
def test_swaks_implicit_tls_to_a_remote_peer(
    srv: RunningServer, peer: Peer, tmp_path: Path
) -> None:
    r = swaks_submit(
        srv, tmp_path, "submissions", "--tls-on-connect", "--auth", "PLAIN", "--auth-user",
        ALICE, "--auth-password", PASSWORD, "--from", ALICE, "--to", CAROL,
        "--header", f"From: {ALICE}", "--header", "Subject: out via 465",
    )  # fmt: skip
    assert r.returncode == 0, r  # type: ignore[attr-defined]
    wait_for(lambda: peer.messages, what="delivery to the peer")
    [got] = peer.messages
    assert got.rcpt_tos == [CAROL] and b"Subject: out via 465" in got.data
    assert b"DKIM-Signature:" in got.data


@requires("swaks")
def test_swaks_without_auth_cannot_relay(srv: RunningServer, tmp_path: Path) -> None:
    r = swaks_submit(srv, tmp_path, "submission", "--tls", "--from", ALICE, "--to", CAROL)
    assert r.returncode != 0  # type: ignore[attr-defined]
    assert "* 530 5.7.0" in r  # swaks marks an error reply "<**" (or "<~*" inside TLS)
    assert srv.app.queue is not None and srv.app.queue.messages() == []


@requires("swaks")
def test_swaks_foreign_from_header_is_refused(srv: RunningServer, tmp_path: Path) -> None:
    r = swaks_submit(
        srv, tmp_path, "submission", "--tls", "--auth", "PLAIN", "--auth-user", ALICE,
        "--auth-password", PASSWORD, "--from", ALICE, "--to", BOB,
        "--header", f"From: {BOB}",
    )  # fmt: skip
    assert r.returncode != 0  # type: ignore[attr-defined]
    assert "* 553 5.7.1" in r
    assert stored(srv, BOB) == []


@requires("curl")
def test_curl_smtp_starttls_and_smtps(srv: RunningServer, tmp_path: Path) -> None:
    mail = tmp_path / "mail.txt"
    mail.write_bytes(f"From: {ALICE}\r\nTo: {BOB}\r\nSubject: via curl\r\n\r\nHello.\r\n".encode())
    cacert = str(srv.app.config.cert_path)
    for url in (
        f"smtp://localhost:{srv.port('submission')}",
        f"smtps://localhost:{srv.port('submissions')}",
    ):
        r = curl(
            tmp_path, "--ssl-reqd", "--cacert", cacert, "-u", f"{ALICE}:{PASSWORD}",
            "--mail-from", ALICE, "--mail-rcpt", BOB, "--upload-file", str(mail), url,
        )  # fmt: skip
        assert r.returncode == 0, r
    assert [b"Subject: via curl" in m for m in stored(srv, BOB)] == [True, True]


@requires("curl")
def test_curl_wrong_password(srv: RunningServer, tmp_path: Path) -> None:
    mail = tmp_path / "mail.txt"
    mail.write_bytes(f"From: {ALICE}\r\n\r\nx\r\n".encode())
    r = curl(
        tmp_path, "--ssl-reqd", "-k", "-u", f"{ALICE}:wrong", "--mail-from", ALICE,
        "--mail-rcpt", BOB, "--upload-file", str(mail),
        f"smtp://127.0.0.1:{srv.port('submission')}",
    )  # fmt: skip
    assert r.returncode == 67, r  # CURLE_LOGIN_DENIED


# ---- Postfix as the remote MX ------------------------------------------------------------------


@pytest.fixture
def postfix(tmp_path: Path) -> Iterator[PostfixPeer]:
    if shutil.which("postfix") is None or os.geteuid() != 0:
        pytest.skip("a private Postfix instance needs the Debian postfix package and root")
    p = PostfixPeer([CAROL], _free_port())
    try:
        yield p
    finally:
        p.stop()


@pytest.fixture
def srv_postfix(tmp_path: Path, postfix: PostfixPeer) -> Iterator[RunningServer]:
    data = tmp_path / "data"
    data.mkdir()
    (data / "postfach.toml").write_text("[queue]\nfirst_retry = 0.5\npoll = 0.1\n")
    resolver = FakeResolver(
        mx={"remote.test": [(10, "mx.remote.test")]}, addresses={"mx.remote.test": ["127.0.0.1"]}
    )
    s = start_server(data, app_options={"resolver": resolver, "mx_port": postfix.port})
    s.add_user(ALICE)
    try:
        yield s
    finally:
        s.stop()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@requires("swaks")
def test_postfix_receives_signed_mail_over_starttls(
    srv_postfix: RunningServer, postfix: PostfixPeer, tmp_path: Path
) -> None:
    r = swaks_submit(
        srv_postfix, tmp_path, "submission", "--tls", "--auth", "PLAIN", "--auth-user", ALICE,
        "--auth-password", PASSWORD, "--from", ALICE, "--to", CAROL,
        "--header", f"From: {ALICE}", "--header", "Subject: to postfix",
    )  # fmt: skip
    assert r.returncode == 0, r  # type: ignore[attr-defined]
    wait_for(lambda: postfix.maildir(CAROL), what=f"Postfix delivery\n{postfix.log()}")
    [got] = postfix.maildir(CAROL)
    assert b"Subject: to postfix" in got and b"DKIM-Signature:" in got
    assert b"with ESMTPS id" in got  # Postfix saw our opportunistic STARTTLS
    assert srv_postfix.app.queue is not None
    wait_for(lambda: srv_postfix.app.queue.messages() == [], what="queue empty")  # type: ignore[union-attr]


def test_postfix_refusal_bounces_into_the_senders_inbox(
    srv_postfix: RunningServer, postfix: PostfixPeer
) -> None:
    with smtplib.SMTP("127.0.0.1", srv_postfix.port("submission"), timeout=30) as s:
        s.login(ALICE, PASSWORD)
        s.sendmail(
            ALICE, ["dave@remote.test"],
            f"From: {ALICE}\r\nSubject: to nobody\r\n\r\nHello.\r\n".encode(),
            ["RET=HDRS", "ENVID=pf1"], ["NOTIFY=FAILURE", "ORCPT=rfc822;Dave@remote.test"],
        )  # fmt: skip
    wait_for(lambda: stored(srv_postfix), what=f"a DSN\n{postfix.log()}")
    [dsn] = stored(srv_postfix)
    assert b"Final-Recipient: rfc822; dave@remote.test" in dsn
    assert b"Original-Recipient: rfc822;Dave@remote.test" in dsn
    assert b"Status: 5.1.1" in dsn and b"Remote-MTA: dns; mx.remote.test" in dsn
    assert b"User unknown" in dsn and b"Subject: to nobody" in dsn

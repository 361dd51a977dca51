"""The outbound queue end to end on loopback: a submitted message reaches a peer (aiosmtpd sink)
via an injected MX table or the smarthost; retries, bounces, expiry, concurrency, restarts."""

from __future__ import annotations

import email
import os
import smtplib
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dkim
import pytest

from outbound_support import FakeResolver, Peer, wait_for
from postfach.queue.store import NewRecipient, QueueStore
from postfach.smtp.client import TemporaryDnsError
from postfach.store.api import INBOX
from support import PASSWORD, RunningServer, start_server

ALICE = "alice@example.org"
CAROL = "carol@remote.test"
FAST = "[queue]\nfirst_retry = 0.2\npoll = 0.1\n"


def inbox(server: RunningServer, name: str = ALICE) -> list[bytes]:
    acc = server.store.get_account(name)
    assert acc is not None
    mb = server.store.get_mailbox(acc.id, INBOX)
    assert mb is not None
    return [server.store.read_blob(m.blob) for m in server.store.list_messages(mb.id)]


def body(subject: str = "to carol", to: str = CAROL) -> bytes:
    return f"From: <{ALICE}>\r\nTo: <{to}>\r\nSubject: {subject}\r\n\r\nHello there.\r\n".encode()


def submit(
    server: RunningServer,
    rcpts: list[str],
    msg: bytes,
    mail_options: tuple[str, ...] = (),
    rcpt_options: tuple[str, ...] = (),
) -> None:
    with smtplib.SMTP("127.0.0.1", server.port("submission"), timeout=30) as s:
        s.ehlo("client.example")
        s.login(ALICE, PASSWORD)
        assert s.sendmail(ALICE, rcpts, msg, list(mail_options), list(rcpt_options)) == {}


@pytest.fixture
def peer(tmp_path: Path) -> Iterator[Peer]:
    p = Peer(tmp_path)
    try:
        yield p
    finally:
        p.stop()


def serve(tmp_path: Path, peer: Peer | None, toml: str = FAST, **resolver: Any) -> RunningServer:
    data = tmp_path / "data"
    data.mkdir(exist_ok=True)
    (data / "postfach.toml").write_text(toml)
    res = FakeResolver(
        mx=resolver.get("mx", {"remote.test": [(10, "mx.remote.test")]}),
        addresses={"mx.remote.test": ["127.0.0.1"]},
    )
    srv = start_server(data, app_options={"resolver": res, "mx_port": peer.port if peer else 1})
    if not srv.store.get_account(ALICE):
        srv.add_user(ALICE)
    return srv


@pytest.fixture
def server_for(tmp_path: Path) -> Iterator[Any]:
    started: list[RunningServer] = []

    def make(peer: Peer | None, toml: str = FAST, **kw: Any) -> RunningServer:
        srv = serve(tmp_path, peer, toml, **kw)
        started.append(srv)
        return srv

    yield make
    for s in started:
        s.stop()


def test_remote_delivery_via_mx_with_starttls_and_dkim(server_for: Any, peer: Peer) -> None:
    srv = server_for(peer)
    submit(srv, [CAROL], body())
    wait_for(lambda: peer.messages, what="delivery to the peer")
    [got] = peer.messages
    assert got.mail_from == ALICE and got.rcpt_tos == [CAROL]
    assert got.tls  # opportunistic STARTTLS
    assert got.data.startswith(b"Received: from client.example")
    assert b"Return-Path" not in got.data
    txt = srv.app.outbound.signer.__self__.dns_value("example.org").encode()  # type: ignore
    assert dkim.verify(got.data, dnsfunc=lambda name, timeout=5: txt)
    wait_for(lambda: srv.app.queue.messages() == [], what="queue empty")


def test_relay_smarthost_with_auth(tmp_path: Path, server_for: Any) -> None:
    peer = Peer(tmp_path, credentials=("relayuser", "relaypass"))
    try:
        (tmp_path / "relay.pw").write_text("relaypass\n")
        toml = (
            f'{FAST}[relay]\nhost = "127.0.0.1"\nport = {peer.port}\ntls = "starttls"\n'
            f'verify = true\nca_file = "{peer.cert}"\nusername = "relayuser"\n'
            f'password_file = "{tmp_path / "relay.pw"}"\n'
        )
        srv = server_for(None, toml, mx={"remote.test": TemporaryDnsError("must not ask")})
        submit(srv, [CAROL, "dave@other.test"], body())
        # One connection per destination domain, also through a smarthost.
        wait_for(lambda: len(peer.messages) == 2, what="relay delivery")
        assert sorted(r for m in peer.messages for r in m.rcpt_tos) == [CAROL, "dave@other.test"]
        assert all(m.tls and m.auth == "relayuser" for m in peer.messages)
        wait_for(lambda: srv.app.queue.messages() == [], what="queue empty")
        assert srv.app.resolver.asked == []  # type: ignore[union-attr]
    finally:
        peer.stop()


def test_temporary_failure_is_retried_then_delivered(server_for: Any, peer: Peer) -> None:
    peer.handler.rcpt_replies[CAROL] = ["451 4.3.0 try later", "421 4.7.0 busy"]
    srv = server_for(peer)
    submit(srv, [CAROL], body())
    wait_for(lambda: peer.messages, what="delivery after retries")
    wait_for(lambda: srv.app.queue.messages() == [], what="queue empty")
    assert inbox(srv) == []  # no DSN for a delay this short


def test_permanent_failure_bounces_to_the_sender(server_for: Any, peer: Peer) -> None:
    peer.handler.rcpt_replies[CAROL] = ["550 5.1.1 <carol@remote.test>: no such user here"]
    srv = server_for(peer)
    submit(srv, [CAROL], body("will bounce"), mail_options=("RET=FULL", "ENVID=q1"))
    wait_for(lambda: inbox(srv), what="a DSN in alice's INBOX")
    [dsn] = inbox(srv)
    parsed = email.message_from_bytes(dsn)
    assert parsed["Return-Path"] == "<>"
    assert parsed.get_content_type() == "multipart/report"
    assert parsed.get_param("report-type") == "delivery-status"
    parts = parsed.get_payload()
    assert [p.get_content_type() for p in parts] == [
        "text/plain", "message/delivery-status", "message/rfc822",
    ]  # fmt: skip
    assert b"Final-Recipient: rfc822; carol@remote.test" in dsn
    assert b"Status: 5.1.1" in dsn and b"Action: failed" in dsn
    assert b"Diagnostic-Code: smtp; 550 5.1.1 <carol@remote.test>: no such user here" in dsn
    assert b"Remote-MTA: dns; mx.remote.test" in dsn
    assert b"Original-Envelope-Id: q1" in dsn
    assert b"Subject: will bounce" in dsn and b"Hello there." in dsn  # RET=FULL
    assert srv.app.queue.messages() == []
    assert peer.messages == []


def test_failure_notice_has_headers_only_by_default(server_for: Any, peer: Peer) -> None:
    peer.handler.data_replies = ["554 5.7.1 rejected as spam"]
    srv = server_for(peer)
    submit(srv, [CAROL], body("spammy"))
    wait_for(lambda: inbox(srv), what="a DSN")
    [dsn] = inbox(srv)
    assert b"Content-Type: text/rfc822-headers" in dsn and b"Subject: spammy" in dsn
    assert b"Hello there." not in dsn and b"Status: 5.7.1" in dsn


def test_delay_notice_then_expiry(server_for: Any, peer: Peer) -> None:
    peer.handler.rcpt_replies[CAROL] = ["451 4.4.5 system busy"] * 100
    srv = server_for(peer, FAST + "delay_notice = 0.4\nmax_age = 1.5\n")
    submit(srv, [CAROL], body("slow"))
    wait_for(lambda: len(inbox(srv)) == 2, what="a delay DSN and a failure DSN")
    delayed, failed = inbox(srv)
    assert b"Action: delayed" in delayed and b"Status: 4.4.5" in delayed
    assert b"Subject: Delayed Mail" in delayed
    assert b"Action: failed" in failed and b"Status: 5.4.7" in failed
    assert b"451 4.4.5 system busy" in failed
    # The runner delivers the DSN first and then removes the message (a crash in between sends
    # the DSN twice rather than never): the row goes a moment after the DSN arrives.
    wait_for(lambda: srv.app.queue.messages() == [], what="the expired message removed")


def test_notify_never_suppresses_the_bounce(server_for: Any, peer: Peer) -> None:
    peer.handler.rcpt_replies[CAROL] = ["550 5.1.1 no"]
    srv = server_for(peer)
    submit(srv, [CAROL], body(), rcpt_options=("NOTIFY=NEVER",))
    wait_for(lambda: srv.app.queue.messages() == [], what="queue empty")
    time.sleep(0.3)
    assert inbox(srv) == []


def test_notify_success_gets_a_relayed_notice(server_for: Any, peer: Peer) -> None:
    srv = server_for(peer)
    submit(srv, [CAROL], body(), rcpt_options=("NOTIFY=SUCCESS",))
    wait_for(lambda: inbox(srv), what="a success DSN")
    [dsn] = inbox(srv)
    assert b"Action: relayed" in dsn and b"Status: 2.0.0" in dsn


def test_null_mx_bounces_at_once(server_for: Any, peer: Peer) -> None:
    srv = server_for(peer, mx={"remote.test": [(0, ".")]})
    submit(srv, [CAROL], body())
    wait_for(lambda: inbox(srv), what="a DSN")
    assert b"Status: 5.1.10" in inbox(srv)[0]


def test_domain_without_mx_uses_its_address(server_for: Any, peer: Peer) -> None:
    srv = server_for(peer, mx={})
    srv.app.resolver.addr_table["mx.remote.test"] = ["127.0.0.1"]  # type: ignore[union-attr]
    srv.app.resolver.addr_table["remote.test"] = ["127.0.0.1"]  # type: ignore[union-attr]
    submit(srv, [CAROL], body())
    wait_for(lambda: peer.messages, what="delivery to the implicit MX")


def test_dns_trouble_is_temporary(server_for: Any, peer: Peer) -> None:
    srv = server_for(peer, mx={"remote.test": TemporaryDnsError("SERVFAIL")})
    submit(srv, [CAROL], body())
    wait_for(
        lambda: (
            (m := srv.app.queue.messages())
            and m[0].recipients[0].attempts >= 2
            and "4.4.3" in (m[0].recipients[0].last_reply or "")
        ),
        what="retried after a DNS failure",
    )
    assert inbox(srv) == []


def test_remote_sender_bounce_goes_out_through_the_queue(server_for: Any, peer: Peer) -> None:
    """A partial delivery on the MX port: the remote sender's DSN is queued (delivery.py)."""
    srv = server_for(peer)
    srv.add_user("full@example.org", quota=3000)
    srv.add_user("bob@example.org")
    with smtplib.SMTP("127.0.0.1", srv.port("smtp")) as s:
        s.ehlo("x")
        s.mail(CAROL)
        s.rcpt("full@example.org")
        s.rcpt("bob@example.org")
        big = body("big") + (b"x" * 70 + b"\r\n") * 60
        assert s.data(big)[0] == 250
    wait_for(lambda: peer.messages, what="the DSN at the peer")
    [dsn] = peer.messages
    assert dsn.mail_from in ("", "<>") and dsn.rcpt_tos == [CAROL]  # the null sender
    assert b"Final-Recipient: rfc822; full@example.org" in dsn.data


def test_a_failing_dsn_is_never_bounced(server_for: Any, peer: Peer) -> None:
    peer.handler.rcpt_replies[CAROL] = ["550 5.1.1 gone"] * 5
    srv = server_for(peer)
    srv.app.queue.enqueue("", [NewRecipient(CAROL)], body("a DSN"), time.time())
    srv.loop.call_soon_threadsafe(srv.app.runner.wake)
    wait_for(lambda: srv.app.queue.messages() == [], what="dropped")
    time.sleep(0.3)
    assert inbox(srv) == [] and peer.messages == []


def test_per_domain_concurrency_limit(server_for: Any, peer: Peer) -> None:
    peer.handler.data_delay = 0.3
    srv = server_for(peer, FAST + "per_domain = 1\n")
    for i in range(3):
        submit(srv, [CAROL], body(f"m{i}"))
    wait_for(lambda: len(peer.messages) == 3, what="three deliveries")
    assert peer.handler.max_active == 1


def test_restart_loses_nothing(tmp_path: Path, server_for: Any) -> None:
    srv = serve(tmp_path, None)  # mx_port 1: nobody listens, every attempt fails
    submit(srv, [CAROL], body("survivor"))
    wait_for(lambda: srv.app.queue.messages()[0].recipients[0].attempts >= 1, what="1 attempt")
    srv.stop()
    peer = Peer(tmp_path)
    try:
        srv2 = server_for(peer)
        wait_for(lambda: peer.messages, what="delivery after restart")
        assert b"Subject: survivor" in peer.messages[0].data
        wait_for(lambda: srv2.app.queue.messages() == [], what="queue empty")
    finally:
        peer.stop()


# ---- a real process: SIGKILL after the 250, then a restart; and the queue CLI -------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _postfach(data: Path, *args: str, **kw: Any) -> Any:
    env = {k: v for k, v in os.environ.items() if not k.startswith("POSTFACH_")}
    env.update({"COLUMNS": "200", **kw.pop("env", {})})
    return subprocess.run(
        [sys.executable, "-m", "postfach", "--data", str(data), *args],
        capture_output=True, text=True, env=env, timeout=60, **kw,
    )  # fmt: skip


def _serve(data: Path, port: int) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("POSTFACH_")}
    for name in ("SMTP", "SUBMISSIONS", "POP3", "POP3S", "IMAP", "IMAPS", "HTTP", "LMTP"):
        env[f"POSTFACH_{name}"] = "off"
    env["POSTFACH_SUBMISSION"] = f"127.0.0.1:{port}"
    env["POSTFACH_HOSTNAME"] = "mx.example.org"
    proc = subprocess.Popen(
        [sys.executable, "-m", "postfach", "--data", str(data), "serve"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip

    def up() -> bool:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return True
        except OSError:
            return False

    wait_for(up, 30, "the server listening")
    return proc


def _relay_toml(port: int, first_retry: float) -> str:
    return (
        f"[queue]\nfirst_retry = {first_retry}\npoll = 0.1\n"
        f'[relay]\nhost = "127.0.0.1"\nport = {port}\ntls = "none"\n'
    )


def test_sigkill_after_250_then_restart_loses_nothing(tmp_path: Path, peer: Peer) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "postfach.toml").write_text(_relay_toml(_free_port(), 3600))  # nobody listens there
    assert _postfach(data, "domain", "add", "example.org").returncode == 0
    r = _postfach(data, "user", "add", ALICE, "--password-stdin", input=PASSWORD + "\n")
    assert r.returncode == 0, r.stderr
    port = _free_port()
    proc = _serve(data, port)
    try:
        with smtplib.SMTP("127.0.0.1", port, timeout=30) as s:
            s.login(ALICE, PASSWORD)
            assert s.sendmail(ALICE, [CAROL, "dave@other.test"], body("durable")) == {}
        proc.kill()  # SIGKILL right after the 250: no clean shutdown of anything
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()

    # The queue CLI sees the message; retry/flush/show work on the stopped server's queue.
    listing = _postfach(data, "queue", "list")
    assert listing.returncode == 0 and "1 message(s) queued" in listing.stdout
    assert CAROL in listing.stdout and "dave@other.test" in listing.stdout
    shown = _postfach(data, "queue", "show", "1")
    assert shown.returncode == 0 and "Subject: durable" not in shown.stdout
    assert "subject: durable" in shown.stdout and CAROL in shown.stdout
    raw = _postfach(data, "queue", "show", "1", "--raw")
    assert "Subject: durable" in raw.stdout and "DKIM-Signature" in raw.stdout
    assert "2 recipient(s) due now" in _postfach(data, "queue", "retry", "1").stdout
    assert "2 recipient(s) due now" in _postfach(data, "queue", "flush").stdout
    assert _postfach(data, "queue", "show", "9").returncode == 1

    (data / "postfach.toml").write_text(_relay_toml(peer.port, 0.2))
    proc = _serve(data, port)
    try:
        wait_for(lambda: len(peer.messages) == 2, what="both recipients after the restart")
        assert all(b"Subject: durable" in m.data for m in peer.messages)
        # The peer has the message when it answers DATA; the runner removes it from the queue
        # after reading that answer. A stop in between would leave it queued (and send it
        # again later): wait for the removal before stopping.
        wait_for(lambda: _queued(data) == 0, what="the queue emptied")
    finally:
        proc.terminate()
        proc.wait(20)
    assert "0 message(s) queued" in _postfach(data, "queue", "list").stdout


def _queued(data: Path) -> int:
    q = QueueStore(data)
    try:
        return len(q.messages())
    finally:
        q.close()


def test_queue_delete(tmp_path: Path) -> None:
    data = tmp_path / "data"
    q = QueueStore(data)
    mid = q.enqueue(ALICE, [NewRecipient(CAROL)], body(), time.time())
    q.close()
    r = _postfach(data, "queue", "delete", str(mid))
    assert r.returncode == 0 and f"deleted message {mid}" in r.stdout
    assert _postfach(data, "queue", "delete", str(mid)).returncode == 1
    assert "0 message(s) queued" in _postfach(data, "queue", "list").stdout


def test_domain_dkim_prints_the_txt_record(tmp_path: Path) -> None:
    r = _postfach(tmp_path / "data", "domain", "dkim", "example.org")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith('postfach._domainkey.example.org. IN TXT ( "v=DKIM1; k=rsa; p=')
    again = _postfach(tmp_path / "data", "domain", "dkim", "example.org")
    assert again.stdout == r.stdout  # the key is made once
    assert (tmp_path / "data" / "dkim" / "example.org" / "postfach.pem").stat().st_mode & 0o077 == 0
    assert _postfach(tmp_path / "data", "domain", "dkim", "not a domain").returncode == 1

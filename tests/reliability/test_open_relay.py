"""The open-relay battery (issue 6, point 5) against inbound SMTP, LMTP and submission.

The classic relay tests (plain remote recipient, %-hack, quoted local parts, source routes,
!-paths, address literals, trailing dots, case, comments and spaces, long local parts, the null
sender, a local sender without AUTH, DSN parameters) sent as ``RCPT TO`` to:

* the MX listener (port 25 role, no AUTH) and LMTP: every non-local address is refused with a
  5xx reply and an enhanced status code; genuine local deliveries are delivered;
* submission without AUTH: ``530 5.7.0`` for MAIL and RCPT;
* submission with AUTH (alice): malformed addresses and relay syntax are refused, a well-formed
  remote address is accepted (relaying for its users is submission's job), and the queue then
  holds exactly that recipient.

After every case the outbound queue (``queue.db``) is checked: empty, or exactly the expected
recipients for authenticated submission. The resolver never asks DNS and fails temporarily, so
queued mail stays queued and nothing leaves the machine.
"""

from __future__ import annotations

import os
import smtplib
import ssl
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from isolation_support import (
    ALICE,
    ATTEMPTS,
    BOB,
    PASSWORDS,
    ErrorLog,
    RawLines,
    isolation_server,
    plain,
    stored_texts,
)

from postfach.queue.store import QueueStore
from support import RunningServer

pytestmark = pytest.mark.timeout(120)

LONG = "a" * 300


@dataclass(frozen=True)
class Case:
    rcpt: str  # what follows "RCPT TO:" on the wire
    local: str | None = None  # the account a genuine local delivery reaches
    remote: str | None = None  # the queued address when authenticated submission accepts it
    submission_local: str | None = None  # local, but only submission takes DSN parameters


def c(
    rcpt: str, local: str | None = None, remote: str | None = None, sub: str | None = None
) -> Case:
    return Case(rcpt, local, remote, sub)


CASES = [
    c("<victim@remote.example>", remote="victim@remote.example"),
    c("victim@remote.example", remote="victim@remote.example"),  # no angle brackets
    c(" <victim@remote.example>", remote="victim@remote.example"),
    c("<victim@remote.example> ", remote="victim@remote.example"),
    c("<victim@remote.example (comment)>", remote="victim@remote.example"),
    c("<victim@REMOTE.EXAMPLE>", remote="victim@REMOTE.EXAMPLE"),
    # %-hack, also with the local host's name and an address literal
    c("<victim%remote.example@example.org>"),
    c("<victim%remote.example@mx.example.org>"),
    c("<victim%remote.example@[127.0.0.1]>"),
    c("<victim@remote.example%example.org>"),
    c("<victim%remote.example%example.org@example.org>"),
    # quoted local parts
    c('<"victim@remote.example"@example.org>'),
    c('<"victim%remote.example"@example.org>'),
    c('<"victim@remote.example">'),
    c('<"alice"@example.org>', local=ALICE),  # the same mailbox as alice@ (RFC 5321 §4.1.2)
    # several @
    c("<victim@remote.example@example.org>"),
    c("<alice@example.org@remote.example>"),
    c("<victim\\@remote.example@example.org>"),
    # source routes (RFC 5321 §3.6.1: the route is stripped, the mailbox is what counts)
    c("<@example.org:victim@remote.example>", remote="victim@remote.example"),
    c("<@mx.example.org,@example.org:victim@remote.example>", remote="victim@remote.example"),
    c("<@remote.example:alice@example.org>", local=ALICE),
    # UUCP !-paths
    c("<remote.example!victim@example.org>"),
    c("<remote.example!victim>"),
    c("<example.org!remote.example!victim>"),
    c("<mx.example.org!remote.example!victim@example.org>"),
    # address literals and bare IPs
    c("<victim@[127.0.0.1]>"),
    c("<victim@[IPv6:::1]>"),
    c("<alice@[127.0.0.1]>"),
    c("<victim@[192.0.2.1]>"),
    c("<victim@127.0.0.1>", remote="victim@127.0.0.1"),
    # trailing dots, case, look-alike and sub-domains of the local domain
    c("<victim@remote.example.>"),
    c("<alice@example.org.>"),
    c("<alice@EXAMPLE.ORG>", local=ALICE),
    c("<ALICE@example.org>", local=ALICE),
    c("<victim@sub.example.org>", remote="victim@sub.example.org"),
    c("<victim@example.org.remote.example>", remote="victim@example.org.remote.example"),
    c("<victim@mx.example.org>", remote="victim@mx.example.org"),
    c("<victim@localhost>"),
    c("<victim@remote\\.example>"),
    # odd syntax
    c("<<victim@remote.example>>"),
    c("<victim@remote.example>,<alice@example.org>"),
    c("<victim@remote.example> <alice@example.org>"),
    c("<alice@example.org\x00@remote.example>"),
    c("<>"),
    c("<postmaster>", local=ALICE),  # RFC 5321 §4.5.1: the oldest account of example.org
    c("<nobody@example.org>"),
    # long local parts (RFC 5321 §4.5.3.1.1: 64 octets)
    c(f"<{LONG}@remote.example>", remote=f"{LONG}@remote.example"),
    c(f"<{LONG}@example.org>"),
    # DSN parameters: ORCPT must not become an address
    c(
        "<victim@remote.example> NOTIFY=SUCCESS ORCPT=rfc822;alice@example.org",
        remote="victim@remote.example",
    ),
    c("<alice@example.org> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;victim@remote.example", sub=ALICE),
    c("<alice@example.org> SIZE=10"),
]

#: Envelope senders tried at the MX: remote, null, local without AUTH, an AUTH= parameter.
SENDERS = [
    "<someone@remote.example>",
    "<>",
    f"<{ALICE}>",
    f"<{BOB}> AUTH=<{ALICE}>",
]

REPLIES: dict[str, list[tuple[str, str]]] = {}


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RunningServer, ErrorLog]]:
    data: Path = tmp_path_factory.mktemp("relay") / "data"
    with isolation_server(data) as (srv, errors):
        yield srv, errors
        print("\nrelay attempts:", {k: v for k, v in sorted(ATTEMPTS.items()) if "relay" in k})
        for mode, rows in REPLIES.items():  # the table in docs/reliability/isolation.md
            print(f"\n== {mode}")
            for rcpt, reply in rows:
                print(f"| `{rcpt[:70]!r}` | {reply[:80]} |")


@pytest.fixture
def srv(world: tuple[RunningServer, ErrorLog]) -> Iterator[RunningServer]:
    server, errors = world
    yield server
    assert errors.take() == []


def queue(srv: RunningServer) -> QueueStore:
    q = srv.app.queue
    assert q is not None
    return q


def queued_addresses(srv: RunningServer) -> list[str]:
    return sorted(r.address for m in queue(srv).messages() for r in m.recipients)


def clear_queue(srv: RunningServer) -> None:
    for m in queue(srv).messages():
        queue(srv).delete(m.id)


def session(srv: RunningServer, listener: str, auth: bool) -> RawLines:
    s = RawLines(srv.port(listener))
    assert s.smtp_reply().startswith(b"220")
    s.send("LHLO client.test" if listener == "lmtp" else "EHLO client.test")
    assert s.smtp_reply().startswith(b"250")
    if auth:
        s.send(f"AUTH PLAIN {plain('', ALICE, PASSWORDS[ALICE])}")
        assert s.smtp_reply().startswith(b"235")
    return s


def say(s: RawLines, line: str | bytes) -> str:
    s.send(line)
    return s.smtp_reply().decode("utf-8", "replace")


def message(subject: str) -> bytes:
    return (
        f"From: <{ALICE}>\r\nTo: <victim@remote.example>\r\nSubject: {subject}\r\n\r\n"
        "Relay probe.\r\n.\r\n"
    ).encode()


def enhanced(reply: str) -> bool:
    parts = reply.split(" ", 2)
    return len(parts) > 1 and parts[1][:2] in ("5.", "4.") and parts[1].count(".") == 2


def local_copies(srv: RunningServer, account: str, subject: str) -> int:
    return sum(f"Subject: {subject}".encode() in t for t in stored_texts(srv, account))


@pytest.mark.parametrize("listener", ["smtp", "lmtp"])
def test_inbound_is_no_relay(srv: RunningServer, listener: str) -> None:
    """MX and LMTP: every non-local recipient 5xx with an enhanced code; the queue stays empty;
    genuine local recipients are delivered (and only those)."""
    rows = REPLIES.setdefault(f"{listener} (no AUTH)", [])
    for sender in SENDERS:
        for n, case in enumerate(CASES):
            ATTEMPTS[f"relay-{listener}"] += 1
            s = session(srv, listener, auth=False)
            mail = say(s, f"MAIL FROM:{sender}")
            if sender.endswith(f"AUTH=<{ALICE}>") and mail.startswith("5"):
                s.close()  # refusing an AUTH= parameter from an unauthenticated client is fine
                break
            assert mail.startswith("250"), (sender, mail)
            reply = say(s, b"RCPT TO:" + case.rcpt.encode())
            if sender == SENDERS[0]:
                rows.append((case.rcpt, reply))
            if case.local is None:
                assert reply[:1] == "5" and enhanced(reply), (sender, case.rcpt, reply)
                assert say(s, "DATA")[:1] == "5"  # no recipients: nothing to send
            else:
                assert reply.startswith("250"), (sender, case.rcpt, reply)
                subject = f"relay {listener} {n} {sender[:12]}"
                assert say(s, "DATA").startswith("354")
                assert say(s, message(subject).rstrip(b"\r\n")).startswith("250")
                assert local_copies(srv, case.local, subject) == 1
            s.close()
            assert queue(srv).messages() == [], (sender, case.rcpt)


def test_submission_without_auth_is_no_relay(srv: RunningServer) -> None:
    rows = REPLIES.setdefault("submission (no AUTH)", [])
    for case in CASES:
        ATTEMPTS["relay-submission-noauth"] += 1
        s = session(srv, "submission", auth=False)
        assert say(s, f"MAIL FROM:<{ALICE}>").startswith("530 5.7.0")
        reply = say(s, b"RCPT TO:" + case.rcpt.encode())
        rows.append((case.rcpt, reply))
        assert reply.startswith("530 5.7.0") or (reply[:1] == "5" and enhanced(reply)), reply
        assert say(s, "DATA")[:1] == "5"
        s.close()
    assert queue(srv).messages() == []


def test_submission_with_auth_queues_exactly_the_accepted_recipients(srv: RunningServer) -> None:
    """Authenticated alice may send to remote addresses; relay syntax and malformed addresses
    are still refused, and the queue holds exactly what was accepted."""
    rows = REPLIES.setdefault("submission (AUTH alice)", [])
    for n, case in enumerate(CASES):
        ATTEMPTS["relay-submission-auth"] += 1
        s = session(srv, "submission", auth=True)
        assert say(s, f"MAIL FROM:<{ALICE}>").startswith("250")
        reply = say(s, b"RCPT TO:" + case.rcpt.encode())
        rows.append((case.rcpt, reply))
        subject = f"relay submission {n}"
        local = case.local or case.submission_local
        if case.remote is None and local is None:
            assert reply[:1] == "5" and enhanced(reply), (case.rcpt, reply)
            assert say(s, "DATA")[:1] == "5"
        else:
            assert reply.startswith("250"), (case.rcpt, reply)
            assert say(s, "DATA").startswith("354")
            assert say(s, message(subject).rstrip(b"\r\n")).startswith("250")
        s.close()
        expected = [case.remote] if case.remote else []
        assert queued_addresses(srv) == expected, case.rcpt
        if local:  # (a success DSN, NOTIFY=SUCCESS, quotes the Subject in alice's INBOX too)
            assert local_copies(srv, local, subject) >= 1
        clear_queue(srv)


def test_submission_with_auth_several_recipients(srv: RunningServer) -> None:
    """One transaction mixing accepted remote, refused tricks and local recipients: the queue
    holds one message with exactly the accepted remote recipients."""
    s = session(srv, "submission", auth=True)
    assert say(s, f"MAIL FROM:<{ALICE}> RET=HDRS ENVID=probe").startswith("250")
    accepted = []
    for case in CASES:
        ATTEMPTS["relay-submission-auth"] += 1
        if case.rcpt.startswith(f"<{LONG}") or "NOTIFY" in case.rcpt:
            continue
        reply = say(s, b"RCPT TO:" + case.rcpt.encode())
        if reply.startswith("250") and case.remote:
            accepted.append(case.remote)
        local = case.local or case.submission_local
        assert reply.startswith("250") == bool(case.remote or local), (case.rcpt, reply)
    assert say(s, "DATA").startswith("354")
    assert say(s, message("relay several").rstrip(b"\r\n")).startswith("250")
    s.close()
    [msg] = queue(srv).messages()
    assert sorted(r.address for r in msg.recipients) == sorted(accepted)
    assert msg.sender == ALICE and msg.account == ALICE
    clear_queue(srv)


def test_queue_list_command_shows_nothing_queued(srv: RunningServer) -> None:
    """What an administrator sees: ``postfach queue list`` after the whole battery."""
    env = {**os.environ, "POSTFACH_HTTP": "off"}
    out = subprocess.run(
        [sys.executable, "-m", "postfach", "--data", str(srv.data), "queue", "list"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=True,
    ).stdout
    assert "0 message(s) queued" in out, out


def test_inbound_partial_failure_dsn_is_the_only_queued_mail(srv: RunningServer) -> None:
    """The one way inbound mail puts something in the queue: a DSN (RFC 5321 §6.1) to the
    envelope sender when DATA was accepted for one local recipient and refused for another
    (mailbox full, no SIZE declared). It goes to the sender only, from the null sender, and
    carries the original's headers, never its body: a forged sender cannot relay content."""
    srv.store.add_account("small@example.org", "x", 200, 0)
    try:
        s = session(srv, "smtp", auth=False)
        # the MX does not take RFC 3461 parameters, so RET=FULL cannot ask for the body back
        assert say(s, "MAIL FROM:<victim@remote.example> RET=FULL")[:3] == "555"
        assert say(s, "MAIL FROM:<victim@remote.example>").startswith("250")
        assert say(s, f"RCPT TO:<{ALICE}>").startswith("250")
        assert say(s, "RCPT TO:<small@example.org>").startswith("250")
        assert say(s, "DATA").startswith("354")
        body = b"From: <victim@remote.example>\r\nSubject: backscatter probe\r\n\r\n"
        body += b"RELAYED-CONTENT " * 40 + b"\r\n."
        assert say(s, body).startswith("250")
        s.close()
        [msg] = queue(srv).messages()
        assert msg.sender == "" and [r.address for r in msg.recipients] == ["victim@remote.example"]
        data = queue(srv).message_data(msg.id)
        assert data is not None and b"Subject: backscatter probe" in data
        assert b"RELAYED-CONTENT" not in data
        assert b"text/rfc822-headers" in data
    finally:
        clear_queue(srv)
        srv.store.delete_account("small@example.org")


def test_mx_takes_no_auth_even_over_tls(srv: RunningServer) -> None:
    """The MX listener offers no AUTH: a valid password over STARTTLS is still refused, and the
    connection stays an unauthenticated one that cannot relay."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with smtplib.SMTP("127.0.0.1", srv.port("smtp"), timeout=30) as s:
        s.ehlo("client.test")
        assert not s.has_extn("auth")
        s.starttls(context=ctx)
        s.ehlo("client.test")
        assert not s.has_extn("auth")
        ATTEMPTS["relay-smtp"] += 1
        code, text = s.docmd("AUTH", f"PLAIN {plain('', ALICE, PASSWORDS[ALICE])}")
        assert code == 535 and text.startswith(b"5.7.8"), (code, text)
        assert s.docmd("MAIL", f"FROM:<{ALICE}>")[0] == 250
        code, text = s.docmd("RCPT", "TO:<victim@remote.example>")
        assert (code, text[:5]) == (554, b"5.7.1")
    assert queue(srv).messages() == []

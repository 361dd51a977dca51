"""Postfix as the sending MTA, postfach as the receiving one, over loopback (issue 4 point 7).

A private Postfix (Debian ``postfix``, own configuration under /tmp, no DNS) has a local
sender ``dave@remote.test`` with a Maildir and routes ``example.org`` to postfach's SMTP
listener with ``transport_maps`` (``[127.0.0.1]:port``, opportunistic STARTTLS). The test
hands a message to Postfix over SMTP, as dave's mail program would, and looks at what
postfach stored, or at the bounce Postfix wrote into dave's Maildir.
"""

from __future__ import annotations

import email
import email.policy
import os
import shutil
import smtplib
from collections.abc import Iterator
from email.message import EmailMessage
from pathlib import Path

import pytest
from interop_clients import ALICE, stored

from outbound_support import PostfixPeer, free_port, wait_for
from support import RunningServer, start_server

pytestmark = [
    pytest.mark.interop,
    pytest.mark.skipif(
        shutil.which("postfix") is None or os.geteuid() != 0,
        reason="a private Postfix instance needs the Debian postfix package and root",
    ),
]

DAVE = "dave@remote.test"
QUOTA = 2000  # bytes; one message of the test below fits, the next does not


def _server(tmp_path: Path, config: str) -> RunningServer:
    data = tmp_path / "data"
    data.mkdir()
    (data / "postfach.toml").write_text(config)
    s = start_server(data)
    s.add_user(ALICE, quota=QUOTA)
    return s


@pytest.fixture
def srv(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[RunningServer]:
    s = _server(tmp_path, getattr(request, "param", ""))
    try:
        yield s
    finally:
        s.stop()


@pytest.fixture
def postfix(srv: RunningServer, request: pytest.FixtureRequest) -> Iterator[PostfixPeer]:
    p = PostfixPeer(
        [DAVE],
        free_port(),
        relay_to={"example.org": srv.port("smtp")},
        main_cf=getattr(request, "param", ""),
    )
    try:
        yield p
    finally:
        p.stop()


def _send_via_postfix(postfix: PostfixPeer, subject: str, size: int = 0) -> None:
    body = "Hello Alice, this comes through Postfix.\r\n" + "x" * size
    with smtplib.SMTP("127.0.0.1", postfix.port, timeout=30) as s:
        s.ehlo("client.remote.test")
        refused = s.sendmail(
            DAVE, [ALICE],
            f"From: Dave <{DAVE}>\r\nTo: <{ALICE}>\r\nSubject: {subject}\r\n"
            f"Message-ID: <{subject.replace(' ', '.')}@remote.test>\r\n\r\n{body}".encode(),
        )  # fmt: skip
    assert refused == {}  # Postfix takes it: the refusal, if any, comes later from postfach


def _fill(srv: RunningServer) -> None:
    """Alice's mailbox reaches its quota (a local delivery, straight into postfach)."""
    filler = b"From: a@remote.example\r\nSubject: filler\r\n\r\n" + b"y" * 70 + b"\r\n"
    filler += (b"y" * 70 + b"\r\n") * ((QUOTA - 600) // 72)  # room for headers
    assert srv.send([ALICE], filler) == {}
    assert len(stored(srv)) == 1


def test_postfix_relays_to_postfach_over_starttls(srv: RunningServer, postfix: PostfixPeer) -> None:
    _send_via_postfix(postfix, "via postfix")
    wait_for(lambda: stored(srv), what=f"delivery to postfach\n{postfix.log()}")
    [got] = stored(srv)
    msg = email.message_from_bytes(got, policy=email.policy.default)
    assert msg["Subject"] == "via postfix" and msg["Return-Path"] == f"<{DAVE}>"
    received = msg.get_all("Received")
    assert len(received) == 2
    # Newest first: postfach's own line names Postfix's HELO and says the session was TLS ...
    assert "from mx.remote.test" in received[0] and "with ESMTPS" in received[0]
    # ... below it Postfix's line for the hand-over from the test's client.
    assert "by mx.remote.test (Postfix)" in received[1]
    assert "Hello Alice, this comes through Postfix." in msg.get_content()
    # Postfix logs the result after postfach's 250: wait for it, then check it used TLS.
    wait_for(lambda: "status=sent" in postfix.log(), what=f"Postfix's log\n{postfix.log()}")
    assert "TLS connection established to 127.0.0.1" in postfix.log()
    assert postfix.queue() == []


def _dsn_parts(dsn: bytes) -> tuple[EmailMessage, str, str]:
    msg = email.message_from_bytes(dsn, policy=email.policy.default)
    assert isinstance(msg, EmailMessage)
    assert msg.get_content_type() == "multipart/report"
    assert msg.get_param("report-type") == "delivery-status"
    parts = list(msg.iter_parts())
    assert [p.get_content_type() for p in parts][:2] == ["text/plain", "message/delivery-status"]
    status = parts[1].as_string()
    return msg, parts[0].get_content(), status


@pytest.mark.parametrize(
    ("postfix", "stage"),
    [
        # Postfix declares SIZE=; postfach sees the message will not fit and refuses at RCPT.
        ("", "RCPT TO"),
        # Told to ignore postfach's SIZE, Postfix sends the data; the refusal comes after it.
        ("smtp_discard_ehlo_keywords = size\n", "end of DATA"),
    ],
    indirect=["postfix"],
    ids=["at-rcpt", "at-end-of-data"],
)
def test_full_postfach_mailbox_bounces_into_the_postfix_senders_maildir(
    srv: RunningServer, postfix: PostfixPeer, stage: str
) -> None:
    _fill(srv)
    _send_via_postfix(postfix, "too much", size=500)
    wait_for(lambda: postfix.maildir(DAVE), what=f"a bounce for dave\n{postfix.log()}")
    [dsn] = postfix.maildir(DAVE)
    msg, text, status = _dsn_parts(dsn)
    assert msg["From"].addresses[0].username.upper() == "MAILER-DAEMON"
    assert msg["To"] == DAVE
    assert ALICE in text and "Mailbox full" in text
    assert f"in reply to {stage} command" in text
    assert f"Final-Recipient: rfc822; {ALICE}" in status
    assert "Action: failed" in status and "Status: 5.2.2" in status
    assert "Remote-MTA: dns; 127.0.0.1" in status
    assert "Diagnostic-Code: smtp; 552 5.2.2 Mailbox full" in status
    assert "Subject: too much" in dsn.decode()  # the returned original (or its headers)
    assert [m for m in stored(srv) if b"too much" in m] == []  # nothing stored for alice
    assert len(stored(srv)) == 1
    assert "status=bounced" in postfix.log() and "status=deferred" not in postfix.log()
    wait_for(lambda: postfix.queue() == [], what="Postfix queue empty")


@pytest.mark.parametrize("srv", ['[quota]\nfull_reply = "temporary"\n'], indirect=True)
def test_temporary_quota_reply_is_retried_by_postfix_after_space_is_freed(
    srv: RunningServer, postfix: PostfixPeer
) -> None:
    _fill(srv)
    _send_via_postfix(postfix, "later please", size=500)
    wait_for(
        lambda: any(q.get("queue_name") == "deferred" for q in postfix.queue()),
        what=f"deferred in Postfix\n{postfix.log()}",
    )
    [queued] = postfix.queue()
    [rcpt] = queued["recipients"]
    assert rcpt["address"] == ALICE and "452 4.2.2 Mailbox full" in rcpt["delay_reason"]
    assert postfix.maildir(DAVE) == [] and len(stored(srv)) == 1  # no bounce, nothing stored
    # Alice deletes the filler; the operator (or Postfix's next retry) flushes the queue.
    acc = srv.store.get_account(ALICE)
    assert acc is not None
    box = srv.store.get_mailbox(acc.id, "INBOX")
    assert box is not None
    [filler] = srv.store.list_messages(box.id)
    srv.store.expunge(box.id, [filler.uid])
    assert stored(srv) == []
    postfix.flush()
    wait_for(lambda: stored(srv), what=f"the retried delivery\n{postfix.log()}")
    [got] = stored(srv)
    assert b"Subject: later please" in got
    wait_for(lambda: postfix.queue() == [], what="Postfix queue empty")
    assert postfix.maildir(DAVE) == []
    assert "status=deferred" in postfix.log() and "status=sent" in postfix.log()

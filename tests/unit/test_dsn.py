"""RFC 3464 delivery status notifications, parsed back with the email package."""

from __future__ import annotations

import email
from email.message import Message

from postfach.dsn import FailedRecipient, build_dsn

ORIGINAL = b"From: bob@example.org\r\nTo: alice@example.org\r\nSubject: big\r\n\r\nbody\r\n"


def dsn(full: bool = False) -> Message:
    raw = build_dsn(
        reporting_mta="mx.example.org",
        sender="bob@example.org",
        recipients=[
            FailedRecipient(
                "alice@example.org", "5.2.2", "552 5.2.2 Mailbox full: <alice@example.org>"
            )
        ],
        original=ORIGINAL,
        now=1_700_000_000,
        boundary="b0undary",
        message_id="x@mx.example.org",
        full=full,
        envelope_id="env-1",
    )
    assert b"\n" not in raw.replace(b"\r\n", b"")
    return email.message_from_bytes(raw)


def test_structure_is_multipart_report() -> None:
    m = dsn()
    assert m.get_content_type() == "multipart/report"
    assert m.get_param("report-type") == "delivery-status"
    assert m["To"] == "<bob@example.org>" and "MAILER-DAEMON" in m["From"]
    assert m["Auto-Submitted"] == "auto-replied"
    parts = m.get_payload()
    assert isinstance(parts, list)
    assert [p.get_content_type() for p in parts] == [
        "text/plain", "message/delivery-status", "text/rfc822-headers",
    ]  # fmt: skip
    human = parts[0].get_payload(decode=True).decode()
    assert "alice@example.org" in human and "mailbox is full" in human


def test_delivery_status_fields() -> None:
    status = dsn().get_payload()[1]
    blocks = status.get_payload()
    per_message, per_rcpt = blocks[0], blocks[1]
    assert per_message["Reporting-MTA"] == "dns; mx.example.org"
    assert per_message["Original-Envelope-Id"] == "env-1"
    assert per_rcpt["Final-Recipient"] == "rfc822; alice@example.org"
    assert per_rcpt["Action"] == "failed"
    assert per_rcpt["Status"] == "5.2.2"
    assert per_rcpt["Diagnostic-Code"].startswith("smtp; 552 5.2.2")


def test_headers_only_or_full_message() -> None:
    headers = dsn().get_payload()[2].get_payload()
    assert "Subject: big" in headers and "body" not in headers
    full = dsn(full=True).get_payload()[2]
    assert full.get_content_type() == "message/rfc822"
    inner = full.get_payload()[0]
    assert inner["Subject"] == "big" and inner.get_payload().strip() == "body"

"""Delivery status notifications (RFC 3464 multipart/report), pure core.

The message a sender receives when mail could not be delivered, e.g. because the mailbox is full:
a human-readable part, a machine-readable ``message/delivery-status`` part, and the original
headers (``text/rfc822-headers``) or, with RET=FULL, the whole original message.
"""

from __future__ import annotations

import email.utils
import re
from dataclasses import dataclass

_HEADER_END = re.compile(rb"\r?\n\r?\n")


@dataclass(frozen=True, slots=True)
class FailedRecipient:
    address: str
    status: str  # enhanced status code, e.g. "5.2.2"
    diagnostic: str  # the SMTP reply, e.g. "552 5.2.2 Mailbox full"
    action: str = "failed"  # failed | delayed | delivered | relayed | expanded


def _clean(text: str) -> str:
    return re.sub(r"[\r\n]+", " ", text).strip()


def build_dsn(
    *,
    reporting_mta: str,
    sender: str,
    recipients: list[FailedRecipient],
    original: bytes,
    now: float,
    boundary: str,
    message_id: str,
    full: bool = False,
    envelope_id: str | None = None,
) -> bytes:
    """The complete DSN message (CRLF line ends), from the null sender to ``sender``.

    ``now`` (unix seconds), ``boundary`` and ``message_id`` are passed in so the output is
    deterministic for tests.
    """
    date = email.utils.formatdate(now, usegmt=True)
    failed = [r for r in recipients if r.action == "failed"]
    subject = (
        "Undelivered Mail Returned to Sender" if failed else "Delayed Mail (still being retried)"
    )
    lines = [
        f"From: Mail Delivery System <MAILER-DAEMON@{reporting_mta}>",
        f"To: <{_clean(sender)}>",
        f"Subject: {subject}",
        f"Date: {date}",
        f"Message-ID: <{message_id}>",
        "Auto-Submitted: auto-replied",
        "MIME-Version: 1.0",
        f'Content-Type: multipart/report; report-type=delivery-status; boundary="{boundary}"',
        "",
        "This is a MIME-encapsulated message.",
        "",
        f"--{boundary}",
        "Content-Type: text/plain; charset=utf-8",
        "Content-Transfer-Encoding: 8bit",
        "",
        f"This is the mail system at host {reporting_mta}.",
        "",
    ]
    if failed:
        lines += ["Your message could not be delivered to the following recipients:", ""]
    else:
        lines += ["Your message has not been delivered yet; delivery will be retried:", ""]
    for r in recipients:
        reason = _clean(r.diagnostic)
        if r.status == "5.2.2" or r.status == "4.2.2":
            reason += " (the recipient's mailbox is full)"
        lines.append(f"<{_clean(r.address)}>: {reason}")
    lines += [
        "",
        f"--{boundary}",
        "Content-Type: message/delivery-status",
        "",
        f"Reporting-MTA: dns; {reporting_mta}",
    ]
    if envelope_id:
        lines.append(f"Original-Envelope-Id: {_clean(envelope_id)}")
    lines.append(f"Arrival-Date: {date}")
    for r in recipients:
        code = _clean(r.diagnostic)
        lines += [
            "",
            f"Final-Recipient: rfc822; {_clean(r.address)}",
            f"Action: {r.action}",
            f"Status: {r.status}",
            f"Diagnostic-Code: smtp; {code}",
        ]
    head = "\r\n".join(lines).encode("utf-8") + b"\r\n"
    if full:
        part = f"\r\n--{boundary}\r\nContent-Type: message/rfc822\r\n\r\n".encode()
        body = original if original.endswith(b"\r\n") else original + b"\r\n"
    else:
        part = f"\r\n--{boundary}\r\nContent-Type: text/rfc822-headers\r\n\r\n".encode()
        m = _HEADER_END.search(original)
        body = original[: m.start()] + b"\r\n" if m else original
    return head + part + body + f"\r\n--{boundary}--\r\n".encode()

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
    original_recipient: str | None = None  # RFC 3461 ORCPT, "rfc822;addr"
    remote_mta: str | None = None  # the server that gave the diagnostic


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
    delayed = [r for r in recipients if r.action == "delayed"]
    if failed:
        subject = "Undelivered Mail Returned to Sender"
    elif delayed:
        subject = "Delayed Mail (still being retried)"
    else:
        subject = "Successful Mail Delivery Report"
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
    elif delayed:
        lines += ["Your message has not been delivered yet; delivery will be retried:", ""]
    else:
        lines += ["Your message was delivered (or relayed) to the following recipients:", ""]
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
        lines.append("")
        if r.original_recipient:
            lines.append(f"Original-Recipient: {_clean(r.original_recipient)}")
        lines += [
            f"Final-Recipient: rfc822; {_clean(r.address)}",
            f"Action: {r.action}",
            f"Status: {r.status}",
        ]
        if r.remote_mta:
            lines.append(f"Remote-MTA: dns; {_clean(r.remote_mta)}")
        lines.append(f"Diagnostic-Code: smtp; {code}")
    head = "\r\n".join(lines).encode("utf-8") + b"\r\n"
    if full:
        part = f"\r\n--{boundary}\r\nContent-Type: message/rfc822\r\n\r\n".encode()
        body = original if original.endswith(b"\r\n") else original + b"\r\n"
    else:
        part = f"\r\n--{boundary}\r\nContent-Type: text/rfc822-headers\r\n\r\n".encode()
        m = _HEADER_END.search(original)
        body = original[: m.start()] + b"\r\n" if m else original
    return head + part + body + f"\r\n--{boundary}--\r\n".encode()


# ---- RFC 3461 parameters (ESMTP DSN extension) ----------------------------------------------

_XCHAR = re.compile(r"\+([0-9A-F]{2})")
RET_VALUES = frozenset({"FULL", "HDRS"})
NOTIFY_VALUES = frozenset({"NEVER", "SUCCESS", "FAILURE", "DELAY"})


def xtext_encode(text: str) -> str:
    """RFC 3461 §4: printable ASCII except "+" and "=", everything else as ``+HH``."""
    return "".join(
        c if 33 <= ord(c) <= 126 and c not in "+=" else "".join(f"+{b:02X}" for b in c.encode())
        for c in text
    )


def xtext_decode(text: str) -> str:
    """Decode xtext; raises ValueError on malformed input."""
    if any(not 33 <= ord(c) <= 126 or c == "=" for c in text):
        raise ValueError("not xtext")
    if "+" in _XCHAR.sub("", text):
        raise ValueError("bad xtext escape")
    raw = _XCHAR.sub(lambda m: chr(int(m.group(1), 16)), text).encode("latin-1")
    return raw.decode("utf-8", "replace")


def parse_notify(value: str) -> str:
    """RFC 3461 §4.1: NEVER alone, or a comma list of SUCCESS, FAILURE, DELAY."""
    parts = [p.upper() for p in value.split(",")]
    if not parts or any(p not in NOTIFY_VALUES for p in parts) or len(set(parts)) != len(parts):
        raise ValueError(f"bad NOTIFY value {value!r}")
    if "NEVER" in parts and len(parts) > 1:
        raise ValueError("NOTIFY=NEVER cannot be combined")
    return ",".join(parts)


def parse_orcpt(value: str) -> str:
    """RFC 3461 §4.2: ``addr-type ";" xtext`` -> ``"rfc822;decoded"``."""
    kind, sep, addr = value.partition(";")
    if not sep or not kind or not addr:
        raise ValueError(f"bad ORCPT value {value!r}")
    return f"{kind.lower()};{xtext_decode(addr)}"

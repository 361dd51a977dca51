"""Inbound SMTP (MX role) and LMTP: aiosmtpd hooks translated into a delivery transaction.

aiosmtpd owns the protocol; this module only maps its hooks onto `DeliveryTxn` and `SmtpError`
onto reply lines (the one place where SMTP errors become bytes).
"""

from __future__ import annotations

import logging
import re
import ssl
from typing import Any

from aiosmtpd.lmtp import LMTP
from aiosmtpd.smtp import SMTP, Envelope, Session

from postfach.delivery import DeliveryTxn, LocalDelivery
from postfach.errors import SmtpError
from postfach.limits import Limits
from postfach.smtp import lean
from postfach.smtp.address import FastAddressSMTP
from postfach.smtp.data import BlockDataSMTP
from postfach.smtp.graceful import GracefulSMTP
from postfach.smtp.limits import ConnectionLimits, LimitedSMTP
from postfach.smtp.replies import HeldReplies

log = logging.getLogger(__name__)

S250_OK = "250 2.0.0 OK"
S250_SENDER_OK = "250 2.1.0 Sender OK"
S250_RCPT_OK = "250 2.1.5 Recipient OK"
S451_LOCAL_ERROR = "451 4.3.0 Local error, try again later"
S503_MAIL_FIRST = "503 5.5.1 Error: need MAIL command"


EHLO_LAST = "250 ENHANCEDSTATUSCODES"
_HAS_ENHANCED = re.compile(r"^\d{3}[ -][245]\.\d{1,3}\.\d{1,3}(?: |$)")
# RFC 3463 codes for the replies aiosmtpd writes itself (syntax errors, RSET, QUIT, ...).
_ENHANCED_FOR = {
    "220": "2.0.0", "221": "2.0.0", "250": "2.0.0", "251": "2.1.5", "252": "2.0.0",
    "421": "4.3.0", "451": "4.3.0", "452": "4.3.1", "500": "5.5.2", "501": "5.5.4",
    "502": "5.5.1", "503": "5.5.1", "504": "5.5.4", "530": "5.7.0", "535": "5.7.8",
    "552": "5.3.4", "554": "5.0.0", "555": "5.5.4",
}  # fmt: skip


def with_enhanced_code(line: str) -> str:
    """Add an RFC 2034 enhanced status code to a reply line that lacks one."""
    code = line[:3]
    if len(line) < 4 or line[3] not in " -" or _HAS_ENHANCED.match(line):
        return line
    enhanced = _ENHANCED_FOR.get(code) or {"2": "2.0.0", "4": "4.0.0", "5": "5.0.0"}.get(code[0])
    if enhanced is None:  # 3xx intermediate replies (354, 334) carry none
        return line
    return f"{line[:4]}{enhanced} {line[4:]}"


# Control characters are not reply text (RFC 5321 §4.2 textstring); aiosmtpd echoes an unknown
# command verb back, and a client sending binary would get NULs and escapes in the reply.
# CRLF between the lines of a multi-line reply stays; a bare CR or LF does not.
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]|\r(?!\n)|(?<!\r)\n")


def reply_text(status: str, extended: bool) -> str:
    """A reply as sent: control characters replaced, and after EHLO (``extended``) every line
    with an enhanced status code, except the lines of the EHLO answer itself."""
    if _CONTROL.search(status):
        status = _CONTROL.sub("?", status)
    if extended and not (status.startswith("250-") or status == EHLO_LAST):
        status = "\r\n".join(with_enhanced_code(x) for x in status.split("\r\n"))
    return status


# Most replies are a few fixed texts: their rewritten form is kept (bounded: replies that echo
# an address or carry a SASL challenge fill it up, and a full cache starts over).
_REPLY_CACHE: dict[tuple[str, bool], str] = {}
_REPLY_CACHE_MAX = 256


class _EnhancedCodes:
    """Mixin: every reply after EHLO carries an enhanced status code (RFC 2034 §3); control
    characters in reply text become ``?``."""

    async def push(self, status: str | bytes) -> None:
        if isinstance(status, str):
            session = getattr(self, "session", None)
            key = (status, session is not None and bool(session.extended_smtp))
            text = _REPLY_CACHE.get(key)
            if text is None:
                text = reply_text(*key)
                if len(_REPLY_CACHE) >= _REPLY_CACHE_MAX:
                    _REPLY_CACHE.clear()  # full of one-off texts: the frequent ones come back
                _REPLY_CACHE[key] = text
            status = text
        await super().push(status)  # type: ignore[misc]


class PostfachSMTP(
    GracefulSMTP,
    lean.LazyTimeout,
    _EnhancedCodes,
    HeldReplies,
    LimitedSMTP,
    BlockDataSMTP,
    FastAddressSMTP,
):
    pass


class PostfachLMTP(
    GracefulSMTP,
    lean.LazyTimeout,
    _EnhancedCodes,
    HeldReplies,
    LimitedSMTP,
    BlockDataSMTP,
    FastAddressSMTP,
    LMTP,
):
    pass


def _txn(envelope: Envelope) -> DeliveryTxn | None:
    txn: DeliveryTxn | None = getattr(envelope, "postfach_txn", None)
    return txn


class InboundHandler:
    """aiosmtpd handler for the MX listener; also used by LMTP (per-recipient DATA replies)."""

    def __init__(self, delivery: LocalDelivery, *, lmtp: bool = False) -> None:
        self.delivery = delivery
        self.lmtp = lmtp

    async def handle_EHLO(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        hostname: str,
        responses: list[str],
    ) -> list[str]:
        session.host_name = hostname
        # aiosmtpd handles pipelined commands: advertise it, BDAT (postfach.smtp.data), and
        # the enhanced codes we send.
        # No AUTH on this listener (inbound mail needs none; submission is another port), and
        # the last line is a keyword of ours so `push` can tell the EHLO answer apart.
        keep = [r for r in responses[:-1] if not r.startswith("250-AUTH")]
        return [*keep, "250-PIPELINING", "250-CHUNKING", EHLO_LAST]

    async def handle_MAIL(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        mail_options: list[str],
    ) -> str:
        declared: int | None = None
        for opt in mail_options:
            key, _, value = opt.partition("=")
            if key.upper() == "SIZE" and value.isdigit():
                declared = int(value)
        peer = session.peer
        peer_ip = str(peer[0]) if isinstance(peer, tuple) else str(peer)
        if self.lmtp:
            protocol = "LMTP"
        elif not session.extended_smtp:
            protocol = "SMTP"
        else:
            protocol = "ESMTPS" if session.ssl else "ESMTP"
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        envelope.postfach_txn = self.delivery.start(  # type: ignore[attr-defined]
            address,
            helo=session.host_name or "",
            peer_ip=peer_ip,
            protocol=protocol,
            declared_size=declared,
        )
        return S250_SENDER_OK

    async def handle_RCPT(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        rcpt_options: list[str],
    ) -> str:
        txn = _txn(envelope)
        if txn is None:
            return S503_MAIL_FIRST
        try:
            txn.add_rcpt(address)  # a few indexed reads: cheaper on the loop than a thread hop
        except SmtpError as exc:
            log.info("event=rcpt_refused rcpt=<%s> reply=%r", address[:200], exc.reply())
            return exc.reply()
        except Exception:
            log.exception("event=rcpt_failed rcpt=<%s>", address[:200])
            return S451_LOCAL_ERROR
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return S250_RCPT_OK

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        txn = _txn(envelope)
        if txn is None or not txn.recipients:
            return "503 5.5.1 Error: need RCPT command"
        data: bytes = envelope.original_content or b""  # decode_data=False: always bytes
        try:
            outcomes = await txn.deliver(data)
        except SmtpError as exc:
            log.info("event=data_refused reply=%r", exc.reply())
            if self.lmtp:
                return "\r\n".join(exc.reply() for _ in txn.recipients)
            return exc.reply()
        except Exception:
            log.exception("event=data_failed")
            if self.lmtp:
                return "\r\n".join(S451_LOCAL_ERROR for _ in txn.recipients)
            return S451_LOCAL_ERROR
        if self.lmtp:
            # RFC 2033 §4.2: one reply per accepted recipient, in RCPT order.
            return "\r\n".join(
                o.error.reply() if o.error else f"250 2.0.0 <{o.address}> delivered"
                for o in outcomes
            )
        failed = [o for o in outcomes if o.error is not None]
        if not failed:
            return S250_OK
        if len(failed) == len(outcomes):
            # Every recipient refused for the same reason class: tell the client with the first.
            err = failed[0].error
            assert err is not None
            return err.reply()
        # Mixed: the message is stored for some recipients, so the transaction must succeed and
        # the sender learns about the others from a DSN (RFC 5321 §6.1).
        try:
            await txn.bounce(failed, data)
        except Exception:
            log.exception("event=bounce_failed")
        return S250_OK


def make_smtp_factory(
    delivery: LocalDelivery,
    *,
    hostname: str,
    tls_context: ssl.SSLContext | None,
    data_size_limit: int,
    lmtp: bool = False,
    timeout: float = 300,
    limits: Limits | None = None,
) -> Any:
    """A protocol factory for ``loop.create_server`` (one aiosmtpd protocol per connection)."""
    handler = InboundHandler(delivery, lmtp=lmtp)
    shared = ConnectionLimits(limits)
    lean.install()

    def factory() -> SMTP:
        cls = PostfachLMTP if lmtp else PostfachSMTP
        return cls(
            handler,
            hostname=hostname,
            ident="postfach ESMTP",
            data_size_limit=data_size_limit,
            enable_SMTPUTF8=True,
            decode_data=False,
            tls_context=None if lmtp else tls_context,
            timeout=timeout,
            auth_require_tls=True,
            connection_limits=shared,
        )

    return factory

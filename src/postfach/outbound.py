"""Message submission as a transaction: local recipients to the store, remote ones to the queue
(services ring).

The submission listener (``smtp/submission.py``) translates aiosmtpd's hooks into this, exactly
as the MX listener does with `DeliveryTxn`: ``start → add_rcpt → submit``. Policy lives here:

* the envelope sender and every From (and Sender) address must be the authenticated account
  or an alias that reaches it (RFC 6409 §6.1 allows the MSA to refuse what it cannot vouch
  for): ``553 5.7.1``;
* Message-ID and Date are added when missing (RFC 6409 §8.3, §8.4);
* local recipients go through the same `DeliveryTxn` as inbound mail (quota included). A full
  local mailbox is accepted at RCPT and the sender gets a DSN with 5.2.2 in their INBOX, unless
  ``refuse_full_mailbox`` makes RCPT refuse it instead;
* remote recipients are written to the queue (durable) before the client gets its ``250``;
* the message is DKIM-signed for its From domain when a signer is configured; an 8-bit body is
  made 7-bit (quoted-printable/base64, `postfach.mime.downconvert`) before signing, so that no
  server on the way needs to convert it and break the signature;
* a copy goes to the sender's Sent folder when the account asks for it (``sent_copy = auto``),
  after a window in which the client's own APPEND of the same Message-ID wins.
"""

from __future__ import annotations

import asyncio
import email.parser
import email.policy
import email.utils
import logging
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from postfach.delivery import (
    DeliveryTxn,
    LocalDelivery,
    RcptOutcome,
    has_smuggling,
    is_bare_postmaster,
    validate_address,
)
from postfach.dsn import FailedRecipient
from postfach.errors import OverQuota, SmtpError, StoreError
from postfach.mime.downconvert import has_8bit, to_7bit
from postfach.mime.structure import normalize_crlf
from postfach.queue.bounce import Bouncer
from postfach.queue.schedule import NOTIFY_FAILURE, NOTIFY_SUCCESS, notify_set
from postfach.queue.store import NewRecipient, QueueStore, SentCopy
from postfach.store.api import Flag
from postfach.store.sqlite import AppendItem

log = logging.getLogger(__name__)

_HEADER_END = re.compile(rb"\r\n\r\n")
_MESSAGE_ID = re.compile(rb"(?im)^message-id:[ \t]*([^\r\n]*(?:\r\n[ \t][^\r\n]*)*)")


@dataclass(frozen=True, slots=True)
class SubmitSettings:
    hostname: str
    refuse_full_mailbox: bool = False
    max_recipients: int = 1000
    sent_copy_window: float = 60.0


def header_block(message: bytes) -> bytes:
    m = _HEADER_END.search(message)
    return message[: m.start() + 2] if m else message


def has_header(message: bytes, name: str) -> bool:
    prefix = name.lower().encode() + b":"
    return any(line.lower().startswith(prefix) for line in header_block(message).split(b"\r\n"))


def message_id_of(message: bytes) -> str | None:
    m = _MESSAGE_ID.search(header_block(message))
    if not m:
        return None
    return b" ".join(m.group(1).split()).decode("utf-8", "replace") or None


def header_addresses(message: bytes, name: str) -> list[str] | None:
    """The addresses in every ``name`` header, None when there is no such header."""
    return header_address_map(message, (name,))[name]


def header_address_map(message: bytes, names: tuple[str, ...]) -> dict[str, list[str] | None]:
    """`header_addresses` for several fields with one parse of the header."""
    parsed = email.parser.BytesHeaderParser(policy=email.policy.compat32).parsebytes(
        header_block(message) + b"\r\n"
    )
    out: dict[str, list[str] | None] = {}
    for name in names:
        values = parsed.get_all(name)
        out[name] = (
            [addr.lower() for _n, addr in email.utils.getaddresses([str(v) for v in values])]
            if values
            else None
        )
    return out


@dataclass(slots=True)
class SubmitTxn:
    service: Outbound
    account: str
    mail_from: str
    local: DeliveryTxn
    envid: str | None = None
    ret: str | None = None
    remote: list[NewRecipient] = field(default_factory=list)
    full_local: list[RcptOutcome] = field(default_factory=list)  # accepted, to be bounced
    local_notify: dict[str, str | None] = field(default_factory=dict)
    local_orcpt: dict[str, str | None] = field(default_factory=dict)

    @property
    def count(self) -> int:
        return len(self.local.recipients) + len(self.remote) + len(self.full_local)

    def add_rcpt(self, address: str, notify: str | None = None, orcpt: str | None = None) -> None:
        """Accept a recipient or raise the SmtpError to answer RCPT with (runs in a thread)."""
        s = self.service
        if self.count >= s.settings.max_recipients:
            raise SmtpError(452, "4.5.3", "Too many recipients")
        bare_postmaster = is_bare_postmaster(address)
        domain = "" if bare_postmaster else validate_address(address)[1]
        if bare_postmaster or s.local.store.is_local_domain(domain):
            try:
                self.local.add_rcpt(address)
            except SmtpError as exc:
                if exc.enhanced not in ("5.2.2", "4.2.2") or s.settings.refuse_full_mailbox:
                    raise
                # Accepted; the sender learns from a DSN (DESIGN.md "Delivery, quota and bounces").
                full = SmtpError(552, "5.2.2", f"Mailbox full: <{address}> is over quota")
                self.full_local.append(RcptOutcome(address, full))
            self.local_notify[address] = notify
            self.local_orcpt[address] = orcpt
            return
        self.remote.append(NewRecipient(address, notify, orcpt))

    def check_headers(self, message: bytes) -> list[str]:
        """RFC 6409 §6.1: From (and Sender) must be the account's own addresses; the From
        addresses."""
        s = self.service
        fields = header_address_map(message, ("From", "Sender"))
        froms = fields["From"]
        if not froms:
            raise SmtpError(550, "5.6.0", "Message has no From header")
        for name in ("From", "Sender"):
            for addr in fields[name] or []:
                if not s.sender_allowed(self.account, addr):
                    raise SmtpError(
                        553, "5.7.1", f"{name} <{addr}> is not an address of {self.account}"
                    )
        return froms

    def complete_headers(self, message: bytes) -> bytes:
        """RFC 6409 §8.3, §8.4: add Date and Message-ID when the client did not."""
        extra = b""
        if not has_header(message, "Message-ID"):
            token = f"{secrets.token_hex(12)}@{self.service.settings.hostname}"
            extra += f"Message-ID: <{token}>\r\n".encode()
        if not has_header(message, "Date"):
            date = email.utils.formatdate(self.service.clock(), usegmt=True)
            extra += f"Date: {date}\r\n".encode()
        return extra + message

    async def submit(self, data: bytes) -> None:
        """Store or queue the message for every recipient; raises SmtpError to refuse it."""
        s = self.service
        if has_smuggling(data):
            raise SmtpError(550, "5.5.2", "Message refused: bare CR or LF next to a dot line")
        message = normalize_crlf(data)
        froms = self.check_headers(message)
        message = self.complete_headers(message)
        loop = asyncio.get_running_loop()
        if s.signer is not None:
            domain = froms[0].rpartition("@")[2]
            if has_8bit(message):
                # A signature covers the body as sent; a relay without 8BITMIME would have to
                # convert it later and break the signature. Converting now (RFC 6376 §5.3
                # recommends it) keeps it valid on every path.
                message = await loop.run_in_executor(None, to_7bit, message)
            try:
                message = await loop.run_in_executor(None, s.signer, message, domain)
            except Exception:
                log.exception("event=dkim_sign_failed domain=%s", domain)
        failed: list[RcptOutcome] = list(self.full_local)
        delivered: list[str] = []
        if self.local.recipients:
            outcomes = await self.local.deliver(message)
            failed += [o for o in outcomes if o.error is not None]
            delivered = [o.address for o in outcomes if o.error is None]
        if self.remote:
            received = self.local.service.trace_headers(
                self.mail_from, self.local.helo, self.local.peer_ip, self.local.protocol
            ).split(b"\r\n", 1)[1]  # Received only: Return-Path belongs to final delivery
            await s.queue.aenqueue(
                self.mail_from, self.remote, received + message, s.clock(),
                envid=self.envid, ret=self.ret, account=self.account,
            )  # fmt: skip
            s.wake()
        log.info(
            "event=submitted account=%s from=<%s> local=%d remote=%d full=%d size=%d",
            self.account, self.mail_from[:200], len(self.local.recipients), len(self.remote),
            len(failed), len(message),
        )  # fmt: skip
        await self._local_dsns(failed, delivered, message)
        if s.wants_sent_copy(self.account):
            await s.schedule_sent_copy(self.account, message)

    async def _local_dsns(self, failed: list[RcptOutcome], ok: list[str], message: bytes) -> None:
        s = self.service
        entries = [
            FailedRecipient(
                o.address,
                o.error.enhanced,
                o.error.reply(),
                "failed",
                self.local_orcpt.get(o.address),
            )
            for o in failed
            if o.error is not None
            and NOTIFY_FAILURE in notify_set(self.local_notify.get(o.address))
        ]
        entries += [
            FailedRecipient(
                a,
                "2.0.0",
                "250 2.0.0 Delivered to the mailbox",
                "delivered",
                self.local_orcpt.get(a),
            )
            for a in ok
            if NOTIFY_SUCCESS in notify_set(self.local_notify.get(a))
        ]
        if not entries:
            return
        full = self.ret == "FULL" and any(e.action == "failed" for e in entries)
        dsn = s.bouncer.build(self.mail_from, entries, message, full=full, envid=self.envid)
        try:
            await s.bouncer.send(self.mail_from, dsn)
        except Exception:
            log.exception("event=bounce_failed sender=<%s>", self.mail_from[:200])


class Outbound:
    def __init__(
        self,
        local: LocalDelivery,
        queue: QueueStore,
        bouncer: Bouncer,
        settings: SubmitSettings,
        *,
        signer: Callable[[bytes, str], bytes] | None = None,
        wants_sent_copy: Callable[[str], bool] = lambda _account: False,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.local = local
        self.queue = queue
        self.bouncer = bouncer
        self.settings = settings
        self.signer = signer
        self.wants_sent_copy = wants_sent_copy
        self.clock = clock
        self.wake: Callable[[], None] = lambda: None

    def sender_allowed(self, account: str, address: str) -> bool:
        """The account itself, or an alias (not a catch-all) that delivers to it."""
        addr = address.lower()
        if addr == account.lower():
            return True
        store = self.local.store
        if not any(a.address == addr for a in store.list_aliases()):
            return False
        return account.lower() in (store.resolve(addr) or [])

    def start(
        self,
        account: str,
        mail_from: str,
        *,
        helo: str = "",
        peer_ip: str = "",
        protocol: str = "ESMTPSA",
        declared_size: int | None = None,
        envid: str | None = None,
        ret: str | None = None,
    ) -> SubmitTxn:
        """Begin a transaction; SmtpError 553 5.7.1 when the sender is not the account's."""
        if not mail_from or not self.sender_allowed(account, mail_from):
            raise SmtpError(553, "5.7.1", f"Sender <{mail_from}> is not an address of {account}")
        local = self.local.start(
            mail_from, helo=helo, peer_ip=peer_ip, protocol=protocol, declared_size=declared_size
        )
        return SubmitTxn(self, account.lower(), mail_from, local, envid, ret)

    # ---- Sent copies ------------------------------------------------------------------------

    async def schedule_sent_copy(self, account: str, message: bytes) -> None:
        msgid = message_id_of(message) or ""
        window = self.settings.sent_copy_window
        if window <= 0:
            await self.place_sent_copy(SentCopy(0, account, msgid, self.clock(), message))
            return
        await asyncio.to_thread(
            self.queue.add_sent_copy, account, msgid, self.clock() + window, message
        )
        self.wake()

    async def place_sent_copy(self, copy: SentCopy) -> None:
        """Append to the Sent folder unless a message with this Message-ID arrived there since
        the submission (the client's own APPEND)."""
        store = self.local.store
        acc = store.get_account(copy.account)
        if acc is None:
            return
        boxes = store.list_mailboxes(acc.id)
        sent = next((b for b in boxes if b.special_use == "\\Sent"), None) or next(
            (b for b in boxes if b.name == "Sent"), None
        )
        if sent is None:
            log.info("event=sent_copy_skipped reason=no_sent_folder account=%s", acc.name)
            return
        since = copy.due - self.settings.sent_copy_window - 600
        if copy.message_id:
            for meta in reversed(store.list_messages(sent.id)):
                if meta.save_date < since:
                    break
                if message_id_of(store.read_blob(meta.blob)) == copy.message_id:
                    log.info("event=sent_copy_skipped reason=client_appended account=%s", acc.name)
                    return
        blob = await asyncio.get_running_loop().run_in_executor(None, self.local.prepare, copy.data)
        try:
            await store.aappend(sent.id, [AppendItem(blob, Flag.SEEN, (), int(copy.due))])
        except (OverQuota, StoreError) as exc:
            log.info("event=sent_copy_skipped reason=%r account=%s", str(exc), acc.name)

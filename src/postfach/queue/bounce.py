"""Delivery status notifications for queued mail: build (dsn.py) and route them (services ring).

A DSN goes from the null sender to the original envelope sender (RFC 3464, RFC 3461):

* never to the null sender (RFC 5321 §4.5.5): the failing message was itself a DSN, and
  bouncing it could loop forever. Such failures are only logged;
* to a local sender straight into the INBOX; to a remote sender through the queue, as a new
  message whose own failure is then never bounced (its sender is null): the loop protection.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from postfach.delivery import LocalDelivery
from postfach.dsn import FailedRecipient, build_dsn
from postfach.queue.runner import Notice
from postfach.queue.store import NewRecipient, QueuedMessage, QueueStore

log = logging.getLogger(__name__)


@dataclass
class Bouncer:
    hostname: str
    local: LocalDelivery
    queue: QueueStore
    wake: Callable[[], None] = field(default=lambda: None)
    clock: Callable[[], float] = time.time

    def build(
        self,
        sender: str,
        recipients: list[FailedRecipient],
        original: bytes,
        *,
        full: bool = False,
        envid: str | None = None,
    ) -> bytes:
        return build_dsn(
            reporting_mta=self.hostname,
            sender=sender,
            recipients=recipients,
            original=original,
            now=self.clock(),
            boundary=secrets.token_hex(12),
            message_id=f"{secrets.token_hex(12)}@{self.hostname}",
            full=full,
            envelope_id=envid,
        )

    async def notify(self, message: QueuedMessage, data: bytes, notices: list[Notice]) -> None:
        """The runner's `Notifier`: one DSN to the message's envelope sender."""
        if not message.sender:
            log.info(
                "event=dsn_suppressed reason=null_sender message=%d rcpts=%s",
                message.id, ",".join(n.recipient.address for n in notices)[:500],
            )  # fmt: skip
            return
        failed = any(n.action == "failed" for n in notices)
        dsn = self.build(
            message.sender,
            [
                FailedRecipient(
                    n.recipient.address,
                    n.reply.status,
                    n.reply.line(),
                    n.action,
                    n.recipient.orcpt,
                    n.reply.remote_mta or None,
                )
                for n in notices
            ],
            data,
            full=failed and message.ret == "FULL",
            envid=message.envid,
        )
        await self.send(message.sender, dsn)

    async def send(self, to: str, dsn: bytes) -> bool:
        """Deliver a DSN (already built) to ``to``: INBOX when local, else the queue."""
        if not to:
            return False
        s = self.local.store
        domain = to.rpartition("@")[2].lower().rstrip(".")
        if s.is_local_domain(domain):
            names = s.resolve(to)
            if not names:
                log.warning("event=dsn_dropped reason=unknown_local_sender to=<%s>", to[:200])
                return False
            message = self.local.trace_headers("", self.hostname, "127.0.0.1", "LOCAL") + dsn
            blob = await asyncio.get_running_loop().run_in_executor(
                None, self.local.prepare, message
            )
            ids = [acc.id for n in names if (acc := s.get_account(n)) is not None]
            results = await s.adeliver(ids, blob, int(self.clock()))
            stored = any(r.message is not None for r in results)
            if not stored:
                log.warning("event=dsn_dropped reason=mailbox_full to=<%s>", to[:200])
            return stored
        await self.queue.aenqueue("", [NewRecipient(to, notify="NEVER")], dsn, self.clock())
        self.wake()
        return True

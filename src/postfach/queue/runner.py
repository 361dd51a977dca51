"""The queue runner: finds due recipients, dials, records outcomes, sends DSNs (services ring).

Concurrency rules:

* One runner task per process. It groups due recipients by (message, domain), so one
  connection carries every recipient of a message at a domain, and starts one task per group.
* Per destination domain at most ``per_domain`` groups are in flight (an asyncio semaphore).
* Before dialling, each recipient's attempt count and next attempt time are committed
  (DESIGN.md, mox): a crash or kill during the attempt leaves a row that is simply retried at
  that time. Delivery is therefore at least once, never at most once.
* Recipients being dialled are kept in ``_inflight`` so that a short retry interval cannot
  start a second attempt of the same row while the first is running.

The network side is the injected `Transport` (``smtp/client.py`` in production), so this module
imports no sockets; DSNs go through the injected `Notifier` (``queue/bounce.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from random import Random
from typing import Protocol

from postfach.queue.schedule import (
    NOTIFY_DELAY,
    NOTIFY_FAILURE,
    NOTIFY_SUCCESS,
    Outcome,
    Reply,
    Schedule,
    delay_notice_due,
    expired,
    next_attempt,
    notify_set,
)
from postfach.queue.store import QueuedMessage, QueuedRecipient, QueueStore, SentCopy

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Envelope:
    sender: str
    envid: str | None = None
    ret: str | None = None


@dataclass(slots=True)
class SendResult:
    replies: dict[int, Reply]  # recipient id -> reply
    dsn_passed: bool = False  # the next hop took our RFC 3461 parameters (it reports, not us)


class Transport(Protocol):
    async def send(
        self, domain: str, envelope: Envelope, rcpts: Sequence[QueuedRecipient], message: bytes
    ) -> SendResult: ...


@dataclass(frozen=True, slots=True)
class Notice:
    """One recipient's line in a DSN."""

    recipient: QueuedRecipient
    action: str  # failed | delayed | relayed
    reply: Reply


class Notifier(Protocol):
    async def notify(self, message: QueuedMessage, data: bytes, notices: list[Notice]) -> None:
        """Send the envelope sender one DSN for these recipients (or nothing, see bounce.py)."""
        ...


SentCopyHandler = Callable[[SentCopy], Awaitable[None]]

DUE_BATCH = 1000  # due recipients read per look
LOOK_INTERVAL = 0.1  # seconds between two looks for due work, at least


@dataclass
class QueueRunner:
    store: QueueStore
    transport: Transport
    notifier: Notifier
    schedule: Schedule = field(default_factory=Schedule)
    per_domain: int = 4
    poll: float = 30.0
    sent_copy: SentCopyHandler | None = None
    clock: Callable[[], float] = time.time
    rand: Random = field(default_factory=Random)
    _wakeup: asyncio.Event = field(default_factory=asyncio.Event)
    _inflight: set[int] = field(default_factory=set)
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)
    _limits: dict[str, asyncio.Semaphore] = field(default_factory=dict)
    _main: asyncio.Task[None] | None = None
    _stopping: bool = False
    _all_inflight: bool = False  # the last look found due rows, every one already in flight
    _truncated: bool = False  # the last look found DUE_BATCH rows: there may be more

    def start(self) -> None:
        self._main = asyncio.get_running_loop().create_task(self._loop(), name="queue-runner")

    def wake(self) -> None:
        """New mail or a retry request: look for due work now (thread-safe only on the loop)."""
        self._wakeup.set()

    async def stop(self) -> None:
        """Stop dialling; attempts in flight are cancelled and simply retried after a restart."""
        self._stopping = True
        self._wakeup.set()
        if self._main is not None:
            self._main.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._main
        for t in list(self._tasks):
            t.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _loop(self) -> None:
        while not self._stopping:
            self._wakeup.clear()
            looked = time.monotonic()
            try:
                await self.run_once()
            except Exception:
                log.exception("event=queue_runner_error")
            await self._sleep()
            # A look reads every due row; under a stream of submissions (each one wakes us)
            # looking at most every LOOK_INTERVAL keeps that cost bounded.
            rest = LOOK_INTERVAL - (time.monotonic() - looked)
            if rest > 0 and not self._stopping:
                await asyncio.sleep(rest)

    async def _sleep(self) -> None:
        wait = self.poll
        nxt = [t for t in await asyncio.to_thread(self._next_times) if t is not None]
        if nxt:
            wait = max(0.05, min(wait, min(nxt) - self.clock()))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wakeup.wait(), wait)

    def _next_times(self) -> list[float | None]:
        # Everything due is already in flight (waiting for its domain's limit): the next thing
        # to look at is what becomes due later, not the rows already taken (looking again every
        # 50 ms re-read the whole backlog for nothing).
        after = self.clock() if self._all_inflight else None
        return [self.store.next_due(after), self.store.next_sent_copy()]

    async def run_once(self) -> list[asyncio.Task[None]]:
        """Start an attempt for every due group; return their tasks (tests await them)."""
        now = self.clock()
        due = await asyncio.to_thread(self.store.due, now, DUE_BATCH)
        groups: dict[tuple[int, str], list[QueuedRecipient]] = {}
        for r in due:
            if r.id not in self._inflight:
                groups.setdefault((r.message_id, r.domain), []).append(r)
        self._all_inflight = bool(due) and not groups
        self._truncated = len(due) >= DUE_BATCH
        started: list[asyncio.Task[None]] = []
        for (mid, domain), rcpts in groups.items():
            self._inflight.update(r.id for r in rcpts)
            started.append(self._spawn(self._attempt(mid, domain, rcpts)))
        if self.sent_copy is not None:
            for copy in await asyncio.to_thread(self.store.due_sent_copies, now):
                started.append(self._spawn(self._place_copy(copy)))
        return started

    def _spawn(self, coro: Awaitable[None]) -> asyncio.Task[None]:
        task: asyncio.Task[None] = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _place_copy(self, copy: SentCopy) -> None:
        assert self.sent_copy is not None
        try:
            await self.sent_copy(copy)
        except Exception:
            log.exception("event=sent_copy_failed account=%s", copy.account)
        await asyncio.to_thread(self.store.remove_sent_copy, copy.id)

    async def _attempt(self, mid: int, domain: str, rcpts: list[QueuedRecipient]) -> None:
        try:
            sem = self._limits.setdefault(domain, asyncio.Semaphore(self.per_domain))
            async with sem:
                await self._attempt_locked(mid, domain, rcpts)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("event=queue_attempt_error message=%d domain=%s", mid, domain)
        finally:
            self._inflight.difference_update(r.id for r in rcpts)
            if self._truncated:  # more was due than one look takes: look again now
                self._wakeup.set()

    async def _attempt_locked(self, mid: int, domain: str, rcpts: list[QueuedRecipient]) -> None:
        store = self.store
        msg, data = await asyncio.to_thread(lambda: (store.message(mid), store.message_data(mid)))
        if msg is None or data is None:  # deleted meanwhile (postfach queue delete)
            return
        live = {r.id for r in msg.recipients}
        rcpts = [r for r in rcpts if r.id in live]
        if not rcpts:
            return
        now = self.clock()
        await asyncio.to_thread(
            store.begin_attempt,
            [(r.id, next_attempt(self.schedule, r.attempts + 1, now, self.rand)) for r in rcpts],
            now,
        )
        env = Envelope(msg.sender, msg.envid, msg.ret)
        log.info(
            "event=outbound_attempt message=%d domain=%s rcpts=%d attempt=%d",
            mid, domain, len(rcpts), max(r.attempts for r in rcpts) + 1,
        )  # fmt: skip
        result = await self.transport.send(domain, env, rcpts, data)
        now = self.clock()
        done: list[int] = []
        notices: list[Notice] = []
        delayed: list[Notice] = []
        for r in rcpts:
            reply = result.replies.get(r.id) or Reply(451, "4.3.0", "No reply for recipient")
            outcome = reply.outcome
            notify = notify_set(r.notify)
            log.info(
                "event=outbound_result message=%d rcpt=<%s> outcome=%s reply=%r",
                mid, r.address[:200], outcome.value, reply.line()[:300],
            )  # fmt: skip
            if outcome is Outcome.DELIVERED:
                done.append(r.id)
                if NOTIFY_SUCCESS in notify and not result.dsn_passed:
                    notices.append(Notice(r, "relayed", reply))
            elif outcome is Outcome.PERMANENT or expired(self.schedule, msg.queued, now):
                done.append(r.id)
                if NOTIFY_FAILURE in notify:
                    if outcome is not Outcome.PERMANENT:
                        # RFC 3463 X.4.7: delivery time expired; failed is class 5.
                        reply = Reply(
                            554, "5.4.7", f"Delivery time expired; last reply: {reply.line()}",
                            reply.remote_mta,
                        )  # fmt: skip
                    notices.append(Notice(r, "failed", reply))
            else:
                await asyncio.to_thread(store.record_reply, r.id, reply.line())
                if NOTIFY_DELAY in notify and delay_notice_due(
                    self.schedule, msg.queued, now, r.delay_notified
                ):
                    delayed.append(Notice(r, "delayed", reply))
        if notices:
            await self.notifier.notify(msg, data, notices)
        if delayed:
            await self.notifier.notify(msg, data, delayed)
            await asyncio.to_thread(store.set_delay_notified, [n.recipient.id for n in delayed])
        if done:
            await asyncio.to_thread(store.finish, done)

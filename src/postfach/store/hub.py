"""Change publishing and maildrop locks, per account (services ring).

The store's writer thread calls `Hub.publish` after each group commit. The hub hands the changes
to the event loop (``call_soon_threadsafe``), where every subscriber of the account (an IMAP view,
an IDLE waiter, a POP3 session) gets them in commit order. Because the writer publishes before it
resolves the futures of the same commit, and both travel through the loop's FIFO ready queue, a
session is always told of a change before the client that made it gets its answer.

Changes committed by other processes on the same data directory reach the hub through the
store's change feed (`postfach.store.feed`): the store calls `publish` from its feed thread too.
``ChangesLost(ALL_ACCOUNTS)`` (the feed lost track) goes to the subscribers of every account.

The count of logged-in IMAP and POP3 sessions per account (``sessions``,
`postfach.limits.SessionCounter`) lives here; it is per process. POP3 maildrop locks hold across
processes and live with the store (`postfach.store.locks`).
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable

from postfach.limits import SessionCounter
from postfach.store.api import ALL_ACCOUNTS, AccountDeleted, Change, ChangesLost

log = logging.getLogger(__name__)

Subscriber = Callable[[Change], None]


class Hub:
    def __init__(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self._loop = loop
        self._subs: dict[int, set[Subscriber]] = {}
        self._queued = 0  # batches handed to the loop (under _queue_lock) ...
        self._delivered = 0  # ... and dispatched there, in the same order
        self._queue_lock = threading.Lock()
        #: logged-in IMAP and POP3 sessions per account (no limit until the app sets one)
        self.sessions = SessionCounter()

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop

    # ---- changes ------------------------------------------------------------------------------

    def subscribe(self, account_id: int, fn: Subscriber) -> Callable[[], None]:
        """Register fn for the account's changes; returns the function that unsubscribes."""
        self._subs.setdefault(account_id, set()).add(fn)

        def unsubscribe() -> None:
            subs = self._subs.get(account_id)
            if subs is not None:
                subs.discard(fn)
                if not subs:
                    del self._subs[account_id]

        return unsubscribe

    def publish(self, changes: list[Change]) -> None:
        """Called from the writer thread after COMMIT, from the change feed's thread, or from
        the loop itself. Always dispatched later, on the loop, in the order published (also
        when called on the loop: a batch must not overtake one still queued)."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        with self._queue_lock:
            try:
                loop.call_soon_threadsafe(self._deliver, changes)
            except RuntimeError:  # closed meanwhile
                return
            self._queued += 1

    def _deliver(self, changes: list[Change]) -> None:
        self._delivered += 1
        self._dispatch(changes)

    async def settled(self) -> None:
        """Return once every batch published before this call has been dispatched (on the
        loop). A session calls it after `SqliteMailstore.sync_feed` before it runs a command,
        so that it has heard of every change committed before the command arrived."""
        target = self._queued
        while self._delivered < target:
            await asyncio.sleep(0)

    def recheck_accounts(self, exists: Callable[[int], bool]) -> None:
        """Tell the subscribers of every account that no longer exists (deleted by another
        process, ``postfach user del``, which then signals the server) that it is gone."""
        gone = [AccountDeleted(a) for a in list(self._subs) if not exists(a)]
        if gone:
            self.publish(list[Change](gone))

    def _dispatch(self, changes: list[Change]) -> None:
        for change in changes:
            if isinstance(change, ChangesLost) and change.account_id == ALL_ACCOUNTS:
                self._dispatch([ChangesLost(a) for a in list(self._subs)])
                continue
            for fn in list(self._subs.get(change.account_id, ())):
                try:
                    fn(change)
                except Exception:
                    log.exception("event=subscriber_failed account=%d", change.account_id)

"""Change publishing and maildrop locks, per account (services ring).

The store's writer thread calls `Hub.publish` after each group commit. The hub hands the changes
to the event loop (``call_soon_threadsafe``), where every subscriber of the account (an IMAP view,
an IDLE waiter, a POP3 session) gets them in commit order. Because the writer publishes before it
resolves the futures of the same commit, and both travel through the loop's FIFO ready queue, a
session is always told of a change before the client that made it gets its answer.

POP3 maildrop locks (RFC 1939 §8: exclusive access during TRANSACTION) live here too: they are
per process, which is correct while one process serves an account. So does the count of
logged-in IMAP and POP3 sessions per account (``sessions``, `postfach.limits.SessionCounter`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from postfach.limits import SessionCounter
from postfach.store.api import AccountDeleted, Change

log = logging.getLogger(__name__)

Subscriber = Callable[[Change], None]


class Hub:
    def __init__(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self._loop = loop
        self._subs: dict[int, set[Subscriber]] = {}
        self._maildrop_locks: set[int] = set()
        #: logged-in IMAP and POP3 sessions per account (no limit until the app sets one)
        self.sessions = SessionCounter()

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop

    # ---- changes ------------------------------------------------------------------------------

    def subscribe(self, account_id: int, fn: Subscriber) -> Callable[[], None]:
        """Register fn for the account's changes; returns the function that unsubscribes
        (or call `unsubscribe` with the same arguments: a subscriber that keeps nothing but
        its account id, as every idle IMAP session does, saves a closure)."""
        self._subs.setdefault(account_id, set()).add(fn)
        return lambda: self.unsubscribe(account_id, fn)

    def unsubscribe(self, account_id: int, fn: Subscriber) -> None:
        """Undo `subscribe` (an equal ``fn``, e.g. the same bound method, is enough)."""
        subs = self._subs.get(account_id)
        if subs is not None:
            subs.discard(fn)
            if not subs:
                del self._subs[account_id]

    def publish(self, changes: list[Change]) -> None:
        """Called from the writer thread after COMMIT (or from the loop itself)."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            self._dispatch(changes)
        else:
            loop.call_soon_threadsafe(self._dispatch, changes)

    def recheck_accounts(self, exists: Callable[[int], bool]) -> None:
        """Tell the subscribers of every account that no longer exists (deleted by another
        process, ``postfach user del``, which then signals the server) that it is gone."""
        gone = [AccountDeleted(a) for a in list(self._subs) if not exists(a)]
        if gone:
            self.publish(list[Change](gone))

    def _dispatch(self, changes: list[Change]) -> None:
        for change in changes:
            for fn in list(self._subs.get(change.account_id, ())):
                try:
                    fn(change)
                except Exception:
                    log.exception("event=subscriber_failed account=%d", change.account_id)

    # ---- POP3 maildrop locks ------------------------------------------------------------------

    def try_lock_maildrop(self, account_id: int) -> bool:
        if account_id in self._maildrop_locks:
            return False
        self._maildrop_locks.add(account_id)
        return True

    def unlock_maildrop(self, account_id: int) -> None:
        self._maildrop_locks.discard(account_id)

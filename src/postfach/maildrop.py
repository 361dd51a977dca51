"""POP3's view of an account: INBOX as it was at login, locked while in TRANSACTION (services;
the lock holds across processes, `postfach.store.locks`).

Implements the backend contract of `postfach.pop3.session` over the store. Deletions become one
expunge at QUIT, which reaches IMAP sessions through the hub like any other change.
"""

from __future__ import annotations

import asyncio
from collections.abc import Collection, Sequence

from postfach.auth.passwords import Authenticator
from postfach.errors import MailboxInUse, NotFound, Pop3Err, TooManySessions
from postfach.pop3.session import MaildropEntry
from postfach.store.api import INBOX
from postfach.store.hub import Hub
from postfach.store.sqlite import SqliteMailstore

# Files above this are read in a worker thread rather than on the event loop.
_READ_ON_LOOP_MAX = 256 * 1024


def uidl(uidvalidity: int, uid: int) -> str:
    """Unique per account and stable for the message's life in INBOX (Dovecot's own shape)."""
    return f"{uid:08x}{uidvalidity:08x}"


class StoreMaildrop:
    def __init__(
        self,
        store: SqliteMailstore,
        hub: Hub,
        account_id: int,
        mailbox_id: int,
        uidvalidity: int,
    ) -> None:
        self._store = store
        self._hub = hub
        self._account_id = account_id
        self._mailbox_id = mailbox_id
        rows = store.list_message_blobs(mailbox_id)
        self._uids = [uid for uid, _size, _blob in rows]
        self._blobs = [blob for _uid, _size, blob in rows]
        self.entries: Sequence[MaildropEntry] = [
            MaildropEntry(uidl(uidvalidity, uid), size) for uid, size, _blob in rows
        ]
        self._released = False

    async def read(self, index: int) -> bytes:
        sha = self._blobs[index]
        try:
            if self.entries[index].size <= _READ_ON_LOOP_MAX:
                return self._store.read_blob(sha)
            return await asyncio.to_thread(self._store.read_blob, sha)
        except (NotFound, FileNotFoundError):
            raise Pop3Err("message was deleted by another session") from None

    async def commit(self, deleted: Collection[int]) -> None:
        if deleted:
            await self._store.aexpunge(self._mailbox_id, [self._uids[i] for i in deleted])

    async def release(self) -> None:
        if not self._released:
            self._released = True
            self._store.unlock_maildrop(self._account_id)
            self._hub.sessions.release(self._account_id)


class StorePop3Backend:
    def __init__(self, store: SqliteMailstore, hub: Hub, auth: Authenticator) -> None:
        self._store = store
        self._hub = hub
        self._auth = auth

    async def authenticate(self, username: str, password: str, remote_ip: str) -> str | None:
        return await self._auth.authenticate(username, password, remote_ip)

    async def open_maildrop(self, account: str) -> StoreMaildrop:
        acc = self._store.get_account(account)
        if acc is None:
            raise NotFound(account)
        box = self._store.get_mailbox(acc.id, INBOX)
        if box is None:
            raise NotFound(f"{account}: no INBOX")
        if not self._hub.sessions.acquire(acc.id):
            raise TooManySessions(account)
        if not self._store.try_lock_maildrop(acc.id):
            self._hub.sessions.release(acc.id)
            raise MailboxInUse(account)
        try:
            return StoreMaildrop(self._store, self._hub, acc.id, box.id, box.uidvalidity)
        except BaseException:
            self._store.unlock_maildrop(acc.id)
            self._hub.sessions.release(acc.id)
            raise

"""Where fetched mail goes: a Maildir, an mbox file, or a postfach account (services).

A target stores messages in batches: ``put`` each message, then ``flush`` makes the batch
durable. Before a batch, ``tokens`` hands out one token per message, which the caller journals
*before* storing; after a crash, ``contains(token, data)`` tells whether that message made it.

==========  =====================================  ============================================
target      token                                   contains(token, data)
==========  =====================================  ============================================
Maildir     the file's unique name                  that file exists with these bytes
mbox        the file size before the batch          a message with these bytes follows it
postfach    INBOX's UIDNEXT before the batch        INBOX holds these bytes at a UID >= it
==========  =====================================  ============================================

``stored(token)`` answers without the bytes where the token alone is proof (a Maildir file name:
files appear in ``new/`` whole or not at all), so such a message is not even downloaded again.
"""

from __future__ import annotations

import hashlib
import re
import time
from pathlib import Path
from typing import Protocol

from postfach.client.errors import TargetError
from postfach.errors import OverQuota, StoreError
from postfach.localmail import LocalMailError, Maildir, Mbox
from postfach.mailfile import mbox_entry, split_mbox, to_lf
from postfach.mime.stored import parse_for_storage
from postfach.mime.structure import normalize_crlf
from postfach.store.api import INBOX, Flag
from postfach.store.sqlite import AppendItem, SqliteMailstore

__all__ = ["MaildirTarget", "MboxTarget", "StoreTarget", "Target"]


class Target(Protocol):
    description: str

    def open(self) -> None: ...
    def close(self) -> None: ...
    def tokens(self, n: int) -> list[str]: ...
    def put(self, data: bytes, token: str) -> None: ...
    def flush(self) -> None: ...
    def contains(self, token: str, data: bytes) -> bool: ...
    def stored(self, token: str) -> bool: ...
    def local_name(self, token: str) -> str | None: ...
    def present(self) -> set[str] | None: ...


class MaildirTarget:
    def __init__(self, path: Path) -> None:
        self.maildir = Maildir(path)
        self.description = f"Maildir {path}"
        self._dirty = False

    def open(self) -> None:
        try:
            self.maildir.ensure()
        except LocalMailError as exc:
            raise TargetError(str(exc)) from None

    def close(self) -> None:
        pass

    def tokens(self, n: int) -> list[str]:
        now = time.time()
        return [self.maildir.unique_name(now) for _ in range(n)]

    def put(self, data: bytes, token: str) -> None:
        try:
            self.maildir.deliver(data, token, sync=False)
        except LocalMailError as exc:
            raise TargetError(str(exc)) from None
        self._dirty = True

    def flush(self) -> None:
        if self._dirty:
            try:
                self.maildir.sync("new")
            except LocalMailError as exc:
                raise TargetError(str(exc)) from None
            self._dirty = False

    def contains(self, token: str, data: bytes) -> bool:
        path = self.maildir.find(token)
        if path is None:
            return False
        try:
            return path.read_bytes() == to_lf(data)
        except OSError:
            return False

    def stored(self, token: str) -> bool:
        """A file with this (never reused) name is in new/ or cur/, so it was written whole:
        files appear there only by rename after fsync."""
        return self.maildir.find(token) is not None

    def local_name(self, token: str) -> str | None:
        return token

    def present(self) -> set[str]:
        """Unique names of the messages still here and not marked trashed (T). A missing
        folder is an error, not an empty one."""
        if not self.maildir.is_maildir():
            raise TargetError(
                f"Maildir {self.maildir.path} is missing, though mail was stored there;"
                " nothing is deleted on the server while it is gone"
            )
        return {e.unique for e in self.maildir.entries() if "\\Deleted" not in e.flags}


_RETURN_PATH = re.compile(rb"(?im)^Return-Path:[ \t]*<([^>\r\n]*)>")


class MboxTarget:
    def __init__(self, path: Path) -> None:
        self.mbox = Mbox(path)
        self.description = f"mbox {path}"
        self._dirty = False
        self._region: dict[int, set[bytes]] = {}

    def open(self) -> None:
        try:
            self.mbox.open()
        except LocalMailError as exc:
            raise TargetError(str(exc)) from None

    def close(self) -> None:
        self.mbox.close()

    def tokens(self, n: int) -> list[str]:
        return [str(self.mbox.size())] * n

    @staticmethod
    def _sender(data: bytes) -> str:
        header = data.split(b"\r\n\r\n", 1)[0]
        m = _RETURN_PATH.search(header)
        return m.group(1).decode("utf-8", "replace") if m and m.group(1) else "MAILER-DAEMON"

    def put(self, data: bytes, token: str) -> None:
        try:
            self.mbox.append(mbox_entry(data, self._sender(data), int(time.time())))
        except LocalMailError as exc:
            raise TargetError(str(exc)) from None
        self._dirty = True

    def flush(self) -> None:
        if self._dirty:
            try:
                self.mbox.sync()
            except LocalMailError as exc:
                raise TargetError(str(exc)) from None
            self._dirty = False

    def contains(self, token: str, data: bytes) -> bool:
        offset = int(token)
        if offset not in self._region:
            tail = self.mbox.read_from(offset)
            self._region[offset] = {m.data for m in split_mbox(tail)}
        body = to_lf(data)
        if not body.endswith(b"\n"):
            body += b"\n"
        return body in self._region[offset]

    def stored(self, token: str) -> bool:
        return False  # the token alone does not tell; contains() compares the bytes

    def local_name(self, token: str) -> str | None:
        return None

    def present(self) -> set[str] | None:
        return None


class StoreTarget:
    """The INBOX of a postfach account, through the store (quota applies)."""

    def __init__(self, store: SqliteMailstore, account: str) -> None:
        self.store = store
        self.account = account
        self.description = f"postfach account {account}"
        self._mailbox_id = 0
        self._batch: list[AppendItem] = []

    def open(self) -> None:
        acc = self.store.get_account(self.account)
        if acc is None:
            raise TargetError(f"no postfach account {self.account} in this data directory")
        mbox = self.store.get_mailbox(acc.id, INBOX)
        if mbox is None:
            raise TargetError(f"postfach account {self.account} has no INBOX")
        self._mailbox_id = mbox.id

    def close(self) -> None:
        for item in self._batch:
            self.store.discard(item.blob)
        self._batch.clear()

    def tokens(self, n: int) -> list[str]:
        mbox = self.store.get_mailbox_by_id(self._mailbox_id)
        if mbox is None:
            raise TargetError(f"the INBOX of {self.account} is gone")
        return [str(mbox.uidnext)] * n

    def put(self, data: bytes, token: str) -> None:
        data = normalize_crlf(data)
        try:
            blob = self.store.stage(data, parse_for_storage(data))
        except (OSError, StoreError) as exc:
            raise TargetError(f"cannot store into {self.account}: {exc}") from None
        self._batch.append(AppendItem(blob, Flag.NONE, (), int(time.time())))

    def flush(self) -> None:
        if not self._batch:
            return
        batch, self._batch = self._batch, []
        try:
            self.store.append(self._mailbox_id, batch)
        except OverQuota:
            raise TargetError(
                f"postfach account {self.account} is over its quota; nothing more was stored"
            ) from None
        except StoreError as exc:
            raise TargetError(f"cannot store into {self.account}: {exc}") from None

    def contains(self, token: str, data: bytes) -> bool:
        sha = hashlib.sha256(normalize_crlf(data)).hexdigest()
        first = int(token)
        return any(
            m.blob == sha and m.uid >= first for m in self.store.list_messages(self._mailbox_id)
        )

    def stored(self, token: str) -> bool:
        return False  # the token alone does not tell; contains() compares the bytes

    def local_name(self, token: str) -> str | None:
        return None

    def present(self) -> set[str] | None:
        return None

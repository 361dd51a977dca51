"""Carries out ``postfach migrate`` (adapter): the remote account over IMAP, into the store.

1. **Survey**: ``LIST`` (with ``RETURN (SPECIAL-USE SUBSCRIBED)`` when the server has
   LIST-EXTENDED, else LIST + LSUB), the folder mapping (`plan.map_folders`), then per folder
   ``EXAMINE`` (read-only: nothing on the remote side changes, not even ``\\Seen``) and one
   ``UID FETCH 1:* (UID RFC822.SIZE BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)])``. With the state
   and the local folder's messages this gives what to copy (`plan.plan_messages`), its size,
   and so the quota check before anything is written.
2. **Copy**: folder by folder, ``UID FETCH <uids> (UID FLAGS INTERNALDATE BODY.PEEK[])`` in
   batches; each batch is staged and stored with one store append (flags, keywords and
   INTERNALDATE kept; all or nothing), and only then recorded in the state.

The remote account is never written to.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import time
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Final

from postfach.client.imap import CommandFailed, ImapClient, Part
from postfach.client.migrate.plan import (
    FolderMap,
    MessagePlan,
    RemoteFolder,
    RemoteMessage,
    dedup_key,
    map_folders,
    plan_messages,
)
from postfach.client.migrate.state import MigrateState
from postfach.client.parse import Data, Token, Untagged, fetch_items
from postfach.client.policy import human_size
from postfach.client.sync.names import message_id
from postfach.errors import OverQuota, StoreError
from postfach.imap.response import parse_date_time
from postfach.imap.sequence import format_sequence_set
from postfach.mime.stored import parse_for_storage
from postfach.mime.structure import normalize_crlf
from postfach.store.api import Account, Flag
from postfach.store.sqlite import AppendItem, SqliteMailstore, StagedBlob
from postfach.transfer import flags_of

__all__ = ["FolderWork", "MigrateError", "MigrateOptions", "MigrateReport", "Migrator"]

log = logging.getLogger("postfach.client.migrate")

#: Messages and octets per UID FETCH and per store append.
BATCH_MESSAGES: Final = 100
BATCH_OCTETS: Final = 16 << 20
#: UIDs per header listing command.
LIST_UIDS: Final = 2000


class MigrateError(Exception):
    """One line for the user."""


@dataclass(frozen=True, slots=True)
class MigrateOptions:
    dry_run: bool = False
    batch: int = BATCH_MESSAGES


@dataclass(slots=True)
class FolderWork:
    """One remote folder: where it goes, what it holds, what this run does with it."""

    map: FolderMap
    uidvalidity: int = 0
    remote_messages: int = 0
    remote_bytes: int = 0
    plan: MessagePlan = field(default_factory=MessagePlan)
    uidvalidity_changed: bool = False
    created: bool = False
    copied: int = 0
    copied_bytes: int = 0
    duplicates: int = 0
    error: str = ""

    @property
    def remote(self) -> str:
        return self.map.remote.wire

    @property
    def local(self) -> str | None:
        return self.map.local


@dataclass(slots=True)
class MigrateReport:
    folders: list[FolderWork] = field(default_factory=list)
    subscribed: list[str] = field(default_factory=list)
    stopped: str = ""  # why the copy stopped early (quota reached meanwhile)

    @property
    def to_copy(self) -> int:
        return sum(len(f.plan.copy) for f in self.folders)

    @property
    def to_copy_bytes(self) -> int:
        return sum(f.plan.bytes for f in self.folders)

    @property
    def copied(self) -> int:
        return sum(f.copied for f in self.folders)

    @property
    def copied_bytes(self) -> int:
        return sum(f.copied_bytes for f in self.folders)

    @property
    def known(self) -> int:
        return sum(f.plan.known for f in self.folders)

    @property
    def duplicates(self) -> int:
        return sum(f.duplicates + len(f.plan.duplicates) for f in self.folders)

    @property
    def skipped_folders(self) -> list[FolderWork]:
        return [f for f in self.folders if not f.map.copied]


#: Called after each batch: (folder, messages handled, their octets as the survey saw them).
Progress = Callable[[FolderWork, int, int], None]


def _int(tok: Token | None) -> int | None:
    if isinstance(tok, str) and tok.isdigit():
        return int(tok)
    if isinstance(tok, bytes) and tok.isdigit():
        return int(tok)
    return None


def quota_problem(account: Account, size: int, count: int) -> str | None:
    """A sentence for the user if copying ``count`` messages of ``size`` octets would exceed
    the account's quota, else None."""
    if account.quota_bytes and account.used_bytes + size > account.quota_bytes:
        free = max(0, account.quota_bytes - account.used_bytes)
        return (
            f"{account.name} has {human_size(free)} free of its {human_size(account.quota_bytes)}"
            f" quota, the migration needs {human_size(size)}"
        )
    if account.quota_messages and account.used_messages + count > account.quota_messages:
        free = max(0, account.quota_messages - account.used_messages)
        return (
            f"{account.name} may take {free} more messages (quota {account.quota_messages}),"
            f" the migration copies {count}"
        )
    return None


class Migrator:
    def __init__(
        self,
        client: ImapClient,
        store: SqliteMailstore,
        account: Account,
        state: MigrateState,
        options: MigrateOptions = MigrateOptions(),
    ) -> None:
        self.c = client
        self.store = store
        self.account = account
        self.state = state
        self.options = options
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="postfach-migrate-stage")

    def close(self) -> None:
        self._pool.shutdown()

    # ---- survey ----------------------------------------------------------------------------

    def remote_folders(self) -> list[RemoteFolder]:
        c = self.c
        extended = c.has("LIST-EXTENDED")
        cmd: list[Part] = [b'LIST "" "*"']
        if extended:
            ret = [b"SUBSCRIBED"] + ([b"SPECIAL-USE"] if c.has("SPECIAL-USE") else [])
            cmd.append(b" RETURN (" + b" ".join(ret) + b")")
        res = c.check(*cmd)
        found: dict[str, tuple[str, frozenset[str]]] = {}
        for d in res.data("LIST"):
            name, delim, attrs = self._list_entry(d)
            if name is not None:
                found[name] = (delim, attrs)
        subscribed: set[str] = set()
        if extended:
            subscribed = {n for n, (_, a) in found.items() if "\\subscribed" in _lower(a)}
        else:
            lsub = c.command(b'LSUB "" "*"')
            if lsub.status == "OK":
                for d in lsub.data("LSUB"):
                    name, _, _ = self._list_entry(d)
                    if name is not None:
                        subscribed.add(name)
        return [
            RemoteFolder(name, delim, attrs, name in subscribed or name == "INBOX")
            for name, (delim, attrs) in found.items()
        ]

    def _list_entry(self, d: Data) -> tuple[str | None, str, frozenset[str]]:
        if len(d.args) < 3:
            return None, "", frozenset()
        attrs_tok, delim_tok, name_tok = d.args[0], d.args[1], d.args[2]
        attrs = frozenset(a for a in attrs_tok if isinstance(a, str)) if isinstance(
            attrs_tok, list) else frozenset()  # fmt: skip
        delim = delim_tok.decode("ascii", "replace") if isinstance(delim_tok, bytes) else ""
        if isinstance(delim_tok, str) and delim_tok.upper() != "NIL":
            delim = delim_tok
        return self.c.decode_name(name_tok), delim, attrs

    def local_special(self) -> dict[str, str]:
        return {
            m.special_use: m.name
            for m in self.store.list_mailboxes(self.account.id)
            if m.special_use
        }

    def survey(self, progress: Callable[[str], None] | None = None) -> MigrateReport:
        report = MigrateReport()
        maps = map_folders(self.remote_folders(), self.local_special())
        for m in maps:
            work = FolderWork(m)
            report.folders.append(work)
            if m.local is None:
                continue
            if progress is not None:
                progress(m.remote.wire)
            try:
                self._survey_folder(work)
            except CommandFailed as exc:  # a folder the server will not open: report, go on
                work.error = str(exc)
        return report

    def _survey_folder(self, work: FolderWork) -> None:
        c = self.c
        work.uidvalidity, exists = self._examine(work.remote)
        sizes: dict[int, int] = {}
        if exists:

            def size_of(d: Data) -> None:
                if d.name == "FETCH":
                    items = fetch_items(d)
                    uid, size = _int(items.get("UID")), _int(items.get("RFC822.SIZE"))
                    if uid is not None and size is not None:
                        sizes[uid] = size

            c.check(b"UID FETCH 1:* (UID RFC822.SIZE)", on_data=size_of)
        local = work.local
        assert local is not None
        known = self.state.uidvalidity(work.remote)
        work.uidvalidity_changed = known is not None and known != work.uidvalidity
        done = set() if work.uidvalidity_changed else self.state.done_uids(
            work.remote, work.uidvalidity)  # fmt: skip
        # Message-IDs only of what an earlier run did not copy: a later run reads little.
        mids = self._message_ids(sorted(u for u in sizes if u not in done))
        remote = [RemoteMessage(u, n, mids.get(u, "")) for u, n in sorted(sizes.items())]
        work.remote_messages = len(remote)
        work.remote_bytes = sum(m.size for m in remote)
        pending = [m for m in remote if m.uid not in done]
        local_keys: Counter[str] = Counter()
        if pending:
            local_keys = self._local_keys(local)
        claimed = self.state.claimed_keys(local)
        if work.uidvalidity_changed:
            claimed -= self._claimed_by(work)
        work.plan = plan_messages(remote, done, local_keys, claimed)
        work.plan.free = Counter(
            {k: n - claimed.get(k, 0) for k, n in local_keys.items() if k.startswith("sha256:")}
        )

    def _message_ids(self, uids: Sequence[int]) -> dict[int, str]:
        out: dict[int, str] = {}

        def take(d: Data) -> None:
            if d.name != "FETCH":
                return
            items = fetch_items(d)
            uid = _int(items.get("UID"))
            if uid is None:
                return
            for k, v in items.items():
                if k.startswith("BODY[HEADER.FIELDS") and isinstance(v, bytes):
                    out[uid] = message_id(v)

        for i in range(0, len(uids), LIST_UIDS):
            chunk = format_sequence_set(uids[i : i + LIST_UIDS]).encode("ascii")
            self.c.check(b"UID FETCH " + chunk + b" (UID BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)])",
                         on_data=take)  # fmt: skip
        return out

    def _stage(self, data: bytes) -> StagedBlob:
        return self.store.stage(data, parse_for_storage(data))

    def _examine(self, wire: str) -> tuple[int, int]:
        """EXAMINE (read-only): (UIDVALIDITY, EXISTS)."""
        res = self.c.check(b"EXAMINE ", self.c.encode_name(wire))
        uidvalidity = exists = 0
        for r in res.untagged:
            if isinstance(r, Untagged) and r.code == "UIDVALIDITY" and r.code_args:
                uidvalidity = _int(r.code_args[0]) or 0
            elif isinstance(r, Data) and r.name == "EXISTS" and r.number is not None:
                exists = r.number
        return uidvalidity, exists

    def _claimed_by(self, work: FolderWork) -> Counter[str]:
        """The keys the folder's rows of its old UIDVALIDITY claim (they are about to go)."""
        rows = self.state.db.execute(
            "SELECT key FROM messages WHERE source=? AND account=? AND remote=? AND key<>''",
            (self.state.source, self.state.account, work.remote),
        )
        return Counter(r[0] for r in rows)

    def _local_keys(self, name: str) -> Counter[str]:
        """Dedup keys of the local folder's messages: Message-ID and size, or for a message
        without Message-ID its exact bytes."""
        mbox = self.store.get_mailbox(self.account.id, name)
        keys: Counter[str] = Counter()
        if mbox is None:
            return keys
        for m in self.store.list_messages(mbox.id):
            try:
                data = self.store.read_blob(m.blob)
            except OSError:
                continue
            key = dedup_key(message_id(data), m.size)
            keys[key or f"sha256:{m.blob}"] += 1
        return keys

    # ---- copy ------------------------------------------------------------------------------

    def copy(self, report: MigrateReport, progress: Progress | None = None) -> None:
        """Create the folders, subscribe, copy; stops at the first quota refusal (what was
        stored stays recorded, a later run goes on from there)."""
        existing = {m.name for m in self.store.list_mailboxes(self.account.id)}
        subs = set(self.store.list_subscriptions(self.account.id))
        for work in report.folders:
            local = work.local
            if local is None or work.error:
                continue
            if local not in existing:
                try:
                    self.store.create_mailbox(self.account.id, local)
                except StoreError as exc:  # a name postfach refuses: report it, go on
                    work.error = f"cannot create {local}: {exc}"
                    continue
                existing.add(local)
                work.created = True
            if work.map.remote.subscribed and local not in subs:
                self.store.set_subscribed(self.account.id, local, True)
                subs.add(local)
                report.subscribed.append(local)
            self.state.set_folder(work.remote, work.uidvalidity, local)
            if work.plan.duplicates:
                self.state.record(
                    work.remote, work.uidvalidity, local,
                    [(m.uid, key) for m, key in work.plan.duplicates], "duplicate",
                )  # fmt: skip
            try:
                self._copy_folder(work, progress)
            except OverQuota as exc:
                report.stopped = (
                    f"{exc.account} reached its quota ({exc.resource.lower()}) while copying"
                    f" {work.remote}"
                )
                return

    def _copy_folder(self, work: FolderWork, progress: Progress | None) -> None:
        local = work.local
        assert local is not None
        mbox = self.store.get_mailbox(self.account.id, local)
        assert mbox is not None
        todo = work.plan.copy
        if not todo:
            return
        if self._examine(work.remote)[0] != work.uidvalidity:
            work.error = "UIDVALIDITY changed during the run; run again"
            return
        size = max(1, self.options.batch)
        i = 0
        while i < len(todo):
            chunk: list[RemoteMessage] = []
            octets = 0
            while i < len(todo) and len(chunk) < size and (not chunk or octets < BATCH_OCTETS):
                chunk.append(todo[i])
                octets += todo[i].size
                i += 1
            self._copy_batch(work, mbox.id, local, chunk, progress)

    def _copy_batch(
        self,
        work: FolderWork,
        mailbox_id: int,
        local: str,
        chunk: Sequence[RemoteMessage],
        progress: Progress | None,
    ) -> None:
        wanted = {m.uid: m for m in chunk}
        items: list[AppendItem] = []
        rows: list[tuple[int, str]] = []
        dups: list[tuple[int, str]] = []
        free = work.plan.free

        def take(d: Data) -> None:
            if d.name != "FETCH":
                return
            f = fetch_items(d)
            uid = _int(f.get("UID"))
            body = f.get("BODY[]")
            if uid is None or uid not in wanted or not isinstance(body, bytes):
                return
            data = normalize_crlf(body)
            m = wanted.pop(uid)
            key = dedup_key(m.message_id, m.size)
            if not key:
                key = "sha256:" + hashlib.sha256(data).hexdigest()
                if free.get(key, 0) > 0:  # the exact bytes are there, unrecorded
                    free[key] -= 1
                    dups.append((uid, key))
                    return
            names = f.get("FLAGS")
            flags, keywords = flags_of(
                frozenset(n for n in names if isinstance(n, str)) if isinstance(names, list)
                else frozenset()
            )  # fmt: skip
            when = 0
            date = f.get("INTERNALDATE")
            if isinstance(date, bytes):
                with contextlib.suppress(ValueError):
                    when = parse_date_time(date.decode("ascii"))
            # Parsed and staged in a worker while the next messages arrive.
            staged.append((self._pool.submit(self._stage, data), flags, keywords, when))
            rows.append((uid, key))

        staged: list[tuple[Future[StagedBlob], Flag, tuple[str, ...], int]] = []
        uids = format_sequence_set(sorted(wanted)).encode("ascii")
        try:
            try:
                self.c.check(b"UID FETCH " + uids + b" (UID FLAGS INTERNALDATE BODY.PEEK[])",
                             on_data=take)  # fmt: skip
            finally:
                for fut, flags, keywords, when in staged:
                    items.append(AppendItem(fut.result(), flags, keywords, when or _now()))
        except BaseException:
            for item in items:
                self.store.discard(item.blob)
            raise
        # Messages expunged on the server since the survey simply do not come back.
        if items:
            self.store.append(mailbox_id, items)  # all or nothing; OverQuota discards the blobs
            self.state.record(work.remote, work.uidvalidity, local, rows, "copied")
        if dups:
            self.state.record(work.remote, work.uidvalidity, local, dups, "duplicate")
        n = len(items)
        octets = sum(i.blob.size for i in items)
        work.copied += n
        work.copied_bytes += octets
        work.duplicates += len(dups)
        if progress is not None:
            progress(work, len(chunk), sum(m.size for m in chunk))


def _lower(items: frozenset[str]) -> set[str]:
    return {a.lower() for a in items}


def _now() -> int:
    return int(time.time())

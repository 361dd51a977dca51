"""Carries out a sync: asks the server and the Maildir, plans, acts, records (adapter).

One run (``Syncer.run``):

1. ``ENABLE QRESYNC`` (or CONDSTORE) when offered; one ``LIST "" "*" RETURN (STATUS (...))``
   (LIST-STATUS, RFC 5819) gives every folder with UIDVALIDITY, UIDNEXT, MESSAGES,
   HIGHESTMODSEQ and MAILBOXID; without LIST-STATUS a ``STATUS`` per folder.
2. Folders are paired, renamed, created, deleted (`postfach.client.sync.plan.plan_folders`).
3. Per folder: unchanged on the server (same UIDVALIDITY and HIGHESTMODSEQ) and unchanged
   locally (same ``new``/``cur`` mtimes) → skipped, no command at all. So a resync with
   nothing changed costs LOGIN, ENABLE, LIST and LOGOUT, whatever the number of folders and
   messages. Otherwise ``SELECT box (QRESYNC (uidvalidity modseq))`` returns just what changed
   (``VANISHED (EARLIER)`` and FETCH FLAGS); without QRESYNC, ``UID FETCH 1:* (FLAGS)`` lists
   everything. The plan (`plan_messages`) is carried out: server writes first, then local
   writes, and each batch is recorded in the state only after it is durable on its side.
4. After writing to the server the folder is read once more with
   ``UID FETCH 1:* (FLAGS) (CHANGEDSINCE m VANISHED)`` from the MODSEQ read before the writes:
   our own changes come back as no-ops, a concurrent client's changes are merged, and the
   HIGHESTMODSEQ recorded never skips anything.

UIDVALIDITY changed: the folder's records become orphans (`SyncState.rebase`) and pair with the
server's messages by ident (``RFC822.SIZE`` + Message-ID), so nothing is downloaded or uploaded
twice and nothing is lost.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Final

from postfach.client.imap import (
    CommandFailed,
    ConnectionLost,
    ImapClient,
    ImapError,
    Literal,
    Part,
)
from postfach.client.parse import Data, Token, Untagged, fetch_items, number, pairs
from postfach.client.sync.maildir import Maildir, MaildirFolder, Staged
from postfach.client.sync.names import (
    INBOX,
    Flags,
    flags_from_imap,
    ident,
    imap_flag_list,
    keywords_of,
    message_id,
    to_crlf,
    to_lf,
)
from postfach.client.sync.plan import (
    Conflict,
    CreateLocal,
    CreateServer,
    DeleteLocal,
    DeleteLocalFolder,
    DeleteServer,
    DeleteServerFolder,
    Download,
    FolderPlan,
    FolderState,
    Forget,
    ForgetFolder,
    ForgetOrphan,
    Link,
    MessageAction,
    Mode,
    Orphan,
    Record,
    RenameLocal,
    RenameServer,
    RenameState,
    ServerFolder,
    ServerView,
    Upload,
    idents_wanted,
    plan_folders,
    plan_messages,
)
from postfach.client.sync.state import FolderRow, SyncState, flags_from_text

# `postfach.imap.sequence` and `postfach.imap.response` (the server's IMAP syntax: dozens of
# dataclasses, datetime) are imported by the functions that use them, when a folder has changes:
# a resync with nothing changed never needs them (the process's start-up is most of its cost).

__all__ = [
    "FolderReport",
    "ServerInfo",
    "SyncOptions",
    "SyncReport",
    "Syncer",
    "WatchLimits",
    "watch",
]

log = logging.getLogger("postfach.client.sync")

#: UIDs per command (a UID set of scattered numbers stays well below line limits).
UIDS_PER_COMMAND: Final = 500
#: Messages and octets per MULTIAPPEND.
APPEND_MESSAGES: Final = 50
APPEND_OCTETS: Final = 8 << 20
MAX_PASSES: Final = 3
#: Threads writing downloaded messages (each file is fsynced; the fsyncs overlap).
WRITERS: Final = 8


@dataclass(frozen=True, slots=True)
class SyncOptions:
    mode: Mode = Mode.SYNC
    batch: int = 250  # messages downloaded per UID FETCH (and per state commit)


@dataclass(slots=True)
class FolderReport:
    name: str
    skipped: bool = False
    downloaded: int = 0
    uploaded: int = 0
    paired: int = 0
    flags_local: int = 0
    flags_server: int = 0
    deleted_local: int = 0
    deleted_server: int = 0
    uidvalidity_changed: bool = False
    errors: list[str] = field(default_factory=list)

    @property
    def changes(self) -> int:
        return (
            self.downloaded + self.uploaded + self.paired + self.flags_local + self.flags_server
            + self.deleted_local + self.deleted_server
        )  # fmt: skip


@dataclass(slots=True)
class SyncReport:
    folders: dict[str, FolderReport] = field(default_factory=dict)
    folder_actions: list[str] = field(default_factory=list)
    conflicts: list[str] = field(default_factory=list)
    commands: int = 0

    @property
    def errors(self) -> list[str]:
        return [f"{f.name}: {e}" for f in self.folders.values() for e in f.errors]


@dataclass(frozen=True, slots=True)
class ServerInfo:
    name: str  # canonical, "/" between levels
    wire: str  # as the server spells it (its delimiter)
    id: str | None = None
    uidvalidity: int | None = None
    uidnext: int | None = None
    messages: int | None = None
    highestmodseq: int | None = None

    def folder(self) -> ServerFolder:
        return ServerFolder(self.name, self.id, self.uidvalidity)


@dataclass(slots=True)
class _Selected:
    uidvalidity: int
    highestmodseq: int | None
    exists: int
    uidnext: int | None
    delta: ServerView | None  # QRESYNC answered what changed


def _chunks(values: Sequence[int], size: int = UIDS_PER_COMMAND) -> Iterable[list[int]]:
    for i in range(0, len(values), size):
        yield list(values[i : i + size])


def _uid_set(values: Iterable[int]) -> bytes:
    from postfach.imap.sequence import format_sequence_set

    return format_sequence_set(values).encode("ascii")


def _expand(text: str) -> list[int]:
    from postfach.imap.sequence import parse_sequence_set

    seq = parse_sequence_set(text, allow_star=False, allow_saved=False)
    out: list[int] = []
    for a, b in seq.ranges:
        assert a is not None and b is not None
        lo, hi = (a, b) if a <= b else (b, a)
        out.extend(range(lo, hi + 1))
    return out


class Syncer:
    def __init__(
        self,
        client: ImapClient,
        maildir: Maildir,
        state: SyncState,
        options: SyncOptions = SyncOptions(),
    ) -> None:
        self.client = client
        self.maildir = maildir
        self.state = state
        self.options = options
        self.pull = options.mode is Mode.PULL
        self.report = SyncReport()
        self.qresync = False
        self.condstore = False
        self._prepared = False
        self._pool: ThreadPoolExecutor | None = None

    def pool(self) -> ThreadPoolExecutor:
        """Threads that write and fsync downloaded messages."""
        if self._pool is None:
            self._pool = ThreadPoolExecutor(WRITERS, thread_name_prefix="sync-write")
        return self._pool

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None

    # ---- the run -------------------------------------------------------------------------

    def run(self) -> SyncReport:
        self.report = SyncReport()
        start = self.client.commands_sent
        self._prepare()
        self.maildir.ensure_root()
        server: dict[str, ServerInfo] = {}
        plan = FolderPlan()
        for _ in range(MAX_PASSES):
            server = self._list_server()
            local = self.maildir.list_folders()
            states = [
                FolderState(f.key, f.name, f.local_id, f.server_id, f.uidvalidity)
                for f in self.state.folders()
            ]
            plan = plan_folders(states, {n: s.folder() for n, s in server.items()}, local,
                                self.options.mode)  # fmt: skip
            renamed, extra = self._folder_actions(plan, server)
            plan.sync.extend(n for n in extra if n not in plan.sync)
            if not renamed:
                break
        else:
            server = self._list_server()
        for name in plan.sync:
            rep = self.report.folders.setdefault(name, FolderReport(name))
            try:
                self._sync_folder(name, server.get(name), rep)
            except (CommandFailed, OSError) as exc:  # the other folders still get synced
                rep.errors.append(str(exc))
                log.warning("folder=%s error=%s", name, exc)
        self.report.commands = self.client.commands_sent - start
        return self.report

    def _prepare(self) -> None:
        if self._prepared:
            return
        c = self.client
        want = []
        if c.has("QRESYNC") and c.has("ENABLE"):
            want.append(b"QRESYNC")
        elif c.has("CONDSTORE") and c.has("ENABLE"):
            want.append(b"CONDSTORE")
        if want:
            res = c.check(b"ENABLE " + b" ".join(want))
            for d in res.data("ENABLED"):
                c.enabled.update(a.upper() for a in d.args if isinstance(a, str))
        self.qresync = "QRESYNC" in c.enabled
        self.condstore = self.qresync or "CONDSTORE" in c.enabled or c.has("CONDSTORE")
        self._prepared = True

    # ---- server folders ------------------------------------------------------------------

    def _status_items(self) -> bytes:
        items = [b"UIDVALIDITY", b"UIDNEXT", b"MESSAGES"]
        if self.condstore:
            items.append(b"HIGHESTMODSEQ")
        if self.client.has("OBJECTID"):
            items.append(b"MAILBOXID")
        return b"(" + b" ".join(items) + b")"

    def _list_server(self) -> dict[str, ServerInfo]:
        c = self.client
        list_status = c.has("LIST-STATUS")
        cmd: list[Part] = [b'LIST "" "*"']
        if list_status:
            cmd.append(b" RETURN (STATUS " + self._status_items() + b")")
        res = c.check(*cmd)
        wires: dict[str, str] = {}
        statuses: dict[str, dict[str, Token]] = {}
        for d in res.untagged:
            if not isinstance(d, Data):
                continue
            if d.name == "LIST" and len(d.args) >= 3:
                attrs, delim, name = d.args[0], d.args[1], d.args[2]
                flags = {a.lower() for a in attrs if isinstance(a, str)} if isinstance(
                    attrs, list) else set()  # fmt: skip
                if isinstance(delim, bytes) and delim:
                    c.delimiter = delim.decode("ascii", "replace")
                if "\\noselect" in flags or "\\nonexistent" in flags:
                    continue
                wire = c.decode_name(name)
                wires[wire] = wire
            elif d.name == "STATUS" and len(d.args) >= 2 and isinstance(d.args[1], list):
                statuses[c.decode_name(d.args[0])] = dict(pairs(d.args[1]))
        if not list_status:
            for wire in wires:
                res = c.check(b"STATUS ", c.encode_name(wire), b" ", self._status_items())
                for d in res.data("STATUS"):
                    if len(d.args) >= 2 and isinstance(d.args[1], list):
                        statuses[c.decode_name(d.args[0])] = dict(pairs(d.args[1]))
        out: dict[str, ServerInfo] = {}
        for wire in wires:
            name = self._canonical(wire)
            st = statuses.get(wire, {})
            mid = st.get("MAILBOXID")
            out[name] = ServerInfo(
                name,
                wire,
                id=str(mid[0]) if isinstance(mid, list) and mid else None,
                uidvalidity=_int(st.get("UIDVALIDITY")),
                uidnext=_int(st.get("UIDNEXT")),
                messages=_int(st.get("MESSAGES")),
                highestmodseq=_int(st.get("HIGHESTMODSEQ")),
            )
        return out

    def _canonical(self, wire: str) -> str:
        if wire.upper() == INBOX:
            return INBOX
        d = self.client.delimiter
        return wire if d == "/" or not d else "/".join(wire.split(d))

    def _wire(self, name: str, server: Mapping[str, ServerInfo] | None = None) -> str:
        if server is not None and name in server:
            return server[name].wire
        d = self.client.delimiter
        return name if d == "/" or not d else d.join(name.split("/"))

    # ---- folder actions ------------------------------------------------------------------

    def _folder_actions(
        self, plan: FolderPlan, server: dict[str, ServerInfo]
    ) -> tuple[bool, list[str]]:
        """Carry out renames, creations and deletions. (whether anything was renamed on the
        server, which may have moved inferior folders too; folders to sync as a fallback)."""
        c = self.client
        renamed_server = False
        extra: list[str] = []
        for a in plan.actions:
            if isinstance(a, Conflict):
                msg = f"{a.name}: {a.reason}"
                if msg not in self.report.conflicts:
                    self.report.conflicts.append(msg)
                log.warning("folder=%s conflict=%r", a.name, a.reason)
            elif isinstance(a, RenameLocal):
                self.maildir.rename_folder(a.old, a.new)
                self.state.rename_folder(a.key, a.new)
                self._did(f"renamed local folder {a.old} to {a.new}")
            elif isinstance(a, RenameServer):
                c.check(b"RENAME ", c.encode_name(self._wire(a.old, server)), b" ",
                        c.encode_name(self._wire(a.new)))  # fmt: skip
                self.state.rename_folder(a.key, a.new)
                renamed_server = True
                self._did(f"renamed server folder {a.old} to {a.new}")
            elif isinstance(a, RenameState):
                self.state.rename_folder(a.key, a.new)
            elif isinstance(a, CreateLocal):
                self.maildir.folder(a.name).ensure()
                self._did(f"created local folder {a.name}")
            elif isinstance(a, CreateServer):
                self._create_server(a.name)
            elif isinstance(a, DeleteLocalFolder):
                if self._local_folder_clean(a.key, a.name):
                    self.maildir.delete_folder(a.name)
                    self.state.delete_folder(a.key)
                    self._did(f"deleted local folder {a.name} (deleted on the server)")
                elif not self.pull:
                    # New mail in it: create it on the server again; the messages go up as
                    # orphans of the old UIDVALIDITY (nothing on the server pairs with them).
                    self._create_server(a.name)
                    self.state.rename_folder(a.key, a.name)
                    extra.append(a.name)
            elif isinstance(a, DeleteServerFolder):
                info = server.get(a.name)
                row = self.state.folder_by_key(a.key)
                if info is not None and self._server_folder_clean(row, info):
                    c.check(b"DELETE ", c.encode_name(info.wire))
                    self.state.delete_folder(a.key)
                    self._did(f"deleted server folder {a.name} (deleted locally)")
                else:
                    # Changed on the server since: bring it back locally, download again.
                    self.state.reset_folder(a.key)
                    self.state.rename_folder(a.key, a.name)
                    self.maildir.folder(a.name).ensure()
                    extra.append(a.name)
            elif isinstance(a, ForgetFolder):
                self.state.delete_folder(a.key)
        return renamed_server, extra

    def _did(self, text: str) -> None:
        self.report.folder_actions.append(text)
        log.info("event=folder %s", text)

    def _create_server(self, name: str) -> None:
        c = self.client
        try:
            c.check(b"CREATE ", c.encode_name(self._wire(name)))
        except CommandFailed as exc:
            if exc.code != "ALREADYEXISTS":
                raise
        self._did(f"created server folder {name}")

    def _local_folder_clean(self, key: int, name: str) -> bool:
        """Nothing in the local folder that the state does not know (so nothing new)."""
        known = {r.unique for r in self.state.records(key)} | {
            o.unique for o in self.state.orphans(key)
        }
        return all(u in known for u in self.maildir.folder(name).scan())

    def _server_folder_clean(self, row: FolderRow, info: ServerInfo) -> bool:
        """The server folder did not change since the last sync."""
        if row.uidvalidity is None or info.uidvalidity != row.uidvalidity:
            return False
        if info.highestmodseq is not None and row.highestmodseq is not None:
            return info.highestmodseq == row.highestmodseq
        return info.uidnext == row.uidnext and info.messages == self.state.count(row.key)

    # ---- one folder ----------------------------------------------------------------------

    def _sync_folder(self, name: str, info: ServerInfo | None, rep: FolderReport) -> None:
        row = self.state.folder(name)
        mf = self.maildir.folder(name)
        mf.ensure()
        if row is None:
            row = self.state.add_folder(name, None, info.id if info else None)
        if name != INBOX:
            lid = mf.read_id()
            if lid is None or lid != row.local_id:
                lid = lid or mf.write_id()
                row = self.state.update_folder(row.key, local_id=lid)
        if info is not None and info.id and info.id != row.server_id:
            row = self.state.update_folder(row.key, server_id=info.id)

        stamp, _ = mf.stamp()
        local_same = stamp is not None and stamp == row.stamp
        orphans = self.state.orphans(row.key)
        server_same = (
            info is not None
            and info.uidvalidity is not None
            and info.uidvalidity == row.uidvalidity
            and info.highestmodseq is not None
            and info.highestmodseq == row.highestmodseq
            and not orphans
        )
        if server_same and local_same:
            rep.skipped = True
            return

        ctx = _Folder(self, row, mf, rep)
        ctx.scan(None if local_same and not orphans else mf.scan())
        selected: _Selected | None = None
        if server_same:
            # Only the Maildir changed: plan against "no server changes" and select only if
            # something has to be written to the server.
            assert row.highestmodseq is not None
            view = ServerView({}, frozenset(), complete=False)
            actions = ctx.plan(view)
            if not any(_needs_server(a) for a in actions):
                ctx.execute(actions)
                ctx.finish(stamp, row.highestmodseq, info.uidnext if info else None)
                return
        selected = self._select(ctx, info)
        if row.uidvalidity is not None and row.uidvalidity != selected.uidvalidity:
            log.warning(
                "folder=%s event=uidvalidity-changed old=%d new=%d",
                name, row.uidvalidity, selected.uidvalidity,
            )  # fmt: skip
            rep.uidvalidity_changed = True
            self.state.rebase(row.key, selected.uidvalidity)
            ctx.reload(rescan=True)
            selected.delta = None
        elif row.uidvalidity is None:
            ctx.row = self.state.update_folder(row.key, uidvalidity=selected.uidvalidity)
        view = selected.delta if selected.delta is not None else self._listing(selected.exists)
        seen_modseq = selected.highestmodseq
        for _ in range(MAX_PASSES):
            wrote = ctx.execute(ctx.plan(view))
            if not wrote:
                break
            # Read back what we wrote (and whatever a concurrent client did meanwhile).
            if ctx.unrecorded:
                ctx.reload(rescan=True)
                ctx.unrecorded = False
            else:
                ctx.local = None  # the records in memory now stand for every local file
            if self.qresync and seen_modseq is not None and not ctx.orphans:
                view, top = self._changed_since(seen_modseq)
                seen_modseq = max(seen_modseq, top)
            elif ctx.orphans or ctx.local is not None:
                view = self._listing(None)
            else:
                break
        ctx.finish(stamp, seen_modseq, selected.uidnext)

    def _select(self, ctx: _Folder, info: ServerInfo | None) -> _Selected:
        c = self.client
        row = ctx.row
        wire = info.wire if info is not None else self._wire(ctx.row.name)
        cmd: list[Part] = [b"SELECT ", c.encode_name(wire)]
        use_qresync = (
            self.qresync
            and row.uidvalidity is not None
            and row.highestmodseq
            and not ctx.orphans
        )  # fmt: skip
        if use_qresync:
            assert row.uidvalidity is not None and row.highestmodseq is not None
            cmd.append(b" (QRESYNC (%d %d))" % (row.uidvalidity, row.highestmodseq))
        elif self.condstore and "CONDSTORE" not in c.enabled and "QRESYNC" not in c.enabled:
            cmd.append(b" (CONDSTORE)")
        res = c.check(*cmd)
        c.selected = ctx.row.name
        uidvalidity = uidnext = modseq = None
        mailbox_id: str | None = None
        exists = 0
        changed: dict[int, Flags] = {}
        vanished: set[int] = set()
        for r in res.untagged:
            if isinstance(r, Untagged) and r.status == "OK" and r.code_args:
                if r.code == "UIDVALIDITY":
                    uidvalidity = _int(r.code_args[0])
                elif r.code == "UIDNEXT":
                    uidnext = _int(r.code_args[0])
                elif r.code == "HIGHESTMODSEQ":
                    modseq = _int(r.code_args[0])
                elif r.code == "MAILBOXID" and isinstance(r.code_args[0], list):
                    mailbox_id = next((str(a) for a in r.code_args[0]), None)
            elif isinstance(r, Data):
                if r.name == "EXISTS" and r.number is not None:
                    exists = r.number
                elif r.name == "VANISHED":
                    vanished.update(_vanished(r))
                elif r.name == "FETCH":
                    uid, flags, _ = _flag_fetch(r)
                    if uid is not None and flags is not None:
                        changed[uid] = flags
        if uidvalidity is None:
            raise CommandFailed("SELECT", "NO", None, "the server sent no UIDVALIDITY")
        if mailbox_id and mailbox_id != row.server_id:
            ctx.row = self.state.update_folder(row.key, server_id=mailbox_id)
        delta = None
        if use_qresync and uidvalidity == row.uidvalidity and modseq is not None:
            delta = ServerView(changed, frozenset(vanished - set(changed)), complete=False)
        return _Selected(uidvalidity, modseq, exists, uidnext, delta)

    def _listing(self, exists: int | None) -> ServerView:
        """Every message's UID and flags (the fallback without QRESYNC, and after a change
        of UIDVALIDITY). ``exists`` 0: the mailbox is empty, nothing to ask."""
        flags: dict[int, Flags] = {}
        if exists != 0:

            def take(d: Data) -> None:
                if d.name == "FETCH":
                    uid, fl, _ = _flag_fetch(d)
                    if uid is not None and fl is not None:
                        flags[uid] = fl

            self.client.check(b"UID FETCH 1:* (UID FLAGS)", on_data=take)
        return ServerView(flags, frozenset(), complete=True)

    def _changed_since(self, modseq: int) -> tuple[ServerView, int]:
        """RFC 7162 §3.2.6: changes since ``modseq``; the highest MODSEQ among them."""
        changed: dict[int, Flags] = {}
        vanished: set[int] = set()
        top = modseq

        def take(d: Data) -> None:
            nonlocal top
            if d.name == "FETCH":
                uid, fl, ms = _flag_fetch(d)
                if uid is not None and fl is not None:
                    changed[uid] = fl
                    if ms is not None:
                        top = max(top, ms)
            elif d.name == "VANISHED":
                vanished.update(_vanished(d))

        self.client.check(
            b"UID FETCH 1:* (UID FLAGS) (CHANGEDSINCE %d VANISHED)" % modseq, on_data=take
        )
        return ServerView(changed, frozenset(vanished - set(changed)), complete=False), top

    def server_idents(self, uids: Sequence[int]) -> dict[int, str]:
        out: dict[int, str] = {}

        def take(d: Data) -> None:
            if d.name != "FETCH":
                return
            items = fetch_items(d)
            uid, size = _int(items.get("UID")), _int(items.get("RFC822.SIZE"))
            header = next((v for k, v in items.items() if k.startswith("BODY[HEADER")), None)
            if uid is not None and size is not None:
                raw = header if isinstance(header, bytes) else b""
                out[uid] = ident(size, message_id(raw))

        for chunk in _chunks(sorted(uids)):
            self.client.check(
                b"UID FETCH " + _uid_set(chunk)
                + b" (UID RFC822.SIZE BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)])",
                on_data=take,
            )  # fmt: skip
        return out


def _needs_server(a: MessageAction) -> bool:
    if isinstance(a, Link):
        return a.server != a.server_from
    return isinstance(a, DeleteServer | Download)


def _int(tok: Token) -> int | None:
    try:
        return number(tok)
    except Exception:
        return None


def _flag_fetch(d: Data) -> tuple[int | None, Flags | None, int | None]:
    items = fetch_items(d)
    uid = _int(items.get("UID"))
    raw = items.get("FLAGS")
    flags = flags_from_imap(raw) if isinstance(raw, list) else None
    ms = items.get("MODSEQ")
    modseq = _int(ms[0]) if isinstance(ms, list) and ms else None
    return uid, flags, modseq


def _vanished(d: Data) -> list[int]:
    args = [a for a in d.args if not isinstance(a, list)]
    if not args or not isinstance(args[-1], str):
        return []
    return _expand(args[-1])


class _Folder:
    """One folder's sync in progress: the records, the Maildir file names, the report."""

    def __init__(self, syncer: Syncer, row: FolderRow, mf: MaildirFolder, rep: FolderReport):
        self.s = syncer
        self.c = syncer.client
        self.state = syncer.state
        self.row = row
        self.mf = mf
        self.rep = rep
        self.local: dict[str, Flags] | None = None
        self.lnames: dict[str, str] = {}
        self.records: dict[int, Record] = {}
        self.idents: dict[int, str | None] = {}
        self.orphans: dict[str, Orphan] = {}
        self.unrecorded = False  # uploaded without APPENDUID: pair them by ident next pass
        self._server_idents: dict[int, str] = {}
        self._local_idents: dict[str, str] = {}
        self.reload(rescan=False)

    # -- state ------------------------------------------------------------------------------

    def scan(self, found: dict[str, str] | None) -> None:
        """Take a Maildir scan (unique → sub/filename), or None: trust the records."""
        if found is None:
            self.local = None
            return
        self.local = {u: self.mf.flags(ln) for u, ln in found.items()}
        self.lnames.update(found)
        for u in list(self.lnames):
            if u not in found:
                del self.lnames[u]

    def reload(self, *, rescan: bool) -> None:
        self.row = self.state.folder_by_key(self.row.key)
        self.records.clear()
        self.idents.clear()
        self.orphans.clear()
        records, idents, lnames = self.records, self.idents, self.lnames
        for uid, unique, base, lname, mid in self.state.rows(self.row.key):
            records[uid] = Record(
                uid, unique, flags_from_text(base), self.mf.flags(lname) if lname else None
            )
            idents[uid] = mid
            if lname and unique not in lnames:
                lnames[unique] = lname
        for o in self.state.orphans(self.row.key):
            self.orphans[o.unique] = Orphan(
                o.unique, o.base, self.mf.flags(o.lname) if o.lname else None, o.ident
            )
            if o.lname and o.unique not in self.lnames:
                self.lnames[o.unique] = o.lname
        if rescan:
            self.scan(self.mf.scan())

    def plan(self, view: ServerView) -> list[MessageAction]:
        if any(keywords_of(f) for f in view.flags.values()):
            admit = self.mf.admit
            view = ServerView({u: admit(f) for u, f in view.flags.items()}, view.vanished,
                              view.complete)  # fmt: skip
        records = list(self.records.values())
        orphans = list(self.orphans.values())
        need_local, need_server = idents_wanted(records, orphans, self.local, view)
        local_idents: dict[str, str] = {}
        for u in need_local:
            with contextlib.suppress(OSError, KeyError):
                local_idents[u] = self.mf.ident(self.lnames[u])
        server_idents = self.s.server_idents(need_server) if need_server else {}
        self._server_idents = server_idents
        self._local_idents = local_idents
        return plan_messages(
            records, orphans, self.local, view, local_idents, server_idents, self.s.options.mode
        )

    def finish(self, stamp: str | None, modseq: int | None, uidnext: int | None) -> None:
        """Record the folder as synced up to ``modseq``; the Maildir stamp only if nothing
        (neither we nor anyone else) touched the folder since it was taken."""
        keep = stamp if stamp is not None and self.mf.raw_stamp() == stamp else None
        if self.unrecorded:  # uploads without APPENDUID: the next run must look at the files
            keep = None
        self.state.update_folder(self.row.key, highestmodseq=modseq, uidnext=uidnext, stamp=keep)

    # -- carrying out a plan -----------------------------------------------------------------

    def execute(self, actions: Sequence[MessageAction]) -> bool:
        """Carry out a plan; True if anything was written to the server."""
        wrote = False
        dels = [a for a in actions if isinstance(a, DeleteServer)]
        links = [a for a in actions if isinstance(a, Link)]
        ups = [a for a in actions if isinstance(a, Upload)]
        local_dels = [a for a in actions if isinstance(a, DeleteLocal)]
        downs = [a for a in actions if isinstance(a, Download)]
        forgets = [a.uid for a in actions if isinstance(a, Forget)]
        forget_orphans = [a.unique for a in actions if isinstance(a, ForgetOrphan)]
        if dels:
            wrote |= self._delete_server(dels)
        if links:
            wrote |= self._links(links)
        if ups:
            wrote |= self._uploads(ups)
        if local_dels:
            self._delete_local(local_dels)
        if downs:
            self._downloads(downs)
        if forgets or forget_orphans:
            with self.state.transaction():
                self.state.forget(self.row.key, forgets)
                self.state.forget_orphans(self.row.key, forget_orphans)
            for uid in forgets:
                self.records.pop(uid, None)
            for u in forget_orphans:
                self.orphans.pop(u, None)
        return wrote

    def _delete_server(self, dels: list[DeleteServer]) -> bool:
        uids = sorted(a.uid for a in dels)
        c = self.c
        for chunk in _chunks(uids):
            c.check(b"UID STORE " + _uid_set(chunk) + b" +FLAGS.SILENT (\\Deleted)")
        if c.has("UIDPLUS"):
            for chunk in _chunks(uids):
                c.check(b"UID EXPUNGE " + _uid_set(chunk))
        else:
            # A plain EXPUNGE removes every \Deleted message: only when those are all ours.
            res = c.check(b"UID SEARCH DELETED")
            flagged = {int(t) for d in res.data("SEARCH") for t in d.args if isinstance(t, str)
                       and t.isdigit()}  # fmt: skip
            if not flagged - set(uids):
                c.check(b"EXPUNGE")
            else:
                log.warning("folder=%s event=expunge-skipped reason=other-deleted-messages",
                            self.row.name)  # fmt: skip
                return True  # the records stay: the messages are still there, \Deleted
        with self.state.transaction():
            self.state.forget(self.row.key, [a.uid for a in dels if not a.orphan])
            self.state.forget_orphans(self.row.key, [a.unique for a in dels if a.orphan])
        for a in dels:
            self.records.pop(a.uid, None)
            if a.orphan:
                self.orphans.pop(a.unique, None)
        self.rep.deleted_server += len(dels)
        return True

    def _links(self, links: list[Link]) -> bool:
        c = self.c
        groups: dict[tuple[Flags, Flags], list[int]] = {}
        for a in links:
            if a.server != a.server_from:
                key = (a.server - a.server_from, a.server_from - a.server)
                groups.setdefault(key, []).append(a.uid)
        for (add, remove), uids in sorted(groups.items(), key=lambda kv: sorted(kv[1])[:1]):
            for chunk in _chunks(sorted(uids)):
                if add:
                    c.check(b"UID STORE " + _uid_set(chunk) + b" +FLAGS.SILENT "
                            + imap_flag_list(add))  # fmt: skip
                if remove:
                    c.check(b"UID STORE " + _uid_set(chunk) + b" -FLAGS.SILENT "
                            + imap_flag_list(remove))  # fmt: skip
            self.rep.flags_server += len(uids)
        renamed = False
        rows: list[tuple[Link, str | None]] = []
        for a in links:
            lname = self.lnames.get(a.unique)
            if a.local is not None and lname is not None and a.local != a.local_from:
                try:
                    lname = self._set_flags(a.unique, lname, a.local)
                except FileNotFoundError:
                    continue  # moved meanwhile: the next run sees it again
                renamed = True
                self.rep.flags_local += 1
            rows.append((a, lname if a.local is not None else None))
        if renamed:
            self.mf.sync_dirs()
        with self.state.transaction():
            for a, lname in rows:
                known = self._ident_for(a)
                self.state.put(self.row.key, a.uid, a.unique, a.base, lname, known)
                self.idents[a.uid] = known
            self.state.forget_orphans(self.row.key, [a.unique for a, _ in rows if a.orphan])
        for a, lname in rows:
            self.records[a.uid] = Record(a.uid, a.unique, a.base, a.local if lname else None)
            if a.orphan:
                self.orphans.pop(a.unique, None)
            if a.new:
                self.rep.paired += 1
        return bool(groups)

    def _ident_for(self, a: Link) -> str | None:
        known = self.idents.get(a.uid)
        if known:
            return known
        if a.orphan and a.unique in self.orphans:
            return self.orphans[a.unique].ident
        return self._server_idents.get(a.uid) or self._local_idents.get(a.unique)

    def _set_flags(self, unique: str, lname: str, flags: Flags) -> str:
        try:
            new = self.mf.set_flags(lname, flags)
        except FileNotFoundError:
            found = self.mf.find(unique)
            if found is None:
                raise
            new = self.mf.set_flags(found, flags)
        self.lnames[unique] = new
        return new

    def _uploads(self, ups: list[Upload]) -> bool:
        from postfach.imap.response import format_date_time

        c = self.c
        multi = c.has("MULTIAPPEND")
        batch: list[tuple[Upload, bytes, int]] = []
        size = 0
        wrote = False

        def flush() -> None:
            nonlocal batch, size, wrote
            if not batch:
                return
            wrote = True
            parts: list[Part] = [b"APPEND ", c.encode_name(self._wire())]
            for up, data, mtime in batch:
                parts += [b" ", imap_flag_list(up.flags), b" ",
                          format_date_time(mtime).encode("ascii"), b" ", Literal(data)]  # fmt: skip
            try:
                res = c.check(*parts)
            except CommandFailed as exc:
                self.rep.errors.append(f"upload of {len(batch)} message(s) failed: {exc}")
                batch, size = [], 0
                return
            uids: list[int] = []
            if res.code == "APPENDUID" and len(res.code_args) >= 2:
                uv = _int(res.code_args[0])
                if uv == self.row.uidvalidity and isinstance(res.code_args[1], str):
                    uids = _expand(res.code_args[1])
            if len(uids) == len(batch):
                with self.state.transaction():
                    for (up, data, _), uid in zip(batch, uids, strict=True):
                        lname = self.lnames.get(up.unique)
                        mid = ident(len(data), message_id(data))
                        self.state.put(self.row.key, uid, up.unique, up.flags, lname, mid)
                        self.idents[uid] = mid
                        self.records[uid] = Record(uid, up.unique, up.flags, up.flags)
                    self.state.forget_orphans(self.row.key, [u.unique for u, _, _ in batch
                                                             if u.orphan])  # fmt: skip
            else:  # without APPENDUID the next pass pairs the new server messages by ident
                self.unrecorded = True
            self.rep.uploaded += len(batch)
            batch, size = [], 0

        for up in ups:
            lname = self.lnames.get(up.unique)
            if lname is None:
                continue
            try:
                data = to_crlf(self.mf.read(lname))
                mtime = self.mf.mtime(lname)
            except FileNotFoundError:
                continue
            if batch and (not multi or len(batch) >= APPEND_MESSAGES
                          or size + len(data) > APPEND_OCTETS):  # fmt: skip
                flush()
            batch.append((up, data, mtime))
            size += len(data)
        flush()
        return wrote

    def _delete_local(self, dels: list[DeleteLocal]) -> None:
        for a in dels:
            lname = self.lnames.pop(a.unique, None)
            if lname is not None:
                self.mf.remove(lname)
                found = self.mf.find(a.unique) if self.local is None else None
                if found:
                    self.mf.remove(found)
        self.mf.sync_dirs()
        self.state.forget(self.row.key, [a.uid for a in dels])
        for a in dels:
            self.records.pop(a.uid, None)
        self.rep.deleted_local += len(dels)

    def _downloads(self, downs: list[Download]) -> None:
        """Fetch, write to ``tmp`` and fsync (in a few threads: fsyncs of different files
        overlap), move into place, fsync the directories, then record; batch by batch."""
        from postfach.imap.response import parse_date_time

        flags = {a.uid: a.flags for a in downs}
        uids = sorted(flags)
        size = max(1, self.s.options.batch)
        pool = self.s.pool()
        staged: list[tuple[int, Future[Staged], str]] = []

        def take(d: Data) -> None:
            if d.name != "FETCH":
                return
            items = fetch_items(d)
            uid = _int(items.get("UID"))
            body = items.get("BODY[]")
            if uid is None or uid not in flags or not isinstance(body, bytes):
                return
            date = items.get("INTERNALDATE")
            when = None
            if isinstance(date, bytes):
                with contextlib.suppress(ValueError):
                    when = parse_date_time(date.decode("ascii"))
            mid = ident(len(body), message_id(body))
            staged.append((uid, pool.submit(self.mf.stage, to_lf(body), flags[uid], when), mid))

        for i in range(0, len(uids), size):
            staged.clear()
            chunk = uids[i : i + size]
            try:
                self.c.check(b"UID FETCH " + _uid_set(chunk) + b" (UID INTERNALDATE BODY.PEEK[])",
                             on_data=take)  # fmt: skip
            finally:
                done = [(uid, f.result(), mid) for uid, f, mid in staged]
            self.mf.commit([st for _, st, _ in done])
            with self.state.transaction():
                for uid, st, mid in done:
                    self.state.put(self.row.key, uid, st.unique, flags[uid], st.lname, mid)
                    self.idents[uid] = mid
            for uid, st, _ in done:
                self.records[uid] = Record(uid, st.unique, flags[uid], flags[uid])
                self.lnames[st.unique] = st.lname
            self.rep.downloaded += len(done)

    def _wire(self) -> str:
        return self.s._wire(self.row.name)


# ---- --watch ----------------------------------------------------------------------------------

#: RFC 2177: re-issue IDLE at least every 29 minutes; servers may drop an idle client at 30.
IDLE_RESTART: Final = 25 * 60.0
_CHANGES: Final = frozenset({"EXISTS", "EXPUNGE", "FETCH", "VANISHED"})


@dataclass(slots=True)
class WatchLimits:
    """How long ``watch`` runs and how it notices changes."""

    duration: float | None = None  # seconds; None = until stopped
    poll: float = 2.0  # how often the Maildir is looked at while IDLE
    interval: float = 300.0  # a full sync at least this often (other folders, no IDLE)
    retries: int = 5  # consecutive connection failures before giving up


def watch(
    connect: Callable[[], ImapClient],
    maildir: Maildir,
    state: SyncState,
    options: SyncOptions,
    limits: WatchLimits,
    on_report: Callable[[SyncReport], None],
    stop: threading.Event | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> int:
    """Sync, then IDLE on INBOX and sync again whenever the server reports a change, the
    Maildir changes, or ``limits.interval`` passed; until ``limits.duration`` is over or
    ``stop`` is set. Reconnects after a lost connection. Returns the number of syncs run."""
    stop = stop or threading.Event()
    deadline = None if limits.duration is None else clock() + limits.duration
    failures = 0
    runs = 0

    def remaining() -> float:
        return float("inf") if deadline is None else deadline - clock()

    while not stop.is_set() and remaining() > 0:
        try:
            client = connect()
        except ImapError as exc:
            failures += 1
            if failures > limits.retries:
                raise
            log.warning("event=watch-reconnect error=%s", exc)
            stop.wait(min(2.0**failures, max(0.0, remaining())))
            continue
        try:
            syncer = Syncer(client, maildir, state, options)
            try:
                while not stop.is_set() and remaining() > 0:
                    # Taken before the sync: a change made while it runs is not missed (our
                    # own writes cost one more, quick, sync).
                    stamps = maildir.stamps()
                    on_report(syncer.run())
                    runs += 1
                    failures = 0
                    if not _wait_for_change(
                        client, maildir, stamps, limits, stop, remaining, clock
                    ):
                        break
            finally:
                syncer.close()
        except ConnectionLost as exc:
            failures += 1
            if failures > limits.retries:
                raise
            log.warning("event=watch-connection-lost error=%s", exc)
            stop.wait(min(2.0**failures, max(0.0, remaining())))
            continue
        finally:
            client.logout()
    return runs


def _wait_for_change(
    client: ImapClient,
    maildir: Maildir,
    stamps: Mapping[str, str | None],
    limits: WatchLimits,
    stop: threading.Event,
    remaining: Callable[[], float],
    clock: Callable[[], float],
) -> bool:
    """Wait until something changed (True) or the time is up / stop is set (False)."""
    next_sync = clock() + limits.interval
    idle = client.has("IDLE")
    if idle:
        client.check(b"EXAMINE INBOX")
        client.selected = None  # read-only: the next sync SELECTs again
        client.idle_start()
    idle_since = clock()
    changed = False
    try:
        while not changed:
            if stop.is_set() or remaining() <= 0:
                return False
            wait = max(0.01, min(limits.poll, remaining(), next_sync - clock()))
            if idle:
                got = client.wait(wait)
                changed = any(isinstance(r, Data) and r.name in _CHANGES for r in got)
                if not changed and clock() - idle_since > IDLE_RESTART:
                    client.idle_done()
                    client.idle_start()
                    idle_since = clock()
            else:
                stop.wait(wait)
            if maildir.stamps() != stamps or clock() >= next_sync:
                changed = True
    finally:
        if idle:
            client.idle_done()
    return True

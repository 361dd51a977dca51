"""The sync planner: local state + server state → actions (pure core).

Nothing here reads a file, a socket or a clock: ``plan_messages`` and ``plan_folders`` take
what the engine found and return what it should do. The conflict rules live here and nowhere
else.

The rules
---------
*Flags* (``D F R S T`` ↔ ``\\Draft \\Flagged \\Answered \\Seen \\Deleted``) are merged **per
flag, three ways**, against the flags both sides had at the last sync (the *base*, kept in the
state file): a flag that one side changed takes that side's value; a flag neither side changed
keeps it. A flag is a yes/no value, so two sides that both changed it changed it the same way:
the merge never has to choose between them, and changes to different flags on the two sides are
both kept. ``merge_flags`` is that rule: ``(base & local & server) | ((local | server) - base)``.
Without a base (a message paired by identity, see below) the flags are the union of both sides.

*Deletions win* over flag changes: a message expunged on the server is removed locally, a file
removed locally is expunged on the server, whatever flags either side changed meanwhile.
``\\Deleted`` (``T``) is a flag like the others; only an expunge (a removed file) deletes.

*New messages* are copied to the other side, except that a new message on one side and a new
message on the other side with the same *ident* (size with CRLF line ends + Message-ID, see
`postfach.client.sync.names`) are the same message and are paired instead. This is what makes a
crash between storing a message and recording it harmless, and what keeps a UIDVALIDITY change
from duplicating mail: the messages of the old UIDVALIDITY become *orphans* (their local file,
their base flags and their ident), which pair with the server's messages by ident first. An
orphan nobody pairs with is uploaded again (never dropped); an orphan whose file was deleted
locally and that pairs with a server message gets that message expunged.

*Pull mode* (``--pull``) never writes to the server: server changes reach the Maildir, local
changes stay local and are *not* recorded as synced (the base stays what the server has), so a
later two-way sync still sends them.

*Folders* are matched by identity before name: the server's MAILBOXID (RFC 8474) and a small id
file in each local folder directory, so a rename on either side is a rename on the other side.
Both sides renamed differently: the server's name wins. A folder deleted on one side is deleted
on the other only if that copy holds nothing the deleting side has not seen (the engine checks
that; otherwise the folder is created again and its mail synced). INBOX is never renamed or
deleted. A rename whose target name exists on the other side is reported as a conflict and the
folder is left alone.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TypeAlias

from postfach.client.sync.names import INBOX, Flags

__all__ = [
    "Conflict",
    "CreateLocal",
    "CreateServer",
    "DeleteLocal",
    "DeleteLocalFolder",
    "DeleteServer",
    "DeleteServerFolder",
    "Download",
    "FolderAction",
    "FolderPlan",
    "FolderState",
    "Forget",
    "ForgetFolder",
    "ForgetOrphan",
    "Link",
    "LocalFolder",
    "MessageAction",
    "Mode",
    "Orphan",
    "Record",
    "RenameLocal",
    "RenameServer",
    "RenameState",
    "ServerFolder",
    "ServerView",
    "Upload",
    "idents_wanted",
    "merge_flags",
    "pair_by_ident",
    "plan_folders",
    "plan_messages",
]


class Mode(enum.Enum):
    SYNC = "sync"  # both ways
    PULL = "pull"  # server → Maildir only


def merge_flags(base: Flags | None, local: Flags, server: Flags) -> Flags:
    """Per-flag three-way merge; the union when there is no base (see the module text)."""
    if base is None:
        return local | server
    return (base & local & server) | ((local | server) - base)


# ---- message level ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Record:
    """A message synced before: server UID ↔ local unique name."""

    uid: int
    unique: str
    base: Flags  # the flags both sides had when last synced (pull mode: the server's)
    local: Flags | None  # the local file's flags as last seen; None = file gone (pull mode)


@dataclass(frozen=True, slots=True)
class Orphan:
    """A message of a previous UIDVALIDITY: its local file, base flags and ident."""

    unique: str
    base: Flags
    local: Flags | None
    ident: str | None


@dataclass(frozen=True, slots=True)
class ServerView:
    """The server's messages: every one (``complete``) or those changed since the last sync
    (QRESYNC: the changed and new ones in ``flags``, the expunged ones in ``vanished``)."""

    flags: Mapping[int, Flags]
    vanished: frozenset[int] = frozenset()
    complete: bool = True

    def present(self, uid: int) -> bool:
        if self.complete:
            return uid in self.flags
        return uid not in self.vanished


@dataclass(frozen=True, slots=True)
class Download:
    uid: int
    flags: Flags


@dataclass(frozen=True, slots=True)
class Upload:
    unique: str
    flags: Flags
    orphan: bool = False  # the file was an orphan: drop that row when recording


@dataclass(frozen=True, slots=True)
class Link:
    """Make both sides agree and record it. ``local``/``server`` are the target flags;
    ``local_from``/``server_from`` what the sides have now (changes only where they differ).
    ``local`` None: there is no local file (pull mode kept a local deletion)."""

    uid: int
    unique: str
    local: Flags | None
    server: Flags
    base: Flags
    local_from: Flags | None
    server_from: Flags
    new: bool = False  # paired by ident (not in the records yet)
    orphan: bool = False  # paired with an orphan: drop that row when recording


@dataclass(frozen=True, slots=True)
class DeleteLocal:
    uid: int
    unique: str


@dataclass(frozen=True, slots=True)
class DeleteServer:
    uid: int
    unique: str
    orphan: bool = False  # an orphan's deletion: drop that row, there is no record


@dataclass(frozen=True, slots=True)
class Forget:
    uid: int


@dataclass(frozen=True, slots=True)
class ForgetOrphan:
    unique: str


MessageAction: TypeAlias = (
    Download | Upload | Link | DeleteLocal | DeleteServer | Forget | ForgetOrphan
)


def _local_flags(
    local: Mapping[str, Flags] | None, unique: str, seen: Flags | None
) -> Flags | None:
    if local is None:
        return seen
    return local.get(unique)


def _new_on_server(records: Sequence[Record], server: ServerView) -> list[int]:
    bound = {r.uid for r in records}
    return sorted(uid for uid in server.flags if uid not in bound)


def _new_locally(
    records: Sequence[Record], orphans: Sequence[Orphan], local: Mapping[str, Flags] | None
) -> list[str]:
    if local is None:
        return []
    known = {r.unique for r in records} | {o.unique for o in orphans}
    return sorted(u for u in local if u not in known)


def idents_wanted(
    records: Sequence[Record],
    orphans: Sequence[Orphan],
    local: Mapping[str, Flags] | None,
    server: ServerView,
) -> tuple[list[str], list[int]]:
    """Which new local files and new server messages need an ident before planning.

    Only when there is something to pair on both sides: a first sync into an empty Maildir
    asks the server for nothing extra.
    """
    new_server = _new_on_server(records, server)
    new_local = _new_locally(records, orphans, local)
    if not new_server or (not new_local and not orphans):
        return [], []
    return new_local, new_server


def pair_by_ident(
    server_uids: Sequence[int],
    server_idents: Mapping[int, str],
    candidates: Sequence[str],
    candidate_idents: Mapping[str, str | None],
) -> dict[int, str]:
    """Pair server UIDs with local uniques of equal ident, first come first served (both in
    the order given). Messages without an ident never pair."""
    waiting: dict[str, list[str]] = {}
    for u in candidates:
        key = candidate_idents.get(u)
        if key:
            waiting.setdefault(key, []).append(u)
    out: dict[int, str] = {}
    for uid in server_uids:
        key = server_idents.get(uid)
        queue = waiting.get(key) if key else None
        if queue:
            out[uid] = queue.pop(0)
    return out


def _reconcile(
    uid: int,
    unique: str,
    base: Flags | None,
    local: Flags,
    server: Flags,
    recorded_base: Flags | None,
    recorded_local: Flags | None,
    mode: Mode,
    *,
    new: bool = False,
    orphan: bool = False,
) -> Link | None:
    merged = merge_flags(base, local, server)
    if mode is Mode.PULL:
        target_local, target_server, target_base = merged, server, server
    else:
        target_local = target_server = target_base = merged
    if (
        not new
        and not orphan
        and target_local == local == recorded_local
        and target_server == server
        and target_base == recorded_base
    ):
        return None
    return Link(uid, unique, target_local, target_server, target_base, local, server, new, orphan)


def plan_messages(
    records: Sequence[Record],
    orphans: Sequence[Orphan],
    local: Mapping[str, Flags] | None,
    server: ServerView,
    local_idents: Mapping[str, str] | None = None,
    server_idents: Mapping[int, str] | None = None,
    mode: Mode = Mode.SYNC,
) -> list[MessageAction]:
    """What to do in one folder.

    ``local`` is the Maildir scan (unique → flags), or None when the folder did not change
    since the state was written (then each record's ``local`` stands for the file).
    ``local_idents``/``server_idents`` are needed for what `idents_wanted` names.
    """
    if orphans and not server.complete:
        raise ValueError("orphans can only be resolved against a complete server listing")
    local_idents = local_idents or {}
    server_idents = server_idents or {}
    pull = mode is Mode.PULL
    actions: list[MessageAction] = []

    for r in sorted(records, key=lambda r: r.uid):
        lf = _local_flags(local, r.unique, r.local)
        if not server.present(r.uid):
            actions.append(Forget(r.uid) if lf is None else DeleteLocal(r.uid, r.unique))
            continue
        sf = server.flags.get(r.uid, r.base)
        if lf == r.local == r.base == sf or (pull and lf == r.local and sf == r.base):
            continue  # nothing changed on either side (the common case: keep it cheap)
        if lf is None:
            if not pull:
                actions.append(DeleteServer(r.uid, r.unique))
            elif r.local is not None or r.base != sf:
                actions.append(Link(r.uid, r.unique, None, sf, sf, None, sf))
            continue
        link = _reconcile(r.uid, r.unique, r.base, lf, sf, r.base, r.local, mode)
        if link is not None:
            actions.append(link)

    new_server = _new_on_server(records, server)
    new_local = _new_locally(records, orphans, local)
    orphan_by_unique = {o.unique: o for o in orphans}
    paired_orphans = pair_by_ident(
        new_server, server_idents, [o.unique for o in orphans], {o.unique: o.ident for o in orphans}
    )
    rest = [uid for uid in new_server if uid not in paired_orphans]
    paired_local = pair_by_ident(rest, server_idents, new_local, local_idents)

    for uid in new_server:
        sf = server.flags[uid]
        if uid in paired_orphans:
            o = orphan_by_unique[paired_orphans[uid]]
            lf = _local_flags(local, o.unique, o.local)
            if lf is None:
                if pull:
                    actions.append(Link(uid, o.unique, None, sf, sf, None, sf, True, True))
                else:
                    actions.append(DeleteServer(uid, o.unique, orphan=True))
                continue
            link = _reconcile(
                uid, o.unique, o.base, lf, sf, None, None, mode, new=True, orphan=True
            )
            assert link is not None
            actions.append(link)
        elif uid in paired_local:
            unique = paired_local[uid]
            lf = local[unique] if local is not None else frozenset()
            link = _reconcile(uid, unique, None, lf, sf, None, None, mode, new=True)
            assert link is not None
            actions.append(link)
        else:
            actions.append(Download(uid, sf))

    used_orphans = set(paired_orphans.values())
    for o in sorted(orphans, key=lambda o: o.unique):
        if o.unique in used_orphans:
            continue
        lf = _local_flags(local, o.unique, o.local)
        if lf is None:
            actions.append(ForgetOrphan(o.unique))
        elif not pull:
            actions.append(Upload(o.unique, lf, orphan=True))
    if not pull:
        used_local = set(paired_local.values())
        assert local is not None or not new_local
        for unique in new_local:
            if unique not in used_local and local is not None:
                actions.append(Upload(unique, local[unique]))
    return actions


# ---- folder level -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FolderState:
    key: int
    name: str
    local_id: str | None = None
    server_id: str | None = None  # MAILBOXID (RFC 8474)
    uidvalidity: int | None = None


@dataclass(frozen=True, slots=True)
class ServerFolder:
    name: str
    id: str | None = None
    uidvalidity: int | None = None


@dataclass(frozen=True, slots=True)
class LocalFolder:
    name: str
    id: str | None = None


@dataclass(frozen=True, slots=True)
class RenameLocal:
    key: int
    old: str
    new: str


@dataclass(frozen=True, slots=True)
class RenameServer:
    key: int
    old: str
    new: str


@dataclass(frozen=True, slots=True)
class RenameState:
    """Both sides were renamed to the same name: only the state changes."""

    key: int
    new: str


@dataclass(frozen=True, slots=True)
class CreateLocal:
    name: str


@dataclass(frozen=True, slots=True)
class CreateServer:
    name: str


@dataclass(frozen=True, slots=True)
class DeleteLocalFolder:
    """Deleted on the server: delete the local copy if it holds nothing new, else create the
    folder on the server again and sync."""

    key: int
    name: str


@dataclass(frozen=True, slots=True)
class DeleteServerFolder:
    """Deleted locally: delete it on the server if it did not change since the last sync,
    else create it locally again and sync."""

    key: int
    name: str


@dataclass(frozen=True, slots=True)
class ForgetFolder:
    key: int


@dataclass(frozen=True, slots=True)
class Conflict:
    name: str
    reason: str


FolderAction: TypeAlias = (
    RenameLocal | RenameServer | RenameState | CreateLocal | CreateServer | DeleteLocalFolder
    | DeleteServerFolder | ForgetFolder | Conflict
)  # fmt: skip


@dataclass(slots=True)
class FolderPlan:
    actions: list[FolderAction] = field(default_factory=list)
    sync: list[str] = field(default_factory=list)  # names to sync after the actions


def _by_id(folders: Iterable[ServerFolder | LocalFolder]) -> dict[str, str]:
    return {f.id: f.name for f in folders if f.id}


def plan_folders(
    states: Sequence[FolderState],
    server: Mapping[str, ServerFolder],
    local: Mapping[str, LocalFolder],
    mode: Mode = Mode.SYNC,
) -> FolderPlan:
    """Pair the folders of the state, the server and the Maildir; renames, creations and
    deletions to carry out first; the folders to sync. See the module text for the rules."""
    pull = mode is Mode.PULL
    plan = FolderPlan()
    states = sorted(states, key=lambda s: (s.name != INBOX, s.name))
    srv_ids, loc_ids = _by_id(server.values()), _by_id(local.values())
    state_srv_ids = {s.server_id for s in states if s.server_id}
    state_loc_ids = {s.local_id for s in states if s.local_id}
    state_names = {s.name for s in states}
    match_s: dict[int, str] = {}
    match_l: dict[int, str] = {}

    # 1. identity: MAILBOXID on the server, the id file locally (INBOX is always INBOX)
    for st in states:
        if st.name == INBOX:
            if INBOX in server:
                match_s[st.key] = INBOX
            if INBOX in local:
                match_l[st.key] = INBOX
            continue
        if st.server_id and st.server_id in srv_ids and srv_ids[st.server_id] != INBOX:
            match_s[st.key] = srv_ids[st.server_id]
        if st.local_id and st.local_id in loc_ids and loc_ids[st.local_id] != INBOX:
            match_l[st.key] = loc_ids[st.local_id]
    claimed_s, claimed_l = set(match_s.values()), set(match_l.values())

    # 2. the same name, unless that folder's identity belongs to another state folder
    for st in states:
        if st.key not in match_s:
            f = server.get(st.name)
            if f and f.name not in claimed_s and (f.id is None or f.id not in state_srv_ids):
                match_s[st.key] = f.name
                claimed_s.add(f.name)
        if st.key not in match_l:
            g = local.get(st.name)
            if g and g.name not in claimed_l and (g.id is None or g.id not in state_loc_ids):
                match_l[st.key] = g.name
                claimed_l.add(g.name)

    # 3. servers without MAILBOXID: a new name with the old UIDVALIDITY is a rename
    for st in states:
        if st.key in match_s or st.server_id or st.uidvalidity is None or st.name == INBOX:
            continue
        candidates = [
            f.name
            for f in server.values()
            if f.id is None and f.uidvalidity == st.uidvalidity
            and f.name not in claimed_s and f.name not in state_names
        ]  # fmt: skip
        if len(candidates) == 1:
            match_s[st.key] = candidates[0]
            claimed_s.add(candidates[0])

    for st in states:
        s, lo = match_s.get(st.key), match_l.get(st.key)
        if s is not None and lo is not None:
            if s == lo:
                if s != st.name:
                    plan.actions.append(RenameState(st.key, s))
                plan.sync.append(s)
            elif lo == st.name or (s != st.name and lo != st.name):
                # renamed on the server (or on both sides, differently: the server wins)
                if s in local and s not in (lo,):
                    plan.actions.append(Conflict(s, f"server renamed {st.name} to {s}, which"
                                                    " exists locally"))  # fmt: skip
                else:
                    plan.actions.append(RenameLocal(st.key, lo, s))
                    plan.sync.append(s)
            elif pull:
                plan.actions.append(Conflict(lo, f"renamed locally from {st.name}; --pull does"
                                                 " not rename on the server"))  # fmt: skip
            elif lo in server:
                plan.actions.append(Conflict(lo, f"renamed locally from {st.name}, but the"
                                                 " server has that name already"))  # fmt: skip
            else:
                plan.actions.append(RenameServer(st.key, s, lo))
                plan.sync.append(lo)
        elif s is not None:
            if st.name == INBOX:
                plan.actions.append(CreateLocal(INBOX))
                plan.sync.append(INBOX)
            elif not pull:
                plan.actions.append(DeleteServerFolder(st.key, s))
        elif lo is not None:
            if st.name == INBOX:  # a server always has an INBOX; never delete the Maildir
                plan.sync.append(INBOX)
            else:
                plan.actions.append(DeleteLocalFolder(st.key, lo))
        else:
            plan.actions.append(ForgetFolder(st.key))

    claimed_s.update(match_s.values())
    claimed_l.update(match_l.values())
    # Names the renames above free or take.
    local_after = set(local)
    server_after = set(server)
    for a in plan.actions:
        if isinstance(a, RenameLocal):
            local_after.discard(a.old)
            local_after.add(a.new)
        elif isinstance(a, RenameServer):
            server_after.discard(a.old)
            server_after.add(a.new)
    for name in sorted(server, key=lambda n: (n != INBOX, n)):
        if name in claimed_s:
            continue
        if name in local and name not in claimed_l:
            claimed_l.add(name)  # the same name on both sides, new to the state: adopt
        elif name in local_after:
            plan.actions.append(Conflict(name, "the local name is in use by another folder"))
            continue
        else:
            plan.actions.append(CreateLocal(name))
        plan.sync.append(name)
    if not pull:
        for name in sorted(local):
            if name in claimed_l:
                continue
            if name in server_after:
                plan.actions.append(Conflict(name, "the server name is in use by another folder"))
                continue
            plan.actions.append(CreateServer(name))
            plan.sync.append(name)
    return plan

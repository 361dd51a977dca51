"""What ``postfach migrate`` copies where (pure core).

Folders: the remote names (in the server's hierarchy delimiter) become postfach names with ``/``
between levels. A server that keeps every folder under ``INBOX`` (Courier, Cyrus, older
hosting setups: ``INBOX.Sent``, ``INBOX.Archive.2023``) has that prefix taken off. Special-use
folders (RFC 6154 attributes ``\\Sent \\Drafts \\Trash \\Junk \\Archive``) go into the local
folder with the same attribute; a server without SPECIAL-USE is matched by the well-known names
other programs use (``Sent Items``, ``Gesendet``, ``Deleted Messages``, ``Spam``, ...). Virtual
folders (``\\All``, ``\\Flagged``: Gmail's "All Mail", "Starred") hold copies of messages that
live in other folders and are not copied; ``\\Noselect`` folders hold no messages.

Messages: a remote message is copied once. The state remembers (folder, UIDVALIDITY, UID) of
everything copied; a message not in the state whose Message-ID and size match a message already
in the local folder that no state row accounts for is taken as the same message (a run that
stopped between storing and recording, or mail that was already there) and not copied again.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final

__all__ = [
    "SPECIAL_USES",
    "FolderMap",
    "MessagePlan",
    "RemoteFolder",
    "RemoteMessage",
    "canonical_name",
    "dedup_key",
    "map_folders",
    "plan_messages",
]

INBOX: Final = "INBOX"
SPECIAL_USES: Final = ("\\Sent", "\\Drafts", "\\Trash", "\\Junk", "\\Archive")
#: Folders that only show messages living elsewhere: copying them would duplicate mail.
VIRTUAL: Final = frozenset({"\\all", "\\flagged"})
NOT_SELECTABLE: Final = frozenset({"\\noselect", "\\nonexistent"})

#: Names (lower case, top level) mail programs and servers use for special folders.
WELL_KNOWN: Final[Mapping[str, str]] = {
    **dict.fromkeys(
        ("sent", "sent items", "sent messages", "sent mail", "sent-mail", "outbox sent",
         "gesendet", "gesendete objekte", "gesendete elemente", "gesendete nachrichten",
         "envoyés", "elementos enviados", "posta inviata"), "\\Sent"),
    **dict.fromkeys(("drafts", "draft", "entwürfe", "brouillons", "borradores", "bozze"),
                    "\\Drafts"),
    **dict.fromkeys(
        ("trash", "deleted items", "deleted messages", "deleted", "bin", "papierkorb",
         "gelöschte elemente", "gelöschte objekte", "corbeille", "papelera", "cestino"),
        "\\Trash"),
    **dict.fromkeys(("junk", "spam", "junk e-mail", "junk email", "junk mail", "bulk mail",
                     "unerwünscht", "courrier indésirable"), "\\Junk"),
    **dict.fromkeys(("archive", "archives", "archiv", "archivo", "archivio"), "\\Archive"),
}  # fmt: skip


@dataclass(frozen=True, slots=True)
class RemoteFolder:
    wire: str  # as the server names it (decoded from modified UTF-7)
    delimiter: str  # the server's hierarchy delimiter ("" when flat)
    attributes: frozenset[str] = frozenset()  # as sent, e.g. {"\\HasNoChildren", "\\Sent"}
    subscribed: bool = False

    def has(self, attribute: str) -> bool:
        return attribute.lower() in {a.lower() for a in self.attributes}

    @property
    def special_use(self) -> str | None:
        lower = {a.lower() for a in self.attributes}
        for su in SPECIAL_USES:
            if su.lower() in lower:
                return su
        return None


@dataclass(frozen=True, slots=True)
class FolderMap:
    remote: RemoteFolder
    local: str | None  # None: not copied (see ``why``)
    special_use: str | None = None  # the local folder's special use, when it is one
    why: str = ""  # how the mapping was made, or why it is skipped

    @property
    def copied(self) -> bool:
        return self.local is not None


def canonical_name(wire: str, delimiter: str, strip_inbox: bool) -> str:
    """``INBOX.Archive.2023`` (delimiter ``.``) → ``Archive/2023`` when the server keeps its
    folders under INBOX; a ``/`` inside a level (possible when ``/`` is not the delimiter)
    becomes ``-`` so that levels stay levels."""
    if wire.upper() == INBOX:
        return INBOX
    levels = wire.split(delimiter) if delimiter else [wire]
    levels = [lv.replace("/", "-") if delimiter != "/" else lv for lv in levels]
    if strip_inbox and len(levels) > 1 and levels[0].upper() == INBOX:
        levels = levels[1:]
    levels = [lv.strip() or "_" for lv in levels]
    name = "/".join(levels)
    return INBOX if name.upper() == INBOX else name


def _under_inbox(folders: Sequence[RemoteFolder]) -> bool:
    """All folders but INBOX live under ``INBOX<delimiter>``: the Courier/Cyrus layout."""
    others = [f for f in folders if f.wire.upper() != INBOX and f.delimiter]
    return bool(others) and all(
        f.wire.upper().startswith(INBOX + f.delimiter.upper()) for f in others
    )


def map_folders(
    folders: Sequence[RemoteFolder], local_special: Mapping[str, str]
) -> list[FolderMap]:
    """Where each remote folder goes. ``local_special`` is the local account's special-use
    attribute → folder name (``{"\\\\Sent": "Sent", ...}``).

    One remote folder per special use is mapped onto the local special folder: one with the
    attribute first, else one found by name; any other keeps its own name.
    """
    strip = _under_inbox(folders)
    names = {f.wire: canonical_name(f.wire, f.delimiter, strip) for f in folders}
    claimed: dict[str, str] = {}  # special use -> remote wire
    how: dict[str, str] = {}
    for f in sorted(folders, key=lambda f: f.wire):
        su = f.special_use
        if su and su not in claimed and su in local_special and not _skip(f):
            claimed[su] = f.wire
            how[f.wire] = f"special-use {su}"
    for f in sorted(folders, key=lambda f: f.wire):
        if f.wire in how or f.special_use or _skip(f):
            continue
        name = names[f.wire]
        if "/" in name:
            continue
        su = WELL_KNOWN.get(name.lower())
        if su and su not in claimed and su in local_special:
            claimed[su] = f.wire
            how[f.wire] = f"well-known name for {su}"
    by_wire = {w: su for su, w in claimed.items()}
    out: list[FolderMap] = []
    taken: set[str] = set(local_special[su] for su in claimed)
    for f in folders:
        reason = _skip(f)
        if reason:
            out.append(FolderMap(f, None, None, reason))
            continue
        if f.wire in by_wire:
            su = by_wire[f.wire]
            out.append(FolderMap(f, local_special[su], su, how[f.wire]))
            continue
        name = names[f.wire]
        if name in taken and name != INBOX:
            base, n = name, 2
            while f"{base} ({n})" in taken:
                n += 1
            name = f"{base} ({n})"
        taken.add(name)
        out.append(FolderMap(f, name, None, "same name" if name == f.wire else "renamed"))
    return sorted(out, key=lambda m: (m.remote.wire.upper() != INBOX, m.remote.wire))


def _skip(f: RemoteFolder) -> str:
    lower = {a.lower() for a in f.attributes}
    if lower & NOT_SELECTABLE:
        return "holds no messages (\\Noselect)"
    virtual = lower & VIRTUAL
    if virtual:
        attr = "\\All" if "\\all" in virtual else "\\Flagged"
        return f"virtual folder ({attr}): its messages are copied from their own folders"
    return ""


# ---- messages -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RemoteMessage:
    uid: int
    size: int
    message_id: str  # the Message-ID field value, "" if none


def dedup_key(message_id: str, size: int) -> str:
    """What identifies a message across servers without its body: size and Message-ID.
    A message without Message-ID has no key (``""``): only the state keeps it from being
    copied twice."""
    mid = " ".join(message_id.split())
    return f"{size}:{mid}" if mid else ""


@dataclass(slots=True)
class MessagePlan:
    copy: list[RemoteMessage] = field(default_factory=list)
    known: int = 0  # copied by an earlier run (in the state)
    duplicates: list[tuple[RemoteMessage, str]] = field(default_factory=list)  # already there
    #: keys of unrecorded local messages without Message-ID (their bytes' SHA-256), to match
    #: keyless remote messages against once their bytes are downloaded
    free: Counter[str] = field(default_factory=Counter)

    @property
    def bytes(self) -> int:
        return sum(m.size for m in self.copy)


def plan_messages(
    remote: Iterable[RemoteMessage],
    done: set[int],
    local_keys: Counter[str],
    claimed_keys: Counter[str],
) -> MessagePlan:
    """The remote messages to copy into one local folder.

    ``done``: UIDs the state has for this folder and UIDVALIDITY. ``local_keys``: dedup keys of
    the messages in the local folder (a multiset); ``claimed_keys``: keys of the state's rows
    that point at that local folder. A key present locally more often than claimed is a message
    stored but never recorded (or already there before), and takes one remote message with the
    same key.
    """
    plan = MessagePlan()
    free = Counter({k: n - claimed_keys.get(k, 0) for k, n in local_keys.items()})
    for m in sorted(remote, key=lambda m: m.uid):
        if m.uid in done:
            plan.known += 1
            continue
        key = dedup_key(m.message_id, m.size)
        if key and free.get(key, 0) > 0:
            free[key] -= 1
            plan.duplicates.append((m, key))
            continue
        plan.copy.append(m)
    return plan

"""IMAP commands as frozen dataclasses: the contract between the parser and the session.

Pure core. `postfach.imap.parser` produces these from complete command bytes; `session.py`
executes them. Mailbox names are decoded to Unicode here (modified UTF-7 from IMAP4rev1 clients
is decoded by the parser unless UTF8=ACCEPT is enabled). Every command carries its tag.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

# ---- shared values ----------------------------------------------------------------------------


class UndecodableName(str):
    """A mailbox name, reference or pattern that is not valid modified UTF-7 (RFC 3501 §5.1.3),
    kept as sent. It is well-formed IMAP (an astring), so it is not a syntax error: it names no
    mailbox and matches none (SELECT answers NO, LIST lists nothing, CREATE refuses it)."""

    __slots__ = ()


@dataclass(frozen=True, slots=True)
class SequenceSet:
    """RFC 9051 §9 sequence-set: ``None`` in a range is ``*``; ``saved`` is ``$`` (RFC 5182).

    Ranges are kept as written (``(5, 3)`` means 3:5); evaluation against a mailbox lives in
    `postfach.imap.sequence`.
    """

    ranges: tuple[tuple[int | None, int | None], ...] = ()
    saved: bool = False


@dataclass(frozen=True, slots=True)
class Command:
    tag: str


# ---- any state (RFC 9051 §6.1) ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Capability(Command):
    pass


@dataclass(frozen=True, slots=True)
class Noop(Command):
    pass


@dataclass(frozen=True, slots=True)
class Logout(Command):
    pass


@dataclass(frozen=True, slots=True)
class Id(Command):
    """RFC 2971. ``None`` for ``ID NIL``."""

    params: tuple[tuple[str, str | None], ...] | None


# ---- not authenticated (RFC 9051 §6.2) -------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StartTls(Command):
    pass


@dataclass(frozen=True, slots=True)
class Authenticate(Command):
    mechanism: str  # upper case
    initial: bytes | None  # SASL-IR initial response, base64-decoded; b"" for "="


@dataclass(frozen=True, slots=True)
class Login(Command):
    username: str
    password: str


# ---- authenticated (RFC 9051 §6.3) -----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Enable(Command):
    capabilities: tuple[str, ...]  # upper case


@dataclass(frozen=True, slots=True)
class QresyncParams:
    """RFC 7162 §3.2.5: SELECT ... (QRESYNC (uidvalidity modseq [known-uids [(seq uid)]]))."""

    uidvalidity: int
    modseq: int
    known_uids: SequenceSet | None = None
    seq_match: tuple[SequenceSet, SequenceSet] | None = None


@dataclass(frozen=True, slots=True)
class Select(Command):
    mailbox: str
    readonly: bool = False  # EXAMINE
    condstore: bool = False
    qresync: QresyncParams | None = None


@dataclass(frozen=True, slots=True)
class Create(Command):
    mailbox: str
    special_use: tuple[str, ...] = ()  # RFC 6154 CREATE-SPECIAL-USE: ("\\Sent",)


@dataclass(frozen=True, slots=True)
class Delete(Command):
    mailbox: str


@dataclass(frozen=True, slots=True)
class Rename(Command):
    old: str
    new: str


@dataclass(frozen=True, slots=True)
class Subscribe(Command):
    mailbox: str


@dataclass(frozen=True, slots=True)
class Unsubscribe(Command):
    mailbox: str


@dataclass(frozen=True, slots=True)
class List(Command):
    """LIST with RFC 5258 LIST-EXTENDED, RFC 5819 LIST-STATUS, RFC 6154 SPECIAL-USE.

    ``selection``: upper-case selection options (SUBSCRIBED, REMOTE, RECURSIVEMATCH, SPECIAL-USE).
    ``return_opts``: upper-case return options (SUBSCRIBED, CHILDREN, SPECIAL-USE); STATUS items
    separately in ``status_items``. ``extended`` is True when the client used any extended syntax
    (then the response follows RFC 5258 rules).
    """

    reference: str
    patterns: tuple[str, ...]
    selection: tuple[str, ...] = ()
    return_opts: tuple[str, ...] = ()
    status_items: tuple[str, ...] = ()
    extended: bool = False


@dataclass(frozen=True, slots=True)
class Lsub(Command):
    """IMAP4rev1 only (RFC 3501 §6.3.9)."""

    reference: str
    pattern: str


@dataclass(frozen=True, slots=True)
class Namespace(Command):
    pass


@dataclass(frozen=True, slots=True)
class Status(Command):
    mailbox: str
    items: tuple[str, ...]  # upper case: MESSAGES UIDNEXT UIDVALIDITY UNSEEN DELETED SIZE ...


@dataclass(frozen=True, slots=True)
class AppendMessage:
    flags: tuple[str, ...]  # as sent, e.g. ("\\Seen", "$Forwarded")
    internal_date: str | None  # the date-time string as sent, or None
    data: bytes
    binary: bool = False  # literal8 (RFC 3516)


@dataclass(frozen=True, slots=True)
class Append(Command):
    """APPEND, with RFC 3502 MULTIAPPEND: one or more messages, stored all or none."""

    mailbox: str
    messages: tuple[AppendMessage, ...]


@dataclass(frozen=True, slots=True)
class Idle(Command):
    pass


@dataclass(frozen=True, slots=True)
class GetQuota(Command):
    root: str


@dataclass(frozen=True, slots=True)
class GetQuotaRoot(Command):
    mailbox: str


@dataclass(frozen=True, slots=True)
class SetQuota(Command):
    root: str
    limits: tuple[tuple[str, int], ...]


# ---- selected (RFC 9051 §6.4) ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Check(Command):
    """IMAP4rev1 only; rev2 removed it (treated as NOOP)."""


@dataclass(frozen=True, slots=True)
class Close(Command):
    pass


@dataclass(frozen=True, slots=True)
class Unselect(Command):
    pass


@dataclass(frozen=True, slots=True)
class Expunge(Command):
    uids: SequenceSet | None = None  # UID EXPUNGE (RFC 4315)


@dataclass(frozen=True, slots=True)
class SearchKey:
    """One search criterion; ``keys`` holds children for AND/OR/NOT.

    ``name`` is the upper-case key: ALL, ANSWERED, BCC, BEFORE, BODY, CC, DELETED, DRAFT, FLAGGED,
    FROM, HEADER, KEYWORD, LARGER, NEW, NOT, OLD, ON, OR, RECENT, SEEN, SENTBEFORE, SENTON,
    SENTSINCE, SINCE, SMALLER, SUBJECT, TEXT, TO, UID, UNANSWERED, UNDELETED, UNDRAFT, UNFLAGGED,
    UNKEYWORD, UNSEEN, MODSEQ, OLDER, YOUNGER, SAVEDBEFORE, SAVEDON, SAVEDSINCE, SAVEDATESUPPORTED,
    EMAILID, THREADID; ``SEQSET`` for a bare sequence set and ``AND`` for a parenthesised list.
    ``value``: str for strings, int for numbers (sizes, MODSEQ, OLDER/YOUNGER seconds),
    `datetime.date` for dates (kept as an ISO string ``YYYY-MM-DD`` here to stay hashable),
    `SequenceSet` for UID/SEQSET, ``(field, value)`` for HEADER.
    """

    name: str
    value: object = None
    keys: tuple[SearchKey, ...] = ()


@dataclass(frozen=True, slots=True)
class Search(Command):
    uid: bool
    criteria: SearchKey  # an AND of the top-level keys
    charset: str | None = None
    # RFC 4731 ESEARCH return options (upper case: MIN MAX ALL COUNT SAVE); None = plain SEARCH.
    return_opts: tuple[str, ...] | None = None


@dataclass(frozen=True, slots=True)
class FetchAttr:
    """A FETCH item without a section: FLAGS, INTERNALDATE, RFC822.SIZE, ENVELOPE, BODYSTRUCTURE,
    BODY (non-extensible structure), UID, MODSEQ, SAVEDATE, EMAILID, THREADID, RFC822,
    RFC822.HEADER, RFC822.TEXT, PREVIEW (value "LAZY" when PREVIEW (LAZY))."""

    name: str
    value: str | None = None


@dataclass(frozen=True, slots=True)
class FetchSection:
    """BODY[...], BODY.PEEK[...], BINARY[...], BINARY.PEEK[...] (RFC 9051 §6.4.5, RFC 3516).

    ``part``: section part numbers, e.g. (1, 2); ``spec``: "", "HEADER", "HEADER.FIELDS",
    "HEADER.FIELDS.NOT", "TEXT", "MIME"; ``fields``: upper-case names for HEADER.FIELDS(.NOT);
    ``partial``: (origin, count) for ``<origin.count>``.
    """

    peek: bool
    part: tuple[int, ...] = ()
    spec: str = ""
    fields: tuple[str, ...] = ()
    partial: tuple[int, int] | None = None
    binary: bool = False


@dataclass(frozen=True, slots=True)
class FetchBinarySize:
    part: tuple[int, ...]


FetchItem = FetchAttr | FetchSection | FetchBinarySize


@dataclass(frozen=True, slots=True)
class Fetch(Command):
    uid: bool
    sequence: SequenceSet
    items: tuple[FetchItem, ...]  # macros ALL/FAST/FULL already expanded
    changedsince: int | None = None  # RFC 7162 CHANGEDSINCE
    vanished: bool = False  # RFC 7162 VANISHED modifier (UID FETCH only)


@dataclass(frozen=True, slots=True)
class Store(Command):
    uid: bool
    sequence: SequenceSet
    mode: Literal["set", "add", "remove"]
    silent: bool
    flags: tuple[str, ...]
    unchangedsince: int | None = None  # RFC 7162 UNCHANGEDSINCE


@dataclass(frozen=True, slots=True)
class Copy(Command):
    uid: bool
    sequence: SequenceSet
    mailbox: str


@dataclass(frozen=True, slots=True)
class Move(Command):
    uid: bool
    sequence: SequenceSet
    mailbox: str


@dataclass(frozen=True, slots=True)
class Replace(Command):
    """RFC 8508: REPLACE / UID REPLACE."""

    uid: bool
    number: int
    mailbox: str
    message: AppendMessage


@dataclass(frozen=True, slots=True)
class Done:
    """The DONE line ending IDLE (not a tagged command)."""


AnyCommand = (
    Capability | Noop | Logout | Id | StartTls | Authenticate | Login | Enable | Select | Create
    | Delete | Rename | Subscribe | Unsubscribe | List | Lsub | Namespace | Status | Append | Idle
    | GetQuota | GetQuotaRoot | SetQuota | Check | Close | Unselect | Expunge | Search | Fetch
    | Store | Copy | Move | Replace
)  # fmt: skip

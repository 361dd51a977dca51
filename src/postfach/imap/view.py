"""A session's view of its selected mailbox (pure core; DESIGN.md "Protocol cores").

The view holds what the *client* knows: the message sequence numbers (a sorted list of UIDs;
sequence number n is the n-th), the flags, keywords and MODSEQ of each message, and the store
changes (`MessageAdded`, `MessagesExpunged`, `FlagsChanged`) not yet reported. The session feeds
every change of its account to `View.apply` (changes of other mailboxes are ignored) and asks
`View.pending_updates` for the untagged responses to send before each tagged reply.

Rules, with the RFC they come from:

- EXPUNGE (and VANISHED) is never sent while a FETCH, STORE or SEARCH by sequence number runs
  (RFC 9051 §7.5.1, RFC 7162 §3.2.10): the session passes ``allow_expunge=False`` then. Until it
  is reported an expunged message keeps its sequence number, so every number the client holds
  stays valid. `is_expunged` tells the session which messages are gone; recommended handling
  (RFC 2180 §4.1): FETCH answers the other messages and ends with ``NO [EXPUNGEISSUED]``; STORE
  skips them; SEARCH never matches them (their data is gone from the store).
- With QRESYNC enabled, expunges are reported as ``* VANISHED uid-set`` (RFC 7162 §3.2.10),
  otherwise as ``* n EXPUNGE`` lines in ascending order, each number already reduced by the
  EXPUNGEs before it (RFC 9051 §7.5.1).
- New messages are reported with ``* n EXISTS`` (RFC 9051 §7.4.1) after the expunges that are
  sent in the same batch, so the count is always the client's new count; EXISTS never decreases
  the count (RFC 9051 §7.4.1).
- Flag changes are reported as ``* n FETCH (UID u FLAGS (...))``; UID is always included (allowed
  by RFC 9051 §7.5.2, needed by RFC 7162 §3.1); with CONDSTORE also ``MODSEQ (m)`` (RFC 7162 §3.1:
  every untagged FETCH caused by a STORE or an external agent carries UID and MODSEQ).
- This session's own STORE (`View.stored`): without .SILENT a FETCH with the new flags is sent
  for every message of the set (RFC 9051 §6.4.6); with .SILENT no FLAGS are sent, but with
  CONDSTORE a ``FETCH (UID u MODSEQ (m))`` still is (RFC 7162 §3.1.3: the client must learn the
  new mod-sequence). A change by someone else is reported even during a .SILENT STORE
  (RFC 9051 §6.4.6).
- \\Recent (RFC 3501 §2.3.2) exists for IMAP4rev1 sessions only (RFC 9051 §2.3.2 dropped it):
  a message is recent in exactly one session, the first to learn of it. `RecentClaims`, shared
  by every session of a server, keeps per mailbox the highest UID some session has claimed; the
  view holds the UIDs recent in its own session (`recent_uids`, given at SELECT) and claims new
  messages as it learns of them through ``claim`` (None for IMAP4rev2: no \\Recent, no RECENT).
  With ``claim`` set, each EXISTS is followed by ``* n RECENT`` (RFC 3501 §7.3.2) and FETCH FLAGS
  shows \\Recent.
- ``$``, the saved search result (RFC 5182 §2.1), lives here as UIDs (``saved``); expunged
  messages are removed from it when their expunge is reported.
- `highestmodseq` never claims more than the client has been told: while an expunge or a flag
  change is waiting to be reported it stays below that change's MODSEQ, so a later QRESYNC
  (RFC 7162 §3.2.5) from that value still returns it.

Changes are state, not a log: each carries the message's complete new flags and MODSEQ, so a
change older than the one already applied (lower MODSEQ) is ignored, and a change that repeats
what the initial listing already showed is harmless. Subscribe to the hub *before* listing the
messages, and pass the HIGHESTMODSEQ read with (or before) the listing: changes at or below it
are ignored. Genuinely new messages always have a UID above every UID seen so far (RFC 9051
§2.3.1.1), which tells a stale MessageAdded (of a message expunged before the listing) apart.

Costs: sequence number <-> UID is a bisect in a sorted list; reporting k expunges costs
O(k log n) plus one O(n) pass when k is large (never O(n·k)); a UID set of r ranges resolves in
O(r log n + result).
"""

from __future__ import annotations

import bisect
from array import array
from collections.abc import Callable, Iterable, Sequence
from typing import Literal, Protocol

from postfach.imap.commands import SequenceSet
from postfach.imap.fetch import format_flags
from postfach.imap.listing import Listing
from postfach.imap.sequence import format_sequence_set, intersect_sorted, resolve
from postfach.store.api import (
    Change,
    Flag,
    FlagsChanged,
    MessageAdded,
    MessageMeta,
    MessagesExpunged,
)

__all__ = ["FlagState", "RecentClaims", "View"]

# (flags, keywords, modseq) of one message.
_State = tuple[Flag, tuple[str, ...], int]

# Below this many expunges per report, delete from the UID list one by one (a memmove each);
# above it, rebuild the list in one pass.
_DELETE_ONE_BY_ONE = 64


def _same_flags(a: _State, b: _State) -> bool:
    """Same flags and keywords (keywords compare case-insensitively, RFC 9051 §2.3.2)."""
    if a[0] != b[0]:
        return False
    if a[1] == b[1]:
        return True
    return {k.lower() for k in a[1]} == {k.lower() for k in b[1]}


_SYSTEM_FLAGS = {f.names()[0].lower(): f for f in Flag if f}


def _apply_store(
    flags: Flag, keywords: tuple[str, ...], mode: str, names: Sequence[str]
) -> tuple[Flag, tuple[str, ...]]:
    """The flags a client computes for STORE FLAGS / +FLAGS / -FLAGS (RFC 9051 §6.4.6)."""
    bits = Flag(0)
    words: dict[str, str] = {}
    for name in names:
        system = _SYSTEM_FLAGS.get(name.lower())
        if system is not None:
            bits |= system
        elif not name.startswith("\\"):
            words[name.lower()] = name
    if mode == "set":
        return bits, tuple(words.values())
    current = {k.lower(): k for k in keywords}
    if mode == "add":
        return flags | bits, tuple({**current, **words}.values())
    return flags & ~bits, tuple(v for k, v in current.items() if k not in words)


class RecentClaims:
    """Which messages some session has already been told of as \\Recent (RFC 3501 §2.3.2).

    Per mailbox (id and UIDVALIDITY), the highest UID claimed: UIDs only grow (RFC 9051
    §2.3.1.1), so every message above it is recent for the next session to learn of it. Kept in
    memory for the server's lifetime: after a restart every message is recent again for the
    first session that selects its mailbox, which RFC 3501 §2.3.2 prescribes when it "is not
    possible to determine" (a SHOULD). EXAMINE never claims (RFC 3501 §6.3.2).
    """

    __slots__ = ("_claimed",)

    def __init__(self) -> None:
        self._claimed: dict[tuple[int, int], int] = {}

    def claimed(self, mailbox: tuple[int, int]) -> int:
        """The highest UID claimed in ``mailbox`` (id, UIDVALIDITY); 0 when none."""
        return self._claimed.get(mailbox, 0)

    def forget(self, mailbox: tuple[int, int]) -> None:
        """The mailbox was deleted: a later one with the same id and UIDVALIDITY starts afresh."""
        self._claimed.pop(mailbox, None)

    def claim(self, mailbox: tuple[int, int], uid: int) -> bool:
        """Claim ``uid`` and every UID below it; True when ``uid`` was not claimed before."""
        return self.claim_upto(mailbox, uid) < uid

    def claim_upto(self, mailbox: tuple[int, int], uid: int) -> int:
        """Claim every UID up to ``uid``; the highest UID claimed before, in one step, so that
        what a SELECT finds unclaimed is what it claims (`postfach.sharedrecent`: another
        process may claim in between two calls)."""
        before = self._claimed.get(mailbox, 0)
        if uid > before:
            self._claimed[mailbox] = uid
        return before


class FlagState(Protocol):
    """Anything carrying a message's complete flag state: `MessageMeta`, `FlagsChanged`, ..."""

    @property
    def uid(self) -> int: ...
    @property
    def flags(self) -> Flag: ...
    @property
    def keywords(self) -> tuple[str, ...]: ...
    @property
    def modseq(self) -> int: ...


class View:
    """The client's picture of one selected mailbox, and what it has not been told yet.

    Memory: the mailbox as listed at SELECT is a shared, immutable `Listing`; the view holds only
    what differs from it: the states of messages changed or added since (``_state``), the UIDs
    reported expunged (``_removed``), and its own copy of the UID array once that changes.
    """

    __slots__ = (
        "_added",
        "_base",
        "_claim",
        "_expunged",
        "_force",
        "_max_uid",
        "_modseq",
        "_queue",
        "_removed",
        "_snapshot_modseq",
        "_state",
        "_told",
        "_uids",
        "condstore",
        "mailbox_id",
        "qresync",
        "recent_uids",
        "saved",
        "uidvalidity",
    )

    def __init__(
        self,
        mailbox_id: int,
        uidvalidity: int,
        messages: Listing | Iterable[MessageMeta],
        highestmodseq: int,
        *,
        condstore: bool = False,
        qresync: bool = False,
        recent: Iterable[int] = (),
        claim: Callable[[int], bool] | None = None,
    ) -> None:
        """``messages``: the mailbox as listed at SELECT: a `Listing` (shared, not copied) or
        `MessageMeta` objects in any order.

        ``recent``: the UIDs recent in this session at SELECT; ``claim(uid)``: whether a new
        message is recent in this session (None: IMAP4rev2, no \\Recent at all).
        """
        self.mailbox_id = mailbox_id
        self.uidvalidity = uidvalidity
        self.condstore = condstore or qresync  # QRESYNC implies CONDSTORE (RFC 7162 §3.2.3)
        self.qresync = qresync
        self.saved: list[int] = []  # RFC 5182 "$", as UIDs
        # \\Recent in this session (RFC 3501); dicts as sets: an empty one is a third the size
        self.recent_uids: dict[int, None] = dict.fromkeys(recent)
        self._claim = claim
        if not isinstance(messages, Listing):
            messages = Listing.of_messages(mailbox_id, uidvalidity, highestmodseq, messages)
        self._base = messages
        # Sequence number n is self._uids[n - 1]; the listing's array until it changes.
        self._uids: array[int] = messages.uids
        # Latest known store state of messages that differ from (or are not in) the listing.
        self._state: dict[int, _State] = {}
        self._removed: dict[int, None] = {}  # listed UIDs whose expunge was reported
        self._queue: list[Change] = []
        self._added: dict[int, None] = {}  # new UIDs not yet announced with EXISTS, ascending
        self._expunged: dict[int, int] = {}  # UID -> MODSEQ, expunged but not yet reported
        self._told: dict[int, _State] = {}  # what the client last knew, for changed messages
        self._force: dict[int, bool] = {}  # own STORE to report: True = FLAGS, False = MODSEQ
        self._snapshot_modseq = highestmodseq
        self._modseq = highestmodseq  # highest MODSEQ applied
        self._max_uid = self._uids[-1] if self._uids else 0  # highest UID ever seen

    # ---- state of one message: the overlay, else the listing ----------------------------------

    @property
    def listing(self) -> Listing:
        """The shared listing this view started from (do not modify)."""
        return self._base

    def _get(self, uid: int) -> _State | None:
        state = self._state.get(uid)
        if state is not None:
            return state
        if uid in self._removed:
            return None
        i = self._base.index(uid)
        return self._base.state(i) if i >= 0 else None

    def changed_state(self, uid: int) -> tuple[Flag, tuple[str, ...], int] | None:
        """(flags, keywords, modseq) of a message whose state is not the listing's (changed or
        added since SELECT); None for one the listing still describes (or an unknown one)."""
        return self._state.get(uid)

    def _known(self, uid: int) -> bool:
        return uid in self._state or (uid not in self._removed and self._base.index(uid) >= 0)

    def _own_uids(self) -> array[int]:
        """The UID array, copied from the listing before the first change (copy on write)."""
        if self._uids is self._base.uids:
            self._uids = array("I", self._uids)
        return self._uids

    # ---- feeding changes ----------------------------------------------------------------------

    def apply(self, change: Change) -> None:
        """Queue a store change (from the hub); it is folded in by the next call that reports."""
        if getattr(change, "mailbox_id", None) == self.mailbox_id:
            self._queue.append(change)

    @property
    def has_pending(self) -> bool:
        """True when `pending_updates` may have something to say (e.g. to wake an IDLE)."""
        return bool(self._queue or self._added or self._expunged or self._told or self._force)

    def _fold(self) -> None:
        queue, self._queue = self._queue, []
        snapshot = self._snapshot_modseq
        for change in queue:
            # A change at or below the listing's HIGHESTMODSEQ is already part of the listing.
            if isinstance(change, MessageAdded):
                if change.modseq > snapshot:
                    self._on_added(change)
            elif isinstance(change, MessagesExpunged):
                if change.modseq > snapshot:
                    self._on_expunged(change)
            elif isinstance(change, FlagsChanged) and change.modseq > snapshot:
                self._on_flags(change.uid, (change.flags, tuple(change.keywords), change.modseq))

    def _on_added(self, c: MessageAdded) -> None:
        new: _State = (c.flags, tuple(c.keywords), c.modseq)
        if self._known(c.uid):
            self._on_flags(c.uid, new)
        elif c.uid > self._max_uid:  # RFC 9051 §2.3.1.1: UIDs only grow
            self._max_uid = c.uid
            if self._claim is not None and self._claim(c.uid):
                self.recent_uids[c.uid] = None
            self._added[c.uid] = None
            self._state[c.uid] = new
            self._modseq = max(self._modseq, c.modseq)
        # else: stale, a message expunged before the listing this view started from

    def _on_expunged(self, c: MessagesExpunged) -> None:
        self._modseq = max(self._modseq, c.modseq)
        for uid in c.uids:
            if uid in self._expunged or not self._known(uid):
                continue
            if uid in self._added:  # never announced: the client need not hear of it
                del self._added[uid]
                del self._state[uid]
                self.recent_uids.pop(uid, None)
                continue
            self._expunged[uid] = c.modseq
            self._told.pop(uid, None)
            self._force.pop(uid, None)

    def _on_flags(self, uid: int, new: _State) -> None:
        old = self._get(uid)
        if old is None or uid in self._expunged or new[2] < old[2]:
            return
        self._modseq = max(self._modseq, new[2])
        self._state[uid] = new
        if uid not in self._added and uid not in self._told:
            self._told[uid] = old

    def stored(
        self,
        results: Iterable[FlagState],
        *,
        silent: bool,
        mode: Literal["set", "add", "remove"] | None = None,
        flags: Sequence[str] = (),
    ) -> None:
        """Record the outcome of this session's own STORE (one entry per message stored).

        Not silent: the next `pending_updates` sends FETCH FLAGS for each (RFC 9051 §6.4.6).
        Silent: the client computes the new flags itself, from what it knew, by applying
        ``mode`` and ``flags`` (the STORE's own; pass them): where the store's result differs
        (someone else changed the message meanwhile) a FETCH FLAGS follows anyway (RFC 9051
        §6.4.6); with CONDSTORE at least ``FETCH (UID u MODSEQ (m))`` is sent (RFC 7162 §3.1.3).
        Without ``mode`` the client is assumed to know the stored result. Call before
        `pending_updates`.
        """
        self._fold()
        for r in results:
            uid = r.uid
            if uid in self._expunged or uid in self._added:
                continue
            current = self._get(uid)
            if current is None:
                continue
            belief = self._told.get(uid, current)  # what the client knew before
            new: _State = (r.flags, tuple(r.keywords), r.modseq)
            self._on_flags(uid, new)
            if silent:
                if mode is None:
                    self._told[uid] = (new[0], new[1], belief[2])
                else:
                    f, kw = _apply_store(belief[0], belief[1], mode, flags)
                    self._told[uid] = (f, kw, belief[2])
                if self.condstore:
                    self._force.setdefault(uid, False)
            else:
                self._told.setdefault(uid, belief)
                self._force[uid] = True

    def reported(self, states: Iterable[FlagState]) -> None:
        """The session itself sent these flags (and MODSEQ) in a FETCH response, e.g. the
        \\Seen set by FETCH BODY[]: no further FETCH is needed for them."""
        self._fold()
        for s in states:
            if s.uid not in self._expunged and s.uid not in self._added and self._known(s.uid):
                new: _State = (s.flags, tuple(s.keywords), s.modseq)
                self._on_flags(s.uid, new)
                self._told[s.uid] = new  # if the store moved on since, that still gets reported
                self._force.pop(s.uid, None)

    def drop_recent(self) -> None:
        """IMAP4rev2 was enabled while selected: no \\Recent and no RECENT from now on."""
        self._claim = None
        self.recent_uids.clear()

    # ---- reporting ----------------------------------------------------------------------------

    def pending_keywords(self) -> set[str]:
        """The keywords of the messages the next `pending_updates` reports (changed or new), so
        the session can announce keywords new to the mailbox in FLAGS first (RFC 9051 §7.3.5)."""
        self._fold()
        out: set[str] = set()
        for uid in (*self._told, *self._force, *self._added):
            state = self._get(uid)
            if state is not None:
                out.update(state[1])
        return out

    def pending_updates(self, allow_expunge: bool) -> list[bytes]:
        """The untagged responses to send now, in order: FETCH, EXPUNGE/VANISHED, EXISTS.

        ``allow_expunge=False`` during FETCH, STORE and SEARCH by sequence number (RFC 9051
        §7.5.1): expunges stay pending and keep their sequence numbers.
        """
        self._fold()
        out: list[bytes] = []
        if self._told or self._force:
            out.extend(self._flag_updates())
        if allow_expunge and self._expunged:
            out.extend(self._expunge_updates())
        if self._added:
            self._own_uids().extend(sorted(self._added))
            self._added.clear()
            out.append(b"* %d EXISTS\r\n" % len(self._uids))
            if self._claim is not None:  # RFC 3501 §7.3.2
                out.append(b"* %d RECENT\r\n" % len(self.recent_uids))
        return out

    def _flag_updates(self) -> list[bytes]:
        out: list[bytes] = []
        uids = sorted(self._told.keys() | self._force.keys())
        for uid in uids:
            state = self._get(uid)
            if state is None or uid in self._expunged:
                continue
            told = self._told.get(uid, state)
            force = self._force.get(uid)
            flags_differ = not _same_flags(state, told)
            seq = self._seq_index(uid) + 1
            if flags_differ or force:
                flags = format_flags(state[0], state[1], uid in self.recent_uids)
                line = b"* %d FETCH (UID %d FLAGS %s" % (seq, uid, flags)
                if self.condstore:
                    line += b" MODSEQ (%d)" % state[2]
                out.append(line + b")\r\n")
            elif self.condstore and (state[2] != told[2] or force is False):
                out.append(b"* %d FETCH (UID %d MODSEQ (%d))\r\n" % (seq, uid, state[2]))
        self._told.clear()
        self._force.clear()
        return out

    def _expunge_updates(self) -> list[bytes]:
        gone = sorted(self._expunged)
        self._expunged.clear()
        uids = self._own_uids()
        indexes = [bisect.bisect_left(uids, u) for u in gone]
        out: list[bytes]
        if self.qresync:  # RFC 7162 §3.2.10
            out = [b"* VANISHED %s\r\n" % format_sequence_set(gone).encode()]
        else:  # RFC 9051 §7.4.1: each EXPUNGE renumbers the messages after it
            out = [b"* %d EXPUNGE\r\n" % (i + 1 - k) for k, i in enumerate(indexes)]
        if len(gone) < _DELETE_ONE_BY_ONE:
            for i in reversed(indexes):
                del uids[i]
        else:
            drop = set(gone)
            self._uids = array("I", [u for u in uids if u not in drop])
        for u in gone:
            self._state.pop(u, None)
            self._removed[u] = None
            self.recent_uids.pop(u, None)
        if self.saved:  # RFC 5182 §2.1: expunged messages leave the saved result
            drop_saved = set(gone)
            self.saved = [u for u in self.saved if u not in drop_saved]
        return out

    # ---- lookups ------------------------------------------------------------------------------

    @property
    def exists(self) -> int:
        """The message count the client knows (expunged-but-unreported messages included)."""
        return len(self._uids)

    @property
    def recent(self) -> int:
        """How many messages are \\Recent in this session (RFC 3501 §7.3.2; 0 for IMAP4rev2)."""
        return len(self.recent_uids)

    @property
    def highestmodseq(self) -> int:
        """HIGHESTMODSEQ the client may cache (see the module docstring)."""
        self._fold()
        hms = self._modseq
        pending = [*self._expunged.values()]
        pending += [self._state[u][2] for u in self._added]
        for uid in self._told.keys() | self._force.keys():
            state = self._get(uid)
            if state is not None and (state != self._told.get(uid) or uid in self._force):
                pending.append(state[2])
        if pending:
            hms = min(hms, min(pending) - 1)
        return max(hms, self._snapshot_modseq)

    @property
    def uids(self) -> Sequence[int]:
        """All UIDs the client knows, in sequence-number order (do not modify)."""
        return self._uids

    @property
    def max_uid(self) -> int:
        """The highest UID the client knows of (0 when empty)."""
        return self._uids[-1] if self._uids else 0

    @property
    def unseen_first(self) -> int | None:
        """Sequence number of the first message without \\Seen (RFC 3501 §7.1 UNSEEN)."""
        if self._uids is self._base.uids and not self._state:  # nothing changed: scan the array
            for seq, bits in enumerate(self._base.flags, 1):
                if not bits & Flag.SEEN:
                    return seq
            return None
        for seq, uid in enumerate(self._uids, 1):
            state = self._get(uid)
            if state is not None and not state[0] & Flag.SEEN:
                return seq
        return None

    def _seq_index(self, uid: int) -> int:
        return bisect.bisect_left(self._uids, uid)

    def seq_of(self, uid: int, hint: int | None = None) -> int | None:
        """The sequence number of ``uid``, or None if the client does not know that UID.
        ``hint``: the sequence number of the UID before it, when walking up (saves a search)."""
        if hint is not None and 0 <= hint < len(self._uids) and self._uids[hint] == uid:
            return hint + 1
        i = bisect.bisect_left(self._uids, uid)
        return i + 1 if i < len(self._uids) and self._uids[i] == uid else None

    def uid_of(self, seq: int) -> int:
        """The UID of sequence number ``seq``; ValueError when out of range."""
        if not 1 <= seq <= len(self._uids):
            raise ValueError(f"no message {seq}")
        return self._uids[seq - 1]

    @property
    def expunges_pending(self) -> bool:
        """True while some message is expunged but not reported (`is_expunged` may say yes)."""
        self._fold()
        return bool(self._expunged)

    def is_expunged(self, uid: int) -> bool:
        """True for a message expunged in the store whose EXPUNGE is not reported yet."""
        return uid in self._expunged

    def flags_of(self, uid: int) -> tuple[Flag, tuple[str, ...]] | None:
        """The latest flags and keywords of a known message (None if unknown)."""
        state = self._get(uid)
        return None if state is None else (state[0], state[1])

    def flag_bits(self) -> Sequence[int]:
        """The system flags (`Flag` as int) of every message the client knows, in
        sequence-number order (index n - 1 for number n), by the latest state; -1 for a
        message expunged meanwhile (not reported yet). For scans of the whole mailbox (SEARCH
        by flags, EXPUNGE) without a lookup per message: the listing's own array while nothing
        changed since SELECT, else one merge of the UIDs with the listing."""
        self._fold()
        base = self._base
        if self._uids is base.uids and not self._state and not self._expunged:
            return base.flags
        luids, lflags, n = base.uids, base.flags, len(base.uids)
        state, expunged = self._state, self._expunged
        out: list[int] = []
        j = 0
        for uid in self._uids:
            if uid in expunged:
                out.append(-1)
                continue
            st = state.get(uid)
            if st is not None:
                out.append(int(st[0]))
                continue
            while j < n and luids[j] < uid:
                j += 1
            out.append(lflags[j] if j < n and luids[j] == uid else -1)
        return out

    def keywords_by_uid(self) -> dict[int, tuple[str, ...]]:
        """The keywords of every known message that has some, by the latest state (with
        `flag_bits`: FETCH 1:* (FLAGS) without a lookup per message)."""
        self._fold()
        base = self._base
        luids, removed = base.uids, self._removed
        out = {luids[i]: kws for i, kws in base.keywords.items() if luids[i] not in removed}
        for uid, st in self._state.items():
            if st[1]:
                out[uid] = st[1]
            else:
                out.pop(uid, None)
        return out

    def modseq_of(self, uid: int) -> int | None:
        state = self._get(uid)
        return None if state is None else state[2]

    def uids_for(self, seqset: SequenceSet, uid: bool) -> list[int]:
        """The UIDs a sequence set names, ascending (RFC 9051 §9, semantics of `sequence`).

        By sequence number (``uid=False``): ``*`` is `exists`; expunged-but-unreported messages
        are included (their numbers are still valid; check `is_expunged`); numbers above
        `exists` are dropped (check `sequence.sequence_numbers_valid` first to answer BAD).
        By UID: ``*`` is the highest UID of a message that still exists; UIDs that do not
        exist, expunged-but-unreported ones included, are ignored (RFC 9051 §6.4.9), and so are
        new messages not yet announced with EXISTS (they have no sequence number yet).
        ``$`` is `saved` (RFC 5182).
        """
        self._fold()
        uids = self._uids
        if not uid:
            saved_seqs: list[int] = []
            if seqset.saved:
                for u in self.saved:
                    s = self.seq_of(u)
                    if s is not None:
                        saved_seqs.append(s)
            out: list[int] = []
            for lo, hi in resolve(seqset, len(uids), saved_seqs):
                out.extend(uids[lo - 1 : hi])
            return out
        largest = 0
        for i in range(len(uids) - 1, -1, -1):
            if uids[i] not in self._expunged:
                largest = uids[i]
                break
        found = intersect_sorted(resolve(seqset, largest, self.saved), uids)
        if self._expunged:
            found = [u for u in found if u not in self._expunged]
        return found

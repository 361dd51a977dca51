"""The selected-mailbox view: sequence numbers, pending changes, untagged responses (pure).

Besides table tests, a hypothesis state machine drives a model store (adds, expunges, flag
changes by others, this session's own STOREs) and replays every untagged response the view
emits on a model client: the client's picture must always agree with the view, and after a full
report with expunges allowed, with the store.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import Literal

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from postfach.imap.commands import SequenceSet
from postfach.imap.sequence import parse_sequence_set
from postfach.imap.view import RecentClaims, View
from postfach.store.api import (
    Flag,
    FlagsChanged,
    MailboxesChanged,
    MessageAdded,
    MessageMeta,
    MessagesExpunged,
)

MBOX = 5


def meta(
    uid: int, flags: Flag = Flag.NONE, modseq: int = 1, kw: tuple[str, ...] = ()
) -> MessageMeta:
    return MessageMeta(uid, MBOX, uid, modseq, flags, kw, 0, 0, 10, "ab" * 32)


def added(uid: int, modseq: int, flags: Flag = Flag.NONE) -> MessageAdded:
    return MessageAdded(1, MBOX, uid, modseq, flags, ())


def flagged(uid: int, modseq: int, flags: Flag, kw: tuple[str, ...] = ()) -> FlagsChanged:
    return FlagsChanged(1, MBOX, uid, modseq, flags, kw)


def expunged(modseq: int, *uids: int) -> MessagesExpunged:
    return MessagesExpunged(1, MBOX, uids, modseq)


def view(uids: list[int], hms: int = 10, **kw: bool) -> View:
    return View(MBOX, 77, [meta(u) for u in uids], hms, **kw)


def ss(text: str) -> SequenceSet:
    return parse_sequence_set(text)


# --------------------------------------------------------------------------------------------
# Table tests
# --------------------------------------------------------------------------------------------


def test_initial_state() -> None:
    v = View(MBOX, 77, [meta(9, Flag.SEEN), meta(3), meta(5, Flag.SEEN)], 10)
    assert v.exists == 3 and v.recent == 0 and list(v.uids) == [3, 5, 9]
    assert v.seq_of(5) == 2 and v.seq_of(4) is None and v.uid_of(3) == 9
    assert v.unseen_first == 1 and v.highestmodseq == 10 and v.max_uid == 9
    with pytest.raises(ValueError):
        v.uid_of(4)
    assert v.pending_updates(True) == [] and not v.has_pending
    assert View(MBOX, 1, [], 1).unseen_first is None


def test_exists_for_new_messages() -> None:
    v = view([1, 2])
    v.apply(added(3, 11))
    v.apply(added(4, 12))
    assert v.has_pending and v.exists == 2  # not yet told
    assert v.pending_updates(False) == [b"* 4 EXISTS\r\n"]
    assert v.exists == 4 and v.uid_of(4) == 4


def test_recent_claims() -> None:
    """RFC 3501 §2.3.2: a message is \\Recent in the first session to learn of it, only."""
    claims = RecentClaims()
    box = (MBOX, 77)
    assert claims.claimed(box) == 0
    assert claims.claim(box, 3) and not claims.claim(box, 3) and not claims.claim(box, 2)
    assert claims.claim(box, 4) and claims.claimed(box) == 4
    assert claims.claimed((MBOX, 78)) == 0  # another UIDVALIDITY is another mailbox
    claims.forget(box)
    assert claims.claimed(box) == 0


def test_recent_new_messages_and_recent_response() -> None:
    """New messages this session claims are \\Recent; RECENT follows EXISTS (RFC 3501 §7.3.2),
    and FETCH FLAGS shows \\Recent (imaptest copy)."""
    claims = RecentClaims()
    box = (MBOX, 77)
    claims.claim(box, 2)
    v = View(MBOX, 77, [meta(1), meta(2)], 10, recent=[2], claim=lambda u: claims.claim(box, u))
    assert v.recent == 1
    v.apply(added(3, 11))
    assert v.pending_updates(True) == [b"* 3 EXISTS\r\n", b"* 2 RECENT\r\n"]
    claims.claim(box, 4)  # another session learnt of 4 first
    v.apply(added(4, 12))
    assert v.pending_updates(True) == [b"* 4 EXISTS\r\n", b"* 2 RECENT\r\n"]
    assert set(v.recent_uids) == {2, 3}
    v.apply(flagged(3, 13, Flag.SEEN))
    v.apply(flagged(4, 14, Flag.SEEN))
    assert v.pending_updates(True) == [
        b"* 3 FETCH (UID 3 FLAGS (\\Recent \\Seen))\r\n",
        b"* 4 FETCH (UID 4 FLAGS (\\Seen))\r\n",
    ]
    v.apply(expunged(15, 2))
    assert v.pending_updates(True) == [b"* 2 EXPUNGE\r\n"] and v.recent == 1
    # IMAP4rev2 (no claim): no \\Recent, no RECENT response.
    v2 = view([1])
    v2.apply(added(5, 11))
    assert v2.pending_updates(True) == [b"* 2 EXISTS\r\n"] and v2.recent == 0


def test_pending_keywords() -> None:
    """Keywords of what the next report shows, so FLAGS can announce new ones first (RFC 9051
    §7.3.5; imaptest store: a keyword set by another session)."""
    v = view([1, 2])
    assert v.pending_keywords() == set()
    v.apply(flagged(1, 11, Flag.NONE, ("$hello", "$world")))
    v.apply(MessageAdded(1, MBOX, 3, 12, Flag.NONE, ("$new",)))
    assert v.pending_keywords() == {"$hello", "$world", "$new"}
    v.pending_updates(True)
    assert v.pending_keywords() == set()


def test_other_mailboxes_and_other_changes_are_ignored() -> None:
    v = view([1])
    v.apply(MessageAdded(1, MBOX + 1, 2, 11, Flag.NONE, ()))
    v.apply(MailboxesChanged(1))
    assert v.pending_updates(True) == []


def test_expunge_numbers_ascending() -> None:
    v = view([10, 20, 30, 40, 50])
    v.apply(expunged(11, 20, 30, 50))
    assert v.pending_updates(True) == [b"* 2 EXPUNGE\r\n", b"* 2 EXPUNGE\r\n", b"* 3 EXPUNGE\r\n"]
    assert list(v.uids) == [10, 40]


def test_vanished_with_qresync() -> None:
    v = view([10, 20, 30, 40, 50], qresync=True)
    assert v.condstore
    v.apply(expunged(11, 20, 30, 50))
    assert v.pending_updates(True) == [b"* VANISHED 20,30,50\r\n"]


def test_no_expunge_while_not_allowed() -> None:
    v = view([1, 2, 3])
    v.apply(expunged(11, 2))
    v.apply(added(4, 12))
    assert v.pending_updates(False) == [b"* 4 EXISTS\r\n"]  # 2 still holds its number
    assert v.is_expunged(2) and v.seq_of(3) == 3 and v.exists == 4
    assert v.uids_for(ss("1:*"), uid=False) == [1, 2, 3, 4]  # numbers stay valid
    assert v.uids_for(ss("1:*"), uid=True) == [1, 3, 4]  # a gone UID does not exist
    assert v.highestmodseq == 10  # the unreported expunge is not covered
    assert v.pending_updates(True) == [b"* 2 EXPUNGE\r\n"]
    assert v.exists == 3 and not v.is_expunged(2) and v.highestmodseq == 12


def test_added_then_expunged_before_report_is_never_mentioned() -> None:
    v = view([1])
    v.apply(added(2, 11))
    v.apply(expunged(12, 2))
    assert v.pending_updates(True) == []
    assert v.exists == 1


def test_flag_change_reported_with_uid_and_modseq() -> None:
    v = view([1, 2])
    v.apply(flagged(2, 11, Flag.SEEN | Flag.FLAGGED, ("$Junk",)))
    assert v.pending_updates(False) == [b"* 2 FETCH (UID 2 FLAGS (\\Seen \\Flagged $Junk))\r\n"]
    v.condstore = True
    v.apply(flagged(1, 12, Flag.DELETED))
    assert v.pending_updates(False) == [b"* 1 FETCH (UID 1 FLAGS (\\Deleted) MODSEQ (12))\r\n"]
    assert v.flags_of(1) == (Flag.DELETED, ()) and v.modseq_of(1) == 12


def test_flag_change_undone_before_report_sends_nothing_without_condstore() -> None:
    v = view([1])
    v.apply(flagged(1, 11, Flag.SEEN))
    v.apply(flagged(1, 12, Flag.NONE))
    assert v.pending_updates(True) == []
    v = view([1], condstore=True)
    v.apply(flagged(1, 11, Flag.SEEN))
    v.apply(flagged(1, 12, Flag.NONE))
    assert v.pending_updates(True) == [b"* 1 FETCH (UID 1 MODSEQ (12))\r\n"]


def test_stale_and_older_changes_are_ignored() -> None:
    v = View(MBOX, 77, [meta(1, modseq=5), meta(3, modseq=9)], 10)
    v.apply(added(1, 5))  # part of the listing
    v.apply(added(2, 7))  # expunged before the listing: at or below HIGHESTMODSEQ
    v.apply(flagged(3, 9, Flag.SEEN))
    assert v.pending_updates(True) == []
    v = View(MBOX, 77, [meta(1, modseq=5), meta(3, modseq=9)], 0)  # no usable HIGHESTMODSEQ
    v.apply(added(2, 7))  # below the highest UID: stale
    v.apply(flagged(3, 12, Flag.SEEN))
    v.apply(flagged(3, 11, Flag.FLAGGED))  # older than what was applied
    assert v.pending_updates(True) == [b"* 2 FETCH (UID 3 FLAGS (\\Seen))\r\n"]


def test_flags_of_an_expunged_message_are_not_reported() -> None:
    v = view([1, 2])
    v.apply(flagged(2, 11, Flag.SEEN))
    v.apply(expunged(12, 2))
    assert v.pending_updates(False) == []
    assert v.pending_updates(True) == [b"* 2 EXPUNGE\r\n"]


def test_own_store_not_silent_reports_every_message() -> None:
    v = view([1, 2, 3])
    v.apply(flagged(2, 11, Flag.SEEN))
    v.stored([meta(1, Flag.NONE, 10), meta(2, Flag.SEEN, 11)], silent=False)  # 1 unchanged
    assert v.pending_updates(False) == [
        b"* 1 FETCH (UID 1 FLAGS ())\r\n",
        b"* 2 FETCH (UID 2 FLAGS (\\Seen))\r\n",
    ]


def test_own_store_silent() -> None:
    v = view([1, 2])
    v.stored([meta(1, Flag.SEEN, 11)], silent=True)
    v.apply(flagged(1, 11, Flag.SEEN))  # the hub's copy arrives after
    assert v.pending_updates(False) == []
    # With CONDSTORE the new MODSEQ is still reported (RFC 7162 §3.1.3).
    v = view([1, 2], condstore=True)
    v.apply(flagged(1, 11, Flag.SEEN))  # the hub's copy arrives first
    v.stored([meta(1, Flag.SEEN, 11)], silent=True)
    assert v.pending_updates(False) == [b"* 1 FETCH (UID 1 MODSEQ (11))\r\n"]


def test_silent_store_still_reports_someone_elses_change() -> None:
    v = view([1])
    v.stored([meta(1, Flag.SEEN, 11)], silent=True)
    v.apply(flagged(1, 11, Flag.SEEN))
    v.apply(flagged(1, 12, Flag.SEEN | Flag.FLAGGED))  # another session, right after
    assert v.pending_updates(False) == [b"* 1 FETCH (UID 1 FLAGS (\\Seen \\Flagged))\r\n"]


def test_reported_suppresses_the_echo() -> None:
    v = view([1], condstore=True)
    v.apply(flagged(1, 11, Flag.SEEN))  # \Seen set by this session's FETCH BODY[]
    v.reported([meta(1, Flag.SEEN, 11)])  # ... whose response carried FLAGS and MODSEQ
    assert v.pending_updates(False) == []
    assert v.highestmodseq == 11


def test_uids_for() -> None:
    v = view([2, 4, 6, 8, 10])
    assert v.uids_for(ss("2:3"), uid=False) == [4, 6]
    assert v.uids_for(ss("*"), uid=False) == [10]
    assert v.uids_for(ss("4:*"), uid=False) == [8, 10]
    assert v.uids_for(ss("1:5,3"), uid=True) == [2, 4]
    assert v.uids_for(ss("7:*"), uid=True) == [8, 10]
    assert v.uids_for(ss("99:*"), uid=True) == [10]  # RFC 9051 §6.4.8
    assert v.uids_for(ss("99"), uid=True) == []
    assert v.uids_for(ss("9"), uid=False) == []
    v.saved = [4, 10]
    assert v.uids_for(ss("$"), uid=True) == [4, 10]
    assert v.uids_for(ss("$"), uid=False) == [4, 10]
    assert v.uids_for(ss("1,$"), uid=False) == [2, 4, 10]
    v.apply(expunged(11, 10))
    v.apply(added(12, 12))
    assert v.uids_for(ss("1:*"), uid=True) == [2, 4, 6, 8]  # 12 not announced yet
    v.pending_updates(True)
    assert v.saved == [4]  # RFC 5182 §2.1
    assert v.uids_for(ss("*"), uid=True) == [12]
    assert view([]).uids_for(ss("1:*"), uid=True) == []


def test_highestmodseq_stays_below_unreported_changes() -> None:
    v = view([1, 2], hms=10, condstore=True)
    v.apply(flagged(1, 11, Flag.SEEN))
    v.apply(flagged(2, 12, Flag.SEEN))
    assert v.highestmodseq == 10
    v.pending_updates(False)
    assert v.highestmodseq == 12


def test_big_mailbox_big_expunge_is_fast() -> None:
    n = 100_000
    v = View(MBOX, 1, [meta(u) for u in range(1, n + 1)], 1)
    start = time.perf_counter()
    v.apply(expunged(2, *range(1, n + 1, 2)))
    out = v.pending_updates(True)
    assert len(out) == n // 2 and out[0] == b"* 1 EXPUNGE\r\n" and out[-1] == b"* 50000 EXPUNGE\r\n"
    assert v.exists == n // 2 and v.uid_of(1) == 2
    for i in range(0, 1000):  # many small batches
        v.apply(expunged(3 + i, 2 + 2 * i * 40))
        v.pending_updates(True)
    assert v.seq_of(4) == 1
    assert time.perf_counter() - start < 3.0


# --------------------------------------------------------------------------------------------
# The state machine
# --------------------------------------------------------------------------------------------

_FLAGS_ITEM = re.compile(
    rb"\* (\d+) FETCH \(UID (\d+)(?: FLAGS \(([^)]*)\))?(?: MODSEQ \((\d+)\))?\)\r\n"
)
_ALL_FLAGS = [Flag.SEEN, Flag.ANSWERED, Flag.FLAGGED, Flag.DELETED, Flag.DRAFT]


def _parse_flags(text: bytes) -> tuple[Flag, tuple[str, ...]]:
    names = text.decode().split()
    system = [n for n in names if n.startswith("\\")]
    return Flag.from_names(system), tuple(n for n in names if not n.startswith("\\"))


def _store_op(
    flags: Flag | None, kw: tuple[str, ...], mode: str, names: list[str]
) -> tuple[Flag, tuple[str, ...]]:
    flags = flags or Flag.NONE
    bits = Flag.from_names([n for n in names if n.startswith("\\")])
    words = [n for n in names if not n.startswith("\\")]
    if mode == "set":
        return bits, tuple(dict.fromkeys(words))
    if mode == "add":
        return flags | bits, tuple(dict.fromkeys([*kw, *words]))
    return flags & ~bits, tuple(k for k in kw if k not in words)


@dataclass
class Slot:
    """One message as the client knows it (None: not known yet)."""

    uid: int | None = None
    flags: Flag | None = None
    keywords: tuple[str, ...] = ()
    modseq: int | None = None


class Client:
    """What a client knows, built only from the untagged responses."""

    def __init__(self, metas: list[MessageMeta]) -> None:
        # per sequence number: [uid | None, flags | None, keywords, modseq | None]
        self.slots: list[Slot] = [
            Slot(m.uid, m.flags, m.keywords, m.modseq) for m in sorted(metas, key=lambda m: m.uid)
        ]

    def feed(self, lines: list[bytes]) -> None:
        for line in lines:
            if m := re.fullmatch(rb"\* (\d+) EXISTS\r\n", line):
                n = int(m.group(1))
                assert n >= len(self.slots), "EXISTS must not shrink the mailbox"
                self.slots += [Slot() for _ in range(n - len(self.slots))]
            elif m := re.fullmatch(rb"\* (\d+) EXPUNGE\r\n", line):
                n = int(m.group(1))
                assert 1 <= n <= len(self.slots)
                del self.slots[n - 1]
            elif m := re.fullmatch(rb"\* VANISHED ([0-9:,]+)\r\n", line):
                gone: set[int] = set()
                for part in m.group(1).decode().split(","):
                    lo, _, hi = part.partition(":")
                    gone.update(range(int(lo), int(hi or lo) + 1))
                known = {s.uid for s in self.slots}
                assert gone <= known, "VANISHED names only messages the client knows"
                self.slots = [s for s in self.slots if s.uid not in gone]
            elif m := _FLAGS_ITEM.fullmatch(line):
                n, uid = int(m.group(1)), int(m.group(2))
                slot = self.slots[n - 1]
                assert slot.uid == uid, f"FETCH {n} says UID {uid}, client has {slot.uid}"
                if m.group(3) is not None:
                    slot.flags, slot.keywords = _parse_flags(m.group(3))
                if m.group(4) is not None:
                    slot.modseq = int(m.group(4))
            else:
                raise AssertionError(f"unexpected response {line!r}")


class ViewMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.store: dict[int, tuple[Flag, tuple[str, ...], int]] = {}
        self.next_uid = 1
        self.modseq = 1
        self.view: View | None = None
        self.client: Client | None = None
        self.undelivered: list[MessageAdded | MessagesExpunged | FlagsChanged] = []

    # ---- the store ----------------------------------------------------------------------------

    def _publish(self, change: MessageAdded | MessagesExpunged | FlagsChanged) -> None:
        self.undelivered.append(change)

    @rule(n=st.integers(0, 6), condstore=st.booleans(), qresync=st.booleans())
    @precondition(lambda self: self.view is None)
    def select(self, n: int, condstore: bool, qresync: bool) -> None:
        for _ in range(n):
            self._add(Flag.NONE)
        self.undelivered.clear()  # the listing includes them
        metas = [meta(u, f, ms, kw) for u, (f, kw, ms) in self.store.items()]
        self.view = View(MBOX, 1, metas, self.modseq, condstore=condstore, qresync=qresync)
        self.client = Client(metas)
        self.condstore = condstore or qresync

    def _add(self, flags: Flag) -> None:
        self.modseq += 1
        uid = self.next_uid
        self.next_uid += 1
        self.store[uid] = (flags, (), self.modseq)
        self._publish(added(uid, self.modseq, flags))

    @rule(flags=st.sampled_from([Flag.NONE, Flag.SEEN, Flag.FLAGGED | Flag.SEEN]))
    def add(self, flags: Flag) -> None:
        self._add(flags)

    @rule(data=st.data())
    @precondition(lambda self: bool(self.store))
    def expunge(self, data: st.DataObject) -> None:
        uids = data.draw(st.sets(st.sampled_from(sorted(self.store)), min_size=1))
        self.modseq += 1
        for u in uids:
            del self.store[u]
        self._publish(expunged(self.modseq, *sorted(uids)))

    @rule(data=st.data(), kw=st.sampled_from([(), ("$Junk",)]))
    @precondition(lambda self: bool(self.store))
    def others_change_flags(self, data: st.DataObject, kw: tuple[str, ...]) -> None:
        uid = data.draw(st.sampled_from(sorted(self.store)))
        flags = Flag(0)
        for f in data.draw(st.lists(st.sampled_from(_ALL_FLAGS), max_size=3)):
            flags |= f
        self.modseq += 1
        self.store[uid] = (flags, kw, self.modseq)
        self._publish(flagged(uid, self.modseq, flags, kw))

    @rule(k=st.integers(1, 5))
    @precondition(lambda self: self.view is not None and bool(self.undelivered))
    def hub_delivers(self, k: int) -> None:
        assert self.view is not None
        for change in self.undelivered[:k]:
            self.view.apply(change)
        del self.undelivered[:k]

    # ---- the session --------------------------------------------------------------------------

    def _deliver_all(self) -> None:
        assert self.view is not None
        for change in self.undelivered:
            self.view.apply(change)
        self.undelivered.clear()

    @rule(allow_expunge=st.booleans())
    @precondition(lambda self: self.view is not None)
    def report(self, allow_expunge: bool) -> None:
        assert self.view is not None and self.client is not None
        lines = self.view.pending_updates(allow_expunge)
        if not allow_expunge:
            assert not any(b"EXPUNGE" in x or b"VANISHED" in x for x in lines)
        self._feed(lines)

    def _feed(self, lines: list[bytes]) -> None:
        assert self.view is not None and self.client is not None
        self.client.feed(lines)
        # a client that saw EXISTS asks for the new messages' UIDs and flags (UID FETCH n:*)
        for seq, slot in enumerate(self.client.slots, 1):
            if slot.uid is None:
                uid = self.view.uid_of(seq)
                slot.uid = uid
                if uid in self.store:
                    slot.flags, slot.keywords, slot.modseq = self.store[uid]

    @rule(
        data=st.data(),
        silent=st.booleans(),
        hub_first=st.booleans(),
        uid_cmd=st.booleans(),
        mode=st.sampled_from(["set", "add", "remove"]),
    )
    @precondition(lambda self: self.view is not None and bool(self.client and self.client.slots))
    def own_store(
        self,
        data: st.DataObject,
        silent: bool,
        hub_first: bool,
        uid_cmd: bool,
        mode: Literal["set", "add", "remove"],
    ) -> None:
        assert self.view is not None and self.client is not None
        self._deliver_all()  # the hub has told the view about everything before (see hub.py)
        seqs = data.draw(st.sets(st.integers(1, len(self.client.slots)), min_size=1))
        names = data.draw(st.lists(st.sampled_from(["\\Seen", "\\Flagged", "$Junk"]), max_size=2))
        results = []
        for seq in sorted(seqs):
            uid = self.view.uid_of(seq)
            if uid not in self.store:  # expunged meanwhile: STORE skips it
                continue
            f, kw, _ = self.store[uid]
            nf, nkw = _store_op(f, kw, mode, names)
            self.modseq += 1
            self.store[uid] = (nf, nkw, self.modseq)
            results.append(meta(uid, nf, self.modseq, nkw))
            if silent:  # the client computes the new flags itself, from what it knows
                slot = self.client.slots[seq - 1]
                slot.flags, slot.keywords = _store_op(slot.flags, slot.keywords, mode, names)
        changes = [flagged(m.uid, m.modseq, m.flags, m.keywords) for m in results]
        if hub_first:
            for c in changes:
                self.view.apply(c)
        self.view.stored(results, silent=silent, mode=mode, flags=names)
        if not hub_first:
            for c in changes:
                self.view.apply(c)
        lines = self.view.pending_updates(allow_expunge=uid_cmd)
        self._feed(lines)
        reported = {int(m.group(2)) for x in lines if (m := _FLAGS_ITEM.fullmatch(x))}
        if not silent or self.condstore:  # FLAGS, or at least MODSEQ (RFC 7162 §3.1.3)
            assert {m.uid for m in results} <= reported
        # the client's flags now equal the store's for everything it was just told about
        for seq, slot in enumerate(self.client.slots, 1):
            known = slot.uid
            assert known is not None
            if known in self.store and not self.view.is_expunged(known):
                f, kw, _ = self.store[known]
                assert (slot.flags, set(slot.keywords)) == (f, set(kw)), (seq, slot)

    @rule(data=st.data())
    @precondition(lambda self: self.view is not None and bool(self.client and self.client.slots))
    def fetch_sets_seen(self, data: st.DataObject) -> None:
        """FETCH n BODY[]: the session stores \\Seen first, answers with FLAGS (and MODSEQ)
        in its own FETCH response, and tells the view (`View.reported`)."""
        assert self.view is not None and self.client is not None
        self._deliver_all()
        seq = data.draw(st.integers(1, len(self.client.slots)))
        uid = self.view.uid_of(seq)
        if uid not in self.store:
            return
        f, kw, ms = self.store[uid]
        if not f & Flag.SEEN:
            self.modseq += 1
            ms = self.modseq
            f |= Flag.SEEN
            self.store[uid] = (f, kw, ms)
            self.view.apply(flagged(uid, ms, f, kw))
        self.view.reported([meta(uid, f, ms, kw)])
        slot = self.client.slots[seq - 1]
        slot.flags, slot.keywords, slot.modseq = f, kw, ms  # what the FETCH response said
        lines = self.view.pending_updates(allow_expunge=False)
        assert not any(b"* %d FETCH" % seq in x for x in lines), "echo of a reported change"
        self._feed(lines)

    # ---- invariants ---------------------------------------------------------------------------

    @invariant()
    def client_agrees_with_view(self) -> None:
        if self.view is None or self.client is None:
            return
        assert len(self.client.slots) == self.view.exists
        for seq, slot in enumerate(self.client.slots, 1):
            assert slot.uid == self.view.uid_of(seq)

    @rule()
    @precondition(lambda self: self.view is not None)
    def full_sync(self) -> None:
        """NOOP after the hub delivered everything: client == store."""
        assert self.view is not None and self.client is not None
        self._deliver_all()
        self.report(True)
        assert [s.uid for s in self.client.slots] == sorted(self.store)
        for slot in self.client.slots:
            assert slot.uid is not None
            f, kw, ms = self.store[slot.uid]
            assert (slot.flags, set(slot.keywords)) == (f, set(kw)), slot
            if self.condstore:
                assert slot.modseq == ms, (slot, ms)
        assert self.view.highestmodseq == self.modseq
        assert not self.view.has_pending


TestViewMachine = ViewMachine.TestCase
TestViewMachine.settings = settings(
    max_examples=80,
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)

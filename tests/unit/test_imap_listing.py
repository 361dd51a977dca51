"""Shared mailbox listings (`postfach.imap.listing`) and the quick FETCH path built on them.

Sessions that select the same unchanged mailbox share one immutable listing; each view keeps its
own changes on top. These tests check that sharing never lets one session's picture leak into
another's, that a listing gives back exactly the stored metadata, and that the metadata-only
FETCH responses are byte for byte those of the general builder.
"""

from __future__ import annotations

import itertools

import pytest

from postfach.imap.commands import FetchAttr, FetchItem
from postfach.imap.fetch import fetch_plan, fetch_response, meta_only, meta_response
from postfach.imap.listing import Listing, ListingCache
from postfach.imap.view import View
from postfach.store.api import Flag, FlagsChanged, MessageAdded, MessageMeta, MessagesExpunged

MBOX = 9


def meta(
    uid: int, flags: Flag = Flag.NONE, kw: tuple[str, ...] = (), modseq: int = 3
) -> MessageMeta:
    return MessageMeta(
        1000 + uid, MBOX, uid, modseq, flags, kw, 1700000000 + uid, 1700000100 + uid,
        500 + uid, f"{uid:064x}",
    )  # fmt: skip


def test_listing_gives_back_the_stored_metadata() -> None:
    metas = [meta(3, Flag.SEEN), meta(1, kw=("$Junk", "work")), meta(7, Flag.DELETED | Flag.DRAFT)]
    listing = Listing.of_messages(MBOX, 42, 10, metas)
    assert list(listing.uids) == [1, 3, 7]
    assert [listing.meta(i) for i in range(3)] == sorted(metas, key=lambda m: m.uid)
    assert listing.index(3) == 1 and listing.index(2) == -1 and listing.index(8) == -1
    assert listing.all_keywords() == {"$Junk", "work"}
    assert listing.meta(0) is listing.meta(0)  # built once, shared


def test_two_views_of_one_listing_keep_their_own_pictures() -> None:
    listing = Listing.of_messages(MBOX, 42, 10, [meta(u) for u in (1, 2, 3, 4)])
    a = View(MBOX, 42, listing, 10)
    b = View(MBOX, 42, listing, 10)
    a.apply(FlagsChanged(1, MBOX, 2, 11, Flag.SEEN, ("x",)))
    a.apply(MessagesExpunged(1, MBOX, (3,), 12))
    a.apply(MessageAdded(1, MBOX, 9, 13, Flag.FLAGGED, ()))
    lines = a.pending_updates(allow_expunge=True)
    assert lines == [
        b"* 2 FETCH (UID 2 FLAGS (\\Seen x))\r\n",
        b"* 3 EXPUNGE\r\n",
        b"* 4 EXISTS\r\n",
    ]
    assert list(a.uids) == [1, 2, 4, 9]
    assert a.flags_of(2) == (Flag.SEEN, ("x",)) and a.flags_of(3) is None
    # b has not been told anything: its picture and the shared listing are unchanged
    assert list(b.uids) == [1, 2, 3, 4] and b.exists == 4
    assert b.flags_of(2) == (Flag.NONE, ()) and b.flags_of(3) == (Flag.NONE, ())
    assert list(listing.uids) == [1, 2, 3, 4] and listing.meta(1).flags == Flag.NONE
    assert b.pending_updates(allow_expunge=True) == []
    # the same changes reach b later and give the same picture
    for change in (
        FlagsChanged(1, MBOX, 2, 11, Flag.SEEN, ("x",)),
        MessagesExpunged(1, MBOX, (3,), 12),
        MessageAdded(1, MBOX, 9, 13, Flag.FLAGGED, ()),
    ):
        b.apply(change)
    assert b.pending_updates(allow_expunge=True) == lines
    assert list(b.uids) == list(a.uids)


def test_cache_hands_out_a_listing_only_for_the_same_mailbox_state() -> None:
    cache = ListingCache()
    listing = Listing.of_messages(MBOX, 42, 10, [meta(1)])
    cache.put(listing)
    assert cache.get(MBOX, 42, 10) is listing
    assert cache.get(MBOX, 42, 11) is None  # changed since
    assert cache.get(MBOX, 43, 10) is None  # another UIDVALIDITY
    del listing  # no session uses it any more: gone
    assert cache.get(MBOX, 42, 10) is None


ATTRS = ["UID", "FLAGS", "MODSEQ", "RFC822.SIZE", "INTERNALDATE", "SAVEDATE", "EMAILID"]


@pytest.mark.parametrize("count", [1, 2, 3])
def test_meta_response_is_what_fetch_response_says(count: int) -> None:
    m = meta(12, Flag.SEEN | Flag.ANSWERED, ("$Forwarded",), modseq=77)

    def fail() -> bytes:
        raise AssertionError("no data needed")

    for names in itertools.permutations(ATTRS, count):
        items: list[FetchItem] = [FetchAttr(n) for n in names]
        assert meta_only(items)
        for uid, changed, condstore, recent in itertools.product([False, True], repeat=4):
            expected = fetch_response(
                5, m, items, parsed=fail, data=fail, uid=uid, condstore=condstore,  # type: ignore[arg-type]
                flags_changed=changed, recent=recent,
            ).to_bytes()  # fmt: skip
            plan = fetch_plan(items, uid=uid, flags_changed=changed, condstore=condstore)
            assert meta_response(5, m, plan, recent) == expected


def test_items_that_need_the_message_are_not_meta_only() -> None:
    assert not meta_only([FetchAttr("FLAGS"), FetchAttr("ENVELOPE")])
    assert not meta_only([FetchAttr("UID"), FetchAttr("PREVIEW")])


def _same(a: Listing, b: Listing) -> None:
    assert a.highestmodseq == b.highestmodseq and len(a) == len(b)
    assert [a.meta(i) for i in range(len(a))] == [b.meta(i) for i in range(len(b))]
    assert a.keywords == b.keywords and a.blobs == b.blobs


@pytest.mark.parametrize(
    ("changed", "gone", "added"),
    [
        ([], [], []),
        ([meta(2, Flag.SEEN, ("new",), modseq=20)], [], []),
        ([meta(4, modseq=21)], [1, 5, 9], [meta(12, Flag.FLAGGED, ("k",), modseq=22)]),
        ([meta(3, Flag.DELETED, modseq=23)], [2, 4, 6, 7, 8, 10, 11], []),
        ([], [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11], [meta(13, modseq=24), meta(15, modseq=25)]),
    ],
)
def test_a_patched_listing_is_the_listing_read_afresh(
    changed: list[MessageMeta], gone: list[int], added: list[MessageMeta]
) -> None:
    # SELECT of a large mailbox that changed a little: the cached listing plus the changes
    # since its MODSEQ must be exactly what reading every row again gives.
    before = [meta(u, kw=("old",) if u in (3, 4, 10) else ()) for u in range(1, 12)]
    old = Listing.of_messages(MBOX, 42, 10, before)
    for i in range(0, len(old), 2):
        old.meta(i)  # some MessageMeta objects built already (they are shared when unchanged)
    now = {m.uid: m for m in before if m.uid not in gone} | {m.uid: m for m in changed + added}
    rows = [
        (m.id, m.mailbox_id, m.uid, m.modseq, int(m.flags), " ".join(m.keywords),
         m.internal_date, m.save_date, m.size, m.blob)
        for m in sorted(changed + added, key=lambda m: m.uid)
    ]  # fmt: skip
    patched = old.patched(30, rows, [*gone, 99])  # 99: never listed
    _same(patched, Listing.of_messages(MBOX, 42, 30, now.values()))
    _same(old, Listing.of_messages(MBOX, 42, 10, before))  # the old one is untouched


def test_a_patch_with_a_new_message_below_the_listed_uids_is_refused() -> None:
    old = Listing.of_messages(MBOX, 42, 10, [meta(5), meta(6)])
    row = (1, MBOX, 4, 11, 0, "", 0, 0, 1, f"{4:064x}")
    with pytest.raises(ValueError):
        old.patched(11, [row], [])


def test_flag_scans_agree_with_the_per_message_lookups() -> None:
    listing = Listing.of_messages(
        MBOX, 42, 10, [meta(u, Flag.SEEN if u % 2 else Flag.NONE, ("w",) if u == 3 else ())
                       for u in range(1, 8)]
    )  # fmt: skip
    view = View(MBOX, 42, listing, 10)
    assert list(view.flag_bits()) == [int(Flag.SEEN), 0] * 3 + [int(Flag.SEEN)]
    view.apply(FlagsChanged(1, MBOX, 2, 11, Flag.DELETED, ("x",)))
    view.apply(FlagsChanged(1, MBOX, 3, 12, Flag.SEEN, ()))
    view.apply(MessagesExpunged(1, MBOX, (4,), 13))
    view.apply(MessageAdded(1, MBOX, 9, 14, Flag.FLAGGED, ("y",)))
    view.pending_updates(allow_expunge=False)  # EXISTS for 9; the expunge of 4 waits
    bits = view.flag_bits()
    assert len(bits) == len(view.uids) == 8
    for uid, b in zip(view.uids, bits, strict=True):
        flags = view.flags_of(uid)
        assert b == (-1 if view.is_expunged(uid) else int(flags[0]))  # type: ignore[index]
    assert view.keywords_by_uid() == {2: ("x",), 9: ("y",)}
    assert view.expunges_pending


@pytest.mark.parametrize("uid", [False, True])
@pytest.mark.parametrize("recent", [False, True])
def test_flags_lines_are_what_meta_response_says(uid: bool, recent: bool) -> None:
    from postfach.imap.fetch import flags_lines

    m = meta(12, Flag.SEEN | Flag.ANSWERED, ("$Forwarded",), modseq=77)
    for items in ([FetchAttr("FLAGS")], [FetchAttr("FLAGS"), FetchAttr("UID")]):
        plan = fetch_plan(items, uid=uid)
        line = flags_lines(plan)
        assert line is not None
        assert line(5, 12, int(m.flags), m.keywords, recent) == meta_response(5, m, plan, recent)
    assert flags_lines(fetch_plan([FetchAttr("FLAGS"), FetchAttr("RFC822.SIZE")])) is None
    assert flags_lines(fetch_plan([FetchAttr("FLAGS")], condstore=True, flags_changed=True)) is None

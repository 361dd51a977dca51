"""A mailbox's messages at one HIGHESTMODSEQ, packed into arrays and shared (pure core).

SELECT used to build a `MessageMeta` per message, a state tuple per message and two dicts for
every session: ~500 octets a message, for every session that selected the mailbox (269 KB per
idle session of a 500-message INBOX, 1.6 s for SELECT of 100,000 messages). A `Listing` holds
the same facts as parallel arrays (UIDs, flags, MODSEQs, ids, dates, sizes, blob hashes: about
80 octets a message) and is immutable, so every session that selects the same mailbox while it
is unchanged shares one (`ListingCache`, weak: a listing lives as long as some view uses it).
Each session's `postfach.imap.view.View` keeps its own changes on top of it.

Keywords are rare: only the messages that have some are in a dict (index → keywords).
`MessageMeta` objects (what FETCH and SEARCH work with) are built on first use and kept in the
listing, so they too exist once per mailbox rather than once per session, and not at all for a
session that only selected the mailbox and idles.
"""

from __future__ import annotations

import bisect
import itertools
import weakref
from array import array
from collections.abc import Iterable, Sequence
from typing import Any, Final

from postfach.store.api import Flag, MessageMeta

__all__ = ["FLAG_VALUES", "Listing", "ListingCache"]

#: Flag(n) for every combination of the system flags (building an IntFlag is slow)
FLAG_VALUES: Final = tuple(Flag(n) for n in range(32))


class Listing:
    """The messages of one mailbox (ascending UID) as stored at ``highestmodseq``."""

    __slots__ = (
        "__weakref__",
        "blobs",
        "flags",
        "highestmodseq",
        "ids",
        "internal_dates",
        "keywords",
        "mailbox_id",
        "metas",
        "modseqs",
        "save_dates",
        "sizes",
        "uids",
        "uidvalidity",
    )

    def __init__(
        self,
        mailbox_id: int,
        uidvalidity: int,
        highestmodseq: int,
        rows: Sequence[Sequence[Any]],
    ) -> None:
        """``rows``: (id, mailbox_id, uid, modseq, flags, keywords, internal_date, save_date,
        size, blob) in ascending UID order (not checked), keywords a space-separated string
        (the store's row) or a sequence; flags an int or `Flag`."""
        self.mailbox_id = mailbox_id
        self.uidvalidity = uidvalidity
        self.highestmodseq = highestmodseq
        self.ids = array("q", [r[0] for r in rows])
        self.uids = array("I", [r[2] for r in rows])
        self.modseqs = array("q", [r[3] for r in rows])
        self.flags = array("B", [int(r[4]) for r in rows])
        column = [r[5] for r in rows]
        self.keywords: dict[int, tuple[str, ...]] = {
            i: tuple(column[i].split()) if isinstance(column[i], str) else tuple(column[i])
            for i in itertools.compress(range(len(column)), column)
        }
        self.internal_dates = array("q", [r[6] for r in rows])
        self.save_dates = array("q", [r[7] for r in rows])
        self.sizes = array("q", [r[8] for r in rows])
        self.blobs = bytes.fromhex("".join([r[9] for r in rows]))
        #: `MessageMeta` objects built so far (on first use, then shared by the sessions)
        self.metas: list[MessageMeta | None] = [None] * len(rows)

    @classmethod
    def of_messages(
        cls,
        mailbox_id: int,
        uidvalidity: int,
        highestmodseq: int,
        messages: Iterable[MessageMeta],
    ) -> Listing:
        """From `MessageMeta` objects (any order)."""
        rows = [
            (m.id, m.mailbox_id, m.uid, m.modseq, int(m.flags), m.keywords, m.internal_date,
             m.save_date, m.size, m.blob)
            for m in sorted(messages, key=lambda m: m.uid)
        ]  # fmt: skip
        return cls(mailbox_id, uidvalidity, highestmodseq, rows)

    def __len__(self) -> int:
        return len(self.uids)

    def patched(
        self, highestmodseq: int, rows: Sequence[Sequence[Any]], expunged: Iterable[int]
    ) -> Listing:
        """A new listing of the same mailbox at ``highestmodseq``: this one with ``rows`` (the
        messages changed or added since, as for the constructor, ascending UID) and without
        the ``expunged`` UIDs. Copies the arrays (memcpy) instead of reading every row again;
        the `MessageMeta` objects of unchanged messages are shared with this listing."""
        new = Listing.__new__(Listing)
        new.mailbox_id, new.uidvalidity = self.mailbox_id, self.uidvalidity
        new.highestmodseq = highestmodseq
        index = self.index
        gone = sorted({i for u in expunged if (i := index(u)) >= 0})
        # Unchanged stretches between the expunged positions, copied as slices.
        spans = list(zip([0, *(i + 1 for i in gone)], [*gone, len(self)], strict=True))

        def cut(a: array[int]) -> array[int]:
            if not gone:
                return array(a.typecode, a)
            out = array(a.typecode)
            for lo, hi in spans:
                out += a[lo:hi]
            return out

        new.ids, new.uids, new.modseqs = cut(self.ids), cut(self.uids), cut(self.modseqs)
        new.flags, new.sizes = cut(self.flags), cut(self.sizes)
        new.internal_dates, new.save_dates = cut(self.internal_dates), cut(self.save_dates)
        new.blobs = b"".join(self.blobs[32 * lo : 32 * hi] for lo, hi in spans)
        new.metas = [m for lo, hi in spans for m in self.metas[lo:hi]] if gone else [*self.metas]
        dropped = set(gone)
        new.keywords = {
            i - bisect.bisect_left(gone, i): kws
            for i, kws in self.keywords.items()
            if i not in dropped
        }
        added: list[Sequence[Any]] = []
        for r in rows:
            i = new.index(r[2])
            if i < 0:
                added.append(r)
                continue
            new.modseqs[i] = r[3]
            new.flags[i] = int(r[4])
            kws = tuple(r[5].split()) if isinstance(r[5], str) else tuple(r[5])
            if kws:
                new.keywords[i] = kws
            else:
                new.keywords.pop(i, None)
            new.metas[i] = None
        if added:  # new messages: UIDs above every listed one (RFC 9051 §2.3.1.1)
            tail = Listing(self.mailbox_id, self.uidvalidity, highestmodseq, added)
            if len(new) and tail.uids[0] <= new.uids[-1]:  # not expected: list afresh
                raise ValueError("added messages below the listing's highest UID")
            base = len(new)
            for name in ("ids", "uids", "modseqs", "flags", "internal_dates", "save_dates",
                         "sizes"):  # fmt: skip
                getattr(new, name).extend(getattr(tail, name))
            new.blobs += tail.blobs
            new.metas += tail.metas
            new.keywords.update({base + i: kws for i, kws in tail.keywords.items()})
        return new

    def index(self, uid: int) -> int:
        """The position of ``uid``, or -1 when the listing does not hold it."""
        uids = self.uids
        i = bisect.bisect_left(uids, uid)
        return i if i < len(uids) and uids[i] == uid else -1

    def state(self, i: int) -> tuple[Flag, tuple[str, ...], int]:
        """(flags, keywords, modseq) of the message at position ``i``."""
        return FLAG_VALUES[self.flags[i]], self.keywords.get(i, ()), self.modseqs[i]

    def meta(self, i: int) -> MessageMeta:
        """The `MessageMeta` of the message at position ``i`` (built on first use and kept: a
        FETCH or SEARCH over the mailbox builds them once for every session of the mailbox)."""
        meta = self.metas[i]
        if meta is None:
            meta = self.metas[i] = self._build(i)
        return meta

    def _build(self, i: int) -> MessageMeta:
        return MessageMeta(
            self.ids[i],
            self.mailbox_id,
            self.uids[i],
            self.modseqs[i],
            FLAG_VALUES[self.flags[i]],
            self.keywords.get(i, ()),
            self.internal_dates[i],
            self.save_dates[i],
            self.sizes[i],
            self.blobs[32 * i : 32 * i + 32].hex(),
        )

    def all_keywords(self) -> set[str]:
        out: set[str] = set()
        for kws in self.keywords.values():
            out.update(kws)
        return out

    @property
    def nbytes(self) -> int:
        """Octets held by the arrays (the keyword dict not counted)."""
        arrays = (self.ids, self.uids, self.modseqs, self.flags, self.internal_dates,
                  self.save_dates, self.sizes)  # fmt: skip
        return sum(a.itemsize * len(a) for a in arrays) + len(self.blobs) + 8 * len(self.metas)


class ListingCache:
    """The newest listing of each mailbox some session still uses (weak references)."""

    __slots__ = ("_by_mailbox",)

    def __init__(self) -> None:
        self._by_mailbox: weakref.WeakValueDictionary[int, Listing] = weakref.WeakValueDictionary()

    def latest(self, mailbox_id: int, uidvalidity: int) -> Listing | None:
        """The cached listing of this mailbox at whatever MODSEQ (to patch, `Listing.patched`)."""
        listing = self._by_mailbox.get(mailbox_id)
        return listing if listing is not None and listing.uidvalidity == uidvalidity else None

    def get(self, mailbox_id: int, uidvalidity: int, highestmodseq: int) -> Listing | None:
        """The cached listing if it is of exactly this mailbox state, else None."""
        listing = self._by_mailbox.get(mailbox_id)
        if (
            listing is not None
            and listing.uidvalidity == uidvalidity
            and listing.highestmodseq == highestmodseq
        ):
            return listing
        return None

    def put(self, listing: Listing) -> None:
        current = self._by_mailbox.get(listing.mailbox_id)
        if current is None or current.highestmodseq <= listing.highestmodseq:
            self._by_mailbox[listing.mailbox_id] = listing

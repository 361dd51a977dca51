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

"""The store's change feed: changes committed by one process, told to the others (services ring).

Every process that writes the data directory (the server, its workers, ``postfach import``,
``migrate``, ``user del``) has its own store writer, and each writer publishes the `Change` events
of its commits to its own process only (`postfach.store.hub`). So that a session in one process
hears of a change made in another, the writer also records the changes of each group commit as
one row of ``change_log``, *in the same transaction* (`record`): the row exists exactly when the
changes do, and rows appear in commit order (``seq`` is allocated under the write lock; with
AUTOINCREMENT it is never reused, and since a transaction that rolls back takes its number back
with it, committed rows are contiguous).

A store with a publisher runs a `Follower`: a small thread that every ``interval`` seconds asks
its own read connection ``PRAGMA data_version`` (a counter in shared memory that changes when
another connection committed; it takes no lock, and costs microseconds), and only when it moved
reads the rows after the last one it has seen. Rows of its own origin (published directly by its
writer, before the futures resolved) are skipped; the others are decoded and published in
``seq`` order. The thread never runs on the event loop, so a slow or locked database never
delays a session.

Rows older than ``RETENTION`` seconds are deleted by any writer now and then (`prune`), the newest
``KEEP`` always kept. A follower that finds the rows after its last one gone (its process was
stopped longer than the retention) cannot know what it missed: it publishes
``ChangesLost(ALL_ACCOUNTS)``, on which IMAP sessions end with ``BYE`` so that their clients
resync, and logs ``event=change_feed_gap``.

The payload is an explicit JSON codec (`encode`/`decode`), never pickle: another process, maybe
another version of postfach, reads it. A payload this version cannot read is treated like a gap.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Final

from postfach.store.api import (
    ALL_ACCOUNTS,
    AccountDeleted,
    Change,
    ChangesLost,
    Flag,
    FlagsChanged,
    MailboxesChanged,
    MessageAdded,
    MessagesExpunged,
)

log = logging.getLogger(__name__)

#: seconds a row is kept at least (a follower stopped for longer misses changes)
RETENTION: Final = 600.0
#: rows always kept, however old (so a quiet store keeps its recent history)
KEEP: Final = 1000
#: how often a writer prunes (seconds)
PRUNE_EVERY: Final = 10.0
#: how often a follower looks for new rows (seconds)
INTERVAL: Final = 0.1

_VERSION: Final = 1
_ADDED, _EXPUNGED, _FLAGS, _MAILBOXES, _ACCOUNT_DELETED, _LOST = range(6)


class FeedDecodeError(ValueError):
    """A payload this version of postfach cannot read."""


# ---- codec -----------------------------------------------------------------------------------


def _ranges(uids: Sequence[int]) -> list[int]:
    """Ascending UIDs as flat [first, last, first, last, ...] runs (expunges are often runs)."""
    out: list[int] = []
    for uid in sorted(uids):
        if out and uid == out[-1] + 1:
            out[-1] = uid
        else:
            out += (uid, uid)
    return out


def _expand(runs: Sequence[int]) -> tuple[int, ...]:
    if len(runs) % 2:
        raise FeedDecodeError("odd UID run list")
    out: list[int] = []
    for i in range(0, len(runs), 2):
        out.extend(range(int(runs[i]), int(runs[i + 1]) + 1))
    return tuple(out)


def _entry(c: Change) -> list[Any]:
    if isinstance(c, MessageAdded):
        return [_ADDED, c.account_id, c.mailbox_id, c.uid, c.modseq, int(c.flags), list(c.keywords)]
    if isinstance(c, FlagsChanged):
        return [_FLAGS, c.account_id, c.mailbox_id, c.uid, c.modseq, int(c.flags), list(c.keywords)]
    if isinstance(c, MessagesExpunged):
        return [_EXPUNGED, c.account_id, c.mailbox_id, c.modseq, _ranges(c.uids)]
    if isinstance(c, MailboxesChanged):
        return [_MAILBOXES, c.account_id]
    if isinstance(c, AccountDeleted):
        return [_ACCOUNT_DELETED, c.account_id]
    if isinstance(c, ChangesLost):
        return [_LOST, c.account_id]
    raise TypeError(f"no feed encoding for {type(c).__name__}")


def encode(changes: Sequence[Change]) -> bytes:
    """The changes of one commit as a compact JSON array: ``[version, entry, entry, ...]``."""
    return json.dumps([_VERSION, *map(_entry, changes)], separators=(",", ":")).encode()


def _change(e: list[Any]) -> Change:
    kind = e[0]
    if kind == _ADDED:
        return MessageAdded(int(e[1]), int(e[2]), int(e[3]), int(e[4]), Flag(e[5]), tuple(e[6]))
    if kind == _FLAGS:
        return FlagsChanged(int(e[1]), int(e[2]), int(e[3]), int(e[4]), Flag(e[5]), tuple(e[6]))
    if kind == _EXPUNGED:
        return MessagesExpunged(int(e[1]), int(e[2]), _expand(e[4]), int(e[3]))
    if kind == _MAILBOXES:
        return MailboxesChanged(int(e[1]))
    if kind == _ACCOUNT_DELETED:
        return AccountDeleted(int(e[1]))
    if kind == _LOST:
        return ChangesLost(int(e[1]))
    raise FeedDecodeError(f"unknown change kind {kind!r}")


def decode(payload: bytes) -> list[Change]:
    try:
        doc = json.loads(payload)
        if not isinstance(doc, list) or not doc or doc[0] != _VERSION:
            raise FeedDecodeError(f"unknown feed payload version {doc[:1] if doc else doc!r}")
        return [_change(e) for e in doc[1:]]
    except FeedDecodeError:
        raise
    except (ValueError, TypeError, IndexError, KeyError) as exc:
        raise FeedDecodeError(str(exc)) from exc


# ---- the writer's side -----------------------------------------------------------------------


def record(conn: sqlite3.Connection, origin: int, changes: Sequence[Change]) -> int:
    """One row for the changes of the group commit in progress (call inside its transaction);
    its ``seq``."""
    cur = conn.execute(
        "INSERT INTO change_log(origin, at, payload) VALUES (?, ?, ?)",
        (origin, time.time(), encode(changes)),
    )
    assert cur.lastrowid is not None
    return cur.lastrowid


def prune(
    conn: sqlite3.Connection, now: float, retention: float = RETENTION, keep: int = KEEP
) -> int:
    """Delete rows older than ``retention`` seconds except the newest ``keep``; how many went.
    Rows are in time order (nearly: the clocks of one machine), so the scan stops at the first
    row young enough and costs what it deletes."""
    row = conn.execute("SELECT max(seq) FROM change_log").fetchone()
    if row is None or row[0] is None:
        return 0
    limit = int(row[0]) - keep
    young = conn.execute(
        "SELECT seq FROM change_log WHERE at >= ? ORDER BY seq LIMIT 1", (now - retention,)
    ).fetchone()
    if young is not None:
        limit = min(limit, int(young[0]) - 1)
    if limit <= 0:
        return 0
    return conn.execute("DELETE FROM change_log WHERE seq <= ?", (limit,)).rowcount


# ---- the reader's side -----------------------------------------------------------------------


class Follower:
    """Publishes the changes other processes commit, and this store's own, in commit order
    (see the module docstring).

    Everything a process publishes goes through here, under one lock, in ``seq`` order: the
    writer hands its own commit's changes to `publish_own` (which first publishes the rows of
    other processes committed before it), and the polls (`poll`: the follower's thread, and
    `postfach.store.sqlite.SqliteMailstore.sync_feed` on the event loop) stop before a row of
    their own origin the writer has not published yet. A session therefore hears of the
    messages of a mailbox in UID order, whichever process added them (`postfach.imap.view`
    takes a MessageAdded below a UID it already knows for a stale one)."""

    def __init__(
        self,
        db_path: Path,
        origin: int,
        publish: Callable[[list[Change]], None],
        interval: float = INTERVAL,
    ) -> None:
        self._origin = origin
        self._publish = publish
        self._interval = interval
        self._stop = threading.Event()
        self._conn = sqlite3.connect(db_path, isolation_level=None, check_same_thread=False)
        # Never wait for a lock here: try again at the next tick instead.
        self._conn.execute("PRAGMA busy_timeout=0")
        self._conn.execute("PRAGMA query_only=ON")
        (last,) = self._conn.execute("SELECT coalesce(max(seq), 0) FROM change_log").fetchone()
        #: the last row published
        self.last = int(last)
        self._version = -1
        self._failing = False
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="postfach-feed", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self.poll()
            except Exception:
                log.exception("event=change_feed_failed")
        with self._lock:
            self._conn.close()

    def poll(self) -> None:
        """Publish what other processes committed since the last row published. Cheap when
        nothing was committed: one ``PRAGMA data_version``. Any thread (the event loop too:
        it never waits for a database lock)."""
        with self._lock:
            if self._stop.is_set() and threading.current_thread() is not self._thread:
                return
            try:
                (version,) = self._conn.execute("PRAGMA data_version").fetchone()
                if version == self._version:
                    return
                changes, complete = self._collect(self._conn, None)
                # Only once read, and not when stopped before an own row the writer is about
                # to publish: the rows after it are read at the next poll.
                self._version = version if complete else -1
            except sqlite3.Error as exc:
                if not self._failing:
                    log.warning("event=change_feed_read_failed error=%r", exc)
                    self._failing = True
                return
            self._failing = False
            self._send(changes)

    def publish_own(self, conn: sqlite3.Connection, seq: int, changes: list[Change]) -> None:
        """The writer's commit recorded as row ``seq``: publish the rows of other processes
        before it, then ``changes`` (``conn``: the writer's connection, after COMMIT)."""
        with self._lock:
            out: list[Change] = []
            if seq > self.last + 1:
                try:
                    out, _complete = self._collect(conn, seq - 1)
                except sqlite3.Error as exc:
                    log.warning("event=change_feed_read_failed error=%r", exc)
                    out = [ChangesLost(ALL_ACCOUNTS)]
            out.extend(changes)
            self.last = max(self.last, seq)
            self._send(out)

    def _collect(self, conn: sqlite3.Connection, upto: int | None) -> tuple[list[Change], bool]:
        """Changes of the rows after ``last`` (up to ``upto``) of other origins, ``last``
        moved past them; False when it stopped before an own row not yet published."""
        sql = (
            "SELECT seq, origin, CASE WHEN origin = ? THEN NULL ELSE payload END"
            " FROM change_log WHERE seq > ?"
        )
        args: tuple[int, ...] = (self._origin, self.last)
        if upto is not None:
            sql += " AND seq <= ?"
            args += (upto,)
        rows = conn.execute(sql + " ORDER BY seq", args).fetchall()
        changes: list[Change] = []
        if rows and rows[0][0] != self.last + 1:
            log.warning(
                "event=change_feed_gap after=%d next=%d missed=%d",
                self.last, rows[0][0], rows[0][0] - self.last - 1,
            )  # fmt: skip
            changes.append(ChangesLost(ALL_ACCOUNTS))
        for seq, origin, payload in rows:
            if origin == self._origin:
                if upto is None:
                    return changes, False  # the writer publishes it (publish_own), then on
                continue
            try:
                changes.extend(decode(payload))
            except FeedDecodeError as exc:
                log.warning("event=change_feed_unreadable seq=%d error=%s", seq, exc)
                changes.append(ChangesLost(ALL_ACCOUNTS))
            self.last = seq
        return changes, True

    def _send(self, changes: list[Change]) -> None:
        if changes:
            try:
                self._publish(changes)
            except Exception:
                log.exception("event=publish_failed source=feed")

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not threading.current_thread():
            self._thread.join(timeout=10)

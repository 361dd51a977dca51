"""The embedded store: one SQLite database in WAL mode plus content-addressed blob files.

Concurrency rules (read these before changing anything here):

* Exactly one thread writes: ``_Writer``. Every write is a function ``op(conn, batch, *args)``
  queued to it. The writer waits for an op, takes the data directory's writer lock (shared with
  the writers of other processes), then takes whatever has queued up meanwhile (up to
  ``batch_max``), runs each op inside its own SAVEPOINT of one ``BEGIN IMMEDIATE`` transaction,
  and COMMITs once with ``synchronous=FULL`` (one fsync of the WAL for the whole group: group
  commit). An op that raises is rolled back alone; the others still commit.
* Only after COMMIT returned are the ops' `Change` events published (in commit order) and then
  their futures resolved. So a caller that answers a client once its future resolved never answers
  before the data is durable, and every session was told before the client could ask.
* Readers use one connection per thread and never wait for the writer (WAL snapshots).
* Blob files: a large message is written by the caller to ``blobs/tmp`` and fsynced; the writer
  renames it into ``blobs/ab/cd/<sha256>`` inside the op and fsyncs the directory (and the parent
  of any directory it had to create) before COMMIT.
  Final blob paths are created and removed only under the database write lock (inside a
  ``BEGIN IMMEDIATE`` transaction), and removed only after re-checking that no row refers to the
  content: another process with its own writer (``postfach import``, ``migrate``, ``check
  --repair``) may store the same content at any time. Files whose last reference went away are
  unlinked after the COMMIT that dropped the reference, in a short write-locked transaction of
  their own (``_unlink_freed``).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import errno
import fcntl
import hashlib
import logging
import os
import queue
import resource
import secrets
import sqlite3
import sys
import threading
import time
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, ParamSpec, TypeVar

from postfach.errors import AlreadyExists, DiskFull, NotFound, OverQuota, StoreError
from postfach.mime.stored import load_parsed
from postfach.mime.structure import parse, search_text
from postfach.sqlitewal import connect_wal
from postfach.store import feed
from postfach.store.api import (
    DEFAULT_MAILBOXES,
    INBOX,
    Account,
    AccountDeleted,
    Alias,
    Change,
    CheckReport,
    DeliveryResult,
    Domain,
    Flag,
    FlagsChanged,
    Mailbox,
    MailboxesChanged,
    MessageAdded,
    MessageMeta,
    MessagesExpunged,
    Publisher,
)
from postfach.store.locks import MaildropLocks, held, open_lock_file

log = logging.getLogger(__name__)

P = ParamSpec("P")
T = TypeVar("T")

DB_NAME: Final = "postfach.db"
INLINE_MAX_DEFAULT: Final = 64 * 1024
MAX_ALIAS_DEPTH: Final = 8

# Schema migrations, applied in order; PRAGMA user_version counts how many ran. Never edit an
# entry once released: add a new one.
MIGRATIONS: Final[tuple[str, ...]] = (
    """
    CREATE TABLE domains (
        name TEXT PRIMARY KEY,
        created INTEGER NOT NULL
    );
    CREATE TABLE accounts (
        id INTEGER PRIMARY KEY,
        name TEXT NOT NULL UNIQUE,
        domain TEXT NOT NULL REFERENCES domains(name),
        password TEXT NOT NULL,
        quota_bytes INTEGER NOT NULL DEFAULT 0,
        quota_messages INTEGER NOT NULL DEFAULT 0,
        used_bytes INTEGER NOT NULL DEFAULT 0,
        used_messages INTEGER NOT NULL DEFAULT 0,
        created INTEGER NOT NULL
    );
    CREATE TABLE aliases (
        address TEXT NOT NULL,
        target TEXT NOT NULL,
        PRIMARY KEY (address, target)
    );
    CREATE TABLE mailboxes (
        id INTEGER PRIMARY KEY,
        account_id INTEGER NOT NULL REFERENCES accounts(id),
        name TEXT NOT NULL,
        special_use TEXT,
        uidvalidity INTEGER NOT NULL,
        uidnext INTEGER NOT NULL DEFAULT 1,
        highestmodseq INTEGER NOT NULL DEFAULT 1,
        subscribed INTEGER NOT NULL DEFAULT 1,
        UNIQUE (account_id, name)
    );
    CREATE TABLE blobs (
        sha256 TEXT PRIMARY KEY,
        size INTEGER NOT NULL,
        refs INTEGER NOT NULL,
        data BLOB,
        structure TEXT
    ) WITHOUT ROWID;
    CREATE TABLE messages (
        id INTEGER PRIMARY KEY,
        mailbox_id INTEGER NOT NULL REFERENCES mailboxes(id),
        uid INTEGER NOT NULL,
        modseq INTEGER NOT NULL,
        flags INTEGER NOT NULL DEFAULT 0,
        keywords TEXT NOT NULL DEFAULT '',
        internal_date INTEGER NOT NULL,
        save_date INTEGER NOT NULL,
        size INTEGER NOT NULL,
        blob TEXT NOT NULL REFERENCES blobs(sha256),
        UNIQUE (mailbox_id, uid)
    );
    CREATE TABLE expunged (
        mailbox_id INTEGER NOT NULL,
        uid INTEGER NOT NULL,
        modseq INTEGER NOT NULL,
        PRIMARY KEY (mailbox_id, uid)
    ) WITHOUT ROWID;
    CREATE INDEX messages_blob ON messages(blob);
    CREATE INDEX mailboxes_account ON mailboxes(account_id);
    """,
    # 2: IMAP subscriptions may name mailboxes that do not exist (RFC 9051 §6.3.7), so they get
    # their own table; every existing mailbox starts subscribed. Flag changes are found by
    # MODSEQ (CONDSTORE), so messages get an index on it.
    """
    CREATE TABLE subscriptions (
        account_id INTEGER NOT NULL REFERENCES accounts(id),
        name TEXT NOT NULL,
        PRIMARY KEY (account_id, name)
    ) WITHOUT ROWID;
    INSERT INTO subscriptions(account_id, name) SELECT account_id, name FROM mailboxes;
    CREATE INDEX messages_modseq ON messages(mailbox_id, modseq);
    """,
    # 3: full-text index for IMAP SEARCH TEXT/BODY. IMAP matches substrings, so the tokenizer is
    # trigram. One document per blob (decoded headers, decoded text parts), filled lazily by the
    # indexer thread so that delivery never waits for it.
    """
    CREATE VIRTUAL TABLE fts USING fts5(headers, body, tokenize='trigram');
    CREATE TABLE fts_docs (
        sha256 TEXT PRIMARY KEY,
        docid INTEGER NOT NULL UNIQUE
    ) WITHOUT ROWID;
    """,
    # 4: UIDVALIDITY must never repeat for a mailbox name (RFC 9051 §2.3.1.1), even when the
    # mailbox holding the highest value is deleted and recreated within the same second: the
    # last value issued is kept here, not derived from the mailboxes that still exist.
    """
    CREATE TABLE counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID;
    INSERT INTO counters(name, value)
        SELECT 'uidvalidity', coalesce(max(uidvalidity), 0) FROM mailboxes;
    """,
    # 5: per-account setting: a copy of each submitted message in Sent ("auto") or not ("off").
    """
    ALTER TABLE accounts ADD COLUMN sent_copy TEXT NOT NULL DEFAULT 'off';
    """,
    # 6: account and mailbox ids are never reused. SQLite gives a new row max(id) + 1, so
    # deleting the newest account and adding another handed its id, and its mailboxes' ids, to
    # the new one, and a session of the deleted account still logged in read the new one's mail
    # (sessions and the hub know accounts and mailboxes by id). The last ids issued are kept here.
    """
    INSERT INTO counters(name, value) SELECT 'account_id', coalesce(max(id), 0) FROM accounts;
    INSERT INTO counters(name, value) SELECT 'mailbox_id', coalesce(max(id), 0) FROM mailboxes;
    """,
    # 7: IMAP SEARCH compares after Unicode case folding, the trigram tokenizer only lowercases
    # character by character ("STRASSE" did not find "Straße" once indexed): the index now holds
    # casefolded text, so the old documents are dropped and indexed again by the indexer. Blobs
    # whose text cannot be indexed are remembered, so that one bad message is skipped once
    # instead of stopping the indexer for good.
    """
    DELETE FROM fts;
    DELETE FROM fts_docs;
    CREATE TABLE IF NOT EXISTS fts_skipped (
        sha256 TEXT PRIMARY KEY,
        error TEXT NOT NULL
    ) WITHOUT ROWID;
    """,
    # 8: blobs becomes a rowid table (sha256 stays the primary key, now in an index of its own).
    # In a WITHOUT ROWID table the whole row is the b-tree key, and SQLite compares a searched
    # key with a row that overflows its page (any message over about 1 KB) by first copying the
    # entire row out of its overflow pages: a dozen copies of messages per lookup. For 20 KB
    # messages this took read_blob from about 34 to 11 us of CPU (and speeds up every lookup
    # by hash at delivery). Run with foreign keys off (messages.blob refers to blobs), checked
    # with foreign_key_check before the commit.
    """
    CREATE TABLE blobs_new (
        sha256 TEXT PRIMARY KEY,
        size INTEGER NOT NULL,
        refs INTEGER NOT NULL,
        data BLOB,
        structure TEXT
    );
    INSERT INTO blobs_new(sha256, size, refs, data, structure)
        SELECT sha256, size, refs, data, structure FROM blobs;
    DROP TABLE blobs;
    ALTER TABLE blobs_new RENAME TO blobs;
    """,
    # 9: the change feed (`postfach.store.feed`): each group commit that changed something
    # records its `Change` events here, in the same transaction, so that the other processes on
    # this data directory (server workers, the admin commands) can tell their sessions.
    # AUTOINCREMENT: a sequence number is never reused, even after pruning.
    """
    CREATE TABLE IF NOT EXISTS change_log (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        origin INTEGER NOT NULL,
        at REAL NOT NULL,
        payload BLOB NOT NULL
    );
    """,
    # 10: the full-text indexer's to-do list. The indexer found the blobs still to index by
    # checking every blob against fts_docs and fts_skipped: about half a second of CPU per look
    # at 105,000 messages, and it looks after every delivery. A blob now has a row here from
    # when it is stored until it is indexed, skipped or freed.
    """
    CREATE TABLE IF NOT EXISTS fts_pending (
        sha256 TEXT PRIMARY KEY
    ) WITHOUT ROWID;
    INSERT OR IGNORE INTO fts_pending(sha256)
        SELECT b.sha256 FROM blobs b
        WHERE NOT EXISTS (SELECT 1 FROM fts_docs d WHERE d.sha256 = b.sha256)
        AND NOT EXISTS (SELECT 1 FROM fts_skipped s WHERE s.sha256 = b.sha256);
    """,
    # 11: the to-do list becomes a queue in the order of storing. Keyed by content hash, it cost
    # every delivery a write to a page at a random place of its b-tree: 1.4 of the 14 WAL pages
    # a 20 KB message wrote (benchmarks/store_writes.py). New rows go to the b-tree's last page,
    # one page per group commit (0.5 per message in groups of two). A row is removed only by
    # the indexer, by its number: a blob freed before it was indexed stays listed until the
    # indexer finds it gone, and a blob freed and stored again may be listed twice (the indexer
    # skips what is indexed already).
    """
    CREATE TABLE IF NOT EXISTS fts_queue (
        seq INTEGER PRIMARY KEY,
        sha256 TEXT NOT NULL
    );
    INSERT INTO fts_queue(sha256) SELECT sha256 FROM fts_pending;
    DROP TABLE fts_pending;
    """,
)


@dataclass(frozen=True, slots=True)
class StagedBlob:
    """Message bytes prepared for storage outside the writer: hashed, and large ones on disk."""

    sha256: str
    size: int
    data: bytes | None  # inline (small) blobs
    tmp_path: Path | None  # large blobs: fsynced temp file the writer renames into place
    structure: str | None  # parsed MIME structure (JSON) for IMAP


@dataclass(frozen=True, slots=True)
class AppendItem:
    blob: StagedBlob
    flags: Flag
    keywords: tuple[str, ...]
    internal_date: int


@dataclass(frozen=True, slots=True)
class MailboxCounts:
    messages: int
    unseen: int
    deleted: int
    deleted_size: int
    size: int


@dataclass(frozen=True, slots=True)
class FlagResult:
    changed: list[MessageMeta]  # messages whose flags changed, with their new MODSEQ
    failed: list[int]  # UIDs refused by UNCHANGEDSINCE (RFC 7162 MODIFIED)


#: the share of a quota an account must have left for its recipient lookup to be cached
_ROOM_SHARE: Final = 8


def roomy(account: Account, size: int = 0, count: int = 0) -> bool:
    """Whether the account, with ``count`` messages of ``size`` bytes added, has an eighth
    (`_ROOM_SHARE`) of each of its quotas left (at least one byte and one message): a recipient
    lookup may then be answered from the cache (`recipient_account`). An account without quotas
    is always roomy."""
    qb, qm = account.quota_bytes, account.quota_messages
    return (not qb or account.used_bytes + size + max(1, qb // _ROOM_SHARE) <= qb) and (
        not qm or account.used_messages + count + max(1, qm // _ROOM_SHARE) <= qm
    )


def _note_usage(batch: _Batch, before: Account, size: int, count: int) -> None:
    """After ``count`` messages of ``size`` bytes were added to ``before``'s usage: an account
    that is no longer `roomy` must not be answered from any process's recipient cache."""
    if not roomy(before, size, count):
        batch.accounts_changed = True


def _clean_keywords(keywords: Sequence[str]) -> tuple[str, ...]:
    """Keywords compare case-insensitively (RFC 9051 §2.3.2); keep the first spelling."""
    seen: set[str] = set()
    out: list[str] = []
    for k in keywords:
        if k and k.lower() not in seen:
            seen.add(k.lower())
            out.append(k)
    return tuple(out)


@dataclass(slots=True)
class _Batch:
    """What the ops of one group commit leave for after COMMIT."""

    changes: list[Change] = field(default_factory=list)
    unlink: set[Path] = field(default_factory=set)
    fsync_dirs: set[Path] = field(default_factory=set)
    placed: list[Path] = field(default_factory=list)  # blob files moved into place (undo list)
    #: a change that a cached recipient lookup must not outlive (`recipient_account`)
    accounts_changed: bool = False


#: a committed group: its batch, each op's outcome, and its change feed row (`_record_changes`)
_Committed = tuple[
    "_Batch", list[tuple["_Op", Any, BaseException | None]], tuple[int, "feed.Follower | None"]
]


class _TransactionLost(Exception):
    def __init__(self, cause: BaseException) -> None:
        super().__init__(str(cause))
        self.cause = cause


@dataclass(slots=True)
class _Op:
    fn: Callable[..., Any]
    args: tuple[Any, ...]
    future: concurrent.futures.Future[Any]
    #: the indexer's write: its group runs without the writer's priority boost
    background: bool = False


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _is_disk_full(exc: BaseException) -> bool:
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    return isinstance(exc, sqlite3.OperationalError) and "full" in str(exc)


def _as_store_error(exc: BaseException) -> BaseException:
    return DiskFull(str(exc)) if _is_disk_full(exc) else exc


def _process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


#: nice steps by which the writer thread runs ahead of the rest of its process (`boost_priority`)
WRITER_PRIORITY_BOOST: Final = 10


def boost_priority(steps: int = WRITER_PRIORITY_BOOST) -> int | None:
    """Lower the calling thread's nice value by ``steps`` below its process's, as far as the
    process may (root, ``CAP_SYS_NICE``, or ``RLIMIT_NICE``, which `postfach.privileges` raises
    before it drops root). Returns the nice value reached, None where none was allowed (or not
    on Linux, the one system where a nice value is per thread).

    Why the writer (measured, docs/benchmarks.md, session 9): with a worker bound to one CPU,
    its event loop and its writer share that CPU and the GIL. The writer holds the data
    directory's writer lock for its whole group, and after each SQLite call (the COMMIT's
    fsync included) it waited for the loop to let go of the CPU, 0.1-0.5 ms at a time, while
    the other workers' writers waited for the lock. Ahead of the loop it runs the moment it is
    woken: the lock was held 1.7-2.1 ms per group (median) instead of 2.0-3.4 ms."""
    if not sys.platform.startswith("linux") or steps <= 0:
        return None
    tid = threading.get_native_id()
    try:
        base = os.getpriority(os.PRIO_PROCESS, tid)
    except OSError:
        return None
    targets = [base - steps]
    rlimit_nice = getattr(resource, "RLIMIT_NICE", None)
    if rlimit_nice is not None:  # without CAP_SYS_NICE: RLIMIT_NICE n allows down to 20 - n
        soft, _ = resource.getrlimit(rlimit_nice)
        if soft != resource.RLIM_INFINITY and base - steps < 20 - soft < base:
            targets.append(20 - soft)
    for target in targets:
        try:
            os.setpriority(os.PRIO_PROCESS, tid, target)
        except OSError:  # not allowed (a container may take CAP_SYS_NICE even from root)
            continue
        return target
    return None


def _renice(tid: int, nice: int | None) -> None:
    if nice is not None:
        with contextlib.suppress(OSError):
            os.setpriority(os.PRIO_PROCESS, tid, nice)


def _connect(path: Path) -> sqlite3.Connection:
    conn = connect_wal(path, timeout=30)
    conn.execute("PRAGMA synchronous=FULL")
    # Each op of a group runs in a SAVEPOINT, and SQLite keeps the pages a savepoint may have
    # to restore (free pages reused for a message among them) in a sub-journal, which it moves
    # to a temporary file beyond 64 KiB: a third of the groups of a delivery run did that
    # (access, open, unlink, pwrites and a close, under the writer lock). In memory it is
    # freed at COMMIT. tests/reliability/test_store_tempfiles.py
    conn.execute("PRAGMA temp_store=MEMORY")
    conn.execute("PRAGMA foreign_keys=ON")
    return conn


class SqliteMailstore:
    """The Mailstore over SQLite (see module docstring for the concurrency rules)."""

    #: seconds between two looks at the change feed (`postfach.store.feed`)
    feed_interval: float = feed.INTERVAL

    def __init__(
        self,
        directory: Path,
        *,
        publish: Publisher | None = None,
        inline_max: int = INLINE_MAX_DEFAULT,
        batch_max: int = 512,
        index_text: bool = True,
    ) -> None:
        self.directory = Path(directory)
        self.db_path = self.directory / DB_NAME
        self.blob_dir = self.directory / "blobs"
        self.tmp_dir = self.blob_dir / "tmp"
        self.inline_max = inline_max
        self._batch_max = batch_max
        self._publish = publish
        #: this instance's mark on its change feed rows (its follower skips them)
        self.origin = secrets.randbits(63) or 1
        self._feed: feed.Follower | None = None
        self._next_prune = 0.0
        #: POP3 maildrop locks, shared with every process on this data directory
        self.maildrop_locks = MaildropLocks(self.directory / "locks" / "maildrop")
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.tmp_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._local = threading.local()
        self._readers: list[sqlite3.Connection] = []
        self._readers_lock = threading.Lock()
        wconn = _connect(self.db_path)
        self._migrate(wconn, self.directory / "locks" / "migrate")
        #: the schema has the change feed (a test may run an older schema's migrations only)
        self._has_feed = bool(
            wconn.execute("SELECT 1 FROM sqlite_master WHERE name='change_log'").fetchone()
        )
        #: the schema has the indexer's to-do list (migration 11; the same reason)
        self._has_pending = bool(
            wconn.execute("SELECT 1 FROM sqlite_master WHERE name='fts_queue'").fetchone()
        )
        #: one octet is appended whenever accounts change (`_bump_accounts`): its size (and
        #: inode) is what a cached recipient lookup is checked against (`recipient_account`)
        self._accounts_epoch = self.directory / "locks" / "accounts"
        self._rcpt_cache: dict[str, tuple[tuple[int, int], float, Account | None]] = {}
        with contextlib.suppress(OSError):  # without the file nothing is cached
            os.close(os.open(self._accounts_epoch, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600))
        self._queue: queue.SimpleQueue[_Op | None] = queue.SimpleQueue()
        self._closed = False
        #: the file whose ``flock`` the writers of every process take around each group's
        #: transaction (`_write_locked`)
        self._write_lock = open_lock_file(self.directory / "locks" / "writer")
        self._writer = threading.Thread(
            target=self._writer_loop, args=(wconn,), name="postfach-writer", daemon=True
        )
        self._writer.start()
        self._index_wakeup = threading.Event()
        self._index_stop = threading.Event()
        self._stopping = False
        self._last_added = 0.0
        self._indexer: threading.Thread | None = None
        if index_text:
            self._indexer = threading.Thread(
                target=self._indexer_loop, name="postfach-indexer", daemon=True
            )
            self._indexer.start()
        if publish is not None:
            self._follow()

    # ---- plumbing -----------------------------------------------------------------------------

    def set_publisher(self, publish: Publisher | None) -> None:
        """Where the changes go: this store's own commits' (from the writer thread, after each
        COMMIT), and from the first call with a publisher on, those other processes commit to
        the same data directory (from the change feed's thread, `postfach.store.feed`)."""
        self._publish = publish
        if publish is not None:
            self._follow()

    def _follow(self) -> None:
        if self._feed is None and not self._closed and self._has_feed:
            self._feed = feed.Follower(
                self.db_path, self.origin, self._publish_foreign, self.feed_interval
            )

    def try_lock_maildrop(self, account_id: int) -> bool:
        """RFC 1939 §8: exclusive access to the account's maildrop, across processes; False
        while another session (of this process or another) holds it (`postfach.store.locks`)."""
        return self.maildrop_locks.try_lock(account_id)

    def unlock_maildrop(self, account_id: int) -> None:
        self.maildrop_locks.unlock(account_id)

    def _publish_foreign(self, changes: list[Change]) -> None:
        if any(isinstance(c, MessageAdded) for c in changes):
            # Mail another process stored: the indexer has new work, and it counts as mail
            # arriving (the indexer steps back while any worker is receiving).
            self._last_added = time.monotonic()
            self._index_wakeup.set()
        publish = self._publish
        if publish is not None:
            publish(changes)

    def _record_changes(
        self, conn: sqlite3.Connection, changes: list[Change]
    ) -> tuple[int, feed.Follower | None]:
        """The group's changes into the change feed, inside its transaction; old rows pruned
        now and then (`postfach.store.feed`). The row's ``seq``, and the follower that will
        publish it (None: published straight to the publisher)."""
        seq = feed.record(conn, self.origin, changes)
        now = time.monotonic()
        if now >= self._next_prune:
            self._next_prune = now + feed.PRUNE_EVERY
            feed.prune(conn, time.time())
        follower = self._feed
        if follower is not None:
            follower.expect(seq)
        return seq, follower

    def _publish_own(
        self, conn: sqlite3.Connection, own: tuple[int, feed.Follower | None], changes: list[Change]
    ) -> None:
        """After COMMIT: through the follower when there is one (so that the changes other
        processes committed before ours are published first), else straight to the publisher."""
        seq, follower = own
        if follower is not None:
            follower.publish_own(conn, seq, changes)
        elif self._publish is not None:
            self._publish(changes)

    def sync_feed(self) -> None:
        """Publish now what other processes have committed (the follower's thread does it
        every `feed.INTERVAL` seconds): an IMAP session calls it, and then `Hub.settled`,
        before each command, so a command never misses a change committed before it arrived,
        whichever process made it. Costs one ``PRAGMA data_version`` when nothing changed."""
        follower = self._feed
        if follower is not None:
            follower.poll()

    @staticmethod
    def _migrate(conn: sqlite3.Connection, lock: Path) -> None:
        (version,) = conn.execute("PRAGMA user_version").fetchone()
        if version < len(MIGRATIONS):
            # Another process may be migrating this directory at the same moment (a server
            # starting while ``postfach user add`` creates it): one at a time, and the version
            # read again once it is our turn.
            with held(lock):
                (version,) = conn.execute("PRAGMA user_version").fetchone()
                SqliteMailstore._migrate_from(conn, version)
        if version > len(MIGRATIONS):
            raise StoreError(
                f"database schema version {version} is newer than this postfach "
                f"(knows {len(MIGRATIONS)}); upgrade postfach"
            )

    @staticmethod
    def _migrate_from(conn: sqlite3.Connection, version: int) -> None:
        if version >= len(MIGRATIONS):
            return
        # Foreign keys off while migrating, so that a step may rebuild a table others refer to
        # (the procedure of SQLite's ALTER TABLE documentation); each step is checked instead.
        conn.execute("PRAGMA foreign_keys=OFF")
        try:
            for i in range(version, len(MIGRATIONS)):
                # One transaction per step, version bump included.
                try:
                    conn.executescript(
                        f"BEGIN IMMEDIATE; {MIGRATIONS[i]}; PRAGMA user_version = {i + 1};"
                    )
                    broken = conn.execute("PRAGMA foreign_key_check").fetchmany(5)
                    if broken:
                        raise StoreError(f"schema migration {i + 1} broke references: {broken}")
                    conn.execute("COMMIT")
                except BaseException:
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                    raise
        finally:
            conn.execute("PRAGMA foreign_keys=ON")

    def _reader(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = _connect(self.db_path)
            conn.execute("PRAGMA query_only=ON")
            # Inline blobs are read through the OS page cache mapping instead of one pread per
            # page (halves the cost of a 20 KB POP3 RETR, measured in benchmarks/).
            conn.execute("PRAGMA mmap_size=268435456")
            self._local.conn = conn
            with self._readers_lock:
                self._readers.append(conn)
        return conn

    def submit(
        self, fn: Callable[..., T], *args: Any, background: bool = False
    ) -> concurrent.futures.Future[T]:
        """Queue a write op; the future resolves after its group commit (or with its error).
        ``background``: the indexer's op, whose group runs at the process's own priority (its
        FTS inserts take milliseconds per message; ahead of the event loop they would hold up
        every session of the worker for that long)."""
        fut: concurrent.futures.Future[T] = concurrent.futures.Future()
        if self._closed:
            fut.set_exception(StoreError("store is closed"))
            return fut
        self._queue.put(_Op(fn, args, fut, background))
        return fut

    def _write(self, fn: Callable[..., T], *args: Any) -> T:
        return self.submit(fn, *args).result()

    async def awrite(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.wrap_future(self.submit(fn, *args))

    def _writer_loop(self, conn: sqlite3.Connection) -> None:
        tid = threading.get_native_id()
        base = os.getpriority(os.PRIO_PROCESS, tid) if sys.platform.startswith("linux") else 0
        boosted = boost_priority()
        log.debug("event=writer_priority nice=%s", "unchanged" if boosted is None else boosted)
        stop = False
        while not stop:
            first = self._queue.get()
            if first is None:
                break
            with self._write_locked():
                # The group is gathered once the lock is ours: what queued up while another
                # process's writer held it joins this group instead of waiting for the next.
                ops, stop = self._gather(first)
                calm = boosted is not None and any(op.background for op in ops)
                if calm:
                    _renice(tid, base)
                committed = self._run_batch(conn, ops) if ops else None
                if calm:
                    _renice(tid, boosted)
            if committed is not None:
                self._after_commit(conn, *committed)
        conn.close()
        os.close(self._write_lock)
        # Ops queued behind the stop marker are failed, not left waiting forever.
        while True:
            try:
                left = self._queue.get_nowait()
            except queue.Empty:
                break
            if left is not None and left.future.set_running_or_notify_cancel():
                left.future.set_exception(StoreError("store is closed"))

    def _gather(self, first: _Op) -> tuple[list[_Op], bool]:
        """The ops of one group: ``first`` and what is queued behind it (up to ``batch_max``),
        less those whose caller gave up before they started; and whether the stop marker came."""
        ops = [first]
        stop = False
        while len(ops) < self._batch_max:
            try:
                nxt = self._queue.get_nowait()
            except queue.Empty:
                break
            if nxt is None:
                stop = True
                break
            ops.append(nxt)
        # A caller that gave up before its op started (its client hung up) gets nothing
        # run; once running, a future can no longer be cancelled, so every result below
        # lands (RFC 5321 §6.1 accepts the rare duplicate of a lost "250" over a loss).
        return [op for op in ops if op.future.set_running_or_notify_cancel()], stop

    @contextlib.contextmanager
    def _write_locked(self) -> Iterator[None]:
        """The data directory's writer lock, held around each write transaction of this writer.

        Every server process (each worker of ``[server] workers``) has its own writer, and
        SQLite lets one at a time hold the write lock. A writer that finds it taken waits in
        SQLite's busy handler, which sleeps 1, 2, 5, 10 ms ... between tries: the second
        writer lost milliseconds per group while both cores were idle. Taking an ``flock``
        first makes it wait in the kernel and start the moment the other COMMIT is done.
        Writers that do not take it (the admin commands) are still kept apart by SQLite."""
        fcntl.flock(self._write_lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(self._write_lock, fcntl.LOCK_UN)

    def _run_batch(self, conn: sqlite3.Connection, ops: list[_Op]) -> _Committed | None:
        """One group's transaction, under the writer lock: each op in its own savepoint, one
        COMMIT. None when the whole group failed (its ops' futures have their error already)."""
        batch = _Batch()
        outcomes: list[tuple[_Op, Any, BaseException | None]] = []
        own: tuple[int, feed.Follower | None] = (0, None)  # this commit's change feed row
        try:
            conn.execute("BEGIN IMMEDIATE")
        except BaseException as exc:
            self._abandon(conn, batch, ops, exc)
            return None
        for op in ops:
            mark, placed = len(batch.changes), len(batch.placed)
            try:
                conn.execute("SAVEPOINT op")
                try:
                    result = op.fn(conn, batch, *op.args)
                except BaseException as exc:
                    if not conn.in_transaction:
                        # SQLite rolled the whole transaction back itself (SQLITE_FULL,
                        # SQLITE_IOERR, ...): the ops before this one are undone as well.
                        raise _TransactionLost(exc) from exc
                    conn.execute("ROLLBACK TO op")
                    conn.execute("RELEASE op")
                    del batch.changes[mark:]
                    self._unplace(conn, batch.placed[placed:])
                    del batch.placed[placed:]
                    outcomes.append((op, None, _as_store_error(exc)))
                else:
                    conn.execute("RELEASE op")
                    outcomes.append((op, result, None))
            except _TransactionLost as lost:
                self._abandon(conn, batch, ops, lost.cause)
                return None
            except BaseException as exc:  # the savepoint statements themselves failed
                self._abandon(conn, batch, ops, exc)
                return None
        try:
            if batch.changes and self._has_feed:
                own = self._record_changes(conn, batch.changes)
            for d in batch.fsync_dirs:
                _fsync_dir(d)
            conn.execute("COMMIT")
        except BaseException as exc:
            self._abandon(conn, batch, ops, exc)
            return None
        return batch, outcomes, own

    def _after_commit(
        self,
        conn: sqlite3.Connection,
        batch: _Batch,
        outcomes: list[tuple[_Op, Any, BaseException | None]],
        own: tuple[int, feed.Follower | None],
    ) -> None:
        """After a group's COMMIT, outside the writer lock: remove the files it freed, publish
        its changes, then answer its ops (so a caller never answers before every session knows)."""
        if batch.accounts_changed:
            self._bump_accounts()
        if batch.unlink:
            # Before the answers, so that a freed file is gone when its op returns. This may
            # wait for another process's write transaction (as our next BEGIN would anyway).
            self._unlink_freed(conn, batch.unlink)
        if any(isinstance(c, MessageAdded) for c in batch.changes):
            self._last_added = time.monotonic()
            self._index_wakeup.set()
        if batch.changes:
            try:
                self._publish_own(conn, own, batch.changes)
            except Exception:
                log.exception("event=publish_failed")
        for op, result, error in outcomes:
            if error is not None:
                op.future.set_exception(error)
            else:
                op.future.set_result(result)

    def _abandon(
        self, conn: sqlite3.Connection, batch: _Batch, ops: list[_Op], exc: BaseException
    ) -> None:
        """The group's transaction cannot commit: roll it back, remove the blob files its ops
        moved into place, and fail every op of the group (none of them happened). The writer
        goes on with the next group, so a full disk fails writes until there is room again
        and never wedges the store."""
        with contextlib.suppress(sqlite3.Error):
            if conn.in_transaction:
                conn.execute("ROLLBACK")
        log.error("event=batch_failed ops=%d error=%r", len(ops), exc)
        if batch.placed:
            try:
                conn.execute("BEGIN IMMEDIATE")  # reads nothing uncommitted; no other writer
                try:
                    self._unplace(conn, batch.placed)
                finally:
                    conn.execute("ROLLBACK")
            except (sqlite3.Error, OSError):
                log.warning("event=unplace_failed files=%d", len(batch.placed))
        err = _as_store_error(exc)
        for op in ops:
            op.future.set_exception(err)

    def _unlink_freed(self, conn: sqlite3.Connection, paths: Collection[Path]) -> None:
        """Remove blob files whose last reference a committed group dropped.

        Under the database write lock, in a transaction of its own that writes nothing, and only
        files whose row is still absent (or unreferenced): between our COMMIT and here another
        process (``postfach import``, ``migrate``, ``check --repair``: each has its own writer)
        may have stored the same content again and reused the file, and it can only have done
        that in a transaction that has committed by the time we hold the lock. A file left
        behind because this fails is removed by the next ``sweep_leftovers``."""
        with self._write_locked():
            self._unlink_freed_locked(conn, paths)

    def _unlink_freed_locked(self, conn: sqlite3.Connection, paths: Collection[Path]) -> None:
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            log.warning("event=blob_unlink_skipped files=%d error=%r", len(paths), exc)
            return
        try:
            for path in paths:
                row = conn.execute("SELECT refs FROM blobs WHERE sha256=?", (path.name,)).fetchone()
                if row is not None and row[0] > 0:
                    continue  # stored again meanwhile (by another process): the file is theirs
                try:
                    path.unlink()
                except FileNotFoundError:
                    pass
                except OSError as exc:
                    log.warning("event=blob_unlink_failed blob=%s error=%r", path.name[:16], exc)
        finally:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")

    def _unplace(self, conn: sqlite3.Connection, paths: Sequence[Path]) -> None:
        """Remove blob files moved into place by ops that were rolled back, unless a row
        (committed, or of an earlier op of this group) refers to the same content."""
        for path in paths:
            if conn.execute("SELECT 1 FROM blobs WHERE sha256=?", (path.name,)).fetchone():
                continue
            with contextlib.suppress(FileNotFoundError):
                path.unlink()

    def close(self) -> None:
        if self._closed:
            return
        # The indexer stops between two messages (writes are still accepted until it ended).
        self._stopping = True
        self._index_stop.set()
        self._index_wakeup.set()
        if self._indexer is not None:
            self._indexer.join(timeout=30)
        self._closed = True
        if self._feed is not None:
            self._feed.stop()
        self._queue.put(None)
        self._writer.join(timeout=30)
        self.maildrop_locks.release_all()
        with self._readers_lock:
            for c in self._readers:
                with contextlib.suppress(sqlite3.Error):
                    c.close()
            self._readers.clear()

    # ---- blobs --------------------------------------------------------------------------------

    def blob_path(self, sha256: str) -> Path:
        return self.blob_dir / sha256[:2] / sha256[2:4] / sha256

    def stage(self, data: bytes, structure: str | None = None) -> StagedBlob:
        """Hash the message and, if large, write it to a fsynced temp file (caller's thread)."""
        sha = hashlib.sha256(data).hexdigest()
        if len(data) <= self.inline_max:
            return StagedBlob(sha, len(data), data, None, structure)
        tmp = self.tmp_dir / f"{sha}.{os.getpid()}.{threading.get_ident()}.{time.monotonic_ns()}"
        try:
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
        except OSError as exc:
            with contextlib.suppress(OSError):
                tmp.unlink()
            if _is_disk_full(exc):
                raise DiskFull(str(exc)) from exc
            raise
        return StagedBlob(sha, len(data), None, tmp, structure)

    def discard(self, blob: StagedBlob) -> None:
        """Remove a staged temp file that will not be stored."""
        if blob.tmp_path is not None:
            with contextlib.suppress(FileNotFoundError):
                blob.tmp_path.unlink()

    def _ref_blob(self, conn: sqlite3.Connection, batch: _Batch, blob: StagedBlob, n: int) -> None:
        row = conn.execute("SELECT refs FROM blobs WHERE sha256=?", (blob.sha256,)).fetchone()
        if row is not None:
            conn.execute("UPDATE blobs SET refs=refs+? WHERE sha256=?", (n, blob.sha256))
            final = self.blob_path(blob.sha256)
            if (
                row[0] == 0
                or final in batch.unlink
                or (blob.tmp_path is not None and not final.exists())
            ):
                # Freed earlier in this batch, a leftover row, or the file went missing: make
                # sure the file is there. A file found here, under the write lock, survives:
                # every removal of a final blob path (``_unlink_freed``, ``_op_sweep``,
                # ``_unplace``) happens under the lock and skips content that has a row.
                batch.unlink.discard(final)
                self._place_file(batch, blob)
            elif blob.tmp_path is not None:
                with contextlib.suppress(FileNotFoundError):
                    blob.tmp_path.unlink()
            return
        self._place_file(batch, blob)
        conn.execute(
            "INSERT INTO blobs(sha256, size, refs, data, structure) VALUES (?,?,?,?,?)",
            (blob.sha256, blob.size, n, blob.data, blob.structure),
        )
        if self._has_pending:
            conn.execute("INSERT INTO fts_queue(sha256) VALUES (?)", (blob.sha256,))

    def _place_file(self, batch: _Batch, blob: StagedBlob) -> None:
        if blob.tmp_path is None:
            return
        final = self.blob_path(blob.sha256)
        if final.exists():
            # Left by an op that never committed (the process was killed): complete (it was
            # fsynced before the rename), but its directory entry may not be durable yet.
            with contextlib.suppress(FileNotFoundError):
                blob.tmp_path.unlink()
        else:
            # Every directory made for the new name is an entry of its parent and needs that
            # parent fsynced (``blobs/ab`` is an entry of ``blobs``). Noted before mkdir: an op
            # failing after it leaves the directory behind, and later ops will not see it new.
            for d in (final.parent.parent, final.parent):
                if not d.exists():
                    batch.fsync_dirs.add(d.parent)
            final.parent.mkdir(parents=True, exist_ok=True)
            os.replace(blob.tmp_path, final)
        batch.placed.append(final)
        batch.fsync_dirs.add(final.parent)
        batch.fsync_dirs.add(final.parent.parent)

    def _unref_blob(self, conn: sqlite3.Connection, batch: _Batch, sha: str, n: int = 1) -> None:
        row = conn.execute("SELECT refs, data IS NULL FROM blobs WHERE sha256=?", (sha,)).fetchone()
        if row is None:
            return
        refs, is_file = row
        if refs - n > 0:
            conn.execute("UPDATE blobs SET refs=refs-? WHERE sha256=?", (n, sha))
            return
        conn.execute("DELETE FROM blobs WHERE sha256=?", (sha,))
        doc = conn.execute("SELECT docid FROM fts_docs WHERE sha256=?", (sha,)).fetchone()
        if doc is not None:
            conn.execute("DELETE FROM fts WHERE rowid=?", (doc[0],))
            conn.execute("DELETE FROM fts_docs WHERE sha256=?", (sha,))
        conn.execute("DELETE FROM fts_skipped WHERE sha256=?", (sha,))
        # Its row on the indexer's queue stays until the indexer finds it gone (migration 11).
        if is_file:
            batch.unlink.add(self.blob_path(sha))

    def read_blob(self, sha256: str) -> bytes:
        row = self._reader().execute("SELECT data FROM blobs WHERE sha256=?", (sha256,)).fetchone()
        if row is None:
            raise NotFound(f"blob {sha256}")
        if row[0] is not None:
            return bytes(row[0])
        return self.blob_path(sha256).read_bytes()

    def blob_structure(self, sha256: str) -> str | None:
        row = (
            self._reader()
            .execute("SELECT structure FROM blobs WHERE sha256=?", (sha256,))
            .fetchone()
        )
        return None if row is None else row[0]

    # ---- domains ------------------------------------------------------------------------------

    def add_domain(self, name: str) -> Domain:
        return self._write(self._op_add_domain, name.lower())

    @staticmethod
    def _op_add_domain(conn: sqlite3.Connection, batch: _Batch, name: str) -> Domain:
        batch.accounts_changed = True
        if conn.execute("SELECT 1 FROM domains WHERE name=?", (name,)).fetchone():
            raise AlreadyExists(f"domain {name} exists already")
        conn.execute("INSERT INTO domains(name, created) VALUES (?, ?)", (name, int(time.time())))
        return Domain(name)

    def list_domains(self) -> list[Domain]:
        rows = self._reader().execute("SELECT name FROM domains ORDER BY name").fetchall()
        return [Domain(r[0]) for r in rows]

    def is_local_domain(self, name: str) -> bool:
        row = self._reader().execute("SELECT 1 FROM domains WHERE name=?", (name.lower(),))
        return row.fetchone() is not None

    def domains_by_age(self) -> list[str]:
        """The local domains in the order they were added."""
        rows = self._reader().execute("SELECT name FROM domains ORDER BY created, rowid")
        return [str(r[0]) for r in rows.fetchall()]

    def oldest_account(self, domain: str) -> str | None:
        """The name of the domain's account with the lowest id (the first one added)."""
        row = (
            self._reader()
            .execute("SELECT name FROM accounts WHERE domain=? ORDER BY id LIMIT 1", (domain,))
            .fetchone()
        )
        return None if row is None else str(row[0])

    def delete_domain(self, name: str) -> None:
        self._write(self._op_delete_domain, name.lower())

    @staticmethod
    def _op_delete_domain(conn: sqlite3.Connection, batch: _Batch, name: str) -> None:
        batch.accounts_changed = True
        if not conn.execute("SELECT 1 FROM domains WHERE name=?", (name,)).fetchone():
            raise NotFound(f"no domain {name}")
        (n,) = conn.execute("SELECT count(*) FROM accounts WHERE domain=?", (name,)).fetchone()
        if n:
            raise StoreError(f"domain {name} still has {n} account(s); delete them first")
        conn.execute("DELETE FROM aliases WHERE address LIKE ?", ("%@" + name,))
        conn.execute("DELETE FROM domains WHERE name=?", (name,))

    # ---- accounts -----------------------------------------------------------------------------

    _ACCOUNT_COLS: Final = (
        "id, name, quota_bytes, quota_messages, used_bytes, used_messages, sent_copy"
    )

    def add_account(
        self, name: str, password_hash: str, quota_bytes: int = 0, quota_messages: int = 0
    ) -> Account:
        return self._write(
            self._op_add_account, name.lower(), password_hash, quota_bytes, quota_messages
        )

    def _op_add_account(
        self,
        conn: sqlite3.Connection,
        batch: _Batch,
        name: str,
        password_hash: str,
        quota_bytes: int,
        quota_messages: int,
    ) -> Account:
        batch.accounts_changed = True
        local, at, domain = name.rpartition("@")
        if not at or not local:
            raise StoreError(f"not an address: {name!r} (use user@domain)")
        if not conn.execute("SELECT 1 FROM domains WHERE name=?", (domain,)).fetchone():
            raise NotFound(f"no domain {domain}; add it with: postfach domain add {domain}")
        if conn.execute("SELECT 1 FROM accounts WHERE name=?", (name,)).fetchone():
            raise AlreadyExists(f"account {name} exists already")
        account_id = self._new_id(conn, "account_id", "accounts")
        conn.execute(
            "INSERT INTO accounts(id, name, domain, password, quota_bytes, quota_messages, created)"
            " VALUES (?,?,?,?,?,?,?)",
            (
                account_id,
                name,
                domain,
                password_hash,
                quota_bytes,
                quota_messages,
                int(time.time()),
            ),
        )
        for mbox, special in DEFAULT_MAILBOXES:
            self._create_mailbox(conn, account_id, mbox, special)
            conn.execute(
                "INSERT INTO subscriptions(account_id, name) VALUES (?, ?)", (account_id, mbox)
            )
        return Account(account_id, name, quota_bytes, quota_messages, 0, 0, "off")

    @staticmethod
    def _new_id(conn: sqlite3.Connection, counter: str, table: str) -> int:
        """A row id never issued before in ``table`` (see migration 6)."""
        (last,) = conn.execute("SELECT value FROM counters WHERE name=?", (counter,)).fetchone()
        (top,) = conn.execute(f"SELECT coalesce(max(id), 0) FROM {table}").fetchone()
        value = max(int(last), int(top)) + 1
        conn.execute("UPDATE counters SET value=? WHERE name=?", (value, counter))
        return value

    @staticmethod
    def _new_uidvalidity(conn: sqlite3.Connection) -> int:
        """A value never issued before in this store (unique across all mailboxes)."""
        (last,) = conn.execute("SELECT value FROM counters WHERE name='uidvalidity'").fetchone()
        value = max(int(time.time()), int(last) + 1)
        if value > 0xFFFFFFFF:  # nz-number (RFC 9051 §9): 32 bits
            raise StoreError("UIDVALIDITY space exhausted")
        conn.execute("UPDATE counters SET value=? WHERE name='uidvalidity'", (value,))
        return value

    def _create_mailbox(
        self, conn: sqlite3.Connection, account_id: int, name: str, special: str | None
    ) -> int:
        mailbox_id = self._new_id(conn, "mailbox_id", "mailboxes")
        conn.execute(
            "INSERT INTO mailboxes(id, account_id, name, special_use, uidvalidity)"
            " VALUES (?,?,?,?,?)",
            (mailbox_id, account_id, name, special, self._new_uidvalidity(conn)),
        )
        return mailbox_id

    @staticmethod
    def _account(row: Sequence[Any]) -> Account:
        return Account(*row)

    #: seconds a cached recipient lookup is used at most, a backstop for a process that died
    #: between its COMMIT and its `_bump_accounts`
    recipient_cache_seconds: float = 5.0
    _RECIPIENT_CACHE_MAX: Final = 10_000

    def _accounts_token(self) -> tuple[int, int] | None:
        try:
            st = os.stat(self._accounts_epoch)
        except OSError:
            return None
        return st.st_ino, st.st_size

    def _bump_accounts(self) -> None:
        """After a COMMIT that changed accounts (or left one without room, `_note_usage`) and
        before its ops are answered: every process's cached recipient lookups are void."""
        self._rcpt_cache.clear()
        try:
            fd = os.open(
                self._accounts_epoch, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600
            )
            try:
                os.write(fd, b".")
            finally:
                os.close(fd)
        except OSError as exc:  # other processes' caches expire (recipient_cache_seconds)
            log.warning("event=accounts_epoch_failed error=%r", exc)

    def recipient_account(self, name: str, size: int | None = None) -> Account | None:
        """`get_account` for an SMTP recipient, answered from this process's cache when that
        gives the answer a fresh read would: whether the account exists, whether it is full,
        and whether a message of ``size`` octets (SIZE=, if declared) would exceed its quota.

        A lookup is cached only while the account is `roomy` (or does not exist), and a
        cached one is used only while ``locks/accounts`` is unchanged: every process's writer
        appends to it after committing any change to accounts, aliases or domains, and after a
        delivery, APPEND or COPY that leaves an account without an eighth of its quota. So an
        unchanged file means the account is still roomy: not full, and with room for any
        message of up to an eighth of its quota (a larger ``size`` is read fresh). The usage
        in a cached Account may be behind; the store's own quota check at delivery is exact."""
        key = name.lower()
        token = self._accounts_token()  # before the read: a change after it voids the entry
        now = time.monotonic()
        hit = self._rcpt_cache.get(key)
        if hit is not None and hit[0] == token and now - hit[1] < self.recipient_cache_seconds:
            acc = hit[2]
            if (
                acc is None
                or size is None
                or not acc.quota_bytes
                or size <= acc.quota_bytes // _ROOM_SHARE
            ):
                return acc
        acc = self.get_account(key)
        if token is not None and (acc is None or roomy(acc)):
            if len(self._rcpt_cache) >= self._RECIPIENT_CACHE_MAX:
                self._rcpt_cache.clear()
            self._rcpt_cache[key] = (token, now, acc)
        return acc

    def get_account(self, name: str) -> Account | None:
        row = (
            self._reader()
            .execute(f"SELECT {self._ACCOUNT_COLS} FROM accounts WHERE name=?", (name.lower(),))
            .fetchone()
        )
        return None if row is None else self._account(row)

    def get_account_by_id(self, account_id: int) -> Account | None:
        row = (
            self._reader()
            .execute(f"SELECT {self._ACCOUNT_COLS} FROM accounts WHERE id=?", (account_id,))
            .fetchone()
        )
        return None if row is None else self._account(row)

    def list_accounts(self, domain: str | None = None) -> list[Account]:
        sql = f"SELECT {self._ACCOUNT_COLS} FROM accounts"
        args: tuple[str, ...] = ()
        if domain:
            sql += " WHERE domain=?"
            args = (domain.lower(),)
        rows = self._reader().execute(sql + " ORDER BY name", args).fetchall()
        return [self._account(r) for r in rows]

    def password_hash(self, name: str) -> str | None:
        row = (
            self._reader()
            .execute("SELECT password FROM accounts WHERE name=?", (name.lower(),))
            .fetchone()
        )
        return None if row is None else str(row[0])

    def set_password(self, name: str, password_hash: str) -> None:
        self._write(self._op_set_password, name.lower(), password_hash)

    @staticmethod
    def _op_set_password(conn: sqlite3.Connection, batch: _Batch, name: str, pw: str) -> None:
        if conn.execute("UPDATE accounts SET password=? WHERE name=?", (pw, name)).rowcount == 0:
            raise NotFound(f"no account {name}")

    async def areplace_password(self, name: str, old_hash: str, new_hash: str) -> bool:
        """Compare-and-set for rehash on login: store new_hash only if the account's hash is
        still old_hash (a password changed meanwhile is kept). True if replaced."""
        return await self.awrite(self._op_replace_password, name.lower(), old_hash, new_hash)

    @staticmethod
    def _op_replace_password(
        conn: sqlite3.Connection, batch: _Batch, name: str, old: str, new: str
    ) -> bool:
        cur = conn.execute(
            "UPDATE accounts SET password=? WHERE name=? AND password=?", (new, name, old)
        )
        return cur.rowcount == 1

    def set_quota(self, name: str, quota_bytes: int, quota_messages: int) -> Account:
        return self._write(self._op_set_quota, name.lower(), quota_bytes, quota_messages)

    def _op_set_quota(
        self, conn: sqlite3.Connection, batch: _Batch, name: str, qb: int, qm: int
    ) -> Account:
        batch.accounts_changed = True
        cur = conn.execute(
            "UPDATE accounts SET quota_bytes=?, quota_messages=? WHERE name=?", (qb, qm, name)
        )
        if cur.rowcount == 0:
            raise NotFound(f"no account {name}")
        row = conn.execute(
            f"SELECT {self._ACCOUNT_COLS} FROM accounts WHERE name=?", (name,)
        ).fetchone()
        return self._account(row)

    ACCOUNT_SETTINGS: Final = {"sent_copy": ("auto", "off")}

    def set_account_setting(self, name: str, key: str, value: str) -> Account:
        """Per-account settings (today: ``sent_copy`` = auto | off)."""
        allowed = self.ACCOUNT_SETTINGS.get(key)
        if allowed is None:
            raise StoreError(f"unknown setting {key!r} (known: {', '.join(self.ACCOUNT_SETTINGS)})")
        if value not in allowed:
            raise StoreError(f"{key}: use one of {', '.join(allowed)}")
        return self._write(self._op_set_setting, name.lower(), key, value)

    def _op_set_setting(
        self, conn: sqlite3.Connection, batch: _Batch, name: str, key: str, value: str
    ) -> Account:
        assert key in self.ACCOUNT_SETTINGS  # the column name comes from the fixed table above
        batch.accounts_changed = True
        cur = conn.execute(f"UPDATE accounts SET {key}=? WHERE name=?", (value, name))
        if cur.rowcount == 0:
            raise NotFound(f"no account {name}")
        row = conn.execute(
            f"SELECT {self._ACCOUNT_COLS} FROM accounts WHERE name=?", (name,)
        ).fetchone()
        return self._account(row)

    def delete_account(self, name: str) -> None:
        self._write(self._op_delete_account, name.lower())

    def _op_delete_account(self, conn: sqlite3.Connection, batch: _Batch, name: str) -> None:
        batch.accounts_changed = True
        row = conn.execute("SELECT id FROM accounts WHERE name=?", (name,)).fetchone()
        if row is None:
            raise NotFound(f"no account {name}")
        account_id = row[0]
        blobs = conn.execute(
            "SELECT blob, count(*) FROM messages WHERE mailbox_id IN"
            " (SELECT id FROM mailboxes WHERE account_id=?) GROUP BY blob",
            (account_id,),
        ).fetchall()
        conn.execute(
            "DELETE FROM messages WHERE mailbox_id IN"
            " (SELECT id FROM mailboxes WHERE account_id=?)",
            (account_id,),
        )
        conn.execute(
            "DELETE FROM expunged WHERE mailbox_id IN"
            " (SELECT id FROM mailboxes WHERE account_id=?)",
            (account_id,),
        )
        for sha, n in blobs:
            self._unref_blob(conn, batch, sha, n)
        conn.execute("DELETE FROM mailboxes WHERE account_id=?", (account_id,))
        conn.execute("DELETE FROM subscriptions WHERE account_id=?", (account_id,))
        conn.execute("DELETE FROM aliases WHERE target=?", (name,))
        conn.execute("DELETE FROM accounts WHERE id=?", (account_id,))
        batch.changes.append(MailboxesChanged(account_id))
        batch.changes.append(AccountDeleted(account_id))

    # ---- aliases ------------------------------------------------------------------------------

    def add_alias(self, address: str, target: str) -> None:
        self._write(self._op_add_alias, address.lower(), target.lower())

    @staticmethod
    def _op_add_alias(conn: sqlite3.Connection, batch: _Batch, address: str, target: str) -> None:
        batch.accounts_changed = True
        local, at, domain = address.rpartition("@")
        if not at or not domain:
            raise StoreError(f"not an alias address: {address!r} (user@domain or @domain)")
        if not conn.execute("SELECT 1 FROM domains WHERE name=?", (domain,)).fetchone():
            raise NotFound(f"no domain {domain}; aliases are for local domains")
        if local and conn.execute("SELECT 1 FROM accounts WHERE name=?", (address,)).fetchone():
            raise AlreadyExists(f"{address} is an account; an alias cannot shadow it")
        if "@" not in target or target.startswith("@"):
            raise StoreError(f"alias target must be a full address: {target!r}")
        if conn.execute(
            "SELECT 1 FROM aliases WHERE address=? AND target=?", (address, target)
        ).fetchone():
            raise AlreadyExists(f"alias {address} -> {target} exists already")
        conn.execute("INSERT INTO aliases(address, target) VALUES (?,?)", (address, target))

    def delete_alias(self, address: str, target: str | None = None) -> None:
        self._write(self._op_delete_alias, address.lower(), target.lower() if target else None)

    @staticmethod
    def _op_delete_alias(
        conn: sqlite3.Connection, batch: _Batch, address: str, target: str | None
    ) -> None:
        batch.accounts_changed = True
        if target is None:
            cur = conn.execute("DELETE FROM aliases WHERE address=?", (address,))
        else:
            cur = conn.execute(
                "DELETE FROM aliases WHERE address=? AND target=?", (address, target)
            )
        if cur.rowcount == 0:
            raise NotFound(f"no alias {address}" + (f" -> {target}" if target else ""))

    def list_aliases(self) -> list[Alias]:
        rows = (
            self._reader()
            .execute("SELECT address, target FROM aliases ORDER BY address, target")
            .fetchall()
        )
        grouped: dict[str, list[str]] = {}
        for address, target in rows:
            grouped.setdefault(address, []).append(target)
        return [Alias(a, tuple(t)) for a, t in grouped.items()]

    def resolve(self, address: str) -> list[str] | None:
        """Expand an address of a local domain into the local accounts it reaches.

        Exact accounts win over aliases, aliases over the domain's catch-all (``@domain``).
        Returns None when nothing local matches (unknown user); alias targets outside local
        domains are not followed (forwarding is the queue's job) and are left out.
        """
        conn = self._reader()
        seen: set[str] = set()
        found: list[str] = []

        def walk(addr: str, depth: int) -> bool:
            if depth > MAX_ALIAS_DEPTH or addr in seen:
                return addr in seen
            seen.add(addr)
            if conn.execute("SELECT 1 FROM accounts WHERE name=?", (addr,)).fetchone():
                if addr not in found:
                    found.append(addr)
                return True
            targets = [
                r[0] for r in conn.execute("SELECT target FROM aliases WHERE address=?", (addr,))
            ]
            if not targets:
                domain = addr.rpartition("@")[2]
                targets = [
                    r[0]
                    for r in conn.execute(
                        "SELECT target FROM aliases WHERE address=?", ("@" + domain,)
                    )
                ]
            ok = False
            for t in targets:
                ok = walk(t, depth + 1) or ok
            return ok

        walk(address.lower(), 0)
        return found or None

    # ---- mailboxes ----------------------------------------------------------------------------

    _MAILBOX_COLS: Final = (
        "id, account_id, name, special_use, uidvalidity, uidnext, highestmodseq,"
        " EXISTS (SELECT 1 FROM subscriptions s WHERE s.account_id=mailboxes.account_id"
        " AND s.name=mailboxes.name),"
        " (SELECT count(*) FROM messages WHERE mailbox_id=mailboxes.id)"
    )

    @staticmethod
    def _mailbox(row: Sequence[Any]) -> Mailbox:
        return Mailbox(row[0], row[1], row[2], row[3], row[4], row[5], row[6], bool(row[7]), row[8])

    def list_mailboxes(self, account_id: int) -> list[Mailbox]:
        rows = (
            self._reader()
            .execute(
                f"SELECT {self._MAILBOX_COLS} FROM mailboxes WHERE account_id=? ORDER BY name",
                (account_id,),
            )
            .fetchall()
        )
        return [self._mailbox(r) for r in rows]

    def get_mailbox(self, account_id: int, name: str) -> Mailbox | None:
        if name.isascii() and name.upper() == INBOX:
            name = INBOX
        row = (
            self._reader()
            .execute(
                f"SELECT {self._MAILBOX_COLS} FROM mailboxes WHERE account_id=? AND name=?",
                (account_id, name),
            )
            .fetchone()
        )
        return None if row is None else self._mailbox(row)

    def create_mailbox(self, account_id: int, name: str, special_use: str | None = None) -> int:
        return self._write(self._op_create_mailbox, account_id, name, special_use)

    async def acreate_mailbox(
        self, account_id: int, name: str, special_use: str | None = None
    ) -> int:
        return await self.awrite(self._op_create_mailbox, account_id, name, special_use)

    def _op_create_mailbox(
        self, conn: sqlite3.Connection, batch: _Batch, account_id: int, name: str, su: str | None
    ) -> int:
        if conn.execute(
            "SELECT 1 FROM mailboxes WHERE account_id=? AND name=?", (account_id, name)
        ).fetchone():
            raise AlreadyExists(f"mailbox {name} exists already")
        mid = self._create_mailbox(conn, account_id, name, su)
        batch.changes.append(MailboxesChanged(account_id))
        return mid

    # ---- messages -----------------------------------------------------------------------------

    _MESSAGE_COLS: Final = (
        "id, mailbox_id, uid, modseq, flags, keywords, internal_date, save_date, size, blob"
    )

    @staticmethod
    def _message(row: Sequence[Any]) -> MessageMeta:
        kw = tuple(row[5].split()) if row[5] else ()
        return MessageMeta(
            row[0], row[1], row[2], row[3], Flag(row[4]), kw, row[6], row[7], row[8], row[9]
        )

    def list_messages(self, mailbox_id: int) -> list[MessageMeta]:
        rows = (
            self._reader()
            .execute(
                f"SELECT {self._MESSAGE_COLS} FROM messages WHERE mailbox_id=? ORDER BY uid",
                (mailbox_id,),
            )
            .fetchall()
        )
        return [self._message(r) for r in rows]

    def list_message_rows(self, mailbox_id: int) -> tuple[int, list[tuple[Any, ...]]]:
        """The mailbox's HIGHESTMODSEQ and its message rows (columns of ``_MESSAGE_COLS``,
        flags as int, keywords as stored), read in one transaction so the rows are exactly the
        mailbox at that MODSEQ. Raw rows, so that IMAP SELECT can pack them into arrays
        (`postfach.imap.listing`) without a `MessageMeta` per message."""
        conn = self._reader()
        conn.execute("BEGIN")
        try:
            row = conn.execute(
                "SELECT highestmodseq FROM mailboxes WHERE id=?", (mailbox_id,)
            ).fetchone()
            rows = conn.execute(
                f"SELECT {self._MESSAGE_COLS} FROM messages WHERE mailbox_id=? ORDER BY uid",
                (mailbox_id,),
            ).fetchall()
        finally:
            conn.execute("COMMIT")
        return (int(row[0]) if row else 0), rows

    def message_rows_since(
        self, mailbox_id: int, modseq: int
    ) -> tuple[int, list[tuple[Any, ...]], list[int]]:
        """The mailbox's HIGHESTMODSEQ, the rows (as `list_message_rows`) of the messages
        changed or added after ``modseq``, and the UIDs expunged after it, in one read
        transaction: what turns a listing at ``modseq`` into one of now (IMAP SELECT of a
        large mailbox that changed a little since it was last listed)."""
        conn = self._reader()
        conn.execute("BEGIN")
        try:
            row = conn.execute(
                "SELECT highestmodseq FROM mailboxes WHERE id=?", (mailbox_id,)
            ).fetchone()
            rows = conn.execute(
                f"SELECT {self._MESSAGE_COLS} FROM messages WHERE mailbox_id=? AND modseq>?"
                " ORDER BY uid",
                (mailbox_id, modseq),
            ).fetchall()
            gone = [
                r[0]
                for r in conn.execute(
                    "SELECT uid FROM expunged WHERE mailbox_id=? AND modseq>? ORDER BY uid",
                    (mailbox_id, modseq),
                )
            ]
        finally:
            conn.execute("COMMIT")
        return (int(row[0]) if row else 0), rows, gone

    def list_message_blobs(self, mailbox_id: int) -> list[tuple[int, int, str]]:
        """(uid, size, blob) of each message in UID order: what a POP3 login snapshots, without
        building a `MessageMeta` (flags, keywords, dates) per message."""
        rows: list[tuple[int, int, str]] = (
            self._reader()
            .execute(
                "SELECT uid, size, blob FROM messages WHERE mailbox_id=? ORDER BY uid",
                (mailbox_id,),
            )
            .fetchall()
        )
        return rows

    def deliver(
        self,
        account_ids: Sequence[int],
        blob: StagedBlob,
        internal_date: int,
        mailbox: str = INBOX,
        flags: Flag = Flag.NONE,
    ) -> list[DeliveryResult]:
        return self._write(self._op_deliver, account_ids, blob, internal_date, mailbox, flags)

    async def adeliver(
        self,
        account_ids: Sequence[int],
        blob: StagedBlob,
        internal_date: int,
        mailbox: str = INBOX,
        flags: Flag = Flag.NONE,
    ) -> list[DeliveryResult]:
        return await self.awrite(self._op_deliver, account_ids, blob, internal_date, mailbox, flags)

    def _op_deliver(
        self,
        conn: sqlite3.Connection,
        batch: _Batch,
        account_ids: Sequence[int],
        blob: StagedBlob,
        internal_date: int,
        mailbox: str,
        flags: Flag,
    ) -> list[DeliveryResult]:
        """Store one message for several accounts; quota is checked here, under the write lock."""
        results: list[DeliveryResult] = []
        fitting: list[tuple[Account, int, int, int]] = []
        for account_id in account_ids:
            row = conn.execute(
                f"SELECT {self._ACCOUNT_COLS} FROM accounts WHERE id=?", (account_id,)
            ).fetchone()
            if row is None:
                raise NotFound(f"no account id {account_id}")
            account = self._account(row)
            over = account.would_exceed(blob.size)
            if over:
                results.append(DeliveryResult(account.name, over_quota=over))
                continue
            mrow = conn.execute(
                "SELECT id, uidnext, highestmodseq FROM mailboxes WHERE account_id=? AND name=?",
                (account_id, mailbox),
            ).fetchone()
            if mrow is None:
                raise NotFound(f"{account.name}: no mailbox {mailbox}")
            fitting.append((account, mrow[0], mrow[1], mrow[2] + 1))
            results.append(DeliveryResult(account.name))
        if not fitting:
            if blob.tmp_path is not None:
                with contextlib.suppress(FileNotFoundError):
                    blob.tmp_path.unlink()
            return results
        self._ref_blob(conn, batch, blob, len(fitting))
        now = int(time.time())
        stored: dict[str, MessageMeta] = {}
        for account, mailbox_id, uid, modseq in fitting:
            conn.execute(
                "UPDATE mailboxes SET uidnext=?, highestmodseq=? WHERE id=?",
                (uid + 1, modseq, mailbox_id),
            )
            cur = conn.execute(
                "INSERT INTO messages(mailbox_id, uid, modseq, flags, internal_date, save_date,"
                " size, blob) VALUES (?,?,?,?,?,?,?,?)",
                (mailbox_id, uid, modseq, int(flags), internal_date, now, blob.size, blob.sha256),
            )
            conn.execute(
                "UPDATE accounts SET used_bytes=used_bytes+?, used_messages=used_messages+1"
                " WHERE id=?",
                (blob.size, account.id),
            )
            _note_usage(batch, account, blob.size, 1)
            assert cur.lastrowid is not None
            stored[account.name] = MessageMeta(
                cur.lastrowid, mailbox_id, uid, modseq, flags, (), internal_date, now,
                blob.size, blob.sha256,
            )  # fmt: skip
            batch.changes.append(MessageAdded(account.id, mailbox_id, uid, modseq, flags, ()))
        return [
            DeliveryResult(r.account, message=stored[r.account]) if r.over_quota is None else r
            for r in results
        ]

    def expunge(self, mailbox_id: int, uids: Iterable[int]) -> list[int]:
        return self._write(self._op_expunge, mailbox_id, sorted(set(uids)))

    async def aexpunge(self, mailbox_id: int, uids: Iterable[int]) -> list[int]:
        return await self.awrite(self._op_expunge, mailbox_id, sorted(set(uids)))

    def _op_expunge(
        self, conn: sqlite3.Connection, batch: _Batch, mailbox_id: int, uids: list[int]
    ) -> list[int]:
        """Remove messages by UID; returns the UIDs that existed. Quota drops in this commit."""
        mrow = conn.execute(
            "SELECT account_id, highestmodseq FROM mailboxes WHERE id=?", (mailbox_id,)
        ).fetchone()
        if mrow is None:
            raise NotFound(f"no mailbox id {mailbox_id}")
        account_id, modseq = mrow[0], mrow[1] + 1
        gone: list[int] = []
        freed = 0
        blobs: dict[str, int] = {}
        for uid in uids:
            row = conn.execute(
                "SELECT id, size, blob FROM messages WHERE mailbox_id=? AND uid=?",
                (mailbox_id, uid),
            ).fetchone()
            if row is None:
                continue
            conn.execute("DELETE FROM messages WHERE id=?", (row[0],))
            conn.execute(
                "INSERT OR REPLACE INTO expunged(mailbox_id, uid, modseq) VALUES (?,?,?)",
                (mailbox_id, uid, modseq),
            )
            gone.append(uid)
            freed += row[1]
            blobs[row[2]] = blobs.get(row[2], 0) + 1
        if not gone:
            return gone
        for sha, n in blobs.items():
            self._unref_blob(conn, batch, sha, n)
        conn.execute("UPDATE mailboxes SET highestmodseq=? WHERE id=?", (modseq, mailbox_id))
        conn.execute(
            "UPDATE accounts SET used_bytes=used_bytes-?, used_messages=used_messages-? WHERE id=?",
            (freed, len(gone), account_id),
        )
        batch.changes.append(MessagesExpunged(account_id, mailbox_id, tuple(gone), modseq))
        return gone

    # ---- IMAP: mailboxes ---------------------------------------------------------------------

    def get_mailbox_by_id(self, mailbox_id: int) -> Mailbox | None:
        row = (
            self._reader()
            .execute(f"SELECT {self._MAILBOX_COLS} FROM mailboxes WHERE id=?", (mailbox_id,))
            .fetchone()
        )
        return None if row is None else self._mailbox(row)

    def mailbox_counts(self, mailbox_id: int) -> MailboxCounts:
        """STATUS figures in one indexed pass: messages, unseen, deleted, sizes."""
        row = (
            self._reader()
            .execute(
                "SELECT count(*), coalesce(sum(flags & ? = 0), 0),"
                " coalesce(sum(flags & ? != 0), 0),"
                " coalesce(sum(CASE WHEN flags & ? != 0 THEN size ELSE 0 END), 0),"
                " coalesce(sum(size), 0) FROM messages WHERE mailbox_id=?",
                (int(Flag.SEEN), int(Flag.DELETED), int(Flag.DELETED), mailbox_id),
            )
            .fetchone()
        )
        return MailboxCounts(*(int(x) for x in row))

    def get_messages(self, mailbox_id: int, uids: Iterable[int]) -> list[MessageMeta]:
        """The named messages that exist, in UID order (one query per 500 UIDs)."""
        wanted = sorted(set(uids))
        out: list[MessageMeta] = []
        conn = self._reader()
        for i in range(0, len(wanted), 500):
            chunk = wanted[i : i + 500]
            marks = ",".join("?" * len(chunk))
            out.extend(
                self._message(r)
                for r in conn.execute(
                    f"SELECT {self._MESSAGE_COLS} FROM messages"
                    f" WHERE mailbox_id=? AND uid IN ({marks}) ORDER BY uid",
                    (mailbox_id, *chunk),
                )
            )
        return out

    def mailbox_size(self, mailbox_id: int) -> int:
        row = (
            self._reader()
            .execute(
                "SELECT coalesce(sum(size), 0) FROM messages WHERE mailbox_id=?", (mailbox_id,)
            )
            .fetchone()
        )
        return int(row[0])

    @staticmethod
    def _mailbox_row(conn: sqlite3.Connection, account_id: int, name: str) -> tuple[Any, ...]:
        row = conn.execute(
            "SELECT id, uidvalidity, uidnext, highestmodseq, special_use FROM mailboxes"
            " WHERE account_id=? AND name=?",
            (account_id, name),
        ).fetchone()
        if row is None:
            raise NotFound(f"no mailbox {name}")
        return tuple(row)

    def delete_mailbox(self, account_id: int, name: str) -> None:
        self._write(self._op_delete_mailbox, account_id, name)

    async def adelete_mailbox(self, account_id: int, name: str) -> None:
        await self.awrite(self._op_delete_mailbox, account_id, name)

    def _op_delete_mailbox(
        self, conn: sqlite3.Connection, batch: _Batch, account_id: int, name: str
    ) -> None:
        """RFC 9051 §6.3.4: the messages go (quota freed); inferior names stay."""
        if name.isascii() and name.upper() == INBOX:
            raise StoreError("INBOX cannot be deleted")
        mailbox_id = self._mailbox_row(conn, account_id, name)[0]
        uids = [
            r[0] for r in conn.execute("SELECT uid FROM messages WHERE mailbox_id=?", (mailbox_id,))
        ]
        if uids:
            self._op_expunge(conn, batch, mailbox_id, uids)
        conn.execute("DELETE FROM expunged WHERE mailbox_id=?", (mailbox_id,))
        conn.execute("DELETE FROM mailboxes WHERE id=?", (mailbox_id,))
        batch.changes.append(MailboxesChanged(account_id))

    def rename_mailbox(self, account_id: int, old: str, new: str) -> None:
        self._write(self._op_rename_mailbox, account_id, old, new)

    async def arename_mailbox(self, account_id: int, old: str, new: str) -> None:
        await self.awrite(self._op_rename_mailbox, account_id, old, new)

    def _op_rename_mailbox(
        self, conn: sqlite3.Connection, batch: _Batch, account_id: int, old: str, new: str
    ) -> None:
        """RFC 9051 §6.3.6. Inferior names move along; renaming INBOX moves its messages into a
        new mailbox and leaves INBOX empty (its UIDNEXT is kept, so UIDs are never reused)."""
        if old.isascii() and old.upper() == INBOX:
            old = INBOX
        if new.isascii() and new.upper() == INBOX:
            raise AlreadyExists("INBOX exists already")
        if conn.execute(
            "SELECT 1 FROM mailboxes WHERE account_id=? AND name=?", (account_id, new)
        ).fetchone():
            raise AlreadyExists(f"mailbox {new} exists already")
        if new.startswith(old + "/"):
            raise StoreError("a mailbox cannot be moved below itself")
        inbox_id, _validity, uidnext, modseq, _su = self._mailbox_row(conn, account_id, old)
        if old == INBOX:
            target = self._create_mailbox(conn, account_id, new, None)
            conn.execute(
                "UPDATE mailboxes SET uidnext=?, highestmodseq=? WHERE id=?",
                (uidnext, modseq, target),
            )
            uids = [
                r[0]
                for r in conn.execute("SELECT uid FROM messages WHERE mailbox_id=?", (inbox_id,))
            ]
            if uids:
                conn.execute(
                    "UPDATE messages SET mailbox_id=? WHERE mailbox_id=?", (target, inbox_id)
                )
                self._log_expunged(conn, batch, account_id, inbox_id, uids)
            batch.changes.append(MailboxesChanged(account_id))
            return
        rows = conn.execute(
            "SELECT id, name FROM mailboxes"
            " WHERE account_id=? AND (name=? OR substr(name, 1, ?)=?)",
            (account_id, old, len(old) + 1, old + "/"),
        ).fetchall()
        for mid, name in rows:
            renamed = new + name[len(old) :]
            if conn.execute(
                "SELECT 1 FROM mailboxes WHERE account_id=? AND name=?", (account_id, renamed)
            ).fetchone():
                raise AlreadyExists(f"mailbox {renamed} exists already")
            conn.execute("UPDATE mailboxes SET name=? WHERE id=?", (renamed, mid))
        batch.changes.append(MailboxesChanged(account_id))

    def _log_expunged(
        self, conn: sqlite3.Connection, batch: _Batch, account_id: int, mailbox_id: int,
        uids: list[int],
    ) -> int:  # fmt: skip
        """Record UIDs that left a mailbox (QRESYNC) under a new MODSEQ and publish it."""
        (modseq,) = conn.execute(
            "SELECT highestmodseq + 1 FROM mailboxes WHERE id=?", (mailbox_id,)
        ).fetchone()
        conn.execute("UPDATE mailboxes SET highestmodseq=? WHERE id=?", (modseq, mailbox_id))
        conn.executemany(
            "INSERT OR REPLACE INTO expunged(mailbox_id, uid, modseq) VALUES (?,?,?)",
            [(mailbox_id, uid, modseq) for uid in uids],
        )
        batch.changes.append(MessagesExpunged(account_id, mailbox_id, tuple(uids), modseq))
        return int(modseq)

    def set_subscribed(self, account_id: int, name: str, subscribed: bool) -> None:
        self._write(self._op_set_subscribed, account_id, name, subscribed)

    async def aset_subscribed(self, account_id: int, name: str, subscribed: bool) -> None:
        await self.awrite(self._op_set_subscribed, account_id, name, subscribed)

    @staticmethod
    def _op_set_subscribed(
        conn: sqlite3.Connection, batch: _Batch, account_id: int, name: str, on: bool
    ) -> None:
        if on:
            conn.execute(
                "INSERT OR IGNORE INTO subscriptions(account_id, name) VALUES (?,?)",
                (account_id, name),
            )
        else:
            conn.execute(
                "DELETE FROM subscriptions WHERE account_id=? AND name=?", (account_id, name)
            )

    def list_subscriptions(self, account_id: int) -> list[str]:
        rows = self._reader().execute(
            "SELECT name FROM subscriptions WHERE account_id=? ORDER BY name", (account_id,)
        )
        return [r[0] for r in rows]

    # ---- IMAP: messages -----------------------------------------------------------------------

    def _allocate(
        self, conn: sqlite3.Connection, mailbox_id: int, count: int
    ) -> tuple[int, int, int]:
        """Reserve ``count`` UIDs and one new MODSEQ; returns (account_id, first uid, modseq)."""
        row = conn.execute(
            "SELECT account_id, uidnext, highestmodseq FROM mailboxes WHERE id=?", (mailbox_id,)
        ).fetchone()
        if row is None:
            raise NotFound(f"no mailbox id {mailbox_id}")
        account_id, first, modseq = row[0], row[1], row[2] + 1
        conn.execute(
            "UPDATE mailboxes SET uidnext=?, highestmodseq=? WHERE id=?",
            (first + count, modseq, mailbox_id),
        )
        return account_id, first, modseq

    def _check_quota(self, conn: sqlite3.Connection, account_id: int, size: int, n: int) -> Account:
        """The account, before adding ``n`` messages of ``size`` bytes; OverQuota if they do not
        fit."""
        row = conn.execute(
            f"SELECT {self._ACCOUNT_COLS} FROM accounts WHERE id=?", (account_id,)
        ).fetchone()
        if row is None:
            raise NotFound(f"no account id {account_id}")
        account = self._account(row)
        over = account.would_exceed(size, n)
        if over:
            raise OverQuota(account.name, over)
        return account

    def append(self, mailbox_id: int, items: Sequence[AppendItem]) -> list[MessageMeta]:
        return self._write(self._op_append, mailbox_id, list(items))

    async def aappend(self, mailbox_id: int, items: Sequence[AppendItem]) -> list[MessageMeta]:
        return await self.awrite(self._op_append, mailbox_id, list(items))

    def _op_append(
        self, conn: sqlite3.Connection, batch: _Batch, mailbox_id: int, items: list[AppendItem]
    ) -> list[MessageMeta]:
        """APPEND / MULTIAPPEND (RFC 3502): all messages or none; quota checked first."""
        try:
            account_id = self._mailbox_account(conn, mailbox_id)
            before = self._check_quota(
                conn, account_id, sum(i.blob.size for i in items), len(items)
            )
        except BaseException:
            for item in items:
                self.discard(item.blob)
            raise
        _acc, uid, modseq = self._allocate(conn, mailbox_id, len(items))
        now = int(time.time())
        out: list[MessageMeta] = []
        for item in items:
            self._ref_blob(conn, batch, item.blob, 1)
            keywords = _clean_keywords(item.keywords)
            meta = self._insert(
                conn, mailbox_id, uid, modseq, item.flags, keywords, item.internal_date, now,
                item.blob.size, item.blob.sha256,
            )  # fmt: skip
            out.append(meta)
            batch.changes.append(
                MessageAdded(account_id, mailbox_id, uid, modseq, item.flags, keywords)
            )
            uid += 1
        added = sum(m.size for m in out)
        conn.execute(
            "UPDATE accounts SET used_bytes=used_bytes+?, used_messages=used_messages+? WHERE id=?",
            (added, len(out), account_id),
        )
        _note_usage(batch, before, added, len(out))
        return out

    @staticmethod
    def _mailbox_account(conn: sqlite3.Connection, mailbox_id: int) -> int:
        row = conn.execute("SELECT account_id FROM mailboxes WHERE id=?", (mailbox_id,)).fetchone()
        if row is None:
            raise NotFound(f"no mailbox id {mailbox_id}")
        return int(row[0])

    @staticmethod
    def _insert(
        conn: sqlite3.Connection, mailbox_id: int, uid: int, modseq: int, flags: Flag,
        keywords: tuple[str, ...], internal_date: int, save_date: int, size: int, blob: str,
    ) -> MessageMeta:  # fmt: skip
        cur = conn.execute(
            "INSERT INTO messages(mailbox_id, uid, modseq, flags, keywords, internal_date,"
            " save_date, size, blob) VALUES (?,?,?,?,?,?,?,?,?)",
            (mailbox_id, uid, modseq, int(flags), " ".join(keywords), internal_date, save_date,
             size, blob),
        )  # fmt: skip
        assert cur.lastrowid is not None
        return MessageMeta(
            cur.lastrowid, mailbox_id, uid, modseq, flags, keywords, internal_date, save_date,
            size, blob,
        )  # fmt: skip

    def copy_messages(self, src: int, uids: Iterable[int], dst: int) -> list[tuple[int, int]]:
        return self._write(self._op_copy, src, sorted(set(uids)), dst, False)

    async def acopy_messages(
        self, src: int, uids: Iterable[int], dst: int
    ) -> list[tuple[int, int]]:
        return await self.awrite(self._op_copy, src, sorted(set(uids)), dst, False)

    def move_messages(self, src: int, uids: Iterable[int], dst: int) -> list[tuple[int, int]]:
        return self._write(self._op_copy, src, sorted(set(uids)), dst, True)

    async def amove_messages(
        self, src: int, uids: Iterable[int], dst: int
    ) -> list[tuple[int, int]]:
        return await self.awrite(self._op_copy, src, sorted(set(uids)), dst, True)

    def _op_copy(
        self, conn: sqlite3.Connection, batch: _Batch, src: int, uids: list[int], dst: int,
        move: bool,
    ) -> list[tuple[int, int]]:  # fmt: skip
        """COPY (RFC 9051 §6.4.7) and MOVE (RFC 6851): flags and internal date travel along.

        A copy counts against the quota (all or nothing); a move within the account does not.
        """
        account_id = self._mailbox_account(conn, src)
        if self._mailbox_account(conn, dst) != account_id:
            raise StoreError("messages can only be copied within one account")
        rows: list[Any] = []
        for uid in uids:
            row = conn.execute(
                "SELECT uid, flags, keywords, internal_date, size, blob FROM messages"
                " WHERE mailbox_id=? AND uid=?",
                (src, uid),
            ).fetchone()
            if row is not None:
                rows.append(row)
        if not rows:
            return []
        total = sum(r[4] for r in rows)
        if not move:
            _note_usage(
                batch, self._check_quota(conn, account_id, total, len(rows)), total, len(rows)
            )
        _acc, new_uid, modseq = self._allocate(conn, dst, len(rows))
        now = int(time.time())
        pairs: list[tuple[int, int]] = []
        for old_uid, flags, kw, idate, size, blob in rows:
            keywords = tuple(kw.split()) if kw else ()
            self._insert(conn, dst, new_uid, modseq, Flag(flags), keywords, idate, now, size, blob)
            conn.execute("UPDATE blobs SET refs=refs+1 WHERE sha256=?", (blob,))
            batch.changes.append(
                MessageAdded(account_id, dst, new_uid, modseq, Flag(flags), keywords)
            )
            pairs.append((old_uid, new_uid))
            new_uid += 1
        conn.execute(
            "UPDATE accounts SET used_bytes=used_bytes+?, used_messages=used_messages+? WHERE id=?",
            (total, len(rows), account_id),
        )
        if move:
            self._op_expunge(conn, batch, src, [p[0] for p in pairs])
        return pairs

    def store_flags(
        self, mailbox_id: int, uids: Iterable[int], mode: str, flags: Flag,
        keywords: Sequence[str] = (), unchangedsince: int | None = None,
    ) -> FlagResult:  # fmt: skip
        return self._write(
            self._op_store_flags, mailbox_id, sorted(set(uids)), mode, flags, tuple(keywords),
            unchangedsince,
        )  # fmt: skip

    async def astore_flags(
        self, mailbox_id: int, uids: Iterable[int], mode: str, flags: Flag,
        keywords: Sequence[str] = (), unchangedsince: int | None = None,
    ) -> FlagResult:  # fmt: skip
        return await self.awrite(
            self._op_store_flags, mailbox_id, sorted(set(uids)), mode, flags, tuple(keywords),
            unchangedsince,
        )  # fmt: skip

    def _op_store_flags(
        self, conn: sqlite3.Connection, batch: _Batch, mailbox_id: int, uids: list[int],
        mode: str, flags: Flag, keywords: tuple[str, ...], unchangedsince: int | None,
    ) -> FlagResult:  # fmt: skip
        """STORE (RFC 9051 §6.4.6) with UNCHANGEDSINCE (RFC 7162 §3.1.3).

        Only messages whose flags really change get the new MODSEQ (one per command).
        """
        if mode not in ("set", "add", "remove"):
            raise StoreError(f"bad flag mode {mode!r}")
        account_id = self._mailbox_account(conn, mailbox_id)
        kw_in = _clean_keywords(keywords)
        changed: list[MessageMeta] = []
        failed: list[int] = []
        modseq: int | None = None
        for uid in uids:
            row = conn.execute(
                f"SELECT {self._MESSAGE_COLS} FROM messages WHERE mailbox_id=? AND uid=?",
                (mailbox_id, uid),
            ).fetchone()
            if row is None:
                continue
            meta = self._message(row)
            if unchangedsince is not None and meta.modseq > unchangedsince:
                failed.append(uid)
                continue
            if mode == "set":
                new_flags, new_kw = flags, kw_in
            elif mode == "add":
                new_flags = meta.flags | flags
                new_kw = _clean_keywords(meta.keywords + kw_in)
            else:
                new_flags = meta.flags & ~flags
                drop = {k.lower() for k in kw_in}
                new_kw = tuple(k for k in meta.keywords if k.lower() not in drop)
            if new_flags == meta.flags and {k.lower() for k in new_kw} == {
                k.lower() for k in meta.keywords
            }:
                continue
            if modseq is None:
                (modseq,) = conn.execute(
                    "SELECT highestmodseq + 1 FROM mailboxes WHERE id=?", (mailbox_id,)
                ).fetchone()
                conn.execute(
                    "UPDATE mailboxes SET highestmodseq=? WHERE id=?", (modseq, mailbox_id)
                )
            assert modseq is not None
            conn.execute(
                "UPDATE messages SET flags=?, keywords=?, modseq=? WHERE id=?",
                (int(new_flags), " ".join(new_kw), modseq, meta.id),
            )
            new = MessageMeta(
                meta.id, mailbox_id, uid, modseq, new_flags, new_kw, meta.internal_date,
                meta.save_date, meta.size, meta.blob,
            )  # fmt: skip
            changed.append(new)
            batch.changes.append(
                FlagsChanged(account_id, mailbox_id, uid, modseq, new_flags, new_kw)
            )
        return FlagResult(changed, failed)

    def changes_since(self, mailbox_id: int, modseq: int) -> tuple[list[MessageMeta], list[int]]:
        """CONDSTORE/QRESYNC: messages changed after ``modseq`` and UIDs expunged after it."""
        conn = self._reader()
        changed = [
            self._message(r)
            for r in conn.execute(
                f"SELECT {self._MESSAGE_COLS} FROM messages WHERE mailbox_id=? AND modseq>?"
                " ORDER BY uid",
                (mailbox_id, modseq),
            )
        ]
        vanished = [
            r[0]
            for r in conn.execute(
                "SELECT uid FROM expunged WHERE mailbox_id=? AND modseq>? ORDER BY uid",
                (mailbox_id, modseq),
            )
        ]
        return changed, vanished

    # ---- full-text index ----------------------------------------------------------------------

    INDEX_BATCH: Final = 25
    #: ... while messages keep arriving: each write op of the indexer holds the data directory's
    #: writer lock for its FTS inserts (about 6 ms of CPU per 20 KB message), and every delivery
    #: of every worker waits behind it
    INDEX_BATCH_BUSY: Final = 3
    #: rows of expunged messages the indexer may take off its queue in one look, besides the
    #: messages it indexes: they cost no work, and where mail is fetched and deleted while more
    #: keeps arriving (POP3), they would otherwise pile up behind the busy trickle
    INDEX_GONE_WINDOW: Final = 500
    #: mail counts as arriving while the last message (of any process) is younger than this
    INDEX_QUIET: Final = 0.2
    #: while mail keeps arriving the indexer waits for a quiet moment, but indexes one
    #: `INDEX_BATCH_BUSY` batch at least this often (seconds), so that it never stops
    INDEX_BUSY_EVERY: Final = 2.0
    # Mailboxes up to this many messages are searched by reading their own messages' indexed
    # text (cost: their own size only); larger ones ask the trigram index (see search_text_uids).
    SEARCH_SCAN_MAX: Final = 500

    def _indexer_loop(self) -> None:
        """Index new blobs in batches when mail is quiet, up to a third of one core; while
        messages keep arriving, only a small batch every `INDEX_BUSY_EVERY` seconds (the index
        is an optimisation; delivery is not: a search decodes what is not indexed yet).

        Measured (docs/benchmarks.md, session 5): with no indexing during a burst, deliveries
        were faster than with the former tenth of a core in 6 of 7 runs taken in turn (median
        793 against 688/s); this loop's 2-second floor batches gave a lower p99 in every run
        (31-40 against 42-56 ms), the rate within the spread."""
        last_busy_batch = time.monotonic()
        while not self._stopping:
            self._index_wakeup.wait(timeout=5)
            self._index_wakeup.clear()
            while not self._stopping:
                now = time.monotonic()
                quiet_in = self._last_added + self.INDEX_QUIET - now
                busy = quiet_in > 0
                if busy:
                    floor_in = last_busy_batch + self.INDEX_BUSY_EVERY - now
                    if floor_in > 0:
                        # close() ends the wait at once
                        self._index_stop.wait(min(quiet_in, floor_in))
                        continue
                    last_busy_batch = now
                started = time.monotonic()
                try:
                    done = self.index_pending(self.INDEX_BATCH_BUSY if busy else self.INDEX_BATCH)
                except Exception:
                    log.exception("event=index_failed")
                    break
                if done == 0:
                    break
                if not busy:
                    # Leave the CPU (and the writer) to sessions most of the time.
                    self._index_stop.wait(2 * (time.monotonic() - started))

    def index_pending(self, limit: int) -> int:
        """Index up to ``limit`` blobs of the to-do list (``fts_queue``, oldest first), and take
        off it the rows of freed blobs among its first ``limit`` + `INDEX_GONE_WINDOW` rows;
        returns how many rows were handled (indexed, skipped, freed, or indexed already).

        A blob whose file cannot be read, or whose text extraction or index insert fails, is
        recorded in ``fts_skipped`` and logged once: it is never retried, and searches decode it
        on the spot like a blob not indexed yet. Stops between blobs when the store is closing."""
        if not self._has_pending:
            return 0
        rows = (
            self._reader()
            .execute(
                "SELECT p.seq, p.sha256, b.sha256 IS NULL, b.structure FROM fts_queue p"
                " LEFT JOIN blobs b ON b.sha256 = p.sha256 ORDER BY p.seq LIMIT ?",
                (limit + self.INDEX_GONE_WINDOW,),
            )
            .fetchall()
        )
        docs: list[tuple[int, str, str, str]] = []
        failed: list[tuple[int, str, str]] = []
        gone: list[int] = []
        live = 0
        for seq, sha, freed, structure in rows:
            if self._stopping:
                return 0  # closing: what was extracted is dropped, the next start redoes it
            if freed:
                gone.append(seq)
                continue
            if live == limit:
                continue  # waits for the next look; freed ones after it still go now
            live += 1
            try:
                data = self.read_blob(sha)
            except NotFound:
                gone.append(seq)  # freed
                continue
            except OSError as exc:
                # Its file is missing or unreadable (`postfach check` reports that): skipped
                # like text that cannot be extracted, not retried at every look, and never in
                # the way of the messages listed after it.
                log.warning("event=index_skipped blob=%s error=%r", sha[:16], exc)
                failed.append((seq, sha, repr(exc)[:500]))
                continue
            try:
                headers, body = self._text_of(data, structure)
            except Exception as exc:
                log.warning("event=index_skipped blob=%s error=%r", sha[:16], exc)
                failed.append((seq, sha, repr(exc)[:500]))
                continue
            docs.append((seq, sha, headers.casefold(), body.casefold()))
        if docs or failed or gone:
            self.submit(self._op_index, docs, failed, gone, background=True).result()
        return len(docs) + len(failed) + len(gone)

    @staticmethod
    def _text_of(data: bytes, structure: str | None) -> tuple[str, str]:
        part = load_parsed(structure).part if structure else parse(data)
        return search_text(data, part)

    @staticmethod
    def _op_index(
        conn: sqlite3.Connection,
        batch: _Batch,
        docs: list[tuple[int, str, str, str]],
        failed: list[tuple[int, str, str]],
        gone: Sequence[int] = (),
    ) -> None:
        """Index ``docs`` (queue row, blob, text), remember ``failed`` as skipped, and take
        their rows and ``gone`` (rows of blobs freed since) off the queue. A blob freed in the
        meantime is not indexed; one stored again since has a row of its own."""
        handled = [*gone, *(f[0] for f in failed), *(d[0] for d in docs)]
        conn.executemany("DELETE FROM fts_queue WHERE seq=?", [(seq,) for seq in handled])
        skipped = [(sha, error) for _seq, sha, error in failed]
        for _seq, sha, headers, body in docs:
            if not conn.execute("SELECT 1 FROM blobs WHERE sha256=?", (sha,)).fetchone():
                continue
            if conn.execute("SELECT 1 FROM fts_docs WHERE sha256=?", (sha,)).fetchone():
                continue
            conn.execute("SAVEPOINT doc")
            try:
                cur = conn.execute("INSERT INTO fts(headers, body) VALUES (?, ?)", (headers, body))
                conn.execute(
                    "INSERT INTO fts_docs(sha256, docid) VALUES (?, ?)", (sha, cur.lastrowid)
                )
            except (sqlite3.Error, ValueError) as exc:
                if not conn.in_transaction:
                    raise  # the whole transaction is gone (disk full): the op fails
                conn.execute("ROLLBACK TO doc")
                log.warning("event=index_skipped blob=%s error=%r", sha[:16], exc)
                skipped.append((sha, repr(exc)[:500]))
            conn.execute("RELEASE doc")
        for sha, error in skipped:
            if conn.execute("SELECT 1 FROM blobs WHERE sha256=?", (sha,)).fetchone():
                conn.execute(
                    "INSERT OR REPLACE INTO fts_skipped(sha256, error) VALUES (?, ?)", (sha, error)
                )

    def search_text_uids(self, mailbox_id: int, key: str, needle: str) -> set[int] | None:
        """UIDs whose text contains ``needle`` (case-insensitive substring, RFC 9051 §6.4.4).

        ``key`` is "TEXT" (headers and body) or "BODY" (body only). Text and needle are compared
        after Unicode case folding (``str.casefold``, as `postfach.imap.search` scans): the index
        holds casefolded text, so "STRASSE" finds "Straße" either way.

        The index is shared by all accounts (one document per blob), so how long a query over
        it takes depends on how many documents anywhere contain the needle. To keep that from
        telling an account whether others hold a phrase, a mailbox of up to
        ``SEARCH_SCAN_MAX`` messages never asks the index: its own messages' indexed text is
        read by rowid and searched here (the cost depends only on its own mail). Larger
        mailboxes ask the index for the phrase and keep their own documents. Messages not
        indexed yet (or whose indexing failed) are decoded on the spot, so the answer is always
        complete. None when this cannot answer: a large mailbox and a needle under three
        characters (trigrams cannot match it), which the caller then scans.
        """
        conn = self._reader()
        folded = needle.casefold()
        body_only = key.upper() == "BODY"
        (count,) = conn.execute(
            "SELECT count(*) FROM (SELECT 1 FROM messages WHERE mailbox_id=? LIMIT ?)",
            (mailbox_id, self.SEARCH_SCAN_MAX + 1),
        ).fetchone()
        uids: set[int] = set()
        pending: list[tuple[int, str]] = []
        if count <= self.SEARCH_SCAN_MAX:
            for uid, sha, headers, body in conn.execute(
                "SELECT m.uid, m.blob, f.headers, f.body FROM messages m"
                " LEFT JOIN fts_docs d ON d.sha256=m.blob LEFT JOIN fts f ON f.rowid=d.docid"
                " WHERE m.mailbox_id=?",
                (mailbox_id,),
            ):
                if headers is None:
                    pending.append((uid, sha))
                elif folded in body or (not body_only and folded in headers):
                    uids.add(uid)
        else:
            if len(folded) < 3 or "\ufffe" in folded or "\uffff" in folded:
                return None  # trigrams cannot answer (the tokenizer drops U+FFFE/U+FFFF)
            phrase = '"' + folded.replace('"', '""') + '"'
            query = "body : " + phrase if body_only else phrase
            hits = [r[0] for r in conn.execute("SELECT rowid FROM fts WHERE fts MATCH ?", (query,))]
            if len(hits) <= 2000:
                # Few hits (the usual case): look each one's messages up by blob.
                for docid in hits:
                    uids.update(
                        r[0]
                        for r in conn.execute(
                            "SELECT m.uid FROM fts_docs d JOIN messages m ON m.blob=d.sha256"
                            " WHERE d.docid=? AND m.mailbox_id=?",
                            (docid, mailbox_id),
                        )
                    )
            else:
                # Many hits: one pass over the mailbox is cheaper than thousands of lookups.
                wanted = set(hits)
                uids.update(
                    uid
                    for uid, docid in conn.execute(
                        "SELECT m.uid, d.docid FROM messages m JOIN fts_docs d"
                        " ON d.sha256=m.blob WHERE m.mailbox_id=?",
                        (mailbox_id,),
                    )
                    if docid in wanted
                )
            (blobs,) = conn.execute("SELECT count(*) FROM blobs").fetchone()
            (indexed,) = conn.execute("SELECT count(*) FROM fts_docs").fetchone()
            if blobs != indexed:  # some blob is not indexed (yet, or could not be): find ours
                pending.extend(
                    conn.execute(
                        "SELECT m.uid, m.blob FROM messages m WHERE m.mailbox_id=? AND NOT EXISTS"
                        " (SELECT 1 FROM fts_docs d WHERE d.sha256=m.blob)",
                        (mailbox_id,),
                    )
                )
        for uid, sha in pending:
            try:
                headers, body = self._text_of(self.read_blob(sha), self.blob_structure(sha))
            except NotFound:
                continue  # expunged meanwhile
            except Exception as exc:
                # As the indexer found (fts_skipped): its text cannot be extracted, so no
                # text search can match it.
                log.debug("event=search_text_failed blob=%s error=%r", sha[:16], exc)
                continue
            if folded in body.casefold() or (not body_only and folded in headers.casefold()):
                uids.add(uid)
        return uids

    # ---- consistency --------------------------------------------------------------------------

    def sweep_leftovers(self) -> tuple[int, int]:
        """Remove what a killed process left behind: staged temp files of processes that no
        longer run, and blob files no row references (renamed into place by an op whose
        transaction never committed, or freed by a commit whose unlink never ran). Run by the
        server at start; returns (temp files, blob files) removed."""
        return self._write(self._op_sweep)

    def _op_sweep(self, conn: sqlite3.Connection, batch: _Batch) -> tuple[int, int]:
        # Under the write lock: no op of any process is between its rename and its COMMIT.
        temps = 0
        for path in self.tmp_dir.iterdir():
            parts = path.name.split(".")
            pid = int(parts[1]) if len(parts) > 2 and parts[1].isdigit() else None
            if pid is not None and _process_exists(pid):
                continue  # being staged by a live process (this one, or an import)
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
                temps += 1
        known = {r[0] for r in conn.execute("SELECT sha256 FROM blobs WHERE data IS NULL")}
        orphans = 0
        for path in self.blob_dir.glob("??/??/*"):
            if path.name not in known:
                # Now, under the lock, not after COMMIT: once the lock is released another
                # process may store this very content and reuse the file.
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
                    orphans += 1
        return temps, orphans

    def check(self, repair: bool = False) -> CheckReport:
        """Recompute quota usage and blob reference counts from the messages; report drift."""
        return self._write(self._op_check, repair)

    def _op_check(self, conn: sqlite3.Connection, batch: _Batch, repair: bool) -> CheckReport:
        quota: list[str] = []
        blobs: list[str] = []
        rows = conn.execute(
            "SELECT a.id, a.name, a.used_bytes, a.used_messages,"
            " coalesce(sum(m.size), 0), count(m.id)"
            " FROM accounts a LEFT JOIN mailboxes b ON b.account_id=a.id"
            " LEFT JOIN messages m ON m.mailbox_id=b.id GROUP BY a.id"
        ).fetchall()
        for aid, name, ub, um, real_b, real_m in rows:
            if (ub, um) != (real_b, real_m):
                quota.append(f"{name}: recorded {ub} bytes/{um} messages, stored {real_b}/{real_m}")
                if repair:
                    batch.accounts_changed = True
                    conn.execute(
                        "UPDATE accounts SET used_bytes=?, used_messages=? WHERE id=?",
                        (real_b, real_m, aid),
                    )
        rows = conn.execute(
            "SELECT b.sha256, b.refs, b.data IS NULL, (SELECT count(*) FROM messages m"
            " WHERE m.blob=b.sha256) FROM blobs b"
        ).fetchall()
        for sha, refs, is_file, real in rows:
            if refs != real:
                blobs.append(f"blob {sha[:16]}: {refs} references recorded, {real} real")
                if repair:
                    if real == 0:
                        conn.execute("DELETE FROM blobs WHERE sha256=?", (sha,))
                        if is_file:
                            batch.unlink.add(self.blob_path(sha))
                    else:
                        conn.execute("UPDATE blobs SET refs=? WHERE sha256=?", (real, sha))
            if is_file and not self.blob_path(sha).exists():
                blobs.append(f"blob {sha[:16]}: file missing")
        missing = conn.execute(
            "SELECT DISTINCT blob FROM messages WHERE blob NOT IN (SELECT sha256 FROM blobs)"
        ).fetchall()
        blobs.extend(f"blob {sha[:16]}: referenced but not stored" for (sha,) in missing)
        known = {r[0] for r in conn.execute("SELECT sha256 FROM blobs WHERE data IS NULL")}
        for path in self.blob_dir.glob("??/??/*"):
            if path.name not in known:
                blobs.append(f"blob file {path.name[:16]}: not referenced")
                if repair:
                    batch.unlink.add(path)
        return CheckReport(quota, blobs, repaired=repair and bool(quota or blobs))

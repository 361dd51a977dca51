"""The outbound queue's persistence: ``queue.db`` beside the mail store (services ring).

A database of its own (WAL, ``synchronous=FULL``, numbered migrations counted by
``PRAGMA user_version``) so that the queue's schema moves independently of the mail store's.
One row per message holds the bytes (a BLOB: queued mail is short-lived) and the envelope; one
row per recipient holds its retry state. A recipient row is deleted once it is delivered or
bounced, and the message row with its last recipient, in the same transaction.

Concurrency: every method is a short transaction and may be called from any thread; the
asyncio side calls them through ``asyncio.to_thread`` (``a*`` methods). Reads use a connection
of their own (WAL readers do not wait for the writer's fsync). Writes are **group-committed**:
a writer that finds others queued behind the write lock runs their operations too, each in its
own SAVEPOINT, in one transaction with one fsync, so concurrent submissions share the cost. A
write returns only after the COMMIT that holds it.

Durability per write: `enqueue`, `retry`, `delete` and sent copies are committed with
``synchronous=FULL`` (an SMTP ``250`` after `enqueue` is never sent for mail a crash or power
loss could lose). The runner's bookkeeping (`begin_attempt`, `record_reply`, `finish`, ...) is
committed with ``synchronous=NORMAL``: in WAL mode that survives a killed process (the commit is
in the WAL file) and only an operating-system crash can roll it back, which makes a recipient
due early again or a delivered one be delivered twice, never lost (SMTP's own duplicate window,
RFC 5321 §6.1). The next FULL commit makes it durable as well.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, TypeVar

from postfach.errors import StoreError
from postfach.sqlitewal import connect_wal
from postfach.store.locks import held

T = TypeVar("T")

QUEUE_DB: Final = "queue.db"

MIGRATIONS: Final[tuple[str, ...]] = (
    """
    CREATE TABLE messages (
        id INTEGER PRIMARY KEY,
        sender TEXT NOT NULL,              -- '' is the null sender (a DSN of ours)
        envid TEXT,                        -- RFC 3461 ENVID, decoded
        ret TEXT,                          -- RFC 3461 RET: FULL | HDRS | NULL
        account TEXT,                      -- who submitted it (NULL: the system)
        queued REAL NOT NULL,              -- unix seconds
        size INTEGER NOT NULL,
        data BLOB NOT NULL
    );
    CREATE TABLE recipients (
        id INTEGER PRIMARY KEY,
        message_id INTEGER NOT NULL REFERENCES messages(id),
        address TEXT NOT NULL,
        domain TEXT NOT NULL,
        notify TEXT,                       -- RFC 3461 NOTIFY as given, NULL when absent
        orcpt TEXT,                        -- RFC 3461 ORCPT, "rfc822;addr"
        attempts INTEGER NOT NULL DEFAULT 0,
        next_attempt REAL NOT NULL,
        last_attempt REAL,
        last_reply TEXT,
        delay_notified INTEGER NOT NULL DEFAULT 0
    );
    CREATE INDEX recipients_due ON recipients(next_attempt);
    CREATE INDEX recipients_message ON recipients(message_id);
    CREATE TABLE sent_copies (
        id INTEGER PRIMARY KEY,
        account TEXT NOT NULL,
        message_id TEXT NOT NULL,          -- the Message-ID header, for de-duplication
        due REAL NOT NULL,
        data BLOB NOT NULL
    );
    """,
)


@dataclass(frozen=True, slots=True)
class NewRecipient:
    address: str
    notify: str | None = None
    orcpt: str | None = None

    @property
    def domain(self) -> str:
        return self.address.rpartition("@")[2].lower().rstrip(".")


@dataclass(frozen=True, slots=True)
class QueuedRecipient:
    id: int
    message_id: int
    address: str
    domain: str
    notify: str | None
    orcpt: str | None
    attempts: int
    next_attempt: float
    last_attempt: float | None
    last_reply: str | None
    delay_notified: bool


@dataclass(frozen=True, slots=True)
class QueuedMessage:
    id: int
    sender: str
    envid: str | None
    ret: str | None
    account: str | None
    queued: float
    size: int
    recipients: tuple[QueuedRecipient, ...] = ()


@dataclass(frozen=True, slots=True)
class SentCopy:
    id: int
    account: str
    message_id: str
    due: float
    data: bytes


_RCPT_COLS: Final = (
    "id, message_id, address, domain, notify, orcpt, attempts, next_attempt, last_attempt,"
    " last_reply, delay_notified"
)
_MSG_COLS: Final = "id, sender, envid, ret, account, queued, size"


def _rcpt(r: Sequence[Any]) -> QueuedRecipient:
    return QueuedRecipient(r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7], r[8], r[9], bool(r[10]))


def _msg(r: Sequence[Any], rcpts: Sequence[QueuedRecipient]) -> QueuedMessage:
    return QueuedMessage(r[0], r[1], r[2], r[3], r[4], r[5], r[6], tuple(rcpts))


@dataclass(slots=True)
class _Write:
    fn: Callable[[sqlite3.Connection], Any]
    durable: bool
    done: bool = False
    result: Any = None
    error: BaseException | None = None


def _connect(path: Path) -> sqlite3.Connection:
    conn = connect_wal(path, timeout=10)
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("PRAGMA foreign_keys=ON")
    return conn


class QueueStore:
    def __init__(self, directory: Path) -> None:
        self.path = Path(directory) / QUEUE_DB
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._lock = threading.Lock()  # the write connection
        self._pending_lock = threading.Lock()
        self._pending: list[_Write] = []
        self._conn = _connect(self.path)
        self._migrate()
        self._read_lock = threading.Lock()
        self._read_conn = _connect(self.path)

    def _migrate(self) -> None:
        conn = self._conn
        (version,) = conn.execute("PRAGMA user_version").fetchone()
        if version < len(MIGRATIONS):
            # One process at a time, the version read again once it is our turn (see
            # `postfach.store.sqlite.SqliteMailstore._migrate`).
            with held(self.path.parent / "locks" / "migrate"):
                (version,) = conn.execute("PRAGMA user_version").fetchone()
                self._migrate_from(version)
        if version > len(MIGRATIONS):
            raise StoreError(
                f"queue database schema version {version} is newer than this postfach "
                f"(knows {len(MIGRATIONS)}); upgrade postfach"
            )

    def _migrate_from(self, version: int) -> None:
        conn = self._conn
        for i in range(version, len(MIGRATIONS)):
            try:
                conn.executescript(
                    f"BEGIN IMMEDIATE; {MIGRATIONS[i]}; PRAGMA user_version = {i + 1}; COMMIT;"
                )
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise

    def close(self) -> None:
        with self._lock, self._read_lock:
            self._read_conn.close()
            self._conn.close()

    def _txn(self, fn: Callable[[sqlite3.Connection], T], durable: bool = True) -> T:
        """Run ``fn`` in a write transaction, committed (with others queued meanwhile) before
        this returns; ``durable=False``: without the fsync (see the module text)."""
        item = _Write(fn, durable)
        with self._pending_lock:
            self._pending.append(item)
        with self._lock:
            if not item.done:  # nobody ran it while we waited for the lock: lead a group
                with self._pending_lock:
                    batch, self._pending = self._pending, []
                self._commit_group(batch)
        if item.error is not None:
            raise item.error
        result: T = item.result
        return result

    def _commit_group(self, batch: list[_Write]) -> None:
        conn = self._conn
        try:
            sync = "FULL" if any(w.durable for w in batch) else "NORMAL"
            conn.execute(f"PRAGMA synchronous={sync}")
            conn.execute("BEGIN IMMEDIATE")
            for w in batch:
                conn.execute("SAVEPOINT op")
                try:
                    w.result = w.fn(conn)
                except Exception as exc:  # this operation alone is undone
                    conn.execute("ROLLBACK TO op")
                    w.error = exc
                conn.execute("RELEASE op")
            conn.execute("COMMIT")
        except BaseException as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            for w in batch:
                w.error = w.error or exc
            if not isinstance(exc, Exception):
                raise
        finally:
            for w in batch:
                w.done = True

    def _read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """A read transaction on the read connection: one snapshot, never behind an fsync."""
        with self._read_lock:
            conn = self._read_conn
            conn.execute("BEGIN")
            try:
                return fn(conn)
            finally:
                conn.execute("COMMIT")

    # ---- messages -----------------------------------------------------------------------------

    def enqueue(
        self,
        sender: str,
        recipients: Sequence[NewRecipient],
        data: bytes,
        now: float,
        *,
        envid: str | None = None,
        ret: str | None = None,
        account: str | None = None,
    ) -> int:
        """Store a message for remote recipients, due at once. Durable when this returns."""
        if not recipients:
            raise ValueError("a queued message needs at least one recipient")

        def op(conn: sqlite3.Connection) -> int:
            cur = conn.execute(
                "INSERT INTO messages(sender, envid, ret, account, queued, size, data)"
                " VALUES (?,?,?,?,?,?,?)",
                (sender, envid, ret, account, now, len(data), data),
            )
            assert cur.lastrowid is not None
            conn.executemany(
                "INSERT INTO recipients(message_id, address, domain, notify, orcpt,"
                " next_attempt) VALUES (?,?,?,?,?,?)",
                [(cur.lastrowid, r.address, r.domain, r.notify, r.orcpt, now) for r in recipients],
            )
            return cur.lastrowid

        return self._txn(op)

    async def aenqueue(
        self,
        sender: str,
        recipients: Sequence[NewRecipient],
        data: bytes,
        now: float,
        *,
        envid: str | None = None,
        ret: str | None = None,
        account: str | None = None,
    ) -> int:
        return await asyncio.to_thread(
            lambda: self.enqueue(
                sender, recipients, data, now, envid=envid, ret=ret, account=account
            )
        )

    def message(self, message_id: int) -> QueuedMessage | None:
        def op(conn: sqlite3.Connection) -> QueuedMessage | None:
            row = conn.execute(
                f"SELECT {_MSG_COLS} FROM messages WHERE id=?", (message_id,)
            ).fetchone()
            if row is None:
                return None
            rcpts = conn.execute(
                f"SELECT {_RCPT_COLS} FROM recipients WHERE message_id=? ORDER BY id",
                (message_id,),
            ).fetchall()
            return _msg(row, [_rcpt(r) for r in rcpts])

        return self._read(op)

    def message_data(self, message_id: int) -> bytes | None:
        row = self._read(
            lambda c: c.execute("SELECT data FROM messages WHERE id=?", (message_id,)).fetchone()
        )
        return None if row is None else bytes(row[0])

    def messages(self) -> list[QueuedMessage]:
        """Every queued message with its recipients, oldest first."""

        def op(conn: sqlite3.Connection) -> list[QueuedMessage]:
            rows = conn.execute(f"SELECT {_MSG_COLS} FROM messages ORDER BY id").fetchall()
            rcpts: dict[int, list[QueuedRecipient]] = {}
            for r in conn.execute(f"SELECT {_RCPT_COLS} FROM recipients ORDER BY id"):
                rcpts.setdefault(r[1], []).append(_rcpt(r))
            return [_msg(row, rcpts.get(row[0], [])) for row in rows]

        return self._read(op)

    def delete(self, message_id: int) -> bool:
        def op(conn: sqlite3.Connection) -> bool:
            conn.execute("DELETE FROM recipients WHERE message_id=?", (message_id,))
            return conn.execute("DELETE FROM messages WHERE id=?", (message_id,)).rowcount > 0

        return self._txn(op)

    def retry(self, message_id: int | None, now: float) -> int:
        """Make recipients due now (one message, or all with None); how many were touched."""

        def op(conn: sqlite3.Connection) -> int:
            if message_id is None:
                return conn.execute("UPDATE recipients SET next_attempt=?", (now,)).rowcount
            return conn.execute(
                "UPDATE recipients SET next_attempt=? WHERE message_id=?", (now, message_id)
            ).rowcount

        return self._txn(op)

    # ---- the runner's side --------------------------------------------------------------------

    def due(self, now: float, limit: int = 1000) -> list[QueuedRecipient]:
        rows = self._read(
            lambda c: c.execute(
                f"SELECT {_RCPT_COLS} FROM recipients WHERE next_attempt<=?"
                " ORDER BY next_attempt, id LIMIT ?",
                (now, limit),
            ).fetchall()
        )
        return [_rcpt(r) for r in rows]

    def next_due(self, after: float | None = None) -> float | None:
        """The earliest next attempt (of those later than ``after``, when given)."""
        row = self._read(
            lambda c: c.execute(
                "SELECT min(next_attempt) FROM recipients WHERE next_attempt>?",
                (float("-inf") if after is None else after,),
            ).fetchone()
        )
        return None if row is None or row[0] is None else float(row[0])

    def begin_attempt(self, attempts: Sequence[tuple[int, float]], now: float) -> None:
        """Before dialling: count the attempt and set when to try again if it fails or dies.

        ``attempts`` holds ``(recipient id, next attempt)`` pairs.
        """
        self._txn(
            lambda c: c.executemany(
                "UPDATE recipients SET attempts=attempts+1, last_attempt=?, next_attempt=?"
                " WHERE id=?",
                [(now, nxt, rid) for rid, nxt in attempts],
            ),
            durable=False,
        )

    def record_reply(self, recipient_id: int, reply: str) -> None:
        self._txn(
            lambda c: c.execute(
                "UPDATE recipients SET last_reply=? WHERE id=?", (reply[:1000], recipient_id)
            ),
            durable=False,
        )

    def set_delay_notified(self, recipient_ids: Sequence[int]) -> None:
        self._txn(
            lambda c: c.executemany(
                "UPDATE recipients SET delay_notified=1 WHERE id=?", [(i,) for i in recipient_ids]
            ),
            durable=False,
        )

    def finish(self, recipient_ids: Sequence[int]) -> None:
        """Remove delivered or bounced recipients, and messages left with none."""

        def op(conn: sqlite3.Connection) -> None:
            ids = [(i,) for i in recipient_ids]
            msgs = {
                r[0]
                for i in recipient_ids
                if (r := conn.execute(
                    "SELECT message_id FROM recipients WHERE id=?", (i,)
                ).fetchone())
            }  # fmt: skip
            conn.executemany("DELETE FROM recipients WHERE id=?", ids)
            for m in msgs:
                left = conn.execute(
                    "SELECT 1 FROM recipients WHERE message_id=? LIMIT 1", (m,)
                ).fetchone()
                if left is None:
                    conn.execute("DELETE FROM messages WHERE id=?", (m,))

        self._txn(op, durable=False)

    # ---- sent copies (DESIGN: placed after a window unless the client APPENDed its own) -------

    def add_sent_copy(self, account: str, message_id: str, due: float, data: bytes) -> int:
        def op(conn: sqlite3.Connection) -> int:
            cur = conn.execute(
                "INSERT INTO sent_copies(account, message_id, due, data) VALUES (?,?,?,?)",
                (account, message_id, due, data),
            )
            assert cur.lastrowid is not None
            return cur.lastrowid

        return self._txn(op)

    def due_sent_copies(self, now: float, limit: int = 100) -> list[SentCopy]:
        rows = self._read(
            lambda c: c.execute(
                "SELECT id, account, message_id, due, data FROM sent_copies WHERE due<=?"
                " ORDER BY due LIMIT ?",
                (now, limit),
            ).fetchall()
        )
        return [SentCopy(r[0], r[1], r[2], r[3], bytes(r[4])) for r in rows]

    def next_sent_copy(self) -> float | None:
        row = self._read(lambda c: c.execute("SELECT min(due) FROM sent_copies").fetchone())
        return None if row is None or row[0] is None else float(row[0])

    def remove_sent_copy(self, copy_id: int) -> None:
        self._txn(lambda c: c.execute("DELETE FROM sent_copies WHERE id=?", (copy_id,)), False)

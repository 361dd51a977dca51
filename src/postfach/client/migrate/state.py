"""What ``postfach migrate`` has copied: ``migrate.db`` in the data directory (services ring).

One row per remote message copied (or found already there): source account, remote folder,
UIDVALIDITY, UID, the dedup key and the local folder it went to. A row is written only after the
store committed the message, so a run that is killed loses at most the rows of its last batch;
the next run finds those messages by Message-ID and size (`plan.plan_messages`) and does not copy
them again. When a remote folder's UIDVALIDITY changes, its old rows are dropped in the same
transaction that records the new value, and the messages are matched by key once more.
"""

from __future__ import annotations

import sqlite3
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Final

from postfach.sqlitewal import connect_wal

__all__ = ["MigrateState", "MigrateStateError"]

SCHEMA_VERSION: Final = 1
_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS folders(
    source TEXT NOT NULL,
    account TEXT NOT NULL,
    remote TEXT NOT NULL,
    uidvalidity INTEGER NOT NULL,
    local TEXT NOT NULL,
    PRIMARY KEY(source, account, remote)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS messages(
    source TEXT NOT NULL,
    account TEXT NOT NULL,
    remote TEXT NOT NULL,
    uidvalidity INTEGER NOT NULL,
    uid INTEGER NOT NULL,
    key TEXT NOT NULL,
    local TEXT NOT NULL,
    how TEXT NOT NULL,
    PRIMARY KEY(source, account, remote, uidvalidity, uid)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS messages_local ON messages(account, local);
"""


class MigrateStateError(Exception):
    """The state file cannot be used."""


class MigrateState:
    def __init__(self, path: Path, source: str, account: str) -> None:
        self.path = path
        self.source = source
        self.account = account
        try:
            self.db = connect_wal(path, timeout=5, check_same_thread=True)
            self.db.execute("PRAGMA synchronous=FULL")
            version = self.db.execute("PRAGMA user_version").fetchone()[0]
            if version == 0:
                # One script, one transaction (the caller holds the migrate lock).
                self.db.executescript(
                    f"BEGIN IMMEDIATE; {_SCHEMA} PRAGMA user_version={SCHEMA_VERSION}; COMMIT;"
                )
            elif version > SCHEMA_VERSION:
                raise MigrateStateError(f"{path} was written by a newer postfach")
        except sqlite3.Error as exc:
            raise MigrateStateError(f"cannot use {path}: {exc}") from None

    def close(self) -> None:
        self.db.close()

    def uidvalidity(self, remote: str) -> int | None:
        row = self.db.execute(
            "SELECT uidvalidity FROM folders WHERE source=? AND account=? AND remote=?",
            (self.source, self.account, remote),
        ).fetchone()
        return None if row is None else int(row[0])

    def set_folder(self, remote: str, uidvalidity: int, local: str) -> bool:
        """Record the folder's UIDVALIDITY; True if it changed (its old rows are dropped)."""
        old = self.uidvalidity(remote)
        with self._txn():
            if old is not None and old != uidvalidity:
                self.db.execute(
                    "DELETE FROM messages WHERE source=? AND account=? AND remote=?",
                    (self.source, self.account, remote),
                )
            self.db.execute(
                "INSERT OR REPLACE INTO folders(source, account, remote, uidvalidity, local)"
                " VALUES (?,?,?,?,?)",
                (self.source, self.account, remote, uidvalidity, local),
            )
        return old is not None and old != uidvalidity

    def done_uids(self, remote: str, uidvalidity: int) -> set[int]:
        rows = self.db.execute(
            "SELECT uid FROM messages WHERE source=? AND account=? AND remote=? AND uidvalidity=?",
            (self.source, self.account, remote, uidvalidity),
        )
        return {int(r[0]) for r in rows}

    def claimed_keys(self, local: str) -> Counter[str]:
        """Keys of every row (any source) that put a message into this local folder."""
        rows = self.db.execute(
            "SELECT key FROM messages WHERE account=? AND local=? AND key<>''",
            (self.account, local),
        )
        return Counter(r[0] for r in rows)

    def record(
        self, remote: str, uidvalidity: int, local: str, rows: Iterable[tuple[int, str]], how: str
    ) -> None:
        """``rows``: (uid, key) of messages now in ``local`` (``how``: copied or duplicate)."""
        with self._txn():
            self.db.executemany(
                "INSERT OR REPLACE INTO messages(source, account, remote, uidvalidity, uid, key,"
                " local, how) VALUES (?,?,?,?,?,?,?,?)",
                [(self.source, self.account, remote, uidvalidity, uid, key, local, how)
                 for uid, key in rows],
            )  # fmt: skip

    def _txn(self) -> _Txn:
        return _Txn(self.db)


class _Txn:
    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def __enter__(self) -> None:
        self.db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, *rest: object) -> None:
        self.db.execute("COMMIT" if exc_type is None else "ROLLBACK")

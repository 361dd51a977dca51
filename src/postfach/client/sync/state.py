"""The sync state: one small SQLite file beside the Maildir (services ring).

Per folder: its name, the id written into the local folder directory, the server's MAILBOXID,
UIDVALIDITY, UIDNEXT, HIGHESTMODSEQ and the mtimes of ``new``/``cur`` when the folder was last
seen unchanged. Per message: UID ↔ unique local name, the flags both sides had at the last sync
(the *base* of the three-way merge), the local file name as last seen (its flags) and the
message's ident. Orphans: the messages of a previous UIDVALIDITY, until they are paired again.

Crash safety comes from the order the engine keeps: a row is written only after the local file
is fsynced (download) or the server confirmed (upload, flag store, expunge). A crash in between
leaves a message unrecorded on both sides, and the next run pairs the two copies by ident
instead of copying either again. Every write is a transaction (WAL, ``synchronous=FULL``).
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from postfach.client.sync.names import Flags
from postfach.sqlitewal import connect_wal

__all__ = [
    "FolderRow",
    "MessageRow",
    "OrphanRow",
    "StateError",
    "SyncState",
    "flags_from_text",
]

SCHEMA_VERSION: Final = 1
_SCHEMA: Final = """
CREATE TABLE meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE folders(
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    local_id TEXT,
    server_id TEXT,
    uidvalidity INTEGER,
    uidnext INTEGER,
    highestmodseq INTEGER,
    stamp TEXT
);
CREATE TABLE messages(
    folder INTEGER NOT NULL REFERENCES folders(id) ON DELETE CASCADE,
    uid INTEGER NOT NULL,
    unique_name TEXT NOT NULL,
    base TEXT NOT NULL,
    lname TEXT,
    ident TEXT,
    PRIMARY KEY(folder, uid)
) WITHOUT ROWID;
CREATE INDEX messages_unique ON messages(folder, unique_name);
CREATE TABLE orphans(
    folder INTEGER NOT NULL REFERENCES folders(id) ON DELETE CASCADE,
    unique_name TEXT NOT NULL,
    base TEXT NOT NULL,
    lname TEXT,
    ident TEXT,
    PRIMARY KEY(folder, unique_name)
) WITHOUT ROWID;
"""


class StateError(Exception):
    """The state file cannot be used (another account's, or newer than this program)."""


@functools.lru_cache(maxsize=256)
def flags_from_text(text: str) -> Flags:
    """``"FS"`` or, with keywords, ``"FS $Forwarded Work"`` (letters, then keyword names)."""
    letters, *keywords = text.split(" ")
    return frozenset(letters) | frozenset(k for k in keywords if k)


def _text(flags: Iterable[str]) -> str:
    letters = "".join(sorted(f for f in flags if len(f) == 1 and f.isupper()))
    keywords = sorted(f for f in flags if not (len(f) == 1 and f.isupper()))
    return " ".join([letters, *keywords]) if keywords else letters


@dataclass(frozen=True, slots=True)
class FolderRow:
    key: int
    name: str
    local_id: str | None
    server_id: str | None
    uidvalidity: int | None
    uidnext: int | None
    highestmodseq: int | None
    stamp: str | None


@dataclass(frozen=True, slots=True)
class MessageRow:
    uid: int
    unique: str
    base: Flags
    lname: str | None  # "cur/<unique>:2,FS"; None: deleted locally, not yet on the server
    ident: str | None


@dataclass(frozen=True, slots=True)
class OrphanRow:
    unique: str
    base: Flags
    lname: str | None
    ident: str | None


_FOLDER_COLS: Final = "id, name, local_id, server_id, uidvalidity, uidnext, highestmodseq, stamp"


class SyncState:
    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = connect_wal(path, timeout=5)
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA foreign_keys=ON")
        self._depth = 0
        (version,) = self._db.execute("PRAGMA user_version").fetchone()
        if version > SCHEMA_VERSION:
            raise StateError(f"{path} was written by a newer postfach (schema {version})")
        if version == 0:
            with self.transaction():
                for stmt in _SCHEMA.split(";"):
                    if stmt.strip():
                        self._db.execute(stmt)
                self._db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")

    def close(self) -> None:
        self._db.close()

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """One transaction; nested uses join the outer one."""
        if self._depth:
            self._depth += 1
            try:
                yield
            finally:
                self._depth -= 1
            return
        self._db.execute("BEGIN IMMEDIATE")
        self._depth = 1
        try:
            yield
        except BaseException:
            self._depth = 0
            self._db.execute("ROLLBACK")
            raise
        self._depth = 0
        self._db.execute("COMMIT")

    # ---- account -------------------------------------------------------------------------

    def claim(self, account: str) -> None:
        """Tie the state to one account (``user@host:port``); refuse another one's state."""
        row = self._db.execute("SELECT value FROM meta WHERE key='account'").fetchone()
        if row is None:
            with self.transaction():
                self._db.execute("INSERT INTO meta VALUES ('account', ?)", (account,))
        elif row[0] != account:
            raise StateError(
                f"{self.path} holds the sync state of {row[0]}, not {account};"
                " use another Maildir (or state file) for this account"
            )

    # ---- folders -------------------------------------------------------------------------

    @staticmethod
    def _folder(row: Any) -> FolderRow:
        return FolderRow(*row)

    def folders(self) -> list[FolderRow]:
        return [
            self._folder(r)
            for r in self._db.execute(f"SELECT {_FOLDER_COLS} FROM folders ORDER BY name")
        ]

    def folder(self, name: str) -> FolderRow | None:
        row = self._db.execute(
            f"SELECT {_FOLDER_COLS} FROM folders WHERE name=?", (name,)
        ).fetchone()
        return None if row is None else self._folder(row)

    def folder_by_key(self, key: int) -> FolderRow:
        row = self._db.execute(f"SELECT {_FOLDER_COLS} FROM folders WHERE id=?", (key,)).fetchone()
        if row is None:
            raise KeyError(key)
        return self._folder(row)

    def add_folder(self, name: str, local_id: str | None, server_id: str | None) -> FolderRow:
        with self.transaction():
            cur = self._db.execute(
                "INSERT INTO folders(name, local_id, server_id) VALUES (?,?,?)",
                (name, local_id, server_id),
            )
        assert cur.lastrowid is not None
        return self.folder_by_key(cur.lastrowid)

    def update_folder(self, key: int, **values: object) -> FolderRow:
        allowed = {"name", "local_id", "server_id", "uidvalidity", "uidnext", "highestmodseq",
                   "stamp"}  # fmt: skip
        if not values:
            return self.folder_by_key(key)
        if set(values) - allowed:
            raise ValueError(f"unknown folder columns {set(values) - allowed}")
        cols = ", ".join(f"{k}=?" for k in values)
        with self.transaction():
            self._db.execute(f"UPDATE folders SET {cols} WHERE id=?", (*values.values(), key))
        return self.folder_by_key(key)

    def rename_folder(self, key: int, new: str) -> None:
        with self.transaction():
            self._db.execute("DELETE FROM folders WHERE name=? AND id<>?", (new, key))
            self._db.execute("UPDATE folders SET name=? WHERE id=?", (new, key))

    def delete_folder(self, key: int) -> None:
        with self.transaction():
            self._db.execute("DELETE FROM folders WHERE id=?", (key,))

    def reset_folder(self, key: int) -> None:
        """Forget what was synced in a folder (its messages and orphans, UIDVALIDITY)."""
        with self.transaction():
            self._db.execute("DELETE FROM messages WHERE folder=?", (key,))
            self._db.execute("DELETE FROM orphans WHERE folder=?", (key,))
            self._db.execute(
                "UPDATE folders SET uidvalidity=NULL, uidnext=NULL, highestmodseq=NULL,"
                " stamp=NULL WHERE id=?",
                (key,),
            )

    def rebase(self, key: int, uidvalidity: int) -> None:
        """The server's UIDVALIDITY changed: every message becomes an orphan (RFC 9051 §2.3.1.1:
        the old UIDs mean nothing any more), in one transaction with the new UIDVALIDITY."""
        with self.transaction():
            self._db.execute(
                "INSERT OR REPLACE INTO orphans(folder, unique_name, base, lname, ident)"
                " SELECT folder, unique_name, base, lname, ident FROM messages WHERE folder=?",
                (key,),
            )
            self._db.execute("DELETE FROM messages WHERE folder=?", (key,))
            self._db.execute(
                "UPDATE folders SET uidvalidity=?, uidnext=NULL, highestmodseq=NULL WHERE id=?",
                (uidvalidity, key),
            )

    # ---- messages ------------------------------------------------------------------------

    def records(self, key: int) -> list[MessageRow]:
        return [
            MessageRow(uid, unique, flags_from_text(base), lname, ident)
            for uid, unique, base, lname, ident in self._db.execute(
                "SELECT uid, unique_name, base, lname, ident FROM messages WHERE folder=?", (key,)
            )
        ]

    def rows(self, key: int) -> list[tuple[int, str, str, str | None, str | None]]:
        """``records`` as plain tuples (uid, unique, base letters, lname, ident): the engine
        loads every message of a folder, and 50,000 objects fewer are worth it."""
        return self._db.execute(
            "SELECT uid, unique_name, base, lname, ident FROM messages WHERE folder=?", (key,)
        ).fetchall()

    def count(self, key: int) -> int:
        (n,) = self._db.execute("SELECT count(*) FROM messages WHERE folder=?", (key,)).fetchone()
        return int(n)

    def orphans(self, key: int) -> list[OrphanRow]:
        return [
            OrphanRow(unique, flags_from_text(base), lname, ident)
            for unique, base, lname, ident in self._db.execute(
                "SELECT unique_name, base, lname, ident FROM orphans WHERE folder=?", (key,)
            )
        ]

    def put(
        self, key: int, uid: int, unique: str, base: Flags, lname: str | None, ident: str | None
    ) -> None:
        with self.transaction():
            self._db.execute(
                "INSERT OR REPLACE INTO messages(folder, uid, unique_name, base, lname, ident)"
                " VALUES (?,?,?,?,?,?)",
                (key, uid, unique, _text(base), lname, ident),
            )

    def forget(self, key: int, uids: Iterable[int]) -> None:
        with self.transaction():
            self._db.executemany(
                "DELETE FROM messages WHERE folder=? AND uid=?", [(key, u) for u in uids]
            )

    def forget_orphans(self, key: int, uniques: Iterable[str]) -> None:
        with self.transaction():
            self._db.executemany(
                "DELETE FROM orphans WHERE folder=? AND unique_name=?",
                [(key, u) for u in uniques],
            )

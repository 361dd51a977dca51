"""Opening a SQLite database in WAL mode when other processes may be opening it too.

``PRAGMA journal_mode=WAL`` on a database still in rollback mode needs the database to itself.
When several connections switch a new file at the same moment (a server starting while
``postfach user add`` creates the data directory, or the workers of one server), SQLite may
answer ``SQLITE_BUSY`` at once, without waiting out the busy timeout: waiting could deadlock
two connections that each hold a read lock and want to write. The switch is made once per
file, so trying it again after a short pause is all it takes.
"""

from __future__ import annotations

import random
import sqlite3
import time
from pathlib import Path

#: SQLite's primary result codes for a database another connection holds
_BUSY_CODES = frozenset({sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED})


def connect_wal(
    path: Path, *, timeout: float, check_same_thread: bool = False
) -> sqlite3.Connection:
    """A connection to *path* in autocommit mode with WAL journaling and a busy timeout of
    *timeout* seconds; the WAL switch is tried again until *timeout* has passed."""
    conn = sqlite3.connect(
        path, isolation_level=None, check_same_thread=check_same_thread, timeout=timeout
    )
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                conn.execute("PRAGMA journal_mode=WAL")
                break
            except sqlite3.OperationalError as exc:
                if exc.sqlite_errorcode & 0xFF not in _BUSY_CODES or time.monotonic() >= deadline:
                    raise
                time.sleep(random.uniform(0.001, 0.02))
    except BaseException:
        conn.close()
        raise
    return conn

"""Two stores (two writers, as ``postfach import`` next to a running server) on one data dir.

A large message is a blob file. When one writer frees it and the other stores the same content
at that moment, the file must survive for the message that now refers to it. The interleavings
are forced with hooks in the first store's writer thread, so each test is deterministic.
"""

from __future__ import annotations

import concurrent.futures
import threading
from collections.abc import Collection, Iterator
from pathlib import Path
from typing import Any

import pytest

from postfach.store.api import INBOX
from postfach.store.sqlite import SqliteMailstore

BIG = b"Subject: big\r\n\r\n" + b"attachment line of the shared report\r\n" * 4000  # ~150 KB


@pytest.fixture
def two(tmp_path: Path) -> Iterator[tuple[SqliteMailstore, SqliteMailstore]]:
    a = SqliteMailstore(tmp_path / "data", index_text=False)
    a.add_domain("example.org")
    a.add_account("alice@example.org", "-")
    a.add_account("bob@example.org", "-")
    b = SqliteMailstore(tmp_path / "data", index_text=False)
    yield a, b
    b.close()
    a.close()


def inbox(store: SqliteMailstore, name: str) -> int:
    acc = store.get_account(name)
    assert acc is not None
    box = store.get_mailbox(acc.id, INBOX)
    assert box is not None
    return box.id


def deliver(store: SqliteMailstore, name: str) -> None:
    acc = store.get_account(name)
    assert acc is not None
    store.deliver([acc.id], store.stage(BIG), 1_700_000_000)


def writer_idle(store: SqliteMailstore) -> None:
    """Freed files are unlinked after the ops' answers: wait until the writer has done that."""
    store.submit(lambda conn, batch: None).result(timeout=60)


def bobs_message_is_readable(b: SqliteMailstore) -> None:
    msgs = b.list_messages(inbox(b, "bob@example.org"))
    assert len(msgs) == 1
    assert b.read_blob(msgs[0].blob) == BIG  # FileNotFoundError when the file was deleted


def test_same_content_stored_while_the_other_writer_unlinks(
    two: tuple[SqliteMailstore, SqliteMailstore], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Store A expunges alice's copy (last reference: the file is freed); just as A's writer is
    about to remove the file, store B delivers the same bytes to bob. Before the fix A unlinked
    after its COMMIT without any lock, B found the file still there, reused it, and bob's
    message pointed to a file A then deleted."""
    a, b = two
    deliver(a, "alice@example.org")
    path = a.blob_path(a.list_messages(inbox(a, "alice@example.org"))[0].blob)
    assert path.exists()

    real_unlink = Path.unlink
    raced: list[concurrent.futures.Future[None]] = []
    pool = concurrent.futures.ThreadPoolExecutor(1)

    def unlink(self: Path, missing_ok: bool = False) -> None:
        if self == path and not raced and threading.current_thread().name == "postfach-writer":
            fut = pool.submit(deliver, b, "bob@example.org")
            raced.append(fut)
            # Old code: B commits within this wait (no lock held) and reuses the file. Fixed:
            # B waits for the write lock A holds while it unlinks, and the wait times out.
            # (Nothing may raise here: this is A's writer thread.)
            concurrent.futures.wait([fut], timeout=1.5)
        real_unlink(self, missing_ok)

    monkeypatch.setattr(Path, "unlink", unlink)
    a.expunge(inbox(a, "alice@example.org"), [1])
    writer_idle(a)
    assert raced, "the hook did not run: the freed blob file was never unlinked"
    raced[0].result(timeout=30)
    pool.shutdown()
    monkeypatch.undo()
    bobs_message_is_readable(b)
    assert path.exists()
    assert a.check().clean


def test_content_stored_again_before_the_unlink_transaction(
    two: tuple[SqliteMailstore, SqliteMailstore], monkeypatch: pytest.MonkeyPatch
) -> None:
    """B stores the same bytes (and commits) between A's COMMIT and A's unlink: A must see the
    new row under its lock and leave the file alone."""
    a, b = two
    deliver(a, "alice@example.org")
    path = a.blob_path(a.list_messages(inbox(a, "alice@example.org"))[0].blob)
    real = SqliteMailstore._unlink_freed
    calls: list[int] = []

    def unlink_freed(self: SqliteMailstore, conn: Any, paths: Collection[Path]) -> None:
        if self is a and path in paths:
            calls.append(1)
            deliver(b, "bob@example.org")  # A holds no lock here: B commits
        real(self, conn, paths)

    monkeypatch.setattr(SqliteMailstore, "_unlink_freed", unlink_freed)
    a.expunge(inbox(a, "alice@example.org"), [1])
    writer_idle(a)
    assert calls
    monkeypatch.undo()
    bobs_message_is_readable(b)
    assert a.check().clean


def test_reuse_restores_a_missing_file(two: tuple[SqliteMailstore, SqliteMailstore]) -> None:
    """A writer that finds the content's row but not its file (lost by some earlier accident)
    puts the new copy's bytes in place instead of pointing a second message at nothing."""
    a, b = two
    deliver(a, "alice@example.org")
    path = a.blob_path(a.list_messages(inbox(a, "alice@example.org"))[0].blob)
    path.unlink()
    deliver(b, "bob@example.org")
    bobs_message_is_readable(b)
    assert a.read_blob(a.list_messages(inbox(a, "alice@example.org"))[0].blob) == BIG


def test_processes_opening_a_new_data_directory_at_once_all_start(tmp_path: Path) -> None:
    """A server starting while ``postfach user add`` creates the same new data directory: each
    finds the schema missing and migrates. Before, each read the schema version outside the
    migration's transaction, and the second one then failed on tables the first had just
    created ("table domains already exists"): that process did not start."""
    from postfach.queue.store import QueueStore

    opened = 8
    barrier = threading.Barrier(opened)

    def open_both(_: int) -> int:
        barrier.wait()
        store = SqliteMailstore(tmp_path / "data", index_text=False)
        queue = QueueStore(tmp_path / "data")
        try:
            return len(store.list_domains())
        finally:
            queue.close()
            store.close()

    with concurrent.futures.ThreadPoolExecutor(opened) as pool:
        assert list(pool.map(open_both, range(opened))) == [0] * opened


def test_connections_switching_a_new_file_to_wal_at_once_all_open(tmp_path: Path) -> None:
    """The switch to WAL needs the new file to itself, and SQLite answers "database is locked"
    at once, busy timeout or not, to a connection that could deadlock waiting for it. Before,
    the queue's and the store's connections failed that way: CI saw a server fail to start
    beside ``postfach user add`` (about one round in twenty here, with sixteen openers)."""
    from postfach.sqlitewal import connect_wal

    opened = 16

    def open_all(path: Path) -> list[str]:
        barrier = threading.Barrier(opened)

        def one(_: int) -> str:
            barrier.wait()
            conn = connect_wal(path, timeout=10)
            try:
                return str(conn.execute("PRAGMA journal_mode").fetchone()[0])
            finally:
                conn.close()

        with concurrent.futures.ThreadPoolExecutor(opened) as pool:
            return list(pool.map(one, range(opened)))

    for round_ in range(60):
        assert open_all(tmp_path / f"{round_}.db") == ["wal"] * opened


def test_a_database_that_cannot_be_opened_fails_at_once(tmp_path: Path) -> None:
    """Only "busy" is tried again: a path that is a directory is an error without waiting."""
    import sqlite3
    import time

    from postfach.sqlitewal import connect_wal

    started = time.monotonic()
    with pytest.raises(sqlite3.OperationalError):
        connect_wal(tmp_path, timeout=30)
    assert time.monotonic() - started < 5

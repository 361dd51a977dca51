"""The recipient lookup of SMTP's RCPT TO (`SqliteMailstore.recipient_account`) is cached per
process, and must still answer as a fresh read would: two store instances on one data directory
stand for the server and an admin command (or another worker) changing accounts meanwhile.

Each test first shows that the answer is cached (a change made behind the store's back, in
SQL, is not seen), so that what follows shows the invalidation and not a lookup that was never
cached."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from postfach.store.api import INBOX
from postfach.store.sqlite import SqliteMailstore

ALICE = "alice@example.org"


@pytest.fixture
def stores(tmp_path: Path) -> Iterator[tuple[SqliteMailstore, SqliteMailstore]]:
    server = SqliteMailstore(tmp_path, index_text=False)
    admin = SqliteMailstore(tmp_path, index_text=False)
    server.add_domain("example.org")
    try:
        yield server, admin
    finally:
        server.close()
        admin.close()


def _behind_the_back(store: SqliteMailstore, sql: str, *args: object) -> None:
    """A change no store op made: nothing tells the caches."""
    conn = sqlite3.connect(store.db_path)
    with conn:
        conn.execute(sql, args)
    conn.close()


def _fill(store: SqliteMailstore, account_id: int, n: int, size: int) -> None:
    for i in range(n):
        body = f"Subject: {i}\r\n\r\n".encode()
        data = body + b"x" * (size - len(body))
        assert store.deliver([account_id], store.stage(data), 0)[0].message is not None


def test_account_changes_in_another_process_reach_a_cached_lookup_at_once(
    stores: tuple[SqliteMailstore, SqliteMailstore],
) -> None:
    server, admin = stores
    admin.add_account(ALICE, "x")
    assert server.recipient_account(ALICE) is not None
    assert server.recipient_account("bob@example.org") is None
    _behind_the_back(server, "UPDATE accounts SET quota_messages=5 WHERE name=?", ALICE)
    cached = server.recipient_account(ALICE.upper())
    assert cached is not None and cached.quota_messages == 0  # served from the cache

    admin.set_quota(ALICE, 1_000_000, 7)
    acc = server.recipient_account(ALICE)
    assert acc is not None and (acc.quota_bytes, acc.quota_messages) == (1_000_000, 7)
    admin.add_account("bob@example.org", "x")  # a cached "no such user" goes as well
    assert server.recipient_account("bob@example.org") is not None
    admin.delete_account(ALICE)
    assert server.recipient_account(ALICE) is None


def test_an_account_filled_by_another_process_is_refused_at_once_and_taken_again_after_expunge(
    stores: tuple[SqliteMailstore, SqliteMailstore],
) -> None:
    server, admin = stores
    alice = admin.add_account(ALICE, "x", quota_bytes=8_000)
    before = server.recipient_account(ALICE)
    _behind_the_back(server, "UPDATE accounts SET sent_copy='auto' WHERE name=?", ALICE)
    assert before is not None and server.recipient_account(ALICE) is before  # roomy: cached

    _fill(admin, alice.id, 6, 1_000)  # 6,000 of 8,000 octets: still an eighth left
    assert server.recipient_account(ALICE) is before
    _fill(admin, alice.id, 2, 1_000)  # full
    full = server.recipient_account(ALICE)
    assert full is not None and full.is_full and full.sent_copy == "auto"

    inbox = admin.get_mailbox(alice.id, INBOX)
    assert inbox is not None
    admin.expunge(inbox.id, [1])
    after = server.recipient_account(ALICE)
    assert after is not None and not after.is_full and after.used_bytes == 7_000


def test_a_declared_size_above_an_eighth_of_the_quota_is_checked_against_fresh_usage(
    stores: tuple[SqliteMailstore, SqliteMailstore],
) -> None:
    server, admin = stores
    admin.add_account(ALICE, "x", quota_bytes=8_000)
    assert server.recipient_account(ALICE, 500) is not None
    _behind_the_back(server, "UPDATE accounts SET used_bytes=5000 WHERE name=?", ALICE)
    small = server.recipient_account(ALICE, 1_000)  # an eighth: the cached answer holds
    assert small is not None and small.used_bytes == 0
    big = server.recipient_account(ALICE, 4_000)
    assert big is not None and big.would_exceed(4_000) == "STORAGE"


def test_a_cached_lookup_expires(stores: tuple[SqliteMailstore, SqliteMailstore]) -> None:
    """The backstop for a process that died between its COMMIT and telling the caches."""
    server, admin = stores
    admin.add_account(ALICE, "x")
    assert server.recipient_account(ALICE) is not None
    _behind_the_back(server, "DELETE FROM mailboxes")
    _behind_the_back(server, "DELETE FROM accounts")
    assert server.recipient_account(ALICE) is not None
    server.recipient_cache_seconds = 0.0
    assert server.recipient_account(ALICE) is None

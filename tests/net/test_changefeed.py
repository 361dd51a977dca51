"""Two servers on one data directory (two workers, each with its own store, writer and hub):
sessions of one hear of what the other commits, through the store's change feed; POP3's
maildrop lock holds across them; caches stay true."""

from __future__ import annotations

import poplib
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_imap import Raw

from postfach.auth.passwords import hash_password
from postfach.store import feed
from postfach.store.api import Flag
from postfach.store.sqlite import SqliteMailstore
from support import PASSWORD, RunningServer, message, start_server

pytestmark = pytest.mark.timeout(60)

ALICE = "alice@example.org"


@pytest.fixture
def workers(tmp_path: Path) -> Iterator[tuple[RunningServer, RunningServer]]:
    one = start_server(tmp_path / "data")
    two = start_server(tmp_path / "data")
    try:
        one.add_user(ALICE)
        yield one, two
    finally:
        two.stop()
        one.stop()


def idling(server: RunningServer, *, condstore: bool = False) -> Raw:
    raw = Raw(server.port("imap"))
    select = b"b SELECT INBOX (CONDSTORE)\r\n" if condstore else b"b SELECT INBOX\r\n"
    raw.send(f'a LOGIN {ALICE} "{PASSWORD}"\r\n'.encode() + select + b"c IDLE\r\n")
    raw.until(b"b")
    assert raw.line() == b"+ idling"
    return raw


def login(server: RunningServer) -> Raw:
    raw = Raw(server.port("imap"))
    raw.send(f'a LOGIN {ALICE} "{PASSWORD}"\r\n'.encode())
    assert raw.until(b"a")[-1].startswith(b"a OK")
    return raw


def test_idle_hears_a_delivery_to_the_other_worker_within_a_second(
    workers: tuple[RunningServer, RunningServer],
) -> None:
    one, two = workers
    raw = idling(one)
    start = time.monotonic()
    two.send([ALICE], message("via worker two"))
    assert raw.line() == b"* 1 EXISTS"
    assert time.monotonic() - start < 1.0
    raw.close()


def test_flags_and_pop3_expunge_of_the_other_worker_reach_idle(
    workers: tuple[RunningServer, RunningServer],
) -> None:
    one, two = workers
    one.send([ALICE], message("first"))
    one.send([ALICE], message("second"))
    raw = idling(one, condstore=True)
    other = login(two)
    other.send(b"s SELECT INBOX\r\nt STORE 1 +FLAGS (\\Seen)\r\n")
    assert other.until(b"t")[-1].startswith(b"t OK")
    # with the MODSEQ the change was committed with (RFC 7162 §3.1); \\Recent: this IMAP4rev1
    # session was the first to hear of the messages
    acc = two.store.get_account(ALICE)
    assert acc is not None
    box = two.store.get_mailbox(acc.id, "INBOX")
    assert box is not None
    modseq = box.highestmodseq
    assert raw.line() == b"* 1 FETCH (UID 1 FLAGS (\\Recent \\Seen) MODSEQ (%d))" % modseq
    other.send(b"u LOGOUT\r\n")
    other.until(b"u")
    # POP3 on worker two deletes the first message: IDLE on worker one hears EXPUNGE
    pop = poplib.POP3("127.0.0.1", two.port("pop3"), timeout=10)
    pop.user(ALICE)
    pop.pass_(PASSWORD)
    pop.dele(1)
    pop.quit()
    assert raw.line() == b"* 1 EXPUNGE"
    raw.send(b"DONE\r\n")
    assert raw.line() == b"c OK IDLE terminated"
    raw.send(b"d FETCH 1 (UID FLAGS)\r\n")
    assert raw.until(b"d")[0] == b"* 1 FETCH (UID 2 FLAGS (\\Recent))"
    raw.close()


def test_pop3_maildrop_lock_holds_across_workers(
    workers: tuple[RunningServer, RunningServer],
) -> None:
    one, two = workers
    holder = poplib.POP3("127.0.0.1", one.port("pop3"), timeout=10)
    holder.user(ALICE)
    holder.pass_(PASSWORD)
    second = poplib.POP3("127.0.0.1", two.port("pop3"), timeout=10)
    second.user(ALICE)
    with pytest.raises(poplib.error_proto, match=r"\[IN-USE\]"):
        second.pass_(PASSWORD)
    second.close()
    holder.quit()
    third = poplib.POP3("127.0.0.1", two.port("pop3"), timeout=10)
    third.user(ALICE)
    assert third.pass_(PASSWORD).startswith(b"+OK")
    third.quit()


def test_account_deleted_by_the_other_worker_ends_sessions(
    workers: tuple[RunningServer, RunningServer],
) -> None:
    """No signal here (servers in threads install none): the feed alone carries it."""
    one, two = workers
    raw = idling(one)
    start = time.monotonic()
    two.store.delete_account(ALICE)
    assert raw.line() == b"* BYE account no longer exists"
    assert time.monotonic() - start < 1.0
    raw.close()


def test_a_feed_gap_ends_sessions_with_bye(
    workers: tuple[RunningServer, RunningServer], caplog: pytest.LogCaptureFixture
) -> None:
    """Worker one stands still while rows it has not read are pruned (as after a suspend
    longer than the retention): its IMAP sessions are told to reconnect."""
    one, two = workers
    raw = idling(one)
    follower = one.store._feed
    assert follower is not None
    with follower._lock:
        for i in range(3):
            two.send([ALICE], message(f"missed {i}"))
        conn = sqlite3.connect(one.store.db_path)
        with conn:
            assert feed.prune(conn, time.time() + 3600, keep=1) >= 2
        conn.close()
    assert raw.line() == b"* BYE mailbox state lost, please reconnect"
    assert raw.sock.recv(100) == b""
    raw.close()
    assert "event=change_feed_gap" in caplog.text


def test_listing_cache_is_checked_against_the_database(
    workers: tuple[RunningServer, RunningServer],
) -> None:
    """Worker one keeps a listing of INBOX cached (a session has it selected) and has not
    heard of a flag change made by worker two: a new SELECT there still shows the new flags,
    because the cache is keyed by the HIGHESTMODSEQ read from the database."""
    one, two = workers
    one.send([ALICE], message("cached"))
    holder = login(one)
    holder.send(b"s SELECT INBOX\r\n")
    holder.until(b"s")
    follower = one.store._feed
    assert follower is not None
    with follower._lock:  # worker one hears nothing meanwhile: its thread is held ...
        one.store._feed = None  # ... and its commands do not look at the feed
        acc = two.store.get_account(ALICE)
        assert acc is not None
        box = two.store.get_mailbox(acc.id, "INBOX")
        assert box is not None
        two.store.store_flags(box.id, [1], "add", Flag.FLAGGED)
        fresh = login(one)
        fresh.send(b"s SELECT INBOX\r\nf FETCH 1 (FLAGS)\r\n")
        lines = fresh.until(b"f")
        one.store._feed = follower
    assert b"* 1 FETCH (FLAGS (\\Flagged))" in lines
    holder.close()
    fresh.close()


def test_a_command_hears_what_the_other_worker_committed_before_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Read-your-writes across workers: a client's STORE answered by worker two, then NOOP on
    its session with worker one shows the new flags, without waiting for a feed poll."""
    monkeypatch.setattr(SqliteMailstore, "feed_interval", 3600.0)  # the polls never come
    one = start_server(tmp_path / "data")
    two = start_server(tmp_path / "data")
    try:
        one.add_user(ALICE)
        one.send([ALICE], message("flag me"))
        watcher = login(one)
        watcher.send(b"s SELECT INBOX\r\n")
        watcher.until(b"s")
        other = login(two)
        other.send(b"s SELECT INBOX\r\nt STORE 1 +FLAGS (\\Answered)\r\n")
        assert other.until(b"t")[-1].startswith(b"t OK")
        two.send([ALICE], message("new"))
        watcher.send(b"n NOOP\r\n")
        lines = watcher.until(b"n")
        assert lines[:2] == [b"* 1 FETCH (UID 1 FLAGS (\\Recent \\Answered))", b"* 2 EXISTS"]
        watcher.close()
        other.close()
    finally:
        two.stop()
        one.stop()


def test_password_changed_elsewhere_takes_effect_at_once(
    workers: tuple[RunningServer, RunningServer],
) -> None:
    """The verified-password cache of worker one is checked against the stored hash at each
    login, so ``postfach user passwd`` (another process) takes effect at the next login."""
    one, two = workers
    login(one).close()  # now remembered by worker one
    two.store.set_password(ALICE, hash_password("new secret"))
    raw = Raw(one.port("imap"))
    raw.send(f'a LOGIN {ALICE} "{PASSWORD}"\r\n'.encode())
    assert raw.until(b"a")[-1].startswith(b"a NO")
    raw.send(b'b LOGIN alice@example.org "new secret"\r\n')
    assert raw.until(b"b")[-1].startswith(b"b OK")
    raw.close()

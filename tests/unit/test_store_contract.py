"""The Mailstore contract: every backend must pass these (today: SQLite)."""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from postfach.errors import AlreadyExists, DiskFull, NotFound, OverQuota, StoreError
from postfach.store.api import INBOX, Change, Flag, MessageAdded, MessagesExpunged
from postfach.store.sqlite import AppendItem, SqliteMailstore

BACKENDS = ["sqlite"]


@pytest.fixture(params=BACKENDS)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[SqliteMailstore]:
    s = SqliteMailstore(tmp_path / "data", inline_max=1024)
    s.add_domain("example.org")
    yield s
    s.close()


def msg(n: int, size: int = 100) -> bytes:
    head = f"Subject: test {n}\r\n\r\n".encode()
    return head + b"x" * max(0, size - len(head) - 2) + b"\r\n"


def inbox(store: SqliteMailstore, name: str) -> int:
    acc = store.get_account(name)
    assert acc is not None
    box = store.get_mailbox(acc.id, INBOX)
    assert box is not None
    return box.id


def deliver(store: SqliteMailstore, names: list[str], data: bytes) -> list[str | None]:
    ids = []
    for n in names:
        acc = store.get_account(n)
        assert acc is not None
        ids.append(acc.id)
    results = store.deliver(ids, store.stage(data), 1_700_000_000)
    return [r.over_quota for r in results]


def test_domains(store: SqliteMailstore) -> None:
    store.add_domain("Other.Example")
    assert [d.name for d in store.list_domains()] == ["example.org", "other.example"]
    with pytest.raises(AlreadyExists):
        store.add_domain("other.example")
    store.add_account("a@other.example", "h")
    with pytest.raises(StoreError, match="still has 1 account"):
        store.delete_domain("other.example")
    store.delete_account("a@other.example")
    store.delete_domain("other.example")
    assert not store.is_local_domain("other.example")
    with pytest.raises(NotFound):
        store.delete_domain("other.example")


def test_account_gets_special_use_folders(store: SqliteMailstore) -> None:
    acc = store.add_account("Alice@Example.org", "hash", quota_bytes=1000)
    assert acc.name == "alice@example.org"
    boxes = {b.name: b.special_use for b in store.list_mailboxes(acc.id)}
    assert boxes == {
        "INBOX": None, "Sent": "\\Sent", "Drafts": "\\Drafts", "Trash": "\\Trash",
        "Junk": "\\Junk", "Archive": "\\Archive",
    }  # fmt: skip
    validities = [b.uidvalidity for b in store.list_mailboxes(acc.id)]
    assert len(set(validities)) == len(validities)
    assert store.get_account("ALICE@example.org") == acc
    assert store.password_hash("alice@example.org") == "hash"
    with pytest.raises(AlreadyExists):
        store.add_account("alice@example.org", "x")
    with pytest.raises(NotFound, match="no domain"):
        store.add_account("bob@nowhere.example", "x")


def test_delivery_assigns_uids_and_counts_quota(store: SqliteMailstore) -> None:
    store.add_account("a@example.org", "h")
    for i in range(3):
        assert deliver(store, ["a@example.org"], msg(i)) == [None]
    messages = store.list_messages(inbox(store, "a@example.org"))
    assert [m.uid for m in messages] == [1, 2, 3]
    assert len({m.modseq for m in messages}) == 3
    acc = store.get_account("a@example.org")
    assert acc is not None
    assert (acc.used_bytes, acc.used_messages) == (300, 3)
    assert store.read_blob(messages[0].blob) == msg(0)


def test_quota_refuses_what_does_not_fit_and_expunge_frees(store: SqliteMailstore) -> None:
    store.add_account("a@example.org", "h", quota_bytes=250)
    assert deliver(store, ["a@example.org"], msg(1)) == [None]
    assert deliver(store, ["a@example.org"], msg(2)) == [None]
    assert deliver(store, ["a@example.org"], msg(3)) == ["STORAGE"]
    box = inbox(store, "a@example.org")
    assert len(store.list_messages(box)) == 2
    assert store.expunge(box, [1]) == [1]
    acc = store.get_account("a@example.org")
    assert acc is not None and acc.used_bytes == 100
    assert deliver(store, ["a@example.org"], msg(3)) == [None]


def test_message_count_quota(store: SqliteMailstore) -> None:
    store.add_account("a@example.org", "h", quota_messages=1)
    assert deliver(store, ["a@example.org"], msg(1)) == [None]
    assert deliver(store, ["a@example.org"], msg(2)) == ["MESSAGE"]


def test_one_blob_for_many_recipients(store: SqliteMailstore) -> None:
    for n in "abc":
        store.add_account(f"{n}@example.org", "h")
    big = msg(7, size=5000)  # above inline_max: a file
    names = ["a@example.org", "b@example.org", "c@example.org"]
    assert deliver(store, names, big) == [None, None, None]
    sha = store.list_messages(inbox(store, "a@example.org"))[0].blob
    path = store.blob_path(sha)
    assert path.exists() and path.read_bytes() == big
    assert not list(store.tmp_dir.iterdir())
    store.expunge(inbox(store, "a@example.org"), [1])
    store.expunge(inbox(store, "b@example.org"), [1])
    assert path.exists()
    store.expunge(inbox(store, "c@example.org"), [1])
    assert not path.exists()
    assert store.check().clean


def test_refused_delivery_leaves_no_file(store: SqliteMailstore) -> None:
    store.add_account("a@example.org", "h", quota_bytes=10)
    assert deliver(store, ["a@example.org"], msg(1, size=5000)) == ["STORAGE"]
    assert not list(store.tmp_dir.iterdir())
    assert not list(store.blob_dir.glob("??/??/*"))


def test_uids_never_repeat_across_reopen(store: SqliteMailstore, tmp_path: Path) -> None:
    store.add_account("a@example.org", "h")
    deliver(store, ["a@example.org"], msg(1))
    deliver(store, ["a@example.org"], msg(2))
    box = inbox(store, "a@example.org")
    store.expunge(box, [2])
    store.close()
    again = SqliteMailstore(tmp_path / "data")
    try:
        deliver(again, ["a@example.org"], msg(3))
        assert [m.uid for m in again.list_messages(box)] == [1, 3]
    finally:
        again.close()


def test_resolve_aliases_and_catch_all(store: SqliteMailstore) -> None:
    store.add_account("alice@example.org", "h")
    store.add_account("bob@example.org", "h")
    store.add_alias("info@example.org", "alice@example.org")
    store.add_alias("info@example.org", "bob@example.org")
    store.add_alias("loop1@example.org", "loop2@example.org")
    store.add_alias("loop2@example.org", "loop1@example.org")
    assert store.resolve("INFO@example.org") == ["alice@example.org", "bob@example.org"]
    assert store.resolve("nobody@example.org") is None
    assert store.resolve("loop1@example.org") is None
    store.add_alias("@example.org", "bob@example.org")
    assert store.resolve("nobody@example.org") == ["bob@example.org"]
    assert store.resolve("alice@example.org") == ["alice@example.org"]
    with pytest.raises(AlreadyExists):
        store.add_alias("alice@example.org", "bob@example.org")
    with pytest.raises(NotFound):
        store.add_alias("x@elsewhere.example", "bob@example.org")
    store.delete_alias("info@example.org", "bob@example.org")
    assert store.resolve("info@example.org") == ["alice@example.org"]


def test_changes_published_after_commit(tmp_path: Path) -> None:
    seen: list[Change] = []
    db_path = tmp_path / "d" / "postfach.db"

    def publish(changes: list[Change]) -> None:
        # Published only once durable: a fresh connection already sees the rows.
        conn = sqlite3.connect(db_path)
        (count,) = conn.execute("SELECT count(*) FROM messages").fetchone()
        conn.close()
        assert count >= sum(isinstance(c, MessageAdded) for c in changes)
        seen.extend(changes)

    s = SqliteMailstore(tmp_path / "d", publish=publish)
    try:
        s.add_domain("example.org")
        acc = s.add_account("a@example.org", "h")
        deliver(s, ["a@example.org"], msg(1))
        s.expunge(inbox(s, "a@example.org"), [1])
    finally:
        s.close()
    added = [c for c in seen if isinstance(c, MessageAdded)]
    gone = [c for c in seen if isinstance(c, MessagesExpunged)]
    assert [(c.account_id, c.uid, c.flags) for c in added] == [(acc.id, 1, Flag(0))]
    assert gone[0].uids == (1,) and gone[0].modseq > added[0].modseq


def test_group_commit_under_concurrency(store: SqliteMailstore) -> None:
    store.add_account("a@example.org", "h", quota_messages=150)
    acc = store.get_account("a@example.org")
    assert acc is not None
    errors: list[BaseException] = []
    results: list[str | None] = []
    lock = threading.Lock()

    def worker(k: int) -> None:
        try:
            for i in range(20):
                r = store.deliver([acc.id], store.stage(msg(k * 100 + i)), 0)
                with lock:
                    results.append(r[0].over_quota)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert results.count(None) == 150 and results.count("MESSAGE") == 50
    uids = [m.uid for m in store.list_messages(inbox(store, "a@example.org"))]
    assert uids == list(range(1, 151))
    assert store.check().clean


def test_failing_op_does_not_spoil_its_batch(store: SqliteMailstore) -> None:
    store.add_account("a@example.org", "h")
    futures = [store.submit(store._op_add_domain, f"d{i}.example") for i in range(5)]
    futures.insert(2, store.submit(store._op_add_domain, "example.org"))  # exists: fails
    outcomes = [f.exception() for f in futures]
    assert isinstance(outcomes[2], AlreadyExists)
    assert sum(o is None for o in outcomes) == 5
    assert len(store.list_domains()) == 6


def test_check_reports_and_repairs_drift(store: SqliteMailstore) -> None:
    store.add_account("a@example.org", "h")
    deliver(store, ["a@example.org"], msg(1))
    assert store.check().clean
    conn = sqlite3.connect(store.db_path)
    conn.execute("UPDATE accounts SET used_bytes=used_bytes+7")
    conn.commit()
    conn.close()
    report = store.check()
    assert not report.clean and "a@example.org" in report.quota_drift[0]
    assert store.check(repair=True).repaired
    assert store.check().clean


def test_delete_account_frees_blobs(store: SqliteMailstore) -> None:
    store.add_account("a@example.org", "h")
    deliver(store, ["a@example.org"], msg(1, size=5000))
    assert list(store.blob_dir.glob("??/??/*"))
    store.delete_account("a@example.org")
    assert store.get_account("a@example.org") is None
    assert not list(store.blob_dir.glob("??/??/*"))
    assert store.check().clean


def test_account_and_mailbox_ids_are_never_reused(store: SqliteMailstore) -> None:
    """A session of a deleted account knows it by id: the next account must not get that id,
    nor its mailboxes the deleted mailboxes' ids (isolation, docs/reliability/isolation.md)."""
    old = store.add_account("leaver@example.org", "h")
    old_boxes = {b.id for b in store.list_mailboxes(old.id)}
    temp = store.create_mailbox(old.id, "Temp")
    store.delete_mailbox(old.id, "Temp")
    assert store.create_mailbox(old.id, "Temp2") > temp
    store.delete_account("leaver@example.org")
    new = store.add_account("newhire@example.org", "h")
    assert new.id > old.id
    new_boxes = {b.id for b in store.list_mailboxes(new.id)}
    assert min(new_boxes) > max(old_boxes | {temp})
    assert store.get_mailbox(old.id, INBOX) is None


def test_id_counters_start_after_existing_rows(tmp_path: Path) -> None:
    """Migration 6 on a database made before it: the counters start at the highest ids."""
    s = SqliteMailstore(tmp_path / "d")
    s.add_domain("example.org")
    a = s.add_account("a@example.org", "h")
    top_box = max(b.id for b in s.list_mailboxes(a.id))
    s.close()
    conn = sqlite3.connect(tmp_path / "d" / "postfach.db")
    conn.execute("DELETE FROM counters WHERE name IN ('account_id', 'mailbox_id')")
    conn.execute("PRAGMA user_version = 5")
    conn.commit()
    conn.close()
    s = SqliteMailstore(tmp_path / "d")
    try:
        b = s.add_account("b@example.org", "h")
        assert b.id == a.id + 1
        assert min(m.id for m in s.list_mailboxes(b.id)) == top_box + 1
    finally:
        s.close()


def test_blob_table_rebuild_keeps_every_message(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Migration 8 (blobs rebuilt as a rowid table) on a store made before it: every message,
    inline or in a file, shared or not, reads back byte for byte and keeps its references."""
    import postfach.store.sqlite as sqlite_store

    full = sqlite_store.MIGRATIONS
    monkeypatch.setattr(sqlite_store, "MIGRATIONS", full[:6])
    s = SqliteMailstore(tmp_path / "d", inline_max=1024)
    s.add_domain("example.org")
    s.add_account("a@example.org", "h")
    s.add_account("b@example.org", "h")
    small, big, shared = msg(1, 500), msg(2, 5000), msg(3, 800)
    deliver(s, ["a@example.org"], small)
    deliver(s, ["a@example.org"], big)
    deliver(s, ["a@example.org", "b@example.org"], shared)
    s.close()
    conn = sqlite3.connect(tmp_path / "d" / "postfach.db")
    assert conn.execute("PRAGMA user_version").fetchone() == (6,)
    conn.close()

    monkeypatch.setattr(sqlite_store, "MIGRATIONS", full)
    s = SqliteMailstore(tmp_path / "d", inline_max=1024)
    try:
        a, b = inbox(s, "a@example.org"), inbox(s, "b@example.org")
        assert [s.read_blob(m.blob) for m in s.list_messages(a)] == [small, big, shared]
        assert [s.read_blob(m.blob) for m in s.list_messages(b)] == [shared]
        assert s.check().clean
        # The shared blob is still counted twice: expunging one copy leaves the other readable.
        s.expunge(a, [m.uid for m in s.list_messages(a)])
        assert [s.read_blob(m.blob) for m in s.list_messages(b)] == [shared]
        assert s.check().clean
        deliver(s, ["a@example.org"], small)  # and new mail goes in as before
        assert [s.read_blob(m.blob) for m in s.list_messages(a)] == [small]
    finally:
        s.close()
    conn = sqlite3.connect(tmp_path / "d" / "postfach.db")
    try:
        assert conn.execute("PRAGMA user_version").fetchone() == (len(full),)
        assert conn.execute("PRAGMA foreign_key_check").fetchall() == []
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    finally:
        conn.close()


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    s = SqliteMailstore(tmp_path / "d")
    s.close()
    conn = sqlite3.connect(tmp_path / "d" / "postfach.db")
    conn.execute("PRAGMA user_version = 99")
    conn.commit()
    conn.close()
    with pytest.raises(StoreError, match="newer"):
        SqliteMailstore(tmp_path / "d")


# ---- IMAP operations ---------------------------------------------------------------------------


def box_id(store: SqliteMailstore, account: str, name: str) -> int:
    acc = store.get_account(account)
    assert acc is not None
    box = store.get_mailbox(acc.id, name)
    assert box is not None
    return box.id


def item(store: SqliteMailstore, data: bytes, flags: Flag = Flag.NONE) -> AppendItem:
    return AppendItem(store.stage(data), flags, ("$Forwarded",), 1_600_000_000)


def test_append_is_all_or_nothing_under_quota(store: SqliteMailstore) -> None:
    store.add_account("a@example.org", "h", quota_bytes=250)
    sent = box_id(store, "a@example.org", "Sent")
    with pytest.raises(OverQuota) as exc:
        store.append(sent, [item(store, msg(1)), item(store, msg(2)), item(store, msg(3))])
    assert exc.value.resource == "STORAGE"
    assert store.list_messages(sent) == []
    metas = store.append(sent, [item(store, msg(1), Flag.SEEN), item(store, msg(2))])
    assert [(m.uid, m.flags, m.keywords) for m in metas] == [
        (1, Flag.SEEN, ("$Forwarded",)), (2, Flag.NONE, ("$Forwarded",)),
    ]  # fmt: skip
    assert store.read_blob(metas[0].blob) == msg(1)
    assert not list(store.tmp_dir.iterdir())


def test_copy_counts_quota_and_move_does_not(store: SqliteMailstore) -> None:
    store.add_account("a@example.org", "h", quota_bytes=350)
    inbox_id = box_id(store, "a@example.org", INBOX)
    archive = box_id(store, "a@example.org", "Archive")
    store.append(inbox_id, [item(store, msg(1), Flag.FLAGGED), item(store, msg(2))])
    assert store.copy_messages(inbox_id, [1], archive) == [(1, 1)]
    [copied] = store.list_messages(archive)
    assert copied.flags == Flag.FLAGGED and copied.internal_date == 1_600_000_000
    with pytest.raises(OverQuota):
        store.copy_messages(inbox_id, [1, 2], archive)
    assert store.move_messages(inbox_id, [1, 2], archive) == [(1, 2), (2, 3)]
    assert store.list_messages(inbox_id) == []
    acc = store.get_account("a@example.org")
    assert acc is not None and (acc.used_bytes, acc.used_messages) == (300, 3)
    changed, vanished = store.changes_since(inbox_id, 0)
    assert changed == [] and vanished == [1, 2]
    assert store.check().clean


def test_store_flags_modes_modseq_and_unchangedsince(store: SqliteMailstore) -> None:
    store.add_account("a@example.org", "h")
    inbox_id = box_id(store, "a@example.org", INBOX)
    store.append(inbox_id, [item(store, msg(1)), item(store, msg(2))])
    base = store.get_mailbox_by_id(inbox_id)
    assert base is not None
    r = store.store_flags(inbox_id, [1, 2], "add", Flag.SEEN, ["Work"])
    assert [(m.uid, m.flags, m.keywords) for m in r.changed] == [
        (1, Flag.SEEN, ("$Forwarded", "Work")), (2, Flag.SEEN, ("$Forwarded", "Work")),
    ]  # fmt: skip
    modseq = r.changed[0].modseq
    assert modseq > base.highestmodseq
    assert store.store_flags(inbox_id, [1], "add", Flag.SEEN, ["work"]).changed == []
    r = store.store_flags(inbox_id, [1], "remove", Flag.SEEN, ["WORK"])
    assert r.changed[0].flags == Flag.NONE and r.changed[0].keywords == ("$Forwarded",)
    r = store.store_flags(inbox_id, [1, 2], "set", Flag.DELETED, [], unchangedsince=modseq)
    assert r.failed == [1] and [m.uid for m in r.changed] == [2]
    changed, _ = store.changes_since(inbox_id, modseq)
    assert {m.uid for m in changed} == {1, 2}
    box = store.get_mailbox_by_id(inbox_id)
    assert box is not None and box.highestmodseq == r.changed[0].modseq


def test_delete_rename_and_subscriptions(store: SqliteMailstore) -> None:
    acc = store.add_account("a@example.org", "h")
    work = store.create_mailbox(acc.id, "Work")
    store.create_mailbox(acc.id, "Work/2024")
    store.append(work, [item(store, msg(1, size=5000))])
    store.set_subscribed(acc.id, "Work", True)
    store.rename_mailbox(acc.id, "Work", "Jobs")
    names = {b.name for b in store.list_mailboxes(acc.id)}
    assert {"Jobs", "Jobs/2024"} <= names and "Work" not in names
    assert "Work" in store.list_subscriptions(acc.id)  # subscriptions are names, kept as is
    with pytest.raises(AlreadyExists):
        store.rename_mailbox(acc.id, "Jobs", "Sent")
    with pytest.raises(StoreError):
        store.delete_mailbox(acc.id, "INBOX")
    store.delete_mailbox(acc.id, "Jobs")
    assert store.get_account_by_id(acc.id) == store.get_account("a@example.org")
    after = store.get_account("a@example.org")
    assert after is not None and after.used_bytes == 0
    assert not list(store.blob_dir.glob("??/??/*"))
    assert store.get_mailbox(acc.id, "Jobs/2024") is not None
    store.set_subscribed(acc.id, "Work", False)
    assert "Work" not in store.list_subscriptions(acc.id)


def test_rename_inbox_moves_messages_and_keeps_uids_fresh(store: SqliteMailstore) -> None:
    acc = store.add_account("a@example.org", "h")
    inbox_id = box_id(store, "a@example.org", INBOX)
    store.append(inbox_id, [item(store, msg(1)), item(store, msg(2))])
    store.rename_mailbox(acc.id, "INBOX", "Old")
    old = box_id(store, "a@example.org", "Old")
    assert [m.uid for m in store.list_messages(old)] == [1, 2]
    assert store.list_messages(inbox_id) == []
    [m] = store.append(inbox_id, [item(store, msg(3))])
    assert m.uid == 3  # never reuses a UID of the same UIDVALIDITY
    assert store.changes_since(inbox_id, 0)[1] == [1, 2]
    assert store.check().clean


def test_counts_and_get_messages(store: SqliteMailstore) -> None:
    store.add_account("a@example.org", "h")
    inbox_id = box_id(store, "a@example.org", INBOX)
    store.append(inbox_id, [item(store, msg(i)) for i in range(5)])
    store.store_flags(inbox_id, [1, 2], "add", Flag.SEEN)
    store.store_flags(inbox_id, [2, 3], "add", Flag.DELETED)
    counts = store.mailbox_counts(inbox_id)
    assert (counts.messages, counts.unseen, counts.deleted) == (5, 3, 2)
    assert (counts.deleted_size, counts.size) == (200, 500)
    assert [m.uid for m in store.get_messages(inbox_id, [5, 3, 99, 3])] == [3, 5]
    assert store.get_messages(inbox_id, range(1, 2000))[-1].uid == 5


def test_full_text_search_indexed_and_not_yet_indexed(tmp_path: Path) -> None:
    s = SqliteMailstore(tmp_path / "fts", index_text=False)
    try:
        s.add_domain("example.org")
        s.add_account("a@example.org", "h")
        inbox_id = box_id(s, "a@example.org", INBOX)
        quoted = b"Subject: Quartalszahlen\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n"
        s.append(inbox_id, [
            item(s, quoted + b"Die Stra=C3=9Fe ist lang.\r\n"),
            item(s, b"Subject: other\r\n\r\nnothing to see\r\n"),
        ])  # fmt: skip
        for indexed in (False, True):
            if indexed:
                assert s.index_pending(10) == 2 and s.index_pending(10) == 0
            # Unicode case folding, as IMAP SEARCH scans (postfach.imap.search): ß is ss.
            assert s.search_text_uids(inbox_id, "BODY", "STRASSE") == {1}
            assert s.search_text_uids(inbox_id, "BODY", "straße") == {1}
            assert s.search_text_uids(inbox_id, "BODY", "quartal") == set()
            assert s.search_text_uids(inbox_id, "TEXT", "QUARTAL") == {1}
            assert s.search_text_uids(inbox_id, "TEXT", "see") == {2}
            # A small mailbox is searched in its own text: short needles are answered too.
            assert s.search_text_uids(inbox_id, "TEXT", "ZA") == {1}
            assert s.search_text_uids(inbox_id, "TEXT", "xq") == set()
        s.expunge(inbox_id, [1])
        conn = sqlite3.connect(s.db_path)
        assert conn.execute("SELECT count(*) FROM fts_docs").fetchone() == (1,)
        conn.close()
    finally:
        s.close()


def test_a_caller_giving_up_does_not_stop_the_writer(store: SqliteMailstore) -> None:
    gate = threading.Event()

    def blocker(conn: sqlite3.Connection, batch: object) -> None:
        gate.wait(10)

    first = store.submit(blocker)
    abandoned = store.submit(store._op_add_domain, "abandoned.example")
    assert abandoned.cancel()  # the caller's client hung up before the op started
    gate.set()
    first.result(10)
    assert not store.is_local_domain("abandoned.example")
    store.add_domain("later.example")  # the writer is still alive
    assert store.is_local_domain("later.example")


def test_disk_full_fails_its_batch_and_the_writer_goes_on(tmp_path: Path) -> None:
    """SQLITE_FULL rolls the whole transaction back by itself (not just the op's savepoint):
    every op of that group fails with DiskFull, blob files it moved into place are removed,
    quota counters are untouched, and the next group commits (the writer is not wedged)."""
    s = SqliteMailstore(tmp_path / "data", inline_max=1_000_000, index_text=False)
    try:
        s.add_domain("example.org")
        acc = s.add_account("a@example.org", "h")
        deliver(s, ["a@example.org"], msg(0))
        (pages,) = s.submit(
            lambda conn, batch: conn.execute("PRAGMA page_count").fetchone()
        ).result(10)
        limit = s.submit(
            lambda conn, batch: conn.execute(f"PRAGMA max_page_count={pages + 8}").fetchone()
        )
        limit.result(10)
        s.inline_max = 1024
        as_file = s.stage(msg(1, size=5000))  # a large message: a file the writer renames
        s.inline_max = 1_000_000
        gate, running = threading.Event(), threading.Event()

        def blocker(conn: sqlite3.Connection, batch: object) -> None:
            running.set()
            gate.wait(10)

        blocked = s.submit(blocker)
        assert running.wait(10)  # the next four ops queue up behind it: one group
        group = [
            s.submit(s._op_deliver, [acc.id], s.stage(msg(2)), 0, INBOX, Flag.NONE),
            s.submit(s._op_deliver, [acc.id], as_file, 0, INBOX, Flag.NONE),
            s.submit(s._op_deliver, [acc.id], s.stage(msg(3, size=400_000)), 0, INBOX, Flag.NONE),
            s.submit(s._op_deliver, [acc.id], s.stage(msg(4)), 0, INBOX, Flag.NONE),
        ]
        gate.set()
        blocked.result(10)
        errors = [f.exception(timeout=10) for f in group]
        assert all(isinstance(e, DiskFull) for e in errors), errors
        assert len(s.list_messages(inbox(s, "a@example.org"))) == 1
        account = s.get_account("a@example.org")
        assert account is not None and account.used_messages == 1
        assert not list(s.blob_dir.glob("??/??/*"))
        assert s.check().clean
        s.submit(lambda conn, batch: conn.execute("PRAGMA max_page_count=1073741823")).result(10)
        assert deliver(s, ["a@example.org"], msg(5, size=400_000)) == [None]
        assert len(s.list_messages(inbox(s, "a@example.org"))) == 2
        assert s.check().clean
    finally:
        s.close()


def test_sweep_removes_what_a_killed_process_left(store: SqliteMailstore) -> None:
    store.add_account("a@example.org", "h")
    deliver(store, ["a@example.org"], msg(1, size=5000))  # a referenced blob file
    kept = list(store.blob_dir.glob("??/??/*"))
    orphan = store.blob_path("ab" * 32)
    orphan.parent.mkdir(parents=True)
    orphan.write_bytes(b"renamed into place, never committed")
    stale = store.tmp_dir / f"{'cd' * 32}.999999999.1.1"
    stale.write_bytes(b"staged by a killed process")
    live = store.tmp_dir / f"{'ef' * 32}.{os.getpid()}.1.1"
    live.write_bytes(b"being staged right now")
    assert not store.check().clean  # the orphan file is drift
    assert store.sweep_leftovers() == (1, 1)
    assert not orphan.exists() and not stale.exists() and live.exists()
    assert list(store.blob_dir.glob("??/??/*")) == kept
    assert store.check().clean


def test_eight_bit_junk_in_a_header_does_not_stall_the_index(tmp_path: Path) -> None:
    # Regression (fuzz/nasty corpus): non-UTF-8 header octets became surrogate escapes in the
    # search text, SQLite refused to encode them, and the indexer retried the same batch forever.
    s = SqliteMailstore(tmp_path / "fts", index_text=False)
    try:
        s.add_domain("example.org")
        s.add_account("a@example.org", "h")
        inbox_id = box_id(s, "a@example.org", INBOX)
        s.append(inbox_id, [
            item(s, b"Subject: \xc3\x28 caf\xe9 junk\r\nX-\xff: \xff\r\n\r\nbody text\r\n"),
            item(s, b"Subject: clean\r\n\r\nsecond body\r\n"),
        ])  # fmt: skip
        assert s.index_pending(10) == 2 and s.index_pending(10) == 0
        assert s.search_text_uids(inbox_id, "TEXT", "junk") == {1}
        assert s.search_text_uids(inbox_id, "BODY", "second") == {2}
    finally:
        s.close()

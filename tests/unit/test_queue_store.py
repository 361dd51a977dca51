"""queue.db: persistence of queued messages and per-recipient retry state."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest

from postfach.errors import StoreError
from postfach.queue.store import MIGRATIONS, QUEUE_DB, NewRecipient, QueueStore


@pytest.fixture
def q(tmp_path: Path) -> QueueStore:
    return QueueStore(tmp_path)


def test_enqueue_is_one_row_per_recipient_and_due_at_once(q: QueueStore) -> None:
    mid = q.enqueue(
        "a@example.org",
        [NewRecipient("x@one.test", "FAILURE", "rfc822;X@one.test"), NewRecipient("y@TWO.test")],
        b"Subject: s\r\n\r\nbody\r\n",
        100.0,
        envid="e1",
        ret="HDRS",
        account="a@example.org",
    )
    [m] = q.messages()
    assert (m.id, m.sender, m.envid, m.ret, m.size) == (mid, "a@example.org", "e1", "HDRS", 20)
    assert [(r.address, r.domain, r.attempts) for r in m.recipients] == [
        ("x@one.test", "one.test", 0), ("y@TWO.test", "two.test", 0),
    ]  # fmt: skip
    assert [r.address for r in q.due(100.0)] == ["x@one.test", "y@TWO.test"]
    assert q.due(99.0) == []
    assert q.message_data(mid) == b"Subject: s\r\n\r\nbody\r\n"


def test_attempt_is_recorded_before_dialling(q: QueueStore) -> None:
    q.enqueue("a@example.org", [NewRecipient("x@one.test")], b"m", 100.0)
    [r] = q.due(100.0)
    q.begin_attempt([(r.id, 550.0)], 100.0)
    [r2] = q.messages()[0].recipients
    assert (r2.attempts, r2.last_attempt, r2.next_attempt) == (1, 100.0, 550.0)
    assert q.due(200.0) == [] and q.next_due() == 550.0
    q.record_reply(r.id, "451 4.3.0 later")
    assert q.messages()[0].recipients[0].last_reply == "451 4.3.0 later"


def test_finish_removes_the_message_with_its_last_recipient(q: QueueStore) -> None:
    mid = q.enqueue("a@e.org", [NewRecipient("x@one.test"), NewRecipient("y@two.test")], b"m", 1)
    ids = [r.id for r in q.due(1)]
    q.finish(ids[:1])
    assert q.message(mid) is not None and len(q.message(mid).recipients) == 1  # type: ignore
    q.finish(ids[1:])
    assert q.message(mid) is None and q.message_data(mid) is None


def test_retry_delete_and_survives_reopen(tmp_path: Path) -> None:
    q = QueueStore(tmp_path)
    mid = q.enqueue("a@e.org", [NewRecipient("x@one.test")], b"m", 1)
    [r] = q.due(1)
    q.begin_attempt([(r.id, 10_000.0)], 1)
    q.close()
    q = QueueStore(tmp_path)  # restart: nothing lost, state kept
    assert q.messages()[0].recipients[0].attempts == 1
    assert q.retry(mid, 5.0) == 1 and q.due(5.0)[0].id == r.id
    assert q.retry(None, 6.0) == 1
    assert q.delete(mid) and not q.delete(mid)
    assert q.messages() == []


def test_sent_copies(q: QueueStore) -> None:
    cid = q.add_sent_copy("a@e.org", "<m@x>", 50.0, b"data")
    assert q.due_sent_copies(49) == [] and q.next_sent_copy() == 50.0
    [c] = q.due_sent_copies(50)
    assert (c.id, c.account, c.message_id, c.data) == (cid, "a@e.org", "<m@x>", b"data")
    q.remove_sent_copy(cid)
    assert q.next_sent_copy() is None


def test_database_settings_and_newer_schema_refused(tmp_path: Path) -> None:
    QueueStore(tmp_path).close()
    conn = sqlite3.connect(tmp_path / QUEUE_DB)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
    conn.execute(f"PRAGMA user_version = {len(MIGRATIONS) + 1}")
    conn.commit()
    conn.close()
    with pytest.raises(StoreError, match="newer"):
        QueueStore(tmp_path)


def test_concurrent_writes_are_group_committed_and_a_failing_one_is_undone_alone(
    tmp_path: Path,
) -> None:
    """Many threads enqueueing at once: every message is stored exactly once, in fewer commits
    than writes (their fsyncs are shared), and one failing operation in a group rolls back
    alone."""
    import threading

    q = QueueStore(tmp_path)
    commits = 0
    real = q._commit_group

    def counting(batch: list[Any]) -> None:
        nonlocal commits
        commits += 1
        real(batch)

    q._commit_group = counting  # type: ignore[method-assign]
    errors: list[BaseException] = []
    start = threading.Barrier(16)

    def writer(n: int) -> None:
        start.wait()
        for i in range(20):
            if n == 0 and i == 10:
                try:
                    q._txn(lambda c: c.execute("INSERT INTO nowhere VALUES (1)"))
                except sqlite3.OperationalError as exc:
                    errors.append(exc)
            q.enqueue("a@example.org", [NewRecipient(f"r{n}.{i}@x.test")], b"m", 1.0)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    addresses = sorted(r.address for m in q.messages() for r in m.recipients)
    assert addresses == sorted(f"r{n}.{i}@x.test" for n in range(16) for i in range(20))
    assert len(errors) == 1 and "nowhere" in str(errors[0])
    assert commits < 16 * 20 + 1
    q.close()
    again = QueueStore(tmp_path)  # and it was all committed
    assert len(again.messages()) == 16 * 20
    again.close()

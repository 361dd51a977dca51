# ruff: noqa: RUF001, RUF003  (dotless i and long s are the point of these tests)
"""The full-text index: a message that cannot be indexed, closing while indexing, and SEARCH
TEXT/BODY giving the same answers with and without the index (Unicode case folding)."""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from postfach.imap.commands import SearchKey
from postfach.imap.search import SearchContext, search
from postfach.mime.stored import Parsed, load_parsed, parse_for_storage
from postfach.store.api import INBOX, MessageMeta
from postfach.store.sqlite import SqliteMailstore


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqliteMailstore]:
    s = SqliteMailstore(tmp_path / "data", index_text=False)
    s.add_domain("example.org")
    s.add_account("alice@example.org", "-")
    yield s
    s.close()


def inbox(store: SqliteMailstore) -> int:
    acc = store.get_account("alice@example.org")
    assert acc is not None
    box = store.get_mailbox(acc.id, INBOX)
    assert box is not None
    return box.id


def put(store: SqliteMailstore, subject: str, body: str) -> None:
    m = (
        f"From: a@example.org\r\nSubject: {subject}\r\nMIME-Version: 1.0\r\n"
        "Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
        f"{body}\r\n"
    ).encode()
    acc = store.get_account("alice@example.org")
    assert acc is not None
    store.deliver([acc.id], store.stage(m, parse_for_storage(m)), 1_700_000_000)


def index_all(store: SqliteMailstore) -> None:
    while store.index_pending(100):
        pass


def poison_text_of(monkeypatch: pytest.MonkeyPatch, marker: str) -> None:
    real = SqliteMailstore._text_of

    def text_of(data: bytes, structure: str | None) -> tuple[str, str]:
        if marker.encode() in data:
            raise RuntimeError("decoder bug")
        return real(data, structure)

    monkeypatch.setattr(SqliteMailstore, "_text_of", staticmethod(text_of))


def count(store: SqliteMailstore, table: str) -> int:
    (n,) = store._reader().execute(f"SELECT count(*) FROM {table}").fetchone()
    return int(n)


def indexed_within(store: SqliteMailstore, wanted: int, seconds: float) -> int:
    """How many messages the indexer thread has indexed, once it reached ``wanted`` or after
    ``seconds``."""
    deadline = time.monotonic() + seconds
    while count(store, "fts_docs") < wanted and time.monotonic() < deadline:
        time.sleep(0.02)
    return count(store, "fts_docs")


def test_a_message_that_cannot_be_indexed_is_skipped_once(
    store: SqliteMailstore, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Before: the indexer stopped at the exception and retried the same batch at every
    wake-up, so nothing after the bad message was ever indexed."""
    poison_text_of(monkeypatch, "POISON")
    put(store, "first", "hello zebrafinch")
    put(store, "bad", "POISON zebrafinch")
    for i in range(40):
        put(store, f"later {i}", "zebrafinch migration")
    with caplog.at_level(logging.WARNING, logger="postfach.store.sqlite"):
        index_all(store)
        assert store.index_pending(100) == 0  # not retried
    assert count(store, "fts_docs") == 41
    assert count(store, "fts_skipped") == 1
    skipped = [r for r in caplog.records if "index_skipped" in r.getMessage()]
    assert len(skipped) == 1
    # SEARCH still answers: every message whose text can be read, not the bad one.
    uids = store.search_text_uids(inbox(store), "TEXT", "ZEBRAFINCH")
    assert uids == {1} | set(range(3, 43))
    # Expunging the bad message forgets it.
    store.expunge(inbox(store), [2])
    assert count(store, "fts_skipped") == 0


def test_an_index_insert_that_fails_is_skipped(
    store: SqliteMailstore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Text SQLite refuses (a lone surrogate) fails that document, not the whole batch."""
    real = SqliteMailstore._text_of

    def text_of(data: bytes, structure: str | None) -> tuple[str, str]:
        headers, body = real(data, structure)
        return (headers, body + "\ud800") if b"SURROGATE" in data else (headers, body)

    monkeypatch.setattr(SqliteMailstore, "_text_of", staticmethod(text_of))
    put(store, "one", "SURROGATE text")
    put(store, "two", "fine text")
    index_all(store)
    assert (count(store, "fts_docs"), count(store, "fts_skipped")) == (1, 1)
    assert store.search_text_uids(inbox(store), "BODY", "fine text") == {2}


def test_the_indexer_thread_goes_on_past_a_bad_message(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    poison_text_of(monkeypatch, "POISON")
    s = SqliteMailstore(tmp_path / "data")
    try:
        s.add_domain("example.org")
        s.add_account("alice@example.org", "-")
        put(s, "bad", "POISON")
        for i in range(60):
            put(s, f"good {i}", "text")
        assert indexed_within(s, 60, 20) == 60
    finally:
        s.close()


def test_close_does_not_wait_for_the_indexer_batch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before: close() waited for the indexer to finish its 25-message batch (and its pause)."""
    real = SqliteMailstore._text_of
    started = threading.Event()

    def slow_text_of(data: bytes, structure: str | None) -> tuple[str, str]:
        started.set()
        time.sleep(0.3)
        return real(data, structure)

    monkeypatch.setattr(SqliteMailstore, "_text_of", staticmethod(slow_text_of))
    s = SqliteMailstore(tmp_path / "data")
    s.add_domain("example.org")
    s.add_account("alice@example.org", "-")
    for i in range(25):
        put(s, f"m {i}", "text")
    assert started.wait(15)
    t0 = time.monotonic()
    s.close()
    assert time.monotonic() - t0 < 2.0  # 25 x 0.3 s = 7.5 s if it finished the batch


# -- case folding: the index must answer exactly what scanning the messages answers ----------

TRICKY_TEXTS = [
    ("Straße", "Die Hauptstraße 5"),
    ("STRASSE", "HAUPTSTRASSE 5"),
    ("İstanbul", "İSTANBUL trip"),
    ("ıstanbul", "DIYARBAKIR ılık"),
    ("Σίσυφος", "ΟΔΟΣ and οδος and οδοσ"),
    ("ﬁle", "the ﬁnal ﬂight"),
    ("Kelvin", "300 \u212a is warm"),
    ("ǅemal", "ǄEMAL ǆemal"),
    ("Ⅻ", "chapter ⅻ"),
    ("ſtraße", "ẞ capital sharp s"),
    ("plain", "nothing special here"),
]
NEEDLES = [
    "strasse", "STRASSE", "straße", "STRAẞE", "traß", "ss", "ß",
    "istanbul", "ISTANBUL", "İstanbul", "i̇stanbul", "ıstanbul", "IL", "ılı",
    "οδος", "ΟΔΟΣ", "οδοσ", "σίσυφοσ", "ΣΊΣΥΦΟΣ",
    "file", "FINAL", "ﬁ", "flight", "kelvin", "300 k", "\u212a", "ǆemal", "Ǆ", "ⅻ", "XII",
    "special", "nothing", "hauptstrasse", "capital sharp", "sharp s", "zz",
]  # fmt: skip


def scan_uids(store: SqliteMailstore, key: str, needle: str) -> set[int]:
    msgs: list[MessageMeta] = store.list_messages(inbox(store))

    def parsed(m: MessageMeta) -> Parsed:
        structure = store.blob_structure(m.blob)
        assert structure is not None
        return load_parsed(structure)

    ctx = SearchContext(
        now=0,
        max_seq=len(msgs),
        max_uid=max(m.uid for m in msgs),
        parsed=parsed,
        data=lambda m: store.read_blob(m.blob),
    )
    return {m.uid for _, m in search(SearchKey(key, needle), list(enumerate(msgs, 1)), ctx)}


def index_uids(store: SqliteMailstore, key: str, needle: str) -> set[int] | None:
    return store.search_text_uids(inbox(store), key, needle)


@pytest.mark.parametrize("strategy", ["own-text", "trigram-index"])
def test_index_and_scan_agree_on_case_folding(
    store: SqliteMailstore, monkeypatch: pytest.MonkeyPatch, strategy: str
) -> None:
    if strategy == "trigram-index":  # as for a mailbox of more than SEARCH_SCAN_MAX messages
        monkeypatch.setattr(store, "SEARCH_SCAN_MAX", 0)
    for subject, body in TRICKY_TEXTS:
        put(store, subject, body)
    expected = {(k, n): scan_uids(store, k, n) for k in ("TEXT", "BODY") for n in NEEDLES}
    assert expected[("TEXT", "strasse")] == {1, 2, 10}  # casefold: ß is ss, ſ is s
    assert expected[("BODY", "ΟΔΟΣ")] == {5}
    for phase in ("not indexed", "indexed"):
        if phase == "indexed":
            index_all(store)
            assert count(store, "fts_docs") == len(TRICKY_TEXTS)
        for (key, needle), want in expected.items():
            got = index_uids(store, key, needle)
            if got is None:  # needle too short for trigrams: the caller scans
                assert strategy == "trigram-index" and len(needle.casefold()) < 3
                continue
            assert got == want, (phase, key, needle)


def test_the_indexer_finds_its_work_in_a_list_not_by_checking_every_blob(
    store: SqliteMailstore,
) -> None:
    """Each stored message is on the indexer's to-do list (a queue in the order of storing)
    until the indexer has indexed or skipped it, or found it expunged; an indexed store's list is
    empty, so a look for work reads nothing. (Before, each look checked every blob of the store:
    half a second of CPU at 105,000 messages.)"""
    put(store, "one", "alpha")
    put(store, "two", "beta")
    put(store, "three", "gamma")
    assert count(store, "fts_queue") == 3
    # Freed before it was indexed: its row stays (delivery and expunge never search the queue
    # by content) until the indexer finds the message gone.
    store.expunge(inbox(store), [2])
    assert count(store, "fts_queue") == 3
    # The oldest first: "one" indexed, the row of "two" dropped, "three" waits.
    assert store.index_pending(1) == 2
    assert count(store, "fts_queue") == 1
    assert store.search_text_uids(inbox(store), "TEXT", "ALPHA") == {1}
    index_all(store)
    assert count(store, "fts_queue") == 0
    assert count(store, "fts_docs") == 2  # "two" was not indexed
    assert store.search_text_uids(inbox(store), "TEXT", "GAMMA") == {3}


def test_content_freed_and_stored_again_while_queued_is_indexed_once(
    store: SqliteMailstore,
) -> None:
    put(store, "same", "heron")
    store.expunge(inbox(store), [1])
    put(store, "same", "heron")  # the same octets: the same blob, listed a second time
    assert count(store, "fts_queue") == 2
    index_all(store)
    assert count(store, "fts_queue") == 0
    assert count(store, "fts_docs") == 1
    assert store.search_text_uids(inbox(store), "TEXT", "HERON") == {2}


def test_upgrading_an_older_store_lists_exactly_the_blobs_not_indexed_yet(
    tmp_path: Path,
) -> None:
    s = SqliteMailstore(tmp_path / "data", index_text=False)
    s.add_domain("example.org")
    s.add_account("alice@example.org", "-")
    put(s, "indexed", "delta")
    assert s.index_pending(100) == 1
    put(s, "not yet", "epsilon")
    put(s, "not yet either", "zeta")
    s.close()
    # The store as schema 9 left it: no to-do list (migration 10 makes one, 11 makes it a queue).
    conn = sqlite3.connect(s.db_path)
    conn.executescript("DROP TABLE fts_queue; PRAGMA user_version = 9;")
    conn.close()
    s = SqliteMailstore(tmp_path / "data", index_text=False)
    try:
        assert count(s, "fts_queue") == 2
        index_all(s)
        assert count(s, "fts_docs") == 3
        assert s.search_text_uids(inbox(s), "TEXT", "ZETA") == {3}
    finally:
        s.close()


def test_a_message_whose_file_is_missing_does_not_stop_the_indexer(tmp_path: Path) -> None:
    """Before, the read error ended every look for work at the same message: the messages
    listed with it were never indexed."""
    s = SqliteMailstore(tmp_path / "data", index_text=False, inline_max=64)
    try:
        s.add_domain("example.org")
        s.add_account("alice@example.org", "-")
        put(s, "lost", "the file of this one goes missing")
        [lost] = s.list_messages(inbox(s))
        s.blob_path(lost.blob).unlink()
        put(s, "fine", "kingfisher")
        index_all(s)
        assert count(s, "fts_queue") == 0
        assert count(s, "fts_skipped") == 1
        assert s.search_text_uids(inbox(s), "TEXT", "KINGFISHER") == {2}
    finally:
        s.close()


def test_mail_another_process_stores_is_indexed_without_waiting_for_the_idle_timer(
    tmp_path: Path,
) -> None:
    """A server's indexer runs in one worker; the others deliver too. Their mail reaches it
    through the change feed: indexed as soon as mail is quiet (not at the indexer's next 5 s
    look), and counted as mail arriving, so the indexer waits while any worker receives."""
    indexing = SqliteMailstore(tmp_path / "data", publish=lambda changes: None)
    other = SqliteMailstore(tmp_path / "data", index_text=False)
    try:
        other.add_domain("example.org")
        other.add_account("alice@example.org", "-")
        time.sleep(0.3)  # the indexer is waiting for work now
        before = indexing._last_added
        put(other, "from the other worker", "text")
        assert indexed_within(indexing, 1, 3) == 1
        assert indexing._last_added > before
    finally:
        other.close()
        indexing.close()


def test_the_indexer_waits_while_mail_keeps_arriving_and_catches_up_after(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Indexing competes with delivery for the writer lock and the CPU: while messages keep
    arriving it indexes only a small batch now and then, and once mail is quiet it indexes
    everything."""
    monkeypatch.setattr(SqliteMailstore, "INDEX_BUSY_EVERY", 60.0)  # no floor batch in this test
    monkeypatch.setattr(SqliteMailstore, "INDEX_QUIET", 1.0)  # a slow delivery is no quiet moment
    s = SqliteMailstore(tmp_path / "data")
    try:
        s.add_domain("example.org")
        s.add_account("alice@example.org", "-")
        for i in range(30):  # 1.5 s of mail, one message every 50 ms
            put(s, f"burst {i}", "text")
            time.sleep(0.05)
        assert count(s, "fts_docs") == 0
        assert indexed_within(s, 30, 10) == 30
    finally:
        s.close()


def test_the_indexer_never_stops_altogether_while_mail_keeps_arriving(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Under mail that never pauses, a small batch still gets indexed every
    `INDEX_BUSY_EVERY` seconds."""
    monkeypatch.setattr(SqliteMailstore, "INDEX_QUIET", 3600.0)  # mail never pauses
    monkeypatch.setattr(SqliteMailstore, "INDEX_BUSY_EVERY", 0.2)
    s = SqliteMailstore(tmp_path / "data")
    try:
        s.add_domain("example.org")
        s.add_account("alice@example.org", "-")
        for i in range(7):
            put(s, f"steady {i}", "text")
        assert indexed_within(s, 7, 10) == 7
        assert s.INDEX_BATCH_BUSY < 7  # so that it took several of the small batches
    finally:
        s.close()


def test_rows_of_expunged_messages_leave_the_queue_in_bulk(store: SqliteMailstore) -> None:
    # While mail keeps arriving the indexer takes only a few messages per look; where mail is
    # fetched and deleted as fast (POP3), the rows of deleted messages must not pile up.
    for i in range(40):
        put(store, f"message {i}", f"word{i}")
    store.expunge(inbox(store), list(range(1, 40)))
    assert count(store, "fts_queue") == 40
    assert store.index_pending(1) == 40  # 39 rows dropped, the last message indexed
    assert count(store, "fts_queue") == 0
    assert store.search_text_uids(inbox(store), "TEXT", "WORD39") == {40}
    # Messages not indexed yet do not hold up the rows of deleted ones behind them.
    for i in range(10):
        put(store, f"kept {i}", f"keep{i}")
    for i in range(30):
        put(store, f"deleted {i}", f"gone{i}")
    store.expunge(inbox(store), list(range(51, 81)))
    assert store.index_pending(1) == 31  # one message indexed, all 30 rows of deleted ones
    assert count(store, "fts_queue") == 9

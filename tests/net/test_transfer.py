"""``postfach import`` / ``postfach export``: mbox and Maildir in and out of an account, with
flags and dates, checked byte for byte against the shared sample mailboxes."""

from __future__ import annotations

import os
import poplib
from collections.abc import Iterator
from pathlib import Path

import pytest
from fetchkit import Setup, fetch, maildir_ids, mid, one_error_line, postfach_box, run_cli

from postfach.app import open_store
from postfach.mailfile import maildir_parse_name, split_mbox
from postfach.mime.structure import normalize_crlf
from postfach.store.api import INBOX, Flag, MessageMeta
from postfach.store.sqlite import SqliteMailstore
from support import PASSWORD, RunningServer

pytestmark = pytest.mark.timeout(120)

DATA = Path(__file__).resolve().parents[3] / "shared" / "data"
TEST_MBOX = DATA / "test.mbox"
TORTURE_MBOX = DATA / "torture.mbox"


@pytest.fixture
def data(tmp_path: Path) -> Iterator[Path]:
    directory = tmp_path / "data"
    store = open_store(directory)
    for name in ("alice", "bob", "carol"):
        store.add_account(f"{name}@localhost", "!no-login", 0, 0)
    store.close()
    yield directory


@pytest.fixture
def store(data: Path) -> Iterator[SqliteMailstore]:
    s = open_store(data)
    try:
        yield s
    finally:
        s.close()


def inbox(store: SqliteMailstore, account: str, mailbox: str = INBOX) -> list[MessageMeta]:
    acc = store.get_account(account)
    assert acc is not None
    mbox = store.get_mailbox(acc.id, mailbox)
    assert mbox is not None
    return store.list_messages(mbox.id)


def contents(store: SqliteMailstore, account: str, mailbox: str = INBOX) -> list[bytes]:
    return [store.read_blob(m.blob) for m in inbox(store, account, mailbox)]


def flags(store: SqliteMailstore, account: str) -> list[tuple[Flag, tuple[str, ...], int]]:
    return [(m.flags, tuple(sorted(m.keywords)), m.internal_date) for m in inbox(store, account)]


def ok(*args: str, data: Path) -> str:
    r = run_cli(*args, data=data)
    assert r.exit_code == 0, r.stderr
    return r.stdout


def mark_some(store: SqliteMailstore, account: str) -> None:
    """Flags as a mail program leaves them: read, answered, flagged, a draft, a keyword."""
    msgs = inbox(store, account)
    mailbox_id = msgs[0].mailbox_id
    uids = [m.uid for m in msgs]
    store.store_flags(mailbox_id, uids[::2], "add", Flag.SEEN)
    store.store_flags(mailbox_id, uids[::3], "add", Flag.ANSWERED)
    store.store_flags(mailbox_id, uids[::5], "add", Flag.FLAGGED, ["$Forwarded"])
    store.store_flags(mailbox_id, uids[1:2], "add", Flag.DRAFT | Flag.DELETED)
    store.store_flags(mailbox_id, uids[7:9], "add", Flag.NONE, ["work", "$Label1"])


def test_the_shared_data_is_there() -> None:
    assert TEST_MBOX.exists(), TEST_MBOX
    assert TORTURE_MBOX.exists(), TORTURE_MBOX


def test_mbox_round_trip_is_byte_identical(
    data: Path, store: SqliteMailstore, tmp_path: Path
) -> None:
    out = ok("import", "alice@localhost", str(TEST_MBOX), data=data)
    assert "imported 200 messages" in out
    original = list(split_mbox(TEST_MBOX.read_bytes()))
    stored = contents(store, "alice@localhost")
    assert stored == [normalize_crlf(m.data) for m in original]
    assert [m.internal_date for m in inbox(store, "alice@localhost")] == [m.date for m in original]
    exported = tmp_path / "out.mbox"
    assert "exported 200 messages" in ok("export", "alice@localhost", str(exported), data=data)
    assert exported.read_bytes() == TEST_MBOX.read_bytes()


def test_flags_travel_through_mbox_and_maildir(
    data: Path, store: SqliteMailstore, tmp_path: Path
) -> None:
    ok("import", "alice@localhost", str(TEST_MBOX), data=data)
    mark_some(store, "alice@localhost")
    expected = flags(store, "alice@localhost")
    assert any(f[0] & Flag.SEEN for f in expected) and any(f[1] for f in expected)

    # mbox: Status / X-Status / X-Keywords, and back.
    mbox = tmp_path / "flags.mbox"
    ok("export", "alice@localhost", str(mbox), data=data)
    text = mbox.read_bytes()
    assert b"\nStatus: RO\n" in text and b"\nX-Status: " in text and b"\nX-Keywords: " in text
    ok("import", "bob@localhost", str(mbox), data=data)
    assert flags(store, "bob@localhost") == expected
    assert contents(store, "bob@localhost") == contents(store, "alice@localhost")

    # Maildir: cur/<unique>:2,<letters>, the file time is the internal date.
    folder = tmp_path / "Maildir"
    ok("export", "alice@localhost", f"{folder}/", data=data)
    names = sorted(os.listdir(folder / "cur"))
    assert len(names) == 200 and not os.listdir(folder / "new")
    letters = {n.partition(":2,")[2] for n in names}
    assert {"S", "RS", "FPRS", "DT"} <= letters
    for n in names:
        assert (folder / "cur" / n).stat().st_mtime == int(n.split(".")[0])
        assert maildir_parse_name(n)[0] == n.partition(":")[0]
    ok("import", "carol@localhost", str(folder), data=data)
    carol = flags(store, "carol@localhost")
    # Maildir has letters for the system flags and $Forwarded only; other keywords stay behind.
    assert [(f, tuple(k for k in kw if k == "$Forwarded"), d) for f, kw, d in expected] == carol
    assert contents(store, "carol@localhost") == contents(store, "alice@localhost")


def test_import_again_skips_what_is_there(data: Path, store: SqliteMailstore) -> None:
    ok("import", "alice@localhost", str(TEST_MBOX), data=data)
    out = ok("import", "alice@localhost", str(TEST_MBOX), data=data)
    assert "imported 0 messages" in out and "200 already there" in out
    assert len(inbox(store, "alice@localhost")) == 200


def test_torture_mbox_into_a_new_folder(data: Path, store: SqliteMailstore, tmp_path: Path) -> None:
    out = ok("import", "alice@localhost", str(TORTURE_MBOX), "--mailbox", "Archive/2024",
             data=data)  # fmt: skip
    assert "imported 40 messages" in out and "alice@localhost/Archive/2024" in out
    stored = contents(store, "alice@localhost", "Archive/2024")
    original = list(split_mbox(TORTURE_MBOX.read_bytes()))
    assert stored == [normalize_crlf(m.data) for m in original]
    exported = tmp_path / "torture.out"
    ok("export", "alice@localhost", str(exported), "--mailbox", "Archive/2024", data=data)
    again = list(split_mbox(exported.read_bytes()))
    assert [normalize_crlf(m.data) for m in again] == stored


def test_mistakes_are_one_line(data: Path, tmp_path: Path) -> None:
    exists = tmp_path / "exists.mbox"
    exists.write_bytes(b"From x Thu Jan  1 00:00:00 1970\nSubject: x\n\nx\n\n")
    not_maildir = tmp_path / "plain-dir"
    not_maildir.mkdir()
    cases = [
        (("import", "nobody@localhost", str(TEST_MBOX)), "no account nobody@localhost"),
        (("import", "alice@localhost", str(not_maildir)), "is not a Maildir"),
        (("export", "alice@localhost", str(exists)), "exists already (use --append"),
        (("export", "alice@localhost", str(tmp_path / "x"), "--mailbox", "Nope"), "no mailbox"),
        (("export", "alice@localhost", str(not_maildir), "--format", "mbox"), "is a directory"),
    ]
    for args, text in cases:
        assert text in one_error_line(run_cli(*args, data=data)), args
    r = run_cli("import", "alice@localhost", str(tmp_path / "missing"), data=data)
    assert r.exit_code != 0
    ok("export", "alice@localhost", str(exists), "--append", data=data)


def test_import_over_quota_stops_cleanly(data: Path, store: SqliteMailstore) -> None:
    store.set_quota("alice@localhost", 0, 50)
    line = one_error_line(run_cli("import", "alice@localhost", str(TEST_MBOX), data=data))
    assert "over its quota (message)" in line
    assert len(inbox(store, "alice@localhost")) == 0  # the batch went in whole or not at all
    assert store.check().clean


def test_imported_mail_is_served_and_fetched_back(server: RunningServer, tmp_path: Path) -> None:
    """mbox -> postfach (running) -> POP3 -> postfach fetch -> Maildir -> another account ->
    mbox: the same bytes at the end."""
    box = postfach_box(server)
    ok("import", box.user, str(TEST_MBOX), data=server.data)
    p = poplib.POP3("127.0.0.1", server.port("pop3"), timeout=30)
    p.user(box.user)
    p.pass_(PASSWORD)
    assert p.stat()[0] == 200
    p.quit()
    setup = Setup(tmp_path)
    dest = Path(setup.add("home", box, policy="delete"))
    r = fetch(setup)
    assert r.exit_code == 0, r.stderr
    assert len(maildir_ids(dest)) == 200 and box.count() == 0
    server.add_user("bob@example.org")
    ok("import", "bob@example.org", str(dest), data=server.data)
    out = tmp_path / "back.mbox"
    ok("export", "bob@example.org", str(out), data=server.data)
    back = {mid(m.data): m.data for m in split_mbox(out.read_bytes())}
    original = {mid(m.data): m.data for m in split_mbox(TEST_MBOX.read_bytes())}
    assert back == original

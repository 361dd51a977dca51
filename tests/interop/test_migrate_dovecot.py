"""``postfach migrate`` from a real Dovecot (Courier-style ``INBOX.`` folders, ``.`` delimiter),
and ``postfach sync``'s keyword letters read back by Dovecot itself."""

from __future__ import annotations

import email
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from dovecot_imap import DovecotImap, chown_tree, dovecot_imap
from imapclient import IMAPClient

from postfach.cli.main import cli
from postfach.client.imap import ImapClient
from postfach.client.sync.engine import Syncer, SyncOptions
from postfach.client.sync.maildir import Maildir
from postfach.client.sync.state import SyncState
from postfach.datadir import open_store
from postfach.mime.structure import normalize_crlf
from support import PASSWORD, RunningServer, message

pytestmark = [pytest.mark.interop, pytest.mark.timeout(180)]

LOCAL = "alice@example.org"
DATE = 1_650_000_000


@pytest.fixture
def dovecot() -> Iterator[DovecotImap]:
    with dovecot_imap(courier_layout=True) as d:
        yield d


def imap(d: DovecotImap) -> IMAPClient:
    c = IMAPClient("127.0.0.1", port=d.port, ssl=False, timeout=30)
    c.login(d.user, d.password)
    return c


def fill(d: DovecotImap) -> dict[str, list[tuple[bytes, set[bytes]]]]:
    """Folders (remote names) → (message, flags) appended there."""
    import datetime

    c = imap(d)
    plan: dict[str, list[tuple[bytes, set[bytes]]]] = {
        "INBOX": [(message(f"in {i}"), set()) for i in range(5)]
        + [(message("tagged"), {b"\\Seen", b"$Forwarded", b"Work"})],
        "INBOX.Sent Items": [(message("sent 1"), {b"\\Seen"})],
        "INBOX.Drafts": [(message("draft"), {b"\\Draft"})],
        "INBOX.Archiv.2023": [(message("old", size=70_000), {b"\\Seen", b"\\Flagged"})],
    }
    for folder, msgs in plan.items():
        if folder != "INBOX":
            if not c.folder_exists(folder):
                c.create_folder(folder)
            c.subscribe_folder(folder)
        for i, (data, flags) in enumerate(msgs):
            when = datetime.datetime.fromtimestamp(DATE + i, tz=datetime.UTC)
            c.append(folder, data, flags=sorted(flags), msg_time=when)
    c.logout()
    return plan


@pytest.fixture
def local(tmp_path: Path) -> Path:
    data = tmp_path / "local"
    store = open_store(data)
    store.add_domain("example.org")
    store.add_account(LOCAL, "!no-login", 0, 0)
    store.close()
    return data


def test_migrate_from_dovecot(dovecot: DovecotImap, local: Path, tmp_path: Path) -> None:
    plan = fill(dovecot)
    pw = tmp_path / "pw"
    pw.write_text(dovecot.password + "\n")
    pw.chmod(0o600)
    args = ["--data", str(local), "migrate", "--from", f"imap://alice@127.0.0.1:{dovecot.port}",
            "--tls", "none", "--to", LOCAL, "--password-file", str(pw)]  # fmt: skip
    r = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert r.exit_code == 0, r.output
    assert ", 9 messages" in r.stdout
    where = {"INBOX": "INBOX", "INBOX.Sent Items": "Sent", "INBOX.Drafts": "Drafts",
             "INBOX.Archiv.2023": "Archiv/2023"}  # fmt: skip
    store = open_store(local)
    try:
        acc = store.get_account(LOCAL)
        assert acc is not None
        for remote, msgs in plan.items():
            box = store.get_mailbox(acc.id, where[remote])
            assert box is not None, where[remote]
            got = {}
            for m in store.list_messages(box.id):
                data = store.read_blob(m.blob)
                names = {n.encode() for n in [*m.flags.names(), *m.keywords]}
                got[email.message_from_bytes(data)["Subject"]] = (data, names, m.internal_date)
            assert len(got) == len(msgs)
            for i, (data, flags) in enumerate(msgs):
                subject = email.message_from_bytes(data)["Subject"]
                assert got[subject][0] == normalize_crlf(data)
                assert got[subject][1] == flags
                assert got[subject][2] == DATE + i
        subs = set(store.list_subscriptions(acc.id))
        assert {"Sent", "Drafts", "Archiv/2023"} <= subs
    finally:
        store.close()
    # Incremental: one new message on the old server, and nothing else is copied again.
    c = imap(dovecot)
    c.append("INBOX", message("after the first run"))
    c.logout()
    r = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert r.exit_code == 0, r.output
    assert ", 1 messages" in r.stdout and "9 copied by an earlier run" in r.stdout


@pytest.fixture
def alice(server: RunningServer) -> RunningServer:
    server.add_user(LOCAL)
    return server


def test_dovecot_reads_the_keywords_sync_wrote(alice: RunningServer, tmp_path: Path) -> None:
    """A Maildir written by ``postfach sync`` served by Dovecot: the same keywords."""
    c = IMAPClient("127.0.0.1", port=alice.port("imap"), ssl=False, timeout=30)
    c.login(LOCAL, PASSWORD)
    c.append("INBOX", message("one"), flags=[b"$Forwarded", b"Work", b"\\Seen"])
    c.append("INBOX", message("two"), flags=[b"$Junk"])
    c.logout()
    root = tmp_path / "Mail"

    def sync() -> None:
        client = ImapClient("127.0.0.1", alice.port("imap"), tls="none")
        client.connect()
        client.login(LOCAL, PASSWORD)
        state = SyncState(tmp_path / "state.db")
        syncer = Syncer(client, Maildir(root), state, SyncOptions())
        try:
            syncer.run()
        finally:
            syncer.close()
            client.logout()
            state.close()

    sync()
    os.chmod(tmp_path, 0o755)
    chown_tree(root)
    with dovecot_imap(maildir=root) as d:
        dc = imap(d)
        dc.select_folder("INBOX")
        got = dc.fetch(dc.search("ALL"), ["FLAGS", "BODY.PEEK[HEADER.FIELDS (SUBJECT)]"])
        by_subject = {
            email.message_from_bytes(v[b"BODY[HEADER.FIELDS (SUBJECT)]"])["Subject"]: (uid, v)
            for uid, v in got.items()
        }
        flags = {s: set(v[b"FLAGS"]) - {b"\\Recent"} for s, (_, v) in by_subject.items()}
        assert flags["one"] == {b"$Forwarded", b"Work", b"\\Seen"}
        assert flags["two"] == {b"$Junk"}
        # The other way: Dovecot tags a message (writing its own letter into dovecot-keywords)
        # and postfach sync takes the keyword to the server.
        dc.add_flags([by_subject["two"][0]], [b"Later"])
        dc.logout()
    sync()
    c = IMAPClient("127.0.0.1", port=alice.port("imap"), ssl=False, timeout=30)
    c.login(LOCAL, PASSWORD)
    c.select_folder("INBOX", readonly=True)
    uid = c.search(["SUBJECT", "two"])[0]
    assert set(c.get_flags([uid])[uid]) == {b"$Junk", b"Later"}
    c.logout()

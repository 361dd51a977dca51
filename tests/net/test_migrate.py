"""``postfach migrate`` with postfach itself as the remote server (a second server in a thread).

The remote account gets folders (nested, special-use, subscribed), flags, keywords and dates;
the migration is compared message by message: bytes, flags, keywords, INTERNALDATE.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from fetchkit import run_cli

from postfach.client.imap import ImapClient
from postfach.client.migrate.run import Migrator
from postfach.client.migrate.state import MigrateState
from postfach.datadir import open_store
from postfach.mime.stored import parse_for_storage
from postfach.mime.structure import normalize_crlf
from postfach.store.api import Flag
from postfach.store.sqlite import AppendItem, SqliteMailstore
from support import PASSWORD, RunningServer, message

pytestmark = pytest.mark.timeout(120)

REMOTE = "old@example.net"
LOCAL = "alice@example.org"
DATE = 1_600_000_000


def put(
    store: SqliteMailstore,
    account: str,
    folder: str,
    datas: list[bytes],
    flags: Flag = Flag.NONE,
    keywords: tuple[str, ...] = (),
    date: int = DATE,
) -> None:
    acc = store.get_account(account)
    assert acc is not None
    box = store.get_mailbox(acc.id, folder)
    mid = box.id if box is not None else store.create_mailbox(acc.id, folder)
    items = []
    for i, d in enumerate(datas):
        d = normalize_crlf(d)
        items.append(AppendItem(store.stage(d, parse_for_storage(d)), flags, keywords, date + i))
    store.append(mid, items)


def snapshot(store: SqliteMailstore, account: str) -> dict[str, list[tuple[bytes, str, int]]]:
    """Folder → sorted (bytes, flags and keywords, internal date)."""
    acc = store.get_account(account)
    assert acc is not None
    out = {}
    for box in store.list_mailboxes(acc.id):
        msgs = store.list_messages(box.id)
        if not msgs:
            continue
        out[box.name] = sorted(
            (store.read_blob(m.blob), " ".join(sorted([*m.flags.names(), *m.keywords])),
             m.internal_date)
            for m in msgs
        )  # fmt: skip
    return out


@pytest.fixture
def remote(server: RunningServer) -> RunningServer:
    server.add_user(REMOTE)
    s = server.store
    put(s, REMOTE, "INBOX", [message(f"in {i}") for i in range(12)])
    put(s, REMOTE, "INBOX", [message("seen one")], Flag.SEEN | Flag.ANSWERED, ("$Forwarded",))
    put(s, REMOTE, "Sent", [message(f"sent {i}") for i in range(3)], Flag.SEEN)
    put(s, REMOTE, "Work", [message("work a"), message("work b")], Flag.FLAGGED, ("Work", "$Junk"))
    put(s, REMOTE, "Work/2024", [message("old work", size=200_000)], Flag.SEEN)
    no_id = message("no id").replace(b"Message-ID: <no.id@remote.example>\r\n", b"")
    put(s, REMOTE, "Reisen", [no_id])
    acc = s.get_account(REMOTE)
    assert acc is not None
    s.set_subscribed(acc.id, "Work", True)
    return server


@pytest.fixture
def local(tmp_path: Path) -> Iterator[Path]:
    data = tmp_path / "local"
    store = open_store(data)
    store.add_domain("example.org")
    store.add_account(LOCAL, "!no-login", 0, 0)
    store.close()
    yield data


@pytest.fixture
def pwfile(tmp_path: Path) -> Path:
    p = tmp_path / "pw"
    p.write_text(PASSWORD + "\n")
    p.chmod(0o600)
    return p


def migrate(remote: RunningServer, local: Path, pwfile: Path, *extra: str):  # type: ignore[no-untyped-def]
    return run_cli(
        "migrate", "--from", f"imap://{REMOTE}@127.0.0.1:{remote.port('imap')}", "--tls", "none",
        "--to", LOCAL, "--password-file", str(pwfile), *extra, data=local,
    )  # fmt: skip


def local_snapshot(local: Path) -> dict[str, list[tuple[bytes, str, int]]]:
    store = open_store(local)
    try:
        return snapshot(store, LOCAL)
    finally:
        store.close()


def test_every_folder_with_flags_keywords_dates_and_subscriptions(
    remote: RunningServer, local: Path, pwfile: Path
) -> None:
    r = migrate(remote, local, pwfile)
    assert r.exit_code == 0, r.output
    want = snapshot(remote.store, REMOTE)
    assert local_snapshot(local) == want
    assert sum(len(v) for v in want.values()) == 20
    assert "migrated 9 folders (3 created), 20 messages" in r.stdout
    assert "subscribed: " in r.stdout and "Work" in r.stdout
    store = open_store(local)
    try:
        acc = store.get_account(LOCAL)
        assert acc is not None
        assert "Work" in store.list_subscriptions(acc.id)
        sent = store.get_mailbox(acc.id, "Sent")
        assert sent is not None and sent.special_use == "\\Sent"
        assert acc.used_messages == 20
    finally:
        store.close()
    # The remote account was only read: \Seen was not set by the copy.
    racc = remote.store.get_account(REMOTE)
    assert racc is not None
    inbox = remote.store.get_mailbox(racc.id, "INBOX")
    assert inbox is not None
    assert sum(not m.flags & Flag.SEEN for m in remote.store.list_messages(inbox.id)) == 12


def test_second_run_copies_only_what_is_new(
    remote: RunningServer, local: Path, pwfile: Path
) -> None:
    assert migrate(remote, local, pwfile).exit_code == 0
    put(remote.store, REMOTE, "INBOX", [message("late 1"), message("late 2")])
    put(remote.store, REMOTE, "New Folder", [message("brand new")])
    r = migrate(remote, local, pwfile)
    assert r.exit_code == 0, r.output
    assert ", 3 messages" in r.stdout
    assert "skipped: 20 copied by an earlier run, 0 already there" in r.stdout
    assert local_snapshot(local) == snapshot(remote.store, REMOTE)
    r = migrate(remote, local, pwfile)
    assert ", 0 messages" in r.stdout and "23 copied by an earlier run" in r.stdout


def test_lost_state_or_a_crash_before_recording_copies_nothing_twice(
    remote: RunningServer, local: Path, pwfile: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A run killed after the store committed a batch but before the state recorded it.
    calls = {"n": 0}
    real = MigrateState.record

    def crash(self: MigrateState, *args: object, **kw: object) -> None:
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        real(self, *args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(MigrateState, "record", crash)
    r = migrate(remote, local, pwfile)
    assert r.exit_code == 130
    monkeypatch.setattr(MigrateState, "record", real)
    partial = local_snapshot(local)
    assert 0 < sum(len(v) for v in partial.values()) < 20
    r = migrate(remote, local, pwfile)
    assert r.exit_code == 0, r.output
    assert local_snapshot(local) == snapshot(remote.store, REMOTE)
    # The state gone altogether: everything is found by Message-ID + size (or, without a
    # Message-ID, by its bytes).
    (local / "migrate.db").unlink()
    r = migrate(remote, local, pwfile)
    assert r.exit_code == 0, r.output
    assert ", 0 messages" in r.stdout and "20 already there" in r.stdout
    assert local_snapshot(local) == snapshot(remote.store, REMOTE)


def test_uidvalidity_change_on_the_remote_side_duplicates_nothing(
    remote: RunningServer, local: Path, pwfile: Path
) -> None:
    assert migrate(remote, local, pwfile).exit_code == 0
    s = remote.store
    acc = s.get_account(REMOTE)
    assert acc is not None
    box = s.get_mailbox(acc.id, "Work")
    assert box is not None
    kept = [(s.read_blob(m.blob), m.flags, m.keywords, m.internal_date)
            for m in s.list_messages(box.id)]  # fmt: skip
    s.expunge(box.id, [m.uid for m in s.list_messages(box.id)])
    s.rename_mailbox(acc.id, "Work", "Work-old")
    s.rename_mailbox(acc.id, "Work-old/2024", "Work/2024")
    for data, fl, kw, when in kept:
        put(s, REMOTE, "Work", [data], fl, kw, when)
    put(s, REMOTE, "Work", [message("work c")])
    r = migrate(remote, local, pwfile)
    assert r.exit_code == 0, r.output
    assert "UIDVALIDITY changed" in r.stdout
    snap = local_snapshot(local)
    assert [m[0] for m in snap["Work"]] == sorted(
        [kept[0][0], kept[1][0], normalize_crlf(message("work c"))]
    )


def test_quota_too_small_refuses_before_copying_anything(
    remote: RunningServer, local: Path, pwfile: Path
) -> None:
    store = open_store(local)
    store.set_quota(LOCAL, 100_000, 0)
    store.close()
    r = migrate(remote, local, pwfile)
    assert r.exit_code == 1
    assert re.search(r"error: quota: .* free of its .* quota, the migration needs", r.stderr)
    assert "Nothing was copied" in r.stderr
    assert local_snapshot(local) == {}


def test_dry_run_writes_nothing(remote: RunningServer, local: Path, pwfile: Path) -> None:
    r = migrate(remote, local, pwfile, "--dry-run")
    assert r.exit_code == 0, r.output
    assert "dry run: would copy 20 messages" in r.stdout
    assert local_snapshot(local) == {}
    assert not (local / "migrate.db").exists()
    store = open_store(local)
    try:
        acc = store.get_account(LOCAL)
        assert acc is not None
        assert store.get_mailbox(acc.id, "Work") is None
    finally:
        store.close()


def test_clear_errors(remote: RunningServer, local: Path, pwfile: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad"
    bad.write_text("wrong\n")
    bad.chmod(0o600)
    r = migrate(remote, local, bad)
    assert r.exit_code == 1 and "postfach: error: 127.0.0.1: login: NO" in r.stderr
    r = run_cli("migrate", "--from", "imaps://u:secret@h", "--to", LOCAL, "--password-file",
                str(pwfile), data=local)  # fmt: skip
    assert r.exit_code == 1 and "passwords do not belong on the command line" in r.stderr
    r = run_cli("migrate", "--from", f"imap://{REMOTE}@127.0.0.1:1", "--to", "nobody@example.org",
                "--password-file", str(pwfile), data=local)  # fmt: skip
    assert r.exit_code == 1 and "no account nobody@example.org" in r.stderr
    # TLS is verified by default: postfach's self-signed certificate is refused.
    r = run_cli("migrate", "--from", f"imaps://{REMOTE}@127.0.0.1:{remote.port('imaps')}",
                "--to", LOCAL, "--password-file", str(pwfile), data=local)  # fmt: skip
    assert r.exit_code == 1 and "certificate" in r.stderr.lower()
    assert local_snapshot(local) == {}


def test_fingerprint_pin(remote: RunningServer, local: Path, pwfile: Path) -> None:
    from postfach.tls import fingerprint

    fp = "SHA256:" + fingerprint(remote.data / "tls" / "cert.pem")
    # The password from a command this time.
    r = run_cli("migrate", "--from", f"imaps://{REMOTE}@127.0.0.1:{remote.port('imaps')}",
                "--to", LOCAL, "--password-command", f"cat {pwfile}", "--fingerprint", fp,
                data=local)  # fmt: skip
    assert r.exit_code == 0, r.output
    assert local_snapshot(local) == snapshot(remote.store, REMOTE)


def test_migrator_api_reports_plan(remote: RunningServer, local: Path) -> None:
    c = ImapClient("127.0.0.1", remote.port("imap"), tls="none")
    c.connect()
    c.login(REMOTE, PASSWORD)
    store = open_store(local)
    state = MigrateState(local / "migrate.db", "x", LOCAL)
    try:
        acc = store.get_account(LOCAL)
        assert acc is not None
        report = Migrator(c, store, acc, state).survey()
        by = {f.remote: f for f in report.folders}
        assert by["Sent"].local == "Sent" and by["Sent"].map.why == "special-use \\Sent"
        assert by["Work/2024"].local == "Work/2024"
        assert report.to_copy == 20
        assert by["Work/2024"].plan.bytes > 200_000
    finally:
        c.logout()
        state.close()
        store.close()


def test_account_from_sync_toml(
    remote: RunningServer, local: Path, pwfile: Path, tmp_path: Path
) -> None:
    config = tmp_path / "sync.toml"
    config.write_text(f"""\
[account.old]
host = "127.0.0.1"
port = {remote.port("imap")}
tls = "none"
user = "{REMOTE}"
password_file = "{pwfile}"
maildir = "{tmp_path / "unused"}"
""")
    r = run_cli("migrate", "--sync-account", "old", "--config", str(config), "--to", LOCAL,
                data=local)  # fmt: skip
    assert r.exit_code == 0, r.output
    assert local_snapshot(local) == snapshot(remote.store, REMOTE)
    r = run_cli("migrate", "--sync-account", "nope", "--config", str(config), "--to", LOCAL,
                data=local)  # fmt: skip
    assert r.exit_code == 1 and "no account 'nope'" in r.stderr
    r = run_cli("migrate", "--sync-account", "old", "--config", str(config), "--from",
                "imaps://x@y", "--to", LOCAL, data=local)  # fmt: skip
    assert r.exit_code == 1 and "drop --from" in r.stderr

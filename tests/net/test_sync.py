"""``postfach sync`` against a real postfach IMAP server: two devices, every kind of change.

"Device" = a Maildir plus its state file, synced by `postfach.client.sync` over a real socket.
The "other client" that changes things on the server is imapclient, independent of our client.
"""

from __future__ import annotations

import email
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from imapclient import IMAPClient

from postfach.cli.main import cli
from postfach.client.imap import CommandFailed, ImapClient, ImapError
from postfach.client.sync.engine import Syncer, SyncOptions, SyncReport, WatchLimits, watch
from postfach.client.sync.maildir import ID_FILE, Maildir
from postfach.client.sync.names import dir_for_folder, split_filename
from postfach.client.sync.plan import Mode
from postfach.client.sync.state import SyncState
from postfach.tls import fingerprint
from support import PASSWORD, RunningServer, message

pytestmark = pytest.mark.timeout(120)

ALICE = "alice@example.org"
#: A server without the extensions the fast paths use: the full-comparison fallback.
PLAIN = ("QRESYNC", "CONDSTORE", "LIST-STATUS", "OBJECTID", "UIDPLUS", "MULTIAPPEND",
         "LITERAL+", "SASL-IR")  # fmt: skip
PROFILES = {"extensions": (), "plain": PLAIN}


@pytest.fixture(params=list(PROFILES))
def profile(request: pytest.FixtureRequest) -> tuple[str, ...]:
    return PROFILES[request.param]


class Device:
    """One Maildir + its sync state, synced with the server like a laptop or phone would."""

    def __init__(self, srv: RunningServer, root: Path, ignore: tuple[str, ...] = ()) -> None:
        self.srv = srv
        self.root = root
        self.state_path = root.parent / (root.name + ".postfach-sync.db")
        self.ignore = ignore
        self.last: ImapClient | None = None

    def client(self) -> ImapClient:
        c = ImapClient("127.0.0.1", self.srv.port("imap"), tls="none", ignore=self.ignore)
        c.connect()
        c.login(ALICE, PASSWORD)
        return c

    def sync(self, mode: Mode = Mode.SYNC, batch: int = 250) -> SyncReport:
        client = self.client()
        state = SyncState(self.state_path)
        syncer = Syncer(client, Maildir(self.root), state, SyncOptions(mode, batch))
        try:
            report = syncer.run()
        finally:
            syncer.close()
            client.logout()
            state.close()
        self.last = client
        assert not report.errors, report.errors
        return report

    def path(self, folder: str) -> Path:
        return self.root / dir_for_folder(folder)

    def files(self, folder: str) -> dict[str, Path]:
        """Subject → file."""
        out: dict[str, Path] = {}
        for sub in ("new", "cur"):
            d = self.path(folder) / sub
            if not d.is_dir():
                continue
            for p in d.iterdir():
                subject = email.message_from_bytes(p.read_bytes())["Subject"]
                assert subject not in out, f"duplicate {subject!r} in {folder}"
                out[subject] = p
        return out

    def messages(self) -> dict[str, dict[str, str]]:
        """Folder → subject → Maildir flag letters (D F R S T only)."""
        out: dict[str, dict[str, str]] = {}
        subfolders = [p.name for p in self.root.iterdir() if p.name.startswith(".") and p.is_dir()]
        folders = ["INBOX", *sorted(subfolders)]
        for d in folders:
            name = "INBOX" if d == "INBOX" else d[1:].replace(".", "/")
            out[name] = {
                s: "".join(sorted(c for c in split_filename(p.name)[1] if c in "DFRST"))
                for s, p in self.files(name).items()
            }
        return out

    def write(self, folder: str, subject: str, flags: str = "", body: str = "Hi.\n") -> Path:
        """Write a message as a mail program does: tmp, then cur with its flags."""
        d = self.path(folder)
        for sub in ("cur", "new", "tmp"):
            (d / sub).mkdir(parents=True, exist_ok=True)
        data = message(subject, body.replace("\n", "\r\n")).replace(b"\r\n", b"\n")
        unique = f"{time.time_ns()}.M1P{os.getpid()}.test{subject.replace(' ', '_')}"
        tmp = d / "tmp" / unique
        tmp.write_bytes(data)
        final = d / "cur" / f"{unique}:2,{flags}"
        os.rename(tmp, final)
        return final

    def set_flags(self, folder: str, subject: str, flags: str) -> None:
        p = self.files(folder)[subject]
        unique, _ = split_filename(p.name)
        os.rename(p, self.path(folder) / "cur" / f"{unique}:2,{flags}")

    def delete(self, folder: str, subject: str) -> None:
        self.files(folder)[subject].unlink()


class Other:
    """Another IMAP client (imapclient) changing the server."""

    def __init__(self, srv: RunningServer) -> None:
        self.c = IMAPClient("127.0.0.1", port=srv.port("imap"), ssl=False, timeout=30)
        self.c.login(ALICE, PASSWORD)

    def close(self) -> None:
        self.c.logout()

    def uid(self, folder: str, subject: str) -> int:
        self.c.select_folder(folder)
        found = self.c.search(["SUBJECT", subject])
        assert len(found) == 1, (folder, subject, found)
        return int(found[0])

    def append(self, folder: str, subject: str, flags: tuple[bytes, ...] = ()) -> None:
        self.c.append(folder, message(subject), flags=flags)

    def add_flags(self, folder: str, subject: str, flags: list[bytes]) -> None:
        uid = self.uid(folder, subject)
        self.c.add_flags([uid], flags)

    def remove_flags(self, folder: str, subject: str, flags: list[bytes]) -> None:
        uid = self.uid(folder, subject)
        self.c.remove_flags([uid], flags)

    def expunge(self, folder: str, subject: str) -> None:
        uid = self.uid(folder, subject)
        self.c.add_flags([uid], [b"\\Deleted"])
        self.c.uid_expunge([uid])

    def messages(self) -> dict[str, dict[str, str]]:
        letters = {b"\\draft": "D", b"\\flagged": "F", b"\\answered": "R", b"\\seen": "S",
                   b"\\deleted": "T"}  # fmt: skip
        out: dict[str, dict[str, str]] = {}
        for _flags, _delim, name in self.c.list_folders():
            self.c.select_folder(name, readonly=True)
            uids = self.c.search("ALL")
            got = (
                self.c.fetch(uids, ["FLAGS", "BODY.PEEK[HEADER.FIELDS (SUBJECT)]"]) if uids else {}
            )
            box: dict[str, str] = {}
            for data in got.values():
                header = data[b"BODY[HEADER.FIELDS (SUBJECT)]"]
                subject = email.message_from_bytes(header)["Subject"]
                assert subject not in box, f"duplicate {subject!r} in {name} on the server"
                box[subject] = "".join(
                    sorted(letters[f.lower()] for f in data[b"FLAGS"] if f.lower() in letters)
                )
            out[name] = box
        return out


@pytest.fixture
def alice(server: RunningServer) -> RunningServer:
    server.add_user(ALICE)
    return server


@pytest.fixture
def other(alice: RunningServer) -> Iterator[Other]:
    o = Other(alice)
    yield o
    o.close()


def deliver(srv: RunningServer, *subjects: str) -> None:
    for s in subjects:
        srv.send([ALICE], message(s))


def non_empty(view: dict[str, dict[str, str]]) -> dict[str, dict[str, str]]:
    return {k: v for k, v in view.items() if v}


# ---- new mail both ways -----------------------------------------------------------------------


def test_new_mail_both_ways_and_sent_reaches_the_second_device(
    alice: RunningServer, other: Other, tmp_path: Path, profile: tuple[str, ...]
) -> None:
    deliver(alice, "one", "two", "three")
    laptop = Device(alice, tmp_path / "laptop", profile)
    phone = Device(alice, tmp_path / "phone", profile)
    r = laptop.sync()
    assert r.folders["INBOX"].downloaded == 3
    assert laptop.messages()["INBOX"] == {"one": "", "two": "", "three": ""}
    assert {"Sent", "Drafts", "Trash"} <= set(laptop.messages())

    # The laptop's mail program saves a sent message in the local Sent folder.
    laptop.write("Sent", "my reply", "S")
    laptop.write("INBOX", "saved locally")
    r = laptop.sync()
    assert r.folders["Sent"].uploaded == 1 and r.folders["INBOX"].uploaded == 1
    assert other.messages()["Sent"] == {"my reply": "S"}

    # The phone sees the whole mailbox, Sent included.
    phone.sync()
    assert (
        non_empty(phone.messages()) == non_empty(laptop.messages()) == non_empty(other.messages())
    )
    assert phone.messages()["Sent"] == {"my reply": "S"}

    # Nothing changed: nothing moves, and nothing was copied twice.
    time.sleep(0.05)
    r = laptop.sync()
    assert sum(f.changes for f in r.folders.values()) == 0
    assert non_empty(laptop.messages()) == non_empty(other.messages())


def test_downloaded_files_are_lf_and_keep_the_internal_date(
    alice: RunningServer, other: Other, tmp_path: Path
) -> None:
    other.c.append("INBOX", message("dated"), msg_time=None)
    dev = Device(alice, tmp_path / "d")
    dev.sync()
    p = dev.files("INBOX")["dated"]
    data = p.read_bytes()
    assert b"\r\n" not in data and data.count(b"\n") > 3
    assert abs(p.stat().st_mtime - time.time()) < 120


# ---- flags ------------------------------------------------------------------------------------


def test_flags_both_ways(
    alice: RunningServer, other: Other, tmp_path: Path, profile: tuple[str, ...]
) -> None:
    deliver(alice, "a", "b", "c")
    dev = Device(alice, tmp_path / "d", profile)
    dev.sync()
    other.add_flags("INBOX", "a", [b"\\Flagged", b"\\Seen"])
    dev.set_flags("INBOX", "b", "RS")
    dev.set_flags("INBOX", "c", "DT")
    r = dev.sync()
    assert r.folders["INBOX"].flags_local == 1 and r.folders["INBOX"].flags_server == 2
    want = {"a": "FS", "b": "RS", "c": "DT"}
    assert dev.messages()["INBOX"] == want
    assert other.messages()["INBOX"] == want
    other.remove_flags("INBOX", "a", [b"\\Seen"])
    dev.set_flags("INBOX", "b", "")
    dev.sync()
    want = {"a": "F", "b": "", "c": "DT"}
    assert dev.messages()["INBOX"] == want == other.messages()["INBOX"]


def test_conflicting_flag_changes_merge_per_flag(
    alice: RunningServer, other: Other, tmp_path: Path, profile: tuple[str, ...]
) -> None:
    """The documented rule: per flag, a change on either side beats no change; changes to
    different flags are all kept; the same change on both sides is no conflict."""
    deliver(alice, "x", "y")
    dev = Device(alice, tmp_path / "d", profile)
    dev.sync()
    other.add_flags("INBOX", "x", [b"\\Seen", b"\\Flagged"])
    other.add_flags("INBOX", "y", [b"\\Seen"])
    dev.sync()
    assert dev.messages()["INBOX"] == {"x": "FS", "y": "S"}
    # Base x = {F, S}. Locally: \Seen off, \Deleted on. Server: \Flagged off, \Answered on.
    dev.set_flags("INBOX", "x", "FT")
    other.remove_flags("INBOX", "x", [b"\\Flagged"])
    other.add_flags("INBOX", "x", [b"\\Answered"])
    # Base y = {S}. Both sides mark it \Flagged; only the server removes \Seen.
    dev.set_flags("INBOX", "y", "FS")
    other.add_flags("INBOX", "y", [b"\\Flagged"])
    other.remove_flags("INBOX", "y", [b"\\Seen"])
    dev.sync()
    want = {"x": "RT", "y": "F"}
    assert dev.messages()["INBOX"] == want
    assert other.messages()["INBOX"] == want


def test_same_message_on_both_sides_without_state_is_paired_with_union_of_flags(
    alice: RunningServer, other: Other, tmp_path: Path
) -> None:
    """A Maildir that already holds the server's mail (a restored backup, a lost state file):
    no duplicates either way; flags are the union."""
    deliver(alice, "kept")
    other.add_flags("INBOX", "kept", [b"\\Seen"])
    dev = Device(alice, tmp_path / "d")
    dev.sync()
    dev.set_flags("INBOX", "kept", "F")  # offline change ...
    dev.state_path.unlink()  # ... and the state file is lost
    r = dev.sync()
    assert r.folders["INBOX"].paired == 1 and r.folders["INBOX"].downloaded == 0
    assert dev.messages()["INBOX"] == {"kept": "FS"} == other.messages()["INBOX"]


def test_uploads_without_uidplus_are_paired_not_downloaded_again(
    alice: RunningServer, other: Other, tmp_path: Path
) -> None:
    dev = Device(alice, tmp_path / "d", ("UIDPLUS",))
    dev.sync()
    dev.write("INBOX", "written offline")
    time.sleep(2.1)  # the Maildir's mtimes are settled: only the unrecorded upload says "look"
    r = dev.sync()
    assert r.folders["INBOX"].uploaded == 1
    dev.sync()
    dev.sync()
    assert dev.messages()["INBOX"] == {"written offline": ""} == other.messages()["INBOX"]


def test_unchanged_folder_is_skipped_but_a_flag_rename_or_a_same_tick_change_is_found(
    alice: RunningServer, other: Other, tmp_path: Path
) -> None:
    """The nothing-changed skip (same ``cur``/``new`` mtimes as recorded) never hides a change:
    a flag set by renaming a file after the stamp was taken, and a change made in the same
    clock tick as the sync that would have recorded the stamp (that stamp is not trusted)."""
    deliver(alice, "one", "two")
    dev = Device(alice, tmp_path / "d")
    dev.sync()
    old = time.time() - 10
    for sub in ("cur", "new"):  # settled mtimes: the next sync records a trusted stamp
        os.utime(dev.path("INBOX") / sub, (old, old))
    dev.sync()
    r = dev.sync()
    assert r.folders["INBOX"].skipped and r.commands == 2  # ENABLE and LIST, nothing more
    dev.set_flags("INBOX", "one", "F")  # a rename: cur's mtime moves on
    r = dev.sync()
    assert not r.folders["INBOX"].skipped and r.folders["INBOX"].flags_server == 1
    assert other.messages()["INBOX"]["one"] == "F"
    # Right after a sync (same tick as its stamp): the stamp was too fresh to be trusted,
    # so a change made now, even if the mtime did not move, is still looked for.
    dev.set_flags("INBOX", "two", "S")
    r = dev.sync()
    assert r.folders["INBOX"].flags_server == 1
    d = dev.path("INBOX")
    seen = {sub: (d / sub).stat().st_mtime_ns for sub in ("cur", "new")}  # as that sync saw them
    dev.set_flags("INBOX", "two", "RS")
    for sub, ns in seen.items():  # a coarse clock: the rename left the mtimes as they were
        os.utime(d / sub, ns=(ns, ns))
    r = dev.sync()
    assert r.folders["INBOX"].flags_server == 1
    assert other.messages()["INBOX"] == {"one": "F", "two": "RS"} == dev.messages()["INBOX"]


# ---- deletions --------------------------------------------------------------------------------


def test_deletions_both_ways(
    alice: RunningServer, other: Other, tmp_path: Path, profile: tuple[str, ...]
) -> None:
    deliver(alice, "keep", "gone locally", "gone on server", "deleted while flagged")
    dev = Device(alice, tmp_path / "d", profile)
    dev.sync()
    dev.delete("INBOX", "gone locally")
    other.expunge("INBOX", "gone on server")
    # Deletion wins over a flag change on the other side.
    dev.delete("INBOX", "deleted while flagged")
    other.add_flags("INBOX", "deleted while flagged", [b"\\Flagged"])
    r = dev.sync()
    assert r.folders["INBOX"].deleted_server == 2 and r.folders["INBOX"].deleted_local == 1
    assert dev.messages()["INBOX"] == {"keep": ""} == other.messages()["INBOX"]
    phone = Device(alice, tmp_path / "phone", profile)
    phone.sync()
    assert phone.messages()["INBOX"] == {"keep": ""}


# ---- folders ----------------------------------------------------------------------------------


def test_folder_create_and_rename_both_ways(
    alice: RunningServer, other: Other, tmp_path: Path
) -> None:
    dev = Device(alice, tmp_path / "d")
    dev.write("Projects", "plan")
    dev.write("Projects/2024", "old plan")
    other.c.create_folder("Later")
    other.append("Later", "read later")
    dev.sync()
    server = other.messages()
    assert server["Projects"] == {"plan": ""} and server["Projects/2024"] == {"old plan": ""}
    assert dev.messages()["Later"] == {"read later": ""}
    assert (dev.path("Projects") / ID_FILE).is_file()

    other.c.rename_folder("Later", "Someday")
    os.rename(dev.path("Projects"), dev.root / dir_for_folder("Work"))
    r = dev.sync()
    assert any("renamed local folder Later to Someday" in a for a in r.folder_actions)
    assert any("renamed server folder Projects to Work" in a for a in r.folder_actions)
    local, server = non_empty(dev.messages()), non_empty(other.messages())
    # The server moved Projects/2024 along with Projects; the Maildir follows.
    assert local == server
    assert local["Someday"] == {"read later": ""}
    assert local["Work"] == {"plan": ""} and local["Work/2024"] == {"old plan": ""}
    assert "Later" not in local and "Projects" not in server
    assert sum(f.downloaded + f.uploaded for f in r.folders.values()) == 0, (r, dev.last.sent)


def test_folder_deleted_on_one_side(alice: RunningServer, other: Other, tmp_path: Path) -> None:
    other.c.create_folder("Old")
    other.append("Old", "old mail")
    other.c.create_folder("Older")
    other.append("Older", "older mail")
    dev = Device(alice, tmp_path / "d")
    dev.sync()
    other.c.delete_folder("Old")
    shutil.rmtree(dev.path("Older"))
    dev.sync()
    assert "Old" not in dev.messages()
    assert "Older" not in {f[2] for f in other.c.list_folders()}
    # Deleted locally, but the server got new mail meanwhile: nothing is lost.
    other.c.create_folder("Busy")
    other.append("Busy", "first")
    dev.sync()
    shutil.rmtree(dev.path("Busy"))
    other.append("Busy", "second")
    dev.sync()
    assert dev.messages()["Busy"] == {"first": "", "second": ""}


# ---- UIDVALIDITY --------------------------------------------------------------------------------


def _recreate_with_new_uidvalidity(other: Other, folder: str) -> None:
    """The server loses its UIDs (as after an index rebuild): same messages, new UIDVALIDITY."""
    before = other.c.folder_status(folder, ["UIDVALIDITY"])[b"UIDVALIDITY"]
    other.c.create_folder("Tmp")
    other.c.select_folder(folder)
    other.c.move(other.c.search("ALL"), "Tmp")
    other.c.unselect_folder()
    other.c.delete_folder(folder)
    other.c.rename_folder("Tmp", folder)
    assert other.c.folder_status(folder, ["UIDVALIDITY"])[b"UIDVALIDITY"] != before


def test_uidvalidity_change_neither_duplicates_nor_loses(
    alice: RunningServer, other: Other, tmp_path: Path, profile: tuple[str, ...]
) -> None:
    other.c.create_folder("Work")
    for s in ("w1", "w2", "w3", "w4"):
        other.append("Work", s)
    dev = Device(alice, tmp_path / "d", profile)
    dev.sync()
    other.add_flags("Work", "w1", [b"\\Seen"])
    dev.sync()
    # Offline changes on the device, then the server's UIDs are reset.
    dev.set_flags("Work", "w2", "F")
    dev.delete("Work", "w3")
    dev.write("Work", "w5 new locally")
    _recreate_with_new_uidvalidity(other, "Work")
    other.append("Work", "w6 new on the server")
    r = dev.sync()
    assert r.folders["Work"].uidvalidity_changed
    assert r.folders["Work"].downloaded == 1  # only w6
    assert r.folders["Work"].uploaded == 1  # only w5
    want = {"w1": "S", "w2": "F", "w4": "", "w5 new locally": "", "w6 new on the server": ""}
    assert dev.messages()["Work"] == want
    assert other.messages()["Work"] == want
    r = dev.sync()
    assert r.folders["Work"].changes == 0


def test_folder_renamed_away_and_recreated_with_the_same_name(
    alice: RunningServer, other: Other, tmp_path: Path
) -> None:
    other.c.create_folder("Work")
    for s in ("w1", "w2"):
        other.append("Work", s)
    dev = Device(alice, tmp_path / "d")
    dev.sync()
    other.c.rename_folder("Work", "Work-2023")
    other.c.create_folder("Work")
    other.append("Work", "w3")
    r = dev.sync()
    assert dev.messages()["Work-2023"] == {"w1": "", "w2": ""}
    assert dev.messages()["Work"] == {"w3": ""}
    assert non_empty(dev.messages()) == non_empty(other.messages())
    assert sum(f.downloaded for f in r.folders.values()) == 1


# ---- crash safety -------------------------------------------------------------------------------


class Crash(Exception):
    pass


def test_crash_between_local_file_and_state(
    alice: RunningServer, other: Other, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    deliver(alice, *(f"m{i}" for i in range(7)))
    dev = Device(alice, tmp_path / "d")
    real_put = SyncState.put
    calls = {"n": 0}

    def crashing_put(self: SyncState, *args: object, **kw: object) -> None:
        calls["n"] += 1
        if calls["n"] == 4:  # in the second batch: its files are in cur/new already
            raise Crash("power cut")
        real_put(self, *args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(SyncState, "put", crashing_put)
    with pytest.raises(Crash):
        dev.sync(batch=3)
    on_disk = sum(len(os.listdir(dev.path("INBOX") / s)) for s in ("new", "cur"))
    assert on_disk == 6  # two batches written, only the first recorded
    monkeypatch.setattr(SyncState, "put", real_put)
    r = dev.sync(batch=3)
    assert r.folders["INBOX"].paired == 3 and r.folders["INBOX"].downloaded == 1
    assert r.folders["INBOX"].uploaded == 0
    assert set(dev.messages()["INBOX"]) == {f"m{i}" for i in range(7)}
    assert set(other.messages()["INBOX"]) == {f"m{i}" for i in range(7)}


def test_crash_after_upload_before_state(
    alice: RunningServer, other: Other, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dev = Device(alice, tmp_path / "d")
    dev.sync()
    dev.write("Sent", "sent once")
    real_put = SyncState.put

    def crashing_put(self: SyncState, *args: object, **kw: object) -> None:
        raise Crash("power cut after APPEND")

    monkeypatch.setattr(SyncState, "put", crashing_put)
    with pytest.raises(Crash):
        dev.sync()
    assert other.messages()["Sent"] == {"sent once": ""}
    monkeypatch.setattr(SyncState, "put", real_put)
    r = dev.sync()
    assert r.folders["Sent"].paired == 1 and r.folders["Sent"].uploaded == 0
    assert other.messages()["Sent"] == {"sent once": ""}
    assert dev.messages()["Sent"] == {"sent once": ""}


# ---- pull -------------------------------------------------------------------------------------


def test_pull_never_writes_the_server_and_a_later_sync_sends_local_changes(
    alice: RunningServer, other: Other, tmp_path: Path
) -> None:
    deliver(alice, "p1", "p2", "p3")
    dev = Device(alice, tmp_path / "d")
    dev.sync(Mode.PULL)
    other.add_flags("INBOX", "p1", [b"\\Answered"])
    dev.set_flags("INBOX", "p1", "S")
    dev.delete("INBOX", "p2")
    dev.write("INBOX", "local only")
    other.c.create_folder("ServerNew")
    dev.write("LocalNew", "l")
    r = dev.sync(Mode.PULL)
    assert r.commands < 20
    assert dev.messages()["INBOX"] == {"p1": "RS", "p3": "", "local only": ""}
    assert "ServerNew" in dev.messages()
    server = other.messages()
    assert server["INBOX"] == {"p1": "R", "p2": "", "p3": ""} and "LocalNew" not in server
    dev.sync(Mode.PULL)  # still nothing goes up
    assert other.messages()["INBOX"] == {"p1": "R", "p2": "", "p3": ""}
    dev.sync()
    want = {"p1": "RS", "p3": "", "local only": ""}
    assert other.messages()["INBOX"] == want == dev.messages()["INBOX"]
    assert other.messages()["LocalNew"] == {"l": ""}


# ---- large mailbox ------------------------------------------------------------------------------


def fill(srv: RunningServer, folder: str, count: int, prefix: str) -> None:
    """``count`` small messages, appended with MULTIAPPEND in batches (fast)."""
    c = ImapClient("127.0.0.1", srv.port("imap"), tls="none")
    c.connect()
    c.login(ALICE, PASSWORD)
    try:
        c.command(b"CREATE ", c.encode_name(folder))
        from postfach.client.imap import Literal

        for start in range(0, count, 500):
            parts: list[bytes | Literal] = [b"APPEND ", c.encode_name(folder)]
            for i in range(start, min(count, start + 500)):
                flags = b"(\\Seen)" if i % 3 else b"()"
                parts += [b" ", flags, b" ", Literal(message(f"{prefix} {i}"))]
            c.check(*parts)
    finally:
        c.logout()


@pytest.mark.timeout(600)
def test_ten_thousand_messages_and_a_resync_costs_a_few_commands(
    alice: RunningServer, tmp_path: Path
) -> None:
    fill(alice, "INBOX", 10_000, "bulk")
    fill(alice, "Archive", 500, "old")
    dev = Device(alice, tmp_path / "d")
    t0 = time.monotonic()
    r = dev.sync()
    first = time.monotonic() - t0
    assert r.folders["INBOX"].downloaded == 10_000 and r.folders["Archive"].downloaded == 500
    folders = len(r.folders)
    assert sum(len(os.listdir(dev.path("INBOX") / s)) for s in ("new", "cur")) == 10_000

    # Nothing changed: LOGIN, ENABLE, one LIST with the STATUS of every folder, LOGOUT.
    t0 = time.monotonic()
    r = dev.sync()
    again = time.monotonic() - t0
    assert r.commands <= 3, dev.last.sent if dev.last else None
    assert sum(f.changes for f in r.folders.values()) == 0

    # Without CONDSTORE/QRESYNC/LIST-STATUS it is still O(folders): LIST, then per folder
    # STATUS, SELECT, UID FETCH 1:* (FLAGS) -- whatever the number of messages.
    plain = Device(alice, dev.root, PLAIN)
    r = plain.sync()
    assert r.commands <= 3 + 3 * folders
    assert sum(f.changes for f in r.folders.values()) == 0
    print(f"\n10k: first sync {first:.1f}s, resync {again * 1000:.0f} ms")


# ---- --watch ----------------------------------------------------------------------------------


def test_watch_picks_up_a_delivery_and_a_local_change(
    alice: RunningServer, other: Other, tmp_path: Path
) -> None:
    dev = Device(alice, tmp_path / "d")
    state = SyncState(dev.state_path)
    stop = threading.Event()
    reports: list[SyncReport] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            limits = WatchLimits(duration=60, poll=0.1, interval=3600)
            watch(dev.client, Maildir(dev.root), state, SyncOptions(), limits, reports.append, stop)
        except BaseException as exc:
            errors.append(exc)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    try:
        _wait(lambda: len(reports) >= 1)
        deliver(alice, "pushed")
        _wait(lambda: "pushed" in dev.messages()["INBOX"])
        dev.write("Sent", "written while watching")
        _wait(lambda: "written while watching" in other.messages()["Sent"])
    finally:
        stop.set()
        t.join(30)
        state.close()
    assert not t.is_alive() and not errors


def test_watch_stops_after_its_duration(alice: RunningServer, tmp_path: Path) -> None:
    dev = Device(alice, tmp_path / "d")
    state = SyncState(dev.state_path)
    t0 = time.monotonic()
    runs = watch(dev.client, Maildir(dev.root), state, SyncOptions(),
                 WatchLimits(duration=1.5, poll=0.1), lambda r: None)  # fmt: skip
    state.close()
    assert runs >= 1 and time.monotonic() - t0 < 10


def _wait(cond: object, timeout: float = 15.0) -> None:
    assert callable(cond)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.05)
    raise AssertionError("condition not met in time")


# ---- TLS and the command line -------------------------------------------------------------------


def test_tls_with_a_pinned_fingerprint(alice: RunningServer, tmp_path: Path) -> None:
    pin = bytes.fromhex(fingerprint(alice.data / "tls" / "cert.pem").replace(":", ""))
    for port, mode in ((alice.port("imaps"), "tls"), (alice.port("imap"), "starttls")):
        c = ImapClient("127.0.0.1", port, tls=mode, fingerprint=pin)
        c.connect()
        c.login(ALICE, PASSWORD)
        assert "STARTTLS" not in c.capabilities
        c.logout()
    bad = ImapClient("127.0.0.1", alice.port("imaps"), tls="tls", fingerprint=b"\0" * 32)
    with pytest.raises(ImapError, match="fingerprint"):
        bad.connect()
    # No pin, no CA: the self-signed certificate is refused.
    unverified = ImapClient("127.0.0.1", alice.port("imaps"), tls="tls")
    with pytest.raises(ImapError):
        unverified.connect()


def test_wrong_password_is_one_error(alice: RunningServer) -> None:
    c = ImapClient("127.0.0.1", alice.port("imap"), tls="none")
    c.connect()
    with pytest.raises(CommandFailed):
        c.login(ALICE, "wrong")
    c.close()


def test_one_sync_per_maildir(tmp_path: Path) -> None:
    from postfach.cli.sync import SyncError, open_account
    from postfach.client.sync.account import parse_config

    acc = parse_config(
        f'[account.a]\nhost = "h"\nuser = "u"\npassword_file = "p"\nmaildir = "{tmp_path}/M"\n'
    ).accounts[0]
    with (
        open_account(acc),
        pytest.raises(SyncError, match="another postfach sync"),
        open_account(acc),
    ):
        pass
    with open_account(acc):  # released
        pass


def test_cli_sync(alice: RunningServer, tmp_path: Path) -> None:
    deliver(alice, "via cli")
    pw = tmp_path / "pw"
    pw.write_text(PASSWORD + "\n")
    pw.chmod(0o600)
    pin = fingerprint(alice.data / "tls" / "cert.pem")
    cfg = tmp_path / "sync.toml"
    cfg.write_text(
        f'[account.home]\nhost = "127.0.0.1"\nport = {alice.port("imaps")}\ntls = "tls"\n'
        f'fingerprint = "SHA256:{pin}"\nuser = "{ALICE}"\npassword_file = "{pw}"\n'
        f'maildir = "{tmp_path / "Mail"}"\n'
    )
    runner = CliRunner()
    res = runner.invoke(cli, ["sync", "--config", str(cfg)])
    assert res.exit_code == 0, res.output
    assert "1 downloaded" in res.output
    assert (tmp_path / "Mail.postfach-sync.db").is_file()
    files = list((tmp_path / "Mail" / "new").iterdir())
    assert len(files) == 1
    res = runner.invoke(cli, ["sync", "--config", str(cfg), "--pull", "-q"])
    assert res.exit_code == 0 and res.output == ""
    res = runner.invoke(cli, ["sync", "--config", str(cfg), "--watch", "--watch-seconds", "1"])
    assert res.exit_code == 0, res.output
    cfg.write_text(cfg.read_text().replace("SHA256:", "SHA256:00"))
    res = runner.invoke(cli, ["sync", "--config", str(cfg)])
    assert res.exit_code == 1 and "fingerprint" in res.output


def test_postfach_sync_command_starts_without_the_admin_cli(
    alice: RunningServer, tmp_path: Path
) -> None:
    """``postfach sync`` as a process (the fast entry point): output flushed despite the quick
    exit, exit status kept, umask 077, and the admin CLI (server, store, rich) never imported."""
    deliver(alice, "via the command")
    pw = tmp_path / "pw"
    pw.write_text(PASSWORD + "\n")
    pw.chmod(0o600)
    cfg = tmp_path / "sync.toml"
    cfg.write_text(
        f'[account.home]\nhost = "127.0.0.1"\nport = {alice.port("imap")}\ntls = "none"\n'
        f'user = "{ALICE}"\npassword_file = "{pw}"\nmaildir = "{tmp_path / "Mail"}"\n'
    )
    probe = (  # `postfach ARGS`, then which heavy modules were loaded (at either way out)
        "import os, runpy, sys\n"
        "def loaded():\n"
        "    print('loaded:', sorted(m for m in sys.modules if m.startswith(('postfach.store',"
        " 'postfach.cli.main', 'rich'))), file=sys.stderr, flush=True)\n"
        "real_exit = os._exit\n"
        "os._exit = lambda code: (loaded(), real_exit(code))\n"
        "sys.argv = ['postfach', *sys.argv[1:]]\n"
        "try:\n    runpy.run_module('postfach', run_name='__main__')\n"
        "finally:\n    loaded()\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("POSTFACH_")}

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-c", probe, *args], capture_output=True,
                              text=True, env=env, timeout=60)  # fmt: skip

    res = run("sync", "--config", str(cfg))
    assert res.returncode == 0, res.stderr
    assert "1 downloaded" in res.stdout
    assert len(list((tmp_path / "Mail" / "new").iterdir())) == 1
    assert (tmp_path / "Mail.postfach-sync.db").stat().st_mode & 0o077 == 0
    assert "loaded: []" in res.stderr
    res = run("sync", "--config", str(tmp_path / "missing.toml"))
    assert res.returncode == 1
    assert res.stderr.startswith("postfach: error: no config file")
    res = run("sync", "--help")
    assert res.returncode == 0 and res.stdout.startswith("Usage: postfach sync")
    # With a global option first, the admin CLI runs the same command.
    res = run("--data", str(tmp_path / "data"), "sync", "--config", str(cfg))
    assert res.returncode == 0, res.stderr
    assert "0 downloaded" in res.stdout
    assert "postfach.cli.main" in res.stderr


# ---- the same result as mbsync ------------------------------------------------------------------


MBSYNC = shutil.which("mbsync")


@pytest.mark.skipif(MBSYNC is None, reason="mbsync (isync) is not installed")
def test_same_result_as_mbsync(alice: RunningServer, other: Other, tmp_path: Path) -> None:
    deliver(alice, "i1", "i2", "i3", "i4")
    other.add_flags("INBOX", "i1", [b"\\Seen"])
    other.add_flags("INBOX", "i2", [b"\\Flagged", b"\\Answered", b"\\Seen"])
    other.add_flags("INBOX", "i3", [b"\\Deleted"])
    other.c.create_folder("Work")
    other.c.create_folder("Work/2024")
    other.append("Work", "w1", (b"\\Draft",))
    other.append("Work/2024", "w2", (b"\\Seen",))
    other.append("Sent", "s1", (b"\\Seen",))

    mb = tmp_path / "mbsync"
    mb.mkdir()
    cfg = tmp_path / "mbsyncrc"
    cfg.write_text(
        f"IMAPAccount test\nHost 127.0.0.1\nPort {alice.port('imap')}\nUser {ALICE}\n"
        f'Pass "{PASSWORD}"\nSSLType None\nAuthMechs LOGIN PLAIN\n\n'
        "IMAPStore remote\nAccount test\n\n"
        f"MaildirStore local\nInbox {mb}\nSubFolders Maildir++\n\n"
        "Channel test\nFar :remote:\nNear :local:\nPatterns *\nCreate Both\nExpunge Both\n"
        f"SyncState *\nSync All\n"
    )

    def run_mbsync() -> None:
        out = subprocess.run([MBSYNC, "-c", str(cfg), "-a"], capture_output=True, timeout=60,
                             check=False)  # fmt: skip
        assert out.returncode == 0, out.stderr.decode()

    run_mbsync()
    ours = Device(alice, tmp_path / "ours")
    ours.sync()
    theirs = Device(alice, mb)
    assert non_empty(theirs.messages()) == non_empty(ours.messages()) == non_empty(other.messages())
    # Changes on the server reach both the same way.
    other.remove_flags("INBOX", "i1", [b"\\Seen"])
    other.add_flags("INBOX", "i4", [b"\\Seen"])
    other.expunge("Work", "w1")
    run_mbsync()
    ours.sync()
    assert non_empty(theirs.messages()) == non_empty(ours.messages()) == non_empty(other.messages())

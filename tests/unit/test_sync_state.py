"""The sync state file (postfach.client.sync.state) and the Maildir half
(postfach.client.sync.maildir), on a temporary directory."""

from __future__ import annotations

import ast
import os
import time
from pathlib import Path

import pytest

from postfach.client.sync.maildir import ID_FILE, Maildir
from postfach.client.sync.state import StateError, SyncState

F = frozenset


def test_records_orphans_and_rebase(tmp_path: Path) -> None:
    st = SyncState(tmp_path / "s.db")
    st.claim("a@h:1")
    f = st.add_folder("Work", "lid", "sid")
    st.update_folder(f.key, uidvalidity=5, highestmodseq=10, uidnext=3)
    st.put(f.key, 1, "u1", F("S"), "cur/u1:2,S", "10:<a>")
    st.put(f.key, 2, "u2", F(), None, "11:<b>")
    assert {r.uid for r in st.records(f.key)} == {1, 2}
    st.rebase(f.key, 6)
    row = st.folder("Work")
    assert row is not None and (row.uidvalidity, row.highestmodseq) == (6, None)
    assert st.records(f.key) == []
    assert {o.unique: (o.base, o.lname, o.ident) for o in st.orphans(f.key)} == {
        "u1": (F("S"), "cur/u1:2,S", "10:<a>"), "u2": (F(), None, "11:<b>"),
    }  # fmt: skip
    st.forget_orphans(f.key, ["u1"])
    st.rename_folder(f.key, "Job")
    assert st.folder("Job") is not None and st.folder("Work") is None
    st.reset_folder(f.key)
    assert st.orphans(f.key) == [] and st.folder_by_key(f.key).uidvalidity is None
    st.close()
    again = SyncState(tmp_path / "s.db")
    with pytest.raises(StateError, match="holds the sync state of a@h:1"):
        again.claim("b@h:1")
    again.close()


def test_a_failed_transaction_leaves_nothing(tmp_path: Path) -> None:
    st = SyncState(tmp_path / "s.db")
    f = st.add_folder("INBOX", None, None)
    with pytest.raises(RuntimeError), st.transaction():
        st.put(f.key, 1, "u1", F(), "new/u1", None)
        raise RuntimeError("crash")
    assert st.records(f.key) == []
    st.close()


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    import sqlite3

    db = sqlite3.connect(tmp_path / "s.db")
    db.execute("PRAGMA user_version=99")
    db.close()
    with pytest.raises(StateError, match="newer"):
        SyncState(tmp_path / "s.db")


def test_maildir_write_flags_remove_and_folders(tmp_path: Path) -> None:
    md = Maildir(tmp_path / "m")
    md.ensure_root()
    inbox = md.folder("INBOX")
    a = inbox.stage(b"Subject: a\n\nx\n", F(), 1_000_000)
    b = inbox.stage(b"Subject: b\n\ny\n", F("S"))
    assert a.lname.startswith("new/") and b.lname.endswith(":2,S")
    inbox.commit([a, b])
    assert (inbox.path / a.lname).stat().st_mtime == 1_000_000
    assert set(inbox.scan()) == {a.unique, b.unique}
    new = inbox.set_flags(a.lname, F("FT"))
    assert new == f"cur/{a.unique}:2,FT" and inbox.flags(new) == F("FT")
    inbox.remove(new)
    inbox.remove(new)  # already gone: fine
    assert set(inbox.scan()) == {b.unique}

    work = md.folder("Work/2024")
    work.ensure()
    fid = work.write_id()
    assert (work.path / ID_FILE).read_text().strip() == fid == work.read_id()
    assert (work.path / "maildirfolder").exists()
    assert set(md.list_folders()) == {"INBOX", "Work/2024"}
    md.rename_folder("Work/2024", "Old")
    assert md.list_folders()["Old"].id == fid
    md.delete_folder("Old")
    assert set(md.list_folders()) == {"INBOX"}
    with pytest.raises(ValueError):
        md.delete_folder("INBOX")


def test_stamp_is_trusted_only_when_settled(tmp_path: Path) -> None:
    md = Maildir(tmp_path / "m", fsync=False)
    md.ensure_root()
    inbox = md.folder("INBOX")
    assert inbox.stamp()[0] is None  # just created: too fresh
    old = time.time() - 10
    for sub in ("new", "cur"):
        os.utime(inbox.path / sub, (old, old))
    stamp, _ = inbox.stamp()
    assert stamp is not None and stamp == inbox.raw_stamp()
    inbox.commit([inbox.stage(b"x", F())])
    assert inbox.raw_stamp() != stamp


def test_pure_sync_modules_do_no_io() -> None:
    """The planner, the names and the response parser are pure core (DESIGN.md)."""
    src = Path(__file__).resolve().parents[2] / "src" / "postfach" / "client"
    forbidden = {"asyncio", "sqlite3", "socket", "ssl", "selectors", "threading", "time", "os"}
    for module in ("parse.py", "sync/plan.py", "sync/names.py", "sync/account.py"):
        tree = ast.parse((src / module).read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                mods = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                mods = [node.module]
            else:
                continue
            assert not {m.split(".")[0] for m in mods} & forbidden, (module, mods)

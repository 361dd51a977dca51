"""A running ``postfach serve`` hears what other processes commit to its data directory (the
store's change feed), and POP3's maildrop lock holds across processes and dies with its holder.
"""

from __future__ import annotations

import os
import poplib
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from proc import ServerProcess, spawn

from postfach.store.sqlite import SqliteMailstore
from support import Raw

pytestmark = pytest.mark.timeout(120)

ALICE = "alice@example.org"
PASSWORD = "correct horse"


def cli(data: Path, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("POSTFACH_")}
    return subprocess.run(
        [sys.executable, "-m", "postfach", "--data", str(data), *args],
        input=stdin, capture_output=True, text=True, env=env, timeout=60,
    )  # fmt: skip


@pytest.fixture
def served(tmp_path: Path) -> Iterator[ServerProcess]:
    data = tmp_path / "data"
    assert cli(data, "domain", "add", "example.org").returncode == 0
    r = cli(data, "user", "add", ALICE, "--password-stdin", stdin=PASSWORD + "\n")
    assert r.returncode == 0, r.stderr
    server = spawn(data)
    try:
        yield server
    finally:
        server.kill()


def test_import_from_the_cli_shows_up_in_idle(served: ServerProcess, tmp_path: Path) -> None:
    imap = Raw(served.port("imap"))
    imap.sock.sendall(f'a LOGIN {ALICE} "{PASSWORD}"\r\nb SELECT INBOX\r\nc IDLE\r\n'.encode())
    imap.until(b"b")
    assert imap.line() == b"+ idling"
    mbox = tmp_path / "in.mbox"
    mbox.write_bytes(
        b"From someone@example.net Thu Jan  1 00:00:00 2026\n"
        b"From: someone@example.net\nSubject: imported\n\nHello.\n\n"
        b"From someone@example.net Thu Jan  1 00:00:01 2026\n"
        b"From: someone@example.net\nSubject: imported too\n\nHello again.\n"
    )
    r = cli(served.data, "import", ALICE, str(mbox))
    assert r.returncode == 0, r.stderr
    done = time.monotonic()
    assert imap.line() == b"* 2 EXISTS"
    waited = time.monotonic() - done
    assert waited < 1.0, waited
    imap.sock.sendall(b"DONE\r\nd FETCH 1:2 (BODY.PEEK[HEADER.FIELDS (SUBJECT)])\r\n")
    text = b"\n".join(imap.until(b"d"))
    assert b"Subject: imported\r" in text or b"Subject: imported" in text
    assert b"imported too" in text


def test_user_del_from_the_cli_ends_idle_sessions(served: ServerProcess) -> None:
    """Without the SIGUSR1 the CLI sends too: with the pid file gone it signals nobody, and
    the change feed alone tells the server."""
    (served.data / "postfach.pid").unlink()
    imap = Raw(served.port("imap"))
    imap.sock.sendall(f'a LOGIN {ALICE} "{PASSWORD}"\r\nb SELECT INBOX\r\nc IDLE\r\n'.encode())
    imap.until(b"b")
    assert imap.line() == b"+ idling"
    r = cli(served.data, "user", "del", ALICE, "--yes")
    assert r.returncode == 0, r.stderr
    done = time.monotonic()
    assert imap.line() == b"* BYE account no longer exists"
    assert time.monotonic() - done < 1.0


def test_pop3_lock_across_processes_dies_with_its_holder(served: ServerProcess) -> None:
    holder = poplib.POP3("127.0.0.1", served.port("pop3"), timeout=10)
    holder.user(ALICE)
    holder.pass_(PASSWORD)  # the server process now holds alice's maildrop
    other = SqliteMailstore(served.data, index_text=False)  # another process's store
    try:
        acc = other.get_account(ALICE)
        assert acc is not None
        assert not other.try_lock_maildrop(acc.id)
        served.kill()  # SIGKILL: nothing runs in the holder
        assert other.try_lock_maildrop(acc.id)  # the kernel released it with the process
        # and now a new server refuses POP3 for alice while this process holds the lock
        again = spawn(served.data)
        try:
            pop = poplib.POP3("127.0.0.1", again.port("pop3"), timeout=10)
            pop.user(ALICE)
            with pytest.raises(poplib.error_proto, match=r"\[IN-USE\]"):
                pop.pass_(PASSWORD)
            pop.close()
            other.unlock_maildrop(acc.id)
            pop = poplib.POP3("127.0.0.1", again.port("pop3"), timeout=10)
            pop.user(ALICE)
            assert pop.pass_(PASSWORD).startswith(b"+OK")
            pop.quit()
        finally:
            again.kill()
    finally:
        other.close()
    holder.close()

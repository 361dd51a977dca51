"""``postfach queue flush``/``retry`` act at once on a running server (SIGUSR1 to the process
holding ``postfach.pid``), and never signal anything when the pid file is stale."""

from __future__ import annotations

import os
import smtplib
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from proc import ServerProcess, spawn

from outbound_support import Peer, wait_for
from postfach.queue.store import QueueStore

ALICE = "alice@example.org"
CAROL = "carol@remote.test"
PASSWORD = "correct horse"
MESSAGE = f"From: <{ALICE}>\r\nTo: <{CAROL}>\r\nSubject: flush me\r\n\r\nHello.\r\n".encode()


def cli(data: Path, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("POSTFACH_")}
    env["COLUMNS"] = "200"
    return subprocess.run(
        [sys.executable, "-m", "postfach", "--data", str(data), *args],
        input=stdin, capture_output=True, text=True, env=env, timeout=60,
    )  # fmt: skip


@pytest.fixture
def peer(tmp_path: Path) -> Iterator[Peer]:
    p = Peer(tmp_path, tls=False)
    try:
        yield p
    finally:
        p.stop()


def setup_data(tmp_path: Path, peer: Peer) -> Path:
    data = tmp_path / "data"
    data.mkdir()
    # Only a wake-up can bring a deferred message back before an hour has passed.
    (data / "postfach.toml").write_text(
        "[queue]\nfirst_retry = 3600\npoll = 3600\n"
        f'[relay]\nhost = "127.0.0.1"\nport = {peer.port}\ntls = "none"\n'
        "[submission]\ndkim = false\n"
    )
    assert cli(data, "domain", "add", "example.org").returncode == 0
    r = cli(data, "user", "add", ALICE, "--password-stdin", stdin=PASSWORD + "\n")
    assert r.returncode == 0, r.stderr
    return data


def submit_deferred(server: ServerProcess, peer: Peer, subject: str) -> None:
    """Submit a message the peer defers once; return after that first attempt."""
    peer.handler.rcpt_replies[CAROL] = ["451 4.3.0 not yet"]
    before = server.log_text().count("not yet")
    with smtplib.SMTP("127.0.0.1", server.port("submission"), timeout=30) as s:
        s.login(ALICE, PASSWORD)
        assert s.sendmail(ALICE, [CAROL], MESSAGE.replace(b"flush me", subject.encode())) == {}
    wait_for(lambda: server.log_text().count("not yet") > before, what="the first attempt")


def test_flush_and_retry_make_a_running_server_try_at_once(tmp_path: Path, peer: Peer) -> None:
    data = setup_data(tmp_path, peer)
    server = spawn(data)
    try:
        assert (data / "postfach.pid").read_text().strip() == str(server.pid)
        submit_deferred(server, peer, "flushed")
        assert peer.messages == []
        started = time.monotonic()
        r = cli(data, "queue", "flush")
        assert r.returncode == 0, r.stderr
        assert "1 recipient(s) due now" in r.stdout
        assert f"woke the server (pid {server.pid}): trying now" in r.stdout
        wait_for(lambda: peer.messages, timeout=5, what="delivery after the flush")
        took = time.monotonic() - started
        assert b"Subject: flushed" in peer.messages[0].data

        submit_deferred(server, peer, "retried")
        q = QueueStore(data)
        [queued] = q.messages()
        q.close()
        r = cli(data, "queue", "retry", str(queued.id))
        assert r.returncode == 0 and "woke the server" in r.stdout, r.stdout + r.stderr
        wait_for(lambda: len(peer.messages) == 2, timeout=5, what="delivery after the retry")
        assert b"Subject: retried" in peer.messages[1].data
        assert server.proc.poll() is None  # the signal woke it, it did not kill it
    finally:
        assert server.terminate() == 0
    assert not (data / "postfach.pid").exists()  # removed on a clean stop
    print(f"delivered {took:.2f}s after `queue flush` was started (CLI start-up included)")


def test_a_stale_pid_file_is_never_signalled(tmp_path: Path, peer: Peer) -> None:
    data = setup_data(tmp_path, peer)
    server = spawn(data)
    submit_deferred(server, peer, "after a crash")
    server.kill()  # SIGKILL: the pid file stays behind, its lock goes with the process
    assert (data / "postfach.pid").exists()
    # The pid now belongs to somebody else (pid reuse): it must not get SIGUSR1.
    bystander = subprocess.Popen(["sleep", "60"])
    try:
        (data / "postfach.pid").write_text(f"{bystander.pid}\n")
        r = cli(data, "queue", "flush")
        assert r.returncode == 0, r.stderr
        assert "no server is running: they will be tried when it starts" in r.stdout
        time.sleep(0.2)
        assert bystander.poll() is None  # SIGUSR1 would have killed it
    finally:
        bystander.kill()
        bystander.wait()
    # The next server takes the file over and delivers what was flushed.
    server = spawn(data)
    try:
        wait_for(lambda: peer.messages, timeout=10, what="delivery after the restart")
        assert (data / "postfach.pid").read_text().strip() == str(server.pid)
    finally:
        server.terminate()


def test_user_del_ends_the_accounts_idle_session_at_once(tmp_path: Path) -> None:
    """``postfach user del`` in another process: the server hears of it by SIGUSR1 and the
    account's IDLE session gets ``* BYE`` within a second of the command's end."""
    data = tmp_path / "data"
    data.mkdir()
    assert cli(data, "domain", "add", "example.org").returncode == 0
    r = cli(data, "user", "add", ALICE, "--password-stdin", stdin=PASSWORD + "\n")
    assert r.returncode == 0, r.stderr
    server = spawn(data)
    try:
        sock = socket.create_connection(("127.0.0.1", server.port("imap")), timeout=10)
        f = sock.makefile("rb")
        assert f.readline().startswith(b"* OK")
        sock.sendall(f'a LOGIN {ALICE} "{PASSWORD}"\r\nb IDLE\r\n'.encode())
        assert f.readline().startswith(b"a OK")
        assert f.readline() == b"+ idling\r\n"
        r = cli(data, "user", "del", ALICE, "--yes")
        assert r.returncode == 0, r.stderr
        done = time.monotonic()
        sock.settimeout(1.0)
        assert f.readline() == b"* BYE account no longer exists\r\n"
        assert f.readline() == b""  # and closed
        assert time.monotonic() - done < 1.0
        sock.close()
        assert "event=account-deleted" in server.log_text()
    finally:
        server.terminate()

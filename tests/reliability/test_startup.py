"""Starting safely (issue 6, point 6): start failures are one clear line, files are private, and a
server started as root binds, then becomes ``[server] user`` for good."""

from __future__ import annotations

import imaplib
import os
import pwd
import shutil
import smtplib
import socket
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
from proc import server_env, spawn, thread_nice_values

from postfach.store.sqlite import WRITER_PRIORITY_BOOST

ROOT = os.geteuid() == 0
as_root = pytest.mark.skipif(not ROOT, reason="needs root (CI runs as root)")


def _serve(
    data: Path, env: dict[str, str] | None = None, prefix: Sequence[str] = ()
) -> subprocess.CompletedProcess[str]:
    cmd = [*prefix, sys.executable, "-m", "postfach", "--data", str(data), "serve"]
    return subprocess.run(
        cmd, env=server_env(env), capture_output=True, text=True, timeout=60, check=False
    )


def _one_line_error(result: subprocess.CompletedProcess[str], *words: str) -> None:
    assert result.returncode != 0
    # The log lines of what had started before may precede it; the error is one line, last.
    lines = result.stderr.strip().splitlines()
    errors = [line for line in lines if "error" in line.lower()]
    assert errors == [lines[-1]], result.stderr
    assert lines[-1].startswith("postfach: error: ") and "Traceback" not in result.stderr
    for w in words:
        assert w in lines[-1], lines[-1]


def _as_nobody() -> list[str]:
    return ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"] if ROOT else []


def test_port_in_use_is_one_line(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = _serve(tmp_path / "data", {"POSTFACH_IMAP": f"127.0.0.1:{port}"})
    _one_line_error(result, f"127.0.0.1:{port}", "imap", "address already in use")


def test_data_directory_that_is_a_file_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "data").write_text("not a directory")
    _one_line_error(_serve(tmp_path / "data"), "is not a directory")


@pytest.fixture
def open_dir() -> Iterator[Path]:
    """A directory everybody may enter (pytest's tmp_path is 0700 root when run as root)."""
    d = Path(tempfile.mkdtemp(prefix="postfach-procs-"))
    d.chmod(0o755)
    yield d
    if not os.environ.get("KEEP"):
        shutil.rmtree(d, ignore_errors=True)


@pytest.mark.skipif(shutil.which("setpriv") is None and ROOT, reason="needs setpriv")
def test_unreadable_or_unwritable_data_directory_is_one_line(open_dir: Path) -> None:
    unreadable, readonly = open_dir / "unreadable", open_dir / "readonly"
    unreadable.mkdir(mode=0o000)
    readonly.mkdir()
    readonly.chmod(0o555)
    _one_line_error(_serve(unreadable, prefix=_as_nobody()), "permission denied")
    _one_line_error(_serve(readonly, prefix=_as_nobody()), "not readable and writable")


def test_files_are_private(tmp_path: Path) -> None:
    data = tmp_path / "fresh" / "data"
    pw = tmp_path / "pw"
    pw.write_text("secret\n")
    add = [sys.executable, "-m", "postfach", "--data", str(data), "user", "add", "a@localhost"]
    subprocess.run(
        [*add, "--password-stdin"],
        input="secret\n",
        text=True,
        check=True,
        capture_output=True,
        env=server_env(),
    )
    server = spawn(data)
    try:
        with smtplib.SMTP("127.0.0.1", server.port("smtp"), timeout=30) as c:
            c.sendmail("b@example.com", ["a@localhost"], b"Subject: s\r\n\r\nsmall\r\n")
            big = b"Subject: b\r\n\r\n" + (b"y" * 70 + b"\r\n") * 1500
            c.sendmail("b@example.com", ["a@localhost"], big)
        assert server.terminate() == 0
    finally:
        server.kill()
    assert stat.S_IMODE(data.stat().st_mode) == 0o700
    leaks = [
        f"{p} {stat.S_IMODE(p.stat().st_mode):o}"
        for p in data.rglob("*")
        if stat.S_IMODE(p.stat().st_mode) & 0o077
    ]
    assert leaks == []
    assert any(p.parent.parent.parent.name == "blobs" for p in data.rglob("*") if p.is_file())


def _free_privileged_port() -> int:
    for port in range(1023, 900, -1):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    pytest.skip("no free privileged port on 127.0.0.1")


@as_root
def test_root_on_privileged_port_without_user_is_refused(tmp_path: Path) -> None:
    port = _free_privileged_port()
    result = _serve(tmp_path / "data", {"POSTFACH_SMTP": f"127.0.0.1:{port}"})
    _one_line_error(result, "refusing to run as root", f"127.0.0.1:{port}", "user")


def _rlimit_nice(pid: int) -> int:
    """The soft RLIMIT_NICE of process ``pid``."""
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max nice priority"):
            soft = line.split()[3]
            return 40 if soft == "unlimited" else int(soft)
    raise AssertionError("no RLIMIT_NICE in /proc/<pid>/limits")


@as_root
def test_root_binds_then_becomes_the_configured_user(open_dir: Path) -> None:
    nobody = pwd.getpwnam("nobody")
    port = _free_privileged_port()
    data = open_dir / "data"  # does not exist: the server makes it, owned by nobody
    server = spawn(data, env={"POSTFACH_USER": "nobody", "POSTFACH_SMTP": f"127.0.0.1:{port}"})
    try:
        assert server.port("smtp") == port
        for pid in server.tree():  # the supervisor and its workers, if it has any
            status = Path(f"/proc/{pid}/status").read_text().splitlines()
            fields = {k: v.split() for k, _, v in (line.partition(":") for line in status)}
            assert fields["Uid"][:3] == [str(nobody.pw_uid)] * 3
            assert fields["Gid"][:3] == [str(nobody.pw_gid)] * 3
            assert "0" not in fields["Groups"]
        # After the drop each worker's store writer still runs ahead of the rest of the worker
        # as far as RLIMIT_NICE allows (raised before the drop where root may: -10); a root
        # without CAP_SYS_RESOURCE (some containers) cannot raise it, and nothing is boosted.
        for pid in server.tree()[1:] or server.tree():  # the workers, or the one process
            soft = _rlimit_nice(pid)
            boost = min(WRITER_PRIORITY_BOOST, max(0, soft - 20))
            nice = thread_nice_values(pid)
            assert nice == [-boost] + [0] * (len(nice) - 1), (soft, nice)
        assert data.stat().st_uid == nobody.pw_uid
        assert stat.S_IMODE(data.stat().st_mode) == 0o700
        # The admin command, run as root, works as the data directory's owner.
        add = [sys.executable, "-m", "postfach", "--data", str(data), "user", "add", "a@localhost"]
        subprocess.run(
            [*add, "--password-stdin"],
            input="pw\n",
            text=True,
            check=True,
            capture_output=True,
            env=server_env(),
        )
        with smtplib.SMTP("127.0.0.1", port, timeout=30) as c:
            c.sendmail("b@example.com", ["a@localhost"], b"Subject: hi\r\n\r\nafter the drop\r\n")
            big = b"Subject: big\r\n\r\n" + (b"z" * 70 + b"\r\n") * 1500
            c.sendmail("b@example.com", ["a@localhost"], big)
        imap = imaplib.IMAP4("127.0.0.1", server.port("imap"))
        imap.login("a@localhost", "pw")
        typ, count = imap.select("INBOX")
        assert typ == "OK" and count == [b"2"]
        imap.logout()
        assert server.terminate() == 0
    finally:
        server.kill()
    root_owned = [str(p) for p in [data, *data.rglob("*")] if p.stat().st_uid != nobody.pw_uid]
    assert root_owned == []

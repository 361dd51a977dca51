"""The postfach command line as a user runs it: real processes, exit codes, one-line errors."""

from __future__ import annotations

import os
import poplib
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from support import RunningServer, message

POSTFACH = [sys.executable, "-m", "postfach"]


def cli(data: Path, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("POSTFACH_")}
    env["COLUMNS"] = "200"
    return subprocess.run(
        [*POSTFACH, "--data", str(data), *args],
        input=stdin,
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )


def test_admin_commands_take_effect_while_serving(server: RunningServer) -> None:
    data = server.data
    assert cli(data, "domain", "add", "example.org").returncode == 0
    r = cli(data, "user", "add", "alice@example.org", "--quota", "50M", "--password-stdin",
            stdin="s3cret\n")  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "quota 50M" in r.stdout
    assert server.send(["alice@example.org"], message("hi")) == {}
    p = poplib.POP3("127.0.0.1", server.port("pop3"))
    p.user("alice@example.org")
    p.pass_("s3cret")
    assert p.stat()[0] == 1
    p.quit()
    r = cli(data, "user", "list")
    assert "alice@example.org" in r.stdout and "50M" in r.stdout
    assert cli(data, "alias", "add", "info@example.org", "alice@example.org").returncode == 0
    assert "info@example.org" in cli(data, "alias", "list").stdout
    assert server.send(["info@example.org"], message("via alias")) == {}
    r = cli(data, "user", "passwd", "alice@example.org", "--password-stdin", stdin="new\n")
    assert r.returncode == 0
    p = poplib.POP3("127.0.0.1", server.port("pop3"))
    p.user("alice@example.org")
    p.pass_("new")
    assert p.stat()[0] == 2
    p.quit()
    r = cli(data, "user", "quota", "alice@example.org", "1K")
    assert r.returncode == 0 and "quota 1K" in r.stdout
    r = cli(data, "check")
    assert r.returncode == 0 and "ok:" in r.stdout
    assert cli(data, "alias", "del", "info@example.org").returncode == 0
    assert cli(data, "user", "del", "alice@example.org", "--yes").returncode == 0
    assert server.store.get_account("alice@example.org") is None


def test_bad_input_gets_one_line_and_nonzero_exit(tmp_path: Path) -> None:
    data = tmp_path / "d"
    cases = [
        ("user", "add", "a@localhost", "--quota", "12X", "--password-stdin"),
        ("user", "del", "nobody@localhost", "--yes"),
        ("user", "quota", "nobody@localhost", "5M"),
        ("domain", "add", "not a domain"),
        ("domain", "del", "nowhere.example"),
        ("user", "add", "a@nowhere.example", "--password-stdin"),
        ("alias", "add", "x@nowhere.example", "a@localhost"),
    ]
    for args in cases:
        r = cli(data, *args, stdin="pw\n")
        assert r.returncode != 0, args
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("postfach: error: "), (args, r.stderr)
    r = cli(data, "user", "add", "a@localhost", "--quota", "12X", "--password-stdin", stdin="x\n")
    assert "12X" in r.stderr


def test_data_dir_not_writable(tmp_path: Path) -> None:
    if os.geteuid() == 0:
        # root ignores permissions; use a path below a regular file instead
        (tmp_path / "file").write_text("x")
        data = tmp_path / "file" / "data"
    else:
        data = tmp_path / "ro"
        data.mkdir(mode=0o500)
    r = cli(data, "user", "list")
    assert r.returncode == 1
    assert r.stderr.startswith("postfach: error: ") and len(r.stderr.strip().splitlines()) == 1


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def serve_env(data: Path, **ports: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("POSTFACH_")}
    env.update(
        POSTFACH_DATA=str(data), POSTFACH_SUBMISSION="off", POSTFACH_SUBMISSIONS="off",
        POSTFACH_IMAP="off", POSTFACH_IMAPS="off", POSTFACH_HTTP="off", POSTFACH_LMTP="off",
        POSTFACH_POP3S="off",
    )  # fmt: skip
    env.update(ports)
    return env


def test_port_in_use_is_one_clear_line(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        env = serve_env(tmp_path / "d", POSTFACH_SMTP=f"127.0.0.1:{port}", POSTFACH_POP3="off")
        r = subprocess.run([*POSTFACH, "serve"], env=env, capture_output=True, text=True,
                           timeout=60)  # fmt: skip
    assert r.returncode == 1
    assert r.stderr.strip().splitlines()[-1] == (
        f"postfach: error: cannot listen on 127.0.0.1:{port} for smtp: address already in use"
        " (set POSTFACH_SMTP=HOST:PORT or off)"
    )


def test_first_run_initialises_and_says_what_next(tmp_path: Path) -> None:
    data = tmp_path / "fresh"
    smtp, pop3 = free_port(), free_port()
    env = serve_env(data, POSTFACH_SMTP=f"127.0.0.1:{smtp}", POSTFACH_POP3=f"127.0.0.1:{pop3}")
    proc = subprocess.Popen([*POSTFACH, "serve"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", pop3), timeout=1).close()
                break
            except OSError:
                time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    assert f"127.0.0.1:{smtp}" in out and f"127.0.0.1:{pop3}" in out
    assert "user add" in out
    assert (data / "postfach.db").exists() and (data / "tls" / "cert.pem").exists()
    assert "localhost" in cli(data, "domain", "list").stdout


def test_user_set_changes_a_setting(tmp_path: Path) -> None:
    data = tmp_path / "d"
    r = cli(data, "user", "add", "a@localhost", "--password-stdin", stdin="pw\n")
    assert r.returncode == 0, r.stderr
    r = cli(data, "user", "set", "a@localhost", "sent_copy", "auto")
    assert r.returncode == 0 and "sent_copy = auto" in r.stdout
    r = cli(data, "user", "set", "a@localhost", "colour", "blue")
    assert r.returncode == 1 and r.stderr.startswith("postfach: error: unknown setting")

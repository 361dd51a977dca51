"""Connection limits and slow clients against a real ``postfach serve`` (issue 6, point 3).

Each limit is shown with the reply a client sees, and the flood test opens thousands of slow and
non-reading connections from many loopback addresses (127.0.0.2 ... all reach the server on
Linux) while a normal client logs in, delivers and fetches. Figures go to the log (``-s``) and
to docs/reliability/limits.md.
"""

from __future__ import annotations

import contextlib
import imaplib
import itertools
import os
import poplib
import resource
import selectors
import smtplib
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from proc import ServerProcess, spawn

USER = "alice@example.org"
PASSWORD = "s3cret-limits"


def _server(tmp_path: Path, limits: str, timeouts: str = "") -> ServerProcess:
    data = tmp_path / "data"
    data.mkdir()
    (data / "postfach.toml").write_text(f"[limits]\n{limits}\n[timeouts]\n{timeouts}\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("POSTFACH_")}
    for cmd in (["domain", "add", "example.org"], ["user", "add", USER, "--password-stdin"]):
        r = subprocess.run(
            [sys.executable, "-m", "postfach", "--data", str(data), *cmd],
            input=PASSWORD + "\n",
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
        )
        assert r.returncode == 0, r.stderr
    return spawn(data)


@contextlib.contextmanager
def running(tmp_path: Path, limits: str, timeouts: str = "") -> Iterator[ServerProcess]:
    server = _server(tmp_path, limits, timeouts)
    try:
        yield server
    finally:
        server.kill()


def connect(port: int, source: str = "127.0.0.1", rcvbuf: int = 0) -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    s.bind((source, 0))
    s.settimeout(10)
    s.connect(("127.0.0.1", port))
    return s


def read_line(s: socket.socket) -> bytes:
    buf = b""
    while not buf.endswith(b"\n"):
        chunk = s.recv(1)
        if not chunk:
            break
        buf += chunk
    return buf


def read_until_closed(s: socket.socket, timeout: float = 10.0) -> bytes:
    s.settimeout(timeout)
    out = b""
    with contextlib.suppress(ConnectionResetError):
        while chunk := s.recv(65536):
            out += chunk
    return out


def wait_for(predicate: object, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.05)
    raise AssertionError("condition not reached in time")


def message(subject: str, size: int = 0) -> bytes:
    head = f"From: bob@example.net\r\nTo: {USER}\r\nSubject: {subject}\r\n\r\n".encode()
    return head + (b"y" * 76 + b"\r\n") * (1 + size // 78)


GREETINGS = {"smtp": b"220 ", "imap": b"* OK", "pop3": b"+OK"}
REFUSALS = {
    "smtp": b"421 4.7.0 mx.example.org too many connections",
    "imap": b"* BYE [UNAVAILABLE] too many connections",
    "pop3": b"-ERR [SYS/TEMP] too many connections",
}


# ---- (a) each limit with its reply ---------------------------------------------------------


def test_connection_limits_per_ip_and_total_with_protocol_replies(tmp_path: Path) -> None:
    with running(tmp_path, "max_connections = 4\nmax_connections_per_ip = 2\n") as server:
        for name in ("smtp", "imap", "pop3"):
            port = server.port(name)
            held = [connect(port, "127.0.0.1"), connect(port, "127.0.0.1")]
            for s in held:
                assert read_line(s).startswith(GREETINGS[name])
            over_ip = connect(port, "127.0.0.1")
            refusal = read_until_closed(over_ip)
            assert refusal.startswith(REFUSALS[name] + b" from your address"), refusal
            assert refusal.count(b"\n") == 1  # one line, then the close
            held += [connect(port, "127.0.0.2"), connect(port, "127.0.0.3")]
            for s in held[2:]:
                assert read_line(s).startswith(GREETINGS[name])
            over_total = connect(port, "127.0.0.4")
            refusal = read_until_closed(over_total)
            assert refusal.startswith(REFUSALS[name] + b", try again later"), refusal
            # A slot is given back when its connection ends.
            held.pop(0).close()

            def admitted(port: int = port, name: str = name) -> bool:
                s = connect(port, "127.0.0.5")
                ok = read_line(s).startswith(GREETINGS[name])
                s.close()
                return ok

            wait_for(admitted)
            for s in held:
                s.close()
        # Implicit TLS: over the limit the connection is closed before any handshake.
        ctx = ssl.create_default_context()
        ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
        for name in ("imaps", "submissions"):
            port = server.port(name)
            held_tls = []
            for _ in range(2):
                t = ctx.wrap_socket(connect(port))
                assert read_line(t).startswith(b"* OK" if name == "imaps" else b"220 ")
                held_tls.append(t)
            with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
                ctx.wrap_socket(connect(port)).recv(1)
            for t in held_tls:
                t.close()
        log = server.log_text()
        assert "event=refused reason=per-ip" in log and "event=refused reason=total" in log


def test_session_limit_per_account_imap_and_pop3(tmp_path: Path) -> None:
    with running(tmp_path, "max_sessions_per_user = 2\n") as server:
        first = imaplib.IMAP4("127.0.0.1", server.port("imap"))
        first.login(USER, PASSWORD)
        pop = poplib.POP3("127.0.0.1", server.port("pop3"))
        pop.user(USER)
        pop.pass_(PASSWORD)  # the second session: POP3 counts with IMAP
        third = imaplib.IMAP4("127.0.0.1", server.port("imap"))
        with pytest.raises(imaplib.IMAP4.error, match=r"\[LIMIT\] too many sessions"):
            third.login(USER, PASSWORD)
        pop.quit()
        other_pop = poplib.POP3("127.0.0.1", server.port("pop3"))
        other_pop.user(USER)
        second = imaplib.IMAP4("127.0.0.1", server.port("imap"))
        second.login(USER, PASSWORD)  # the POP3 slot was given back at QUIT
        with pytest.raises(poplib.error_proto, match=r"-ERR \[IN-USE\] too many sessions"):
            other_pop.pass_(PASSWORD)
        second.logout()
        third.login(USER, PASSWORD)  # the same connection may try again: not an auth failure
        for c in (first, third):
            c.logout()
        other_pop.close()
        assert "result=session-limit" in server.log_text()


def test_slowloris_commands_are_cut_off_at_their_deadline(tmp_path: Path) -> None:
    limits = "command_timeout = 1.5\nmin_rate = 1024\n"
    timeouts = "smtp = 2\nimap_login = 30\npop3_autologout = 30\n"
    with running(tmp_path, limits, timeouts) as server:
        conns = {name: connect(server.port(name)) for name in ("smtp", "imap", "pop3")}
        for name, s in conns.items():
            assert read_line(s).startswith(GREETINGS[name])
        idle = connect(server.port("imap"))
        assert read_line(idle).startswith(b"* OK")
        start = time.monotonic()
        drip = {"smtp": b"EHLO slow.example", "imap": b"a1 CAPABILITY", "pop3": b"CAPA"}
        done: dict[str, tuple[float, bytes]] = {}
        sel = selectors.DefaultSelector()
        for name, s in conns.items():
            s.setblocking(False)
            sel.register(s, selectors.EVENT_READ, name)
        i = 0
        while len(done) < 3 and time.monotonic() - start < 15:
            for name, s in conns.items():
                if name not in done and i < len(drip[name]):
                    with contextlib.suppress(OSError):
                        s.send(drip[name][i : i + 1])  # one byte every 0.25 s, never a line end
            i += 1
            for key, _ in sel.select(timeout=0.25):
                name = key.data
                try:
                    got = key.fileobj.recv(4096)  # type: ignore[union-attr]
                except (BlockingIOError, ConnectionResetError):
                    got = b""
                done.setdefault(name, (time.monotonic() - start, b""))
                done[name] = (done[name][0], done[name][1] + got)
                if not got:
                    sel.unregister(key.fileobj)
        assert done["imap"][1].startswith(b"* BYE Command not completed in time")
        assert done["pop3"][1].startswith(b"-ERR command not completed in time")
        assert done["smtp"][1].startswith(b"421 4.4.2 mx.example.org Error: timeout exceeded")
        for name in ("imap", "pop3"):
            assert 1.0 < done[name][0] < 5.0, done
        assert 1.5 < done["smtp"][0] < 6.0, done
        # A client that is merely idle (no command started) is not cut off by that deadline.
        idle.sendall(b"a2 NOOP\r\n")
        assert read_line(idle).startswith(b"a2 OK")
        idle.close()
        log = server.log_text()
        assert "reason=command-timeout" in log


def test_a_client_pipelining_without_pause_is_not_taken_for_a_slow_one(tmp_path: Path) -> None:
    """Its buffer is never empty between reads, but every command completes: no deadline."""
    with running(tmp_path, "command_timeout = 1\n") as server:
        s = connect(server.port("imap"))
        read_line(s)
        cmds = [f"n{k} NOOP\r\n".encode() for k in range(300)]
        # Each send ends three octets into the next command: the buffer is never empty.
        chunks = [cmds[0][:3]] + [a[3:] + b[:3] for a, b in itertools.pairwise(cmds)]
        chunks.append(cmds[-1][3:])
        start = time.monotonic()
        for chunk in chunks:
            s.sendall(chunk)
            time.sleep(0.01)
        assert time.monotonic() - start > 2.0  # twice the command timeout
        s.sendall(b"z LOGOUT\r\n")
        replies = read_until_closed(s)
        assert replies.count(b" OK NOOP completed") == 300 and b"z OK" in replies, replies[-200:]
        assert b"not completed in time" not in replies


def test_smtp_data_deadline_grows_with_the_data_and_stops_a_dripping_sender(
    tmp_path: Path,
) -> None:
    with running(tmp_path, "min_rate = 1024\n", "smtp = 2\n") as server:
        # Steady: 300 kB over about 3 s, longer than the 2 s timeout, but far above 1 KiB/s.
        body = message("steady", 300_000)
        with smtplib.SMTP("127.0.0.1", server.port("smtp"), timeout=30) as smtp:
            smtp.ehlo("steady.example")
            smtp.mail("bob@example.net")
            smtp.rcpt(USER)
            assert smtp.docmd("DATA")[0] == 354
            step = len(body) // 30
            for k in range(0, len(body), step):
                assert smtp.sock is not None
                smtp.sock.sendall(body[k : k + step])
                time.sleep(0.1)
            smtp.sock.sendall(b".\r\n")
            code, text = smtp.getreply()
            assert code == 250, text
        # Dripping: one byte every 0.2 s inside DATA.
        s = connect(server.port("smtp"))
        assert read_line(s).startswith(b"220")
        for cmd in (
            b"EHLO drip.example",
            b"MAIL FROM:<bob@example.net>",
            f"RCPT TO:<{USER}>".encode(),
        ):
            s.sendall(cmd + b"\r\n")
            while (line := read_line(s))[3:4] != b" ":
                assert line
            assert line.startswith(b"250"), line
        s.sendall(b"DATA\r\n")
        assert read_line(s).startswith(b"354")
        start = time.monotonic()
        s.setblocking(False)
        reply = b""
        while time.monotonic() - start < 15:
            with contextlib.suppress(OSError):
                s.send(b"z")
            time.sleep(0.2)
            with contextlib.suppress(BlockingIOError):
                reply += s.recv(4096)
            if reply:
                break
        assert reply.startswith(b"421 4.4.2"), reply
        assert 1.5 < time.monotonic() - start < 6.0
        assert "in_data=True" in server.log_text()


def test_clients_that_never_read_are_dropped(tmp_path: Path) -> None:
    limits = "write_timeout = 1\nmin_rate = 1024\n"
    with running(tmp_path, limits) as server:
        with smtplib.SMTP("127.0.0.1", server.port("smtp"), timeout=30) as smtp:
            for k in range(12):
                smtp.sendmail("bob@example.net", [USER], message(f"big {k}", 500_000))
        # IMAP: FETCH every message (about 6 MB) and never read a byte of it.
        s = connect(server.port("imap"), rcvbuf=4096)
        read_line(s)
        s.sendall(
            f'a LOGIN {USER} "{PASSWORD}"\r\na SELECT INBOX\r\nf FETCH 1:* BODY[]\r\n'.encode()
        )
        # POP3: RETR them all, pipelined, never read.
        p = connect(server.port("pop3"), rcvbuf=4096)
        p.sendall(f"USER {USER}\r\nPASS {PASSWORD}\r\n".encode())
        p.sendall(b"".join(f"RETR {k}\r\n".encode() for k in range(1, 13)))

        def dropped() -> bool:
            return server.log_text().count("reason=write-timeout") >= 2

        wait_for(dropped, timeout=20)
        log = server.log_text()
        assert log.count("event=write-timeout") >= 2
        # The server really hung up: what we never read is followed by a reset or EOF.
        for sock in (s, p):
            sock.settimeout(10)
            with contextlib.suppress(ConnectionResetError):
                while sock.recv(1 << 20):
                    pass
            sock.close()
        # And it still serves a client that does read.
        imap = imaplib.IMAP4("127.0.0.1", server.port("imap"))
        imap.login(USER, PASSWORD)
        assert imap.select("INBOX")[1] == [b"12"]
        imap.logout()


# ---- (b) the flood -------------------------------------------------------------------------

FLOOD_PER_IP = 50  # = max_connections_per_ip
FLOOD_IPS = 16  # per service: 16 addresses x 50 = 800 connections each, 2400 in all
FIRST_BYTES = {"smtp": b"EHLO flood", "imap": b"f1 LOGIN flood", "pop3": b"USER flood"}


def server_fds(server: ServerProcess) -> int:
    """Open files of the server, its worker processes included."""
    total = 0
    for pid in server.tree():
        with contextlib.suppress(FileNotFoundError):
            total += len(os.listdir(f"/proc/{pid}/fd"))
    return total


def server_rss_mb(server: ServerProcess) -> float:
    """Resident memory of the server, summed over its processes."""
    total = 0.0
    for pid in server.tree():
        with contextlib.suppress(FileNotFoundError):
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) / 1024
    return total


def normal_client(server: ServerProcess, subject: str) -> dict[str, float]:
    """Deliver by SMTP, then read it back by IMAP and POP3; seconds for each."""
    took: dict[str, float] = {}
    t = time.monotonic()
    with smtplib.SMTP("127.0.0.1", server.port("smtp"), timeout=30) as smtp:
        smtp.sendmail("bob@example.net", [USER], message(subject))
    took["smtp"] = time.monotonic() - t
    t = time.monotonic()
    imap = imaplib.IMAP4("127.0.0.1", server.port("imap"), timeout=30)
    imap.login(USER, PASSWORD)
    imap.select("INBOX")
    typ, found = imap.search(None, "SUBJECT", subject)
    assert typ == "OK" and found[0], found
    typ, data = imap.fetch(found[0].split()[-1], "(BODY.PEEK[])")
    assert typ == "OK" and subject.encode() in data[0][1]  # type: ignore[index]
    imap.logout()
    took["imap"] = time.monotonic() - t
    t = time.monotonic()
    pop = poplib.POP3("127.0.0.1", server.port("pop3"), timeout=30)
    pop.user(USER)
    pop.pass_(PASSWORD)
    count = len(pop.list()[1])
    assert any(subject.encode() in line for line in pop.retr(count)[1])
    pop.quit()
    took["pop3"] = time.monotonic() - t
    return took


def test_flood_of_slow_and_nonreading_connections_leaves_a_normal_client_served(
    tmp_path: Path,
) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(hard, 20_000)
    if want < 8_000:
        pytest.skip(f"needs 8000 file descriptors, the hard limit is {hard}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))  # the server inherits it
    flood: list[tuple[str, socket.socket]] = []
    limits = f"max_connections = 1000\nmax_connections_per_ip = {FLOOD_PER_IP}\n"
    limits += "command_timeout = 15\nwrite_timeout = 5\n"
    timeouts = "smtp = 25\nimap_login = 25\npop3_autologout = 25\n"
    try:
        with running(tmp_path, limits, timeouts) as server:
            baseline = server_fds(server)
            rss_before = server_rss_mb(server)
            t_open = time.monotonic()
            for n, name in enumerate(("smtp", "imap", "pop3")):
                port = server.port(name)
                for ip in range(FLOOD_IPS):
                    for k in range(FLOOD_PER_IP):
                        s = connect(port, f"127.0.{n + 1}.{ip + 2}", rcvbuf=4096)
                        s.setblocking(False)
                        if k % 2:  # half drip a command byte by byte, half stay mute
                            s.send(FIRST_BYTES[name][:1])
                        flood.append((name, s))
            opened = time.monotonic() - t_open
            wait_for(lambda: server_fds(server) - baseline >= len(flood) - 10, timeout=30)
            held = server_fds(server) - baseline
            # Over the per-IP limit even now: refused with the protocol's line, at once.
            extra = connect(server.port("imap"), "127.0.2.2")
            assert read_until_closed(extra).startswith(b"* BYE [UNAVAILABLE]")
            # Keep dripping while the normal client works: one more byte per connection.
            for i, (name, s) in enumerate(flood):
                if i % 2:
                    with contextlib.suppress(OSError):
                        s.send(FIRST_BYTES[name][1:2])
            took = normal_client(server, "served-during-the-flood")
            rss_during = server_rss_mb(server)
            assert max(took.values()) < 5.0, took
            # The timeouts take the slow connections away without any help from us.
            t_drop = time.monotonic()
            wait_for(lambda: server_fds(server) - baseline < 20, timeout=90)
            dropped_after = time.monotonic() - t_drop
            wait_for(lambda: server.log_text().count("event=disconnect") >= 1600, timeout=10)
            log = server.log_text()
            print(
                f"\nflood: {len(flood)} connections opened in {opened:.1f} s, {held} held"
                f" by the server; normal client smtp {took['smtp']:.2f} s,"
                f" imap {took['imap']:.2f} s, pop3 {took['pop3']:.2f} s;"
                f" server RSS {rss_before:.0f} MB before, {rss_during:.0f} MB during;"
                f" all dropped {dropped_after:.1f} s after the normal client was done;"
                f" command-timeout {log.count('reason=command-timeout')},"
                f" autologout {log.count('reason=autologout')},"
                f" smtp timeouts {log.count('event=timeout remote=')}"
            )
            assert held >= len(flood) - 10
            assert log.count("reason=command-timeout") >= 2 * FLOOD_IPS * FLOOD_PER_IP // 2 - 10
            # And afterwards the server is as good as new.
            took_after = normal_client(server, "served-after-the-flood")
            assert max(took_after.values()) < 5.0, took_after
    finally:
        for _, s in flood:
            s.close()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))

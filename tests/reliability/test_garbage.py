"""Garbage to every listener of a real server process, while other clients are being served.

Cases (``GARBAGE``): random octets, a 200 KB line, binary with NULs, a ``{99999999999}`` literal,
an unbalanced literal, commands in the wrong state, a TLS ClientHello on a plaintext port, an
HTTP request. Listeners: SMTP, LMTP, submission, POP3, IMAP (plaintext) and POP3S, IMAPS,
submissions (implicit TLS).

Each case must get proper errors only (SMTP ``4xx``/``5xx``, with an RFC 3463 code such as
``5.5.2`` once EHLO negotiated them (RFC 2034 §3); POP3 ``-ERR``; IMAP ``BAD``/``NO``/``BYE``,
or the ``+`` a synchronising literal asks for), or a clean close; and afterwards the same
connection either still works (a valid command gets its normal answer) or is closed. A TLS port
given plaintext closes without ever answering in plaintext. Throughout, three bystanders
connected before the garbage (an IMAP session with INBOX selected, a POP3 session in
TRANSACTION state, an SMTP session after EHLO) must have every NOOP answered within 5 seconds,
also while another client streams 30 MB without a line end. The server log must show no
traceback and no internal error at the end.
"""

from __future__ import annotations

import contextlib
import random
import re
import smtplib
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from hostile import ALICE, ImapRaw, Pop3Raw, RawLines, served
from proc import ServerProcess

pytestmark = pytest.mark.timeout(300)


def client_hello() -> bytes:
    """The first flight of a real TLS client (no network involved)."""
    ctx = ssl.create_default_context()
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ctx.wrap_bio(incoming, outgoing, server_hostname="mx.example.org")
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


_rng = random.Random(20260601)
RANDOM = bytes(_rng.randrange(256) for _ in range(8192)).replace(b"{", b"(")
GARBAGE = {
    "random octets": RANDOM,
    "200 KB line": b"A" * 200_000 + b"\r\n",
    "binary with NULs": b"\x00\x01\x02\xff\xfe\r\n\x00\x00\n\x1b[2J\r\n",
    "huge literal": b"a1 LOGIN {99999999999}\r\na2 APPEND INBOX {99999999999+}\r\n",
    "unbalanced literal": b"a1 LOGIN {5}\r\nab",
    "wrong state": b"a1 FETCH 1 BODY[]\r\nDONE\r\nRETR 1\r\nSTAT\r\nDATA\r\nRCPT TO:<a@b>\r\n",
    "TLS ClientHello": client_hello(),
    "HTTP request": b"GET / HTTP/1.1\r\nHost: localhost\r\nUser-Agent: garbage\r\n\r\n",
}
# Clients that would never send EHLO first.
NO_EHLO = {"TLS ClientHello", "HTTP request"}

SMTP_LIKE = ("smtp", "lmtp", "submission")
PLAIN = (*SMTP_LIKE, "pop3", "imap")
TLS_PORTS = ("pop3s", "imaps", "submissions")


@dataclass
class Bystanders:
    imap: ImapRaw
    pop3: Pop3Raw
    smtp: RawLines
    checks: int = 0
    slowest: float = 0.0

    def check(self) -> None:
        """Every bystander answers a NOOP within its 5 s socket timeout."""
        t0 = time.monotonic()
        status, _ = self.imap.tagged(b"NOOP")
        assert b" OK " in status, status
        assert self.pop3.command("NOOP").startswith(b"+OK")
        self.smtp.send(b"NOOP\r\n")
        assert self.smtp.line().startswith(b"250"), "SMTP bystander not served"
        self.checks += 1
        self.slowest = max(self.slowest, time.monotonic() - t0)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    srv = served(tmp_path_factory.mktemp("garbage"))
    with smtplib.SMTP("127.0.0.1", srv.port("smtp"), timeout=30) as s:
        s.sendmail("a@remote.example", [ALICE], b"Subject: one\r\n\r\nfor the bystanders\r\n")
    try:
        yield srv
        assert srv.proc.poll() is None, "the server died"
    finally:
        srv.terminate()
    log = srv.log_text()
    for bad in ("Traceback", "internal error", "SERVERBUG"):
        assert bad not in log, log[-5000:]


@pytest.fixture(scope="module")
def bystanders(server: ServerProcess) -> Iterator[Bystanders]:
    imap = ImapRaw(server.port("imap"), timeout=5)
    imap.login()
    status, _ = imap.tagged(b"SELECT INBOX")
    assert b" OK " in status, status
    pop3 = Pop3Raw(server.port("pop3"), timeout=5)
    pop3.login()
    smtp = RawLines(server.port("smtp"), timeout=5)
    assert smtp.line().startswith(b"220")
    smtp.send(b"EHLO bystander.example\r\n")
    while not smtp.line().startswith(b"250 "):
        pass
    b = Bystanders(imap, pop3, smtp)
    yield b
    b.check()
    print(f"bystanders: {b.checks} rounds of NOOPs, slowest round {b.slowest:.3f} s")
    for conn in (imap, pop3, smtp):
        conn.close()


def _lines(data: bytes) -> list[bytes]:
    return [ln for ln in data.split(b"\r\n") if ln]


def _read_until(
    sock: socket.socket, done: re.Pattern[bytes], limit: float = 15
) -> tuple[bytes, bool]:
    """Read until ``done`` matches a complete line or the peer closes; (data, closed)."""
    data = b""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            continue
        except (ConnectionResetError, BrokenPipeError):
            return data, True
        if not chunk:
            return data, True
        data += chunk
        if any(done.fullmatch(ln) for ln in data.split(b"\r\n")):
            return data, False
    raise AssertionError(f"no answer and no close within {limit} s: {data[-500:]!r}")


def _send_all(sock: socket.socket, data: bytes) -> None:
    # The server may close the connection on us: allowed.
    with contextlib.suppress(BrokenPipeError, ConnectionResetError):
        sock.sendall(data)


# What a valid command gets, per protocol, to show the connection still works.
PROBE = {
    "smtp": (b"\r\nNOOP\r\n", re.compile(rb"250[ -].*")),
    "lmtp": (b"\r\nNOOP\r\n", re.compile(rb"250[ -].*")),
    "submission": (b"\r\nNOOP\r\n", re.compile(rb"250[ -].*")),
    "pop3": (b"\r\nQUIT\r\n", re.compile(rb"\+OK.*")),
    "imap": (b"\r\nzz9 NOOP\r\n", re.compile(rb"zz9 OK.*")),
}
ERROR_LINE = {
    "pop3": re.compile(rb"-ERR .*"),
    "imap": re.compile(rb"(\S+ (BAD|NO)|\* BAD|\* BYE|\+) .*"),
}
SMTP_ERROR = re.compile(rb"[45]\d\d[ -].*")
SMTP_ENHANCED = re.compile(rb"[45]\d\d[ -][45]\.\d{1,3}\.\d{1,3} .*")


@pytest.mark.parametrize("case", list(GARBAGE))
@pytest.mark.parametrize("proto", PLAIN)
def test_garbage_gets_errors_and_others_are_served(
    server: ServerProcess, bystanders: Bystanders, proto: str, case: str
) -> None:
    sock = socket.create_connection(("127.0.0.1", server.port(proto)), timeout=1)
    try:
        greeting = sock.recv(4096)
        assert greeting.startswith((b"220", b"+OK", b"* OK")), greeting
        ehlo = proto in SMTP_LIKE and case not in NO_EHLO
        if ehlo:
            sock.sendall(b"LHLO x\r\n" if proto == "lmtp" else b"EHLO garbage.example\r\n")
            _read_until(sock, re.compile(rb"250 .*"))
        sender = threading.Thread(target=_send_all, args=(sock, GARBAGE[case]))
        sender.start()
        bystanders.check()  # served while the garbage arrives
        sender.join(30)
        probe, answered = PROBE[proto]
        unbalanced = case == "unbalanced literal" and proto == "imap"
        if unbalanced:
            # The server waits for three more literal octets; nothing else can be said.
            data, closed = _read_until(sock, re.compile(rb"\+ .*"))
        else:
            _send_all(sock, probe)
            data, closed = _read_until(sock, answered)
        bystanders.check()
    finally:
        sock.close()

    lines = _lines(data)
    if not closed and not unbalanced:
        assert answered.fullmatch(lines[-1]), lines[-3:]
        lines = lines[:-1]  # the probe's answer; everything before answers the garbage
    assert lines or closed, f"{proto} said nothing to {case!r}"
    for line in lines:
        if proto in SMTP_LIKE:
            pattern = SMTP_ENHANCED if ehlo else SMTP_ERROR
            if line.startswith(b"221"):  # closing after too many errors
                continue
        else:
            pattern = ERROR_LINE[proto]
        assert pattern.fullmatch(line), f"{proto} answered {case!r} with {line[:200]!r}"
        assert b"internal error" not in line and b"SERVERBUG" not in line, line
        assert all(b >= 0x20 or b == 0x09 for b in line), f"control octets in a reply: {line!r}"


@pytest.mark.parametrize("case", [c for c in GARBAGE if c != "TLS ClientHello"])
@pytest.mark.parametrize("proto", TLS_PORTS)
def test_plaintext_on_tls_ports_closes(
    server: ServerProcess, bystanders: Bystanders, proto: str, case: str
) -> None:
    sock = socket.create_connection(("127.0.0.1", server.port(proto)), timeout=1)
    try:
        sender = threading.Thread(target=_send_all, args=(sock, GARBAGE[case]))
        sender.start()
        bystanders.check()
        sender.join(30)
        data, closed = _read_until(sock, re.compile(rb"(?!)"), limit=10)
    finally:
        sock.close()
    assert closed
    # Nothing in plaintext: at most a TLS alert record (content type 21).
    assert not data or data[0] == 0x15, data[:100]


@pytest.mark.parametrize("proto", PLAIN)
def test_a_30_megabyte_line_does_not_stall_other_clients(
    server: ServerProcess, bystanders: Bystanders, proto: str
) -> None:
    sock = socket.create_connection(("127.0.0.1", server.port(proto)), timeout=30)
    chunk = b"x" * 65536
    sent = 0
    try:
        sock.recv(4096)
        while sent < 30 * 1024 * 1024:
            try:
                sock.sendall(chunk)
            except (BrokenPipeError, ConnectionResetError):
                break  # the server may hang up on an endless line
            sent += len(chunk)
            if sent % (4 * 1024 * 1024) == 0:
                bystanders.check()
    finally:
        sock.close()
    bystanders.check()


def test_commands_in_the_wrong_state_after_login(
    server: ServerProcess, bystanders: Bystanders
) -> None:
    imap = ImapRaw(server.port("imap"), timeout=10)
    try:
        imap.login()
        wrong = [b"FETCH 1 BODY[]", b"LOGIN a b", b"AUTHENTICATE PLAIN", b"CLOSE", b"EXPUNGE"]
        wrong += [b"STORE 1 +FLAGS (\\Seen)", b"UID SEARCH ALL", b"DONE"]
        for command in wrong:
            status, _ = imap.tagged(command)
            assert re.fullmatch(rb"r\d+ (BAD|NO) .*\r\n", status), (command, status)
        status, _ = imap.tagged(b"NOOP")
        assert b" OK " in status
    finally:
        imap.close()
    bystanders.check()
    # The POP3 bystander holds the maildrop: a second login is refused, the first goes on.
    pop = Pop3Raw(server.port("pop3"), timeout=10)
    try:
        assert pop.command(f"USER {ALICE}").startswith(b"+OK")
        assert pop.command("PASS correct horse").startswith(b"-ERR [IN-USE]")
        for line in ("STAT", "RETR 1", "DELE 1", "TOP 1 1", "UIDL", "NOOP", "RSET"):
            assert pop.command(line).startswith(b"-ERR"), line
    finally:
        pop.close()
    smtp = RawLines(server.port("smtp"), timeout=10)
    try:
        assert smtp.line().startswith(b"220")
        smtp.send(b"EHLO wrong.example\r\n")
        while not smtp.line().startswith(b"250 "):
            pass
        for line, code in ((b"DATA", b"503 5.5.1"), (b"RCPT TO:<alice@example.org>", b"503 5.5.1"),
                           (b"MAIL FROM:<a@remote.example>", b"250"),
                           (b"MAIL FROM:<a@remote.example>", b"503 5.5.1"),
                           (b"DATA", b"503 5.5.1")):  # fmt: skip
            smtp.send(line + b"\r\n")
            reply = smtp.line()
            assert reply.startswith(code), (line, reply)
    finally:
        smtp.close()
    bystanders.check()

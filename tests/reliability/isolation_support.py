"""Shared pieces of the isolation and open-relay suites (issue 6, point 5).

A real server in a thread (`support.start_server`) with three accounts in two domains, each
holding mail with a distinctive marker, a resolver that never asks DNS (queued mail stays
queued: every lookup is a temporary failure), no login throttle (hundreds of deliberately failed
logins would otherwise wait up to 15 s each; the throttle has its own tests), raw line clients
for IMAP, POP3 and SMTP that hand back every byte the server sent, and a snapshot of an
account's store state to prove that nothing of it changed.
"""

from __future__ import annotations

import base64
import logging
import re
import smtplib
import socket
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from postfach.auth.passwords import hash_password
from postfach.smtp.client import TemporaryDnsError
from support import Lines, RunningServer, start_server

ALICE = "alice@example.org"
BOB = "bob@example.org"
OTHER = "bob@other.example"  # same local part, another domain
PASSWORDS = {ALICE: "alice pw 1", BOB: "bob pw 2", OTHER: "other pw 3"}

#: Present in every message of bob's (both accounts) and never typed by alice's tests.
SECRET = b"BOBSECRET"
#: Present in bob's folder names and keyword; may appear only where alice typed it herself.
FOLDER_MARK = b"bobonly"
BOB_FOLDER = "Geheim-bobonly"
BOB_SUBFOLDER = "Geheim-bobonly/Tief"
BOB_KEYWORD = "$Bobonly"

#: Attempts made per protocol (printed at the end of a run with ``-s``; see the docs).
ATTEMPTS: Counter[str] = Counter()


class NeverResolver:
    """Every DNS question is a temporary failure: queued mail stays queued, nothing is dialled."""

    def __init__(self) -> None:
        self.asked: list[str] = []

    async def mx(self, domain: str) -> list[tuple[int, str]]:
        self.asked.append(domain)
        raise TemporaryDnsError(f"{domain}: tests never ask DNS")

    async def addresses(self, host: str) -> list[str]:
        self.asked.append(host)
        raise TemporaryDnsError(f"{host}: tests never ask DNS")


class ErrorLog(logging.Handler):
    """Collects ERROR records and logged exceptions (an internal error is a finding)."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def take(self) -> list[str]:
        out = [f"{r.name}: {r.getMessage()}" for r in self.records]
        self.records.clear()
        return out


@contextmanager
def isolation_server(data: Path) -> Iterator[tuple[RunningServer, ErrorLog]]:
    errors = ErrorLog()
    root = logging.getLogger("postfach")
    root.addHandler(errors)
    # The suite fails logins on purpose, hundreds of times: no delay, no lockout.
    data.mkdir(parents=True, exist_ok=True)
    (data / "postfach.toml").write_text(
        "[auth]\nfailure_delay = 0\nlockout_ip = 0\nlockout_account = 0\n"
    )
    srv = start_server(data, app_options={"resolver": NeverResolver()})
    try:
        for name, pw in PASSWORDS.items():
            domain = name.rpartition("@")[2]
            if not srv.store.is_local_domain(domain):
                srv.store.add_domain(domain)
            srv.store.add_account(name, hash_password(pw), 0, 0)
        yield srv, errors
    finally:
        srv.stop()
        root.removeHandler(errors)


# ---- account snapshots ------------------------------------------------------------------------


@dataclass(frozen=True)
class Snapshot:
    mailboxes: tuple[tuple[Any, ...], ...]
    messages: tuple[tuple[Any, ...], ...]
    subscriptions: tuple[str, ...]
    usage: tuple[int, int]


def snapshot(srv: RunningServer, name: str) -> Snapshot:
    """Everything of an account a client could notice: folders, UIDs, flags, MODSEQs, usage."""
    store = srv.store
    acc = store.get_account(name)
    assert acc is not None
    boxes = sorted(store.list_mailboxes(acc.id), key=lambda b: b.name)
    mailboxes = tuple(
        (b.id, b.name, b.uidvalidity, b.uidnext, b.highestmodseq, b.special_use) for b in boxes
    )
    messages = tuple(
        (b.name, m.uid, m.modseq, int(m.flags), m.keywords, m.blob, m.size)
        for b in boxes
        for m in store.list_messages(b.id)
    )
    subs = tuple(sorted(store.list_subscriptions(acc.id)))
    return Snapshot(mailboxes, messages, subs, (acc.used_bytes, acc.used_messages))


def stored_texts(srv: RunningServer, name: str) -> list[bytes]:
    store = srv.store
    acc = store.get_account(name)
    assert acc is not None
    return [
        store.read_blob(m.blob)
        for b in store.list_mailboxes(acc.id)
        for m in store.list_messages(b.id)
    ]


def wait_for(pred: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.02)
    raise AssertionError("condition not met in time")


def mail(frm: str, to: str, subject: str, body: str) -> bytes:
    return (
        f"From: <{frm}>\r\nTo: <{to}>\r\nSubject: {subject}\r\n"
        f"Message-ID: <{subject.replace(' ', '.')}@test>\r\n\r\n{body}\r\n"
    ).encode()


def plain(authzid: str, authcid: str, password: str) -> str:
    return base64.b64encode(f"{authzid}\0{authcid}\0{password}".encode()).decode()


def b64(text: str | bytes) -> str:
    raw = text.encode() if isinstance(text, str) else text
    return base64.b64encode(raw).decode()


# ---- raw clients ------------------------------------------------------------------------------

_LITERAL_AT_END = re.compile(rb"~?\{(\d+)\+?\}$")


@dataclass
class ImapReply:
    status: str  # OK / NO / BAD / BYE (connection closed)
    code: str | None
    raw: bytes  # every byte the server sent for this command
    untagged: list[bytes]  # untagged lines with their literals inlined

    @property
    def tagged(self) -> bytes:
        return self.raw.rstrip(b"\r\n").rsplit(b"\r\n", 1)[-1]


class RawImap:
    """One IMAP connection; `cmd` sends one command and returns every byte of the answer."""

    def __init__(self, port: int, timeout: float = 20) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.buf = b""
        self.n = 0
        self.greeting = self._line()
        self.closed = False

    def _fill(self) -> None:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise EOFError(self.buf)
        self.buf += chunk

    def _line(self) -> bytes:
        while b"\r\n" not in self.buf:
            self._fill()
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def _exact(self, n: int) -> bytes:
        while len(self.buf) < n:
            self._fill()
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def _response(self) -> bytes:
        """One response line with its literals (``{n}`` at a line end) inlined."""
        line = self._line()
        while m := _LITERAL_AT_END.search(line):
            line += b"\r\n" + self._exact(int(m.group(1))) + self._line()
        return line

    def cmd(self, text: bytes | str, *, count: str = "imap") -> ImapReply:
        if isinstance(text, str):
            text = text.encode()
        ATTEMPTS[count] += 1
        self.n += 1
        tag = f"Z{self.n:04d}".encode()
        self.sock.sendall(tag + b" " + text + b"\r\n")
        raw = b""
        untagged: list[bytes] = []
        while True:
            try:
                line = self._response()
            except (EOFError, ConnectionError):
                self.closed = True
                return ImapReply("BYE", None, raw, untagged)
            raw += line + b"\r\n"
            if line.startswith(tag + b" "):
                status = line.split(b" ", 2)[1].decode()
                m = re.match(rb"[A-Z]+ \[([^\]]*)\]", line[len(tag) + 1 :])
                code = m.group(1).decode() if m else None
                return ImapReply(status, code, raw, untagged)
            if line.startswith(b"+ "):
                self.sock.sendall(b"*\r\n")  # never continue a literal we did not announce
                continue
            untagged.append(line)

    def login(self, user: str, password: str) -> ImapReply:
        r = self.cmd(f'LOGIN "{user}" "{password}"', count="imap-auth")
        assert r.status == "OK", r.raw
        return r

    def close(self) -> None:
        with suppress(OSError):
            self.sock.sendall(b"L LOGOUT\r\n")
        self.sock.close()


class RawLines(Lines):
    """A line client for POP3 and SMTP: `send` a line, `reply` reads one (multi-line) answer."""

    def __init__(self, port: int, timeout: float = 20) -> None:
        super().__init__(port, timeout)

    def send(self, data: bytes | str) -> None:
        self.sock.sendall((data.encode() if isinstance(data, str) else data) + b"\r\n")

    def pop_reply(self, multiline: bool = False) -> bytes:
        first = self.line()
        if not multiline or not first.startswith(b"+OK"):
            return first
        out = [first]
        while (ln := self.line()) != b".":
            out.append(ln)
        return b"\r\n".join(out)

    def smtp_reply(self) -> bytes:
        out = [self.line()]
        while len(out[-1]) > 3 and out[-1][3:4] == b"-":
            out.append(self.line())
        return b"\r\n".join(out)

    def close(self) -> None:
        self.sock.close()


def smtp_client(port: int) -> smtplib.SMTP:
    s = smtplib.SMTP("127.0.0.1", port, timeout=30)
    s.ehlo("client.test")
    return s

"""What the hostile-input tests share: a served account and small raw clients.

``served(tmp)`` makes a data directory with ``alice@example.org`` (through the CLI, as an admin
would) and starts ``postfach serve`` in a child process (`proc.spawn`).
"""

from __future__ import annotations

import imaplib
import os
import socket
import subprocess
import sys
from pathlib import Path

from proc import ServerProcess, spawn

ALICE = "alice@example.org"
PASSWORD = "correct horse"

# FETCH answers for the nasty corpus carry quoted strings of a megabyte.
imaplib._MAXLINE = 64 * 1024 * 1024  # type: ignore[attr-defined]


def _cli(data: Path, *args: str, stdin: str | None = None) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("POSTFACH_")}
    r = subprocess.run(
        [sys.executable, "-m", "postfach", "--data", str(data), *args],
        input=stdin,
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr


def served(tmp: Path) -> ServerProcess:
    data = tmp / "data"
    _cli(data, "domain", "add", "example.org")
    _cli(data, "user", "add", ALICE, "--password-stdin", stdin=PASSWORD + "\n")
    return spawn(data)


def imap_login(server: ServerProcess, timeout: float = 60) -> imaplib.IMAP4:
    m = imaplib.IMAP4("127.0.0.1", server.port("imap"), timeout=timeout)
    m.login(ALICE, PASSWORD)
    return m


class RawLines:
    """A line-oriented raw connection (any protocol): send bytes, read CRLF lines."""

    def __init__(self, port: int, timeout: float = 30) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.file = self.sock.makefile("rb")

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def line(self) -> bytes:
        """The next line with its line end; b"" once the server closed the connection."""
        return self.file.readline(16 * 1024 * 1024)

    def close(self) -> None:
        self.file.close()
        self.sock.close()


class Pop3Raw(RawLines):
    """POP3 with byte-exact multi-line answers (poplib splits lines and loses bare CRs)."""

    def __init__(self, port: int, timeout: float = 60) -> None:
        super().__init__(port, timeout)
        greeting = self.line()
        assert greeting.startswith(b"+OK"), greeting

    def command(self, line: str) -> bytes:
        self.send(line.encode() + b"\r\n")
        return self.line()

    def login(self) -> None:
        assert self.command(f"USER {ALICE}").startswith(b"+OK")
        reply = self.command(f"PASS {PASSWORD}")
        assert reply.startswith(b"+OK"), reply

    def multiline(self, line: str) -> bytes:
        """The un-stuffed body of a multi-line answer (RFC 1939 §3)."""
        first = self.command(line)
        assert first.startswith(b"+OK"), (line, first)
        lines = []
        while (ln := self.line()) != b".\r\n":
            assert ln, "connection closed inside a multi-line answer"
            lines.append(ln[1:] if ln.startswith(b".") else ln)
        return b"".join(lines)


class ImapRaw(RawLines):
    """IMAP without imaplib, which rewrites every line end of an APPENDed message to CRLF."""

    def __init__(self, port: int, timeout: float = 60) -> None:
        super().__init__(port, timeout)
        self.greeting = self.line()
        self.counter = 0

    def tagged(self, command: bytes, *literals: bytes) -> tuple[bytes, list[bytes]]:
        """Send ``command`` (its ``{n}`` markers answered by ``literals`` after each ``+``);
        return the tagged status line and the lines before it."""
        self.counter += 1
        tag = b"r%d" % self.counter
        pieces = (tag + b" " + command).split(b"\x01")  # \x01 marks where a literal goes
        assert len(pieces) == len(literals) + 1
        self.send(pieces[0])
        before: list[bytes] = []
        for lit, piece in zip(literals, pieces[1:], strict=True):
            self.send(b"{%d}\r\n" % len(lit))
            reply = self.line()
            if not reply.startswith(b"+"):
                return reply, before
            self.send(lit + piece)
        self.send(b"\r\n")
        while True:
            ln = self.line()
            assert ln, "connection closed"
            if ln.startswith(tag + b" "):
                return ln, before
            before.append(ln)

    def login(self) -> None:
        status, _ = self.tagged(f"LOGIN {ALICE} \x01".encode(), PASSWORD.encode())
        assert b" OK " in status, status

    def append(self, mailbox: str, message: bytes) -> bytes:
        status, _ = self.tagged(f"APPEND {mailbox} \x01".encode(), message)
        return status

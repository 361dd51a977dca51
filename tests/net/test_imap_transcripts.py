"""IMAP transcripts (``tests/transcripts/imap/*.txt``) replayed against a real server.

Format, one line each (STYLE.md example 7)::

    # a comment
    C: a1 LOGIN alice@example.org "correct horse"     client line (CRLF added)
    S: a1 OK *                                        expected server line
    C2: b1 NOOP                                       a second connection (C2/S2, C3/S3 ...)

An expected line ending in ``*`` matches any line starting with what comes before the ``*``;
every other expected line must match exactly. Connections open on first use and their greeting
is read (and checked to be ``* OK``) before the first client line. Every transcript starts with
a fresh server holding alice@example.org with the messages "one" and "two" in INBOX, and
bob@example.org with an empty INBOX, both with the password ``correct horse``.
"""

from __future__ import annotations

import re
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from support import PASSWORD, RunningServer, message, start_server

pytestmark = pytest.mark.timeout(60)

TRANSCRIPTS = sorted((Path(__file__).resolve().parents[1] / "transcripts" / "imap").glob("*.txt"))
_LINE = re.compile(r"([CS])([0-9]*): ?(.*)")


class Connection:
    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        self.buf = b""

    def send(self, line: str) -> None:
        self.sock.sendall(line.encode("utf-8") + b"\r\n")

    def line(self) -> str:
        while b"\r\n" not in self.buf:
            try:
                chunk = self.sock.recv(65536)
            except TimeoutError:
                raise AssertionError(f"no line from the server (have {self.buf!r})") from None
            if not chunk:
                raise AssertionError(f"server closed the connection (have {self.buf!r})")
            self.buf += chunk
        raw, self.buf = self.buf.split(b"\r\n", 1)
        return raw.decode("utf-8", "replace")


def matches(expected: str, got: str) -> bool:
    if expected.endswith("*"):
        return got.startswith(expected[:-1])
    return got == expected


@pytest.fixture
def seeded(tmp_path: Path) -> Iterator[RunningServer]:
    srv = start_server(tmp_path / "data")
    try:
        srv.add_user("alice@example.org")
        srv.add_user("bob@example.org")
        srv.send(["alice@example.org"], message("one"))
        srv.send(["alice@example.org"], message("two"))
        yield srv
    finally:
        srv.stop()


@pytest.mark.parametrize("path", TRANSCRIPTS, ids=[p.stem for p in TRANSCRIPTS])
def test_transcript(seeded: RunningServer, path: Path) -> None:
    assert PASSWORD == "correct horse"
    conns: dict[str, Connection] = {}

    def conn(n: str) -> Connection:
        if n not in conns:
            c = conns[n] = Connection(seeded.port("imap"))
            greeting = c.line()
            assert greeting.startswith("* OK "), greeting
        return conns[n]

    try:
        for number, text in enumerate(path.read_text("utf-8").splitlines(), 1):
            if not text.strip() or text.startswith("#"):
                continue
            m = _LINE.fullmatch(text)
            assert m is not None, f"{path.name}:{number}: cannot read {text!r}"
            kind, n, payload = m.group(1), m.group(2) or "1", m.group(3)
            if kind == "C":
                conn(n).send(payload)
            else:
                try:
                    got = conn(n).line()
                except AssertionError as exc:
                    raise AssertionError(f"{path.name}:{number}: want {payload!r}: {exc}") from None
                assert matches(payload, got), f"{path.name}:{number}: want {payload!r}, got {got!r}"
    finally:
        for c in conns.values():
            c.sock.close()


def test_there_are_transcripts() -> None:
    assert len(TRANSCRIPTS) >= 5

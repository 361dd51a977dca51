"""Test support shared by the socket and interop suites: a real server in a background thread."""

from __future__ import annotations

import asyncio
import smtplib
import socket
import ssl
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from postfach.app import App
from postfach.auth.passwords import hash_password
from postfach.config import load_config
from postfach.store.api import INBOX
from postfach.store.sqlite import SqliteMailstore

EPHEMERAL = {
    "POSTFACH_SMTP": "127.0.0.1:0",
    "POSTFACH_LMTP": "127.0.0.1:0",
    "POSTFACH_POP3": "127.0.0.1:0",
    "POSTFACH_POP3S": "127.0.0.1:0",
    "POSTFACH_SUBMISSION": "127.0.0.1:0",
    "POSTFACH_SUBMISSIONS": "127.0.0.1:0",
    "POSTFACH_IMAP": "127.0.0.1:0",
    "POSTFACH_IMAPS": "127.0.0.1:0",
    "POSTFACH_HTTP": "off",
    "POSTFACH_HOSTNAME": "mx.example.org",
}

# A cheap hash for test accounts would hide the real cost; argon2id is fast enough here.
PASSWORD = "correct horse"


@dataclass
class RunningServer:
    data: Path
    app: App
    loop: asyncio.AbstractEventLoop
    thread: threading.Thread
    addresses: dict[str, tuple[str, int]] = field(default_factory=dict)

    @property
    def store(self) -> SqliteMailstore:
        assert self.app.store is not None
        return self.app.store

    def port(self, name: str) -> int:
        return self.addresses[name][1]

    def add_user(
        self, name: str, quota: int = 0, password: str = PASSWORD, messages: int = 0
    ) -> None:
        domain = name.rpartition("@")[2]
        if not self.store.is_local_domain(domain):
            self.store.add_domain(domain)
        self.store.add_account(name, hash_password(password), quota, messages)

    def send(
        self, rcpts: list[str], body: bytes, sender: str = "sender@remote.example"
    ) -> dict[str, tuple[int, bytes]]:
        with smtplib.SMTP("127.0.0.1", self.port("smtp"), timeout=30) as s:
            return s.sendmail(sender, rcpts, body)

    def inbox(self, name: str) -> list[bytes]:
        """The stored bytes of the messages in ``name``'s INBOX, oldest first."""
        acc = self.store.get_account(name)
        assert acc is not None
        box = self.store.get_mailbox(acc.id, INBOX)
        assert box is not None
        return [self.store.read_blob(m.blob) for m in self.store.list_messages(box.id)]

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.app.request_stop)
        self.thread.join(timeout=30)


def start_server(
    data: Path, *, app_options: dict[str, Any] | None = None, toml: str = "", **env: str
) -> RunningServer:
    """``app_options`` go to `App` (e.g. ``resolver=`` and ``mx_port=`` for outbound tests);
    ``toml``, if given, is written to the data directory's ``postfach.toml`` first."""
    if toml:
        data.mkdir(parents=True, exist_ok=True)
        (data / "postfach.toml").write_text(toml)
    cfg = load_config(data, env={**EPHEMERAL, **env})
    app = App(cfg, **(app_options or {}))
    ready = threading.Event()
    box: dict[str, object] = {}

    def main() -> None:
        async def go() -> None:
            try:
                await app.start()
            except BaseException as exc:
                box["error"] = exc
                ready.set()
                return
            box["loop"] = asyncio.get_running_loop()
            ready.set()
            await app.serve_forever()

        asyncio.run(go())

    thread = threading.Thread(target=main, name="postfach-test-server", daemon=True)
    thread.start()
    if not ready.wait(30):
        raise RuntimeError("server did not start")
    if "error" in box:
        raise box["error"]  # type: ignore[misc]
    loop = box["loop"]
    assert isinstance(loop, asyncio.AbstractEventLoop)
    return RunningServer(data, app, loop, thread, dict(app.addresses))


def smtp_replies(port: int, data: bytes, replies: int, step: int = 0) -> list[bytes]:
    """After the greeting, send ``data`` (at once, or ``step`` octets at a time) and return the
    last lines of the next ``replies`` replies, without their CRLF."""
    with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
        f = sock.makefile("rb")
        assert f.readline().startswith(b"220 ")
        if step:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            for i in range(0, len(data), step):
                sock.sendall(data[i : i + step])
        else:
            sock.sendall(data)
        out: list[bytes] = []
        while len(out) < replies:
            line = f.readline()
            assert line, out
            if line[3:4] != b"-":
                out.append(line.rstrip(b"\r\n"))
        return out


def message(subject: str = "hello", body: str = "Hi there.\r\n", size: int = 0) -> bytes:
    text = (
        f"From: Sender <sender@remote.example>\r\nTo: someone@example.org\r\n"
        f"Subject: {subject}\r\nMessage-ID: <{subject.replace(' ', '.')}@remote.example>\r\n"
        f"\r\n{body}"
    ).encode()
    if size > len(text):
        line = b"0123456789abcdefghijklmnopqrstuvwxyz0123456789abcdefghijklmnopqrstuvwxyz\r\n"
        text += line * ((size - len(text)) // len(line) + 1)
    return text


class Lines:
    """A raw connection to 127.0.0.1 read a CRLF-terminated line at a time (`line`)."""

    def __init__(self, port: int, timeout: float = 10) -> None:
        self.sock: socket.socket | ssl.SSLSocket = socket.create_connection(
            ("127.0.0.1", port), timeout=timeout
        )
        self.buf = b""

    def line(self) -> bytes:
        while b"\r\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError(self.buf)
            self.buf += chunk
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line


class Raw(Lines):
    """A line-oriented raw IMAP connection for what imaplib cannot express."""

    def __init__(self, port: int, timeout: float = 10) -> None:
        super().__init__(port, timeout)
        self.greeting = self.line()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def until(self, tag: bytes) -> list[bytes]:
        out = []
        while True:
            ln = self.line()
            out.append(ln)
            if ln.startswith(tag + b" "):
                return out

    def close(self) -> None:
        self.sock.close()

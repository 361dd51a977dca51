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

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.app.request_stop)
        self.thread.join(timeout=30)


def start_server(
    data: Path, *, app_options: dict[str, Any] | None = None, **env: str
) -> RunningServer:
    """``app_options`` go to `App` (e.g. ``resolver=`` and ``mx_port=`` for outbound tests)."""
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

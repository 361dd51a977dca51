"""The asyncio POP3 server over real sockets on 127.0.0.1, driven by the stdlib ``poplib``."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import logging
import poplib
import random
import socket
import ssl
import threading
import time
from collections.abc import Callable, Collection, Coroutine, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from postfach.errors import MailboxInUse
from postfach.pop3.server import Pop3Server, start_pop3_server
from postfach.pop3.session import Maildrop, MaildropEntry, Pop3Settings
from support import Lines

pytestmark = pytest.mark.timeout(60)

T = TypeVar("T")
HOST = "127.0.0.1"

MSG1 = b"From: a@example.org\r\nSubject: one\r\n\r\nHello\r\n.dot line\r\n..\r\n.\r\nend\r\n"
MSG2 = b"From: b@example.org\r\nSubject: two\r\n\r\nL1\r\nL2\r\nL3\r\n"


# ---- fake backend (in-memory, used from the server's event loop thread) ---------------------


class FakeMaildrop:
    def __init__(self, backend: FakeBackend, account: str) -> None:
        self.backend = backend
        self.account = account
        self.messages = list(backend.mail[account])
        self._entries = [MaildropEntry(f"u{i}", len(m)) for i, m in enumerate(self.messages)]
        self.commits: list[frozenset[int]] = []
        self.releases = 0

    @property
    def entries(self) -> Sequence[MaildropEntry]:
        return self._entries

    async def read(self, index: int) -> bytes:
        return self.messages[index]

    async def commit(self, deleted: Collection[int]) -> None:
        self.commits.append(frozenset(deleted))
        self.backend.mail[self.account] = [
            m for i, m in enumerate(self.messages) if i not in deleted
        ]

    async def release(self) -> None:
        self.releases += 1
        self.backend.locked.discard(self.account)


class FakeBackend:
    def __init__(self, messages: list[bytes] | None = None) -> None:
        self.users = {"bob": "secret"}
        self.mail = {"bob": [MSG1, MSG2] if messages is None else messages}
        self.locked: set[str] = set()
        self.maildrops: list[FakeMaildrop] = []

    async def authenticate(self, username: str, password: str, remote_ip: str) -> str | None:
        assert remote_ip == HOST
        return username if self.users.get(username) == password else None

    async def open_maildrop(self, account: str) -> Maildrop:
        if account in self.locked:
            raise MailboxInUse(account)
        self.locked.add(account)
        md = FakeMaildrop(self, account)
        self.maildrops.append(md)
        return md


# ---- a server on its own event loop thread --------------------------------------------------


class ServerThread:
    def __init__(
        self,
        backend: FakeBackend,
        settings: Pop3Settings,
        ssl_context: ssl.SSLContext | None = None,
        implicit_tls: bool = False,
    ) -> None:
        self.backend = backend
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.server: Pop3Server = self.call(
            start_pop3_server(backend, settings, HOST, 0, ssl_context, implicit_tls)
        )
        self.port = self.server.bound_port

    def call(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(10)

    def stop(self) -> None:
        if self.loop.is_closed():
            return

        async def stop() -> None:
            self.server.close()
            await self.server.wait_closed()

        try:
            self.call(stop())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(5)
            self.loop.close()


def wait_for(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.01)


LOOPBACK_OK = Pop3Settings(hostname="mail.example", allow_plaintext_on_loopback=True)
TLS_ONLY = Pop3Settings(hostname="mail.example")


@pytest.fixture
def make_server() -> Iterator[Callable[..., ServerThread]]:
    servers: list[ServerThread] = []

    def factory(
        settings: Pop3Settings = LOOPBACK_OK, backend: FakeBackend | None = None, **kw: Any
    ) -> ServerThread:
        st = ServerThread(backend or FakeBackend(), settings, **kw)
        servers.append(st)
        return st

    yield factory
    for st in servers:
        st.stop()


# ---- TLS material ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cert_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address(HOST))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    d = tmp_path_factory.mktemp("tls")
    cert_path, key_path = d / "cert.pem", d / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


@pytest.fixture
def server_ctx(cert_files: tuple[Path, Path]) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(*cert_files)
    return ctx


@pytest.fixture
def client_ctx(cert_files: tuple[Path, Path]) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(cert_files[0]))


# ---- raw socket helper ----------------------------------------------------------------------


class Raw(Lines):
    def __init__(self, port: int) -> None:
        super().__init__(port, timeout=5)

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def multiline(self) -> list[bytes]:
        first = self.line()
        assert first.startswith(b"+OK"), first
        out = []
        while (line := self.line()) != b".":
            out.append(line)
        return out

    def at_eof(self) -> bool:
        return self.buf == b"" and self.sock.recv(1) == b""

    def close(self) -> None:
        self.sock.close()


# ---- tests ----------------------------------------------------------------------------------


def test_full_session_with_poplib(make_server: Callable[..., ServerThread]) -> None:
    srv = make_server()
    client = poplib.POP3(HOST, srv.port, timeout=5)
    try:
        assert client.getwelcome() == b"+OK mail.example POP3 ready"
        caps = client.capa()
        assert "USER" in caps
        assert caps["SASL"] == ["PLAIN", "LOGIN"]
        assert "STLS" not in caps  # no TLS context
        assert caps["IMPLEMENTATION"] == ["postfach"]
        client.user("bob")
        assert client.pass_("secret").startswith(b"+OK bob's maildrop has 2 messages")
        assert client.stat() == (2, len(MSG1) + len(MSG2))
        resp, listing, _ = client.list()
        assert listing == [f"1 {len(MSG1)}".encode(), f"2 {len(MSG2)}".encode()]
        resp, msg_lines, octets = client.retr(1)
        assert resp == f"+OK {len(MSG1)} octets".encode()
        assert b"\r\n".join(msg_lines) + b"\r\n" == MSG1
        assert octets == len(MSG1)
        resp, top_lines, _ = client.top(2, 1)
        assert top_lines == [b"From: b@example.org", b"Subject: two", b"", b"L1"]
        assert client.uidl()[1] == [b"1 u0", b"2 u1"]
        assert client.uidl(2) == b"+OK 2 u1"
        client.dele(1)
        with pytest.raises(poplib.error_proto, match="already deleted"):
            client.retr(1)
        assert client.noop() == b"+OK"
        assert client.quit().startswith(b"+OK mail.example POP3 server signing off")
    finally:
        client.close()
    md = srv.backend.maildrops[0]
    assert md.commits == [frozenset({0})]
    wait_for(lambda: md.releases == 1)
    assert srv.backend.mail["bob"] == [MSG2]


def test_plaintext_refused_without_tls(make_server: Callable[..., ServerThread]) -> None:
    srv = make_server(TLS_ONLY)
    client = poplib.POP3(HOST, srv.port, timeout=5)
    try:
        assert "USER" not in client.capa()
        with pytest.raises(poplib.error_proto, match=r"\[AUTH\]"):
            client.user("bob")
        client.quit()
    finally:
        client.close()


def test_stls_with_poplib(
    make_server: Callable[..., ServerThread],
    server_ctx: ssl.SSLContext,
    client_ctx: ssl.SSLContext,
) -> None:
    srv = make_server(TLS_ONLY, ssl_context=server_ctx)
    client = poplib.POP3(HOST, srv.port, timeout=5)
    try:
        caps = client.capa()
        assert "STLS" in caps
        assert "USER" not in caps
        assert client.stls(client_ctx) == b"+OK begin TLS negotiation"
        caps = client.capa()
        assert "STLS" not in caps
        assert "USER" in caps
        client.user("bob")
        client.pass_("secret")
        assert b"\r\n".join(client.retr(2)[1]) + b"\r\n" == MSG2
        client.quit()
    finally:
        client.close()
    wait_for(lambda: srv.backend.maildrops[0].releases == 1)


def test_stls_discards_pipelined_plaintext(
    make_server: Callable[..., ServerThread],
    server_ctx: ssl.SSLContext,
    client_ctx: ssl.SSLContext,
) -> None:
    srv = make_server(TLS_ONLY, ssl_context=server_ctx)
    raw = Raw(srv.port)
    try:
        raw.line()
        raw.send(b"STLS\r\nUSER bob\r\nCAPA\r\n")  # injected after STLS, in plaintext
        assert raw.line() == b"+OK begin TLS negotiation"
        assert raw.buf == b""
        raw.sock = client_ctx.wrap_socket(raw.sock, server_hostname=HOST)
        raw.send(b"PASS secret\r\nNOOP\r\n")
        assert raw.line() == b"-ERR PASS must directly follow a successful USER"
        assert raw.line() == b"-ERR NOOP not allowed in AUTHORIZATION state"  # no CAPA reply first
        raw.send(b"USER bob\r\nPASS secret\r\nSTAT\r\nQUIT\r\n")
        assert raw.line() == b"+OK send PASS"
        assert raw.line().startswith(b"+OK bob's maildrop")
        assert raw.line() == f"+OK 2 {len(MSG1) + len(MSG2)}".encode()
        assert raw.line().startswith(b"+OK mail.example POP3 server signing off")
    finally:
        raw.close()


def test_stls_refused_without_context(make_server: Callable[..., ServerThread]) -> None:
    srv = make_server()
    raw = Raw(srv.port)
    try:
        raw.line()
        raw.send(b"STLS\r\nCAPA\r\n")
        assert raw.line() == b"-ERR TLS is not available"
        assert "STLS" not in {c.decode() for c in raw.multiline()}
    finally:
        raw.close()


def test_implicit_tls(
    make_server: Callable[..., ServerThread],
    server_ctx: ssl.SSLContext,
    client_ctx: ssl.SSLContext,
) -> None:
    srv = make_server(TLS_ONLY, ssl_context=server_ctx, implicit_tls=True)
    client = poplib.POP3_SSL(HOST, srv.port, context=client_ctx, timeout=5)
    try:
        caps = client.capa()
        assert "STLS" not in caps
        assert "USER" in caps
        client.user("bob")
        client.pass_("secret")
        assert b"\r\n".join(client.retr(1)[1]) + b"\r\n" == MSG1
        client.dele(2)
        client.quit()
    finally:
        client.close()
    assert srv.backend.maildrops[0].commits == [frozenset({1})]


def test_implicit_tls_requires_context() -> None:
    with pytest.raises(ValueError):
        Pop3Server(FakeBackend(), LOOPBACK_OK, HOST, 0, implicit_tls=True)


def big_message(size: int = 5 * 1024 * 1024) -> bytes:
    rng = random.Random(1939)
    parts = [b"From: big@example.org\r\nSubject: big\r\n\r\n"]
    total = len(parts[0])
    specials = [b".", b"..", b".leading dot", b"", b". .", b"..."]
    while total < size:
        if rng.random() < 0.1:
            line = rng.choice(specials)
        else:
            line = rng.randbytes(rng.randrange(0, 700)).replace(b"\r", b"").replace(b"\n", b"")
        parts.append(line + b"\r\n")
        total += len(line) + 2
    return b"".join(parts)


def test_retr_5mb_is_byte_exact(make_server: Callable[..., ServerThread]) -> None:
    msg = big_message()
    srv = make_server(backend=FakeBackend([msg, MSG2]))
    client = poplib.POP3(HOST, srv.port, timeout=10)
    try:
        client.user("bob")
        client.pass_("secret")
        resp, msg_lines, octets = client.retr(1)
        assert resp == f"+OK {len(msg)} octets".encode()
        assert octets == len(msg)
        assert b"\r\n".join(msg_lines) + b"\r\n" == msg
        # The connection is still in step afterwards.
        assert b"\r\n".join(client.retr(2)[1]) + b"\r\n" == MSG2
        client.quit()
    finally:
        client.close()


def test_dropped_connection_commits_nothing_and_releases(
    make_server: Callable[..., ServerThread],
) -> None:
    srv = make_server()
    raw = Raw(srv.port)
    raw.line()
    raw.send(b"USER bob\r\nPASS secret\r\nDELE 1\r\nDELE 2\r\n")
    for _ in range(4):
        assert raw.line().startswith(b"+OK")
    raw.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    raw.close()  # RST, no QUIT
    md = srv.backend.maildrops[0]
    wait_for(lambda: md.releases == 1)
    assert md.commits == []
    assert srv.backend.mail["bob"] == [MSG1, MSG2]
    wait_for(lambda: srv.server.connection_count == 0)


def test_pipelining_and_half_close(make_server: Callable[..., ServerThread]) -> None:
    srv = make_server()
    raw = Raw(srv.port)
    try:
        raw.line()
        commands = b"USER bob\r\nPASS secret\r\n" + b"LIST\r\nRETR 1\r\nUIDL 1\r\n" * 50
        raw.send(commands + b"QUIT\r\n")
        raw.sock.shutdown(socket.SHUT_WR)  # replies must still come back
        assert raw.line() == b"+OK send PASS"
        assert raw.line().startswith(b"+OK bob's")
        for _ in range(50):
            assert len(raw.multiline()) == 2
            assert raw.multiline()[-1] == b"end"
            assert raw.line() == b"+OK 1 u0"
        assert raw.line().startswith(b"+OK mail.example POP3 server signing off")
        assert raw.at_eof()
    finally:
        raw.close()


def test_long_line_and_garbage(make_server: Callable[..., ServerThread]) -> None:
    srv = make_server()
    raw = Raw(srv.port)
    try:
        raw.line()
        raw.send(b"A" * 1_000_000 + b"\r\n\x00\xff\xfe garbage\r\nCAPA\r\n")
        assert raw.line() == b"-ERR line too long"
        assert raw.line() == b"-ERR unknown command"
        assert b"TOP" in raw.multiline()
    finally:
        raw.close()


def test_error_limit_closes_connection(make_server: Callable[..., ServerThread]) -> None:
    srv = make_server(Pop3Settings(allow_plaintext_on_loopback=True, max_errors=5))
    raw = Raw(srv.port)
    try:
        raw.line()
        raw.send(b"BOGUS\r\n" * 10)
        for _ in range(4):
            assert raw.line() == b"-ERR unknown command"
        assert raw.line() == b"-ERR too many errors, closing connection"
        assert raw.at_eof()
    finally:
        raw.close()


def test_autologout(make_server: Callable[..., ServerThread]) -> None:
    srv = make_server(
        Pop3Settings(hostname="mail.example", allow_plaintext_on_loopback=True, autologout=0.3)
    )
    raw = Raw(srv.port)
    try:
        raw.line()
        raw.send(b"USER bob\r\nPASS secret\r\nDELE 1\r\n")
        for _ in range(3):
            assert raw.line().startswith(b"+OK")
        assert raw.line() == b"-ERR autologout: idle for too long"
        assert raw.at_eof()
    finally:
        raw.close()
    md = srv.backend.maildrops[0]
    wait_for(lambda: md.releases == 1)
    assert md.commits == []


def test_in_use_across_connections(make_server: Callable[..., ServerThread]) -> None:
    srv = make_server()
    first = poplib.POP3(HOST, srv.port, timeout=5)
    second = poplib.POP3(HOST, srv.port, timeout=5)
    try:
        first.user("bob")
        first.pass_("secret")
        second.user("bob")
        with pytest.raises(poplib.error_proto, match=r"\[IN-USE\]"):
            second.pass_("secret")
        first.quit()
        second.user("bob")
        assert second.pass_("secret").startswith(b"+OK")
        second.quit()
    finally:
        first.close()
        second.close()


def test_server_close_releases_locks(make_server: Callable[..., ServerThread]) -> None:
    srv = make_server()
    client = poplib.POP3(HOST, srv.port, timeout=5)
    try:
        client.user("bob")
        client.pass_("secret")
        client.dele(1)
        srv.stop()
        md = srv.backend.maildrops[0]
        assert md.releases == 1
        assert md.commits == []
        with pytest.raises((poplib.error_proto, OSError, EOFError)):
            client.noop()
    finally:
        client.close()


def test_log_lines(
    make_server: Callable[..., ServerThread], caplog: pytest.LogCaptureFixture
) -> None:
    srv = make_server()
    with caplog.at_level(logging.DEBUG, logger="postfach.pop3"):
        client = poplib.POP3(HOST, srv.port, timeout=5)
        try:
            client.user("bob")
            client.pass_("secret")
            client.quit()
        finally:
            client.close()
        wait_for(lambda: "event=disconnect" in caplog.text)
    assert "secret" not in caplog.text
    connects = [r for r in caplog.records if "event=connect" in r.getMessage()]
    assert len(connects) == 1
    conn_id = connects[0].getMessage().split()[0]
    assert conn_id.startswith("conn=")
    for event in ("event=login result=ok", "event=update", "event=disconnect reason=closed"):
        assert any(event in r.getMessage() and conn_id in r.getMessage() for r in caplog.records)

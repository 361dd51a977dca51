"""Authentication against a real ``postfach serve`` process (issue 6, point 4).

Rehash on login, the lockout shared by IMAP, POP3 and submission, identical answers and
indistinguishable timing for unknown users and wrong passwords, plaintext refused without TLS,
the TLS policy, and certificate reload on SIGHUP under open connections.
"""

from __future__ import annotations

import base64
import hashlib
import os
import signal
import socket
import sqlite3
import ssl
import statistics
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from argon2 import PasswordHasher
from proc import ServerProcess, spawn

from postfach.auth.passwords import hash_password, needs_rehash
from postfach.datadir import open_store
from postfach.tls import ensure_self_signed, fingerprint, server_context

HOST = "127.0.0.1"
PASSWORD = "correct horse"
WEAK = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)
NO_THROTTLE = "[auth]\nfailure_delay = 0\nlockout_ip = 0\nlockout_account = 0\n"


# ---- set-up -------------------------------------------------------------------------------------


def make_data(tmp_path: Path, toml: str, accounts: dict[str, str]) -> Path:
    """A data directory with a config file and accounts (name -> stored hash)."""
    data = tmp_path / "data"
    data.mkdir()
    (data / "postfach.toml").write_text(toml)
    store = open_store(data)
    try:
        store.add_domain("example.org")
        for name, stored in accounts.items():
            store.add_account(name, stored)
    finally:
        store.close()
    return data


@pytest.fixture
def running() -> Iterator[Callable[[Path], ServerProcess]]:
    servers: list[ServerProcess] = []

    def start(data: Path) -> ServerProcess:
        srv = spawn(data)
        servers.append(srv)
        return srv

    yield start
    for srv in servers:
        if srv.terminate() != 0:
            srv.kill()


def stored_hash(data: Path, name: str) -> str:
    db = sqlite3.connect(f"file:{data / 'postfach.db'}?mode=ro", uri=True)
    try:
        row = db.execute("SELECT password FROM accounts WHERE name=?", (name,)).fetchone()
    finally:
        db.close()
    return str(row[0])


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def plain(user: str, password: str) -> str:
    return b64(f"\0{user}\0{password}")


def trusting() -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # the tests look at the fingerprint themselves
    return ctx


# ---- minimal line clients (exact bytes, nothing hidden by a library) ----------------------------


class Line:
    def __init__(self, port: int, *, tls: bool = False) -> None:
        sock: socket.socket = socket.create_connection((HOST, port), timeout=30)
        if tls:
            sock = trusting().wrap_socket(sock)
        self.sock = sock
        self.f = sock.makefile("rb")
        self.greeting = self.f.readline()

    def send(self, line: str) -> None:
        self.sock.sendall(line.encode() + b"\r\n")

    def readline(self) -> bytes:
        line = self.f.readline()
        if not line:
            raise ConnectionError("server closed the connection")
        return line

    def starttls(self) -> None:
        self.f.close()
        self.sock = trusting().wrap_socket(self.sock)
        self.f = self.sock.makefile("rb")

    def peer_fingerprint(self) -> str:
        assert isinstance(self.sock, ssl.SSLSocket)
        der = self.sock.getpeercert(binary_form=True) or b""
        return hashlib.sha256(der).digest().hex(":").upper()

    def close(self) -> None:
        self.f.close()
        self.sock.close()


class Imap(Line):
    n = 0

    def cmd(self, text: str) -> list[bytes]:
        self.n += 1
        tag = f"a{self.n}"
        self.send(f"{tag} {text}")
        lines = []
        while True:
            line = self.readline()
            lines.append(line)
            if line.startswith(tag.encode() + b" "):
                return lines

    def tagged(self, text: str) -> bytes:
        return self.cmd(text)[-1]


class Pop3(Line):
    def cmd(self, text: str) -> bytes:
        self.send(text)
        return self.readline()

    def multiline(self, text: str) -> list[bytes]:
        lines = [self.cmd(text)]
        while lines[0].startswith(b"+OK") and lines[-1] != b".\r\n":
            lines.append(self.readline())
        return lines


class Smtp(Line):
    def reply(self) -> list[bytes]:
        lines = [self.readline()]
        while lines[-1][3:4] == b"-":
            lines.append(self.readline())
        return lines

    def cmd(self, text: str) -> list[bytes]:
        self.send(text)
        return self.reply()


def imap_login(port: int, user: str, password: str) -> bytes:
    c = Imap(port)
    try:
        return c.tagged(f'LOGIN "{user}" "{password}"')
    finally:
        c.close()


def pop3_login(port: int, user: str, password: str) -> bytes:
    c = Pop3(port)
    try:
        assert c.cmd(f"USER {user}").startswith(b"+OK")
        return c.cmd(f"PASS {password}")
    finally:
        c.close()


def smtp_auth(port: int, user: str, password: str) -> bytes:
    c = Smtp(port)
    try:
        c.cmd("EHLO client.example")
        return b"".join(c.cmd(f"AUTH PLAIN {plain(user, password)}"))
    finally:
        c.close()


# ---- 1. rehash on login -------------------------------------------------------------------------


def test_weak_hashes_are_upgraded_on_login_over_each_protocol(
    tmp_path: Path, running: Callable[[Path], ServerProcess]
) -> None:
    users = {f"{p}@example.org": WEAK.hash(PASSWORD) for p in ("imap", "pop3", "smtp")}
    data = make_data(tmp_path, NO_THROTTLE, users)
    assert all(needs_rehash(stored_hash(data, u)) for u in users)
    srv = running(data)
    assert imap_login(srv.port("imap"), "imap@example.org", "wrong").split()[1] == b"NO"
    assert stored_hash(data, "imap@example.org") == users["imap@example.org"]  # failure: kept
    assert b"OK" in imap_login(srv.port("imap"), "imap@example.org", PASSWORD)
    assert pop3_login(srv.port("pop3"), "pop3@example.org", PASSWORD).startswith(b"+OK")
    assert smtp_auth(srv.port("submission"), "smtp@example.org", PASSWORD).startswith(b"235 ")
    for user, old in users.items():
        new = stored_hash(data, user)
        assert new != old and new.startswith("$argon2id$") and not needs_rehash(new), user
    # The new hashes verify: log in again on another protocol each (not from the cache).
    assert pop3_login(srv.port("pop3"), "imap@example.org", PASSWORD).startswith(b"+OK")
    assert smtp_auth(srv.port("submission"), "pop3@example.org", PASSWORD).startswith(b"235 ")
    assert b"OK" in imap_login(srv.port("imap"), "smtp@example.org", PASSWORD)
    assert srv.log_text().count("event=auth-rehash result=ok") == 3
    assert PASSWORD not in srv.log_text()


# ---- 2. lockout, shared by the three protocols --------------------------------------------------


def test_lockout_from_failures_on_imap_applies_to_pop3_and_submission(
    tmp_path: Path, running: Callable[[Path], ServerProcess]
) -> None:
    toml = (
        "[auth]\nfailure_delay = 0\nlockout_ip = 3\nlockout_account = 0\n"
        "lockout_window = 60\nlockout_duration = 6\n"
    )
    data = make_data(tmp_path, toml, {"alice@example.org": hash_password(PASSWORD)})
    srv = running(data)
    imap, pop3, sub = srv.port("imap"), srv.port("pop3"), srv.port("submission")
    for guess in ("guess-one", "guess-two", "guess-three"):
        assert b"[AUTHENTICATIONFAILED]" in imap_login(imap, "alice@example.org", guess)
    locked_at = time.monotonic()
    # Now the right password is refused everywhere, with a temporary error, unchecked ...
    refused = {
        "imap": imap_login(imap, "alice@example.org", PASSWORD),
        "pop3": pop3_login(pop3, "alice@example.org", PASSWORD),
        "submission": smtp_auth(sub, "alice@example.org", PASSWORD),
    }
    assert refused == {
        "imap": b"a1 NO [UNAVAILABLE] too many failed logins; try again later\r\n",
        "pop3": b"-ERR [SYS/TEMP] too many failed logins; try again later\r\n",
        "submission": b"454 4.7.0 Too many failed logins; try again later\r\n",
    }
    # ... and an account that does not exist gets exactly the same answers.
    assert {
        "imap": imap_login(imap, "nobody@example.org", "x"),
        "pop3": pop3_login(pop3, "nobody@example.org", "x"),
        "submission": smtp_auth(sub, "nobody@example.org", "x"),
    } == refused
    log = srv.log_text()
    lockouts = [line for line in log.splitlines() if "event=auth-lockout" in line]
    assert len(lockouts) == 1, lockouts
    assert lockouts[0].endswith(
        "event=auth-lockout scope=ip ip=127.0.0.1 user=alice@example.org failures=3 seconds=6"
    )
    assert log.count("event=auth-refused reason=lockout scope=ip") == 6
    for secret in ("guess-one", "guess-two", "guess-three", PASSWORD):
        assert secret not in log
    time.sleep(max(0.0, locked_at + 6.5 - time.monotonic()))  # temporary: over after 6 s
    assert imap_login(imap, "alice@example.org", PASSWORD).startswith(b"a1 OK")


# ---- 4. no user enumeration: answers and timing -------------------------------------------------


def _transcripts(srv: ServerProcess, user: str, password: str) -> dict[str, list[bytes]]:
    out: dict[str, list[bytes]] = {}
    c = Imap(srv.port("imap"))
    out["imap LOGIN"] = c.cmd(f'LOGIN "{user}" "{password}"')
    out["imap AUTHENTICATE PLAIN"] = c.cmd(f"AUTHENTICATE PLAIN {plain(user, password)}")
    c.send("a9 AUTHENTICATE LOGIN")
    steps = [c.readline()]
    c.send(b64(user))
    steps.append(c.readline())
    c.send(b64(password))
    steps.append(c.readline())
    out["imap AUTHENTICATE LOGIN"] = steps
    c.close()
    p = Pop3(srv.port("pop3"))
    out["pop3 USER/PASS"] = [p.cmd(f"USER {user}"), p.cmd(f"PASS {password}")]
    out["pop3 AUTH PLAIN"] = [p.cmd(f"AUTH PLAIN {plain(user, password)}")]
    out["pop3 AUTH LOGIN"] = [p.cmd("AUTH LOGIN"), p.cmd(b64(user)), p.cmd(b64(password))]
    p.close()
    s = Smtp(srv.port("submission"))
    s.cmd("EHLO client.example")
    out["smtp AUTH PLAIN"] = s.cmd(f"AUTH PLAIN {plain(user, password)}")
    out["smtp AUTH LOGIN"] = s.cmd("AUTH LOGIN") + s.cmd(b64(user)) + s.cmd(b64(password))
    s.close()
    return out


def test_unknown_user_and_wrong_password_get_byte_identical_answers(
    tmp_path: Path, running: Callable[[Path], ServerProcess]
) -> None:
    data = make_data(tmp_path, NO_THROTTLE, {"alice@example.org": hash_password(PASSWORD)})
    srv = running(data)
    wrong = _transcripts(srv, "alice@example.org", "not the password")
    # Same length of name, so that not even the echoed SASL challenges differ in length.
    unknown = _transcripts(srv, "alica@example.org", "not the password")
    assert wrong == unknown
    assert wrong["imap LOGIN"] == [b"a1 NO [AUTHENTICATIONFAILED] invalid credentials\r\n"]
    assert wrong["pop3 USER/PASS"][1] == b"-ERR [AUTH] authentication failed\r\n"
    assert wrong["smtp AUTH PLAIN"] == [b"535 5.7.8 Authentication credentials invalid\r\n"]
    right = _transcripts(srv, "alice@example.org", PASSWORD)  # the control: the clients work
    assert right["imap LOGIN"][-1].startswith(b"a1 OK")
    assert right["smtp AUTH PLAIN"][0].startswith(b"235 ")


def test_unknown_user_and_wrong_password_take_the_same_time(
    tmp_path: Path, running: Callable[[Path], ServerProcess]
) -> None:
    """Interleaved attempts of both kinds over real sockets; medians within 30 %.

    Both kinds cost one argon2id verification (an unknown user is checked against a dummy
    hash with today's parameters); the delay and lockout are off so that only that is measured.
    """
    data = make_data(tmp_path, NO_THROTTLE, {"alice@example.org": hash_password(PASSWORD)})
    srv = running(data)

    def imap(user: str) -> float:
        c = Imap(srv.port("imap"))
        t0 = time.perf_counter()
        reply = c.tagged(f'LOGIN "{user}" "wrong password"')
        took = time.perf_counter() - t0
        c.close()
        assert b"[AUTHENTICATIONFAILED]" in reply
        return took

    def pop3(user: str) -> float:
        c = Pop3(srv.port("pop3"))
        c.cmd(f"USER {user}")
        t0 = time.perf_counter()
        reply = c.cmd("PASS wrong password")
        took = time.perf_counter() - t0
        c.close()
        assert reply.startswith(b"-ERR [AUTH]")
        return took

    def smtp(user: str) -> float:
        c = Smtp(srv.port("submission"))
        c.cmd("EHLO client.example")
        t0 = time.perf_counter()
        reply = c.cmd(f"AUTH PLAIN {plain(user, 'wrong password')}")
        took = time.perf_counter() - t0
        c.close()
        assert reply[0].startswith(b"535 ")
        return took

    rounds = {"imap": (imap, 10), "pop3": (pop3, 5), "submission": (smtp, 5)}
    times: dict[str, list[float]] = {"wrong": [], "unknown": []}
    for attempt, n in rounds.values():
        for i in range(n):
            order = ("wrong", "unknown") if i % 2 == 0 else ("unknown", "wrong")
            for kind in order:
                user = "alice@example.org" if kind == "wrong" else f"nobody{i}@example.org"
                times[kind].append(attempt(user))
    wrong, unknown = statistics.median(times["wrong"]), statistics.median(times["unknown"])
    print(
        f"\nwrong password: median {wrong * 1000:.0f} ms of {len(times['wrong'])};"
        f" unknown user: median {unknown * 1000:.0f} ms of {len(times['unknown'])};"
        f" ratio {unknown / wrong:.2f}"
    )
    assert abs(wrong - unknown) <= 0.3 * max(wrong, unknown), (wrong, unknown)
    # Both really paid for argon2id (a fast path for unknown users would be far below this).
    cost = _argon2_cost()
    assert min(wrong, unknown) >= 0.3 * cost, (wrong, unknown, cost)


def _argon2_cost() -> float:
    stored = hash_password("x")
    t0 = time.perf_counter()
    for _ in range(3):
        with pytest.raises(Exception):  # noqa: B017 - any mismatch error will do
            PasswordHasher().verify(stored, "y")
    return (time.perf_counter() - t0) / 3


# ---- 5. plaintext refused without TLS -----------------------------------------------------------


def test_plaintext_login_refused_without_tls_then_allowed_after_starttls(
    tmp_path: Path, running: Callable[[Path], ServerProcess]
) -> None:
    """``allow_plaintext_on_loopback = false``: loopback is treated like any other network."""
    toml = "[auth]\nallow_plaintext_on_loopback = false\nfailure_delay = 0\n"
    data = make_data(tmp_path, toml, {"alice@example.org": hash_password(PASSWORD)})
    srv = running(data)

    c = Imap(srv.port("imap"))
    caps = c.cmd("CAPABILITY")[0]
    assert b"LOGINDISABLED" in caps and b"AUTH=PLAIN" not in caps and b"STARTTLS" in caps
    assert c.tagged(f'LOGIN "alice@example.org" "{PASSWORD}"').startswith(
        b"a2 NO [PRIVACYREQUIRED]"
    )
    auth = c.tagged(f"AUTHENTICATE PLAIN {plain('alice@example.org', PASSWORD)}")
    assert auth.startswith(b"a3 NO [PRIVACYREQUIRED]")
    assert c.tagged("STARTTLS").startswith(b"a4 OK")
    c.starttls()
    caps = c.cmd("CAPABILITY")[0]
    assert b"LOGINDISABLED" not in caps and b"AUTH=PLAIN" in caps
    assert c.tagged(f'LOGIN "alice@example.org" "{PASSWORD}"').startswith(b"a6 OK")
    c.close()

    p = Pop3(srv.port("pop3"))
    assert b"USER\r\n" not in b"".join(p.multiline("CAPA"))
    assert p.cmd("USER alice@example.org").startswith(b"-ERR [AUTH] plaintext authentication")
    assert p.cmd(f"AUTH PLAIN {plain('alice@example.org', PASSWORD)}").startswith(b"-ERR [AUTH]")
    assert p.cmd("STLS").startswith(b"+OK")
    p.starttls()
    assert b"USER\r\n" in b"".join(p.multiline("CAPA"))
    assert p.cmd("USER alice@example.org").startswith(b"+OK")
    assert p.cmd(f"PASS {PASSWORD}").startswith(b"+OK")
    p.close()

    s = Smtp(srv.port("submission"))
    ehlo = b"".join(s.cmd("EHLO client.example"))
    assert b"AUTH" not in ehlo and b"STARTTLS" in ehlo
    assert s.cmd(f"AUTH PLAIN {plain('alice@example.org', PASSWORD)}")[0].startswith(b"538 5.7.11")
    assert s.cmd("MAIL FROM:<alice@example.org>")[0].startswith(b"530 5.7.0")
    assert s.cmd("STARTTLS")[0].startswith(b"220")
    s.starttls()
    assert b"250-AUTH LOGIN PLAIN\r\n" in s.cmd("EHLO client.example")
    assert s.cmd(f"AUTH PLAIN {plain('alice@example.org', PASSWORD)}")[0].startswith(b"235 ")
    s.close()
    assert PASSWORD not in srv.log_text()


# ---- 6. modern TLS only -------------------------------------------------------------------------


def _client(low: ssl.TLSVersion, high: ssl.TLSVersion, ciphers: str) -> ssl.SSLContext:
    ctx = trusting()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # TLSv1_1 is deprecated: the point
        ctx.minimum_version, ctx.maximum_version = low, high
    ctx.set_ciphers(ciphers)
    return ctx


V11, V12 = ssl.TLSVersion.TLSv1_1, ssl.TLSVersion.TLSv1_2
OLD_CLIENTS = {
    "TLS 1.1": (V11, V11, "ALL:@SECLEVEL=0"),
    "AES128-SHA (CBC, SHA-1)": (V12, V12, "AES128-SHA:ECDHE-ECDSA-AES128-SHA:@SECLEVEL=0"),
    "ECDHE-ECDSA-AES128-SHA256 (CBC)": (V12, V12, "ECDHE-ECDSA-AES128-SHA256"),
    "ECDHE-ECDSA-AES256-SHA384 (CBC)": (V12, V12, "ECDHE-ECDSA-AES256-SHA384"),
}
# asyncio closes the connection right after a failed handshake; the alert may be lost (EOF).
REFUSED = {
    "TLSV1_ALERT_PROTOCOL_VERSION",
    "SSLV3_ALERT_HANDSHAKE_FAILURE",
    "UNEXPECTED_EOF_WHILE_READING",
    "ConnectionResetError",
}


def _handshake(port: int, ctx: ssl.SSLContext) -> tuple[str, str]:
    with socket.create_connection((HOST, port), timeout=30) as raw, ctx.wrap_socket(raw) as tls:
        version, cipher = tls.version(), tls.cipher()
        assert tls.compression() is None
        assert version is not None and cipher is not None
        return version, cipher[0]


def _lax_server(cert: Path, key: Path) -> tuple[int, threading.Thread]:
    """The control: a server that accepts anything, proving the old clients can connect."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        ctx.minimum_version = ssl.TLSVersion.TLSv1
    ctx.set_ciphers("ALL:@SECLEVEL=0")
    ctx.load_cert_chain(cert, key)
    listener = socket.create_server((HOST, 0))

    def serve() -> None:
        with listener:
            for _ in OLD_CLIENTS:
                conn, _ = listener.accept()
                try:
                    ctx.wrap_socket(conn, server_side=True).close()
                except (ssl.SSLError, OSError):
                    conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return listener.getsockname()[1], thread


def test_only_tls12_and_newer_with_aead_suites(
    tmp_path: Path, running: Callable[[Path], ServerProcess]
) -> None:
    data = make_data(tmp_path, NO_THROTTLE, {})
    srv = running(data)
    cert, key = data / "tls" / "cert.pem", data / "tls" / "key.pem"
    lax_port, lax = _lax_server(cert, key)
    for name, (low, high, ciphers) in OLD_CLIENTS.items():
        assert _handshake(lax_port, _client(low, high, ciphers))  # the client itself is able
        for service in ("imaps", "pop3s", "submissions"):
            with pytest.raises((ssl.SSLError, ConnectionResetError)) as exc:
                _handshake(srv.port(service), _client(low, high, ciphers))
            reason = getattr(exc.value, "reason", type(exc.value).__name__)
            assert reason in REFUSED, (name, service, exc.value)
    lax.join(10)
    tls12 = _client(ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_2, "ECDHE+AESGCM:ECDHE+CHACHA20")
    for service in ("imaps", "pop3s", "submissions"):
        version, cipher = _handshake(srv.port(service), tls12)
        assert version == "TLSv1.2" and cipher.startswith("ECDHE-") and "GCM" in cipher
        assert _handshake(srv.port(service), trusting())[0] == "TLSv1.3"
    ctx = server_context(cert, key)
    assert ctx.options & ssl.OP_NO_RENEGOTIATION and ctx.options & ssl.OP_NO_COMPRESSION
    suites = [c["name"] for c in ctx.get_ciphers() if c["protocol"] == "TLSv1.2"]
    assert suites and all(
        s.startswith("ECDHE-") and ("GCM" in s or "CHACHA20" in s) for s in suites
    )


# ---- 7. certificate reload on SIGHUP ------------------------------------------------------------


def _new_cert(where: Path, name: str) -> tuple[Path, Path]:
    where.mkdir(parents=True, exist_ok=True)
    cert, key = where / "cert.pem", where / "key.pem"
    assert ensure_self_signed(cert, key, name)
    return cert, key


def _hup_and_wait(srv: ServerProcess, event: str, count: int) -> None:
    """SIGHUP, then wait for the ``count``-th ``event`` of every server process (each worker
    process, with ``[server] workers`` > 1, reloads and logs for itself)."""
    processes = max(1, len(srv.tree()) - 1)
    os.kill(srv.pid, signal.SIGHUP)
    deadline = time.monotonic() + 20
    while srv.log_text().count(event) < count * processes:
        assert time.monotonic() < deadline, srv.log_text()[-2000:]
        assert srv.proc.poll() is None, "the server died on SIGHUP"
        time.sleep(0.05)


def test_sighup_reloads_the_certificate_without_dropping_connections(
    tmp_path: Path, running: Callable[[Path], ServerProcess]
) -> None:
    data = make_data(tmp_path, NO_THROTTLE, {"alice@example.org": hash_password(PASSWORD)})
    srv = running(data)
    cert, key = data / "tls" / "cert.pem", data / "tls" / "key.pem"
    old_fp = fingerprint(cert)

    tls_conn = Imap(srv.port("imaps"), tls=True)
    assert tls_conn.peer_fingerprint() == old_fp
    assert tls_conn.tagged(f'LOGIN "alice@example.org" "{PASSWORD}"').startswith(b"a1 OK")
    plain_conn = Pop3(srv.port("pop3"))
    assert plain_conn.cmd("USER alice@example.org").startswith(b"+OK")
    assert plain_conn.cmd(f"PASS {PASSWORD}").startswith(b"+OK")

    # 1. New files at the same paths (written aside, then renamed over the old ones).
    new_cert, new_key = _new_cert(tmp_path / "renewed", "renewed.example.org")
    new_fp = fingerprint(new_cert)
    os.replace(new_key, key)
    os.replace(new_cert, cert)
    _hup_and_wait(srv, "event=tls-reload result=ok", 1)
    assert tls_conn.tagged("NOOP").startswith(b"a2 OK")  # the old session goes on
    assert plain_conn.cmd("NOOP").startswith(b"+OK")
    for service in ("imaps", "pop3s", "submissions"):
        c = Line(srv.port(service), tls=True)
        assert c.peer_fingerprint() == new_fp, service
        c.close()
    c = Imap(srv.port("imap"))
    assert c.tagged("STARTTLS").startswith(b"a1 OK")
    c.starttls()
    assert c.peer_fingerprint() == new_fp
    c.close()

    # 2. A broken certificate: one clear error, the one in use stays.
    cert.write_text("-----BEGIN CERTIFICATE-----\nnot a certificate\n-----END CERTIFICATE-----\n")
    _hup_and_wait(srv, "event=tls-reload result=error", 1)
    errors = [line for line in srv.log_text().splitlines() if "event=tls-reload" in line]
    processes = max(1, len(srv.tree()) - 1)
    assert len(errors) == 2 * processes
    assert all("ERROR" in e and "keeping the certificate in use" in e for e in errors[processes:])
    c = Line(srv.port("imaps"), tls=True)
    assert c.peer_fingerprint() == new_fp
    c.close()

    # 3. The config file points at other files: SIGHUP reads the [tls] paths again.
    third_cert, third_key = _new_cert(tmp_path / "third", "third.example.org")
    (data / "postfach.toml").write_text(
        NO_THROTTLE + f'[tls]\ncert = "{third_cert}"\nkey = "{third_key}"\n'
    )
    _hup_and_wait(srv, "event=tls-reload result=ok", 2)
    c = Line(srv.port("pop3s"), tls=True)
    assert c.peer_fingerprint() == fingerprint(third_cert)
    c.close()

    assert tls_conn.tagged("NOOP").startswith(b"a3 OK")
    assert tls_conn.tagged("LOGOUT").startswith(b"a4 OK")
    assert plain_conn.cmd("QUIT").startswith(b"+OK")
    tls_conn.close()
    plain_conn.close()
    assert srv.proc.poll() is None

"""IMAP end to end: SMTP in, the stdlib ``imaplib`` and ``imapclient`` out, one real server."""

from __future__ import annotations

import asyncio
import imaplib
import poplib
import ssl
import time
from pathlib import Path

import pytest

from postfach.imap.server import ImapServer
from postfach.imap.session import ImapBackend, ImapSettings
from postfach.limits import Limits
from postfach.store.hub import Hub
from postfach.store.sqlite import SqliteMailstore
from support import PASSWORD, Raw, RunningServer, message

pytestmark = pytest.mark.timeout(60)

ALICE = "alice@example.org"
BOB = "bob@example.org"


def insecure() -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def imap(server: RunningServer, user: str = ALICE) -> imaplib.IMAP4:
    m = imaplib.IMAP4("127.0.0.1", server.port("imap"), timeout=30)
    m.login(user, PASSWORD)
    return m


def ok(result: tuple[str, list[object]]) -> list[object]:
    typ, data = result
    assert typ == "OK", (typ, data)
    return data


# ---- basics -----------------------------------------------------------------------------------


def test_delivered_mail_can_be_read(server: RunningServer) -> None:
    server.add_user(ALICE)
    server.send([ALICE], message("first"))
    server.send([ALICE], message("second", body="The body.\r\n"))
    m = imap(server)
    assert b"IMAP4REV2" in b" ".join(c.encode() for c in m.capabilities).upper()
    assert ok(m.select("INBOX")) == [b"2"]
    data = ok(m.fetch("2", "(BODY.PEEK[TEXT] FLAGS)"))
    assert data[0][1] == b"The body.\r\n"  # type: ignore[index]
    data = ok(m.uid("SEARCH", "SUBJECT", "second"))
    assert data == [b"2"]
    ok(m.store("1", "+FLAGS", "\\Seen"))
    assert ok(m.search(None, "UNSEEN")) == [b"2"]
    folders = ok(m.list())
    assert len(folders) == 6
    assert any(b"\\Sent" in f for f in folders)  # type: ignore[operator]
    m.logout()


def test_append_is_byte_exact_and_copy_move_expunge(server: RunningServer) -> None:
    server.add_user(ALICE)
    # imaplib turns bare LFs into CRLF, so the odd message goes in over a raw connection.
    raw = b"Subject: exact\n\nbare LF body\nsecond line   \r\nmixed\r\n"
    conn = Raw(server.port("imap"))
    conn.send(f'a LOGIN {ALICE} "{PASSWORD}"\r\n'.encode())
    conn.until(b"a")
    conn.send(b'b APPEND Drafts (\\Draft) "14-Nov-2023 22:13:20 +0000" {%d}\r\n' % len(raw))
    assert conn.line().startswith(b"+ ")
    conn.send(raw + b"\r\n")
    assert b"[APPENDUID " in conn.until(b"b")[-1]
    conn.close()
    m = imap(server)
    ok(m.select("Drafts"))
    data = ok(m.fetch("1", "(BODY[])"))
    assert data[0][1] == raw  # type: ignore[index]
    assert ok(m.fetch("1", "(RFC822.SIZE)")) == [f"1 (RFC822.SIZE {len(raw)})".encode()]
    typ, data = m.copy("1", "Archive")
    assert typ == "OK" and b"COPYUID" in data[-1]  # type: ignore[operator]
    typ, data = m._simple_command("MOVE", "1", "Trash")  # type: ignore[attr-defined]
    assert typ == "OK"
    ok(m.select("Trash"))
    assert ok(m.fetch("1", "(BODY[])"))[0][1] == raw  # type: ignore[index]
    ok(m.store("1", "+FLAGS", "\\Deleted"))
    assert ok(m.expunge()) == [b"1"]
    m.logout()


def test_starttls_and_imaps(server: RunningServer) -> None:
    server.add_user(ALICE)
    m = imaplib.IMAP4("127.0.0.1", server.port("imap"), timeout=30)
    assert "STARTTLS" in m.capabilities
    m.starttls(insecure())
    m.login(ALICE, PASSWORD)
    ok(m.select("INBOX"))
    m.logout()
    s = imaplib.IMAP4_SSL("127.0.0.1", server.port("imaps"), ssl_context=insecure(), timeout=30)
    assert "STARTTLS" not in s.capabilities and "AUTH=PLAIN" in s.capabilities
    s.authenticate("PLAIN", lambda _c: f"\0{ALICE}\0{PASSWORD}".encode())
    ok(s.select("INBOX"))
    s.logout()


def test_starttls_drops_pipelined_plaintext(server: RunningServer) -> None:
    server.add_user(ALICE)
    raw = Raw(server.port("imap"))
    raw.send(f'a STARTTLS\r\nb LOGIN {ALICE} "{PASSWORD}"\r\n'.encode())
    assert raw.line() == b"a OK Begin TLS negotiation now"
    tls = insecure().wrap_socket(raw.sock, server_hostname="localhost")
    tls.sendall(b"c CAPABILITY\r\n")
    data = b""
    while not data.endswith(b"c OK CAPABILITY completed\r\n"):
        chunk = tls.recv(65536)
        assert chunk, data
        data += chunk
    assert b"b OK" not in data and b"AUTH=PLAIN" in data and b"STARTTLS" not in data
    tls.sendall(b"d NOOP\r\n")
    assert tls.recv(65536) == b"d OK NOOP completed\r\n"
    tls.close()


def test_wrong_password(server: RunningServer) -> None:
    server.add_user(ALICE)
    m = imaplib.IMAP4("127.0.0.1", server.port("imap"), timeout=30)
    with pytest.raises(imaplib.IMAP4.error, match="AUTHENTICATIONFAILED"):
        m.login(ALICE, "wrong")
    m.login(ALICE, PASSWORD)
    m.logout()


def test_quota_refusals(server: RunningServer) -> None:
    server.add_user(ALICE)
    server.send([ALICE], message("fits", size=1500))
    acc = server.store.get_account(ALICE)
    assert acc is not None
    server.store.set_quota(ALICE, 2 * acc.used_bytes + 100, 0)  # room for one copy
    m = imap(server)
    typ, data = m.append("INBOX", None, None, message("too big", size=3000))
    assert typ == "NO" and b"[OVERQUOTA]" in data[0]
    ok(m.select("INBOX"))
    ok(m.copy("1", "Archive"))
    typ, data = m.copy("1", "Trash")
    assert typ == "NO" and b"[OVERQUOTA]" in data[0]
    typ, data = m.getquotaroot("INBOX")
    assert typ == "OK"
    assert data[1][0].startswith(b'"" (STORAGE ')  # type: ignore[index]
    m.logout()
    m = imaplib.IMAP4("127.0.0.1", server.port("imap"), timeout=30)
    m.login(ALICE, PASSWORD)
    assert any(b"[ALERT]" in r for r in m.untagged_responses.get("OK", []))
    m.logout()


# ---- several sessions, IDLE, POP3 -------------------------------------------------------------


def test_idle_is_told_of_delivery_within_a_second(server: RunningServer) -> None:
    server.add_user(ALICE)
    raw = Raw(server.port("imap"))
    raw.send(f'a LOGIN {ALICE} "{PASSWORD}"\r\nb SELECT INBOX\r\nc IDLE\r\n'.encode())
    raw.until(b"b")
    assert raw.line() == b"+ idling"
    start = time.monotonic()
    server.send([ALICE], message("while idling"))
    assert raw.line() == b"* 1 EXISTS"
    assert time.monotonic() - start < 1.0
    assert raw.line() == b"* 1 RECENT"  # RFC 3501 §7.3.2 (an IMAP4rev1 session)
    raw.send(b"DONE\r\n")
    assert raw.line() == b"c OK IDLE terminated"
    raw.send(b"d LOGOUT\r\n")
    assert raw.until(b"d")[-1].startswith(b"d OK")
    raw.close()


def test_deleted_account_gets_bye_at_once(server: RunningServer) -> None:
    # An account deleted while its sessions wait: the one in IDLE and the one between commands
    # both get BYE within a second and are closed, not at their next command or autologout.
    server.add_user(ALICE)
    idle, waiting = Raw(server.port("imap")), Raw(server.port("imap"))
    idle.send(f'a LOGIN {ALICE} "{PASSWORD}"\r\nb SELECT INBOX\r\nc IDLE\r\n'.encode())
    idle.until(b"b")
    assert idle.line() == b"+ idling"
    waiting.send(f'a LOGIN {ALICE} "{PASSWORD}"\r\n'.encode())
    waiting.until(b"a")
    acc = server.store.get_account(ALICE)
    assert acc is not None
    start = time.monotonic()
    server.store.delete_account(ALICE)
    for raw in (idle, waiting):
        assert raw.line() == b"* BYE account no longer exists"
        assert raw.sock.recv(100) == b""  # closed
        assert time.monotonic() - start < 1.0
        raw.close()
    deadline = time.monotonic() + 5
    while server.app.hub.sessions.held(acc.id) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert server.app.hub.sessions.held(acc.id) == 0  # both sessions are gone


def test_deleted_account_bye_waits_for_the_response_in_progress(server: RunningServer) -> None:
    # Deleted while a big FETCH is being written: the response is finished first (a BYE in
    # the middle of a literal would corrupt it), then BYE.
    server.add_user(ALICE)
    for i in range(30):
        server.send([ALICE], message(f"big {i}", size=200_000))
    raw = Raw(server.port("imap"), timeout=30)
    raw.send(f'a LOGIN {ALICE} "{PASSWORD}"\r\nb SELECT INBOX\r\n'.encode())
    raw.until(b"b")
    raw.send(b"c FETCH 1:* BODY.PEEK[]\r\n")
    first = raw.line()  # the server is now blocked on our unread socket buffer
    assert first.startswith(b"* 1 FETCH (BODY[] {")
    server.store.delete_account(ALICE)
    rest = raw.buf
    while True:
        chunk = raw.sock.recv(1 << 20)
        if not chunk:
            break
        rest += chunk
    # Messages not yet read when the account went are expunged: those are left out and the
    # FETCH ends NO [EXPUNGEISSUED] (RFC 9051 §7.1); the rest come whole, and BYE only after.
    tagged, _, bye = rest.rpartition(b"\r\nc ")[2].partition(b"\r\n")
    assert tagged in (
        b"OK FETCH completed",
        b"NO [EXPUNGEISSUED] some of the requested messages no longer exist",
    )
    assert bye == b"* BYE account no longer exists\r\n"
    assert rest.count(b"* BYE") == 1
    assert 1 <= rest.count(b"Subject: big ") <= 30
    raw.close()


def test_sessions_see_each_others_changes(server: RunningServer) -> None:
    server.add_user(ALICE)
    for i in range(3):
        server.send([ALICE], message(f"m{i}"))
    a, b = imap(server), imap(server)
    ok(a.select("INBOX"))
    ok(b.select("INBOX"))
    ok(a.store("2", "+FLAGS", "(\\Deleted)"))
    ok(a.expunge())
    b.noop()
    assert b.untagged_responses.get("EXPUNGE") == [b"2"]
    assert ok(b.search(None, "ALL")) == [b"1 2"]
    a.logout()
    b.logout()


def test_pop3_deletions_appear_as_expunges(server: RunningServer) -> None:
    server.add_user(ALICE)
    server.send([ALICE], message("one"))
    server.send([ALICE], message("two"))
    m = imap(server)
    ok(m.select("INBOX"))
    p = poplib.POP3("127.0.0.1", server.port("pop3"), timeout=30)
    p.user(ALICE)
    p.pass_(PASSWORD)
    p.dele(1)
    p.quit()
    m.noop()
    assert m.untagged_responses.get("EXPUNGE") == [b"1"]
    assert ok(m.fetch("1", "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])"))[0][1].strip() == (  # type: ignore[index]
        b"Subject: two"
    )
    m.logout()


def test_accounts_cannot_see_each_other(server: RunningServer) -> None:
    server.add_user(ALICE)
    server.add_user(BOB)
    server.send([ALICE], message("private"))
    m = imap(server, BOB)
    for name in ('"../alice@example.org/INBOX"', '"/INBOX"', '"alice@example.org/INBOX"'):
        typ, _ = m.select(name)
        assert typ == "NO"
    assert ok(m.select("INBOX")) == [b"0"]
    assert ok(m.uid("FETCH", "1:*", "(FLAGS)")) == [None]
    m.logout()


# ---- robustness -------------------------------------------------------------------------------


def test_garbage_then_bye(server: RunningServer) -> None:
    raw = Raw(server.port("imap"))
    raw.send(b"\x00\xff garbage\r\n")
    assert raw.line().startswith(b"* BAD")
    raw.send(b"a1 NOOP\r\n")
    assert raw.line() == b"a1 OK NOOP completed"
    raw.send(b"".join(b"x%d BLAH\r\n" % i for i in range(25)))
    lines = []
    with pytest.raises(EOFError):
        while True:
            lines.append(raw.line())
    assert lines[-1].startswith(b"* BYE")
    assert len(lines) == 21
    raw.close()


def test_big_message_round_trip(server: RunningServer) -> None:
    server.add_user(ALICE)
    big = message("big", size=5 * 1024 * 1024)
    m = imap(server)
    ok(m.append("INBOX", None, None, big))
    ok(m.select("INBOX"))
    assert ok(m.fetch("1", "(BODY.PEEK[])"))[0][1] == big  # type: ignore[index]
    data = ok(m.fetch("1", "(BODY.PEEK[]<1000.500>)"))
    assert data[0][1] == big[1000:1500]  # type: ignore[index]
    m.logout()


def test_imapclient_works(server: RunningServer) -> None:
    imapclient = pytest.importorskip("imapclient")
    server.add_user(ALICE)
    server.send([ALICE], message("for imapclient"))
    with imapclient.IMAPClient("127.0.0.1", port=server.port("imap"), ssl=False) as c:
        c.login(ALICE, PASSWORD)
        assert c.has_capability("IDLE") and c.has_capability("MOVE")
        c.enable("CONDSTORE")
        info = c.select_folder("INBOX")
        assert info[b"EXISTS"] == 1
        uids = c.search(["SUBJECT", "imapclient"])
        assert uids == [1]
        data = c.fetch(uids, ["ENVELOPE", "FLAGS", "BODYSTRUCTURE", "INTERNALDATE"])
        assert data[1][b"ENVELOPE"].subject == b"for imapclient"
        c.add_flags(uids, [b"\\Flagged", b"$Work"])
        # \\Recent: the first IMAP4rev1 session to see a message (RFC 3501 §2.3.2)
        assert set(c.get_flags(uids)[1]) == {b"\\Recent", b"\\Flagged", b"$Work"}
        c.create_folder("Projects/2024")
        assert any(f[2] == "Projects/2024" for f in c.list_folders())
        assert c.folder_status("INBOX", ["MESSAGES", "HIGHESTMODSEQ"])[b"MESSAGES"] == 1
        c.move(uids, "Projects/2024")
        c.select_folder("Projects/2024")
        c.idle()
        server.send([ALICE], message("later"))
        c.idle_check(timeout=2)
        c.idle_done()
        quota = c.get_quota_root("INBOX")
        assert quota[0].mailbox == "INBOX"
        c.logout()


# ---- the server object on its own (short autologout) -----------------------------------------


def test_autologout_before_login(tmp_path: Path) -> None:
    async def main() -> None:
        hub = Hub(asyncio.get_running_loop())
        store = SqliteMailstore(tmp_path / "store", publish=hub.publish)

        async def authenticate(user: str, password: str, ip: str) -> str | None:
            return None

        settings = ImapSettings(autologout_unauthenticated=0.3)
        srv = ImapServer(ImapBackend(store, hub, authenticate), settings, "127.0.0.1", 0)
        await srv.start()
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", srv.bound_port)
            assert (await reader.readline()).startswith(b"* OK [CAPABILITY ")
            started = time.monotonic()
            assert await reader.readline() == b"* BYE Autologout; idle for too long\r\n"
            assert await reader.read() == b""
            assert 0.25 < time.monotonic() - started < 5
            writer.close()
            # A server shutdown says BYE to everyone.
            reader, writer = await asyncio.open_connection("127.0.0.1", srv.bound_port)
            await reader.readline()
            srv.close()
            assert await reader.readline() == b"* BYE Server shutting down\r\n"
            writer.close()
        finally:
            srv.close()
            await srv.wait_closed()
            await asyncio.to_thread(store.close)

    asyncio.run(main())


def test_idle_connections_wait_without_a_task(tmp_path: Path) -> None:
    # Sessions in IDLE wait without a task each (their memory: docs/benchmarks.md, "imapmem"),
    # yet every one is told of a delivery within a second, one that speaks is answered, and
    # autologout still ends them all.
    from postfach.mime.stored import parse_for_storage

    async def main() -> None:
        hub = Hub(asyncio.get_running_loop())
        store = SqliteMailstore(tmp_path / "store", publish=hub.publish)
        await asyncio.to_thread(store.add_domain, "example.org")
        acc = await asyncio.to_thread(store.add_account, ALICE, "unused-hash")

        async def authenticate(user: str, password: str, ip: str) -> str | None:
            return ALICE if (user, password) == (ALICE, PASSWORD) else None

        settings = ImapSettings(allow_plaintext=True, autologout_authenticated=4.0)
        backend = ImapBackend(store, hub, authenticate)
        limits = Limits(max_connections_per_ip=0)  # all of them come from 127.0.0.1
        srv = ImapServer(backend, settings, "127.0.0.1", 0, limits=limits)
        await srv.start()
        conns: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []

        async def until(reader: asyncio.StreamReader, start: bytes) -> bytes:
            while True:
                line = await reader.readline()
                if not line or line.startswith(start):
                    return line

        try:
            for _ in range(60):
                reader, writer = await asyncio.open_connection("127.0.0.1", srv.bound_port)
                writer.write(
                    f'a LOGIN {ALICE} "{PASSWORD}"\r\nb SELECT INBOX\r\nc IDLE\r\n'.encode()
                )
                assert await until(reader, b"+ ") == b"+ idling\r\n"
                conns.append((reader, writer))
            await asyncio.sleep(0.1)
            assert srv.connection_count == 60
            assert len(srv.parked) == 60  # all idle without a task
            data = message("wake up")
            started = time.monotonic()
            await asyncio.to_thread(
                store.deliver, [acc.id], store.stage(data, parse_for_storage(data)), 1, "INBOX"
            )
            for reader, _w in conns:
                async with asyncio.timeout(1):
                    assert await until(reader, b"* 1 EXISTS") == b"* 1 EXISTS\r\n"
            assert time.monotonic() - started < 1.0
            reader, writer = conns[0]
            writer.write(b"DONE\r\nd NOOP\r\n")
            assert (await until(reader, b"c "))[:4] == b"c OK"
            assert (await until(reader, b"d "))[:4] == b"d OK"
            for reader, _w in conns:  # the connection that spoke too, 4 s after its NOOP
                async with asyncio.timeout(10):
                    assert (
                        await until(reader, b"* BYE") == b"* BYE Autologout; idle for too long\r\n"
                    )
                    assert await reader.read() == b""
            assert time.monotonic() - started > 3.5
            for _ in range(100):
                if srv.connection_count == 0:
                    break
                await asyncio.sleep(0.05)
            assert srv.connection_count == 0 and len(srv.parked) == 0
            assert hub.sessions.held(acc.id) == 0
        finally:
            for _r, writer in conns:
                writer.close()
            srv.close()
            await srv.wait_closed()
            await asyncio.to_thread(store.close)

    asyncio.run(main())

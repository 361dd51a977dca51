"""The source document's POP3 stories, end to end: SMTP in, poplib out, one real server."""

from __future__ import annotations

import poplib
import smtplib
import socket
from pathlib import Path

import pytest

from support import PASSWORD, RunningServer, message, start_server

ALICE = "alice@example.org"


def pop(server: RunningServer, user: str = ALICE) -> poplib.POP3:
    p = poplib.POP3("127.0.0.1", server.port("pop3"), timeout=30)
    p.user(user)
    p.pass_(PASSWORD)
    return p


def uidls(p: poplib.POP3) -> dict[int, str]:
    _, lines, _ = p.uidl()
    out = {}
    for line in lines:
        n, u = line.decode().split()
        out[int(n)] = u
    return out


def retr(p: poplib.POP3, n: int) -> bytes:
    _, lines, _octets = p.retr(n)
    return b"".join(line + b"\r\n" for line in lines)


class Device:
    """A mail program: keeps what it downloaded, and with leave_on_server the UIDLs it saw."""

    def __init__(self, server: RunningServer, leave_on_server: bool) -> None:
        self.server = server
        self.leave = leave_on_server
        self.seen: set[str] = set()
        self.mail: list[bytes] = []

    def check(self) -> int:
        p = pop(self.server)
        new = 0
        for n, u in uidls(p).items():
            if u in self.seen:
                continue
            self.mail.append(retr(p, n))
            new += 1
            if self.leave:
                self.seen.add(u)
            else:
                p.dele(n)
        p.quit()
        return new


def test_first_client_takes_everything(server: RunningServer) -> None:
    server.add_user(ALICE)
    for i in range(3):
        server.send([ALICE], message(f"m{i}"))
    home, phone = Device(server, False), Device(server, False)
    assert home.check() == 3
    assert phone.check() == 0
    assert len(home.mail) == 3 and phone.mail == []


def test_phone_leaves_mail_home_collects_everything(server: RunningServer) -> None:
    server.add_user(ALICE)
    phone, home = Device(server, True), Device(server, False)
    server.send([ALICE], message("on the road 1"))
    server.send([ALICE], message("on the road 2"))
    assert phone.check() == 2
    server.send([ALICE], message("evening"))
    assert phone.check() == 1  # only the new one: the phone sees every message exactly once
    assert phone.check() == 0
    assert home.check() == 3  # home fetches everything and deletes it on the server
    assert phone.check() == 0
    assert len(phone.mail) == 3 and len(home.mail) == 3
    assert sorted(phone.mail) == sorted(home.mail)
    acc = server.store.get_account(ALICE)
    assert acc is not None and acc.used_messages == 0 and acc.used_bytes == 0


def test_both_leave_mail_until_the_mailbox_is_full(server: RunningServer) -> None:
    server.add_user(ALICE, quota=10_000)
    phone, home = Device(server, True), Device(server, True)
    sent = 0
    while True:
        try:
            server.send([ALICE], message(f"n{sent}", size=1500))
        except (smtplib.SMTPDataError, smtplib.SMTPRecipientsRefused) as exc:
            refusal = exc
            break
        sent += 1
        phone.check()
        home.check()
        assert sent < 20
    assert sent == 5  # 5 x ~1.7 KB (message plus trace headers) fit in 10,000 bytes
    if isinstance(refusal, smtplib.SMTPRecipientsRefused):
        code, text = refusal.recipients[ALICE]
    else:
        code, text = refusal.smtp_code, refusal.smtp_error
    assert code == 552 and text.startswith(b"5.2.2 Mailbox full")
    # Deleting mail (here: the home PC switches to "delete") lets delivery resume.
    home.leave = False
    home.seen.clear()
    home.check()
    assert server.send([ALICE], message("after cleanup", size=1500)) == {}


def test_second_session_gets_in_use(server: RunningServer) -> None:
    server.add_user(ALICE)
    first = pop(server)
    second = poplib.POP3("127.0.0.1", server.port("pop3"), timeout=30)
    second.user(ALICE)
    with pytest.raises(poplib.error_proto, match=r"\[IN-USE\]"):
        second.pass_(PASSWORD)
    first.quit()
    second.user(ALICE)
    second.pass_(PASSWORD)
    second.quit()


def test_dropped_connection_deletes_nothing(server: RunningServer) -> None:
    server.add_user(ALICE)
    server.send([ALICE], message("keep me"))
    p = pop(server)
    p.dele(1)
    p.sock.shutdown(socket.SHUT_RDWR)  # the client vanishes without QUIT
    p.close()
    p2 = None
    for _ in range(50):  # the server notices the drop and releases the lock
        try:
            p2 = pop(server)
            break
        except poplib.error_proto:
            import time

            time.sleep(0.05)
    assert p2 is not None
    assert p2.stat()[0] == 1
    p2.quit()


def test_wrong_password(server: RunningServer) -> None:
    server.add_user(ALICE)
    p = poplib.POP3("127.0.0.1", server.port("pop3"), timeout=30)
    p.user(ALICE)
    with pytest.raises(poplib.error_proto, match=r"\[AUTH\]"):
        p.pass_("wrong")
    p.quit()


def test_list_sizes_equal_retr_octets_and_dot_stuffing(server: RunningServer) -> None:
    server.add_user(ALICE)
    body = ".starts with a dot\r\n..two dots\r\n.\r\nend\r\n"
    server.send([ALICE], message("dots", body=body))
    p = pop(server)
    _, listing, _ = p.list()
    size = int(listing[0].split()[1])
    raw = retr(p, 1)
    assert len(raw) == size
    assert raw.endswith(body.encode())
    p.quit()


def test_uidl_survives_restart_and_is_unique(tmp_path: Path) -> None:
    data = tmp_path / "data"
    srv = start_server(data)
    srv.add_user(ALICE)
    srv.add_user("bob@example.org")
    srv.send([ALICE, "bob@example.org"], message("shared"))
    srv.send([ALICE], message("second"))
    p = pop(srv)
    before = uidls(p)
    p.dele(1)
    p.quit()
    srv.stop()
    srv = start_server(data)
    try:
        srv.send([ALICE], message("third"))
        p = pop(srv)
        after = uidls(p)
        p.quit()
    finally:
        srv.stop()
    assert after[1] == before[2]
    assert len(set(after.values())) == 2 and before[1] not in after.values()


def test_stls_then_login(server: RunningServer) -> None:
    import ssl

    server.add_user(ALICE)
    server.send([ALICE], message("secret"))
    p = poplib.POP3("localhost", server.port("pop3"), timeout=30)
    assert "STLS" in p.capa()
    p.stls(ssl.create_default_context(cafile=str(server.app.config.cert_path)))
    p.user(ALICE)
    p.pass_(PASSWORD)
    assert p.stat()[0] == 1
    p.quit()


def test_pop3s(server: RunningServer) -> None:
    import ssl

    server.add_user(ALICE)
    ctx = ssl.create_default_context(cafile=str(server.app.config.cert_path))
    p = poplib.POP3_SSL("localhost", server.port("pop3s"), context=ctx, timeout=30)
    p.user(ALICE)
    p.pass_(PASSWORD)
    assert p.stat() == (0, 0)
    p.quit()


def test_garbage_keeps_the_server_serving(server: RunningServer) -> None:
    server.add_user(ALICE)
    with socket.create_connection(("127.0.0.1", server.port("pop3")), timeout=10) as s:
        s.recv(1024)
        s.sendall(b"\x00\xff\xfe garbage\r\n" + b"A" * 5000 + b"\r\nRETR x\r\n")
        out = s.recv(4096)
        assert out.startswith(b"-ERR")
    p = pop(server)
    assert p.stat() == (0, 0)
    p.quit()

"""SIGTERM is a graceful stop (issue 6, point 6): a real ``postfach serve`` child process.

Clients are told (``421 4.3.2``, ``* BYE``, ``-ERR``), commands that are being processed finish
and are answered, a DATA transfer gets a grace period, a POP3 session without QUIT deletes
nothing, and the process exits 0 within 10 s even with hundreds of idle connections.
"""

from __future__ import annotations

import selectors
import signal
import socket
import time
from pathlib import Path

from proc import ServerProcess, spawn

from postfach.auth.passwords import hash_password
from postfach.store.api import Flag
from postfach.store.sqlite import AppendItem, SqliteMailstore

USER, PASSWORD = "alice@localhost", "graceful stop"


def _data(tmp_path: Path, messages: int = 0) -> Path:
    data = tmp_path / "data"
    store = SqliteMailstore(data, index_text=False)
    store.add_domain("localhost")
    acc = store.add_account(USER, hash_password(PASSWORD))
    if messages:
        inbox = store.get_mailbox(acc.id, "INBOX")
        assert inbox is not None
        for i in range(messages):
            staged = store.stage(f"Subject: old {i}\r\n\r\nbody {i}\r\n".encode())
            store.append(inbox.id, [AppendItem(staged, Flag(0), (), int(time.time()))])
    store.close()
    return data


def _inbox_subjects(data: Path) -> list[bytes]:
    store = SqliteMailstore(data, index_text=False)
    try:
        acc = store.get_account(USER)
        assert acc is not None
        inbox = store.get_mailbox(acc.id, "INBOX")
        assert inbox is not None
        out = []
        for m in store.list_messages(inbox.id):
            raw = store.read_blob(m.blob)
            out.append(next(x for x in raw.split(b"\r\n") if x.startswith(b"Subject:")))
        return out
    finally:
        store.close()


def _connect(port: int, source: str = "127.0.0.1") -> socket.socket:
    """A client connection from ``source`` (any 127.x address is this machine's loopback)."""
    s = socket.create_connection(("127.0.0.1", port), timeout=30, source_address=(source, 0))
    s.setblocking(True)
    return s


def _line(s: socket.socket) -> bytes:
    buf = b""
    while not buf.endswith(b"\r\n"):
        chunk = s.recv(1)
        if not chunk:
            break
        buf += chunk
    return buf


def _until(s: socket.socket, prefix: bytes) -> bytes:
    while True:
        line = _line(s)
        if not line or line.startswith(prefix):
            return line


def _stop(server: ServerProcess) -> float:
    """SIGTERM; seconds until the process exited (asserts status 0)."""
    t0 = time.monotonic()
    server.proc.send_signal(signal.SIGTERM)
    assert server.proc.wait(timeout=30) == 0, server.log_text()[-3000:]
    return time.monotonic() - t0


def _rest(s: socket.socket, timeout: float = 15.0) -> bytes:
    """Everything the server still sends until it closes the connection."""
    s.settimeout(timeout)
    out = b""
    while chunk := s.recv(65536):
        out += chunk
    return out


def test_sigterm_with_hundreds_of_idle_clients_tells_each_and_exits_fast(tmp_path: Path) -> None:
    server = spawn(_data(tmp_path))
    per = 100
    conns: dict[str, list[socket.socket]] = {"smtp": [], "imap": [], "pop3": [], "idle": []}
    try:
        for name, greeting in (
            ("smtp", b"220 "),
            ("submission", b"220 "),
            ("imap", b"* OK"),
            ("pop3", b"+OK"),
        ):
            for i in range(per if name != "submission" else 20):
                # From 10 addresses, each well under the default per-address limit (50).
                s = _connect(server.port(name), f"127.0.0.{2 + i % 10}")
                assert _line(s).startswith(greeting)
                conns["smtp" if name == "submission" else name].append(s)
        for _ in range(5):  # logged in and in IDLE
            s = _connect(server.port("imap"))
            assert _line(s).startswith(b"* OK")
            s.sendall(f'L LOGIN {USER} "{PASSWORD}"\r\nS SELECT INBOX\r\nI IDLE\r\n'.encode())
            assert _until(s, b"+ ").startswith(b"+ ")
            conns["idle"].append(s)
        elapsed = _stop(server)
        sel = selectors.DefaultSelector()
        got: dict[socket.socket, bytes] = {}
        for group in conns.values():
            for s in group:
                s.setblocking(False)
                sel.register(s, selectors.EVENT_READ)
                got[s] = b""
        deadline = time.monotonic() + 10
        open_ = len(got)
        while open_ and time.monotonic() < deadline:
            for key, _ in sel.select(timeout=1):
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                try:
                    chunk = sock.recv(4096)
                except ConnectionError:
                    chunk = b""
                got[sock] += chunk
                if not chunk:
                    sel.unregister(sock)
                    open_ -= 1
        sel.close()
    finally:
        server.kill()
        for group in conns.values():
            for s in group:
                s.close()
    assert elapsed < 10, f"exit took {elapsed:.1f} s"
    assert all(got[s].startswith(b"421 4.3.2 ") for s in conns["smtp"])
    assert all(got[s].startswith(b"* BYE ") for s in conns["imap"])
    assert all(got[s].startswith(b"-ERR ") for s in conns["pop3"])
    assert all(got[s].startswith(b"* BYE ") for s in conns["idle"])
    total = sum(len(group) for group in conns.values())
    print(f"exit after SIGTERM with {total} idle connections: {elapsed:.2f} s")


def test_sigterm_lets_a_data_transfer_finish_and_cuts_a_stalled_one(tmp_path: Path) -> None:
    data = _data(tmp_path)
    server = spawn(data)
    envelope = f"EHLO c.example\r\nMAIL FROM:<bob@example.com>\r\nRCPT TO:<{USER}>\r\nDATA\r\n"
    try:
        finishing, stalled = _connect(server.port("smtp")), _connect(server.port("smtp"))
        for s in (finishing, stalled):
            assert _line(s).startswith(b"220")
            s.sendall(envelope.encode())
            assert _until(s, b"354").startswith(b"354")
            s.sendall(b"Subject: half\r\n\r\nfirst half\r\n")
        stalled.sendall(b"Subject: never finished\r\n\r\n")
        t0 = time.monotonic()
        server.proc.send_signal(signal.SIGTERM)
        time.sleep(1.0)  # the server is stopping now; the client goes on sending
        finishing.sendall(b"second half\r\n.\r\n")
        assert _line(finishing).startswith(b"250 2.0.0")
        assert _rest(finishing).startswith(b"421 4.3.2 ")
        assert _rest(stalled).startswith(b"421 4.3.2 ")
        cut = time.monotonic() - t0
        assert server.proc.wait(timeout=30) == 0
        elapsed = time.monotonic() - t0
    finally:
        server.kill()
    assert 4 <= cut < 10 and elapsed < 10, (cut, elapsed)
    assert _inbox_subjects(data) == [b"Subject: half"]


def test_sigterm_lets_a_bdat_chunk_on_its_way_finish(tmp_path: Path) -> None:
    """A BDAT chunk gets the grace period of a DATA transfer: the client that is sending it
    when the server stops still gets its 250, then 421."""
    data = _data(tmp_path)
    server = spawn(data)
    message = b"Subject: chunked\r\n\r\nfirst half\r\nsecond half\r\n"
    try:
        s = _connect(server.port("smtp"))
        assert _line(s).startswith(b"220")
        s.sendall(
            f"EHLO c.example\r\nMAIL FROM:<bob@example.com>\r\nRCPT TO:<{USER}>\r\n".encode()
            + b"BDAT %d LAST\r\n" % len(message)
            + message[:30]
        )
        assert _until(s, b"250 2.1.5").startswith(b"250 2.1.5")
        server.proc.send_signal(signal.SIGTERM)
        time.sleep(1.0)  # the server is stopping now; the client goes on sending
        s.sendall(message[30:])
        assert _line(s).startswith(b"250 2.0.0")
        assert _rest(s).startswith(b"421 4.3.2 ")
        assert server.proc.wait(timeout=30) == 0
    finally:
        server.kill()
    assert _inbox_subjects(data) == [b"Subject: chunked"]


def test_sigterm_pop3_transaction_without_quit_deletes_nothing(tmp_path: Path) -> None:
    data = _data(tmp_path, messages=3)
    server = spawn(data)
    try:
        s = _connect(server.port("pop3"))
        assert _line(s).startswith(b"+OK")
        for cmd in (f"USER {USER}", f"PASS {PASSWORD}", "DELE 1", "DELE 2"):
            s.sendall(cmd.encode() + b"\r\n")
            assert _line(s).startswith(b"+OK"), cmd
        _stop(server)
        assert _rest(s).startswith(b"-ERR ")
    finally:
        server.kill()
    assert len(_inbox_subjects(data)) == 3


def test_sigterm_racing_commands_answered_means_done(tmp_path: Path) -> None:
    """POP3 QUIT (UPDATE) and IMAP APPEND sent together with SIGTERM: whatever the timing, a
    positive reply means the change is stored, and every client hears a goodbye or a reply."""
    data = _data(tmp_path, messages=2)
    server = spawn(data)
    big = b"Subject: appended\r\n\r\n" + (b"x" * 70 + b"\r\n") * 2000
    try:
        pop = _connect(server.port("pop3"))
        assert _line(pop).startswith(b"+OK")
        for cmd in (f"USER {USER}", f"PASS {PASSWORD}", "DELE 1"):
            pop.sendall(cmd.encode() + b"\r\n")
            assert _line(pop).startswith(b"+OK")
        imap = _connect(server.port("imap"))
        assert _line(imap).startswith(b"* OK")
        imap.sendall(f'L LOGIN {USER} "{PASSWORD}"\r\n'.encode())
        assert _until(imap, b"L ").startswith(b"L OK")
        pop.sendall(b"QUIT\r\n")
        imap.sendall(b"A APPEND INBOX {%d+}\r\n" % len(big) + big + b"\r\n")
        _stop(server)
        pop_reply, imap_reply = _rest(pop), _rest(imap)
    finally:
        server.kill()
    subjects = _inbox_subjects(data)
    assert pop_reply.startswith((b"+OK", b"-ERR"))
    assert (b"Subject: old 0" not in subjects) == pop_reply.startswith(b"+OK")
    assert imap_reply.startswith((b"A OK", b"* BYE"))
    assert (b"Subject: appended" in subjects) == (b"A OK" in imap_reply)
    if b"A OK" in imap_reply:
        assert b"* BYE" in imap_reply.split(b"A OK", 1)[1]


def _server_read_everything(server_port: int, client: socket.socket, timeout: float = 10) -> None:
    """Wait until the server process has taken every byte this client sent out of the kernel
    (its socket's receive queue in /proc/net/tcp is empty)."""
    peer_port = client.getsockname()[1]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
            f = line.split()
            ports = (int(f[1].split(":")[1], 16), int(f[2].split(":")[1], 16))
            if ports == (server_port, peer_port) and int(f[4].split(":")[1], 16) == 0:
                return
        time.sleep(0.01)
    raise AssertionError("the server did not read what was sent")


def test_sigterm_answers_commands_received_before_it(tmp_path: Path) -> None:
    """A 2 MB APPEND and a POP3 DELE+QUIT, completely received when SIGTERM arrives (the APPEND
    still being stored): both are carried out and answered, then the goodbye follows."""
    data = _data(tmp_path, messages=2)
    server = spawn(data)
    big = b"Subject: two megabytes\r\n\r\n" + (b"m" * 78 + b"\r\n") * 26_000
    try:
        pop = _connect(server.port("pop3"))
        assert _line(pop).startswith(b"+OK")
        for cmd in (f"USER {USER}", f"PASS {PASSWORD}"):
            pop.sendall(cmd.encode() + b"\r\n")
            assert _line(pop).startswith(b"+OK")
        imap = _connect(server.port("imap"))
        assert _line(imap).startswith(b"* OK")
        imap.sendall(f'L LOGIN {USER} "{PASSWORD}"\r\n'.encode())
        assert _until(imap, b"L ").startswith(b"L OK")
        imap.sendall(b"A APPEND INBOX {%d+}\r\n" % len(big) + big + b"\r\n")
        pop.sendall(b"DELE 1\r\nQUIT\r\n")
        _server_read_everything(server.port("imap"), imap)
        _server_read_everything(server.port("pop3"), pop)
        _stop(server)
        pop_reply, imap_reply = _rest(pop), _rest(imap)
    finally:
        server.kill()
    assert pop_reply.startswith(b"+OK") and b"\r\n+OK" in pop_reply, pop_reply
    assert imap_reply.startswith(b"A OK") and b"* BYE" in imap_reply, imap_reply
    assert _inbox_subjects(data) == [b"Subject: old 1", b"Subject: two megabytes"]

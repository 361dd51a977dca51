"""Every ``250`` after DATA and every tagged ``OK`` for APPEND is written only after an fsync of
the data it acknowledges (issue 6, point 1).

A kill test cannot see a missing fsync (the page cache survives a killed process), so this one
reads the server's system calls: ``strace`` runs ``postfach serve``; the test delivers messages,
each with a unique marker, over SMTP (one per connection, and pipelined in one connection) and
over IMAP APPEND, small ones (inline in the database) and ones above 64 KiB (blob files); then
`syscalls.check` finds, for each marker, the read that brought it in, the reply written after it
and the chain of writes and fsyncs in between.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import smtplib
import socket
import uuid
from pathlib import Path

import pytest
from proc import spawn
from syscalls import TRACE_SET, Expect, check, parse

from postfach.auth.passwords import hash_password
from postfach.store.sqlite import SqliteMailstore

USER, PASSWORD = "alice@localhost", "strace me"

pytestmark = pytest.mark.skipif(shutil.which("strace") is None, reason="strace not installed")


# ---- the analyzer on synthetic traces (shows the real test can fail) ----------------------------

WAL = "/d/postfach.db-wal"
SOCK = "TCP:[127.0.0.1:2525->127.0.0.1:40000]"


def _trace(*lines: str) -> str:
    return "\n".join(f"{100 + (i % 2)} 1700000000.{i:06d} {line}" for i, line in enumerate(lines))


RX = f'recvfrom(9<{SOCK}>, "Subject: M-1\\r\\n\\r\\nhi\\r\\n.\\r\\n", 262144, 0, NULL, NULL) = 24'
WAL_WRITE = f'pwrite64(7<{WAL}>, "\\0\\0\\rSubject: M-1\\r\\n"..., 4096, 8216) = 4096'
REPLY = f'sendto(9<{SOCK}>, "250 2.0.0 OK\\r\\n", 14, 0, NULL, 0) = 14'
EXPECT = [Expect(b"M-1", rb"250 ")]


def test_analyzer_accepts_reply_after_wal_sync() -> None:
    calls = parse(_trace(RX, WAL_WRITE, f"fdatasync(7<{WAL}>) = 0", REPLY))
    (v,) = check(calls, EXPECT)
    assert v.problems == [] and not v.large


def test_analyzer_flags_reply_before_wal_sync() -> None:
    calls = parse(_trace(RX, WAL_WRITE, REPLY, f"fdatasync(7<{WAL}>) = 0"))
    (v,) = check(calls, EXPECT)
    assert v.problems == ["no WAL write holding it was fsynced before the reply"]


def test_analyzer_flags_reply_started_while_sync_unfinished() -> None:
    """The fsync must have *returned* before the reply write *started*."""
    text = "\n".join(
        [
            f"100 1.000001 {RX}",
            f"101 1.000002 {WAL_WRITE}",
            f"101 1.000003 fdatasync(7<{WAL}> <unfinished ...>",
            f'100 1.000004 sendto(9<{SOCK}>, "250 2.0.0 OK\\r\\n", 14, 0, NULL, 0 <unfinished ...>',
            "101 1.000005 <... fdatasync resumed>) = 0",
            "100 1.000006 <... sendto resumed>) = 14",
        ]
    )
    (v,) = check(parse(text), EXPECT)
    assert v.problems == ["no WAL write holding it was fsynced before the reply"]


def test_analyzer_flags_failed_sync_and_sync_before_write() -> None:
    eio = f"fdatasync(7<{WAL}>) = -1 EIO (Input/output error)"
    failed = parse(_trace(RX, WAL_WRITE, eio, REPLY))
    early = parse(_trace(RX, f"fdatasync(7<{WAL}>) = 0", WAL_WRITE, REPLY))
    assert check(failed, EXPECT)[0].problems and check(early, EXPECT)[0].problems


def test_analyzer_checks_the_blob_file_chain() -> None:
    sha = "ab" * 32
    tmp, final = f"/d/blobs/tmp/{sha}.1.2.3", f"/d/blobs/ab/ab/{sha}"
    chain = [
        RX,
        f'write(12<{tmp}>, "Return-Path: <>\\r\\nSubject: M-1\\r\\n"..., 70000) = 70000',
        f"fsync(12<{tmp}>) = 0",
        'mkdir("/d/blobs/ab", 0777) = 0',
        'mkdir("/d/blobs/ab/ab", 0777) = 0',
        f'rename("{tmp}", "{final}") = 0',
        "fsync(13</d/blobs/ab/ab>) = 0",
        "fsync(13</d/blobs/ab>) = 0",
        "fsync(13</d/blobs>) = 0",
        f'pwrite64(7<{WAL}>, "\\0{sha}\\0"..., 4096, 8216) = 4096',
        f"fdatasync(7<{WAL}>) = 0",
        REPLY,
    ]
    (v,) = check(parse(_trace(*chain)), EXPECT)
    assert v.problems == [] and v.large
    # Each link matters: drop one and the verdict names it.
    missing_file_sync = [line for line in chain if line != f"fsync(12<{tmp}>) = 0"]
    missing_top_dir = [line for line in chain if line != "fsync(13</d/blobs>) = 0"]
    (v1,) = check(parse(_trace(*missing_file_sync)), EXPECT)
    (v2,) = check(parse(_trace(*missing_top_dir)), EXPECT)
    assert any("not fsynced before the reply" in p for p in v1.problems)
    assert v2.problems == ["directory /d/blobs/ab was created but /d/blobs not fsynced"]


def test_parser_reads_descriptors_strings_and_prefixes() -> None:
    text = "\n".join(
        [
            '[pid  7] 1.5 sendto(5<TCPv6:[[::1]:2525->[::1]:40000]>, "250 ok\\r\\n", 8, 0) = 8',
            '8 1.6 write(3</d/a b>, "\\0\\x41\\101\\"q\\\\"..., 70000) = 70000',
            '8 1.7 rename("/d/blobs/tmp/x", "/d/blobs/ab/cd/x") = 0',
            "8 1.8 fsync(4</d/blobs/ab>) = -1 EIO (Input/output error)",
            "8 1.9 +++ exited with 0 +++",
        ]
    )
    a, b, c, d = parse(text)
    assert (a.pid, a.name, a.fd, a.data, a.ok) == (
        7,
        "sendto",
        "TCPv6:[[::1]:2525->[::1]:40000]",
        b"250 ok\r\n",
        True,
    )
    assert (b.fd, b.data) == ("/d/a b", b'\0AA"q\\')
    assert c.strings == (b"/d/blobs/tmp/x", b"/d/blobs/ab/cd/x")
    assert d.fd == "/d/blobs/ab" and not d.ok


def test_analyzer_reports_a_negative_reply() -> None:
    calls = parse(_trace(RX, WAL_WRITE, f"fdatasync(7<{WAL}>) = 0", REPLY.replace("250", "451")))
    assert "the reply was" in check(calls, EXPECT)[0].problems[0]


# ---- the real server under strace -------------------------------------------------------------


def _message(marker: str, size: int = 0) -> bytes:
    head = f"From: bob@example.com\r\nTo: {USER}\r\nSubject: {marker}\r\n\r\n".encode()
    line = b"0123456789abcdefghijklmnopqrstuvwxyz0123456789abcdefghijklmnopqrstuvwxyz\r\n"
    body = line * max(1, size // len(line))
    return head + body


def _recv_replies(
    sock: socket.socket, n: int, buf: bytearray, lines: list[bytes] | None = None
) -> list[bytes]:
    """``n`` complete SMTP replies (multi-line ones count once: their last line)."""
    replies: list[bytes] = []
    while len(replies) < n:
        while b"\r\n" not in buf:
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionError(f"closed after {replies!r}")
            buf += chunk
        line, _, rest = bytes(buf).partition(b"\r\n")
        buf[:] = rest
        if lines is not None:
            lines.append(line)
        if line[3:4] != b"-":
            replies.append(line)
    return replies


def _smtp_pipelined(port: int, markers: list[str]) -> None:
    """RFC 2920 the way Postfix does it: MAIL, RCPT and DATA in one group; the message, the
    final dot and the next message's MAIL, RCPT and DATA in the next."""
    envelope = f"MAIL FROM:<bob@example.com>\r\nRCPT TO:<{USER}>\r\nDATA\r\n".encode()
    buf = bytearray()
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        _recv_replies(s, 1, buf)
        s.sendall(b"EHLO client.example\r\n")
        ehlo: list[bytes] = []
        _recv_replies(s, 1, buf, ehlo)
        assert b"250-PIPELINING" in ehlo
        s.sendall(envelope)
        assert [r[:3] for r in _recv_replies(s, 3, buf)] == [b"250", b"250", b"354"]
        for i, marker in enumerate(markers):
            tail = envelope if i + 1 < len(markers) else b"QUIT\r\n"
            s.sendall(_message(marker) + b".\r\n" + tail)
            want = [b"250", b"250", b"250", b"354"] if i + 1 < len(markers) else [b"250", b"221"]
            assert [r[:3] for r in _recv_replies(s, len(want), buf)] == want


def _imap_appends(port: int, items: list[tuple[str, bytes, bool]]) -> None:
    """LOGIN, then one APPEND per item (tag, message, LITERAL+ or a synchronizing literal)."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        f = s.makefile("rb")
        assert f.readline().startswith(b"* OK")
        s.sendall(f'L LOGIN {USER} "{PASSWORD}"\r\n'.encode())
        while not (line := f.readline()).startswith(b"L "):
            pass
        assert line.startswith(b"L OK"), line
        for tag, msg, nonsync in items:
            plus = "+" if nonsync else ""
            s.sendall(f"{tag} APPEND INBOX {{{len(msg)}{plus}}}\r\n".encode())
            if nonsync:
                s.sendall(msg + b"\r\n")
            else:
                assert f.readline().startswith(b"+")
                s.sendall(msg + b"\r\n")
            while not (line := f.readline()).startswith(tag.encode() + b" "):
                pass
            assert line.startswith(tag.encode() + b" OK"), line
        s.sendall(b"Z LOGOUT\r\n")


def _traced_pid(strace_pid: int) -> int:
    children = Path(f"/proc/{strace_pid}/task/{strace_pid}/children").read_text().split()
    return int(children[0])


def test_every_acknowledgement_follows_the_fsync_of_its_data(tmp_path: Path) -> None:
    data = tmp_path / "data"
    store = SqliteMailstore(data, index_text=False)
    store.add_domain("localhost")
    store.add_account(USER, hash_password(PASSWORD))
    store.close()
    trace = tmp_path / "strace.log"
    prefix = ["strace", "-f", "-yy", "-ttt", "-s", "8192", "-o", str(trace)]
    prefix += ["-e", "signal=none", "-e", f"trace={TRACE_SET}"]
    server = spawn(data, prefix=prefix, startup_timeout=60)
    traced = _traced_pid(server.pid)  # the server itself; signals to strace would not reach it
    run = uuid.uuid4().hex[:8]
    expects: list[Expect] = []
    try:
        # SMTP, one message per connection; the fourth one above 64 KiB (a blob file).
        for i in range(4):
            marker = f"single-{run}-{i}"
            size = 100_000 if i == 3 else 0
            with smtplib.SMTP("127.0.0.1", server.port("smtp"), timeout=30) as c:
                c.sendmail("bob@example.com", [USER], _message(marker, size))
            expects.append(Expect(marker.encode(), rb"250 "))
        # SMTP, five messages pipelined in one connection.
        piped = [f"piped-{run}-{i}" for i in range(5)]
        _smtp_pipelined(server.port("smtp"), piped)
        expects += [Expect(m.encode(), rb"250 ") for m in piped]
        # IMAP APPEND: synchronizing and LITERAL+ literals, one above 64 KiB.
        items = []
        for i in range(5):
            marker = f"append-{run}-{i}"
            items.append((f"A{i}", _message(marker, 90_000 if i == 2 else 0), i % 2 == 1))
            expects.append(Expect(marker.encode(), f"A{i} OK".encode()))
        _imap_appends(server.port("imap"), items)
        os.kill(traced, signal.SIGTERM)
        assert server.proc.wait(timeout=60) == 0
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(traced, signal.SIGKILL)  # a killed strace would leave it running
        server.kill()
    verdicts = check(parse(trace.read_text(errors="replace")), expects)
    problems = {v.marker.decode(): v.problems for v in verdicts if v.problems}
    assert problems == {}
    assert sum(v.large for v in verdicts) == 2  # the blob-file path was really exercised
    assert all(v.sync_line < v.reply_line for v in verdicts)

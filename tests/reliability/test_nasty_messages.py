"""The nasty-message corpus delivered to a real server process, then fetched over IMAP and POP3.

Corpus: ``tests/fuzz/nasty.py`` (malformed MIME, unterminated boundaries, 10,000 nested
multiparts, 10,000 nested message/rfc822, 10,000 sibling parts, megabyte header lines, NUL
octets, 8-bit junk in headers, invalid base64/QP, invalid charsets, huge encoded-words, no
header/body separator, bare CR/LF mixes, no final line end) plus all of ``torture.mbox``.

Each message goes in by SMTP, or by IMAP APPEND where SMTP rightly refuses it (a line over 1000
octets: then SMTP's refusal is checked too) or where exact octets are the point. Then, for every
message: IMAP ``BODY[]`` (byte-exact: what APPEND sent, or our two trace fields + the CRLF-
normalised message for SMTP; a NUL is sent as 0x80, RFC 9051 §4.3), ``BODYSTRUCTURE``,
``ENVELOPE``, ``BODY[1]``, ``BINARY[1]`` (OK, or NO for an encoding it cannot decode),
``BODY[HEADER]`` (a prefix of ``BODY[]``), ``SEARCH TEXT``; POP3 ``RETR`` (byte-exact, the same
octets as ``BODY[]`` but NUL) and ``TOP``. A second IMAP client, logged in from the start, must
get its NOOP answered after every message, the server must still accept new mail at the end, and
its log must hold no traceback.
"""

from __future__ import annotations

import re
import smtplib
import sys
import time
from pathlib import Path

import pytest
from hostile import ALICE, ImapRaw, Pop3Raw, imap_login, served

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "fuzz"))

from nasty import SMTP_MAX_LINE, Nasty, longest_line, nasty_messages
from seeds import mbox_messages

from postfach.mime.structure import normalize_crlf

pytestmark = pytest.mark.timeout(600)


def corpus() -> list[Nasty]:
    items = list(nasty_messages())
    for i, raw in enumerate(mbox_messages("torture.mbox"), 1):
        data = normalize_crlf(raw)
        if longest_line(data) > SMTP_MAX_LINE:
            why = "torture.mbox; a line over 1000 octets: APPEND"
            items.append(Nasty(f"torture {i}", data, "append", why))
        else:
            items.append(Nasty(f"torture {i}", data, "smtp", "torture.mbox"))
    return items


def ok(result: tuple[str, list[object]]) -> list[object]:
    typ, data = result
    assert typ == "OK", (typ, data)
    return data


def literal(data: list[object]) -> bytes:
    """The first literal of a FETCH answer (imaplib gives (prefix, literal) tuples)."""
    for item in data:
        if isinstance(item, tuple):
            return bytes(item[1])
    raise AssertionError(f"no literal in {data!r:.300}")


def deliver(server_port: int, imap: ImapRaw, item: Nasty) -> None:
    if item.via == "smtp":
        with smtplib.SMTP("127.0.0.1", server_port, timeout=120) as s:
            refused = s.sendmail("nasty@remote.example", [ALICE], item.data)
        assert refused == {}, (item.name, refused)
        return
    if longest_line(item.data) > SMTP_MAX_LINE:
        # SMTP must refuse it cleanly (and keep serving), which is why it goes by APPEND.
        with smtplib.SMTP("127.0.0.1", server_port, timeout=120) as s:
            with pytest.raises(smtplib.SMTPDataError) as refused:
                s.sendmail("nasty@remote.example", [ALICE], item.data)
            assert 500 <= refused.value.smtp_code < 600, refused.value
            assert s.noop()[0] == 250
    status = imap.append("INBOX", item.data)
    assert b" OK " in status, (item.name, status)


def no_nul(data: bytes) -> bytes:
    """What IMAP sends outside literal8: NUL replaced by 0x80 (RFC 9051 §4.3, as Dovecot)."""
    return data.replace(b"\x00", b"\x80")


def expected_stored(item: Nasty, stored: bytes) -> None:
    if item.via == "append":
        assert stored == item.data, f"{item.name}: BODY[] differs from the APPENDed octets"
        return
    # smtplib ends DATA with CRLF "." CRLF, adding a CRLF when the message lacks one: after a
    # bare LF that CRLF is an empty line of the message (as any SMTP server reads it).
    sent = item.data if item.data.endswith(b"\r\n") else item.data + b"\r\n"
    body = no_nul(normalize_crlf(sent))
    assert stored.endswith(body), f"{item.name}: BODY[] does not end with the message"
    trace = stored[: len(stored) - len(body)]
    assert re.fullmatch(rb"Return-Path: <[^\r\n]*>\r\nReceived: .*\r\n", trace, re.S), trace[:300]


def test_nasty_corpus_over_imap_and_pop3(tmp_path: Path) -> None:
    server = served(tmp_path)
    items = corpus()
    figures: list[str] = []
    try:
        writer = ImapRaw(server.port("imap"), timeout=120)
        writer.login()
        watcher = imap_login(server, timeout=30)
        ok(watcher.select("INBOX"))
        for item in items:
            t0 = time.monotonic()
            deliver(server.port("smtp"), writer, item)
            figures.append(f"{item.name}: {len(item.data)} octets via {item.via} "
                           f"({time.monotonic() - t0:.2f} s)")  # fmt: skip
            ok(watcher.noop())  # another client is served after every delivery
        writer.close()

        imap = imap_login(server, timeout=120)
        assert int(ok(imap.select("INBOX"))[0]) == len(items)  # type: ignore[call-overload]
        stored: dict[int, bytes] = {}
        for uid, item in enumerate(items, 1):
            t0 = time.monotonic()
            u = str(uid)
            body = literal(ok(imap.uid("FETCH", u, "(BODY.PEEK[])")))
            expected_stored(item, body)
            stored[uid] = body
            ok(imap.uid("FETCH", u, "(BODYSTRUCTURE ENVELOPE RFC822.SIZE)"))
            part1 = ok(imap.uid("FETCH", u, "(BODY.PEEK[1])"))
            assert part1 and part1[0] is not None, (item.name, part1)
            typ, data = imap.uid("FETCH", u, "(BINARY.PEEK[1])")
            assert typ in ("OK", "NO"), (item.name, typ, data)  # NO [UNKNOWN-CTE] is fine
            header = literal(ok(imap.uid("FETCH", u, "(BODY.PEEK[HEADER])")))
            assert body.startswith(header), item.name
            figures.append(f"  fetched {item.name} in {time.monotonic() - t0:.2f} s")
            ok(watcher.noop())
        hits = ok(imap.uid("SEARCH", "TEXT", "innermost-marker"))[0]
        assert isinstance(hits, bytes)
        marked = {i for i, it in enumerate(items, 1) if b"innermost-marker" in it.data}
        assert marked and marked <= {int(n) for n in hits.split()}, (marked, hits)
        hits = ok(imap.uid("SEARCH", "HEADER", "Subject", '"Subject text Subject"'))[0]
        assert isinstance(hits, bytes)
        assert [int(n) for n in hits.split()] == [
            i for i, it in enumerate(items, 1) if it.name == "one megabyte subject"
        ]
        ok(imap.uid("SEARCH", "TEXT", "x" * 200))
        imap.logout()

        pop = Pop3Raw(server.port("pop3"), timeout=120)
        pop.login()
        stat = pop.command("STAT")
        assert stat.startswith(b"+OK %d " % len(items)), stat
        for uid, item in enumerate(items, 1):
            got = pop.multiline(f"RETR {uid}")
            want = stored[uid]
            # A multi-line answer ends with CRLF "." CRLF (RFC 1939 §3): an APPENDed message
            # without a final CRLF gets one (a final bare LF becomes CRLF). Nothing else changes.
            if want.endswith(b"\n") and not want.endswith(b"\r\n"):
                want = want[:-1]
            if not want.endswith(b"\r\n"):
                want += b"\r\n"
            assert no_nul(got) == want, f"{item.name}: RETR differs from BODY[]"
            got = no_nul(got)
            top = no_nul(pop.multiline(f"TOP {uid} 0"))
            assert want.startswith(top) or top == want, item.name
            top3 = no_nul(pop.multiline(f"TOP {uid} 3"))
            assert want.startswith(top3[: len(top)]), item.name
            ok(watcher.noop())
        assert pop.command("QUIT").startswith(b"+OK")
        pop.close()

        # Still serving: new mail in, and a new client reads it.
        with smtplib.SMTP("127.0.0.1", server.port("smtp"), timeout=30) as s:
            assert s.sendmail("a@remote.example", [ALICE], b"Subject: after\r\n\r\nok\r\n") == {}
        fresh = imap_login(server)
        assert int(ok(fresh.select("INBOX"))[0]) == len(items) + 1  # type: ignore[call-overload]
        fresh.logout()
        watcher.logout()
        assert server.proc.poll() is None, "the server died"
        peak = 0  # the biggest process of the server (with worker processes, of those)
        for pid in server.tree():
            status = Path(f"/proc/{pid}/status").read_text()
            hwm = re.search(r"VmHWM:\s+(\d+) kB", status)
            peak = max(peak, int(hwm.group(1)) // 1024 if hwm else 0)
        figures.append(f"server peak RSS {peak} MB")
        assert peak < 2048, f"the server grew to {peak} MB on a 7 MB corpus"
    finally:
        server.terminate()
        print("\n".join(figures))
    log = server.log_text()
    assert "Traceback" not in log and "internal error" not in log, log[-5000:]

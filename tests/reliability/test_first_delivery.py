"""Dozens of concurrent first deliveries to accounts that never received mail (issue 6, point 1).

Dovecot 2.3 deadlocks when many LMTP deliveries create mailbox indexes for the first time at
once (401 of 2,000 failed in our measurement). In postfach an account's mailboxes are rows made
with the account, so a first delivery takes the same path as any other; this test holds that:
60 deliveries (half SMTP, half LMTP) and 20 IMAP logins with APPEND start at the same moment
against 60 accounts that have never seen a message, half of them created by another process
while the server runs.
Every one must be answered with success and stored exactly once.
"""

from __future__ import annotations

import smtplib
import threading
import time
from pathlib import Path

from imapclient import IMAPClient
from mailenv import DOMAIN, PASSWORD, database_problems, make_accounts, message, run_check
from proc import ServerProcess, spawn

ACCOUNTS = 60
APPENDS = 20


def test_concurrent_first_deliveries_all_succeed_once(tmp_path: Path) -> None:
    data = tmp_path / "data"
    names = [f"new{i}@{DOMAIN}" for i in range(ACCOUNTS)]
    make_accounts(data, names[: ACCOUNTS // 2])
    server = spawn(data)
    try:
        make_accounts(data, names[ACCOUNTS // 2 :])  # another process, server running
        start = threading.Barrier(ACCOUNTS + APPENDS)
        results: dict[str, object] = {}
        lock = threading.Lock()

        def deliver(i: int) -> None:
            try:
                # Half over LMTP (where Dovecot deadlocked), half over SMTP.
                cls, port = (smtplib.LMTP, "lmtp") if i % 2 else (smtplib.SMTP, "smtp")
                with cls("127.0.0.1", server.port(port), timeout=60) as s:
                    s.ehlo_or_helo_if_needed()
                    start.wait(30)
                    refused = s.sendmail(
                        "sender@remote.example", [names[i]], message(f"d{i}", 3000)
                    )
                outcome: object = refused or 250
            except Exception as exc:
                outcome = exc
            with lock:
                results[f"d{i}"] = outcome

        def append(i: int) -> None:
            try:
                c = IMAPClient("127.0.0.1", server.port("imap"), ssl=False, timeout=60)
                start.wait(30)
                c.login(names[i], PASSWORD)
                reply = c.append("INBOX", message(f"a{i}", 2000), flags=["\\Seen"])
                c.logout()
                outcome: object = "OK" if b"APPENDUID" in reply else reply
            except Exception as exc:
                outcome = exc
            with lock:
                results[f"a{i}"] = outcome

        threads = [threading.Thread(target=deliver, args=(i,)) for i in range(ACCOUNTS)]
        threads += [threading.Thread(target=append, args=(i,)) for i in range(APPENDS)]
        for t in threads:
            t.start()
        began = time.monotonic()
        for t in threads:
            t.join(120)
        print(f"first deliveries: {len(results)} answered in {time.monotonic() - began:.1f} s")
        failed = {k: v for k, v in results.items() if v not in (250, "OK")}
        assert len(results) == ACCOUNTS + APPENDS and not failed, failed
        for i, name in enumerate(names):
            expected = [f"d{i}"] + ([f"a{i}"] if i < APPENDS else [])
            assert sorted(inbox_markers(server, name)) == sorted(expected), name
    finally:
        server.kill()
    check = run_check(data)
    assert check.returncode == 0 and "ok:" in check.stdout, check.stdout + check.stderr
    assert database_problems(data) == []


def inbox_markers(server: ServerProcess, name: str) -> list[str]:
    c = IMAPClient("127.0.0.1", server.port("imap"), ssl=False, timeout=60)
    try:
        c.login(name, PASSWORD)
        c.select_folder("INBOX", readonly=True)
        uids = c.search("ALL")
        fetched = c.fetch(uids, ["BODY.PEEK[HEADER.FIELDS (X-Chaos-Id)]"]) if uids else {}
    finally:
        c.logout()
    return [
        d[b"BODY[HEADER.FIELDS (X-CHAOS-ID)]"].split(b":", 1)[1].strip().decode()
        for d in fetched.values()
    ]

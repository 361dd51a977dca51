"""Shared pieces of the crash and disk tests: accounts in a data directory, test messages, and
the checks every such test ends with (``postfach check``, SQLite integrity, quota sums)."""

from __future__ import annotations

import hashlib
import os
import random
import sqlite3
import subprocess
import sys
from pathlib import Path

from argon2 import PasswordHasher

from postfach.store.sqlite import SqliteMailstore

PASSWORD = "chaos pass"
DOMAIN = "example.org"
# argon2id with the smallest cost: these tests measure crash and disk behaviour, not login cost.
# With the default cost, five clients logging in again after each restart kept the two test
# cores busy for 2.5 s, longer than the server lived between kills. The stored hash carries
# its parameters, so the server verifies it exactly as a normal one.
_CHEAP = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)


def make_accounts(
    data: Path, names: list[str], *, quota_bytes: int = 0, quota_messages: int = 0
) -> None:
    """Create the domain and the accounts (in the data directory, server not running or not)."""
    store = SqliteMailstore(data, index_text=False)
    try:
        if not store.is_local_domain(DOMAIN):
            store.add_domain(DOMAIN)
        hashed = _CHEAP.hash(PASSWORD)
        for name in names:
            store.add_account(name, hashed, quota_bytes, quota_messages)
    finally:
        store.close()


def message(marker: str, size: int, *, subject: str = "chaos") -> bytes:
    """A message identified by ``X-Chaos-Id: marker``, about ``size`` octets, the body derived
    from the marker (so the exact bytes can be rebuilt for comparison)."""
    head = (
        f"From: <sender@remote.example>\r\nTo: <someone@{DOMAIN}>\r\n"
        f"Subject: {subject} {marker}\r\nMessage-ID: <{marker}@chaos.test>\r\n"
        f"X-Chaos-Id: {marker}\r\n\r\n"
    ).encode()
    lines = max(0, -(-(size - len(head)) // 72))
    body = random.Random(marker).randbytes(lines * 70).translate(_LETTERS)
    return head + b"".join(body[i : i + 70] + b"\r\n" for i in range(0, len(body), 70))


_LETTERS = bytes(b"abcdefghijklmnopqrstuvwxyz .,"[i % 29] for i in range(256))


def run_check(data: Path) -> subprocess.CompletedProcess[str]:
    """``python -m postfach --data DATA check`` as an operator runs it."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("POSTFACH_")}
    env["COLUMNS"] = "200"
    return subprocess.run(
        [sys.executable, "-m", "postfach", "--data", str(data), "check"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )


def database_problems(data: Path) -> list[str]:
    """Independent of ``postfach check``: SQLite integrity, quota counters against the stored
    sizes, every size against its blob (bytes and hash), UIDNEXT above every UID ever used."""
    problems: list[str] = []
    conn = sqlite3.connect(f"file:{data / 'postfach.db'}?mode=ro", uri=True)
    try:
        integrity = [r[0] for r in conn.execute("PRAGMA integrity_check")]
        if integrity != ["ok"]:
            problems.append(f"integrity_check: {integrity[:5]}")
        fk = conn.execute("PRAGMA foreign_key_check").fetchall()
        if fk:
            problems.append(f"foreign_key_check: {fk[:5]}")
        for name, ub, um, real_b, real_m in conn.execute(
            "SELECT a.name, a.used_bytes, a.used_messages, coalesce(sum(m.size), 0), count(m.id)"
            " FROM accounts a LEFT JOIN mailboxes b ON b.account_id=a.id"
            " LEFT JOIN messages m ON m.mailbox_id=b.id GROUP BY a.id"
        ):
            if (ub, um) != (real_b, real_m):
                problems.append(f"quota {name}: counters {ub}/{um}, stored {real_b}/{real_m}")
        for sha, size, data_blob, msize in conn.execute(
            "SELECT b.sha256, b.size, b.data, m.size"
            " FROM messages m JOIN blobs b ON b.sha256=m.blob"
        ):
            if data_blob is not None:
                content = bytes(data_blob)
            else:
                path = data / "blobs" / sha[:2] / sha[2:4] / sha
                if not path.exists():
                    problems.append(f"blob file {sha[:16]} missing")
                    continue
                content = path.read_bytes()
            if hashlib.sha256(content).hexdigest() != sha:
                problems.append(f"blob {sha[:16]}: content does not match its hash")
            if not size == msize == len(content):
                problems.append(f"blob {sha[:16]}: sizes {size}/{msize}/{len(content)}")
        for mid, uidnext, top in conn.execute(
            "SELECT b.id, b.uidnext, max(coalesce((SELECT max(uid) FROM messages m"
            " WHERE m.mailbox_id=b.id), 0), coalesce((SELECT max(uid) FROM expunged e"
            " WHERE e.mailbox_id=b.id), 0)) FROM mailboxes b"
        ):
            if uidnext <= top:
                problems.append(f"mailbox {mid}: UIDNEXT {uidnext} not above used UID {top}")
        for mid, hms, top in conn.execute(
            "SELECT b.id, b.highestmodseq, max(coalesce((SELECT max(modseq) FROM messages m"
            " WHERE m.mailbox_id=b.id), 0), coalesce((SELECT max(modseq) FROM expunged e"
            " WHERE e.mailbox_id=b.id), 0)) FROM mailboxes b"
        ):
            if hms < top:
                problems.append(f"mailbox {mid}: HIGHESTMODSEQ {hms} below a MODSEQ {top}")
    finally:
        conn.close()
    return problems

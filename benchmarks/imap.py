"""IMAP load benchmark: postfach and a private Dovecot over the same mailboxes, in one run.

``.venv/bin/python benchmarks/imap.py`` (``--help`` for the knobs; part of ``make bench-all``).
Everything is on 127.0.0.1, in a temporary directory removed at the end (``--keep`` keeps it).
Both servers get the same messages (the 200 of /work/shared/data/test.mbox, each copy made
unique by an ``X-Bench-Id`` header so a content-addressed store cannot deduplicate them).
postfach's data directory is prepared once by postfach's own code (accounts by its CLI, messages
through ``SqliteMailstore.stage/append``, the full-text index by ``index_pending`` until nothing
is left), kept under ``--cache`` keyed by the store's schema version, and copied for each run;
Dovecot's Maildirs are written as files (Dovecot indexes them on the first SELECT).

1. Throughput: 10 and 50 asyncio clients (``--clients``), ``--accounts`` accounts with a
   ``--messages``-message INBOX each (clients share them round-robin), each client logs in,
   SELECTs INBOX and loops over a command mix (``--mixes``) for ``--duration`` seconds; ops/s
   and mean latency per command, server CPU per operation.
2. Memory per idle connection: ``--idle`` (5,000) connections (LOGIN, SELECT INBOX, IDLE); RSS
   and PSS summed over the server's process tree (proctree.py) before and after.
3. Latency on a ``--big``-message (100,000) mailbox: SELECT, FETCH 1:* (FLAGS), SEARCH TEXT.

Each target of issue 3, point 8 gets a verdict line; the results go to ``--json`` (default
benchmarks/results/imap-last-run.json) and a Markdown fragment beside it (.md).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import mailbox
import os
import pwd
import random
import re
import shutil
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import proctree  # noqa: E402
from common import (  # noqa: E402
    DOMAIN,
    HOST,
    PASSWORD,
    CpuTimes,
    CpuUse,
    free_port,
    raise_nofile,
    wait_for_idle_server,
)
from peers import MAIL_USER, Dovecot, dovecot_version  # noqa: E402
from postfach_server import Postfach, add_workers_argument, postfach_version  # noqa: E402

MBOX = Path("/work/shared/data/test.mbox")
WORD = "report"  # in ~10% of the test messages
NEEDLE = "needle"  # in one message of every NEEDLE_EVERY of the big mailbox
NEEDLE_EVERY = 1000


def say(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)


# ---- messages ----------------------------------------------------------------------------------


def load_templates() -> list[bytes]:
    out = []
    for msg in mailbox.mbox(str(MBOX)):
        raw = msg.as_bytes()
        raw = raw.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
        out.append(raw)
    return out


def make_message(templates: Sequence[bytes], tag: str, i: int, needle: bool = False) -> bytes:
    head = f"X-Bench-Id: {tag}-{i}\r\n"
    if needle:
        head += f"X-Bench-Tag: {NEEDLE} {i}\r\n"
    return head.encode() + templates[i % len(templates)]


def throughput_accounts(n: int) -> list[str]:
    return [f"i{i:02d}@{DOMAIN}" for i in range(1, n + 1)]


BIG_ACCOUNT = f"big@{DOMAIN}"


# ---- filling the stores ------------------------------------------------------------------------


def fill_postfach(
    data_dir: Path, plan: dict[str, Callable[[], Iterator[bytes]]]
) -> dict[str, float]:
    """Append the messages through the store API (server not running); then build the index."""
    from postfach.mime.stored import parse_for_storage
    from postfach.store.api import Flag
    from postfach.store.sqlite import AppendItem, SqliteMailstore

    store = SqliteMailstore(data_dir, index_text=False)
    times: dict[str, float] = {}
    try:
        t0 = time.perf_counter()
        n = 0
        for account, gen in plan.items():
            acc = store.get_account(account)
            assert acc is not None, account
            mbox = store.get_mailbox(acc.id, "INBOX")
            assert mbox is not None
            batch: list[AppendItem] = []
            now = int(time.time())
            for data in gen():
                blob = store.stage(data, parse_for_storage(data))
                batch.append(AppendItem(blob, Flag(0), (), now))
                if len(batch) >= 500:
                    store.append(mbox.id, batch)
                    n += len(batch)
                    batch = []
                    if n % 20000 == 0:
                        say(f"  postfach: {n} messages appended")
            if batch:
                store.append(mbox.id, batch)
                n += len(batch)
        times["append_s"] = time.perf_counter() - t0
        times["messages"] = n
        t0 = time.perf_counter()
        indexed = 0
        while True:
            done = store.index_pending(500)
            if done == 0:
                break
            indexed += done
            if indexed % 20000 < 500:
                say(f"  postfach: {indexed} messages indexed")
        times["index_s"] = time.perf_counter() - t0
        times["indexed"] = indexed
    finally:
        store.close()
    return times


def fill_maildir(maildir: Path, gen: Iterator[bytes], uid: int, gid: int) -> int:
    for sub in ("cur", "new", "tmp"):
        (maildir / sub).mkdir(parents=True, exist_ok=True)
    base = int(time.time()) - 86400
    n = 0
    cur = maildir / "cur"
    for i, data in enumerate(gen):
        path = cur / f"{base + i // 1000}.M{i}P{os.getpid()}.bench,S={len(data)}:2,"
        with open(path, "wb") as f:
            f.write(data)
        os.chown(path, uid, gid)
        n += 1
    for p in (maildir, maildir / "cur", maildir / "new", maildir / "tmp"):
        os.chown(p, uid, gid)
    return n


# ---- servers -----------------------------------------------------------------------------------


@dataclass
class PostfachImap(Postfach):
    imap_port: int = field(default_factory=free_port)

    def env(self) -> dict[str, str]:
        env = super().env()
        env["POSTFACH_IMAP"] = f"{HOST}:{self.imap_port}"
        return env


@dataclass
class DovecotImap(Dovecot):
    imap_port: int = field(default_factory=free_port)
    process_limit: int = 6000  # imap processes: one per connection
    # Every other service (logins in performance mode serve many clients per process). Dovecot
    # sizes what auth and anvil must accept by the sum of the login and lmtp process limits: at
    # 6,000 each that is 24,000 fds, more than RLIMIT_NOFILE allows here (20,000).
    default_process_limit: int = 1000

    @property
    def settings(self) -> dict[str, str]:
        s = dict(super().settings)
        s.update(
            {
                "protocols": "imap pop3 lmtp",
                "mail_fsync": self.mail_fsync,
                "service imap-login": "service_count = 0, process_min_avail = 2 (performance)",
                "service imap": f"process_limit = {self.process_limit}",
                "default_client_limit / default_process_limit": f"{2 * self.process_limit}"
                f" / {self.default_process_limit}",
                "mail_max_userip_connections": "100000",
                "fs.inotify.max_user_instances (machine)": _sysctl("fs/inotify/max_user_instances"),
            }
        )
        return s

    def config(self) -> str:
        text = super().config().replace("protocols = pop3 lmtp", "protocols = imap pop3 lmtp")
        return (
            text
            + f"""\
default_client_limit = {2 * self.process_limit}
default_process_limit = {self.default_process_limit}
service imap-login {{
  inet_listener imap {{
    address = {HOST}
    port = {self.imap_port}
  }}
  inet_listener imaps {{
    port = 0
  }}
  service_count = 0
  process_min_avail = 2
}}
service imap {{
  process_limit = {self.process_limit}
}}
protocol imap {{
  mail_max_userip_connections = 100000
}}
"""
        )


def _sysctl(name: str) -> str:
    try:
        return Path("/proc/sys", name).read_text().strip()
    except OSError:
        return "unknown"


def wait_imap(port: int, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((HOST, port), timeout=2) as s:
                s.settimeout(5)
                banner = s.recv(512)
                if banner.startswith(b"* OK"):
                    return
                last = banner[:80].decode("ascii", "replace")
        except OSError as exc:
            last = str(exc)
        time.sleep(0.2)
    raise TimeoutError(f"{what} IMAP on {port} not ready after {timeout}s ({last})")


# ---- a tiny IMAP client ------------------------------------------------------------------------

_LIT = re.compile(rb"\{(\d+)\+?\}\r\n$")


class ImapError(RuntimeError):
    pass


class Client:
    def __init__(self) -> None:
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.n = 0
        self.received = 0
        self.nos = 0
        self.tolerate_no = False

    async def connect(self, port: int) -> None:
        self.reader, self.writer = await asyncio.open_connection(HOST, port, limit=1 << 20)
        greeting = await self.reader.readline()
        if not greeting.startswith(b"* OK"):
            raise ImapError(f"greeting {greeting[:80]!r}")

    async def _response(self, tag: bytes) -> tuple[bytes, list[bytes]]:
        """Read up to the tagged line; untagged lines (literals inlined) are returned."""
        assert self.reader is not None
        untagged: list[bytes] = []
        while True:
            line = await self.reader.readline()
            if not line:
                raise ImapError("connection closed")
            self.received += len(line)
            m = _LIT.search(line)
            while m:
                n = int(m.group(1))
                lit = await self.reader.readexactly(n)
                self.received += n
                rest = await self.reader.readline()
                self.received += len(rest)
                # keep literals of small responses, drop big bodies
                line = line + (lit if n < 4096 else b"") + rest
                m = _LIT.search(rest)
            if line.startswith(tag + b" "):
                return line, untagged
            untagged.append(line)

    async def cmd(self, text: str, literal: bytes | None = None) -> tuple[bytes, list[bytes]]:
        assert self.writer is not None
        self.n += 1
        tag = b"a%d" % self.n
        if literal is None:
            self.writer.write(tag + b" " + text.encode() + b"\r\n")
        else:
            self.writer.write(
                tag + b" " + text.encode() + b" {%d+}\r\n" % len(literal) + literal + b"\r\n"
            )
        status, untagged = await self._response(tag)
        if status.startswith(tag + b" NO") and self.tolerate_no:
            self.nos += 1  # e.g. FETCH 1:* NO [EXPUNGEISSUED] (RFC 2180 4.1.2): still an answer
            return status, untagged
        if not status.startswith(tag + b" OK"):
            raise ImapError(f"{text[:40]}: {status.decode('utf-8', 'replace').strip()[:200]}")
        return status, untagged

    async def login(self, port: int, account: str, mailbox: str | None = "INBOX") -> int:
        await self.connect(port)
        await self.cmd(f'LOGIN "{account}" "{PASSWORD}"')
        exists = 0
        if mailbox:
            _st, untagged = await self.cmd(f"SELECT {mailbox}")
            for line in untagged:
                parts = line.split()
                if len(parts) >= 3 and parts[2] == b"EXISTS":
                    exists = int(parts[1])
        return exists

    async def idle(self) -> None:
        assert self.writer is not None and self.reader is not None
        self.n += 1
        self.writer.write(b"a%d IDLE\r\n" % self.n)
        while True:
            line = await self.reader.readline()
            if not line:
                raise ImapError("closed during IDLE")
            if line.startswith(b"+"):
                return
            if line.startswith(b"a%d " % self.n):
                raise ImapError(f"IDLE refused: {line!r}")

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def _search_numbers(untagged: list[bytes]) -> list[int]:
    out: list[int] = []
    for line in untagged:
        if line.startswith(b"* SEARCH"):
            out.extend(int(x) for x in line.split()[2:])
    return out


# ---- 1. throughput -----------------------------------------------------------------------------

COMMANDS = (
    "FETCH 1:* (FLAGS)",
    "FETCH n BODY.PEEK[]",
    "UID STORE +FLAGS \\Seen",
    "UID STORE -FLAGS \\Seen",
    "SEARCH UNSEEN",
    f'SEARCH TEXT "{WORD}"',
    "APPEND (small)",
    "UID STORE \\Deleted + UID EXPUNGE",
    "NOOP",
)
# The mixes each client loops over: "full" is every command above; "no-search-text" leaves
# SEARCH TEXT out (Dovecot without an FTS plugin, its Debian default, scans every message for it,
# which slows every other command of its loop down; without it the other commands are compared).
MIXES: dict[str, tuple[str, ...]] = {
    "full": COMMANDS,
    "no-search-text": tuple(c for c in COMMANDS if not c.startswith("SEARCH TEXT")),
}
SMALL = (
    b"From: a@sender.example\r\nTo: b@bench.example\r\nSubject: small\r\n"
    b"Message-ID: <small@sender.example>\r\n\r\nA small appended message.\r\n"
)


async def _worker(
    mix: Sequence[str],
    port: int,
    account: str,
    base: int,
    start: asyncio.Event,
    stop_at: list[float],
    lat: dict[str, list[float]],
    errors: list[str],
    seed: int,
    nos: list[int],
) -> None:
    rng = random.Random(seed)
    c = Client()
    try:
        await c.login(port, account)
        _st, untagged = await c.cmd("UID SEARCH ALL")
        uids = sorted(_search_numbers(untagged))[:base]
        c.tolerate_no = True
        await start.wait()
        pc = time.perf_counter
        while pc() < stop_at[0]:
            for name in mix:
                t = pc()
                if name == "FETCH 1:* (FLAGS)":
                    await c.cmd("FETCH 1:* (FLAGS)")
                elif name == "FETCH n BODY.PEEK[]":
                    await c.cmd(f"FETCH {rng.randint(1, base)} BODY.PEEK[]")
                elif name == "UID STORE +FLAGS \\Seen":
                    uid = rng.choice(uids)
                    await c.cmd(f"UID STORE {uid} +FLAGS (\\Seen)")
                elif name == "UID STORE -FLAGS \\Seen":
                    await c.cmd(f"UID STORE {rng.choice(uids)} -FLAGS (\\Seen)")
                elif name == "SEARCH UNSEEN":
                    await c.cmd("SEARCH UNSEEN")
                elif name.startswith("SEARCH TEXT"):
                    await c.cmd(f'SEARCH TEXT "{WORD}"')
                elif name == "APPEND (small)":
                    st, _u = await c.cmd("APPEND INBOX", SMALL)
                    m = re.search(rb"APPENDUID \d+ (\d+)", st)
                    if not m:
                        raise ImapError(f"no APPENDUID: {st!r}")
                    new_uid = int(m.group(1))
                    t2 = pc()
                    lat[name].append(t2 - t)
                    await c.cmd(f"UID STORE {new_uid} +FLAGS.SILENT (\\Deleted)")
                    await c.cmd(f"UID EXPUNGE {new_uid}")
                    lat["UID STORE \\Deleted + UID EXPUNGE"].append(pc() - t2)
                    continue
                elif name == "UID STORE \\Deleted + UID EXPUNGE":
                    continue  # measured with APPEND
                else:
                    await c.cmd("NOOP")
                lat[name].append(pc() - t)
                if pc() >= stop_at[0]:
                    break
    except Exception as exc:
        errors.append(f"{account}: {type(exc).__name__}: {exc}")
    finally:
        nos[0] += c.nos
        c.close()


@dataclass
class Throughput:
    clients: int
    seconds: float
    counts: dict[str, int]
    mean_ms: dict[str, float]
    p99_ms: dict[str, float]
    errors: list[str]
    cpu: CpuUse
    no_responses: int = 0

    @property
    def total(self) -> float:
        return sum(self.counts.values()) / self.seconds


async def run_throughput(
    port: int,
    accounts: Sequence[str],
    clients: int,
    duration: float,
    base: int,
    mix: Sequence[str] = COMMANDS,
    server_pid: int | None = None,
) -> Throughput:
    """``clients`` clients loop over ``mix`` for ``duration`` s. CPU: the process tree of
    ``server_pid`` is the server (the other server of the run, idle, counts as "other")."""
    lat: dict[str, list[float]] = {k: [] for k in COMMANDS}
    errors: list[str] = []
    nos = [0]
    start = asyncio.Event()
    stop_at = [float("inf")]
    tasks = [
        asyncio.create_task(
            _worker(
                mix, port, accounts[i % len(accounts)], base, start, stop_at, lat, errors, i, nos
            )
        )
        for i in range(clients)
    ]
    # wait until all are logged in (they block on start)
    await asyncio.sleep(0.5)
    for _ in range(600):
        if all(t.done() for t in tasks) or sum(1 for t in tasks if not t.done()) == clients:
            break
        await asyncio.sleep(0.1)
    await asyncio.sleep(1.0)
    servers = None if server_pid is None else [server_pid]
    cpu0 = CpuTimes.now(servers)
    t0 = time.perf_counter()
    stop_at[0] = t0 + duration
    start.set()
    async with asyncio.timeout(duration + 120):
        await asyncio.gather(*tasks)
    seconds = time.perf_counter() - t0
    cpu = CpuUse.between(cpu0, CpuTimes.now(servers), seconds)
    counts = {k: len(v) for k, v in lat.items()}
    mean = {k: (statistics.fmean(v) * 1000 if v else 0.0) for k, v in lat.items()}
    p99 = {
        k: (sorted(v)[min(len(v) - 1, int(len(v) * 0.99))] * 1000 if v else 0.0)
        for k, v in lat.items()
    }
    return Throughput(clients, seconds, counts, mean, p99, errors, cpu, nos[0])


# ---- 2. idle memory ----------------------------------------------------------------------------


async def open_idle(port: int, accounts: Sequence[str], n: int) -> tuple[list[Client], int]:
    sem = asyncio.Semaphore(32)
    clients: list[Client] = []
    failed = 0

    async def one(i: int) -> None:
        nonlocal failed
        async with sem:
            c = Client()
            clients.append(c)
            try:
                async with asyncio.timeout(60):
                    await c.login(port, accounts[i % len(accounts)])
                    await c.idle()
            except Exception:
                failed += 1

    await asyncio.gather(*(one(i) for i in range(n)))
    return clients, failed


# ---- 3. big mailbox latency --------------------------------------------------------------------


async def big_latency(port: int, repeats: int = 3) -> dict[str, object]:
    out: dict[str, object] = {}
    pc = time.perf_counter
    c = Client()
    try:
        async with asyncio.timeout(1800):
            await c.login(port, BIG_ACCOUNT, None)
            t = pc()
            _st, untagged = await c.cmd("SELECT INBOX")
            out["select_first_ms"] = (pc() - t) * 1000
            for line in untagged:
                parts = line.split()
                if len(parts) >= 3 and parts[2] == b"EXISTS":
                    out["exists"] = int(parts[1])
            t = pc()
            _st, untagged = await c.cmd("FETCH 1:* (FLAGS)")
            out["fetch_flags_first_ms"] = (pc() - t) * 1000
            out["fetch_flags_lines"] = len(untagged)
            hits = 0
            times = []
            for _ in range(repeats):
                t = pc()
                _st, untagged = await c.cmd(f'SEARCH TEXT "{NEEDLE}"')
                times.append((pc() - t) * 1000)
                hits = len(_search_numbers(untagged))
            out["search_text_ms"] = times
            out["search_hits"] = hits
        c.close()
        c = Client()
        async with asyncio.timeout(600):
            await c.login(port, BIG_ACCOUNT, None)
            t = pc()
            await c.cmd("SELECT INBOX")
            out["select_again_ms"] = (pc() - t) * 1000
            t = pc()
            await c.cmd("FETCH 1:* (FLAGS)")
            out["fetch_flags_again_ms"] = (pc() - t) * 1000
    finally:
        c.close()
    return out


# ---- the prepared postfach data directory ------------------------------------------------------

# Bump when fill_postfach or the messages change what a prepared directory holds.
CACHE_FORMAT = 1
TARGET_BIG = 100_000
TARGET_IDLE = 5_000
TARGET_IDLE_KB = 20.0
TARGET_SEARCH_MS = 100.0
TARGET_CLIENTS = 50


def schema_version() -> int:
    from postfach.store.sqlite import MIGRATIONS

    return len(MIGRATIONS)


def cache_key(accounts: int, messages: int, big: int) -> str:
    """What a prepared data directory depends on: the store's schema version (a directory made
    by another schema is not what this code would store, and may not open), the mailboxes'
    sizes and the test messages."""
    spec = {
        "format": CACHE_FORMAT,
        "schema": schema_version(),
        "accounts": accounts,
        "messages": messages,
        "big": big,
        "needle_every": NEEDLE_EVERY,
        "mbox": hashlib.sha256(MBOX.read_bytes()).hexdigest(),
    }
    digest = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:12]
    return f"schema{spec['schema']}-{accounts}x{messages}-big{big}-{digest}"


def index_check(data_dir: Path) -> dict[str, int]:
    """Read-only look at the store: blobs, full-text documents, blobs not indexed yet."""
    conn = sqlite3.connect(f"file:{data_dir / 'postfach.db'}?mode=ro", uri=True)
    try:

        def one(sql: str) -> int:
            return int(conn.execute(sql).fetchone()[0])

        return {
            "messages": one("SELECT count(*) FROM messages"),
            "blobs": one("SELECT count(*) FROM blobs"),
            "fts_documents": one("SELECT count(*) FROM fts_docs"),
            "fts_skipped": one("SELECT count(*) FROM fts_skipped"),
            "not_indexed": one(
                "SELECT count(*) FROM blobs b WHERE NOT EXISTS"
                " (SELECT 1 FROM fts_docs d WHERE d.sha256=b.sha256) AND NOT EXISTS"
                " (SELECT 1 FROM fts_skipped s WHERE s.sha256=b.sha256)"
            ),
        }
    finally:
        conn.close()


def _git_head() -> str:
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run(
            ["git", "-C", str(HERE), "describe", "--always", "--dirty"],
            capture_output=True,
            text=True,
            timeout=10,
        )
        return out.stdout.strip()
    return "unknown"


def prepare_postfach(
    pf: PostfachImap,
    plan: dict[str, Callable[[], Iterator[bytes]]],
    cache: Path | None,
    key: str,
    refill: bool,
) -> dict[str, object]:
    """postfach's data directory with the accounts, mailboxes and a finished full-text index.

    Made once by postfach's own code (the CLI for the domain and accounts, the store API for the
    messages, ``index_pending`` for the index: postfach's indexer, run until nothing is left),
    kept in ``cache/key`` and copied for every later run with the same key. The copy is what
    the server under test runs on, so the cached directory never changes."""
    entry = cache / key if cache is not None else None
    if entry is not None and (entry / "manifest.json").exists() and not refill:
        say(f"postfach: copying the prepared data directory {entry}")
        t0 = time.perf_counter()
        pf.root.mkdir(parents=True, exist_ok=True)
        shutil.copytree(entry / "data", pf.data_dir, symlinks=True)
        info: dict[str, object] = json.loads((entry / "manifest.json").read_text())
        info["copied_from"] = str(entry)
        info["copy_s"] = round(time.perf_counter() - t0, 1)
        os.utime(entry)  # most recently used: kept by prune()
        return info
    say("postfach: creating accounts")
    pf.setup()
    say(f"postfach: filling {', '.join(f'{a}' for a in plan)} through the store, then indexing")
    fill = fill_postfach(pf.data_dir, plan)
    info = {
        "key": key,
        "schema": schema_version(),
        "made": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "made_by": _git_head(),
        "fill": fill,
    }
    info["index"] = index_check(pf.data_dir)
    if entry is not None:
        assert cache is not None
        cache.mkdir(parents=True, exist_ok=True)
        tmp = cache / f".{key}.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(pf.data_dir, tmp / "data", symlinks=True)
        (tmp / "manifest.json").write_text(json.dumps(info, indent=2) + "\n")
        if entry.exists():
            shutil.rmtree(entry)
        tmp.rename(entry)  # complete or absent, never half
        say(f"postfach: prepared data directory kept in {entry}")
        prune(cache, keep=3)
    return info


def prune(cache: Path, keep: int) -> None:
    """Keep the ``keep`` most recently used prepared directories (each can be gigabytes); the
    unfinished ones of runs that were interrupted go too."""
    entries = sorted(
        (p for p in cache.iterdir() if p.is_dir() and (p / "manifest.json").exists()),
        key=lambda p: p.stat().st_mtime,
        reverse=True,
    )
    for old in entries[keep:]:
        say(f"removing the older prepared directory {old}")
        shutil.rmtree(old, ignore_errors=True)
    for tmp in cache.glob(".*.tmp-*"):
        pid = tmp.name.rpartition("-")[2]
        if pid.isdigit() and not Path(f"/proc/{pid}").exists():
            shutil.rmtree(tmp, ignore_errors=True)


# ---- main --------------------------------------------------------------------------------------


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--clients", default="10,50", help="client counts for the throughput runs")
    ap.add_argument("--duration", type=float, default=10.0, help="seconds per throughput run")
    ap.add_argument(
        "--mixes",
        default="full,no-search-text",
        help=f"comma list of command mixes to run ({', '.join(MIXES)})",
    )
    ap.add_argument("--accounts", type=int, default=10)
    ap.add_argument("--messages", type=int, default=500)
    ap.add_argument("--idle", type=int, default=TARGET_IDLE, help="idle IDLE connections")
    ap.add_argument("--big", type=int, default=TARGET_BIG, help="messages in the big mailbox")
    ap.add_argument("--dovecot-big", type=int, default=None, help="default: same as --big")
    ap.add_argument("--search-repeats", type=int, default=3, help="SEARCH TEXT runs, postfach")
    ap.add_argument(
        "--dovecot-search-repeats",
        type=int,
        default=1,
        help="SEARCH TEXT runs, Dovecot (without FTS each scans every message: 10-25 s here)",
    )
    ap.add_argument("--servers", default="postfach,dovecot")
    ap.add_argument("--skip", default="", help="comma list of: throughput,idle,big")
    ap.add_argument(
        "--cache",
        type=Path,
        default=Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "postfach-bench",
        help="where prepared postfach data directories are kept, shared by every checkout "
        "(default ~/.cache/postfach-bench)",
    )
    ap.add_argument("--no-cache", action="store_true", help="fill postfach afresh, keep nothing")
    ap.add_argument("--refill", action="store_true", help="rebuild the prepared directory")
    ap.add_argument(
        "--prepare-only",
        action="store_true",
        help="only make the prepared postfach directory (can run before the quiet window)",
    )
    ap.add_argument(
        "--idle-wait",
        type=float,
        default=120.0,
        help="before each measurement wait up to this long for the servers to be idle",
    )
    ap.add_argument("--profile", type=float, default=0.0, help="py-spy postfach for N s at 50")
    ap.add_argument(
        "--json",
        type=Path,
        default=HERE / "results" / "imap-last-run.json",
        help="results as JSON (a Markdown fragment is written beside it, .md)",
    )
    ap.add_argument("--keep", action="store_true")
    add_workers_argument(ap)
    args = ap.parse_args()
    servers = args.servers.split(",")
    mixes = [m for m in args.mixes.split(",") if m]
    for m in mixes:
        if m not in MIXES:
            ap.error(f"unknown mix {m!r} (known: {', '.join(MIXES)})")
    skip = set(filter(None, args.skip.split(",")))
    # The load generator holds --idle sockets; Dovecot's master wants fds for its auth client_limit.
    nofile = raise_nofile(max(2 * args.idle + 4096, 32768))
    clients_list = [int(x) for x in args.clients.split(",")]
    dbig = args.dovecot_big if args.dovecot_big is not None else args.big
    big = args.big if "big" not in skip else 0
    cache = None if args.no_cache else args.cache
    key = cache_key(args.accounts, args.messages, big)
    started = time.perf_counter()

    say(f"postfach {postfach_version()}, dovecot {dovecot_version()}, RLIMIT_NOFILE {nofile}")
    say(f"load average at start: {os.getloadavg()}")
    templates = load_templates()
    accounts = throughput_accounts(args.accounts)
    all_accounts = [*accounts, BIG_ACCOUNT]
    root = Path(tempfile.mkdtemp(prefix="imapbench-"))
    root.chmod(0o755)
    results: dict[str, dict[str, object]] = {s: {} for s in servers}
    results["_meta"] = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "command": "benchmarks/imap.py " + " ".join(sys.argv[1:]),
        "args": {k: str(v) for k, v in vars(args).items()},
        "postfach": postfach_version(),
        "dovecot": dovecot_version(),
        "cores": os.cpu_count(),
        "loadavg_start": os.getloadavg(),
        "mixes": mixes,
        "clients": clients_list,
    }
    meta: dict[str, Any] = results["_meta"]
    pf: PostfachImap | None = None
    dv: DovecotImap | None = None
    failed: list[str] = []

    def small_gen(account: str) -> Callable[[], Iterator[bytes]]:
        return lambda: (make_message(templates, account, i) for i in range(args.messages))

    def big_gen(n: int) -> Iterator[bytes]:
        return (make_message(templates, "big", i, needle=(i % NEEDLE_EVERY == 7)) for i in range(n))

    try:
        # ---------- fill ----------
        if "postfach" in servers or args.prepare_only:
            pf = PostfachImap(root / "postfach", all_accounts, workers=args.workers)
            plan = {a: small_gen(a) for a in accounts}
            if big:
                plan[BIG_ACCOUNT] = lambda: big_gen(big)
            results.setdefault("postfach", {})["fill"] = prepare_postfach(
                pf, plan, cache, key, args.refill
            )
            check = index_check(pf.data_dir)
            results["postfach"]["index_before_start"] = check
            say(f"postfach store: {check}")
            if check["not_indexed"]:
                failed.append(f"postfach: {check['not_indexed']} messages not indexed before start")
            if args.prepare_only:
                shutil.rmtree(root, ignore_errors=True)  # the cache holds the prepared copy
                return 1 if failed else 0
        if "dovecot" in servers:
            dv = DovecotImap(root / "dovecot", all_accounts, mail_fsync="optimized")
            pw = pwd.getpwnam(MAIL_USER)
            dv.root.mkdir(parents=True)
            dv.mail_dir.mkdir()
            os.chown(dv.mail_dir, pw.pw_uid, pw.pw_gid)
            t0 = time.perf_counter()
            for a in accounts:
                fill_maildir(dv.mail_dir / a, small_gen(a)(), pw.pw_uid, pw.pw_gid)
            n_big = 0
            if big:
                n_big = fill_maildir(dv.mail_dir / BIG_ACCOUNT, big_gen(dbig), pw.pw_uid, pw.pw_gid)
            results["dovecot"]["fill"] = {
                "write_files_s": time.perf_counter() - t0,
                "big_messages": n_big,
            }
            say(f"dovecot fill: {results['dovecot']['fill']}")
            # Dovecot.start() makes root/ itself; move our Maildirs aside and back.
            aside = root / "dovecot-mail"
            dv.mail_dir.rename(aside)
            dv.root.rmdir()
        # ---------- start ----------
        pids: dict[str, int] = {}
        ports: dict[str, int] = {}
        if pf is not None:
            pf.start()
            wait_imap(pf.imap_port, 60, "postfach")
            assert pf.child is not None
            time.sleep(1)  # let a supervisor fork its workers before counting them
            pids["postfach"], ports["postfach"] = pf.child.pid, pf.imap_port
            meta["postfach_workers"] = pf.describe_workers()
            say(f"postfach serving IMAP on {pf.imap_port}; workers: {meta['postfach_workers']}")
        if dv is not None:
            dv.start()
            dv.mail_dir.rmdir()  # put the filled Maildirs in place of the empty one
            aside.rename(dv.mail_dir)
            wait_imap(dv.imap_port, 30, "dovecot")
            assert dv.child is not None
            pids["dovecot"], ports["dovecot"] = dv.child.pid, dv.imap_port
            say(f"dovecot serving IMAP on {dv.imap_port}")
            results["dovecot"]["settings"] = dv.settings

        def settle(what: str) -> None:
            if args.idle_wait > 0:
                waited = wait_for_idle_server(0.1, args.idle_wait, say)
                meta.setdefault("idle_waits", {})[what] = round(waited, 1)

        # warm: one login + SELECT per account (Dovecot builds its index files here)
        for name, port in ports.items():
            t0 = time.perf_counter()

            async def warm(port: int = port) -> None:
                for a in accounts:
                    c = Client()
                    try:
                        n = await c.login(port, a)
                        if n != args.messages:
                            raise ImapError(f"{a}: {n} messages, expected {args.messages}")
                    finally:
                        c.close()

            asyncio.run(warm())
            say(
                f"{name}: warm-up SELECT of {len(accounts)} accounts"
                f" {time.perf_counter() - t0:.2f}s"
            )

        # ---------- 2. idle memory (first, on fresh servers) ----------
        if "idle" not in skip:
            for name, port in ports.items():
                settle(f"{name} idle")
                results[name]["idle"] = r = asyncio.run(
                    idle_round(port, pids[name], accounts, args.idle)
                )
                say(f"{name} idle: {r}")
                time.sleep(3)  # let Dovecot's imap processes exit

        # ---------- 1. throughput ----------
        if "throughput" not in skip:
            for mix in mixes:
                for n in clients_list:
                    for name, port in ports.items():
                        settle(f"{name} {mix} {n}")
                        la = os.getloadavg()
                        t = asyncio.run(
                            run_throughput(
                                port,
                                accounts,
                                n,
                                args.duration,
                                args.messages,
                                MIXES[mix],
                                pids[name],
                            )
                        )
                        results[name][f"throughput_{mix}_{n}"] = {
                            "mix": mix,
                            "clients": n,
                            "seconds": t.seconds,
                            "ops_per_s": {k: v / t.seconds for k, v in t.counts.items()},
                            "total_ops_per_s": t.total,
                            "mean_ms": t.mean_ms,
                            "p99_ms": t.p99_ms,
                            "errors": t.errors[:5],
                            "n_errors": len(t.errors),
                            "no_responses": t.no_responses,
                            "cpu": _cpu(t.cpu),
                            "server_ms_cpu_per_op": (
                                1000 * t.cpu.server_cores * t.seconds / sum(t.counts.values())
                                if sum(t.counts.values())
                                else None
                            ),
                            "loadavg_before": la,
                        }
                        say(
                            f"{name} {mix} {n} clients: {t.total:.1f} ops/s, NO {t.no_responses},"
                            f" errors {len(t.errors)} {t.errors[:2]}, cpu {_cpu(t.cpu)}"
                        )
                        if t.errors:
                            failed.append(f"{name} {mix} {n} clients: {t.errors[0]}")

            if args.profile and pf is not None:
                n = max(clients_list)
                say(f"profiling postfach (unmeasured run, {n} clients, {args.profile}s)")
                prof = _start_profile(pf, root, args.profile)
                asyncio.run(
                    run_throughput(pf.imap_port, accounts, n, args.profile + 3, args.messages)
                )
                _finish_profile(prof, results)

        # ---------- 3. big mailbox ----------
        if big:
            if pf is not None:
                check = index_check(pf.data_dir)
                results["postfach"]["index_before_search"] = check
                if check["not_indexed"]:
                    failed.append(f"postfach: {check['not_indexed']} not indexed before SEARCH")
            for name, port in ports.items():
                settle(f"{name} big")
                la = os.getloadavg()
                repeats = args.search_repeats if name == "postfach" else args.dovecot_search_repeats
                r = asyncio.run(big_latency(port, repeats))
                r["loadavg_before"] = la
                results[name]["big"] = r
                say(f"{name} big mailbox: {r}")
    except BaseException as exc:
        traceback.print_exc()
        failed.append(f"{type(exc).__name__}: {exc}")
        if not isinstance(exc, Exception):
            for srv in (pf, dv):
                if srv is not None:
                    with contextlib.suppress(Exception):
                        srv.stop()
            if not args.keep:
                shutil.rmtree(root, ignore_errors=True)
            raise
    finally:
        meta["loadavg_end"] = os.getloadavg()
        meta["errors"] = failed
        meta["seconds"] = round(time.perf_counter() - started)
        for srv in (pf, dv):
            if srv is not None:
                with contextlib.suppress(Exception):
                    srv.stop()
    try:
        if args.prepare_only:
            return 1 if failed else 0
        meta["verdicts"] = verdicts(results, servers, args.big)
        text = report(results, servers, markdown=False)
        print()
        print(text)
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(results, indent=2, default=str))
            md = args.json.with_suffix(".md")
            md.write_text(report(results, servers, markdown=True))
            print(f"\nJSON: {args.json}\nMarkdown: {md}  ({meta['seconds']}s of measuring)")
        return 1 if failed else 0
    finally:
        # After the results are out: removing 100,000 Maildir files and the copied store takes
        # a few minutes on a busy machine.
        if args.keep:
            say(f"kept {root}")
        else:
            t0 = time.perf_counter()
            shutil.rmtree(root, ignore_errors=True)
            say(f"removed {root} in {time.perf_counter() - t0:.0f}s")


async def idle_round(port: int, pid: int, accounts: Sequence[str], n: int) -> dict[str, object]:
    """Memory of the server's process tree before and after ``n`` idle IDLE connections."""
    before = proctree.memory([pid])
    t0 = time.perf_counter()
    clients, failed = await open_idle(port, accounts, n)
    opened = time.perf_counter() - t0
    await asyncio.sleep(3)
    after = proctree.memory([pid])
    for c in clients:
        c.close()
    await asyncio.sleep(0.5)
    ok = n - failed
    return {
        "connections": ok,
        "failed": failed,
        "open_s": round(opened, 1),
        "before": before.as_dict(),
        "after": after.as_dict(),
        "rss_per_conn_kb": (after.rss_kb - before.rss_kb) / max(1, ok),
        "pss_per_conn_kb": (after.pss_kb - before.pss_kb) / max(1, ok),
    }


def _cpu(c: CpuUse) -> dict[str, float]:
    return {
        "machine": round(c.machine_cores, 2),
        "client": round(c.client_cores, 2),
        "server": round(c.server_cores, 2),
        "other": round(c.other_cores, 2),
    }


def _start_profile(pf: PostfachImap | None, root: Path, seconds: float) -> object:
    assert pf is not None and pf.child is not None
    spy = Path(sys.executable).parent / "py-spy"
    out = root / "profile.txt"
    f = open(out, "wb")  # noqa: SIM115
    proc = subprocess.Popen(
        [
            str(spy),
            "record",
            "--pid",
            str(pf.child.pid),
            "--subprocesses",
            "-d",
            str(int(seconds)),
            "-f",
            "raw",
            "-o",
            str(Path("/tmp") / f"postfach-imap-profile-{os.getpid()}.txt"),
            "--nonblocking",
        ],
        stdout=f,
        stderr=subprocess.STDOUT,
    )
    return proc, f


def _finish_profile(prof: object, results: dict[str, dict[str, object]]) -> None:
    proc, f = prof  # type: ignore[misc]
    try:
        proc.wait(timeout=60)
    except Exception:
        proc.kill()
    f.close()


# ---- verdicts and report -----------------------------------------------------------------------


def _get(results: dict[str, dict[str, object]], server: str, *path: str) -> Any:
    cur: Any = results.get(server, {})
    for k in path:
        if not isinstance(cur, dict) or k not in cur:
            return None
        cur = cur[k]
    return cur


def verdicts(results: dict[str, dict[str, object]], servers: Sequence[str], big: int) -> list[str]:
    """One line per target of issue 3, point 8 (and the latencies it asks for, no target)."""
    out = []
    meta = results["_meta"]
    for mix in meta["mixes"]:  # type: ignore[attr-defined]
        what = f"IMAP ops/s >= Dovecot's at {TARGET_CLIENTS} clients, mix {mix}"
        ours = _get(results, "postfach", f"throughput_{mix}_{TARGET_CLIENTS}", "total_ops_per_s")
        theirs = _get(results, "dovecot", f"throughput_{mix}_{TARGET_CLIENTS}", "total_ops_per_s")
        if ours is None or theirs is None:
            out.append(f"{what}: NOT MEASURED")
        else:
            met = "MET" if ours >= theirs else "NOT MET"
            out.append(f"{what}: {met} ({ours:.0f} vs {theirs:.0f} ops/s, {ours / theirs:.2f}x)")
    what = (
        f"Memory per idle IDLE connection < {TARGET_IDLE_KB:.0f} KB at {TARGET_IDLE:,} "
        "connections (PSS summed over the server's processes)"
    )
    idle = _get(results, "postfach", "idle")
    if idle is None:
        out.append(f"{what}: NOT MEASURED")
    else:
        dv = _get(results, "dovecot", "idle")
        figs = (
            f"postfach {idle['pss_per_conn_kb']:.1f} KB PSS, {idle['rss_per_conn_kb']:.1f} KB RSS,"
            f" {idle['after']['processes']} process(es), {idle['connections']} connections"
        )
        if dv is not None:
            figs += (
                f"; Dovecot {dv['pss_per_conn_kb']:.1f} KB PSS, {dv['rss_per_conn_kb']:.1f} KB RSS,"
                f" {dv['connections']} connections"
            )
        if idle["connections"] < TARGET_IDLE:
            out.append(f"{what}: NOT MEASURED at {TARGET_IDLE:,} ({figs})")
        else:
            met = "MET" if idle["pss_per_conn_kb"] < TARGET_IDLE_KB else "NOT MET"
            out.append(f"{what}: {met} ({figs})")
    what = f"SEARCH TEXT < {TARGET_SEARCH_MS:.0f} ms on {TARGET_BIG:,} messages"
    pb = _get(results, "postfach", "big")
    if pb is None:
        out.append(f"{what}: NOT MEASURED")
    else:
        med = statistics.median(pb["search_text_ms"])
        figs = (
            f"postfach median {med:.0f} ms of {len(pb['search_text_ms'])},"
            f" {pb['search_hits']} hits in {pb.get('exists')} messages"
        )
        db = _get(results, "dovecot", "big")
        if db is not None:
            figs += f"; Dovecot {statistics.median(db['search_text_ms']):.0f} ms"
        if pb.get("exists") != TARGET_BIG:
            out.append(f"{what}: NOT MEASURED at {TARGET_BIG:,} ({figs})")
        else:
            met = "MET" if med < TARGET_SEARCH_MS else "NOT MET"
            out.append(f"{what}: {met} ({figs})")
        lat = []
        for s in servers:
            b = _get(results, s, "big")
            if b is not None:
                lat.append(
                    f"{s} first SELECT {b['select_first_ms']:.0f} ms, again "
                    f"{b['select_again_ms']:.0f} ms, FETCH 1:* (FLAGS) "
                    f"{b['fetch_flags_first_ms']:.0f} / {b['fetch_flags_again_ms']:.0f} ms"
                )
        out.append(
            f"SELECT and FETCH 1:* (FLAGS) on {pb.get('exists')} messages (no target): "
            + "; ".join(lat)
        )
    return out


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]], markdown: bool) -> str:
    if markdown:
        lines = ["| " + " | ".join(headers) + " |"]
        lines.append("|" + "|".join("---" if i == 0 else "---:" for i in range(len(headers))) + "|")
        lines += ["| " + " | ".join(r) + " |" for r in rows]
        return "\n".join(lines)
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    fmt = [f"{{:<{w}}}" if i == 0 else f"{{:>{w}}}" for i, w in enumerate(widths)]
    out = ["  ".join(f.format(h) for f, h in zip(fmt, headers, strict=True))]
    out += ["  ".join(f.format(c) for f, c in zip(fmt, r, strict=True)) for r in rows]
    return "\n".join(out)


def report(results: dict[str, dict[str, object]], servers: Sequence[str], markdown: bool) -> str:
    meta: Any = results["_meta"]
    lines = [
        f"{'### ' if markdown else ''}IMAP run of {meta['date']}",
        "",
        f"Command: `.venv/bin/python {meta['command'].strip()}`",
        f"postfach {meta['postfach']} ({meta.get('postfach_workers', 'not started')}), "
        f"Dovecot {meta['dovecot']}, {meta['cores']} cores, load average "
        f"{' '.join(f'{x:.2f}' for x in meta['loadavg_start'])} at start, "
        f"{' '.join(f'{x:.2f}' for x in meta['loadavg_end'])} at the end, {meta['seconds']} s.",
    ]
    fill = _get(results, "postfach", "fill")
    if fill:
        src = (
            f"copied from {fill['copied_from']} ({fill['copy_s']} s)"
            if "copied_from" in fill
            else "made now"
        )
        lines.append(
            f"postfach store: prepared {fill.get('made')} by {fill.get('made_by')} (schema "
            f"{fill.get('schema')}), {src}; fill {fill.get('fill')}; before start "
            f"{_get(results, 'postfach', 'index_before_start')}."
        )
    settings = _get(results, "dovecot", "settings")
    if settings:
        lines.append("Dovecot: " + "; ".join(f"{k} = {v}" for k, v in settings.items()) + ".")
    for mix in meta["mixes"]:
        for n in meta["clients"]:
            key = f"throughput_{mix}_{n}"
            have = [s for s in servers if key in results.get(s, {})]
            if not have:
                continue
            lines += ["", f"Throughput, mix {mix}, {n} clients: ops/s (mean ms)", ""]
            headers = ["command", *have]
            if len(have) == 2:
                headers.append("ratio")
            rows = []
            for cmd in MIXES[mix]:
                row = [cmd]
                vals = []
                for s in have:
                    t: Any = results[s][key]
                    vals.append(t["ops_per_s"][cmd])
                    row.append(f"{t['ops_per_s'][cmd]:.1f} ({t['mean_ms'][cmd]:.1f})")
                if len(vals) == 2:
                    row.append(f"{vals[0] / vals[1]:.2f}" if vals[1] else "n/a")
                rows.append(row)
            tot = [results[s][key]["total_ops_per_s"] for s in have]  # type: ignore[index]
            row = ["TOTAL", *(f"{v:.1f}" for v in tot)]
            if len(tot) == 2:
                row.append(f"{tot[0] / tot[1]:.2f}" if tot[1] else "n/a")
            rows.append(row)
            cpu_row = ["server ms CPU/op; cores server/client/other"]
            for s in have:
                t = results[s][key]
                per = t["server_ms_cpu_per_op"]
                c = t["cpu"]
                cpu_row.append(
                    f"{per:.2f}; {c['server']}/{c['client']}/{c['other']}"
                    if per is not None
                    else "-"
                )
            if len(have) == 2:
                cpu_row.append("")
            rows.append(cpu_row)
            lines.append(_table(headers, rows, markdown))
    idle_rows = []
    for s in servers:
        r: Any = _get(results, s, "idle")
        if r is not None:
            idle_rows.append(
                [
                    s,
                    str(r["connections"]),
                    str(r["failed"]),
                    f"{r['open_s']}",
                    f"{r['after']['processes']}",
                    f"{r['before']['rss_kb'] / 1024:.0f} -> {r['after']['rss_kb'] / 1024:.0f}",
                    f"{r['before']['pss_kb'] / 1024:.0f} -> {r['after']['pss_kb'] / 1024:.0f}",
                    f"{r['rss_per_conn_kb']:.1f}",
                    f"{r['pss_per_conn_kb']:.1f}",
                ]
            )
    if idle_rows:
        headers = [
            "idle IDLE connections",
            "open",
            "failed",
            "open s",
            "processes",
            "RSS MB",
            "PSS MB",
            "KB RSS/conn",
            "KB PSS/conn",
        ]
        lines += ["", _table(headers, idle_rows, markdown)]
    big_rows = []
    for s in servers:
        b: Any = _get(results, s, "big")
        if b is not None:
            big_rows.append(
                [
                    s,
                    str(b.get("exists")),
                    f"{b['select_first_ms']:.0f}",
                    f"{b['select_again_ms']:.0f}",
                    f"{b['fetch_flags_first_ms']:.0f}",
                    f"{b['fetch_flags_again_ms']:.0f}",
                    ", ".join(f"{x:.0f}" for x in b["search_text_ms"]),
                    str(b["search_hits"]),
                ]
            )
    if big_rows:
        headers = [
            "big mailbox",
            "messages",
            "SELECT ms",
            "SELECT again ms",
            "FETCH 1:* (FLAGS) ms",
            "again ms",
            f'SEARCH TEXT "{NEEDLE}" ms',
            "hits",
        ]
        lines += ["", _table(headers, big_rows, markdown)]
    lines.append("")
    lines += [f"{'- ' if markdown else ''}{v}" for v in meta.get("verdicts", [])]
    lines += [f"{'- ' if markdown else ''}error: {e}" for e in meta.get("errors", [])]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())

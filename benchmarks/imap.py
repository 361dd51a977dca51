"""IMAP load benchmark: postfach and a private Dovecot over the same mailboxes, in one run.

``.venv/bin/python benchmarks/imap.py`` (``--help`` for the knobs). Everything is on 127.0.0.1,
in a temporary directory removed at the end (``--keep`` keeps it). Both servers get the same
messages (the 200 of /work/shared/data/test.mbox, each copy made unique by an ``X-Bench-Id``
header so a content-addressed store cannot deduplicate them): postfach's store is filled through
its own API (``SqliteMailstore.stage/append``, full-text index built with ``index_pending``)
before the server starts, Dovecot's Maildirs by writing the files (Dovecot indexes them on the
first SELECT).

1. Throughput: 10 and 50 asyncio clients (``--clients``), ``--accounts`` accounts with a
   ``--messages``-message INBOX each (clients share them round-robin), each client logs in,
   SELECTs INBOX and loops over a command mix for ``--duration`` seconds; ops/s per command.
2. Memory per idle connection: ``--idle`` connections (LOGIN, SELECT INBOX, IDLE), server RSS
   before/after (postfach: the serve process' VmRSS; Dovecot: the sum over all its processes,
   and the sum of PSS, which does not count shared pages once per process).
3. Latency on a ``--big``-message mailbox: SELECT, FETCH 1:* (FLAGS), SEARCH TEXT "needle".
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import mailbox
import os
import pwd
import random
import re
import resource
import shutil
import socket
import statistics
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from common import DOMAIN, HOST, PASSWORD, CpuTimes, CpuUse, free_port  # noqa: E402
from peers import MAIL_USER, Dovecot, dovecot_version  # noqa: E402
from postfach_server import Postfach, postfach_version  # noqa: E402

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
    process_limit: int = 6000

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
                f" / {self.process_limit}",
                "mail_max_userip_connections": "100000",
            }
        )
        return s

    def config(self) -> str:
        text = super().config().replace("protocols = pop3 lmtp", "protocols = imap pop3 lmtp")
        return (
            text
            + f"""\
default_client_limit = {2 * self.process_limit}
default_process_limit = {self.process_limit}
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


# ---- process memory ----------------------------------------------------------------------------


def _status_kb(pid: int, key: str) -> int:
    with contextlib.suppress(OSError), open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


def _pss_kb(pid: int) -> int:
    with contextlib.suppress(OSError), open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            if line.startswith("Pss:"):
                return int(line.split()[1])
    return 0


def session_pids(sid: int) -> list[int]:
    pids = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as f:
                data = f.read()
        except OSError:
            continue
        fields = data[data.rindex(b")") + 2 :].split()
        if int(fields[3]) == sid:
            pids.append(int(entry.name))
    return pids


def memory(pids: Sequence[int]) -> tuple[int, int, int]:
    """(sum VmRSS kB, sum Pss kB, processes)."""
    return sum(_status_kb(p, "VmRSS") for p in pids), sum(_pss_kb(p) for p in pids), len(pids)


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
MIX: list[str] = list(COMMANDS)  # the commands each client loops over (--without drops some)
SMALL = (
    b"From: a@sender.example\r\nTo: b@bench.example\r\nSubject: small\r\n"
    b"Message-ID: <small@sender.example>\r\n\r\nA small appended message.\r\n"
)


async def _worker(
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
            for name in MIX:
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
    port: int, accounts: Sequence[str], clients: int, duration: float, base: int
) -> Throughput:
    lat: dict[str, list[float]] = {k: [] for k in COMMANDS}
    errors: list[str] = []
    nos = [0]
    start = asyncio.Event()
    stop_at = [float("inf")]
    tasks = [
        asyncio.create_task(
            _worker(port, accounts[i % len(accounts)], base, start, stop_at, lat, errors, i, nos)
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
    cpu0 = CpuTimes.now()
    t0 = time.perf_counter()
    stop_at[0] = t0 + duration
    start.set()
    async with asyncio.timeout(duration + 120):
        await asyncio.gather(*tasks)
    seconds = time.perf_counter() - t0
    cpu = CpuUse.between(cpu0, CpuTimes.now(), seconds)
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


# ---- main --------------------------------------------------------------------------------------


def raise_nofile(want: int) -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = max(soft, want)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, max(hard, target)))
    except (ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(target, hard), hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--clients", default="10,50")
    ap.add_argument("--duration", type=float, default=15.0)
    ap.add_argument("--accounts", type=int, default=10)
    ap.add_argument("--messages", type=int, default=500)
    ap.add_argument("--idle", type=int, default=1000, help="idle connections (e.g. 5000)")
    ap.add_argument("--big", type=int, default=100_000, help="messages in the big mailbox")
    ap.add_argument("--dovecot-big", type=int, default=None, help="default: same as --big")
    ap.add_argument("--servers", default="postfach,dovecot")
    ap.add_argument("--skip", default="", help="comma list of: throughput,idle,big")
    ap.add_argument("--profile", type=float, default=0.0, help="py-spy postfach for N s at 50")
    ap.add_argument("--without", default="", help="';'-separated commands to drop from the mix")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args()
    servers = args.servers.split(",")
    dropped = set(filter(None, args.without.split(";")))
    MIX[:] = [c for c in COMMANDS if c not in dropped]
    skip = set(filter(None, args.skip.split(",")))
    nofile = raise_nofile(2 * args.idle + 4096)
    clients_list = [int(x) for x in args.clients.split(",")]
    dbig = args.dovecot_big if args.dovecot_big is not None else args.big

    say(f"postfach {postfach_version()}, dovecot {dovecot_version()}, RLIMIT_NOFILE {nofile}")
    say(f"load average at start: {os.getloadavg()}")
    templates = load_templates()
    accounts = throughput_accounts(args.accounts)
    all_accounts = [*accounts, BIG_ACCOUNT]
    root = Path(tempfile.mkdtemp(prefix="imapbench-"))
    root.chmod(0o755)
    results: dict[str, dict[str, object]] = {s: {} for s in servers}
    results["_meta"] = {
        "args": vars(args) | {"json": str(args.json)},
        "loadavg_start": os.getloadavg(),
    }
    pf: PostfachImap | None = None
    dv: DovecotImap | None = None

    def small_gen(account: str) -> Callable[[], Iterator[bytes]]:
        return lambda: (make_message(templates, account, i) for i in range(args.messages))

    def big_gen(n: int) -> Iterator[bytes]:
        return (make_message(templates, "big", i, needle=(i % NEEDLE_EVERY == 7)) for i in range(n))

    try:
        # ---------- fill ----------
        if "postfach" in servers:
            pf = PostfachImap(root / "postfach", all_accounts)
            say("postfach: creating accounts")
            pf.setup()
            plan = {a: small_gen(a) for a in accounts}
            if "big" not in skip:
                plan[BIG_ACCOUNT] = lambda: big_gen(args.big)
            say(f"postfach: filling {len(accounts)}x{args.messages} + big {args.big} messages")
            ft = fill_postfach(pf.data_dir, plan)
            say(f"postfach fill: {ft}")
            results["postfach"]["fill"] = ft
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
            if "big" not in skip:
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

            start_dv_mail = aside
        # ---------- start ----------
        if pf is not None:
            pf.start()
            wait_imap(pf.imap_port, 60, "postfach")
            say(f"postfach serving IMAP on {pf.imap_port} (pid {pf.child.pid if pf.child else 0})")
        if dv is not None:
            dv.start()
            # put the filled Maildirs in place (start() made an empty mail dir)
            dv.mail_dir.rmdir()
            start_dv_mail.rename(dv.mail_dir)
            wait_imap(dv.imap_port, 30, "dovecot")
            say(f"dovecot serving IMAP on {dv.imap_port}")
            results["dovecot"]["settings"] = dv.settings

        ports = {}
        if pf is not None:
            ports["postfach"] = pf.imap_port
        if dv is not None:
            ports["dovecot"] = dv.imap_port

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

        def server_mem(name: str) -> tuple[int, int, int]:
            if name == "postfach":
                assert pf is not None and pf.child is not None
                return memory([pf.child.pid])
            assert dv is not None and dv.child is not None
            return memory(session_pids(dv.child.pid))

        # ---------- 2. idle memory (first, on fresh servers) ----------
        if "idle" not in skip:
            for name, port in ports.items():
                time.sleep(1)
                before = server_mem(name)

                async def idle_round(
                    port: int = port, name: str = name, before: tuple[int, int, int] = before
                ) -> dict[str, object]:
                    t0 = time.perf_counter()
                    clients, failed = await open_idle(port, accounts, args.idle)
                    opened = time.perf_counter() - t0
                    await asyncio.sleep(3)
                    after = server_mem(name)
                    for c in clients:
                        c.close()
                    await asyncio.sleep(0.5)
                    ok = args.idle - failed
                    return {
                        "connections": ok,
                        "failed": failed,
                        "open_s": opened,
                        "rss_before_kb": before[0],
                        "rss_after_kb": after[0],
                        "pss_before_kb": before[1],
                        "pss_after_kb": after[1],
                        "procs_before": before[2],
                        "procs_after": after[2],
                        "rss_per_conn_kb": (after[0] - before[0]) / max(1, ok),
                        "pss_per_conn_kb": (after[1] - before[1]) / max(1, ok),
                    }

                r = asyncio.run(idle_round())
                results[name]["idle"] = r
                say(f"{name} idle: {r}")
                time.sleep(3)  # let Dovecot's imap processes exit

        # ---------- 1. throughput ----------
        if "throughput" not in skip:
            for n in clients_list:
                for name, port in ports.items():
                    time.sleep(2)
                    la = os.getloadavg()
                    t = asyncio.run(run_throughput(port, accounts, n, args.duration, args.messages))
                    results[name][f"throughput_{n}"] = {
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
                        "loadavg_before": la,
                    }
                    say(
                        f"{name} {n} clients: {t.total:.1f} ops/s, NO {t.no_responses},"
                        f" errors {len(t.errors)} "
                        f"{t.errors[:2]}, cpu {_cpu(t.cpu)}"
                    )

            if args.profile and pf is not None:
                n = max(clients_list)
                say(f"profiling postfach (unmeasured run, {n} clients, {args.profile}s)")
                prof = _start_profile(pf, root, args.profile)
                asyncio.run(
                    run_throughput(pf.imap_port, accounts, n, args.profile + 3, args.messages)
                )
                _finish_profile(prof, results)

        # ---------- 3. big mailbox ----------
        if "big" not in skip:
            for name, port in ports.items():
                time.sleep(2)
                la = os.getloadavg()
                r = asyncio.run(big_latency(port))
                r["loadavg_before"] = la
                results[name]["big"] = r
                say(f"{name} big mailbox: {r}")
    except BaseException:
        traceback.print_exc()
        raise
    finally:
        results["_meta"]["loadavg_end"] = os.getloadavg()
        for s in (pf, dv):
            if s is not None:
                with contextlib.suppress(Exception):
                    s.stop()
        if args.json:
            args.json.write_text(json.dumps(results, indent=2, default=str))
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
        else:
            say(f"kept {root}")
    report(results, servers, clients_list)
    return 0


def _cpu(c: CpuUse) -> dict[str, float]:
    return {
        "machine": round(c.machine_cores, 2),
        "client": round(c.client_cores, 2),
        "server": round(c.server_cores, 2),
        "other": round(c.other_cores, 2),
    }


def _start_profile(pf: PostfachImap | None, root: Path, seconds: float) -> object:
    import subprocess

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


def report(
    results: dict[str, dict[str, object]], servers: Sequence[str], clients: Sequence[int]
) -> None:
    print()
    print(
        f"load average: start {results['_meta']['loadavg_start']},"
        f" end {results['_meta'].get('loadavg_end')}"
    )
    for n in clients:
        key = f"throughput_{n}"
        if not all(key in results.get(s, {}) for s in servers):
            continue
        print(f"\nThroughput, {n} clients (ops/s; mean ms):")
        print(f"{'command':36s}" + "".join(f"{s:>22s}" for s in servers) + "   ratio pf/dv")
        for cmd in COMMANDS:
            row = f"{cmd:36s}"
            vals = []
            for s in servers:
                t = results[s][key]
                v = t["ops_per_s"][cmd]  # type: ignore[index]
                vals.append(v)
                row += f"{v:12.1f} ({t['mean_ms'][cmd]:6.1f}ms)"  # type: ignore[index]
            if len(vals) == 2 and vals[1]:
                row += f"   {vals[0] / vals[1]:.2f}"
            print(row)
        vals = [results[s][key]["total_ops_per_s"] for s in servers]  # type: ignore[index]
        row = f"{'TOTAL':36s}" + "".join(f"{v:22.1f}" for v in vals)
        if len(vals) == 2 and vals[1]:
            row += f"   {vals[0] / vals[1]:.2f}"
        print(row)
        print("cpu: " + "; ".join(f"{s} {results[s][key]['cpu']}" for s in servers))
    for s in servers:
        if "idle" in results.get(s, {}):
            r = results[s]["idle"]
            print(f"\n{s} idle: {r}")
    for s in servers:
        if "big" in results.get(s, {}):
            print(f"\n{s} big: {results[s]['big']}  fill: {results[s].get('fill')}")


if __name__ == "__main__":
    sys.exit(main())

"""postfach IMAP: server CPU per operation and memory per idle connection (postfach only).

``.venv/bin/python benchmarks/imap_cpu.py`` (``--help`` for the knobs). Meant for before/after
comparisons on a shared machine: every figure is the CPU time the ``postfach serve`` processes
used (utime + stime from /proc, all threads, summed over the server's process tree: with
``--workers N`` the supervisor and its workers, see proctree.py) divided by the operations one
sequential client ran, not a wall-clock rate, so other jobs on the machine change it little.
Memory is the sum of RSS and of PSS over that tree before and after opening ``--idle``
connections (LOGIN, SELECT INBOX, IDLE).
CPU is read from ``/proc/PID/task/*/schedstat`` (nanoseconds, every thread of every process of
the tree) plus the utime/stime of reaped children (``--server dovecot``: its per-connection
``imap`` processes; every process of Dovecot's session is counted, master and login processes
included).

Mailboxes: ``--accounts`` accounts with ``--messages`` messages each (unique messages, as in
``imap.py``), and one account with a ``--big``-message INBOX made of the 200 test messages
repeated (the store keeps one blob per distinct message; SELECT and FETCH FLAGS do not read
blobs, so repetition does not change what they cost). Everything is on 127.0.0.1 in a
temporary directory.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import pwd  # noqa: E402

import proctree  # noqa: E402
from common import DOMAIN  # noqa: E402
from imap import (  # noqa: E402
    NEEDLE,
    NEEDLE_EVERY,
    SMALL,
    WORD,
    Client,
    DovecotImap,
    PostfachImap,
    fill_maildir,
    fill_postfach,
    load_templates,
    make_message,
    open_idle,
    say,
    throughput_accounts,
    wait_imap,
)
from peers import MAIL_USER  # noqa: E402
from postfach_server import add_workers_argument  # noqa: E402

BIG = f"big@{DOMAIN}"
_TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """CPU time of the server's whole process tree so far (supervisor, workers; for Dovecot its
    session): every thread's run time (ns, from schedstat) plus the CPU of children that have
    exited and were reaped (cutime/cstime, in clock ticks)."""
    total = 0.0
    for p in proctree.tree([abs(pid)]):
        try:
            with open(f"/proc/{p}/stat", "rb") as f:
                data = f.read()
            fields = data[data.rindex(b")") + 2 :].split()
            total += (int(fields[13]) + int(fields[14])) / _TICK
            for task in os.scandir(f"/proc/{p}/task"):
                with open(f"{task.path}/schedstat", "rb") as f:
                    total += int(f.read().split()[0]) / 1e9
        except (OSError, IndexError, ValueError):  # gone meanwhile
            continue
    return total


def big_message(templates: list[bytes], i: int) -> bytes:
    """Message i of the big mailbox: one of the 200 templates; one in NEEDLE_EVERY carries the
    rare word (SEARCH TEXT "needle": 100 hits in 100,000)."""
    return make_message(templates, "big", i % len(templates), needle=i % NEEDLE_EVERY == 7)


def fill_big(data_dir: Path, n: int, templates: list[bytes]) -> float:
    from postfach.mime.stored import parse_for_storage
    from postfach.store.api import Flag
    from postfach.store.sqlite import AppendItem, SqliteMailstore

    t0 = time.perf_counter()
    store = SqliteMailstore(data_dir, index_text=False)
    try:
        acc = store.get_account(BIG)
        assert acc is not None
        mbox = store.get_mailbox(acc.id, "INBOX")
        assert mbox is not None
        now = int(time.time())
        staged: dict[bytes, tuple[bytes, str]] = {}
        batch = []
        for i in range(n):
            m = big_message(templates, i)
            if m not in staged:
                staged[m] = (m, parse_for_storage(m))
            data, structure = staged[m]
            flags = Flag.SEEN if i % 3 else Flag(0)  # a third unseen
            batch.append(AppendItem(store.stage(data, structure), flags, (), now))
            if len(batch) == 1000:
                store.append(mbox.id, batch)
                batch = []
        if batch:
            store.append(mbox.id, batch)
        while store.index_pending(500):
            pass
    finally:
        store.close()
    return time.perf_counter() - t0


async def measure(pid: int, reps: int, op: Callable[[int], Awaitable[object]]) -> dict[str, float]:
    await op(-1)  # warm
    c0, t0 = cpu_seconds(pid), time.perf_counter()
    for i in range(reps):
        await op(i)
    c1, t1 = cpu_seconds(pid), time.perf_counter()
    return {"reps": reps, "cpu_ms": (c1 - c0) * 1000 / reps, "wall_ms": (t1 - t0) * 1000 / reps}


async def ops_round(
    port: int, pid: int, account: str, messages: int, reps: int
) -> dict[str, object]:
    c = Client()
    c.tolerate_no = True
    await c.login(port, account)
    out: dict[str, object] = {}

    async def login_select(_i: int) -> None:
        one = Client()
        try:
            await one.login(port, account)
            await one.cmd("LOGOUT")
        finally:
            one.close()

    async def select(_i: int) -> None:
        await c.cmd("SELECT INBOX")

    async def fetch_flags(_i: int) -> None:
        await c.cmd("FETCH 1:* (FLAGS)")

    async def fetch_sync(_i: int) -> None:
        await c.cmd("FETCH 1:* (UID RFC822.SIZE FLAGS INTERNALDATE)")

    async def fetch_body(i: int) -> None:
        await c.cmd(f"FETCH {i % messages + 1 if i >= 0 else 1} BODY.PEEK[]")

    async def store_flags(i: int) -> None:
        await c.cmd(f"STORE {i % messages + 1 if i >= 0 else 1} {'+-'[i % 2]}FLAGS (\\Seen)")

    async def uid_store(i: int) -> None:  # what imap.py's mix sends
        await c.cmd(f"UID STORE {i % messages + 1 if i >= 0 else 1} {'+-'[i % 2]}FLAGS (\\Seen)")

    async def search_unseen(_i: int) -> None:
        await c.cmd("SEARCH UNSEEN")

    async def search_text(_i: int) -> None:
        await c.cmd(f'SEARCH TEXT "{WORD}"')

    async def noop(_i: int) -> None:
        await c.cmd("NOOP")

    async def append_expunge(_i: int) -> None:
        st, _u = await c.cmd("APPEND INBOX", SMALL)
        uid = int(st.split(b"APPENDUID ")[1].split()[1].rstrip(b"]"))
        await c.cmd(f"UID STORE {uid} +FLAGS.SILENT (\\Deleted)")
        await c.cmd(f"UID EXPUNGE {uid}")

    table: list[tuple[str, Callable[[int], Awaitable[object]], int]] = [
        ("LOGIN + SELECT + LOGOUT (new connection)", login_select, reps),
        ("SELECT INBOX", select, reps),
        ("FETCH 1:* (FLAGS)", fetch_flags, reps),
        ("FETCH 1:* (UID RFC822.SIZE FLAGS INTERNALDATE)", fetch_sync, reps),
        ("FETCH n BODY.PEEK[]", fetch_body, reps * 4),
        ("STORE n +/-FLAGS (\\Seen)", store_flags, reps * 4),
        ("UID STORE n +/-FLAGS (\\Seen)", uid_store, reps * 4),
        ("SEARCH UNSEEN", search_unseen, reps),
        (f'SEARCH TEXT "{WORD}"', search_text, reps),
        ("APPEND + STORE + UID EXPUNGE", append_expunge, reps),
        ("NOOP", noop, reps * 10),
    ]
    for name, fn, n in table:
        out[name] = await measure(pid, n, fn)
        say(f"  {name}: {out[name]}")
    c.close()
    return out


async def big_round(port: int, pid: int, reps: int) -> dict[str, object]:
    c = Client()
    await c.login(port, BIG, None)
    out: dict[str, object] = {}

    async def select(_i: int) -> None:
        await c.cmd("SELECT INBOX")

    async def fetch_flags(_i: int) -> None:
        await c.cmd("FETCH 1:* (FLAGS)")

    async def search_rare(_i: int) -> None:
        await c.cmd(f'SEARCH TEXT "{NEEDLE}"')

    async def search_common(_i: int) -> None:
        await c.cmd(f'SEARCH TEXT "{WORD}"')

    async def changed_select(i: int) -> None:  # another session changed one message's flags
        await other.cmd(f"UID STORE {i + 2} {'+-'[i % 2]}FLAGS (\\Flagged)")
        await c.cmd("SELECT INBOX")

    c0, t0 = cpu_seconds(pid), time.perf_counter()
    await c.cmd("SELECT INBOX")
    out["first SELECT"] = {
        "cpu_ms": (cpu_seconds(pid) - c0) * 1000,
        "wall_ms": (time.perf_counter() - t0) * 1000,
    }
    out["SELECT INBOX"] = await measure(pid, reps, select)
    out["FETCH 1:* (FLAGS)"] = await measure(pid, reps, fetch_flags)
    _st, untagged = await c.cmd(f'SEARCH TEXT "{NEEDLE}"')
    out["needle hits"] = sum(len(line.split()) - 2 for line in untagged if b"SEARCH" in line)
    out[f'SEARCH TEXT "{NEEDLE}"'] = await measure(pid, reps, search_rare)
    _st, untagged = await c.cmd(f'SEARCH TEXT "{WORD}"')
    out[f"{WORD} hits"] = sum(len(line.split()) - 2 for line in untagged if b"SEARCH" in line)
    out[f'SEARCH TEXT "{WORD}"'] = await measure(pid, reps, search_common)
    other = Client()
    await other.login(port, BIG)
    out["SELECT after a flag change by another session (+ that STORE)"] = await measure(
        pid, reps, changed_select
    )
    other.close()
    c.close()
    for k, v in out.items():
        say(f"  big {k}: {v}")
    return out


async def idle_round(port: int, pid: int, accounts: list[str], n: int) -> dict[str, float]:
    await asyncio.sleep(1)
    before = proctree.memory([pid])
    clients, failed = await open_idle(port, accounts, n)
    await asyncio.sleep(3)
    after = proctree.memory([pid])
    for cl in clients:
        cl.close()
    ok = n - failed
    return {
        "connections": ok,
        "failed": failed,
        "processes": after.processes,
        "rss_before_kb": before.rss_kb,
        "rss_after_kb": after.rss_kb,
        "pss_before_kb": before.pss_kb,
        "pss_after_kb": after.pss_kb,
        "rss_per_conn_kb": (after.rss_kb - before.rss_kb) / max(1, ok),
        "pss_per_conn_kb": (after.pss_kb - before.pss_kb) / max(1, ok),
    }


def start_dovecot(root: Path, accounts: list[str], messages: int, big: int) -> DovecotImap:
    """A tuned private Dovecot (as in imap.py) with the same mailboxes, in Maildirs."""
    templates = load_templates()
    dv = DovecotImap(root / "dovecot", [*accounts, BIG], mail_fsync="optimized")
    pw = pwd.getpwnam(MAIL_USER)
    aside = root / "dovecot-mail"
    aside.mkdir(parents=True)
    os.chown(aside, pw.pw_uid, pw.pw_gid)
    for a in accounts:
        gen = (make_message(templates, a, i) for i in range(messages))
        fill_maildir(aside / a, gen, pw.pw_uid, pw.pw_gid)
    gen = (big_message(templates, i) for i in range(big))
    fill_maildir(aside / BIG, gen, pw.pw_uid, pw.pw_gid)
    dv.start()
    dv.mail_dir.rmdir()  # start() made an empty one
    aside.rename(dv.mail_dir)
    wait_imap(dv.imap_port, 30, "dovecot")
    return dv


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--accounts", type=int, default=10)
    ap.add_argument("--messages", type=int, default=500)
    ap.add_argument("--big", type=int, default=100_000)
    ap.add_argument("--idle", type=int, default=1000)
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--skip", default="", help="comma list of: ops,idle,big")
    ap.add_argument("--server", choices=("postfach", "dovecot"), default="postfach")
    ap.add_argument("--json", type=Path, default=None)
    add_workers_argument(ap)
    args = ap.parse_args()
    skip = set(filter(None, args.skip.split(",")))
    templates = load_templates()
    accounts = throughput_accounts(args.accounts)
    root = Path(tempfile.mkdtemp(prefix="imapcpu-"))
    results: dict[str, object] = {"args": vars(args) | {"json": str(args.json)}}
    results["loadavg_start"] = os.getloadavg()
    if args.server == "dovecot":
        root.chmod(0o755)
        dv = start_dovecot(root, accounts, args.messages, 0 if "big" in skip else args.big)
        try:
            assert dv.child is not None
            pid = -dv.child.pid  # every process of its session
            _measure(results, dv.imap_port, pid, accounts[0], args, skip)
        finally:
            results["loadavg_end"] = os.getloadavg()
            dv.stop()
            shutil.rmtree(root, ignore_errors=True)
        return _report(results, args)
    pf = PostfachImap(root / "postfach", [*accounts, BIG], workers=args.workers)
    try:
        pf.setup()
        plan = {
            a: (lambda a=a: (make_message(templates, a, i) for i in range(args.messages)))
            for a in accounts
        }
        results["fill"] = fill_postfach(pf.data_dir, plan)
        if "big" not in skip:
            results["fill_big_s"] = fill_big(pf.data_dir, args.big, templates)
        say(f"filled: {results.get('fill')} big {results.get('fill_big_s')}")
        pf.start()
        wait_imap(pf.imap_port, 60, "postfach")
        assert pf.child is not None
        pid = pf.child.pid
        time.sleep(2)
        results["workers"] = pf.describe_workers()
        say(f"postfach workers: {results['workers']}")
        if "idle" not in skip:
            results["idle"] = asyncio.run(idle_round(pf.imap_port, pid, accounts, args.idle))
            say(f"idle: {results['idle']}")
        _measure(results, pf.imap_port, pid, accounts[0], args, skip)
    finally:
        results["loadavg_end"] = os.getloadavg()
        pf.stop()
        shutil.rmtree(root, ignore_errors=True)
    return _report(results, args)


def _measure(
    results: dict[str, object],
    port: int,
    pid: int,
    account: str,
    args: argparse.Namespace,
    skip: set[str],
) -> None:
    """The per-command round and the 100,000-message round, for either server."""
    if "ops" not in skip:
        results["ops"] = asyncio.run(ops_round(port, pid, account, args.messages, args.reps))
    if "big" not in skip:
        results["big"] = asyncio.run(big_round(port, pid, max(2, args.reps // 10)))


def _report(results: dict[str, object], args: argparse.Namespace) -> int:
    print(json.dumps(results, indent=1, default=str))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Instructions the postfach server executes per MB of POP3 RETR (callgrind): a load-proof figure.

On a shared machine the rates of ``run.py`` and even its CPU-per-MB column move with other jobs;
instruction counts do not. This fills 10 mailboxes (through the store API, full-text index
built before the server starts, so the measurement is RETR alone), starts ``postfach serve``
under ``valgrind --tool=callgrind`` with instrumentation off, and switches it on only for one
measured round per depth (after one warm-up round), using the client of ``pop3.py``. With
``--workers N`` (a supervisor and its worker processes) every process of the server's tree is
switched on and off and the counts of all of them are added up.

    .venv/bin/python benchmarks/pop3_instructions.py --clients 3 --messages 200

Needs the Debian package ``valgrind``. The server runs 20-50 times slower under it; a round of
3 x 200 messages takes about a minute. ``--data DIR`` keeps the filled directory for the next
run (same code version: a newer schema is not readable by older code).
"""

from __future__ import annotations

import argparse
import asyncio
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import proctree
from common import Child, MessageFactory, pop3_accounts, wait_for_banner
from pop3 import run_pop3_round
from postfach_server import Postfach, add_workers_argument, postfach_bin


def fill(pf: Postfach, accounts: list[str], count: int, size: int) -> None:
    from postfach.mime.stored import parse_for_storage
    from postfach.store.api import Flag
    from postfach.store.sqlite import AppendItem, SqliteMailstore

    pf.setup()
    store = SqliteMailstore(pf.data_dir, index_text=False)
    try:
        factory = MessageFactory(size)
        serial = 0
        for account in accounts:
            acc = store.get_account(account)
            assert acc is not None
            box = store.get_mailbox(acc.id, "INBOX")
            assert box is not None
            items = []
            for _ in range(count):
                serial += 1
                data = factory.make(serial, account)
                blob = store.stage(data, parse_for_storage(data))
                items.append(AppendItem(blob, Flag(0), (), int(time.time())))
            store.append(box.id, items)
        while store.index_pending(500):
            pass
    finally:
        store.close()


def totals(directory: Path, trigger: str) -> int:
    """Instructions in the callgrind dumps made with ``callgrind_control -d trigger``."""
    total = 0
    for f in directory.glob("callgrind.*"):
        text = f.read_text(errors="replace")
        m = re.search(r"^desc: Trigger: (.*)$", text[:4000], re.M)
        if m and m.group(1).split()[-1] == trigger:  # "Client Request: depth1", "dump depth1"
            m = re.search(r"^totals: (\d+)", text, re.M)
            total += int(m.group(1)) if m else 0
    return total


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, default=3, help="POP3 clients, one mailbox each")
    ap.add_argument("--messages", type=int, default=200, help="messages per mailbox")
    ap.add_argument("--size", type=int, default=20480, help="message size in bytes")
    ap.add_argument("--depths", type=int, nargs="+", default=[1, 8], help="RETRs in flight")
    ap.add_argument("--data", type=Path, help="keep (or reuse) the filled directory here")
    add_workers_argument(ap)
    args = ap.parse_args()
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        print("needs valgrind (Debian package valgrind)", file=sys.stderr)
        return 2
    accounts = pop3_accounts(args.clients)
    tmp = None
    if args.data is None:
        tmp = tempfile.TemporaryDirectory(prefix="pop3-instr-")
        root = Path(tmp.name)
    else:
        root = args.data
    try:
        pf = Postfach(root, accounts, workers=args.workers)
        marker = root / f"filled-{args.clients}-{args.messages}-{args.size}"
        if not marker.exists():
            fill(pf, accounts, args.messages, args.size)
            marker.write_text("filled\n")
        out = root / "callgrind"
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir()
        argv = [
            "valgrind",
            "--tool=callgrind",
            "--instr-atstart=no",
            "--trace-children=yes",  # workers started by exec; forked ones are traced anyway
            f"--callgrind-out-file={out}/callgrind.%p",
            str(postfach_bin()),
            "serve",
        ]
        child = Child("postfach", argv, root / "postfach-callgrind.log", env=pf.env())
        try:
            wait_for_banner(pf.pop3_port, 300, child.proc, "postfach pop3")
            time.sleep(2)  # let a supervisor start its workers
            pids = sorted(proctree.tree([child.pid]))
            print(
                f"postfach under callgrind: {pf.describe_workers()} ({len(pids)} process(es))",
                flush=True,
            )

            def ctl(*opts: str) -> None:
                for pid in pids:  # the server's tree only, never other callgrind runs
                    subprocess.run(
                        ["callgrind_control", *opts, str(pid)], check=True, capture_output=True
                    )

            for depth in args.depths:

                async def round_(d: int = depth) -> int:
                    stats = await run_pop3_round(
                        pf.pop3_port, accounts, expect=args.messages, depth=d, timeout=1800
                    )
                    return stats.bytes

                asyncio.run(round_())  # warm-up, not counted
                ctl("--zero")
                ctl("--instr=on")
                received = asyncio.run(round_())
                ctl("--instr=off")
                ctl(f"--dump=depth{depth}")
                time.sleep(1)
                count = totals(out, f"depth{depth}")
                print(
                    f"depth {depth}: {count / (received / 1e6) / 1e6:.1f} M instructions per MB"
                    f" ({count / 1e6:.0f} M for {received / 1e6:.1f} MB)",
                    flush=True,
                )
        finally:
            child.stop(timeout=120)
    finally:
        if tmp is not None:
            tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())

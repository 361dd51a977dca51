"""Instructions the postfach server executes per delivered message (callgrind): a load-proof figure.

``run.py``'s "server ms CPU/msg" moves with other jobs on a shared machine; instruction counts do
not. This starts ``postfach serve`` (an empty data directory, the delivery accounts of run.py)
under ``valgrind --tool=callgrind --separate-threads=yes`` with instrumentation off, delivers a
warm-up batch, then switches instrumentation on for the measured deliveries (the same load
generator as run.py: ``--clients`` connections, pipelined MAIL/RCPT/DATA, 20 KB messages) and
reports instructions per message, in all and per thread (the event loop, the store's writer, the
full-text indexer). Kernel work (send, fsync) is not counted: callgrind sees user space only.

    .venv/bin/python benchmarks/smtp_instructions.py --messages 300

Needs the Debian package ``valgrind``. The server runs 20-50 times slower under it: 300
messages take about a minute. ``--top N`` prints the N most expensive C functions (inclusive,
from ``callgrind_annotate``), which splits the count into SQLite, hashing, the interpreter ...
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
from collections import Counter
from pathlib import Path

from common import Child, MessageFactory, delivery_accounts, wait_for_banner
from delivery import run_delivery
from postfach_server import Postfach, postfach_bin


def thread_totals(directory: Path, trigger: str) -> Counter[str]:
    """Instructions per thread in the dumps made with ``callgrind_control --dump=trigger``."""
    out: Counter[str] = Counter()
    for f in directory.glob("callgrind.*"):
        head = f.read_text(errors="replace")[:4000]
        m = re.search(r"^desc: Trigger: (.*)$", head, re.M)
        if not m or m.group(1).split()[-1] != trigger:
            continue
        thread = re.search(r"^thread: (\d+)", head, re.M)
        text = f.read_text(errors="replace")
        t = re.search(r"^totals: (\d+)", text, re.M)
        if t:
            out[thread.group(1) if thread else "?"] += int(t.group(1))
    return out


# callgrind numbers threads in creation order: 1 is the event loop; the store starts its writer
# (2) and then the indexer (3); later ones are worker threads of the loop's executor.
THREAD_NAMES = {"1": "main (event loop)", "2": "postfach-writer", "3": "postfach-indexer"}

# ``postfach serve`` with the full-text indexer left out (``--no-index``): its work comes after
# the mail and is paced by wall-clock time, which under callgrind is 20-50 times slower, so the
# share it would get in the measured window is arbitrary.
_NO_INDEX = (
    "import sys; import postfach.store.sqlite as s;"
    " s.SqliteMailstore._indexer_loop = lambda self: None;"
    " from postfach.cli.launch import main; sys.argv[0] = 'postfach'; sys.exit(main())"
)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, default=10, help="concurrent SMTP clients")
    ap.add_argument("--messages", type=int, default=300, help="measured deliveries")
    ap.add_argument("--warmup", type=int, default=50, help="unmeasured deliveries first")
    ap.add_argument("--accounts", type=int, default=10, help="delivery accounts")
    ap.add_argument("--size", type=int, default=20480, help="message size in bytes")
    ap.add_argument("--top", type=int, default=0, help="print the N most expensive C functions")
    ap.add_argument("--keep", type=Path, help="copy the callgrind dumps here")
    ap.add_argument(
        "--no-index", action="store_true", help="without the full-text indexer (delivery only)"
    )
    args = ap.parse_args()
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        print("needs valgrind (Debian package valgrind)", file=sys.stderr)
        return 2
    accounts = delivery_accounts(args.accounts)
    with tempfile.TemporaryDirectory(prefix="smtp-instr-") as tmp:
        root = Path(tmp)
        # One process: callgrind_control reaches the pid it started, and a supervisor with
        # forked workers (the default on a multi-core machine) would leave every count at 0.
        pf = Postfach(root, accounts, workers=1)
        pf.setup()
        out = root / "callgrind"
        out.mkdir()
        argv = [
            "valgrind",
            "--tool=callgrind",
            "--instr-atstart=no",
            "--separate-threads=yes",
            f"--callgrind-out-file={out}/callgrind.%p",
            *([sys.executable, "-c", _NO_INDEX] if args.no_index else [str(postfach_bin())]),
            "serve",
        ]
        child = Child("postfach", argv, root / "postfach-callgrind.log", env=pf.env())
        try:
            wait_for_banner(pf.smtp_port, 300, child.proc, "postfach smtp")

            def ctl(*opts: str) -> None:
                subprocess.run(
                    ["callgrind_control", *opts, str(child.pid)], check=True, capture_output=True
                )

            factory = MessageFactory(args.size)

            def deliver(n: int, base: int) -> int:
                stats = asyncio.run(
                    run_delivery(
                        pf.smtp_port, lmtp=False, recipients=accounts, messages=n,
                        clients=args.clients, factory=factory, serial_base=base, timeout=3600,
                    )
                )  # fmt: skip
                return stats.messages

            deliver(args.warmup, 0)
            time.sleep(2)
            ctl("--zero")
            ctl("--instr=on")
            delivered = deliver(args.messages, args.warmup)
            ctl("--instr=off")
            ctl("--dump=measured")
            time.sleep(2)
            per_thread = thread_totals(out, "measured")
            total = sum(per_thread.values())
            print(
                f"{total / delivered / 1e6:.2f} M instructions per message"
                f" ({total / 1e6:.0f} M for {delivered} messages of {args.size} bytes,"
                f" {args.clients} clients)",
                flush=True,
            )
            for tid, count in sorted(per_thread.items(), key=lambda kv: -kv[1]):
                name = THREAD_NAMES.get(tid, f"thread {tid}")
                print(f"  {count / delivered / 1e6:7.3f} M/msg  {name}")
            if args.top:
                for f in sorted(out.glob("callgrind.*")):
                    if not re.search(r"^desc: Trigger: .*measured$", f.read_text()[:4000], re.M):
                        continue
                    ann = subprocess.run(
                        ["callgrind_annotate", "--inclusive=yes", str(f)],
                        capture_output=True,
                        text=True,
                        check=False,
                    )
                    lines = [ln for ln in ann.stdout.splitlines() if re.match(r"\s*[\d,]+ \(", ln)]
                    print(f"\n{f.name}: top {args.top} C functions, inclusive")
                    for ln in lines[1 : args.top + 1]:
                        print("  " + ln.strip()[:160])
            if args.keep:
                args.keep.mkdir(parents=True, exist_ok=True)
                for f in out.glob("callgrind.*"):
                    shutil.copy(f, args.keep / f.name)
        finally:
            child.stop(timeout=120)
    return 0


if __name__ == "__main__":
    sys.exit(main())

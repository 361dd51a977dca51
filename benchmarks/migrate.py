"""``postfach migrate``: a 1,000-message account over IMAP into postfach, timed.

    .venv/bin/python benchmarks/migrate.py [--copies 5] [--keep]

On 127.0.0.1 in a temporary directory (removed at the end unless --keep):

1. The source: ``/work/shared/data/test.mbox`` (200 messages) repeated ``--copies`` times, each
   copy with its own Message-IDs, imported into an account of a ``postfach serve`` (IMAP only)
   with ``postfach import``.
2. The target: a second data directory with an empty account.
3. Timed: ``postfach --data TARGET migrate --from imap://...`` as a subprocess (interpreter
   start-up included), then the same command again with nothing new (the incremental run
   before an MX switch).
4. Checks the target holds every message, and prints the figures.
"""

from __future__ import annotations

import argparse
import mailbox
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO / "benchmarks"))

from postfach_server import add_workers_argument  # noqa: E402
from sync import HOST, PASSWORD, Server, postfach_bin, say  # noqa: E402

from postfach.datadir import open_store  # noqa: E402

SOURCE = Path("/work/shared/data/test.mbox")
OLD = "old@bench.example"
NEW = "alice@bench.example"
_MID = re.compile(rb"(?im)^(Message-ID:[ \t]*<)")


def build_mbox(path: Path, copies: int) -> int:
    src = mailbox.mbox(str(SOURCE))
    out = mailbox.mbox(str(path))
    n = 0
    for c in range(copies):
        for msg in src:
            data = msg.as_bytes()
            data, hits = _MID.subn(rb"\g<1>copy%d." % c, data, count=1)
            if not hits:
                data = b"Message-ID: <copy%d.%d@bench.example>\n" % (c, n) + data
            m = mailbox.mboxMessage(data)
            m.set_from(msg.get_from())
            out.add(m)
            n += 1
    out.flush()
    out.close()
    return n


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--copies", type=int, default=5)
    ap.add_argument("--keep", action="store_true")
    add_workers_argument(ap)
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="postfach-bench-migrate-"))
    server = Server(root, workers=args.workers)
    try:
        mbox = root / "source.mbox"
        count = build_mbox(mbox, args.copies)
        say(f"source: {count} messages, {mbox.stat().st_size / 1e6:.1f} MB as mbox")
        server.start()  # adds bench.example (and the sync benchmark's users, unused here)
        server.cli("user", "add", OLD, "--password-stdin", stdin=PASSWORD + "\n")
        server.cli("import", OLD, str(mbox))  # into the running server's store
        target = root / "target"
        subprocess.run([postfach_bin(), "--data", str(target), "domain", "add", "bench.example"],
                       check=True, capture_output=True)  # fmt: skip
        subprocess.run([postfach_bin(), "--data", str(target), "user", "add", NEW,
                        "--password-stdin"], input=PASSWORD + "\n", text=True, check=True,
                       capture_output=True)  # fmt: skip
        pw = root / "pw"
        pw.write_text(PASSWORD + "\n")
        pw.chmod(0o600)
        cmd = [postfach_bin(), "--data", str(target), "migrate", "--from",
               f"imap://{OLD}@{HOST}:{server.port}", "--tls", "none", "--to", NEW,
               "--password-file", str(pw), "--quiet"]  # fmt: skip
        figures = []
        for label in ("first run", "second run, nothing new"):
            t0 = time.monotonic()
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
            dt = time.monotonic() - t0
            if r.returncode != 0:
                raise SystemExit(r.stderr)
            say(f"{label}: {dt:.2f} s — {r.stdout.strip().splitlines()[0]}")
            figures.append((label, dt))
        store = open_store(target)
        try:
            acc = store.get_account(NEW)
            assert acc is not None
            inbox = store.get_mailbox(acc.id, "INBOX")
            assert inbox is not None
            got = len(store.list_messages(inbox.id))
            size = acc.used_bytes
        finally:
            store.close()
        assert got == count, (got, count)
        first = figures[0][1]
        say(f"target holds {got} messages ({size / 1e6:.1f} MB)")
        print()
        print("| run | time | rate |")
        print("|---|---|---|")
        print(f"| first run, {count} messages, {size / 1e6:.1f} MB | {first:.2f} s |"
              f" {count / first:.0f} messages/s, {size / 1e6 / first:.1f} MB/s |")  # fmt: skip
        print(f"| second run, nothing new | {figures[1][1]:.2f} s | |")
    finally:
        server.stop()
        if args.keep:
            say(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()

"""How long SEARCH TEXT in one account's mailbox takes, depending on OTHER accounts' mail.

The full-text index is one FTS5 table over all blobs of all accounts. Asking it for a phrase
costs time in proportion to the documents anywhere that contain the phrase, which an account
can measure for needles of its choice (docs/reliability/isolation-search.md). Since the fix,
``search_text_uids`` answers a mailbox of up to ``SEARCH_SCAN_MAX`` messages from its own
messages' indexed text only, and asks the shared index only for larger mailboxes.

    .venv/bin/python benchmarks/search_side_channel.py [--others 3000] [--own 20]

Prints the median time of ``search_text_uids`` over alice's ``--own``-message INBOX for a
needle that occurs in ``--others`` of bob's messages, one that occurs nowhere, and one in every
100th of alice's own messages. ``--own 100000 --others 0`` measures SEARCH TEXT on a big
mailbox.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from postfach.mime.stored import parse_for_storage
from postfach.store.api import INBOX, Flag
from postfach.store.sqlite import AppendItem, SqliteMailstore


def median_ms(
    store: SqliteMailstore, mailbox_id: int, needle: str, runs: int
) -> tuple[float, float]:
    """Median wall time and median CPU time (less disturbed by other load), in ms."""
    wall, cpu = [], []
    for _ in range(runs):
        t0, c0 = time.perf_counter(), time.process_time()
        store.search_text_uids(mailbox_id, "TEXT", needle)
        cpu.append(time.process_time() - c0)
        wall.append(time.perf_counter() - t0)
    return statistics.median(wall) * 1000, statistics.median(cpu) * 1000


def fill(store: SqliteMailstore, mailbox_id: int, n: int, text: str, every: int = 0) -> None:
    """``n`` messages; every ``every``-th one also contains the word "ourplan"."""
    for start in range(0, n, 1000):
        items = []
        for i in range(start, min(n, start + 1000)):
            extra = " ourplan" if every and i % every == 0 else ""
            m = f"Subject: {text} {i}\r\n\r\n{text} body {i}{extra}\r\n".encode()
            items.append(AppendItem(store.stage(m, parse_for_storage(m)), Flag(0), (), 1))
        store.append(mailbox_id, items)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--others", type=int, default=3000, help="bob's messages with the needle")
    ap.add_argument("--own", type=int, default=20, help="alice's messages")
    ap.add_argument("--runs", type=int, default=30)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        store = SqliteMailstore(Path(tmp) / "data", index_text=False)
        try:
            store.add_domain("example.org")
            alice = store.add_account("alice@example.org", "-")
            bob = store.add_account("bob@example.org", "-")
            inbox = store.get_mailbox(alice.id, INBOX)
            bob_inbox = store.get_mailbox(bob.id, INBOX)
            assert inbox is not None and bob_inbox is not None
            fill(store, inbox.id, args.own, "ordinary alice text", every=100)
            fill(store, bob_inbox.id, args.others, "the zebrafinch merger plan")
            while store.index_pending(1000):
                pass
            scan_max = getattr(store, "SEARCH_SCAN_MAX", None)
            how = "" if scan_max is None else f" (own-text search up to {scan_max} messages)"
            print(f"alice's INBOX: {args.own} messages{how}; bob's with the needle: {args.others}")
            rows = [
                (f"needle in {args.others} of bob's messages", "zebrafinch"),
                ("needle nowhere", "quokkaplan"),
                ("needle in 1% of alice's messages", "ourplan"),
            ]
            for label, needle in rows:
                wall, cpu = median_ms(store, inbox.id, needle, args.runs)
                hits = store.search_text_uids(inbox.id, "TEXT", needle)
                n = len(hits or ())
                print(f"{label:<40} {wall:9.3f} ms wall {cpu:9.3f} ms CPU ({n} results)")
        finally:
            store.close()


if __name__ == "__main__":
    main()

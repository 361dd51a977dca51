"""How long SEARCH TEXT in one account's mailbox takes, depending on OTHER accounts' mail.

The full-text index is one FTS5 table over all blobs of all accounts; ``search_text_uids``
asks it for every document containing the needle and then keeps the ones in the mailbox. The
time therefore grows with the number of matching messages anywhere on the server, which an
account can measure for needles of its choice (see docs/reliability/isolation.md, finding 4).

    .venv/bin/python benchmarks/search_side_channel.py [--others 3000]

Prints the median time of ``search_text_uids`` over alice's 20-message INBOX for a needle that
occurs in ``--others`` of bob's messages and for one that occurs nowhere.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from postfach.mime.stored import parse_for_storage
from postfach.store.api import INBOX
from postfach.store.sqlite import SqliteMailstore


def median_ms(store: SqliteMailstore, mailbox_id: int, needle: str, runs: int = 30) -> float:
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        store.search_text_uids(mailbox_id, "TEXT", needle)
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1000


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--others", type=int, default=3000, help="bob's messages with the needle")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        store = SqliteMailstore(Path(tmp) / "data")
        try:
            store.add_domain("example.org")
            alice = store.add_account("alice@example.org", "-")
            bob = store.add_account("bob@example.org", "-")
            inbox = store.get_mailbox(alice.id, INBOX)
            assert inbox is not None
            for i in range(20):
                m = f"Subject: alice {i}\r\n\r\nordinary text {i}\r\n".encode()
                store.deliver([alice.id], store.stage(m, parse_for_storage(m)), 1)
            for i in range(args.others):
                m = f"Subject: bob {i}\r\n\r\nthe zebrafinch merger plan {i}\r\n".encode()
                store.deliver([bob.id], store.stage(m, parse_for_storage(m)), 1)
            while store.index_pending(500):
                pass
            hit = median_ms(store, inbox.id, "zebrafinch")
            miss = median_ms(store, inbox.id, "quokkaplan")
            print(f"alice's INBOX: 20 messages; bob's messages with the needle: {args.others}")
            print(f"needle in {args.others} of bob's messages: {hit:8.3f} ms (0 results)")
            print(f"needle nowhere:                  {miss:8.3f} ms (0 results)")
        finally:
            store.close()


if __name__ == "__main__":
    main()

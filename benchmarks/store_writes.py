"""What the store writes for one delivered message: WAL pages by b-tree, and CPU per message.

The end-to-end rate of ``run.py`` moves by a third between runs of one tree on a shared machine,
and callgrind (``smtp_instructions.py``) sees no kernel work, where most of the writer's time
goes. This measures the store's write path in one process, without SMTP: ``--clients`` threads
call ``SqliteMailstore.deliver`` for 20 KB messages (staged and parsed beforehand, not
measured), so the writer thread commits them in groups as it does in the server. It reports:

- the WAL pages (frames) written per message, split by the table or index they belong to. A
  read transaction held open meanwhile keeps every frame in the WAL (a checkpoint cannot pass
  it), so the frames are read back from the WAL file and named with SQLite's ``dbstat``;
- the process's CPU time per message (user and system), and the wall time.

    .venv/bin/python benchmarks/store_writes.py --messages 3000 --clients 3

Every WAL frame is a write of a 4 KiB page (two ``pwrite`` calls) and later a checkpoint's write
of the same page into the database file, so frames per message is the figure that the store's
schema decides and that no machine load changes.
"""

from __future__ import annotations

import argparse
import collections
import os
import sqlite3
import struct
import sys
import tempfile
import threading
import time
from pathlib import Path

from common import MessageFactory

_WAL_HEADER = 32
_FRAME_HEADER = 24


def wal_pages(wal: Path, page_size: int, first_frame: int) -> list[int]:
    """The page number of every frame from ``first_frame`` on (0-based)."""
    data = wal.read_bytes()
    step = _FRAME_HEADER + page_size
    out = []
    off = _WAL_HEADER + first_frame * step
    while off + step <= len(data):
        out.append(struct.unpack(">I", data[off : off + 4])[0])
        off += step
    return out


def wal_salt(wal: Path) -> bytes:
    """The WAL header's salts: they change when SQLite starts the WAL file over."""
    with wal.open("rb") as f:
        return f.read(_WAL_HEADER)[16:24]


def frame_count(wal: Path, page_size: int) -> int:
    size = wal.stat().st_size if wal.exists() else 0
    return max(0, (size - _WAL_HEADER) // (_FRAME_HEADER + page_size))


def page_owners(db: Path) -> dict[int, str]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return {
            pageno: f"{name} ({kind})"
            for name, pageno, kind in conn.execute("SELECT name, pageno, pagetype FROM dbstat")
        }
    except sqlite3.OperationalError as exc:  # SQLite built without the dbstat table
        raise SystemExit(f"store_writes.py: SQLite here has no dbstat table ({exc})") from exc
    finally:
        conn.close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--messages", type=int, default=3000, help="measured deliveries")
    ap.add_argument("--warmup", type=int, default=600, help="unmeasured deliveries before")
    ap.add_argument("--clients", type=int, default=3, help="threads delivering at once")
    ap.add_argument("--accounts", type=int, default=20)
    ap.add_argument("--size", type=int, default=20 * 1024, help="message size in bytes")
    ap.add_argument("--data", type=Path, help="data directory (default: a new temporary one)")
    a = ap.parse_args(argv)

    from postfach.mime.stored import parse_for_storage
    from postfach.store.sqlite import DB_NAME, SqliteMailstore

    root = a.data or Path(tempfile.mkdtemp(prefix="postfach-store-writes-"))
    store = SqliteMailstore(root, index_text=False)
    db = root / DB_NAME
    wal = db.with_name(db.name + "-wal")
    try:
        store.add_domain("example.org")
        ids = [store.add_account(f"user{i}@example.org", "unused").id for i in range(a.accounts)]
        factory = MessageFactory(a.size)
        total = a.warmup + a.messages
        blobs = []
        for i in range(total):
            data = factory.make(i, f"user{i % a.accounts}@example.org")
            blobs.append(store.stage(data, parse_for_storage(data)))
        page_size = sqlite3.connect(db).execute("PRAGMA page_size").fetchone()[0]

        def deliver(lo: int, hi: int) -> None:
            counter = iter(range(lo, hi))
            lock = threading.Lock()

            def client() -> None:
                while True:
                    with lock:
                        i = next(counter, None)
                    if i is None:
                        return
                    store.deliver([ids[i % len(ids)]], blobs[i], 0)

            threads = [threading.Thread(target=client) for _ in range(a.clients)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()

        deliver(0, a.warmup)
        # Hold a read transaction: no checkpoint can pass it, so the WAL keeps every frame.
        pin = sqlite3.connect(db, isolation_level=None)
        pin.execute("BEGIN")
        pin.execute("SELECT count(*) FROM accounts").fetchone()
        first = frame_count(wal, page_size)
        salt = wal_salt(wal)
        cpu0, t0 = os.times(), time.perf_counter()
        deliver(a.warmup, total)
        seconds = time.perf_counter() - t0
        cpu1 = os.times()
        pages = wal_pages(wal, page_size, first)
        if wal_salt(wal) != salt:
            # The read transaction began on a fully checkpointed WAL, which does not hold it.
            raise SystemExit("store_writes.py: the WAL started over during the run; run again")
        pin.execute("COMMIT")
        pin.close()
        owners = page_owners(db)
    finally:
        store.close()

    n = a.messages
    user = (cpu1.user - cpu0.user) / n * 1e6
    system = (cpu1.system - cpu0.system) / n * 1e6
    print(
        f"{n} messages of {a.size} bytes, {a.clients} threads delivering, "
        f"{a.accounts} accounts, SQLite {sqlite3.sqlite_version}, page {page_size} bytes"
    )
    print(
        f"CPU per message: {user + system:.0f} us (user {user:.0f}, system {system:.0f}); "
        f"wall {seconds / n * 1e6:.0f} us per message ({n / seconds:.0f}/s)"
    )
    print(
        f"WAL frames per message: {len(pages) / n:.2f} "
        f"({len(pages) * (page_size + _FRAME_HEADER) / n / 1024:.1f} KiB)"
    )
    by_owner = collections.Counter(owners.get(p, "(new or free page)") for p in pages)
    for owner, count in by_owner.most_common():
        print(f"  {count / n:6.2f}  {owner}")
    if a.data is None:
        import shutil

        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

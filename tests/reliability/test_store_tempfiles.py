"""A group commit makes no temporary file (the store's writer keeps SQLite's sub-journal in
memory: ``PRAGMA temp_store=MEMORY``).

Each op of a group runs in a SAVEPOINT; SQLite keeps the pages a savepoint may have to restore
(pages that existed before it, free pages reused among them) in a sub-journal, and moves it to
a temporary file (``etilqs_*`` in ``/var/tmp`` or ``/tmp``) once it passes 64 KiB: an access,
an open, an unlink and a dozen writes per group, under the data directory's writer lock. The
store runs under strace here; the test fails if any temporary file is opened (it did without
the pragma).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

_DELIVER = """
import sys, threading
from postfach.auth.passwords import hash_password
from postfach.store.sqlite import SqliteMailstore
store = SqliteMailstore(sys.argv[1], index_text=False)
store.add_domain("example.org")
ids = [store.add_account(f"u{i}@example.org", hash_password("pw")).id for i in range(8)]
body = b"Subject: big\\r\\n\\r\\n" + b"x" * 76 + b"\\r\\n"
# Free pages first (as expunges and the change feed's pruning leave them): a message stored in
# pages taken from the free list has their old contents in the sub-journal.
box = store.get_mailbox(ids[0], "INBOX").id
for k in range(40):
    store.deliver([ids[0]], store.stage(body * (260 + k)), 0)
store.expunge(box, [m.uid for m in store.list_messages(box)])
def deliver(i):
    for k in range(6):
        data = body * (250 + 10 * k + i)  # about 20 KB, each message different
        store.deliver([ids[i]], store.stage(data), 0)
threads = [threading.Thread(target=deliver, args=(i,)) for i in range(8)]
for t in threads: t.start()
for t in threads: t.join()
print(sum(len(store.list_messages(store.get_mailbox(a, "INBOX").id)) for a in ids))
store.close()
"""


@pytest.mark.skipif(shutil.which("strace") is None, reason="needs strace (.ci/run installs it)")
def test_group_commits_open_no_temporary_file(tmp_path: Path) -> None:
    log = tmp_path / "strace.log"
    out = subprocess.run(
        ["strace", "-f", "-e", "trace=openat,open", "-o", str(log),
         sys.executable, "-c", _DELIVER, str(tmp_path / "data")],
        capture_output=True, text=True, timeout=120, check=True,
    ).stdout  # fmt: skip
    assert out.split() == ["48"]
    temporary = [line for line in log.read_text().splitlines() if "etilqs_" in line]
    assert temporary == [], temporary[:3]

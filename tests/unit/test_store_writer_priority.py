"""The store's writer thread runs ahead of the rest of its process (`boost_priority`).

Each check reads the nice value the kernel keeps for each thread (``/proc/<pid>/task/<tid>/stat``),
which is what the scheduler goes by.
"""

from __future__ import annotations

import os
import resource
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from postfach.auth.passwords import hash_password
from postfach.store.api import INBOX
from postfach.store.sqlite import WRITER_PRIORITY_BOOST, SqliteMailstore, boost_priority

ROOT = os.geteuid() == 0
linux_root = pytest.mark.skipif(
    not (ROOT and sys.platform.startswith("linux")), reason="needs root on Linux (CI runs so)"
)


def nice_of(tid: int) -> int:
    """The nice value of thread ``tid`` of this process."""
    stat = Path(f"/proc/self/task/{tid}/stat").read_text()
    return int(stat.rpartition(")")[2].split()[16])


@linux_root
def test_the_writer_thread_runs_ahead_of_its_process(tmp_path: Path) -> None:
    base = os.getpriority(os.PRIO_PROCESS, 0)
    store = SqliteMailstore(tmp_path / "data", index_text=False)
    try:
        store.add_domain("example.org")
        account = store.add_account("a@example.org", hash_password("pw"))
        writer = store._writer.native_id  # this store's writer thread
        assert writer is not None
        assert nice_of(writer) == base - WRITER_PRIORITY_BOOST
        assert nice_of(threading.get_native_id()) == base  # the caller's thread is untouched
        store.deliver([account.id], store.stage(b"Subject: hi\r\n\r\nbody\r\n"), 0)
        box = store.get_mailbox(account.id, INBOX)
        assert box is not None
        assert len(store.list_messages(box.id)) == 1
    finally:
        store.close()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="a nice value per thread")
@pytest.mark.parametrize(("soft", "expected"), [(30, -10), (25, -5), (20, None), (0, None)])
def test_without_cap_sys_nice_the_boost_goes_as_far_as_rlimit_nice_allows(
    monkeypatch: pytest.MonkeyPatch, soft: int, expected: int | None
) -> None:
    """The kernel's rule, for a process that is not root: a nice value may go down to
    20 - RLIMIT_NICE, no lower. The writer takes all ten steps, as many as allowed, or none."""
    tid = threading.get_native_id()
    asked: list[int] = []

    def setpriority(which: int, who: int, value: int) -> None:
        assert (which, who) == (os.PRIO_PROCESS, tid)
        asked.append(value)
        if value < 20 - soft:
            raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(os, "getpriority", lambda which, who: 0)
    monkeypatch.setattr(os, "setpriority", setpriority)
    monkeypatch.setattr(resource, "getrlimit", lambda which: (soft, soft))
    assert boost_priority() == expected
    assert asked[0] == -WRITER_PRIORITY_BOOST  # CAP_SYS_NICE would allow it: tried first
    assert asked[-1] == (expected if expected is not None else -WRITER_PRIORITY_BOOST)


@linux_root
def test_the_indexers_writes_run_at_the_process_priority(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Full-text inserts take milliseconds per message: they keep the process's own priority,
    so that the worker's sessions are not held up behind them; deliveries around them keep
    the boost."""
    base = os.getpriority(os.PRIO_PROCESS, 0)
    seen: dict[str, int] = {}
    deliver, index = SqliteMailstore._op_deliver, SqliteMailstore._op_index

    def watched(name: str, op: Any) -> Any:
        def run(*args: Any, **kwargs: Any) -> Any:
            seen[name] = nice_of(threading.get_native_id())
            return op(*args, **kwargs)

        return run

    monkeypatch.setattr(SqliteMailstore, "_op_deliver", watched("deliver", deliver))
    monkeypatch.setattr(SqliteMailstore, "_op_index", staticmethod(watched("index", index)))
    store = SqliteMailstore(tmp_path / "data", index_text=False)
    try:
        store.add_domain("example.org")
        account = store.add_account("a@example.org", hash_password("pw"))
        data = b"Subject: findme\r\n\r\nneedle in the body\r\n"
        store.deliver([account.id], store.stage(data), 0)
        assert store.index_pending(10) == 1
        assert seen == {"deliver": base - WRITER_PRIORITY_BOOST, "index": base}
        writer = store._writer.native_id
        assert writer is not None
        assert nice_of(writer) == base - WRITER_PRIORITY_BOOST  # boosted again
    finally:
        store.close()

"""Counters shared by the worker processes of one server (adapter for `postfach.limits.CountTable`).

The supervisor (`postfach.supervisor`) makes the table before it forks; every worker inherits it.
It is an anonymous shared memory file (``memfd``) mapped ``MAP_SHARED``, locked with ``lockf``
on the same file for every read-modify-write. A ``lockf`` lock belongs to a process, so a worker
that is killed while holding it never blocks the others: the kernel drops the lock with the
process.

Layout: an 8-octet header (slots ever used) and then ``slots`` slots of one 64-bit key hash
(BLAKE2b of the key; 0 = never used) and one 32-bit count per worker. Keys live in the slot their
hash names, or the next ones (linear probing). A worker only ever changes its own column, so when
a worker dies the supervisor clears that column (`clear_column`) and whatever the dead process
held is released at once; a key whose counts are all zero is free for any key again. When three
quarters of the slots have been used the live keys are placed anew (under the lock).

A key is counted once per call: a connection counts against ``total`` and ``ip ADDRESS`` of its
listener, so a listener's keys carry its name (`scoped`).
"""

from __future__ import annotations

import fcntl
import hashlib
import mmap
import os
import struct
import threading
from collections.abc import Sequence

from postfach.limits import CountTable

__all__ = ["SharedCounts"]

_HEADER = struct.Struct("<Q")


def _hash(key: str) -> int:
    h = int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "little")
    return h or 1


class SharedCounts:
    """The table (see the module docstring). ``column`` is this process's worker number."""

    def __init__(self, columns: int, slots: int = 1 << 16) -> None:
        if columns < 1 or slots < 16:
            raise ValueError("a table needs at least one column and 16 slots")
        self.columns = columns
        self.slots = slots
        self._slot = struct.Struct(f"<Q{columns}i")
        self._size = _HEADER.size + slots * self._slot.size
        self._fd = os.memfd_create("postfach-counts", os.MFD_CLOEXEC)
        os.ftruncate(self._fd, self._size)
        self._mm = mmap.mmap(self._fd, self._size, mmap.MAP_SHARED)
        self._threads = threading.Lock()  # lockf does not keep this process's threads apart
        self.column = 0

    def scoped(self, prefix: str) -> CountTable:
        """The same table with every key under ``prefix`` (one listener's counts)."""
        return _Scoped(self, prefix + " ")

    def close(self) -> None:
        self._mm.close()
        os.close(self._fd)

    # ---- the CountTable protocol -------------------------------------------------------------

    def acquire(self, keys: Sequence[tuple[str, int]]) -> int:
        with self._threads:
            fcntl.lockf(self._fd, fcntl.LOCK_EX)
            try:
                hashes = []
                for i, (key, limit) in enumerate(keys):
                    h = _hash(key)
                    _at, total = self._find(h)
                    if limit and total >= limit:
                        return i
                    hashes.append(h)
                for h in hashes:
                    at, _total = self._find(h)  # again: placing a key may have moved the others
                    if at < 0:
                        at = self._place(h)
                        if at < 0:  # every slot holds a live key: refuse rather than not count
                            return 0
                    self._add(at, 1)
                return -1
            finally:
                fcntl.lockf(self._fd, fcntl.LOCK_UN)

    def release(self, keys: Sequence[str]) -> None:
        with self._threads:
            fcntl.lockf(self._fd, fcntl.LOCK_EX)
            try:
                for key in keys:
                    at, _total = self._find(_hash(key))
                    if at >= 0:
                        self._add(at, -1)
            finally:
                fcntl.lockf(self._fd, fcntl.LOCK_UN)

    def count(self, key: str) -> int:
        with self._threads:
            fcntl.lockf(self._fd, fcntl.LOCK_SH)
            try:
                return self._find(_hash(key))[1]
            finally:
                fcntl.lockf(self._fd, fcntl.LOCK_UN)

    # ---- the supervisor's side ---------------------------------------------------------------

    def clear_column(self, column: int) -> int:
        """Release everything worker ``column`` held (it has exited); how many counts that was."""
        offset = _HEADER.size + 8 + 4 * column
        cleared = 0
        with self._threads:
            fcntl.lockf(self._fd, fcntl.LOCK_EX)
            try:
                for slot in range(self.slots):
                    at = offset + slot * self._slot.size
                    (n,) = struct.unpack_from("<i", self._mm, at)
                    if n:
                        cleared += n
                        struct.pack_into("<i", self._mm, at, 0)
            finally:
                fcntl.lockf(self._fd, fcntl.LOCK_UN)
        return cleared

    # ---- under the lock ----------------------------------------------------------------------

    def _find(self, h: int) -> tuple[int, int]:
        """The slot holding hash ``h`` (or -1) and the key's count over all columns."""
        size = self._slot.size
        start = h % self.slots
        for step in range(self.slots):
            slot = (start + step) % self.slots
            values = self._slot.unpack_from(self._mm, _HEADER.size + slot * size)
            if values[0] == 0:
                return -1, 0
            if values[0] == h:
                return slot, sum(values[1:])
        return -1, 0

    def _place(self, h: int) -> int:
        """A slot for a new key ``h``: a used one whose counts are all zero, or a fresh one."""
        (used,) = _HEADER.unpack_from(self._mm, 0)
        if used * 4 >= self.slots * 3:
            used = self._rebuild()
        size = self._slot.size
        start = h % self.slots
        for step in range(self.slots):
            slot = (start + step) % self.slots
            at = _HEADER.size + slot * size
            values = self._slot.unpack_from(self._mm, at)
            if values[0] == 0 or not any(values[1:]):
                if values[0] == 0:
                    _HEADER.pack_into(self._mm, 0, used + 1)
                self._slot.pack_into(self._mm, at, h, *([0] * self.columns))
                return slot
        return -1

    def _rebuild(self) -> int:
        """Place the live keys anew (slots of dead keys become fresh); the slots now used."""
        size = self._slot.size
        live = []
        for slot in range(self.slots):
            values = self._slot.unpack_from(self._mm, _HEADER.size + slot * size)
            if values[0] and any(values[1:]):
                live.append(values)
        self._mm[_HEADER.size : self._size] = bytes(self._size - _HEADER.size)
        for values in live:
            start = values[0] % self.slots
            for step in range(self.slots):
                at = _HEADER.size + ((start + step) % self.slots) * size
                if struct.unpack_from("<Q", self._mm, at)[0] == 0:
                    self._slot.pack_into(self._mm, at, *values)
                    break
        _HEADER.pack_into(self._mm, 0, len(live))
        return len(live)

    def _add(self, slot: int, delta: int) -> None:
        at = _HEADER.size + slot * self._slot.size + 8 + 4 * self.column
        (n,) = struct.unpack_from("<i", self._mm, at)
        struct.pack_into("<i", self._mm, at, max(0, n + delta))


class _Scoped:
    def __init__(self, table: SharedCounts, prefix: str) -> None:
        self._table = table
        self._prefix = prefix

    def acquire(self, keys: Sequence[tuple[str, int]]) -> int:
        return self._table.acquire([(self._prefix + k, limit) for k, limit in keys])

    def release(self, keys: Sequence[str]) -> None:
        self._table.release([self._prefix + k for k in keys])

    def count(self, key: str) -> int:
        return self._table.count(self._prefix + key)

"""Which messages are \\Recent, shared by the worker processes of one server (adapter for
`postfach.imap.view.RecentClaims`).

RFC 3501 §2.3.2: a message is recent in exactly one session, the first to learn of it. Per
mailbox the claims are one number, the highest UID claimed, which only grows. With one table per
process, a session in each of two workers both saw a new message as recent (imaptest's stress
mode reported "\\Recent flag in multiple sessions").

The supervisor (`postfach.supervisor`) makes the table before it forks, as it does
`postfach.sharedcounts`: an anonymous shared memory file (``memfd``) mapped ``MAP_SHARED``,
locked with ``lockf`` around every look (released by the kernel if its holder dies).

Layout: an 8-octet header (slots in use) and ``slots`` slots of mailbox id (64 bits; 0 = free),
UIDVALIDITY (32 bits) and the highest UID claimed (32 bits). A mailbox lives in the slot its key
names or the next ones (linear probing); `forget` sets its UID back to 0 and keeps the slot. When
three quarters of the slots are in use the table starts empty again: every message is then
recent again for the next session to select its mailbox, as after a restart, which RFC 3501
§2.3.2 prescribes when recency cannot be determined.
"""

from __future__ import annotations

import contextlib
import fcntl
import mmap
import os
import struct
import threading
from collections.abc import Iterator

from postfach.imap.view import RecentClaims

__all__ = ["SharedRecentClaims"]

_HEADER = struct.Struct("<Q")
_SLOT = struct.Struct("<QII")


class SharedRecentClaims(RecentClaims):
    """`RecentClaims` in shared memory (see the module docstring)."""

    __slots__ = ("_fd", "_mm", "_slots", "_threads")

    def __init__(self, slots: int = 1 << 16) -> None:
        super().__init__()
        if slots < 16:
            raise ValueError("the table needs at least 16 slots")
        self._slots = slots
        size = _HEADER.size + slots * _SLOT.size
        self._fd = os.memfd_create("postfach-recent", os.MFD_CLOEXEC)
        os.ftruncate(self._fd, size)
        self._mm = mmap.mmap(self._fd, size, mmap.MAP_SHARED)
        self._threads = threading.Lock()  # lockf does not keep this process's threads apart

    def close(self) -> None:
        self._mm.close()
        os.close(self._fd)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        with self._threads:
            fcntl.lockf(self._fd, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.lockf(self._fd, fcntl.LOCK_UN)

    def _find(self, mailbox: tuple[int, int]) -> tuple[int, bool]:
        """The offset of ``mailbox``'s slot and whether it is there (else: the free slot)."""
        ident, validity = mailbox
        mm, slots = self._mm, self._slots
        i = ((ident * 0x9E3779B1) ^ validity) % slots
        while True:
            at = _HEADER.size + i * _SLOT.size
            got, got_validity, _ = _SLOT.unpack_from(mm, at)
            if got == 0:
                return at, False
            if got == ident and got_validity == validity:
                return at, True
            i = (i + 1) % slots  # never full: the table starts over at three quarters

    def claimed(self, mailbox: tuple[int, int]) -> int:
        with self._locked():
            at, found = self._find(mailbox)
            return _SLOT.unpack_from(self._mm, at)[2] if found else 0

    def forget(self, mailbox: tuple[int, int]) -> None:
        with self._locked():
            at, found = self._find(mailbox)
            if found:
                _SLOT.pack_into(self._mm, at, mailbox[0], mailbox[1], 0)

    def claim_upto(self, mailbox: tuple[int, int], uid: int) -> int:
        with self._locked():
            at, found = self._find(mailbox)
            if found:
                before = int(_SLOT.unpack_from(self._mm, at)[2])
                if uid <= before:
                    return before
            else:
                before = 0
                (used,) = _HEADER.unpack_from(self._mm, 0)
                if (used + 1) * 4 > self._slots * 3:
                    self._mm[:] = bytes(len(self._mm))  # start over (module docstring)
                    used = 0
                    at, _ = self._find(mailbox)
                _HEADER.pack_into(self._mm, 0, used + 1)
            _SLOT.pack_into(self._mm, at, mailbox[0], mailbox[1], uid)
            return before

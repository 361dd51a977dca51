"""The failed-login throttle shared by the worker processes of one server (adapter).

`postfach.auth.throttle.LoginThrottle` is pure and deterministic: its state follows from the
sequence of failures and successes it was told, with their times. So the workers need not share
its tables, only that sequence. The supervisor makes a ring of the latest events in anonymous
shared memory (``memfd``, ``MAP_SHARED``, inherited by fork) before forking; a worker appends its
login results to the ring and, before every question (how long to wait, is this address locked
out), replays into its own `LoginThrottle` whatever the workers appended since it last looked,
its own events included. All workers thus hold the same throttle, as one process would: three
wrong passwords on IMAP in one worker lock the address out of POP3 in the other.

The ring holds the latest `RING` events (a worker that was restarted replays them, and so starts
with the lockouts in force); a worker that fell further behind than that misses the oldest ones,
which only matters under a flood of failures, where the latest ones suffice to lock the flood
out. Times are ``time.monotonic()``, one clock for every process of the machine. ``lockf`` on
the memory file keeps writers apart; the kernel drops it with a process that is killed.
"""

from __future__ import annotations

import fcntl
import hashlib
import mmap
import os
import struct
import threading

from postfach.auth.throttle import Lockout, LoginThrottle

__all__ = ["SharedThrottle"]

RING = 8192
_HEAD = struct.Struct("<Q")  # events ever appended
_EVENT = struct.Struct("<BdHH")  # kind, time, length of the name, length of the address
_ENTRY = 512
_TEXT = _ENTRY - _EVENT.size
_FAILED, _SUCCEEDED = 1, 2


def _fit(text: str, room: int) -> bytes:
    """The text as stored: a name too long for an entry becomes a digest of itself (the same
    in every worker, which replay the stored form, their own events included)."""
    raw = text.encode("utf-8", "surrogateescape")
    if len(raw) <= room:
        return raw
    return b"sha256:" + hashlib.sha256(raw).hexdigest().encode()


class SharedThrottle:
    """The `LoginThrottle` interface, kept equal in every worker (see the module docstring)."""

    def __init__(self, throttle: LoginThrottle) -> None:
        self.local = throttle
        self._size = _HEAD.size + RING * _ENTRY
        self._fd = os.memfd_create("postfach-throttle", os.MFD_CLOEXEC)
        os.ftruncate(self._fd, self._size)
        self._mm = mmap.mmap(self._fd, self._size, mmap.MAP_SHARED)
        self._threads = threading.Lock()
        self._applied = 0

    def close(self) -> None:
        self._mm.close()
        os.close(self._fd)

    # ---- the LoginThrottle interface ---------------------------------------------------------

    def delay(self, user: str, ip: str, now: float) -> float:
        self._exchange(None)
        return self.local.delay(self._name(user), self._address(ip), now)

    def locked(self, user: str, ip: str, now: float) -> Lockout | None:
        self._exchange(None)
        return self.local.locked(self._name(user), self._address(ip), now)

    def failed(self, user: str, ip: str, now: float) -> list[Lockout]:
        return self._exchange((_FAILED, user, ip, now))

    def succeeded(self, user: str) -> None:
        self._exchange(None)
        if self.local.clears(self._name(user)):  # else a no-op for every worker: not sent
            self._exchange((_SUCCEEDED, user, "", 0.0))

    # ---- the ring ----------------------------------------------------------------------------

    @staticmethod
    def _name(user: str) -> str:
        return _fit(user.lower(), _TEXT - 64).decode("utf-8", "surrogateescape")

    @staticmethod
    def _address(ip: str) -> str:
        return _fit(ip, 64).decode("utf-8", "surrogateescape")

    def _exchange(self, event: tuple[int, str, str, float] | None) -> list[Lockout]:
        """Append ``event`` (if any) and replay every event not yet applied here; the lockouts
        that ``event`` started."""
        started: list[Lockout] = []
        with self._threads:
            fcntl.lockf(self._fd, fcntl.LOCK_EX)
            try:
                (head,) = _HEAD.unpack_from(self._mm, 0)
                mine = -1
                if event is not None:
                    kind, user, ip, now = event
                    name = _fit(user.lower(), _TEXT - 64)
                    address = _fit(ip, 64)
                    at = _HEAD.size + (head % RING) * _ENTRY
                    _EVENT.pack_into(self._mm, at, kind, now, len(name), len(address))
                    text = name + address
                    self._mm[at + _EVENT.size : at + _EVENT.size + len(text)] = text
                    mine, head = head, head + 1
                    _HEAD.pack_into(self._mm, 0, head)
                seq = max(self._applied, head - RING)
                while seq < head:
                    result = self._apply(seq)
                    if seq == mine:
                        started = result
                    seq += 1
                self._applied = head
            finally:
                fcntl.lockf(self._fd, fcntl.LOCK_UN)
        return started

    def _apply(self, seq: int) -> list[Lockout]:
        at = _HEAD.size + (seq % RING) * _ENTRY
        kind, now, n_name, n_ip = _EVENT.unpack_from(self._mm, at)
        text = self._mm[at + _EVENT.size : at + _EVENT.size + n_name + n_ip]
        name = text[:n_name].decode("utf-8", "surrogateescape")
        if kind == _SUCCEEDED:
            self.local.succeeded(name)
            return []
        ip = text[n_name:].decode("utf-8", "surrogateescape")
        return self.local.failed(name, ip, now)

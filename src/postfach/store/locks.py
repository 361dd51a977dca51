"""POP3 maildrop locks that hold across processes (services ring).

RFC 1939 §8: a POP3 session in TRANSACTION state has exclusive access to its maildrop; a second
session is refused (``-ERR [IN-USE]``, RFC 2449). Several server processes may serve one data
directory, so the lock is an exclusive ``flock`` on ``<data>/locks/maildrop/<account id>``, taken
without waiting on a file descriptor of the session's own. Locks taken through separate opens of
a file conflict within one process as well, so one mechanism covers sessions of the same
process and of others; and the kernel drops the lock with the last descriptor, so a holder that
crashes or is killed (SIGKILL) never leaves the maildrop locked.

The file's name is the account's id (ids are never reused), never anything a client sent. The
files stay (a few empty files; removing a lock file races with a process about to lock it).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import threading
from collections.abc import Iterator
from pathlib import Path


def open_lock_file(path: Path) -> int:
    """A descriptor of the lock file ``path`` (created, with its directory, if missing) to
    ``flock``: the maildrop locks here, `held`, and the store writer's lock."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    return os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)


@contextlib.contextmanager
def held(path: Path) -> Iterator[None]:
    """An exclusive ``flock`` on ``path`` (a lock file, created if missing), waited for and
    held for the block: processes that open one data directory take turns through it (the
    schema migrations of `postfach.store.sqlite` and `postfach.queue.store`)."""
    fd = open_lock_file(path)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # the lock goes with the last descriptor


class MaildropLocks:
    """The maildrop locks this process holds, by account id."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self._held: dict[int, int] = {}  # account id -> locked file descriptor
        self._mutex = threading.Lock()

    def path(self, account_id: int) -> Path:
        return self.directory / str(int(account_id))

    def try_lock(self, account_id: int) -> bool:
        """Take the account's maildrop lock if no session (of any process) holds it."""
        with self._mutex:
            if account_id in self._held:
                return False
            fd = open_lock_file(self.path(account_id))
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                return False
            self._held[account_id] = fd
            return True

    def unlock(self, account_id: int) -> None:
        with self._mutex:
            fd = self._held.pop(account_id, None)
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)  # closing the only descriptor releases the lock

    def release_all(self) -> None:
        with self._mutex:
            held, self._held = self._held, {}
        for fd in held.values():
            with contextlib.suppress(OSError):
                os.close(fd)

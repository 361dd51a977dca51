"""The running server's pid file, and waking its queue runner from the CLI (adapters).

``postfach serve`` holds ``<data>/postfach.pid`` open with an exclusive ``flock`` for as long as
it runs, and SIGUSR1 makes it look for due queue work and for deleted accounts at once
(``postfach queue flush`` and ``retry`` send it after marking the messages due, ``postfach user
del`` after deleting an account, whose IMAP sessions then end). The lock, not the pid, tells
whether a server is running: a kill -9 leaves the file behind, but the kernel drops the lock
with the process, so a stale file (or a pid the system has since given to another process) is
never signalled. SIGUSR1 is the signal because its default action would kill the process: it is
only ever sent to a process that holds the lock, i.e. one that installed the handler first.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import signal
from pathlib import Path

log = logging.getLogger(__name__)

PID_FILE = "postfach.pid"
WAKE_SIGNAL = signal.SIGUSR1


class PidFile:
    """The server's side: take the lock and write the pid; release removes the file."""

    def __init__(self, data_dir: Path) -> None:
        self.path = Path(data_dir) / PID_FILE
        self._fd: int | None = None

    def acquire(self) -> bool:
        """False when another live process holds the file (then nothing is written)."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            return False
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        return True

    def close_inherited(self) -> None:
        """In a forked worker: drop this copy of the descriptor (the lock stays with the
        supervisor's, and the file stays)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def release(self) -> None:
        if self._fd is None:
            return
        with contextlib.suppress(OSError):
            self.path.unlink()  # while still locked: nobody reads a half-released file
        os.close(self._fd)
        self._fd = None


def running_server(data_dir: Path) -> int | None:
    """The pid of the server that holds the data directory's pid file, None if none does."""
    try:
        fd = os.open(Path(data_dir) / PID_FILE, os.O_RDONLY)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            pass  # held: a server is running
        else:
            return None  # stale: its server is gone
        text = os.read(fd, 64).decode("ascii", "replace").strip()
        return int(text) if text.isdigit() and int(text) > 0 else None
    finally:
        os.close(fd)


def wake_server(data_dir: Path) -> int | None:
    """Send the running server SIGUSR1 (look at the queue and the accounts now); its pid, or
    None."""
    pid = running_server(data_dir)
    if pid is None:
        return None
    try:
        os.kill(pid, WAKE_SIGNAL)
    except OSError as exc:  # gone in between, or not ours to signal
        log.debug("event=wake_failed pid=%d error=%s", pid, exc)
        return None
    return pid

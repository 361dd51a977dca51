"""Maildir folders and mbox files on disk, written so that a crash loses nothing (services).

Durability rules:

* Maildir: a message is written to ``tmp/``, fsynced, renamed into ``new/`` or ``cur/``, and
  stored once that directory is fsynced (``sync``); the rename makes it appear whole or not at
  all, as the Maildir design intends.
* mbox: the file is locked with ``fcntl`` (POSIX record lock, what mutt, Dovecot and procmail
  honour) for as long as it is open; messages are appended and stored once the file is fsynced.
  A failed append is truncated away again.

Concurrency: one ``Mbox`` object holds its lock until ``close``; a second writer (another
process) gets ``LocalMailError`` after waiting ``lock_timeout`` seconds.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import itertools
import mmap
import os
import secrets
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import cast

from postfach.mailfile import MboxMessage, maildir_parse_name, split_mbox, to_lf

__all__ = ["LocalMailError", "Maildir", "MaildirEntry", "Mbox", "fsync_dir"]


class LocalMailError(Exception):
    """A Maildir or mbox could not be used; the text is one line for the user."""


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _hostname() -> str:
    # Maildir: "/" and ":" may not appear in the host part of a unique name.
    return socket.gethostname().replace("/", "\\057").replace(":", "\\072") or "localhost"


_counter = itertools.count(1)


@dataclass(frozen=True, slots=True)
class MaildirEntry:
    path: Path
    unique: str
    flags: frozenset[str]
    subdir: str  # "new" or "cur"


class Maildir:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._host = _hostname()

    def ensure(self) -> None:
        """Create the folder (``cur``, ``new``, ``tmp``, mode 0700) if it is missing."""
        try:
            created = not self.path.exists()
            for sub in ("cur", "new", "tmp"):
                (self.path / sub).mkdir(parents=True, exist_ok=True, mode=0o700)
            if created:
                fsync_dir(self.path)
                fsync_dir(self.path.parent)
        except OSError as exc:
            raise LocalMailError(f"cannot create Maildir {self.path}: {exc.strerror}") from None
        if self.path.is_file():
            raise LocalMailError(f"{self.path} is a file, not a Maildir")

    def is_maildir(self) -> bool:
        return all((self.path / sub).is_dir() for sub in ("cur", "new", "tmp"))

    def unique_name(self, when: float | None = None) -> str:
        """A new unique name (time, microseconds, pid, random, counter, host)."""
        t = time.time() if when is None else when
        sec = int(t)
        usec = int((t - sec) * 1_000_000)
        return f"{sec}.M{usec}P{os.getpid()}R{secrets.token_hex(4)}Q{next(_counter)}.{self._host}"

    def deliver(
        self,
        data: bytes,
        unique: str,
        *,
        subdir: str = "new",
        info: str = "",
        mtime: int | None = None,
        sync: bool = True,
    ) -> Path:
        """Write the message (CRLF becomes LF) under ``unique``; with ``sync`` the directory
        is fsynced too, else call ``sync()`` before relying on it."""
        tmp = self.path / "tmp" / unique
        final = self.path / subdir / (unique + info)
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                view = memoryview(to_lf(data))
                while view:
                    view = view[os.write(fd, view) :]
                os.fsync(fd)
            finally:
                os.close(fd)
            if mtime is not None:
                os.utime(tmp, (mtime, mtime))
            os.rename(tmp, final)
        except OSError as exc:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise LocalMailError(f"cannot write to Maildir {self.path}: {exc.strerror}") from None
        if sync:
            self.sync(subdir)
        return final

    def sync(self, subdir: str = "new") -> None:
        try:
            fsync_dir(self.path / subdir)
        except OSError as exc:
            raise LocalMailError(f"cannot sync Maildir {self.path}: {exc.strerror}") from None

    def entries(self) -> list[MaildirEntry]:
        """Messages in ``new/`` and ``cur/``, oldest first (file time, then name)."""
        out: list[tuple[float, str, MaildirEntry]] = []
        for sub in ("new", "cur"):
            try:
                scan = os.scandir(self.path / sub)
            except FileNotFoundError:
                continue
            with scan:
                for e in scan:
                    if e.name.startswith(".") or not e.is_file():
                        continue
                    unique, flags = maildir_parse_name(e.name)
                    if sub == "new":
                        flags = frozenset()
                    with contextlib.suppress(FileNotFoundError):
                        out.append((e.stat().st_mtime, e.name, MaildirEntry(
                            Path(e.path), unique, flags, sub)))  # fmt: skip
        out.sort(key=lambda x: (x[0], x[1]))
        return [x[2] for x in out]

    def find(self, unique: str) -> Path | None:
        for sub in ("new", "cur"):
            p = self.path / sub / unique
            if p.exists():
                return p
        cur = self.path / "cur"
        with contextlib.suppress(FileNotFoundError), os.scandir(cur) as it:
            for e in it:
                if e.name.startswith(unique + ":"):
                    return Path(e.path)
        return None


class Mbox:
    def __init__(self, path: Path, lock_timeout: float = 30.0) -> None:
        self.path = path
        self._lock_timeout = lock_timeout
        self._fd: int | None = None

    def open(self, create: bool = True) -> None:
        """Open and lock for appending (and reading)."""
        flags = os.O_RDWR | os.O_APPEND | (os.O_CREAT if create else 0)
        try:
            fd = os.open(self.path, flags, 0o600)
        except OSError as exc:
            raise LocalMailError(f"cannot open mbox {self.path}: {exc.strerror}") from None
        deadline = time.monotonic() + self._lock_timeout
        while True:
            try:
                fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno not in (errno.EACCES, errno.EAGAIN) or time.monotonic() > deadline:
                    os.close(fd)
                    raise LocalMailError(f"mbox {self.path} is locked by another program") from None
                time.sleep(0.1)
        self._fd = fd

    def close(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                fcntl.lockf(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> Mbox:
        if self._fd is None:
            self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def fd(self) -> int:
        if self._fd is None:
            raise RuntimeError("mbox not open")
        return self._fd

    def size(self) -> int:
        return os.fstat(self.fd).st_size

    def append(self, entry: bytes) -> None:
        """Append bytes (not yet durable: call ``sync``); on failure the file is cut back."""
        before = self.size()
        try:
            view = memoryview(entry)
            while view:
                view = view[os.write(self.fd, view) :]
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.ftruncate(self.fd, before)
            raise LocalMailError(f"cannot write to mbox {self.path}: {exc.strerror}") from None

    def sync(self) -> None:
        try:
            os.fsync(self.fd)
        except OSError as exc:
            raise LocalMailError(f"cannot sync mbox {self.path}: {exc.strerror}") from None

    def read_from(self, offset: int) -> bytes:
        return os.pread(self.fd, max(0, self.size() - offset), offset)

    @staticmethod
    @contextlib.contextmanager
    def messages(path: Path) -> Iterator[Iterator[MboxMessage]]:
        """The messages of an mbox file, read through a memory map (large files are fine)."""
        try:
            f = open(path, "rb")  # noqa: SIM115 - closed below, after the map
        except OSError as exc:
            raise LocalMailError(f"cannot read mbox {path}: {exc.strerror}") from None
        with f:
            if os.fstat(f.fileno()).st_size == 0:
                yield iter(())
                return
            with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
                # mmap supports the slicing and searching split_mbox does.
                yield split_mbox(cast(bytes, mm))

"""The local half of ``postfach sync``: a Maildir++ tree on disk (services ring).

Writing a message follows the Maildir protocol and adds what crash safety needs: the bytes go
to ``tmp/<unique>``, are fsynced, the file is renamed into ``new/`` (no flags) or
``cur/<unique>:2,<flags>``, and the directory is fsynced before the caller records the message
in the state (`postfach.client.sync.state`). Flag changes are renames inside the folder;
deletions are unlinks; both fsync the directory.

Each folder directory except INBOX holds a file ``postfach-sync-id`` with a random id, so a
folder renamed locally (``mv .Work .Job``) is recognised as the same folder. Maildir readers
ignore files in a folder directory other than ``cur``, ``new`` and ``tmp``.

``stamp`` is the mtimes of ``new`` and ``cur``: every delivery, flag change (a rename) and
deletion changes one of them, so an unchanged stamp means an unchanged folder and the folder
need not be read. A stamp is only trusted when it was taken at least ``SETTLE_NS`` after the
mtime it holds (as git does with its index): a change in the same clock tick as the stamp
could otherwise go unnoticed.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import socket
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from postfach.client.sync.names import (
    INBOX,
    KEYWORD_FILE,
    Flags,
    Keywords,
    crlf_size,
    dir_for_folder,
    flags_of_name,
    folder_for_dir,
    ident,
    keywords_of,
    message_id,
    split_filename,
)
from postfach.client.sync.plan import LocalFolder

__all__ = ["ID_FILE", "Maildir", "MaildirFolder", "Staged"]

ID_FILE: Final = "postfach-sync-id"
SETTLE_NS: Final = 2_000_000_000
_SUBDIRS: Final = ("cur", "new", "tmp")
_counter = itertools.count(1)


def _host() -> str:
    return socket.gethostname().replace("/", "\\057").replace(":", "\\072") or "localhost"


def new_unique() -> str:
    """A Maildir unique name: time, microseconds, pid, a counter and randomness, host."""
    now = time.time_ns()
    return (
        f"{now // 1_000_000_000}.M{(now // 1000) % 1_000_000}P{os.getpid()}"
        f"Q{next(_counter)}R{os.urandom(4).hex()}.{_host()}"
    )


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass(frozen=True, slots=True)
class Staged:
    """A message written to ``tmp`` and fsynced, waiting for ``MaildirFolder.commit``."""

    tmp: Path
    lname: str
    unique: str


class MaildirFolder:
    def __init__(self, root: Path, name: str, fsync: bool) -> None:
        self.name = name
        self.path = root / dir_for_folder(name) if name != INBOX else root
        self.fsync = fsync
        self._keywords: Keywords | None = None

    # ---- keywords (dovecot-keywords) -------------------------------------------------------

    @property
    def keywords(self) -> Keywords:
        if self._keywords is None:
            try:
                text = (self.path / KEYWORD_FILE).read_text("utf-8", "replace")
            except OSError:
                text = ""
            self._keywords = Keywords.parse(text)
        return self._keywords

    def admit(self, flags: Flags) -> Flags:
        """The part of a server message's flags this folder can carry: system flags, and
        keywords that have a letter or get one now (the file is written before any message
        uses the letter). Keywords beyond the 26 letters are left out: they stay on the
        server, untouched, because the sync only ever adds or removes single flags there."""
        kws = keywords_of(flags)
        if not kws:
            return flags
        table = self.keywords
        before = dict(table.by_index)
        out = {f for f in flags if f not in kws}
        for k in sorted(kws):
            if table.assign(k):
                out.add(table.canonical(k))
        if table.by_index != before:
            self._write_keywords(table)
        return frozenset(out)

    def _write_keywords(self, table: Keywords) -> None:
        self._replace_file(KEYWORD_FILE, table.format().encode("utf-8"))

    def _replace_file(self, name: str, content: bytes) -> None:
        """Write a small file of the folder atomically (by way of ``tmp/``), fsynced if asked."""
        tmp = self.path / "tmp" / f"{name}.{os.getpid()}"
        tmp.write_bytes(content)
        if self.fsync:
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        os.replace(tmp, self.path / name)
        if self.fsync:
            _fsync_dir(self.path)

    def ensure(self) -> None:
        for sub in _SUBDIRS:
            (self.path / sub).mkdir(parents=True, exist_ok=True)
        if self.name != INBOX:
            marker = self.path / "maildirfolder"  # Maildir++: this is a subfolder
            if not marker.exists():
                marker.touch()

    # ---- identity and change detection ---------------------------------------------------

    def read_id(self) -> str | None:
        try:
            text = (self.path / ID_FILE).read_text("ascii").strip()
        except (OSError, UnicodeDecodeError):
            return None
        return text or None

    def write_id(self) -> str:
        value = os.urandom(12).hex()
        self._replace_file(ID_FILE, (value + "\n").encode("ascii"))
        return value

    def stamp(self) -> tuple[str | None, int]:
        """``"<new mtime>:<cur mtime>"`` and when it was taken (ns); None if unreadable."""
        taken = time.time_ns()
        try:
            a = os.stat(self.path / "new").st_mtime_ns
            b = os.stat(self.path / "cur").st_mtime_ns
        except OSError:
            return None, taken
        if taken - max(a, b) < SETTLE_NS:
            return None, taken  # too fresh to vouch for "nothing changed after this"
        return f"{a}:{b}", taken

    def raw_stamp(self) -> str | None:
        try:
            a = os.stat(self.path / "new").st_mtime_ns
            b = os.stat(self.path / "cur").st_mtime_ns
        except OSError:
            return None
        return f"{a}:{b}"

    # ---- reading -------------------------------------------------------------------------

    def scan(self) -> dict[str, str]:
        """unique → ``sub/filename`` for every message file (``new`` before ``cur``: if the
        same unique name is in both, ``cur`` wins)."""
        out: dict[str, str] = {}
        for sub in ("new", "cur"):
            try:
                it = os.scandir(self.path / sub)
            except FileNotFoundError:
                continue
            with it:
                for entry in it:
                    name = entry.name
                    if name.startswith("."):
                        continue
                    unique, _ = split_filename(name)
                    out[unique] = f"{sub}/{name}"
        return out

    def flags(self, lname: str) -> Flags:
        """System flag letters and keyword names of a file name (``cur/u:2,FSa``)."""
        i = lname.find(":")
        if i < 0 or not lname.startswith("2,", i + 1):
            return flags_of_name(lname)
        letters = lname[i + 3 :]
        if not any("a" <= c <= "z" for c in letters):
            return flags_of_name(lname)
        return self.keywords.flags_of_letters(letters)

    def read(self, lname: str) -> bytes:
        return (self.path / lname).read_bytes()

    def mtime(self, lname: str) -> int:
        return int((self.path / lname).stat().st_mtime)

    def ident(self, lname: str) -> str:
        data = self.read(lname)
        return ident(crlf_size(data), message_id(data))

    def find(self, unique: str) -> str | None:
        return self.scan().get(unique)

    # ---- writing -------------------------------------------------------------------------

    def stage(self, data: bytes, flags: Flags, mtime: int | None = None) -> Staged:
        """Write a message to ``tmp`` (fsynced); ``commit`` moves it into place."""
        unique = new_unique()
        tmp = self.path / "tmp" / unique
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            view = memoryview(data)
            while view:
                n = os.write(fd, view)
                view = view[n:]
            if self.fsync:
                os.fsync(fd)
        finally:
            os.close(fd)
        if mtime is not None:
            os.utime(tmp, (mtime, mtime))
        lname = f"cur/{self.keywords.filename(unique, '', flags)}" if flags else f"new/{unique}"
        return Staged(tmp, lname, unique)

    def commit(self, staged: list[Staged]) -> None:
        """Move staged messages into ``new``/``cur`` and fsync those directories."""
        for s in staged:
            os.rename(s.tmp, self.path / s.lname)
        if self.fsync and staged:
            for sub in {s.lname.partition("/")[0] for s in staged}:
                _fsync_dir(self.path / sub)

    def set_flags(self, lname: str, flags: Flags) -> str:
        """Rename the file to carry ``flags`` (into ``cur``); the new ``sub/filename``."""
        sub, _, filename = lname.partition("/")
        unique, letters = split_filename(filename)
        if sub == "new" and not flags and not letters:
            return lname
        new = f"cur/{self.keywords.filename(unique, letters, flags)}"
        if new != lname:
            os.rename(self.path / lname, self.path / new)
        return new

    def remove(self, lname: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path / lname)

    def sync_dirs(self) -> None:
        if self.fsync:
            for sub in ("new", "cur"):
                _fsync_dir(self.path / sub)


class Maildir:
    """A Maildir++ tree: INBOX at the root, the other folders as ``.Name`` directories."""

    def __init__(self, root: Path, fsync: bool = True) -> None:
        self.root = root
        self.fsync = fsync
        self.pool: ThreadPoolExecutor | None = None

    def folder(self, name: str) -> MaildirFolder:
        return MaildirFolder(self.root, name, self.fsync)

    def ensure_root(self) -> None:
        self.folder(INBOX).ensure()

    def list_folders(self) -> dict[str, LocalFolder]:
        """The folders on disk (a directory with ``cur`` or ``new`` is one), with their ids."""
        out: dict[str, LocalFolder] = {}
        if (self.root / "cur").is_dir() or (self.root / "new").is_dir():
            out[INBOX] = LocalFolder(INBOX, None)
        try:
            entries = list(os.scandir(self.root))
        except FileNotFoundError:
            return out
        for entry in entries:
            name = folder_for_dir(entry.name)
            if name is None or not entry.is_dir():
                continue
            path = Path(entry.path)
            if not ((path / "cur").is_dir() or (path / "new").is_dir()):
                continue
            out[name] = LocalFolder(name, self.folder(name).read_id())
        return out

    def stamps(self) -> dict[str, str | None]:
        """Every folder's raw stamp, to notice local changes while waiting (``--watch``)."""
        return {name: self.folder(name).raw_stamp() for name in self.list_folders()}

    def rename_folder(self, old: str, new: str) -> None:
        src, dst = self.folder(old).path, self.folder(new).path
        if dst.exists():
            raise FileExistsError(dst)
        os.rename(src, dst)
        if self.fsync:
            _fsync_dir(self.root)

    def delete_folder(self, name: str) -> None:
        path = self.folder(name).path
        if name == INBOX:
            raise ValueError("INBOX is the Maildir itself")
        # Out of sight first (one rename), then remove: a crash leaves no half folder.
        trash = self.root / "tmp" / f"deleted.{new_unique()}"
        os.rename(path, trash)
        if self.fsync:
            _fsync_dir(self.root)
        import shutil  # rarely needed; not loaded by every run

        shutil.rmtree(trash, ignore_errors=True)

    def walk_files(self, name: str) -> Iterator[str]:
        yield from self.folder(name).scan().values()

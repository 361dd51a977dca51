"""The fetch state on disk: a snapshot, a journal and a lock per account (services).

* ``NAME.json``: the snapshot, replaced atomically (temp file, fsync, rename, directory fsync).
* ``NAME.journal``: records appended during a run, each fsynced before the run goes on; one
  record per batch of stored messages. Rewriting the whole snapshot after every message would
  cost time proportional to the number of messages known, for every message; the journal keeps
  each step one small append and one fsync, and is folded into the snapshot at the start and
  end of every run.
* ``NAME.lock``: ``flock`` held for the whole run, so two runs for one account (an overlapping
  cron job) never interleave; the second one fails at once with a clear message.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path

from postfach.client.errors import FetchError
from postfach.client.state import FetchState
from postfach.localmail import fsync_dir

__all__ = ["StateFile"]


class StateFile:
    def __init__(self, directory: Path, account: str) -> None:
        self.directory = directory
        self.account = account
        self.snapshot = directory / f"{account}.json"
        self.journal = directory / f"{account}.journal"
        self._lock_path = directory / f"{account}.lock"
        self._lock_fd: int | None = None
        self._journal_fd: int | None = None

    # ---- lock -------------------------------------------------------------------------------

    def acquire(self) -> None:
        try:
            self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise FetchError(
                f"cannot use state directory {self.directory}: {exc.strerror}"
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise FetchError(
                f"another postfach fetch is running for account {self.account!r}"
            ) from None
        self._lock_fd = fd

    def release(self) -> None:
        if self._journal_fd is not None:
            os.close(self._journal_fd)
            self._journal_fd = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing drops the flock
            self._lock_fd = None

    def __enter__(self) -> StateFile:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    # ---- reading ----------------------------------------------------------------------------

    def load(self, server: str) -> FetchState:
        """The snapshot with the journal replayed, or a new state for ``server``."""
        try:
            text = self.snapshot.read_bytes()
        except FileNotFoundError:
            state = FetchState(server)
        except OSError as exc:
            raise FetchError(f"cannot read {self.snapshot}: {exc.strerror}") from None
        else:
            try:
                state = FetchState.from_json(text)
            except ValueError as exc:
                raise FetchError(f"{self.snapshot}: {exc}") from None
        if state.server != server:
            raise FetchError(
                f"{self.snapshot} holds the state of {state.server}, not {server};"
                " rename the account or remove that file to start afresh"
            )
        try:
            journal = self.journal.read_bytes()
        except FileNotFoundError:
            journal = b""
        try:
            state.replay(journal)
        except ValueError as exc:
            raise FetchError(f"{self.journal}: {exc}") from None
        return state

    # ---- writing ----------------------------------------------------------------------------

    def save(self, state: FetchState) -> None:
        """Write a new snapshot atomically, then empty the journal.

        The generation goes up first, so journal records left over from a crash between the
        two steps are recognised as already contained and ignored.
        """
        state.generation += 1
        tmp = self.directory / f".{self.account}.json.{os.getpid()}.tmp"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                view = memoryview(state.to_json().encode())
                while view:
                    view = view[os.write(fd, view) :]
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, self.snapshot)
            fsync_dir(self.directory)
            if self._journal_fd is not None:
                os.ftruncate(self._journal_fd, 0)
                os.fsync(self._journal_fd)
            elif self.journal.exists():
                with open(self.journal, "r+b") as f:
                    f.truncate(0)
                    os.fsync(f.fileno())
        except OSError as exc:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise FetchError(f"cannot write {self.snapshot}: {exc.strerror}") from None

    def append(self, line: str) -> None:
        """Append one journal record and fsync it."""
        try:
            if self._journal_fd is None:
                self._journal_fd = os.open(
                    self.journal, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600
                )
                fsync_dir(self.directory)
            view = memoryview(line.encode())
            while view:
                view = view[os.write(self._journal_fd, view) :]
            os.fdatasync(self._journal_fd)
        except OSError as exc:
            raise FetchError(f"cannot write {self.journal}: {exc.strerror}") from None

"""Import mbox files and Maildir folders into a postfach mailbox, and export them (services).

Flags travel both ways (``postfach.mailfile`` has the mapping): Maildir ``:2,`` letters,
mbox ``Status``/``X-Status``/``X-Keywords`` header fields; the internal date comes from the mbox
``From`` line or the Maildir file's modification time, and goes back there on export.

Messages are stored CRLF-normalised like every delivered message, in batches of one store
append each (all or nothing, one group commit). An import that stopped half-way (quota, disk,
Ctrl-C) can simply be run again: a message whose exact bytes were already in the mailbox when
the import started is skipped, so nothing is doubled.

Writing an mbox: a new file is written under a temporary name, fsynced and renamed into place;
``append`` adds to an existing file under its ``fcntl`` lock. A Maildir gets one file per message
in ``cur/``, each fsynced, and the directory fsynced at the end.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from postfach.errors import OverQuota, StoreError
from postfach.localmail import LocalMailError, Maildir, Mbox, fsync_dir
from postfach.mailfile import (
    add_status_headers,
    maildir_info,
    mbox_entry,
    strip_status_headers,
    to_lf,
)
from postfach.mime.stored import parse_for_storage
from postfach.mime.structure import normalize_crlf
from postfach.store.api import Flag, MessageMeta
from postfach.store.sqlite import AppendItem, SqliteMailstore

__all__ = [
    "TransferError",
    "TransferResult",
    "detect_format",
    "export_mailbox",
    "flags_of",
    "import_mailbox",
]

#: Messages (or octets) per store append during an import.
BATCH_MESSAGES = 200
BATCH_OCTETS = 16 << 20

_SYSTEM_FLAGS = {n.lower(): n for n in Flag(31).names()}
_RETURN_PATH = re.compile(rb"(?im)^Return-Path:[ \t]*<([^>\r\n]*)>")
_PSEUDO_SUBJECT = b"DON'T DELETE THIS MESSAGE -- FOLDER INTERNAL DATA"

Progress = Callable[[int], None]  # called with the octets of each message done


class TransferError(Exception):
    """One line for the user."""


@dataclass
class TransferResult:
    messages: int = 0
    octets: int = 0
    skipped: int = 0  # import: already in the mailbox


def detect_format(path: Path, fmt: str | None, *, exporting: bool) -> str:
    """``mbox`` or ``maildir``: as given, else a directory is a Maildir and anything else an
    mbox (a source must exist)."""
    if fmt is not None:
        return fmt
    if path.is_dir():
        return "maildir"
    if path.exists():
        return "mbox"
    if not exporting:
        raise TransferError(f"{path} does not exist")
    return "mbox"


def flags_of(names: frozenset[str]) -> tuple[Flag, tuple[str, ...]]:
    flags = Flag.NONE
    keywords: list[str] = []
    for n in sorted(names):
        if n.startswith("\\"):
            if n.lower() in _SYSTEM_FLAGS and n.lower() != "\\recent":
                flags |= Flag.from_names([n])
        else:
            keywords.append(n)
    return flags, tuple(keywords)


def _names_of(meta: MessageMeta) -> list[str]:
    return [*meta.flags.names(), *meta.keywords]


def _resolve(store: SqliteMailstore, account: str, mailbox: str, create: bool) -> int:
    acc = store.get_account(account)
    if acc is None:
        raise TransferError(f"no account {account.lower()}")
    mbox = store.get_mailbox(acc.id, mailbox)
    if mbox is not None:
        return mbox.id
    if not create:
        raise TransferError(f"{acc.name} has no mailbox {mailbox!r}")
    return store.create_mailbox(acc.id, mailbox)


# ---- import ---------------------------------------------------------------------------------


def _mbox_source(path: Path) -> Iterator[tuple[bytes, frozenset[str], int | None]]:
    with Mbox.messages(path) as messages:
        for m in messages:
            data, flags = strip_status_headers(m.data)
            head = data.split(b"\n\n", 1)[0]
            if b"\nX-IMAP:" in b"\n" + head and _PSEUDO_SUBJECT in head:
                continue  # UW-IMAP's folder-data pseudo message
            yield data, flags, m.date


def _maildir_source(path: Path) -> Iterator[tuple[bytes, frozenset[str], int | None]]:
    folder = Maildir(path)
    if not folder.is_maildir():
        raise TransferError(f"{path} is not a Maildir (no cur/, new/ and tmp/)")
    for e in folder.entries():
        try:
            data = e.path.read_bytes()
            mtime = int(e.path.stat().st_mtime)
        except FileNotFoundError:
            continue  # removed by a mail program while we read
        except OSError as exc:
            raise TransferError(f"cannot read {e.path}: {exc.strerror}") from None
        yield data, e.flags, mtime


def import_mailbox(
    store: SqliteMailstore,
    account: str,
    mailbox: str,
    source: Path,
    fmt: str,
    progress: Progress | None = None,
) -> TransferResult:
    mailbox_id = _resolve(store, account, mailbox, create=True)
    before = {m.blob for m in store.list_messages(mailbox_id)}
    items = _mbox_source(source) if fmt == "mbox" else _maildir_source(source)
    result = TransferResult()
    batch: list[AppendItem] = []
    batch_octets = 0
    now = int(time.time())

    def flush() -> None:
        nonlocal batch, batch_octets
        if not batch:
            return
        pending, batch, batch_octets = batch, [], 0
        try:
            store.append(mailbox_id, pending)
        except OverQuota as exc:
            raise TransferError(
                f"{exc.account} is over its quota ({exc.resource.lower()}) after"
                f" {result.messages} messages; nothing more was imported"
            ) from None
        except BaseException:
            for item in pending:
                store.discard(item.blob)
            raise
        result.messages += len(pending)
        result.octets += sum(i.blob.size for i in pending)

    try:
        for raw, names, date in items:
            data = normalize_crlf(raw)
            if not data:
                continue
            if hashlib.sha256(data).hexdigest() in before:
                result.skipped += 1
            else:
                blob = store.stage(data, parse_for_storage(data))
                flags, keywords = flags_of(names)
                batch.append(AppendItem(blob, flags, keywords, date if date else now))
                batch_octets += blob.size
            if progress is not None:
                progress(len(raw))
            if len(batch) >= BATCH_MESSAGES or batch_octets >= BATCH_OCTETS:
                flush()
        flush()
    except LocalMailError as exc:
        raise TransferError(str(exc)) from None
    except StoreError as exc:
        raise TransferError(str(exc)) from None
    finally:
        for item in batch:
            store.discard(item.blob)
    return result


# ---- export ---------------------------------------------------------------------------------


def _sender(data: bytes) -> str:
    head = data.split(b"\r\n\r\n", 1)[0]
    m = _RETURN_PATH.search(head)
    return m.group(1).decode("utf-8", "replace") if m and m.group(1) else "MAILER-DAEMON"


def export_mailbox(
    store: SqliteMailstore,
    account: str,
    mailbox: str,
    dest: Path,
    fmt: str,
    *,
    append: bool = False,
    progress: Progress | None = None,
) -> TransferResult:
    mailbox_id = _resolve(store, account, mailbox, create=False)
    messages = store.list_messages(mailbox_id)
    try:
        if fmt == "maildir":
            return _export_maildir(store, messages, dest, progress)
        return _export_mbox(store, messages, dest, append, progress)
    except LocalMailError as exc:
        raise TransferError(str(exc)) from None
    except OSError as exc:
        raise TransferError(f"cannot write {dest}: {exc.strerror}") from None


def _export_maildir(
    store: SqliteMailstore, messages: list[MessageMeta], dest: Path, progress: Progress | None
) -> TransferResult:
    if dest.exists() and not dest.is_dir():
        raise TransferError(f"{dest} exists and is not a directory")
    folder = Maildir(dest)
    folder.ensure()
    result = TransferResult()
    for m in messages:
        data = store.read_blob(m.blob)
        info = maildir_info(_names_of(m))
        folder.deliver(data, folder.unique_name(m.internal_date), subdir="cur", info=info,
                       mtime=m.internal_date, sync=False)  # fmt: skip
        result.messages += 1
        result.octets += len(data)
        if progress is not None:
            progress(len(data))
    folder.sync("cur")
    return result


def _export_mbox(
    store: SqliteMailstore,
    messages: list[MessageMeta],
    dest: Path,
    append: bool,
    progress: Progress | None,
) -> TransferResult:
    if dest.is_dir():
        raise TransferError(f"{dest} is a directory (use --format maildir for a Maildir)")
    exists = dest.exists() and dest.stat().st_size > 0
    if exists and not append:
        raise TransferError(f"{dest} exists already (use --append to add to it)")
    result = TransferResult()
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
    target = Mbox(dest if exists else tmp)
    target.open()
    try:
        for m in messages:
            data = store.read_blob(m.blob)
            text = add_status_headers(to_lf(data), _names_of(m))
            target.append(mbox_entry(text, _sender(data), m.internal_date))
            result.messages += 1
            result.octets += len(data)
            if progress is not None:
                progress(len(data))
        target.sync()
        if not exists:
            os.replace(tmp, dest)
            fsync_dir(dest.parent)
    except BaseException:
        if not exists:
            with contextlib.suppress(OSError):
                tmp.unlink()
        raise
    finally:
        target.close()
    return result

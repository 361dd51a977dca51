"""Reading an strace log and checking that every acknowledgement came after the fsync of the data
it acknowledges (pure: text in, problems out; ``test_fsync_order.py`` runs the server under
strace and feeds this).

The log is what ``strace -f -yy -ttt -s N -o FILE`` writes: ``PID TIME name(args) = result``,
where a system call interrupted by another thread's is split into ``... <unfinished ...>`` and
``PID TIME <... name resumed>...) = result``. Order is the line order: strace prints a line when it
handles the tracee's stop, and a thread that is stopped cannot go on, so when thread B's write
depends on thread A's fsync having returned (a future resolved, the event loop woken), A's exit
line is always printed before B's entry line.

The rule checked for each message (found by a marker text unique to it):

1. ``rx``: the first read from a socket whose data contains the marker;
2. ``reply``: the first write to that same socket after ``rx`` returned; it must match the
   expected positive reply (``250``, ``TAG OK``);
3. before ``reply`` *started*, these must have *returned* (result ``0``):

   * small message: a write to ``postfach.db-wal`` containing the marker, after ``rx``, and an
     fsync/fdatasync of the WAL that started after that write returned;
   * large message (the marker went into a file under ``blobs/tmp``): that file write, an fsync
     of that file after it, its rename to the final blob path after the fsync, an fsync of the
     final path's directory after the rename and, for every directory on the way that was
     created (``mkdir`` returning 0), an fsync of the directory it was created in; then a WAL
     write containing the blob's name (its sha256) and a WAL fsync after it.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

READS = frozenset({"read", "recvfrom", "recvmsg", "recv", "readv"})
WRITES = frozenset({"write", "sendto", "sendmsg", "send", "writev", "pwrite64", "pwritev"})
SYNCS = frozenset({"fsync", "fdatasync"})
RENAMES = frozenset({"rename", "renameat", "renameat2"})
MKDIRS = frozenset({"mkdir", "mkdirat"})

#: the system calls the log has to contain (``strace -e trace=...``)
TRACE_SET = ",".join(sorted(WRITES | SYNCS | RENAMES | MKDIRS | {"recvfrom", "recvmsg"}))

_HEAD = re.compile(r"^(?:\[pid\s+)?(\d+)\]?\s+(?:(\d+\.\d+)\s+)?(.*)$")
_RESUMED = re.compile(r"^<\.\.\. (\w+) resumed>(.*)$")
_CALL = re.compile(r"^(\w+)\((.*)$")
_STRING = re.compile(r'"((?:[^"\\]|\\.)*)"')
_ESCAPES = {"n": b"\n", "r": b"\r", "t": b"\t", "v": b"\v", "f": b"\f", "\\": b"\\", '"': b'"'}


def unescape(text: str) -> bytes:
    """An strace string literal's contents as bytes (``\\n``, ``\\ooo``, ``\\xhh``)."""
    out = bytearray()
    i = 0
    while i < len(text):
        c = text[i]
        if c != "\\" or i + 1 == len(text):
            out += c.encode("utf-8", "surrogateescape")
            i += 1
            continue
        n = text[i + 1]
        if n in _ESCAPES:
            out += _ESCAPES[n]
            i += 2
        elif n == "x":
            out.append(int(text[i + 2 : i + 4], 16))
            i += 4
        elif n.isdigit():
            j = i + 1
            while j < len(text) and j < i + 4 and text[j] in "01234567":
                j += 1
            out.append(int(text[i + 1 : j], 8) & 0xFF)
            i = j
        else:
            out += n.encode()
            i += 2
    return bytes(out)


def _first_fd(args: str) -> str | None:
    """The ``-yy`` description of the first argument if it is a file descriptor: a path, or
    ``TCP:[local->peer]`` for a socket."""
    m = re.match(r"\d+<", args)
    if m is None:
        return None
    rest = args[m.end() :]
    if re.match(r"[A-Za-z0-9-]+:\[", rest):
        end = rest.find("]>")
        return rest[: end + 1] if end >= 0 else None
    m2 = re.search(r">(?=[,) ]|$)", rest)
    return rest[: m2.start()] if m2 else None


@dataclass(frozen=True, slots=True)
class Call:
    """One system call: ``entry`` and ``exit`` are line numbers (equal unless it was split)."""

    pid: int
    name: str
    fd: str | None
    strings: tuple[bytes, ...]
    result: str
    entry: int
    exit: int
    time: float = 0.0

    @property
    def data(self) -> bytes:
        return b"".join(self.strings)

    @property
    def ok(self) -> bool:
        return self.result.split(" ", 1)[0] not in {"", "-1", "?"}


def parse(text: str) -> list[Call]:
    """Every complete system call in the log, in order of entry."""
    calls: list[Call] = []
    pending: dict[int, tuple[int, float, str]] = {}  # pid -> (entry line, time, text so far)
    for lineno, line in enumerate(text.splitlines()):
        head = _HEAD.match(line)
        if head is None:
            continue
        pid, stamp, body = int(head.group(1)), float(head.group(2) or 0), head.group(3)
        if body.startswith(("+++", "---")):
            continue
        resumed = _RESUMED.match(body)
        if resumed is not None:
            if pid not in pending:
                continue
            entry, stamp, start = pending.pop(pid)
            body = start + resumed.group(2)
        else:
            entry = lineno
        if body.endswith("<unfinished ...>"):
            pending[pid] = (lineno, stamp, body[: -len("<unfinished ...>")].rstrip())
            continue
        m = _CALL.match(body)
        if m is None:
            continue
        args, _, result = m.group(2).rpartition(") = ")
        calls.append(
            Call(
                pid=pid,
                name=m.group(1),
                fd=_first_fd(args),
                strings=tuple(unescape(s) for s in _STRING.findall(args)),
                result=result.strip(),
                entry=entry,
                exit=lineno,
                time=stamp,
            )
        )
    calls.sort(key=lambda c: c.entry)
    return calls


@dataclass(frozen=True, slots=True)
class Expect:
    """A message the test sent: its marker and the reply that acknowledges it (a regex)."""

    marker: bytes
    reply: bytes  # e.g. rb"250 " or rb"A7 OK"


@dataclass(slots=True)
class Verdict:
    marker: bytes
    problems: list[str] = field(default_factory=list)
    large: bool = False  # went through a blob file
    reply_line: int = -1
    sync_line: int = -1  # the WAL sync that made it durable


def _is_wal(path: str | None) -> bool:
    return path is not None and path.endswith("postfach.db-wal")


def _first(calls: Iterable[Call]) -> Call | None:
    return next(iter(calls), None)


def _synced_after(calls: Sequence[Call], path: str, after: int, before: int) -> Call | None:
    """A successful fsync/fdatasync of ``path`` that started after line ``after`` and returned
    before line ``before``."""
    return _first(
        c
        for c in calls
        if c.name in SYNCS and c.fd == path and c.ok and c.entry > after and c.exit < before
    )


def _wal_durable(calls: Sequence[Call], key: bytes, after: int, before: int) -> Call | None:
    """The WAL sync making a WAL write that holds ``key`` (written after ``after``) durable
    before ``before``."""
    for w in calls:
        if w.name in WRITES and _is_wal(w.fd) and w.entry > after and key in w.data:
            assert w.fd is not None
            sync = _synced_after(calls, w.fd, w.exit, before)
            if sync is not None:
                return sync
    return None


def check(calls: Sequence[Call], expects: Sequence[Expect]) -> list[Verdict]:
    """One verdict per expected message; an empty ``problems`` list means it was durable (by
    the rule in the module docstring) before it was acknowledged."""
    verdicts = []
    for exp in expects:
        v = Verdict(exp.marker)
        verdicts.append(v)
        rx = _first(c for c in calls if c.name in READS and exp.marker in c.data)
        if rx is None or rx.fd is None:
            v.problems.append("the server never read this message")
            continue
        reply = _first(c for c in calls if c.name in WRITES and c.fd == rx.fd and c.entry > rx.exit)
        if reply is None:
            v.problems.append("no reply was written on its connection")
            continue
        v.reply_line = reply.entry
        if re.match(exp.reply, reply.data) is None:
            v.problems.append(f"the reply was {reply.data[:60]!r}, not {exp.reply!r}")
            continue
        before = reply.entry
        blob_write = _first(
            c
            for c in calls
            if c.name in WRITES
            and c.fd is not None
            and "/blobs/tmp/" in c.fd
            and c.entry > rx.entry
            and exp.marker in c.data
        )
        key = exp.marker
        if blob_write is not None:
            v.large = True
            assert blob_write.fd is not None
            tmp = blob_write.fd
            if _synced_after(calls, tmp, blob_write.exit, before) is None:
                v.problems.append(f"blob file {tmp} not fsynced before the reply")
            ren = _first(
                c
                for c in calls
                if c.name in RENAMES and c.ok and tmp.encode() in c.strings and c.exit < before
            )
            if ren is None:
                v.problems.append(f"blob file {tmp} not renamed into place before the reply")
                continue
            final = ren.strings[-1].decode("utf-8", "surrogateescape")
            if _synced_after(calls, tmp, blob_write.exit, ren.entry) is None:
                v.problems.append("the blob file was renamed before its fsync returned")
            parent = os.path.dirname(final)
            if _synced_after(calls, parent, ren.exit, before) is None:
                v.problems.append(f"directory {parent} not fsynced after the rename")
            for mk in calls:
                if mk.name in MKDIRS and mk.ok and mk.exit < ren.entry and mk.strings:
                    made = mk.strings[-1].decode("utf-8", "surrogateescape")
                    if final.startswith(made + "/"):
                        up = os.path.dirname(made)
                        if _synced_after(calls, up, mk.exit, before) is None:
                            v.problems.append(f"directory {made} was created but {up} not fsynced")
            key = os.path.basename(final).encode()
        sync = _wal_durable(calls, key, rx.entry, before)
        if sync is None:
            v.problems.append(
                "no WAL write holding it was fsynced before the reply"
                if blob_write is None
                else "the blob's database row was not fsynced before the reply"
            )
        else:
            v.sync_line = sync.exit
    return verdicts

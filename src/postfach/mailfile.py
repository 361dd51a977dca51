"""Local mail file formats: Maildir names and flags, mbox framing and status headers (pure core).

Flags are IMAP system flag names (``\\Seen``...) plus keywords, so this module needs nothing
from the store; ``postfach.transfer`` maps them to ``Flag``.

* Maildir (https://cr.yp.to/proto/maildir.html): ``cur/<unique>:2,<flags>`` with the flags in
  ASCII order: D draft, F flagged, P passed (the ``$Forwarded`` keyword), R replied
  (``\\Answered``), S seen, T trashed (``\\Deleted``). Files use LF line ends.
* mbox (mboxrd, as qmail's and mutt's): each message follows a ``From sender date`` line and is
  followed by an empty line; body lines matching ``>*From `` get one more ``>``, so reading
  takes exactly one off again. Flags travel in ``Status:`` (R seen, O old) and ``X-Status:``
  (A answered, F flagged, T draft, D deleted) header fields, keywords in ``X-Keywords:`` (as
  Dovecot writes them). Those header fields are metadata: reading removes them from the
  message, writing adds them.
"""

from __future__ import annotations

import calendar
import datetime
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Final

__all__ = [
    "MboxMessage",
    "add_status_headers",
    "from_line",
    "from_line_date",
    "maildir_info",
    "maildir_parse_name",
    "mbox_entry",
    "mbox_quote",
    "mbox_unquote",
    "split_mbox",
    "strip_status_headers",
    "to_lf",
]

SEEN: Final = "\\Seen"
ANSWERED: Final = "\\Answered"
FLAGGED: Final = "\\Flagged"
DELETED: Final = "\\Deleted"
DRAFT: Final = "\\Draft"
FORWARDED: Final = "$Forwarded"

_MAILDIR_LETTERS: Final = {"D": DRAFT, "F": FLAGGED, "R": ANSWERED, "S": SEEN, "T": DELETED}
_MAILDIR_BY_FLAG: Final = {v: k for k, v in _MAILDIR_LETTERS.items()}
_X_STATUS_LETTERS: Final = {"A": ANSWERED, "F": FLAGGED, "T": DRAFT, "D": DELETED}
_X_STATUS_BY_FLAG: Final = {v: k for k, v in _X_STATUS_LETTERS.items()}
#: Header fields of mbox metadata, dropped when reading (Dovecot and UW-IMAP write them too).
_META_FIELDS: Final = frozenset(
    {"status", "x-status", "x-keywords", "x-uid", "x-imap", "x-imapbase"}
)
_DAYS: Final = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTHS: Final = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov",
                  "Dec")  # fmt: skip
_FROM_DATE: Final = re.compile(
    rb"(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun) +(Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) +"
    rb"(\d{1,2}) +(\d{1,2}):(\d{2})(?::(\d{2}))?(?: +[A-Z]{2,5}| +[+-]\d{4})? +(\d{4})"
)
_QUOTED_FROM: Final = re.compile(rb"^(>*From )", re.MULTILINE)
_UNQUOTE_FROM: Final = re.compile(rb"^>(>*From )", re.MULTILINE)


def to_lf(data: bytes) -> bytes:
    """CRLF -> LF (Maildir and mbox files use LF); a lone CR is left alone."""
    return data.replace(b"\r\n", b"\n") if b"\r\n" in data else data


# ---- Maildir --------------------------------------------------------------------------------


def maildir_parse_name(name: str) -> tuple[str, frozenset[str]]:
    """``1700000000.M1P2.host:2,FS`` -> ("1700000000.M1P2.host", {"\\Flagged", "\\Seen"}).

    Lower-case letters (Dovecot keywords, defined in a per-folder file) and unknown
    experimental info are ignored.
    """
    unique, sep, info = name.partition(":")
    flags: set[str] = set()
    if sep and info.startswith("2,"):
        for letter in info[2:]:
            if letter in _MAILDIR_LETTERS:
                flags.add(_MAILDIR_LETTERS[letter])
            elif letter == "P":
                flags.add(FORWARDED)
    return unique, frozenset(flags)


def maildir_info(flags: Iterable[str]) -> str:
    """The ``:2,`` info for these flags/keywords, letters in ASCII order."""
    letters = set()
    for f in flags:
        if f in _MAILDIR_BY_FLAG:
            letters.add(_MAILDIR_BY_FLAG[f])
        elif f.lower() == FORWARDED.lower():
            letters.add("P")
    return ":2," + "".join(sorted(letters))


# ---- mbox -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MboxMessage:
    sender: str  # from the "From " line
    date: int | None  # unix seconds (the line's date, read as UTC), None if unreadable
    data: bytes  # the message, unquoted, LF line ends, metadata fields still in place


def split_mbox(data: bytes) -> Iterator[MboxMessage]:
    """The messages of an mbox file. A message starts at a ``From `` line that begins the file
    or follows an empty line; the empty line before the next one is the separator and is not
    part of the message. Text before the first ``From `` line is ignored."""
    starts = [0] if data[:5] == b"From " else []
    starts += [m.start() + 2 for m in re.finditer(rb"\n\nFrom ", data)]
    for i, start in enumerate(starts):
        end = starts[i + 1] - 1 if i + 1 < len(starts) else len(data)
        chunk = data[start:end]
        nl = chunk.find(b"\n")
        if nl < 0:
            line, body = chunk, b""
        else:
            line, body = chunk[:nl], chunk[nl + 1 :]
        if i + 1 == len(starts) and body.endswith(b"\n\n"):
            body = body[:-1]  # the separator after the last message
        parts = line.split(None, 2)
        sender = parts[1].decode("utf-8", "replace") if len(parts) > 1 else "MAILER-DAEMON"
        yield MboxMessage(sender, from_line_date(line), mbox_unquote(body))


def from_line_date(line: bytes) -> int | None:
    m = _FROM_DATE.search(line)
    if m is None:
        return None
    month, day, hour, minute, second, year = m.groups()
    try:
        return calendar.timegm(
            (int(year), _MONTHS.index(month.decode()) + 1, int(day), int(hour), int(minute),
             int(second or 0), 0, 0, 0)
        )  # fmt: skip
    except (ValueError, OverflowError):
        return None


def from_line(sender: str, when: int) -> bytes:
    """``From sender Tue Jan  3 10:03:00 2023`` (asctime layout, UTC, English names)."""
    sender = re.sub(r"\s", "", sender) or "MAILER-DAEMON"
    t = datetime.datetime.fromtimestamp(max(0, when), datetime.UTC)
    return (
        f"From {sender} {_DAYS[t.weekday()]} {_MONTHS[t.month - 1]} {t.day:2d}"
        f" {t.hour:02d}:{t.minute:02d}:{t.second:02d} {t.year}\n"
    ).encode("utf-8", "surrogateescape")


def mbox_quote(data: bytes) -> bytes:
    """mboxrd: one more ``>`` before every line matching ``>*From ``."""
    return _QUOTED_FROM.sub(rb">\1", data)


def mbox_unquote(data: bytes) -> bytes:
    """mboxrd: one ``>`` less before every line matching ``>+From ``."""
    return _UNQUOTE_FROM.sub(rb"\1", data)


def mbox_entry(message: bytes, sender: str, when: int) -> bytes:
    """One message as it goes into an mbox file: From line, quoted LF text, empty line."""
    body = mbox_quote(to_lf(message))
    if not body.endswith(b"\n"):
        body += b"\n"
    return from_line(sender, when) + body + b"\n"


def _header_end(data: bytes) -> int:
    """Offset just after the header's last line (before the empty line), or len(data)."""
    if data.startswith((b"\n", b"\r\n")):
        return 0
    m = re.search(rb"\r?\n\r?\n", data)
    if m is None:
        return len(data)
    return m.start() + (2 if data[m.start()] == 0x0D else 1)


def _fields(header: bytes) -> list[tuple[str, bytes]]:
    """Header lines grouped into fields: (lower-case name, all its lines), in order."""
    fields: list[tuple[str, list[bytes]]] = []
    for line in header.splitlines(keepends=True):
        if line[:1] in (b" ", b"\t") and fields:  # a continuation line
            fields[-1][1].append(line)
            continue
        name, colon, _ = line.partition(b":")
        fields.append((name.strip().lower().decode("ascii", "replace") if colon else "", [line]))
    return [(name, b"".join(lines)) for name, lines in fields]


def strip_status_headers(data: bytes) -> tuple[bytes, frozenset[str]]:
    """Remove the mbox metadata fields from the header; return the flags they carried."""
    end = _header_end(data)
    fields = _fields(data[:end])
    if not any(name in _META_FIELDS for name, _ in fields):
        return data, frozenset()
    flags: set[str] = set()
    kept: list[bytes] = []
    for name, raw in fields:
        if name not in _META_FIELDS:
            kept.append(raw)
            continue
        text = raw.partition(b":")[2].decode("ascii", "replace").strip()
        if name == "status" and "R" in text:
            flags.add(SEEN)
        elif name == "x-status":
            flags.update(_X_STATUS_LETTERS[c] for c in text if c in _X_STATUS_LETTERS)
        elif name == "x-keywords":
            flags.update(k for k in text.replace(",", " ").split() if not k.startswith("\\"))
    return b"".join(kept) + data[end:], frozenset(flags)


def add_status_headers(data: bytes, flags: Iterable[str]) -> bytes:
    """Insert ``Status``/``X-Status``/``X-Keywords`` at the end of the header (LF text)."""
    wanted = set(flags)
    lines = []
    if SEEN in wanted:
        lines.append(b"Status: RO\n")
    x = "".join(sorted(c for f, c in _X_STATUS_BY_FLAG.items() if f in wanted))
    if x:
        lines.append(f"X-Status: {x}\n".encode())
    keywords = sorted(f for f in wanted if not f.startswith("\\"))
    if keywords:
        lines.append(("X-Keywords: " + " ".join(keywords) + "\n").encode())
    if not lines:
        return data
    end = _header_end(data)
    head = data[:end]
    if head and not head.endswith(b"\n"):
        head += b"\n"
    return head + b"".join(lines) + data[end:]

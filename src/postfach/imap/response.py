"""Serialisation helpers for IMAP server responses (pure core; RFC 9051 §4, §7, §9).

Everything that may end up as a literal returns ``bytes``; helpers whose output is always plain
ASCII atoms (``flag_list``, ``format_date_time``) return ``str``. ``untagged`` accepts either.

String choice (RFC 9051 §4.3): a quoted string when every octet may appear in one (no NUL, CR
or LF; 8-bit only when ``utf8=True``, i.e. IMAP4rev2 or UTF8=ACCEPT is in effect, and then only
valid UTF-8), otherwise a literal ``{n}``; data holding NUL becomes a literal8 ``~{n}``
(RFC 3516), which only BINARY[] responses may carry.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta, timezone
from typing import Final

from postfach.imap.utf7 import encode_mutf7

__all__ = [
    "MONTHS",
    "astring",
    "continuation",
    "date_time",
    "flag_list",
    "format_date_time",
    "literal",
    "literal_prefix",
    "mailbox_name",
    "nstring",
    "parse_date_time",
    "parse_date_time_offset",
    "quoted",
    "tagged",
    "untagged",
    "untagged_status",
]

MONTHS: Final = ("Jan", "Feb", "Mar", "Apr", "May", "Jun",
                 "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")  # fmt: skip
_MONTH_NUMBER: Final = {m.upper(): i + 1 for i, m in enumerate(MONTHS)}

# RFC 9051 §9 ATOM-CHAR plus "]" (ASTRING-CHAR): anything but atom-specials.
_ATOM: Final = re.compile(rb"[!#$&'+,\-./0-9:;<=>?@A-Z\[\]^_`a-z|}~]+")
_UNSAFE_7BIT: Final = re.compile(rb"[\x00\r\n\x80-\xff]")
_UNSAFE_8BIT: Final = re.compile(rb"[\x00\r\n]")
_DEFAULT_TEXT: Final = {"OK": "completed", "NO": "failed", "BAD": "invalid command"}


def _as_bytes(s: str | bytes) -> bytes:
    return s.encode("utf-8") if isinstance(s, str) else bytes(s)


def _valid_utf8(b: bytes) -> bool:
    try:
        b.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def literal_prefix(size: int, *, binary: bool = False) -> bytes:
    """``{size}`` CRLF (``~{size}`` CRLF for a literal8): send the octets right after it."""
    return b"%s{%d}\r\n" % (b"~" if binary else b"", size)


def literal(data: bytes, *, binary: bool = False) -> bytes:
    """``{n}`` CRLF data; a literal8 ``~{n}`` when ``binary`` or when ``data`` holds a NUL."""
    return literal_prefix(len(data), binary=binary or b"\x00" in data) + data


def quoted(s: str | bytes, *, utf8: bool = False) -> bytes:
    """A quoted string when safe, else a literal (RFC 9051 §4.3)."""
    b = _as_bytes(s)
    unsafe = _UNSAFE_8BIT if utf8 else _UNSAFE_7BIT
    if unsafe.search(b) or (utf8 and not b.isascii() and not _valid_utf8(b)):
        return literal(b)
    return b'"' + b.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'


def astring(s: str | bytes, *, utf8: bool = False) -> bytes:
    """An atom when ``s`` is one (and not ``NIL``, to avoid any ambiguity), else ``quoted``."""
    b = _as_bytes(s)
    if _ATOM.fullmatch(b) and b.upper() != b"NIL":
        return b
    return quoted(b, utf8=utf8)


def nstring(data: str | bytes | None, *, utf8: bool = False) -> bytes:
    """``NIL`` for None, else ``quoted`` (a quoted string or a literal)."""
    return b"NIL" if data is None else quoted(data, utf8=utf8)


def mailbox_name(name: str, utf8_enabled: bool) -> bytes:
    """A mailbox name for LIST/STATUS/... responses (RFC 9051 §5.1).

    Modified UTF-7 unless UTF-8 is enabled (IMAP4rev2 or UTF8=ACCEPT); ``INBOX`` as an atom.
    """
    if name.isascii() and name.upper() == "INBOX":
        return b"INBOX"
    wire = name if utf8_enabled else encode_mutf7(name)
    return astring(wire, utf8=utf8_enabled)


def flag_list(flags: Iterable[str]) -> str:
    """``(\\Seen $Forwarded)``; flags are atoms already validated by the parser or the store."""
    return "(" + " ".join(flags) + ")"


def _clean(text: str) -> str:
    if "\r" in text or "\n" in text:
        text = text.replace("\r", " ").replace("\n", " ")
    return text


def _status_line(prefix: str, status: str, code: str | None, text: str) -> bytes:
    status = status.upper()
    text = _clean(text) or _DEFAULT_TEXT.get(status, "completed")
    code_part = f"[{_clean(code)}] " if code else ""
    return f"{prefix} {status} {code_part}{text}\r\n".encode()


def tagged(tag: str, status: str, code: str | None = None, text: str = "") -> bytes:
    """``tag OK [CODE] text`` CRLF (RFC 9051 §7.1). ``code`` goes inside the brackets as is,
    e.g. ``"TRYCREATE"`` or ``"COPYUID 7 1:3 10:12"``. Empty text gets a short default."""
    return _status_line(tag, status, code, text)


def untagged_status(status: str, code: str | None = None, text: str = "") -> bytes:
    """``* OK [CODE] text`` CRLF (also ``* NO``, ``* BAD``, ``* BYE``, ``* PREAUTH``)."""
    return _status_line("*", status, code, text)


def untagged(text: str | bytes) -> bytes:
    """``* text`` CRLF. ``text`` is sent as is: it may hold literals (use ``bytes`` then)."""
    return b"* " + _as_bytes(text) + b"\r\n"


def continuation(text: str | bytes = "") -> bytes:
    """``+ text`` CRLF (RFC 9051 §7.6); ``+ `` CRLF for an empty SASL challenge."""
    return b"+ " + _as_bytes(text) + b"\r\n"


# ---- date-time (RFC 9051 §9 date-time) ------------------------------------------------------


def format_date_time(unix_seconds: int, offset_minutes: int = 0) -> str:
    """``"01-Jan-2024 10:00:00 +0000"``, the double quotes included (INTERNALDATE, SAVEDATE).

    ``offset_minutes`` is the zone to show the time in (east of UTC positive).
    """
    tz = timezone(timedelta(minutes=offset_minutes))
    d = datetime.fromtimestamp(unix_seconds, tz)
    sign = "-" if offset_minutes < 0 else "+"
    hh, mm = divmod(abs(offset_minutes), 60)
    return (
        f'"{d.day:02d}-{MONTHS[d.month - 1]}-{d.year:04d} '
        f'{d.hour:02d}:{d.minute:02d}:{d.second:02d} {sign}{hh:02d}{mm:02d}"'
    )


def date_time(unix_seconds: int, offset_minutes: int = 0) -> bytes:
    """``format_date_time`` as bytes, ready to join into a response."""
    return format_date_time(unix_seconds, offset_minutes).encode("ascii")


_DATE_TIME: Final = re.compile(
    r'"?[ ]?([0-9]{1,2})-([A-Za-z]{3})-([0-9]{4}) '
    r'([0-9]{2}):([0-9]{2}):([0-9]{2}) ([+-])([0-9]{2})([0-9]{2})"?'
)


def parse_date_time_offset(s: str) -> tuple[int, int]:
    """Parse an IMAP date-time (APPEND) into ``(unix_seconds, offset_minutes)``.

    Accepts the form with or without its double quotes, and a day of one or two digits (or a
    space-padded one). ``ValueError`` when malformed or not a real date.
    """
    m = _DATE_TIME.fullmatch(s)
    if m is None or (s.startswith('"') != s.endswith('"')) or len(s) == 1:
        raise ValueError(f"invalid date-time {s!r}")
    day, mon, year, hh, mi, ss, sign, zh, zm = m.groups()
    month = _MONTH_NUMBER.get(mon.upper())
    if month is None:
        raise ValueError(f"invalid month {mon!r}")
    if int(zm) > 59:
        raise ValueError(f"invalid zone {sign}{zh}{zm}")
    offset = (int(zh) * 60 + int(zm)) * (-1 if sign == "-" else 1)
    second = min(int(ss), 59)  # a leap second is taken as :59
    try:
        tz = timezone(timedelta(minutes=offset))
        d = datetime(int(year), month, int(day), int(hh), int(mi), second, tzinfo=tz)
    except ValueError as e:
        raise ValueError(f"invalid date-time {s!r}: {e}") from None
    return int((d - datetime(1970, 1, 1, tzinfo=UTC)).total_seconds()), offset


def parse_date_time(s: str) -> int:
    """Parse an IMAP date-time such as ``"01-Jan-2024 10:00:00 +0000"`` into Unix seconds."""
    return parse_date_time_offset(s)[0]

"""Maildir names, flags and message identities for ``postfach sync`` (pure core).

Folders (Maildir++, as Dovecot, Courier and mbsync ``SubFolders Maildir++`` lay them out): INBOX
is the Maildir itself, every other folder a directory ``.Level1.Level2`` beside ``cur``, ``new``
and ``tmp``. IMAP names are handled with ``/`` between levels; a ``.`` or ``%`` inside a level
is written ``%2E`` / ``%25`` so every name maps to exactly one directory and back.

Files (https://cr.yp.to/proto/maildir.html): ``<unique>:2,<letters>``; the letters synced are
``D F R S T`` = ``\\Draft \\Flagged \\Answered \\Seen \\Deleted`` (RFC 9051 §2.3.2). Other
letters (``P`` passed, Dovecot's lower-case keywords) are kept as they are when a file is
renamed. Files are stored with LF line ends and sent with CRLF.

Identity: a message's *ident* is ``<size with CRLF line ends>:<Message-ID field>``. Both sides
can tell it without moving the body: the server by ``RFC822.SIZE`` and
``BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)]``, the Maildir by reading the file. It pairs a new
message on one side with a new message on the other side (after a crash between storing and
recording, after a UIDVALIDITY change, for a Maildir that already holds the mail) so neither is
copied a second time.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable
from typing import Final

__all__ = [
    "IMAP_FLAG",
    "INBOX",
    "LETTER",
    "SYNCED",
    "Flags",
    "crlf_size",
    "dir_for_folder",
    "flags_from_imap",
    "flags_of",
    "flags_of_name",
    "folder_for_dir",
    "ident",
    "imap_flag_list",
    "message_id",
    "split_filename",
    "to_crlf",
    "to_lf",
    "with_flags",
]

INBOX: Final = "INBOX"

#: A set of Maildir flag letters, only ever from SYNCED.
Flags = frozenset[str]

IMAP_FLAG: Final = {"D": "\\Draft", "F": "\\Flagged", "R": "\\Answered", "S": "\\Seen",
                    "T": "\\Deleted"}  # fmt: skip
LETTER: Final = {v.lower(): k for k, v in IMAP_FLAG.items()}
SYNCED: Final = frozenset(IMAP_FLAG)

_NONE: Final[Flags] = frozenset()
_BARE_LF: Final = re.compile(rb"(?<!\r)\n")
_HEADER_END: Final = re.compile(rb"\r?\n\r?\n")


# ---- folders --------------------------------------------------------------------------------


def _escape(level: str) -> str:
    return level.replace("%", "%25").replace(".", "%2E")


def _unescape(level: str) -> str:
    return re.sub(r"%(2[5Ee])", lambda m: "%" if m.group(1) == "25" else ".", level)


def dir_for_folder(name: str) -> str:
    """``INBOX`` → ``""`` (the Maildir itself); ``Work/2024`` → ``.Work.2024``."""
    if name == INBOX:
        return ""
    levels = name.split("/")
    if any(not lv for lv in levels):
        raise ValueError(f"folder name {name!r} has an empty level")
    return "." + ".".join(_escape(lv) for lv in levels)


def folder_for_dir(dirname: str) -> str | None:
    """The folder a Maildir++ directory holds, or None if ``dirname`` is not a folder name."""
    if not dirname.startswith(".") or dirname in (".", ".."):
        return None
    levels = dirname[1:].split(".")
    if any(not lv for lv in levels):
        return None
    name = "/".join(_unescape(lv) for lv in levels)
    return None if name.upper() == INBOX else name


# ---- files and flags ------------------------------------------------------------------------


def split_filename(filename: str) -> tuple[str, str]:
    """``1700.M1P2.host:2,FS`` → ``("1700.M1P2.host", "FS")``; no info → letters ``""``."""
    unique, sep, info = filename.partition(":")
    if sep and info.startswith("2,"):
        return unique, info[2:]
    return unique, ""


@functools.lru_cache(maxsize=1024)
def flags_of(letters: str) -> Flags:
    """The synced flags among Maildir info letters (cached: there are few distinct ones)."""
    return frozenset(c for c in letters if c in SYNCED)


def flags_of_name(filename: str) -> Flags:
    """The synced flags of a file name, ``sub/`` prefix or not: ``cur/u:2,FS`` → {F, S}."""
    i = filename.find(":")
    if i < 0 or not filename.startswith("2,", i + 1):
        return _NONE
    return flags_of(filename[i + 3 :])


def with_flags(unique: str, old_letters: str, flags: Flags) -> str:
    """The file name for ``unique`` with ``flags``; other letters of the old name are kept."""
    kept = {c for c in old_letters if c not in SYNCED and c.isalpha()}
    return f"{unique}:2,{''.join(sorted(kept | set(flags)))}"


def flags_from_imap(flags: Iterable[object]) -> Flags:
    """IMAP flag atoms → letters; keywords and ``\\Recent`` are not synced."""
    return frozenset(LETTER[f.lower()] for f in flags if isinstance(f, str) and f.lower() in LETTER)


def imap_flag_list(flags: Flags) -> bytes:
    return ("(" + " ".join(IMAP_FLAG[c] for c in sorted(flags)) + ")").encode("ascii")


# ---- line ends and identity -----------------------------------------------------------------


def to_lf(data: bytes) -> bytes:
    """CRLF → LF for the Maildir file; a lone CR stays."""
    return data.replace(b"\r\n", b"\n") if b"\r" in data else data


def to_crlf(data: bytes) -> bytes:
    """LF → CRLF for the wire (RFC 5322 §2.3); existing CRLFs stay."""
    return _BARE_LF.sub(b"\r\n", data)


def crlf_size(data: bytes) -> int:
    """``len(to_crlf(data))`` without building it."""
    return len(data) + data.count(b"\n") - data.count(b"\r\n")


def header_of(data: bytes) -> bytes:
    m = _HEADER_END.search(data)
    return data if m is None else data[: m.start()]


def message_id(header: bytes) -> str:
    """The (first) Message-ID field's value, unfolded, spaces collapsed; ``""`` if none.

    ``header`` may be a whole message, its header, or what ``HEADER.FIELDS (MESSAGE-ID)``
    returns.
    """
    value: list[bytes] | None = None
    for raw in header_of(data=header).split(b"\n"):
        line = raw.rstrip(b"\r")
        if value is not None:
            if line[:1] in (b" ", b"\t"):
                value.append(line)
                continue
            break
        name, colon, rest = line.partition(b":")
        if colon and name.strip().lower() == b"message-id":
            value = [rest]
    if value is None:
        return ""
    return " ".join(b" ".join(value).decode("utf-8", "replace").split())


def ident(size: int, mid: str) -> str:
    return f"{size}:{mid}"

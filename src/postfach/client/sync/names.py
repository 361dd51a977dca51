"""Maildir names, flags and message identities for ``postfach sync`` (pure core).

Folders (Maildir++, as Dovecot, Courier and mbsync ``SubFolders Maildir++`` lay them out): INBOX
is the Maildir itself, every other folder a directory ``.Level1.Level2`` beside ``cur``, ``new``
and ``tmp``. IMAP names are handled with ``/`` between levels; a ``.`` or ``%`` inside a level
is written ``%2E`` / ``%25`` so every name maps to exactly one directory and back.

Files (https://cr.yp.to/proto/maildir.html): ``<unique>:2,<letters>``; the letters synced are
``D F R S T`` = ``\\Draft \\Flagged \\Answered \\Seen \\Deleted`` (RFC 9051 §2.3.2). Other
letters (``P`` passed, Dovecot's lower-case keywords) are kept as they are when a file is
renamed. Files are stored with LF line ends and sent with CRLF.

Keywords (``$Forwarded``, ``$Junk``, ``Work``): Dovecot's convention, which neomutt and Dovecot
itself read. Each folder directory has a ``dovecot-keywords`` file, one ``<n> <keyword>`` line
per keyword, ``n`` from 0 to 25 standing for the letters ``a`` to ``z`` in file names. So a
folder can hold at most 26 keywords locally; others stay on the server only (`Keywords`).
In a ``Flags`` set the system flags are their letters, keywords their names.

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
    "KEYWORD_FILE",
    "LETTER",
    "SYNCED",
    "Flags",
    "Keywords",
    "crlf_size",
    "dir_for_folder",
    "flags_from_imap",
    "flags_of",
    "flags_of_name",
    "folder_for_dir",
    "ident",
    "imap_flag_list",
    "keywords_of",
    "message_id",
    "split_filename",
    "to_crlf",
    "to_lf",
    "with_flags",
]

INBOX: Final = "INBOX"

#: The synced flags of a message: letters from SYNCED for system flags, and keyword names.
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
    """IMAP flag atoms → letters and keyword names; ``\\Recent`` and other system flags that
    Maildir cannot carry are dropped, and so is a one-letter keyword that would read as a
    system flag letter (it stays on the server)."""
    out: set[str] = set()
    for f in flags:
        if not isinstance(f, str) or not f:
            continue
        if f[0] == "\\":
            letter = LETTER.get(f.lower())
            if letter:
                out.add(letter)
        elif _KEYWORD.fullmatch(f) and f not in SYNCED:
            out.add(f)
    return frozenset(out)


def imap_flag_list(flags: Flags) -> bytes:
    words = [IMAP_FLAG[c] for c in sorted(flags & SYNCED)] + sorted(flags - SYNCED)
    return ("(" + " ".join(words) + ")").encode("utf-8")


def keywords_of(flags: Flags) -> frozenset[str]:
    return frozenset(f for f in flags if f not in SYNCED)


# ---- keywords (Dovecot's dovecot-keywords) --------------------------------------------------

KEYWORD_FILE: Final = "dovecot-keywords"
KEYWORD_LETTERS: Final = "abcdefghijklmnopqrstuvwxyz"
#: An IMAP flag-keyword atom (RFC 9051: no specials, no ``\\``).
_KEYWORD: Final = re.compile(r"[!#$&'+,\-./0-9:;<=>?@A-Z^_`a-z|~]+")


class Keywords:
    """One folder's letter ↔ keyword table. Keywords compare case-insensitively (RFC 9051
    §2.3.2); a name keeps the spelling it was first written with."""

    def __init__(self, entries: dict[int, str] | None = None) -> None:
        self.by_index: dict[int, str] = dict(entries or {})
        self._by_name = {n.lower(): i for i, n in self.by_index.items()}

    @classmethod
    def parse(cls, text: str) -> Keywords:
        """Lines ``<0-25> <keyword>``; malformed lines are ignored, as Dovecot does."""
        entries: dict[int, str] = {}
        for line in text.splitlines():
            num, _, name = line.partition(" ")
            name = name.strip()
            if num.isdigit() and int(num) < len(KEYWORD_LETTERS) and _KEYWORD.fullmatch(name):
                entries.setdefault(int(num), name)
        return cls(entries)

    def format(self) -> str:
        return "".join(f"{i} {n}\n" for i, n in sorted(self.by_index.items()))

    def letter(self, name: str) -> str | None:
        i = self._by_name.get(name.lower())
        return None if i is None else KEYWORD_LETTERS[i]

    def name(self, letter: str) -> str | None:
        i = KEYWORD_LETTERS.find(letter)
        return self.by_index.get(i) if i >= 0 else None

    def canonical(self, name: str) -> str:
        """The table's spelling of ``name`` (or ``name`` when it is not in the table)."""
        i = self._by_name.get(name.lower())
        return name if i is None else self.by_index[i]

    def assign(self, name: str) -> bool:
        """Give ``name`` a letter if it has none and one is free; False if the table is full."""
        if name.lower() in self._by_name:
            return True
        free = [i for i in range(len(KEYWORD_LETTERS)) if i not in self.by_index]
        if not free:
            return False
        self.by_index[free[0]] = name
        self._by_name[name.lower()] = free[0]
        return True

    def flags_of_letters(self, letters: str) -> Flags:
        """System flag letters and the keywords their letters stand for."""
        out = {c for c in letters if c in SYNCED}
        for c in letters:
            if "a" <= c <= "z":
                n = self.name(c)
                if n is not None:
                    out.add(n)
        return frozenset(out)

    def filename(self, unique: str, old_letters: str, flags: Flags) -> str:
        """``with_flags`` with keywords: letters of the table are replaced, other letters of
        the old name (``P``, letters no table entry explains) are kept."""
        kept = {c for c in old_letters if c not in SYNCED and c.isalpha()
                and not ("a" <= c <= "z" and self.name(c) is not None)}  # fmt: skip
        letters = kept | {c for c in flags if c in SYNCED}
        for f in flags:
            if f not in SYNCED:
                lt = self.letter(f)
                if lt is not None:
                    letters.add(lt)
        return f"{unique}:2,{''.join(sorted(letters))}"


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

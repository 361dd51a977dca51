"""IMAP server responses, client side, sans I/O (pure core; RFC 9051 §7, §9; RFC 7162).

The reader in `postfach.client.imap` collects one response as *segments* and *literals*: the
text of each line, and the octets of the literal announced at the end of that line
(``{n}`` or ``~{n}``). ``parse_response`` turns that into one of:

``Tagged``     ``a1 OK [APPENDUID 7 12] done``: status, response code, text.
``Untagged``   ``* OK [UIDVALIDITY 7] ...`` / ``* BYE ...``: a status response without a tag.
``Data``       ``* 3 FETCH (...)``, ``* LIST (...) "/" INBOX``, ``* VANISHED (EARLIER) 1:3``:
               the name, the number before it (if any) and the arguments as tokens.
``Continue``   ``+ text``.

Tokens: an atom is a ``str`` (``"\\\\Seen"``, ``"12"``, ``"BODY[HEADER.FIELDS (MESSAGE-ID)]"``:
a section in brackets belongs to its atom), a quoted string or a literal is ``bytes``, ``NIL``
is ``None`` and a parenthesised list is a ``list``. Numbers stay atoms; ``number`` converts.

Why not the stdlib ``imaplib``: it keeps untagged responses in a dict of lists keyed by name, so
their order (VANISHED before the FETCH of the same SELECT) and the tie between a FETCH and its
literals are lost, and its FETCH results are a flat list of strings and tuples that every caller
has to re-parse. A tokenizer over whole responses is about 150 lines and does not lose anything.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Final, TypeAlias

__all__ = [
    "Continue",
    "Data",
    "ProtocolError",
    "Response",
    "Tagged",
    "Token",
    "Untagged",
    "fetch_items",
    "literal_size",
    "number",
    "parse_response",
    "text",
    "tokenize",
]

Token: TypeAlias = str | bytes | list["Token"] | None

STATUS_WORDS: Final = frozenset({"OK", "NO", "BAD", "BYE", "PREAUTH"})

#: A literal announced at the end of a line: ``{12}``, ``~{12}`` (literal8, RFC 3516).
_LITERAL_AT_END: Final = re.compile(rb"~?\{([0-9]{1,10})\}\Z")
_TOKEN: Final = re.compile(
    rb"[ ]*(?:"
    rb"(?P<open>\()|(?P<close>\))"
    rb'|"(?P<quoted>(?:[^"\\]|\\.)*)"'
    rb"|(?P<literal>~?\{[0-9]{1,10}\}\Z)"
    rb"|(?P<atom>(?:[^\x00-\x20()\"\[\]{]|\[[^\]]*\])+)"
    rb")"
)
_UNESCAPE: Final = re.compile(rb"\\(.)")


class ProtocolError(Exception):
    """The server sent something this client cannot parse (a remote error)."""


@dataclass(frozen=True, slots=True)
class Tagged:
    tag: str
    status: str  # OK, NO, BAD
    code: str | None = None  # "APPENDUID", "HIGHESTMODSEQ", ... (upper case)
    code_args: list[Token] = field(default_factory=list)
    text: str = ""


@dataclass(frozen=True, slots=True)
class Untagged:
    status: str  # OK, NO, BAD, BYE, PREAUTH
    code: str | None = None
    code_args: list[Token] = field(default_factory=list)
    text: str = ""


@dataclass(frozen=True, slots=True)
class Data:
    name: str  # FETCH, EXISTS, LIST, STATUS, VANISHED, CAPABILITY, ... (upper case)
    number: int | None
    args: list[Token]


@dataclass(frozen=True, slots=True)
class Continue:
    text: bytes


Response: TypeAlias = Tagged | Untagged | Data | Continue


def literal_size(line: bytes) -> int | None:
    """The size of the literal announced at the end of ``line`` (no CRLF), else None."""
    m = _LITERAL_AT_END.search(line)
    return int(m.group(1)) if m else None


class _Cursor:
    """Walks segments and literals: a literal marker ends its segment."""

    def __init__(self, segments: Sequence[bytes], literals: Sequence[bytes], pos: int) -> None:
        if len(literals) != len(segments) - 1:
            raise ProtocolError("literal count does not match the segments")
        self.segments = segments
        self.literals = literals
        self.i = 0
        self.pos = pos

    def tokens(self, depth: int = 0) -> list[Token]:
        out: list[Token] = []
        while True:
            seg = self.segments[self.i]
            m = _TOKEN.match(seg, self.pos)
            if m is None or (m.end() == self.pos and self.pos < len(seg)):
                if self.pos >= len(seg) or not seg[self.pos :].strip():
                    if depth:
                        raise ProtocolError("unbalanced parenthesis")
                    return out
                raise ProtocolError(f"cannot parse {seg[self.pos : self.pos + 30]!r}")
            self.pos = m.end()
            if m.group("open") is not None:
                out.append(self.tokens(depth + 1))
            elif m.group("close") is not None:
                if not depth:
                    raise ProtocolError("unbalanced parenthesis")
                return out
            elif (q := m.group("quoted")) is not None:
                out.append(_UNESCAPE.sub(rb"\1", q) if b"\\" in q else q)
            elif m.group("literal") is not None:
                if self.i >= len(self.literals):
                    raise ProtocolError("literal marker without literal")
                out.append(self.literals[self.i])
                self.i += 1
                self.pos = 0
            elif (a := m.group("atom")) is not None and a:
                atom = a.decode("utf-8", "replace")
                out.append(None if atom.upper() == "NIL" else atom)
            elif self.pos >= len(seg):
                if depth:
                    raise ProtocolError("unbalanced parenthesis")
                return out


def tokenize(
    segments: Sequence[bytes], literals: Sequence[bytes] = (), pos: int = 0
) -> list[Token]:
    """The tokens of a response from offset ``pos`` of its first segment."""
    return _Cursor(segments, literals, pos).tokens()


def _split_word(seg: bytes, pos: int) -> tuple[bytes, int]:
    end = seg.find(b" ", pos)
    if end < 0:
        return seg[pos:], len(seg)
    return seg[pos:end], end + 1


def _status(
    segments: Sequence[bytes], literals: Sequence[bytes], pos: int
) -> tuple[str | None, list[Token], str]:
    """``[CODE args] text`` starting at ``pos`` (RFC 9051 §7.1 resp-text)."""
    seg = segments[0]
    code: str | None = None
    args: list[Token] = []
    if seg[pos : pos + 1] == b"[":
        end = _code_end(seg, pos)
        inner = seg[pos + 1 : end]
        name, rest = _split_word(inner, 0)
        code = name.decode("ascii", "replace").upper()
        if rest < len(inner):
            try:
                args = tokenize([inner[rest:]])
            except ProtocolError:
                args = [inner[rest:].decode("utf-8", "replace")]
        pos = end + 1
        if seg[pos : pos + 1] == b" ":
            pos += 1
    body = seg[pos:]
    for lit, more in zip(literals, segments[1:], strict=False):  # rare: text with literals
        body += lit + more
    return code, args, body.decode("utf-8", "replace")


def _code_end(seg: bytes, start: int) -> int:
    """Index of the ``]`` closing the response code at ``start`` (quoted strings skipped)."""
    i, n, quoted = start + 1, len(seg), False
    while i < n:
        c = seg[i]
        if quoted:
            if c == 0x5C:  # backslash
                i += 1
            elif c == 0x22:
                quoted = False
        elif c == 0x22:
            quoted = True
        elif c == 0x5D:  # ]
            return i
        i += 1
    raise ProtocolError("unterminated response code")


def parse_response(segments: Sequence[bytes], literals: Sequence[bytes] = ()) -> Response:
    """One whole server response (its lines without CRLF, and its literals)."""
    if not segments:
        raise ProtocolError("empty response")
    seg = segments[0]
    if seg.startswith(b"+"):
        return Continue(seg[2:] if seg.startswith(b"+ ") else seg[1:])
    tag_b, pos = _split_word(seg, 0)
    word, after = _split_word(seg, pos)
    if not tag_b or not word:
        raise ProtocolError(f"malformed response {seg[:40]!r}")
    upper = word.upper().decode("ascii", "replace")
    if tag_b != b"*":
        if upper not in ("OK", "NO", "BAD"):
            raise ProtocolError(f"malformed tagged response {seg[:40]!r}")
        code, args, txt = _status(segments, literals, after)
        return Tagged(tag_b.decode("ascii", "replace"), upper, code, args, txt)
    if upper in STATUS_WORDS:
        code, args, txt = _status(segments, literals, after)
        return Untagged(upper, code, args, txt)
    if word.isdigit():
        name, after2 = _split_word(seg, after)
        if not name:
            raise ProtocolError(f"malformed response {seg[:40]!r}")
        return Data(
            name.upper().decode("ascii", "replace"),
            int(word),
            tokenize(segments, literals, after2) if after2 < len(seg) or literals else [],
        )
    return Data(upper, None, tokenize(segments, literals, after) if after else [])


# ---- helpers for callers ----------------------------------------------------------------------


def number(tok: Token) -> int:
    """An atom that is a number; ProtocolError otherwise."""
    if isinstance(tok, str) and tok.isdigit():
        return int(tok)
    raise ProtocolError(f"expected a number, got {tok!r}")


def text(tok: Token) -> str:
    """An atom or string as text (UTF-8, undecodable octets replaced); ``""`` for NIL."""
    if tok is None:
        return ""
    if isinstance(tok, bytes):
        return tok.decode("utf-8", "replace")
    if isinstance(tok, str):
        return tok
    raise ProtocolError(f"expected a string, got a list {tok!r:.40}")


def pairs(items: Sequence[Token]) -> Iterator[tuple[str, Token]]:
    it = iter(items)
    for key in it:
        value = next(it, None)
        if not isinstance(key, str):
            raise ProtocolError(f"expected an item name, got {key!r:.40}")
        yield key.upper(), value


def fetch_items(data: Data) -> dict[str, Token]:
    """``* 3 FETCH (UID 7 FLAGS (\\Seen))`` → ``{"UID": "7", "FLAGS": ["\\Seen"]}``.

    Item names are upper-cased; ``BODY[]<0>`` style names keep their section as sent.
    """
    if not data.args or not isinstance(data.args[0], list):
        raise ProtocolError("FETCH without a parenthesised list")
    return dict(pairs(data.args[0]))

"""Header syntax shared by the MIME modules (pure core): fields, structured values, charsets.

Private to `postfach.mime`; `postfach.mime.structure` is the public interface.
"""

from __future__ import annotations

import re
from typing import Final
from urllib.parse import unquote_to_bytes


def to_str(raw: bytes) -> str:
    """Header octets as text; non-UTF-8 octets survive as surrogate escapes."""
    return raw.decode("utf-8", "surrogateescape")


def to_bytes(text: str) -> bytes:
    """Inverse of `to_str`."""
    return text.encode("utf-8", "surrogateescape")


def optional(raw: bytes | None) -> str | None:
    return None if raw is None else to_str(raw)


# --------------------------------------------------------------------------------------------
# Header fields
# --------------------------------------------------------------------------------------------

_FIELD_NAME = re.compile(rb"[\x21-\x39\x3b-\x7e]+")

MIME_FIELDS: Final = frozenset(
    {
        "content-type",
        "content-transfer-encoding",
        "content-id",
        "content-description",
        "content-md5",
        "content-disposition",
        "content-language",
        "content-location",
    }
)


def header_end(data: bytes, start: int, end: int) -> int:
    """Offset just after the empty line that ends the header starting at ``start``, else end."""
    if start >= end:
        return end
    if data.startswith(b"\r\n", start, end):
        return start + 2
    if data.startswith(b"\n", start, end):
        return start + 1
    crlf = data.find(b"\n\r\n", start, end)
    lf = data.find(b"\n\n", start, end if crlf < 0 else crlf + 1)
    if lf >= 0:
        return lf + 2
    if crlf >= 0:
        return crlf + 3
    return end


def iter_fields(data: bytes, start: int, end: int) -> list[tuple[bytes, bytes]]:
    """The header fields in [start, end) as (name, unfolded value), in order.

    Lines that are neither a field nor a continuation are skipped, as is a continuation line
    without a field before it.
    """
    out: list[tuple[bytes, bytes]] = []
    name: bytes | None = None
    pieces: list[bytes] = []
    for line in data[start:end].split(b"\n"):
        if line[:1] in (b" ", b"\t"):
            if name is not None:
                pieces.append(line)
            continue
        if name is not None:
            out.append((name, _unfold(pieces)))
            name = None
        colon = line.find(b":")
        if colon <= 0:
            continue
        raw = line[:colon].rstrip(b" \t")
        if not _FIELD_NAME.fullmatch(raw):
            continue
        name = raw
        pieces = [line[colon + 1 :]]
    if name is not None:
        out.append((name, _unfold(pieces)))
    return out


def _unfold(pieces: list[bytes]) -> bytes:
    if len(pieces) == 1:
        return pieces[0].strip(b" \t\r")
    return b"".join(p[:-1] if p.endswith(b"\r") else p for p in pieces).strip(b" \t\r")


_FIELD_PATTERNS: dict[frozenset[str], re.Pattern[bytes]] = {}


def _field_pattern(wanted: frozenset[str]) -> re.Pattern[bytes]:
    pattern = _FIELD_PATTERNS.get(wanted)
    if pattern is None:
        names = b"|".join(re.escape(n.encode("ascii")) for n in sorted(wanted, key=len)[::-1])
        # A field line of a wanted name and its continuation lines; '.' does not match LF. The
        # leading LF (rather than '^' in MULTILINE mode) lets the regex engine skip ahead fast.
        pattern = re.compile(rb"\n(" + names + rb")[ \t]*:(.*(?:\n[ \t].*)*)", re.I)
        _FIELD_PATTERNS[wanted] = pattern
    return pattern


def field_map(data: bytes, start: int, end: int, wanted: frozenset[str]) -> dict[str, bytes]:
    """First occurrence of each wanted field (lower-case name -> unfolded value)."""
    out: dict[str, bytes] = {}
    for m in _field_pattern(wanted).finditer(b"\n" + data[start:end]):
        name = m.group(1).decode("ascii").lower()
        if name not in out:
            value = m.group(2)
            if b"\n" in value:
                value = value.replace(b"\r\n", b"").replace(b"\n", b"")
            out[name] = value.strip(b" \t\r")
    return out


# --------------------------------------------------------------------------------------------
# Structured MIME header values (RFC 2045 §5.1, RFC 2183, RFC 2231)
# --------------------------------------------------------------------------------------------

_WSP = re.compile(r"[ \t\r\n]*")
_COMMENT_TEXT = re.compile(r"[^()\\]*")
_TOKEN = re.compile(r'[^\x00-\x20\x7f()<>@,;:\\"/\[\]?=]+')
_VALUE = re.compile(r'[^\x00-\x20\x7f;"]+')
_QUOTED = re.compile(r'"([^"\\]*(?:\\.[^"\\]*)*)"?', re.S)
_QUOTED_PAIR = re.compile(r"\\(.)", re.S)
_SECTION = re.compile(r"(.*?)(?:\*([0-9]{1,4}))?(\*)?", re.S)


def skip_cfws(s: str, i: int) -> int:
    """Skip white space and (nested) comments from ``i``."""
    n = len(s)
    if i >= n or s[i] not in " \t\r\n(":
        return i
    while True:
        i = _WSP.match(s, i).end()  # type: ignore[union-attr]
        if i >= n or s[i] != "(":
            return i
        i = skip_comment(s, i)


def skip_comment(s: str, i: int) -> int:
    """End of the (possibly nested, possibly unterminated) comment starting at ``s[i] == "("``."""
    n = len(s)
    depth = 0
    while i < n:
        c = s[i]
        if c == "(":
            depth += 1
        elif c == ")":
            depth -= 1
            if depth == 0:
                return i + 1
        elif c == "\\":
            i += 1
        i = _COMMENT_TEXT.match(s, min(i + 1, n)).end()  # type: ignore[union-attr]
    return n


def unquote(text: str) -> str:
    return _QUOTED_PAIR.sub(r"\1", text) if "\\" in text else text


def _parse_params(s: str, i: int) -> list[tuple[str, str]]:
    """``*(";" attribute "=" value)`` from ``i``; garbage is skipped up to the next ';'."""
    out: list[tuple[str, str]] = []
    n = len(s)
    while True:
        i = skip_cfws(s, i)
        if i >= n:
            return out
        if s[i] != ";":
            j = s.find(";", i)
            if j < 0:
                return out
            i = j
        i = skip_cfws(s, i + 1)
        m = _TOKEN.match(s, i)
        if m is None:
            continue
        name = m.group().lower()
        i = skip_cfws(s, m.end())
        if i >= n or s[i] != "=":
            continue
        i = skip_cfws(s, i + 1)
        if i < n and s[i] == '"':
            m = _QUOTED.match(s, i)
            assert m is not None  # always matches at a quote
            value = unquote(m.group(1))
        else:
            m = _VALUE.match(s, i)
            if m is None:
                continue
            value = m.group()
        i = m.end()
        out.append((name, value))


def _decode_params(raw: list[tuple[str, str]]) -> dict[str, str]:
    """Join RFC 2231 continuations and decode charset'language'value; first value wins."""
    order: list[str] = []
    plain: dict[str, str] = {}
    ext: dict[str, dict[int, tuple[bool, str]]] = {}
    for name, value in raw:
        m = _SECTION.fullmatch(name)
        assert m is not None  # the pattern matches any string
        base, section, star = m.group(1), m.group(2), m.group(3)
        if not base or (section is None and star is None):
            if name not in plain:
                plain[name] = value
                order.append(name)
            continue
        sections = ext.setdefault(base, {})
        if not sections and base not in plain:
            order.append(base)
        sections.setdefault(int(section or 0), (star is not None, value))
    out: dict[str, str] = {}
    for name in order:
        if name in out:
            continue
        if name in ext:
            out[name] = _join_sections(ext[name])
        else:
            out[name] = plain[name]
    return out


def _join_sections(sections: dict[int, tuple[bool, str]]) -> str:
    numbers = sorted(sections)
    if not any(sections[k][0] for k in numbers):
        return "".join(sections[k][1] for k in numbers)
    charset: str | None = None
    chunks: list[bytes] = []
    for index, number in enumerate(numbers):
        encoded, value = sections[number]
        if not encoded:
            chunks.append(to_bytes(value))
            continue
        if index == 0 and value.count("'") >= 2:
            charset, _language, value = value.split("'", 2)
        chunks.append(unquote_to_bytes(to_bytes(value)))
    return decode_charset(b"".join(chunks), charset)


def decode_charset(raw: bytes, charset: str | None) -> str:
    """Decode with a MIME charset; unknown, missing or ASCII charsets decode as UTF-8."""
    name = (charset or "").strip().lower()
    if name in ("", "us-ascii", "ascii", "utf-8", "utf8", "unknown-8bit", "x-unknown"):
        return raw.decode("utf-8", "replace")
    try:
        return raw.decode(name, "replace")
    except Exception:  # LookupError, or a codec that is not a text encoding
        return raw.decode("utf-8", "replace")


_TOKEN_CLASS = r'[^\x00-\x20\x7f()<>@,;:\\"/\[\]?=]+'
_SIMPLE_VALUE = re.compile(
    rf"[ \t]*({_TOKEN_CLASS})(?:[ \t]*/[ \t]*({_TOKEN_CLASS}))?"
    rf'((?:[ \t]*;[ \t]*{_TOKEN_CLASS}[ \t]*=[ \t]*(?:"[^"\\\r\n]*"|[^\x00-\x20\x7f;"()]+))*)'
    r"[ \t]*;?[ \t]*"
)
_SIMPLE_PARAM = re.compile(
    rf';[ \t]*({_TOKEN_CLASS})[ \t]*=[ \t]*(?:"([^"\\\r\n]*)"|([^\x00-\x20\x7f;"()]+))'
)


def parse_mime_value(value: str, with_subtype: bool) -> tuple[str, str, dict[str, str]]:
    """``type ["/" subtype] *(";" parameter)`` (types lower-cased, "" where missing)."""
    m = _SIMPLE_VALUE.fullmatch(value)
    if m is not None and (with_subtype or m.group(2) is None):
        # The common well-formed case: no comments, escapes or broken syntax.
        raw = [(n.lower(), q or t) for n, q, t in _SIMPLE_PARAM.findall(m.group(3))]
        if any("*" in n for n, _ in raw) or len({n for n, _ in raw}) != len(raw):
            params = _decode_params(raw)
        else:
            params = dict(raw)
        return m.group(1).lower(), (m.group(2) or "").lower(), params
    i = skip_cfws(value, 0)
    typ = subtype = ""
    m = _TOKEN.match(value, i)
    if m is not None:
        typ = m.group().lower()
        i = skip_cfws(value, m.end())
    if with_subtype and i < len(value) and value[i] == "/":
        i = skip_cfws(value, i + 1)
        m = _TOKEN.match(value, i)
        if m is not None:
            subtype = m.group().lower()
            i = m.end()
    return typ, subtype, _decode_params(_parse_params(value, i))


def first_token(value: str) -> str:
    m = _TOKEN.match(value, skip_cfws(value, 0))
    return m.group().lower() if m is not None else ""


def language_tags(value: str) -> tuple[str, ...]:
    tags: list[str] = []
    i = 0
    n = len(value)
    while i < n:
        i = skip_cfws(value, i)
        m = _TOKEN.match(value, i)
        if m is not None:
            tags.append(m.group())
            i = m.end()
        elif i < n:
            i += 1
    return tuple(tags)

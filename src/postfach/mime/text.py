"""Decoded text of a message: for the full-text index and for PREVIEW (pure core)."""

from __future__ import annotations

import binascii
import html
import re
from typing import TYPE_CHECKING, Final

from postfach.mime._syntax import decode_charset, iter_fields, to_bytes

if TYPE_CHECKING:
    from postfach.mime.structure import Part

TEXT_CAP: Final = 1_000_000
"""At most this many characters of body text are returned by `search_text`."""

PREVIEW_CHARS: Final = 200
"""Length of a `preview` (RFC 8970 §3 allows up to 256 characters)."""


_ENCODED_WORD = re.compile(r"=\?([^?\s]+)\?([bBqQ])\?([^?\s]*)\?=")
_B64_JUNK = re.compile(rb"[^A-Za-z0-9+/]+")
_HTML_TAG = re.compile(r"<[^<>]*>")
_HTML_BLOCK = re.compile(r"<(script|style)\b", re.I)
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def decode_words(value: str) -> str:
    """Decode RFC 2047 encoded words; white space between adjacent encoded words is dropped."""
    if "=?" not in value:
        return value
    out: list[str] = []
    pending: list[tuple[str, bytes]] = []
    pos = 0
    for m in _ENCODED_WORD.finditer(value):
        between = value[pos : m.start()]
        if not pending or between.strip(" \t\r\n"):
            out += [decode_charset(raw, cs) for cs, raw in pending]
            pending = []
            out.append(between)
        charset = m.group(1).split("*", 1)[0].lower()
        text = to_bytes(m.group(3))
        raw = _b64decode(text) if m.group(2) in "bB" else binascii.a2b_qp(text, header=True)
        if pending and pending[-1][0] == charset:
            pending[-1] = (charset, pending[-1][1] + raw)
        else:
            pending.append((charset, raw))
        pos = m.end()
    out += [decode_charset(raw, cs) for cs, raw in pending]
    out.append(value[pos:])
    return "".join(out)


def _b64decode(raw: bytes) -> bytes:
    """Lenient base64: junk is ignored, a missing padding tolerated."""
    clean = _B64_JUNK.sub(b"", raw)
    rest = len(clean) % 4
    if rest == 1:
        clean = clean[:-1]
    elif rest:
        clean += b"=" * (4 - rest)
    try:
        return binascii.a2b_base64(clean)
    except binascii.Error:  # pragma: no cover - the cleaned input is always valid
        return b""


_QP_LINE = re.compile(rb"([^\r\n]*)(\r\n|\n|\r|$)")
_QP_ESCAPE = re.compile(rb"=([0-9A-Fa-f]{2})")


def decode_qp(raw: bytes) -> bytes:
    """Quoted-printable as RFC 2045 §6.7 says to decode it.

    Trailing spaces and tabs of a line are transport padding and go (rule 3); a line ending in
    ``=``, padding or not, is a soft line break (rule 5); ``=XX`` is an octet (hex digits in either
    case, as robust decoders accept); any other ``=`` is kept as it is. `binascii.a2b_qp` keeps
    the padding and does not see ``= `` before a line end as a soft break.
    """
    out: list[bytes] = []
    for m in _QP_LINE.finditer(raw):
        line, end = m.group(1), m.group(2)
        if not line and not end:
            break  # the empty match at the very end
        line = line.rstrip(b" \t")
        if line.endswith(b"="):
            line, end = line[:-1], b""
        out.append(_QP_ESCAPE.sub(lambda e: bytes([int(e.group(1), 16)]), line) + end)
    return b"".join(out)


def _decoded_body(data: bytes, part: Part, limit: int) -> bytes:
    """Up to about ``limit`` octets of the part's body, transfer decoding undone."""
    raw = data[part.body_start : min(part.body_end, part.body_start + limit)]
    if part.encoding == "base64":
        return _b64decode(raw)
    if part.encoding == "quoted-printable":
        return decode_qp(raw)
    return raw


def _strip_html(text: str) -> str:
    lower = text.lower()
    pieces: list[str] = []
    pos = 0
    for m in _HTML_BLOCK.finditer(lower):
        if m.start() < pos:
            continue
        pieces.append(text[pos : m.start()])
        close = lower.find("</" + m.group(1), m.end())
        if close < 0:
            pos = len(text)
            break
        gt = lower.find(">", close)
        pos = len(text) if gt < 0 else gt + 1
    pieces.append(text[pos:])
    return html.unescape(_HTML_TAG.sub(" ", "".join(pieces)))


def _part_text(data: bytes, part: Part, limit: int) -> str:
    text = decode_charset(_decoded_body(data, part, limit), part.params.get("charset"))
    if part.subtype == "html":
        text = _strip_html(text)
    return text.replace("\r\n", "\n")


def _header_text(data: bytes, start: int, end: int) -> str:
    # Octets that are not UTF-8 are replaced (as in bodies): surrogate escapes would make the
    # text unencodable for the index (SQLite takes UTF-8 only).
    return "".join(
        f"{name.decode('ascii')}: {decode_words(value.decode('utf-8', 'replace'))}\n"
        for name, value in iter_fields(data, start, end)
    )


def search_text(data: bytes, part: Part) -> tuple[str, str]:
    """(decoded header text, decoded body text) of a message for a full-text index.

    Body text covers every text/* part, and the header and text parts of encapsulated messages;
    transfer encodings and charsets are decoded (undecodable octets replaced), HTML tags dropped.
    The body text is capped at `TEXT_CAP` characters.
    """
    headers = _header_text(data, part.header_start, part.header_end)
    chunks: list[str] = []
    budget = TEXT_CAP
    stack = [part]
    while stack and budget > 0:
        node = stack.pop()
        if node.children:
            stack.extend(reversed(node.children))
        elif node.message is not None:
            inner = node.message
            text = _header_text(data, inner.header_start, inner.header_end)
            chunks.append(text[:budget])
            budget -= len(chunks[-1])
            stack.append(inner)
        elif node.type == "text":
            text = _part_text(data, node, 4 * budget)
            chunks.append(text[:budget])
            budget -= len(chunks[-1])
    return headers, "\n".join(chunks)


def _preview_part(part: Part) -> Part | None:
    """The first text/plain or text/html part that is not an attachment.

    Of alternatives the plain one is taken; encapsulated messages are looked into only when the
    message itself has no such part (a message whose body is a message/rfc822).
    """
    messages: list[Part] = []
    stack = [part]
    while stack:
        node = stack.pop()
        if node.children:
            kids = list(node.children)
            if node.subtype == "alternative":
                kids.sort(key=lambda p: p.subtype != "plain")
            stack.extend(reversed(kids))
        elif node.disposition == "attachment":
            continue
        elif node.type == "text" and node.subtype in ("plain", "html"):
            return node
        elif node.message is not None:
            messages.append(node.message)
    for inner in messages:
        found = _preview_part(inner)
        if found is not None:
            return found
    return None


def preview(data: bytes, part: Part) -> str:
    """PREVIEW (RFC 8970): up to `PREVIEW_CHARS` characters of the first text part."""
    node = _preview_part(part)
    if node is None:
        return ""
    text = _part_text(data, node, 64 * 1024 if node.subtype == "html" else 4 * 1024)
    return " ".join(_CONTROL.sub(" ", text).split())[:PREVIEW_CHARS]

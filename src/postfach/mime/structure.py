"""MIME structure of a stored message, parsed once at delivery (pure core).

A message is parsed when it is delivered and the result (a tree of `Part`s holding byte offsets
into the CRLF-normalised message) is stored as JSON beside it. IMAP then answers FETCH ENVELOPE,
BODY, BODYSTRUCTURE and BODY[section] from the stored tree and byte ranges of the stored message,
without parsing it again (DESIGN.md, "The store").

Rules implemented here, with the RFC they come from:

- Header: everything from the start of an entity up to and including the first empty line
  (RFC 5322 §2.1). As Dovecot and Cyrus do, a line without a colon inside the header is not a
  field but does not end the header either; an entity without an empty line is all header and
  has an empty body. Folded lines are unfolded by removing the CRLF (RFC 5322 §2.2.3).
- Content-Type, Content-Disposition: RFC 2045 §5.1, RFC 2183; parameter continuations and
  charset/language (RFC 2231) are decoded. A syntactically invalid Content-Type gives the default
  type (RFC 2045 §5.2): text/plain, or message/rfc822 inside multipart/digest (RFC 2046 §5.1.5).
- Multipart bodies: RFC 2046 §5.1.1. A delimiter line is "--" boundary at the start of a line,
  optionally followed by "--" (close delimiter) and linear white space; the line break before it
  belongs to the delimiter. Preamble and epilogue are not parts. A missing close delimiter ends
  the last part at the end of the enclosing entity. A multipart entity without any part (no
  boundary parameter, or no delimiter line) gets one synthetic text/plain part without a header
  spanning its preamble, so that BODYSTRUCTURE stays valid and the bytes stay reachable.
- message/rfc822 and message/global bodies are parsed as messages (RFC 2046 §5.2.1, RFC 6532).
- Nesting is capped at `MAX_DEPTH`; a multipart or message entity deeper than that is reported
  as an opaque application/octet-stream leaf.
- IMAP part numbers, ENVELOPE and BODYSTRUCTURE: RFC 3501 §6.4.5 and §7.4.2, RFC 9051 §7.5.2.
  Types, subtypes, encodings and parameter names are sent in lower case; a text part without a
  charset gets ("charset" "us-ascii") as Dovecot sends it; a parameter value that is not
  printable ASCII is sent in RFC 2231 form (``name*`` "utf-8\'\'%E2%82%AC..."), which clients
  decode as they would the original header.

`parse` never raises: every rule above has a recovery for broken input.

Everything is importable from here; the work is split over `postfach.mime._syntax` (header
fields, structured values, charsets), `postfach.mime.envelope` (ENVELOPE, addresses) and
`postfach.mime.text` (decoded text for search and PREVIEW).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final
from urllib.parse import quote_from_bytes

from postfach.mime._syntax import (
    MIME_FIELDS,
    field_map,
    first_token,
    header_end,
    language_tags,
    optional,
    parse_mime_value,
    to_bytes,
    to_str,
)
from postfach.mime.envelope import (
    ENVELOPE_FIELDS,
    Address,
    Envelope,
    envelope,
    envelope_from_fields,
    envelope_from_json,
    envelope_from_obj,
    envelope_obj,
    envelope_to_json,
    imap_envelope,
    imap_string,
)
from postfach.mime.text import PREVIEW_CHARS, TEXT_CAP, decode_words, preview, search_text

__all__ = [
    "MAX_DEPTH",
    "PREVIEW_CHARS",
    "TEXT_CAP",
    "Address",
    "Envelope",
    "Part",
    "body_range",
    "decode_words",
    "envelope",
    "envelope_from_json",
    "envelope_to_json",
    "find_section",
    "from_json",
    "header_fields",
    "header_range",
    "imap_body",
    "imap_bodystructure",
    "imap_envelope",
    "mime_range",
    "normalize_crlf",
    "parse",
    "preview",
    "search_text",
    "section_range",
    "text_range",
    "to_json",
]

MAX_DEPTH: Final = 100
"""Multipart and message entities nested deeper than this become opaque leaves."""

_MESSAGE_FIELDS: Final = MIME_FIELDS | ENVELOPE_FIELDS


# --------------------------------------------------------------------------------------------
# Data model
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Part:
    """One MIME entity; all offsets index the whole (CRLF-normalised) message.

    ``header_start <= header_end == body_start <= body_end``. ``header_end`` is just after the
    empty line ending the header (or the end of the entity when there is none). For the parts of
    an encapsulated message (``message``), offsets still index the outer message.
    """

    header_start: int
    header_end: int
    body_start: int
    body_end: int
    type: str = "text"
    subtype: str = "plain"
    params: dict[str, str] = field(default_factory=dict)
    id: str | None = None
    description: str | None = None
    encoding: str = "7bit"
    md5: str | None = None
    disposition: str | None = None
    disposition_params: dict[str, str] = field(default_factory=dict)
    language: tuple[str, ...] = ()
    location: str | None = None
    lines: int | None = None
    children: tuple[Part, ...] = ()
    message: Part | None = None
    envelope: Envelope | None = None

    @property
    def size(self) -> int:
        """Octets of the body (IMAP body-fld-octets)."""
        return self.body_end - self.body_start

    @property
    def mime_type(self) -> str:
        return f"{self.type}/{self.subtype}"

    @property
    def is_multipart(self) -> bool:
        return bool(self.children)


# --------------------------------------------------------------------------------------------
# Line endings
# --------------------------------------------------------------------------------------------


def normalize_crlf(data: bytes) -> bytes:
    """Turn every line ending (CRLF, bare LF, bare CR) into CRLF; end non-empty data with CRLF."""
    crlf = data.count(b"\r\n")
    if crlf != data.count(b"\n") or crlf != data.count(b"\r"):
        data = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n").replace(b"\n", b"\r\n")
    if data and not data.endswith(b"\r\n"):
        data += b"\r\n"
    return data


# --------------------------------------------------------------------------------------------
# Header fields
# --------------------------------------------------------------------------------------------


def header_fields(data: bytes, start: int, end: int, names: Iterable[str], negate: bool) -> bytes:
    """HEADER.FIELDS / HEADER.FIELDS.NOT (RFC 3501 §6.4.5) of the header in [start, end).

    Returns the selected field lines (with their continuation lines), in message order, followed
    by the empty line (CRLF) that ends a header.
    """
    wanted = {n.lower() for n in names}
    out: list[bytes] = []
    keep = False
    for line in data[start:end].split(b"\n"):
        if line in (b"", b"\r"):
            break
        if line[:1] in (b" ", b"\t"):
            if keep:
                out.append(line)
            continue
        colon = line.find(b":")
        if colon <= 0:
            keep = False
            continue
        name = line[:colon].rstrip(b" \t").decode("latin-1").lower()
        keep = (name in wanted) != negate
        if keep:
            out.append(line)
    parts = [line if line.endswith(b"\r") else line + b"\r" for line in out]
    parts.append(b"\r")
    return b"\n".join(parts) + b"\n"


# --------------------------------------------------------------------------------------------
# Parsing the MIME tree
# --------------------------------------------------------------------------------------------

_TEXT_PLAIN: Final = ("text", "plain")
_MESSAGE_RFC822: Final = ("message", "rfc822")
_OPAQUE: Final = ("application", "octet-stream")
_DELIMITER_TAIL = re.compile(rb"(--)?[ \t]*(\r?\n|$)")


def parse(data: bytes) -> Part:
    """Parse a CRLF-normalised message into its MIME tree. Never raises."""
    try:
        return _parse_tree(data)
    except Exception:  # pragma: no cover - a last line of defence; the tests run _parse_tree
        end = len(data)
        hend = header_end(data, 0, end)
        return Part(0, hend, hend, end, lines=data.count(b"\n", hend, end))


def _parse_tree(data: bytes) -> Part:
    return _entity(data, 0, len(data), 0, _TEXT_PLAIN, MIME_FIELDS)[0]


def _entity(
    data: bytes,
    start: int,
    end: int,
    depth: int,
    default: tuple[str, str],
    wanted: frozenset[str],
) -> tuple[Part, dict[str, bytes]]:
    hend = header_end(data, start, end)
    fields = field_map(data, start, hend, wanted)
    typ, subtype = default
    params: dict[str, str] = {}
    raw = fields.get("content-type")
    if raw is not None:
        t, s, params = parse_mime_value(to_str(raw), True)
        if t and s:
            typ, subtype = t, s
    encoding = "7bit"
    raw = fields.get("content-transfer-encoding")
    if raw is not None:
        encoding = first_token(to_str(raw)) or "7bit"
    disposition: str | None = None
    disposition_params: dict[str, str] = {}
    raw = fields.get("content-disposition")
    if raw is not None:
        d, _, disposition_params = parse_mime_value(to_str(raw), False)
        disposition = d or None
        if disposition is None:
            disposition_params = {}
    raw = fields.get("content-language")
    language = language_tags(to_str(raw)) if raw is not None else ()

    children: tuple[Part, ...] = ()
    message: Part | None = None
    env: Envelope | None = None
    lines: int | None = None
    if typ == "multipart":
        if depth >= MAX_DEPTH:
            typ, subtype = _OPAQUE
        else:
            children = _multipart(
                data, hend, end, params.get("boundary", ""), depth + 1, subtype == "digest"
            )
    elif typ == "message" and subtype in ("rfc822", "global"):
        if depth >= MAX_DEPTH:
            typ, subtype = _OPAQUE
        else:
            message, inner = _entity(data, hend, end, depth + 1, _TEXT_PLAIN, _MESSAGE_FIELDS)
            env = envelope_from_fields(inner)
    if typ == "text" or message is not None:
        lines = data.count(b"\n", hend, end)
    part = Part(
        header_start=start,
        header_end=hend,
        body_start=hend,
        body_end=end,
        type=typ,
        subtype=subtype,
        params=params,
        id=optional(fields.get("content-id")),
        description=optional(fields.get("content-description")),
        encoding=encoding,
        md5=optional(fields.get("content-md5")),
        disposition=disposition,
        disposition_params=disposition_params,
        language=language,
        location=optional(fields.get("content-location")),
        lines=lines,
        children=children,
        message=message,
        envelope=env,
    )
    return part, fields


def _multipart(
    data: bytes, start: int, end: int, boundary: str, depth: int, digest: bool
) -> tuple[Part, ...]:
    ranges, preamble_end = _split(data, start, end, to_bytes(boundary)) if boundary else ([], end)
    if not ranges:
        # RFC 2046 requires at least one part; keep the bytes reachable as one headerless part.
        return (
            Part(
                start,
                start,
                start,
                preamble_end,
                lines=data.count(b"\n", start, preamble_end),
            ),
        )
    default = _MESSAGE_RFC822 if digest else _TEXT_PLAIN
    return tuple(_entity(data, s, e, depth, default, MIME_FIELDS)[0] for s, e in ranges)


def _split(data: bytes, start: int, end: int, boundary: bytes) -> tuple[list[tuple[int, int]], int]:
    """Body part ranges of a multipart body in [start, end), and where its preamble ends.

    RFC 2046 §5.1.1: the line break before a delimiter belongs to the delimiter, the line break
    after it to the delimiter line; a close delimiter ends the parts.
    """
    dash = b"--" + boundary
    needle = b"\n" + dash
    ranges: list[tuple[int, int]] = []
    current = -1  # start of the part being read, -1 in the preamble
    preamble_end = end
    misses = 0
    regex: re.Pattern[bytes] | None = None

    def find(pos: int) -> int:
        if regex is None:
            return data.find(needle, pos, end)
        found = regex.search(data, pos, end)
        return -1 if found is None else found.start()

    at = start if data.startswith(dash, start, end) else find(start)
    while at >= 0:
        if at == start and data.startswith(dash, start, end):
            delimiter_start, after = start, start + len(dash)
        else:
            delimiter_start = at - 1 if at > start and data[at - 1] == 0x0D else at
            after = at + len(needle)
        m = _DELIMITER_TAIL.match(data, after, end)
        if m is None:
            misses += 1
            if misses == 64:  # many lines start like a delimiter: let the regex engine skip them
                regex = re.compile(re.escape(needle) + _DELIMITER_TAIL.pattern)
            at = find(at + 1)
            continue
        if current >= 0:
            ranges.append((current, max(current, delimiter_start)))
        elif preamble_end == end:
            preamble_end = delimiter_start
        if m.group(1) is not None:
            return ranges, preamble_end
        current = m.end()
        # The next delimiter may reuse this line's LF as its leading line break.
        at = find(m.end() - 1 if m.group(2) else m.end())
    if current >= 0:
        ranges.append((current, end))
    return ranges, preamble_end


# --------------------------------------------------------------------------------------------
# IMAP serialisation
# --------------------------------------------------------------------------------------------


_ATTRIBUTE_SAFE: Final = "!#$&+-.^_`|~"


def _param_list(params: dict[str, str], default_charset: bool) -> bytes:
    items: list[bytes] = []
    for name, value in params.items():
        raw = to_bytes(value)
        if raw.isascii() and b"\r" not in raw and b"\n" not in raw and b"\x00" not in raw:
            items += [imap_string(name), imap_string(value)]
        else:  # RFC 2231 form, which IMAP clients decode like the original header
            encoded = "utf-8''" + quote_from_bytes(raw, _ATTRIBUTE_SAFE)
            items += [imap_string(name + "*"), imap_string(encoded)]
    if default_charset and "charset" not in params:
        items += [b'"charset"', b'"us-ascii"']
    if not items:
        return b"NIL"
    return b"(" + b" ".join(items) + b")"


def _disposition(part: Part) -> bytes:
    if part.disposition is None:
        return b"NIL"
    return (
        b"("
        + imap_string(part.disposition)
        + b" "
        + _param_list(part.disposition_params, False)
        + b")"
    )


def _language(part: Part) -> bytes:
    if not part.language:
        return b"NIL"
    return b"(" + b" ".join(imap_string(t) for t in part.language) + b")"


def imap_bodystructure(
    part: Part, data: bytes | None = None, extended: bool = True, *, imap4rev2: bool = False
) -> bytes:
    """BODYSTRUCTURE (``extended``) or BODY (not extended) of ``part`` (RFC 3501 §7.4.2).

    ``data`` is only needed for trees whose message/rfc822 parts carry no envelope.
    message/global is shown with envelope and body only for IMAP4rev2 (RFC 9051 §7.5.2).
    """
    out: list[bytes] = []
    _body(part, data, extended, imap4rev2, out)
    return b"".join(out)


def imap_body(part: Part) -> bytes:
    """FETCH BODY: the non-extensible BODYSTRUCTURE."""
    return imap_bodystructure(part, None, False)


def _body(part: Part, data: bytes | None, extended: bool, rev2: bool, out: list[bytes]) -> None:
    out.append(b"(")
    if part.children:
        for child in part.children:
            _body(child, data, extended, rev2, out)
        out += [b" ", imap_string(part.subtype)]
        if extended:
            out += [b" ", _param_list(part.params, False), b" ", _disposition(part)]
            out += [b" ", _language(part), b" ", imap_string(part.location)]
        out.append(b")")
        return
    is_text = part.type == "text"
    out += [imap_string(part.type), b" ", imap_string(part.subtype), b" "]
    out += [_param_list(part.params, is_text), b" ", imap_string(part.id), b" "]
    out += [imap_string(part.description), b" ", imap_string(part.encoding)]
    out.append(b" %d" % part.size)
    inner = part.message
    if inner is not None and (part.subtype == "rfc822" or rev2):
        env = part.envelope
        if env is None:
            env = envelope(data, inner) if data is not None else Envelope()
        out += [b" ", imap_envelope(env), b" "]
        _body(inner, data, extended, rev2, out)
        out.append(b" %d" % (part.lines or 0))
    elif is_text:
        out.append(b" %d" % (part.lines or 0))
    if extended:
        out += [b" ", imap_string(part.md5), b" ", _disposition(part)]
        out += [b" ", _language(part), b" ", imap_string(part.location)]
    out.append(b")")


# --------------------------------------------------------------------------------------------
# IMAP part numbers and byte ranges (RFC 3501 §6.4.5)
# --------------------------------------------------------------------------------------------


def find_section(part: Part, section: Sequence[int]) -> Part | None:
    """The part that IMAP part number ``section`` (e.g. [1, 2, 3] for 1.2.3) names in a message.

    ``part`` is the message's root. [] is the root itself; in a non-multipart message (and in a
    non-multipart encapsulated message) part 1 is that message's body; numbers after a
    message/rfc822 part index the encapsulated message's parts.
    """
    node = part
    for level, number in enumerate(section):
        if level > 0 and not node.children:
            if node.message is None:
                return None
            node = node.message
        if node.children:
            if not 1 <= number <= len(node.children):
                return None
            node = node.children[number - 1]
        elif number != 1:
            return None
    return node


def body_range(part: Part, section: Sequence[int]) -> tuple[int, int] | None:
    """BODY[section]: the whole message for [], else the body of the named part."""
    if not section:
        return part.header_start, part.body_end
    node = find_section(part, section)
    return None if node is None else (node.body_start, node.body_end)


def _message_of(part: Part, section: Sequence[int]) -> Part | None:
    if not section:
        return part
    node = find_section(part, section)
    return None if node is None else node.message


def header_range(part: Part, section: Sequence[int]) -> tuple[int, int] | None:
    """BODY[section.HEADER] (also the source of HEADER.FIELDS); None unless a message."""
    msg = _message_of(part, section)
    return None if msg is None else (msg.header_start, msg.header_end)


def text_range(part: Part, section: Sequence[int]) -> tuple[int, int] | None:
    """BODY[section.TEXT]; None unless ``section`` names the message or a message/rfc822 part."""
    msg = _message_of(part, section)
    return None if msg is None else (msg.body_start, msg.body_end)


def mime_range(part: Part, section: Sequence[int]) -> tuple[int, int] | None:
    """BODY[section.MIME]: the MIME header of a part; None for [] (not allowed there)."""
    if not section:
        return None
    node = find_section(part, section)
    return None if node is None else (node.header_start, node.header_end)


def section_range(part: Part, section: Sequence[int], spec: str = "") -> tuple[int, int] | None:
    """Byte range for ``BODY[section]`` or ``BODY[section.spec]``.

    ``spec`` is "", "HEADER", "HEADER.FIELDS", "HEADER.FIELDS.NOT", "TEXT" or "MIME" (any case);
    for HEADER.FIELDS(.NOT) the header range is returned, to be filtered with `header_fields`.
    """
    spec = spec.upper()
    if not spec:
        return body_range(part, section)
    if spec in ("HEADER", "HEADER.FIELDS", "HEADER.FIELDS.NOT"):
        return header_range(part, section)
    if spec == "TEXT":
        return text_range(part, section)
    if spec == "MIME":
        return mime_range(part, section)
    return None


# --------------------------------------------------------------------------------------------
# JSON (stored per message)
# --------------------------------------------------------------------------------------------


def _part_obj(p: Part) -> dict[str, Any]:
    o: dict[str, Any] = {"o": [p.header_start, p.header_end, p.body_start, p.body_end]}
    if (p.type, p.subtype) != _TEXT_PLAIN:
        o["t"] = [p.type, p.subtype]
    if p.params:
        o["p"] = p.params
    if p.id is not None:
        o["i"] = p.id
    if p.description is not None:
        o["d"] = p.description
    if p.encoding != "7bit":
        o["e"] = p.encoding
    if p.md5 is not None:
        o["5"] = p.md5
    if p.disposition is not None:
        o["s"] = [p.disposition, p.disposition_params]
    if p.language:
        o["l"] = list(p.language)
    if p.location is not None:
        o["u"] = p.location
    if p.lines is not None:
        o["n"] = p.lines
    if p.children:
        o["c"] = [_part_obj(c) for c in p.children]
    if p.message is not None:
        o["m"] = _part_obj(p.message)
    if p.envelope is not None:
        o["v"] = envelope_obj(p.envelope)
    return o


def _part_from(o: Any) -> Part:
    hs, he, bs, be = o["o"]
    typ, subtype = o.get("t", _TEXT_PLAIN)
    disposition, disposition_params = o.get("s", (None, {}))
    message = o.get("m")
    env = o.get("v")
    return Part(
        header_start=hs,
        header_end=he,
        body_start=bs,
        body_end=be,
        type=typ,
        subtype=subtype,
        params=dict(o.get("p", {})),
        id=o.get("i"),
        description=o.get("d"),
        encoding=o.get("e", "7bit"),
        md5=o.get("5"),
        disposition=disposition,
        disposition_params=dict(disposition_params),
        language=tuple(o.get("l", ())),
        location=o.get("u"),
        lines=o.get("n"),
        children=tuple(_part_from(c) for c in o.get("c", ())),
        message=None if message is None else _part_from(message),
        envelope=None if env is None else envelope_from_obj(env),
    )


def to_json(part: Part) -> str:
    """Compact JSON of a MIME tree (ASCII only: non-UTF-8 octets become \\udcXX escapes)."""
    return json.dumps(_part_obj(part), separators=(",", ":"))


def from_json(text: str) -> Part:
    """Inverse of `to_json`."""
    return _part_from(json.loads(text))

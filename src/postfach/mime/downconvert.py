"""8-bit to 7-bit conversion of a message for a server without 8BITMIME (pure core).

RFC 6152 §3 (and RFC 1652 before it): a client holding an 8-bit message for a server that does
not offer 8BITMIME must either convert the message to 7 bits or return it as undeliverable. The
conversion here works on the MIME tree of `postfach.mime.structure.parse` and changes only what
it must, so that everything else stays byte-identical:

- a leaf body (no children, not an encapsulated message) that holds octets above 127 is
  re-encoded: text (and anything mostly ASCII) as quoted-printable, the rest as base64; its
  Content-Transfer-Encoding field is replaced, every other header field is kept in order. A
  message without MIME fields gets ``MIME-Version: 1.0`` as well (RFC 2045 §4), so that readers
  honour the new encoding;
- multipart bodies are converted part by part; preamble, epilogue and delimiter lines are kept
  (an 8-bit octet in them, which no reader looks at, becomes ``?``);
- message/rfc822 bodies (RFC 2046 §5.2.1: only 7bit, 8bit or binary allowed) are converted as
  messages of their own, and an ``8bit``/``binary`` Content-Transfer-Encoding on them or on a
  multipart becomes ``7bit``;
- a body that claims quoted-printable or base64 but holds raw 8-bit octets (broken, but seen) is
  repaired without changing what it decodes to: in quoted-printable each such octet becomes its
  ``=XX`` escape (which decodes to the same octet); in base64 it is dropped (decoders skip
  characters outside the alphabet).

Header fields are never converted: 8-bit header octets are UTF-8 headers (RFC 6532), which need
SMTPUTF8 from the server (RFC 6531 §3.2); `eight_bit_headers` tells the caller so it can refuse
with 5.6.7 instead.
"""

from __future__ import annotations

import base64
import binascii
import re
from typing import Final

from postfach.mime.structure import Part, parse

__all__ = ["eight_bit_headers", "has_8bit", "to_7bit"]

_EIGHT: Final = re.compile(rb"[\x80-\xff]")
_IDENTITY: Final = ("7bit", "8bit", "binary")
_CTE: Final = re.compile(rb"(?i)content-transfer-encoding[ \t]*:")
_MIME_VERSION: Final = re.compile(rb"(?im)^mime-version[ \t]*:")

Edit = tuple[int, int, bytes]  # replace data[start:end] with the bytes


def has_8bit(data: bytes, start: int = 0, end: int | None = None) -> bool:
    """Whether any octet in data[start:end] is above 127."""
    return _EIGHT.search(data, start, len(data) if end is None else end) is not None


def eight_bit_headers(data: bytes, tree: Part | None = None) -> bool:
    """Whether the header of the message or of any part or encapsulated message is 8-bit."""
    if not has_8bit(data):
        return False
    return any(has_8bit(data, p.header_start, p.header_end) for p in _walk(tree or parse(data)))


def to_7bit(data: bytes, tree: Part | None = None) -> bytes:
    """The CRLF-normalised message with every 8-bit body made 7-bit (see the module text)."""
    if not has_8bit(data):
        return data
    edits: list[Edit] = []
    _convert(data, tree or parse(data), edits, top=True)
    if not edits:
        return data
    out: list[bytes] = []
    pos = 0
    for start, end, replacement in sorted(edits):
        out += [data[pos:start], replacement]
        pos = end
    out.append(data[pos:])
    return b"".join(out)


def _walk(part: Part) -> list[Part]:
    out = [part]
    for child in part.children:
        out += _walk(child)
    if part.message is not None:
        out += _walk(part.message)
    return out


def _convert(data: bytes, part: Part, edits: list[Edit], top: bool) -> None:
    if not has_8bit(data, part.body_start, part.body_end):
        return
    container = part.children or part.message is not None
    if container and part.encoding in _IDENTITY:
        gap = part.body_start
        for child in part.children:
            _convert(data, child, edits, top=False)
            _blank_8bit(data, gap, child.header_start, edits)
            gap = child.body_end
        if part.children:
            _blank_8bit(data, gap, part.body_end, edits)
        if part.message is not None:
            _convert(data, part.message, edits, top=True)  # a message of its own
        if part.encoding != "7bit":
            edits.append(_header_edit(data, part, b"7bit", top=False))
        return
    body = data[part.body_start : part.body_end]
    if part.encoding == "quoted-printable":
        fixed = _EIGHT.sub(lambda m: b"=%02X" % m.group()[0], body)
        edits.append((part.body_start, part.body_end, fixed))
        return
    if part.encoding == "base64":
        edits.append((part.body_start, part.body_end, _EIGHT.sub(b"", body)))
        return
    if part.type == "text" or len(_EIGHT.findall(body)) * 5 < len(body):
        encoded = binascii.b2a_qp(body, quotetabs=False, istext=True, header=False)
        cte = b"quoted-printable"
    else:
        encoded = base64.encodebytes(body).replace(b"\n", b"\r\n")
        if not body.endswith(b"\r\n"):
            encoded = encoded[:-2]  # the line break before a delimiter belongs to it
        cte = b"base64"
    edits.append(_header_edit(data, part, cte, top=top))
    edits.append((part.body_start, part.body_end, encoded))


def _blank_8bit(data: bytes, start: int, end: int, edits: list[Edit]) -> None:
    """Preamble, epilogue and delimiter lines are not content (RFC 2046 §5.1.1): an 8-bit
    octet there becomes ``?``."""
    if start < end and has_8bit(data, start, end):
        edits.append((start, end, _EIGHT.sub(b"?", data[start:end])))


def _header_edit(data: bytes, part: Part, cte: bytes, top: bool) -> Edit:
    """Replace the entity's Content-Transfer-Encoding field (or add one) in its header."""
    block = data[part.header_start : part.header_end]
    fields = block[:-2] if block.endswith(b"\r\n") else block  # without the empty line
    kept: list[bytes] = []
    skipping = False
    for line in fields.splitlines(keepends=True):
        if skipping and line[:1] in (b" ", b"\t"):
            continue  # a folded continuation of the dropped field
        skipping = _CTE.match(line) is not None
        if not skipping:
            kept.append(line)
    new = b"".join(kept)
    if new and not new.endswith(b"\r\n"):
        new += b"\r\n"
    if top and not _MIME_VERSION.search(block):
        new += b"MIME-Version: 1.0\r\n"
    new += b"Content-Transfer-Encoding: " + cte + b"\r\n\r\n"
    return (part.header_start, part.header_end, new)

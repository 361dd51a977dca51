"""ENVELOPE of a message (RFC 3501 §7.4.2, RFC 9051 §7.5.2) and address parsing (pure core).

Header values are kept raw, as Dovecot does: unfolded, but not RFC 2047 decoded. Addresses are
parsed after RFC 5322 §3.4 with the obsolete forms and common breakage tolerated: a missing
mailbox or domain becomes "MISSING_MAILBOX" / "MISSING_DOMAIN" (a NIL host would read as a group
marker), and an addr-spec without a display name takes its last comment as the name.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from postfach.mime._syntax import field_map, optional, skip_comment, to_bytes, to_str, unquote

if TYPE_CHECKING:
    from postfach.mime.structure import Part

_MISSING_MAILBOX: Final = "MISSING_MAILBOX"
_MISSING_DOMAIN: Final = "MISSING_DOMAIN"

ENVELOPE_FIELDS: Final = frozenset(
    {
        "date",
        "subject",
        "from",
        "sender",
        "reply-to",
        "to",
        "cc",
        "bcc",
        "in-reply-to",
        "message-id",
    }
)


@dataclass(frozen=True, slots=True)
class Address:
    """One ENVELOPE address (RFC 3501 §7.4.2): (name adl mailbox host).

    A group start is (None, None, group name, None), a group end is all None.
    """

    name: str | None
    adl: str | None
    mailbox: str | None
    host: str | None


@dataclass(frozen=True, slots=True)
class Envelope:
    """ENVELOPE of a message. Strings are raw header values (unfolded, not RFC 2047 decoded).

    Bytes that are not UTF-8 are kept as surrogate escapes (``errors="surrogateescape"``), so
    encoding a value back with that error handler gives the original octets.
    ``sender`` and ``reply_to`` already default to ``from_`` when absent or empty.
    """

    date: str | None = None
    subject: str | None = None
    from_: tuple[Address, ...] = ()
    sender: tuple[Address, ...] = ()
    reply_to: tuple[Address, ...] = ()
    to: tuple[Address, ...] = ()
    cc: tuple[Address, ...] = ()
    bcc: tuple[Address, ...] = ()
    in_reply_to: str | None = None
    message_id: str | None = None


# --------------------------------------------------------------------------------------------
# ENVELOPE and addresses (RFC 3501 §7.4.2, RFC 5322 §3.4)
# --------------------------------------------------------------------------------------------


def envelope(data: bytes, part: Part) -> Envelope:
    """ENVELOPE from the header of ``part`` (the root part, or a message's ``message``)."""
    return envelope_from_fields(
        field_map(data, part.header_start, part.header_end, ENVELOPE_FIELDS)
    )


def envelope_from_fields(fields: dict[str, bytes]) -> Envelope:
    from_ = _addresses(fields.get("from"))
    return Envelope(
        date=optional(fields.get("date")),
        subject=optional(fields.get("subject")),
        from_=from_,
        sender=_addresses(fields.get("sender")) or from_,
        reply_to=_addresses(fields.get("reply-to")) or from_,
        to=_addresses(fields.get("to")),
        cc=_addresses(fields.get("cc")),
        bcc=_addresses(fields.get("bcc")),
        in_reply_to=optional(fields.get("in-reply-to")),
        message_id=optional(fields.get("message-id")),
    )


_ADDRESS_CAP: Final = 64 * 1024  # a longer address list is parsed up to a comma before this
_ADDR_TOKEN = re.compile(
    r"""(?P<ws>[ \t\r\n]+)
      | "(?P<q>[^"\\]*(?:\\.[^"\\]*)*)"?
      | (?P<c>\()
      | (?P<d>\[[^\]\\]*(?:\\.[^\]\\]*)*\]?)
      | (?P<s>[<>@,;:.])
      | (?P<a>[^ \t\r\n"(\[<>@,;:.]+)""",
    re.X | re.S,
)


# A token is (kind, text, space): kind is "a" (atom), "q" (quoted string, unquoted), "d" (domain
# literal), "c" (comment text) or the special character itself; space tells whether white space
# or a comment came before it.
_Token = tuple[str, str, bool]


def _tokens(value: str) -> list[_Token]:
    out: list[_Token] = []
    i = 0
    n = len(value)
    space = False
    match = _ADDR_TOKEN.match
    while i < n:
        m = match(value, i)
        if m is None:  # pragma: no cover - every character starts some token
            out.append(("a", value[i], space))
            i += 1
            space = False
            continue
        kind = m.lastgroup
        if kind == "ws":
            space = True
            i = m.end()
            continue
        if kind == "c":
            j = skip_comment(value, i)
            out.append(("c", _comment_text(value[i:j]), True))
            space = True
            i = j
            continue
        if kind == "q":
            out.append(("q", unquote(m.group("q")), space))
        elif kind == "s":
            text = m.group()
            out.append((text, text, space))
        else:
            out.append((kind or "a", m.group(), space))
        space = False
        i = m.end()
    return out


def _comment_text(raw: str) -> str:
    raw = raw[1:-1] if raw.endswith(")") else raw[1:]
    return unquote(raw).strip()


_ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_DOT_ATOM = rf"{_ATOM}(?:\.{_ATOM})*"
# One plain mailbox, nearly every From and To: "Display Name <local@domain>", "<local@domain>"
# or "local@domain", of atoms only (no quoted strings, comments, groups, routes, dots in the
# name, non-ASCII or a second address). `_addresses` answers these without tokenizing; the
# result is the one the tokenizer gives (tests/unit/test_envelope_fast.py compares them).
_SIMPLE_MAILBOX = re.compile(
    rf"[ \t]*(?:(?:((?:{_ATOM}[ \t]+)*{_ATOM})[ \t]*)?<({_DOT_ATOM})@({_DOT_ATOM})>"
    rf"|({_DOT_ATOM})@({_DOT_ATOM}))[ \t]*".encode("ascii")
)


def _addresses(raw: bytes | None) -> tuple[Address, ...]:
    if raw is None:
        return ()
    m = _SIMPLE_MAILBOX.fullmatch(raw) if len(raw) <= _ADDRESS_CAP else None
    if m is None:
        return _parse_addresses(raw)
    name, mailbox, host, bare_mailbox, bare_host = m.groups()
    if bare_mailbox is not None:
        return (Address(None, None, bare_mailbox.decode("ascii"), bare_host.decode("ascii")),)
    return (
        Address(
            b" ".join(name.split()).decode("ascii") if name else None,
            None,
            mailbox.decode("ascii"),
            host.decode("ascii"),
        ),
    )


def _parse_addresses(raw: bytes) -> tuple[Address, ...]:
    """The address list of a header field, by the tokenizer (any syntax)."""
    if len(raw) > _ADDRESS_CAP:
        raw = raw[:_ADDRESS_CAP].rpartition(b",")[0] or raw[:_ADDRESS_CAP]
    toks = _tokens(to_str(raw))
    out: list[Address] = []
    in_group = False
    i = 0
    n = len(toks)
    while i < n:
        kind = toks[i][0]
        if kind == ",":
            i += 1
            continue
        if kind == ";":
            if in_group:
                out.append(Address(None, None, None, None))
                in_group = False
            i += 1
            continue
        j = i
        angle = False
        group_start = False
        while j < n:
            kind = toks[j][0]
            if kind == "<":
                angle = True
            elif kind == ">":
                angle = False
            elif angle:
                pass
            elif kind == "," or kind == ";":
                break
            elif kind == ":" and not in_group:
                group_start = True
                break
            j += 1
        if group_start:
            out.append(Address(None, None, _phrase(toks[i:j]), None))
            in_group = True
            i = j + 1
            continue
        address = _mailbox(toks[i:j])
        if address is not None:
            out.append(address)
        i = j
    if in_group:
        out.append(Address(None, None, None, None))
    return tuple(out)


def _phrase(toks: Sequence[_Token]) -> str:
    words: list[str] = []
    for kind, text, space in toks:
        if kind == "c":
            continue
        if words and space:
            words.append(" ")
        words.append(text)
    return "".join(words).strip()


def _joined(toks: Sequence[_Token]) -> str:
    return "".join([t[1] for t in toks if t[0] != "c"])


def _mailbox(segment: list[_Token]) -> Address | None:
    kinds = [t[0] for t in segment]
    name: str | None = None
    adl: str | None = None
    if "<" in kinds:
        lt = kinds.index("<")
        name = _phrase(segment[:lt]) or None
        gt = kinds.index(">", lt) if ">" in kinds[lt:] else len(kinds)
        spec = [t for t in segment[lt + 1 : gt] if t[0] != "c"]
        if spec and spec[0][0] == "@":
            colon = next((k for k, t in enumerate(spec) if t[0] == ":"), -1)
            if colon >= 0:
                adl = _joined(spec[:colon]) or None
                spec = spec[colon + 1 :]
    else:
        if "c" in kinds:
            comments = [t[1] for t in segment if t[0] == "c" and t[1]]
            name = comments[-1] if comments else None
            segment = [t for t in segment if t[0] != "c"]
            if not segment:
                return None
        elif not segment:
            return None
        spec = segment
    at = -1
    for k in range(len(spec) - 1, -1, -1):
        if spec[k][0] == "@":
            at = k
            break
    if at >= 0:
        mailbox, host = _joined(spec[:at]), _joined(spec[at + 1 :])
    else:
        mailbox, host = _joined(spec), ""
    return Address(name, adl, mailbox or _MISSING_MAILBOX, host or _MISSING_DOMAIN)


def imap_string(value: str | None) -> bytes:
    """An IMAP nstring: NIL, a quoted string, or a literal for CR, LF and 8-bit octets."""
    if value is None:
        return b"NIL"
    raw = to_bytes(value)
    if raw.isascii() and b"\r" not in raw and b"\n" not in raw and b"\x00" not in raw:
        return b'"' + raw.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'
    raw = raw.replace(b"\x00", b"")  # NUL is not allowed in a literal either
    return b"{%d}\r\n" % len(raw) + raw


def _address_list(addresses: tuple[Address, ...]) -> bytes:
    if not addresses:
        return b"NIL"
    out = [b"("]
    for a in addresses:
        out += [b"(", imap_string(a.name), b" ", imap_string(a.adl), b" "]
        out += [imap_string(a.mailbox), b" ", imap_string(a.host), b")"]
    out.append(b")")
    return b"".join(out)


def imap_envelope(env: Envelope) -> bytes:
    """The parenthesised ENVELOPE (RFC 3501 §7.4.2, RFC 9051 §7.5.2)."""
    return b"".join(
        [
            b"(",
            imap_string(env.date),
            b" ",
            imap_string(env.subject),
            b" ",
            b" ".join(
                _address_list(a)
                for a in (env.from_, env.sender, env.reply_to, env.to, env.cc, env.bcc)
            ),
            b" ",
            imap_string(env.in_reply_to),
            b" ",
            imap_string(env.message_id),
            b")",
        ]
    )


def _address_obj(addresses: tuple[Address, ...]) -> list[list[str | None]]:
    return [[a.name, a.adl, a.mailbox, a.host] for a in addresses]


def envelope_obj(env: Envelope) -> list[Any]:
    return [
        env.date,
        env.subject,
        _address_obj(env.from_),
        None if env.sender == env.from_ else _address_obj(env.sender),
        None if env.reply_to == env.from_ else _address_obj(env.reply_to),
        _address_obj(env.to),
        _address_obj(env.cc),
        _address_obj(env.bcc),
        env.in_reply_to,
        env.message_id,
    ]


def _addresses_from(obj: Any) -> tuple[Address, ...]:
    return tuple(Address(a[0], a[1], a[2], a[3]) for a in obj)


def envelope_from_obj(obj: Any) -> Envelope:
    from_ = _addresses_from(obj[2])
    return Envelope(
        date=obj[0],
        subject=obj[1],
        from_=from_,
        sender=from_ if obj[3] is None else _addresses_from(obj[3]),
        reply_to=from_ if obj[4] is None else _addresses_from(obj[4]),
        to=_addresses_from(obj[5]),
        cc=_addresses_from(obj[6]),
        bcc=_addresses_from(obj[7]),
        in_reply_to=obj[8],
        message_id=obj[9],
    )


def envelope_to_json(env: Envelope) -> str:
    return json.dumps(envelope_obj(env), separators=(",", ":"))


def envelope_from_json(text: str) -> Envelope:
    return envelope_from_obj(json.loads(text))

"""MIME structure parsed once at delivery: offsets, ENVELOPE, BODYSTRUCTURE, sections, text.

Pure tests: no event loop, no database. The shared mbox corpora (test.mbox, torture.mbox) are
read from ``shared/data`` beside the repository (a missing file fails the test).
"""

from __future__ import annotations

import mailbox
import re
import textwrap
import time
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from postfach.mime import structure
from postfach.mime.structure import (
    MAX_DEPTH,
    PREVIEW_CHARS,
    Address,
    Envelope,
    Part,
    body_range,
    decode_words,
    envelope,
    envelope_from_json,
    envelope_to_json,
    find_section,
    from_json,
    header_fields,
    header_range,
    imap_body,
    imap_bodystructure,
    imap_envelope,
    mime_range,
    normalize_crlf,
    parse,
    preview,
    search_text,
    section_range,
    text_range,
    to_json,
)

DATA = Path(__file__).resolve().parents[3] / "shared" / "data"  # ../shared beside the repo


def msg(text: str) -> bytes:
    """A hand-written message: dedented, first newline dropped, CRLF-normalised."""
    return normalize_crlf(textwrap.dedent(text).lstrip("\n").encode())


def body(data: bytes, part: Part) -> bytes:
    return data[part.body_start : part.body_end]


def header(data: bytes, part: Part) -> bytes:
    return data[part.header_start : part.header_end]


# --------------------------------------------------------------------------------------------
# A small IMAP reader: nested lists of str / int / None, literals included, strictly checked.
# --------------------------------------------------------------------------------------------

_ATOM = re.compile(rb"[^\x00-\x20()\"{\\\x7f-\xff]+")


def read_imap(raw: bytes) -> Any:
    """Parse one parenthesised IMAP value; raises AssertionError on any syntax error."""
    value, pos = _read(raw, 0)
    assert pos == len(raw), f"trailing bytes at {pos}: {raw[pos : pos + 20]!r}"
    return value


def _read(raw: bytes, pos: int) -> tuple[Any, int]:
    c = raw[pos : pos + 1]
    if c == b"(":
        items: list[Any] = []
        pos += 1
        while raw[pos : pos + 1] != b")":
            assert pos < len(raw), "unbalanced parentheses"
            if items and raw[pos : pos + 1] == b" ":
                pos += 1
            elif items:  # only bodies and addresses follow each other without a space
                assert raw[pos : pos + 1] == b"(" and isinstance(items[-1], list), pos
            item, pos = _read(raw, pos)
            items.append(item)
        return items, pos + 1
    if c == b'"':
        out = bytearray()
        pos += 1
        while raw[pos : pos + 1] != b'"':
            ch = raw[pos : pos + 1]
            assert ch and ch not in (b"\r", b"\n", b"\x00") and ch.isascii(), "bad quoted char"
            if ch == b"\\":
                pos += 1
                ch = raw[pos : pos + 1]
                assert ch in (b"\\", b'"'), "bad quoted-pair"
            out += ch
            pos += 1
        return out.decode(), pos + 1
    if c == b"{":
        m = re.compile(rb"\{(\d+)\}\r\n").match(raw, pos)
        assert m is not None, "bad literal"
        n = int(m.group(1))
        value = raw[m.end() : m.end() + n]
        assert len(value) == n and b"\x00" not in value
        return value.decode("utf-8", "surrogateescape"), m.end() + n
    m = _ATOM.match(raw, pos)
    assert m is not None, f"unexpected {raw[pos : pos + 20]!r} at {pos}"
    atom = m.group().decode()
    if atom == "NIL":
        return None, m.end()
    assert atom.isdigit(), f"unexpected atom {atom!r}"
    return int(atom), m.end()


def _nstring(v: Any) -> bool:
    return v is None or isinstance(v, str)


def _check_params(v: Any) -> None:
    assert v is None or (isinstance(v, list) and v and len(v) % 2 == 0), v
    if v is not None:
        assert all(isinstance(x, str) for x in v)


def _check_envelope(v: Any) -> None:
    assert isinstance(v, list) and len(v) == 10, v
    assert _nstring(v[0]) and _nstring(v[1]) and _nstring(v[8]) and _nstring(v[9])
    for addresses in v[2:8]:
        assert addresses is None or isinstance(addresses, list)
        for a in addresses or ():
            assert isinstance(a, list) and len(a) == 4 and all(_nstring(x) for x in a)


def check_body(v: Any, extended: bool) -> None:
    """RFC 3501 §9 body / body-type-1part / body-type-mpart, checked field by field."""
    assert isinstance(v, list) and v, v
    if isinstance(v[0], list):  # multipart
        k = 0
        while isinstance(v[k], list):
            check_body(v[k], extended)
            k += 1
        assert isinstance(v[k], str)
        rest = v[k + 1 :]
        if extended:
            assert len(rest) == 4, rest
            _check_params(rest[0])
            assert rest[1] is None or (len(rest[1]) == 2 and isinstance(rest[1][0], str))
            assert rest[2] is None or isinstance(rest[2], (str, list))
            assert _nstring(rest[3])
        else:
            assert rest == []
        return
    typ, subtype, params, cid, desc, enc, size = v[:7]
    assert isinstance(typ, str) and isinstance(subtype, str) and isinstance(enc, str)
    _check_params(params)
    assert _nstring(cid) and _nstring(desc) and isinstance(size, int) and size >= 0
    rest = v[7:]
    if typ.lower() == "message" and subtype.lower() == "rfc822":
        _check_envelope(rest[0])
        check_body(rest[1], extended)
        assert isinstance(rest[2], int)
        rest = rest[3:]
    elif typ.lower() == "text":
        assert isinstance(rest[0], int)
        rest = rest[1:]
    if extended:
        assert len(rest) == 4, rest
        assert _nstring(rest[0])
        assert rest[1] is None or (len(rest[1]) == 2 and isinstance(rest[1][0], str))
        assert rest[2] is None or isinstance(rest[2], (str, list))
        assert _nstring(rest[3])
    else:
        assert rest == [], rest


def walk(part: Part) -> list[Part]:
    out = [part]
    for child in part.children:
        out += walk(child)
    if part.message is not None:
        out += walk(part.message)
    return out


def check_tree(data: bytes, part: Part, start: int = 0, end: int | None = None) -> None:
    """Offsets are in bounds and nest: every child lies inside its parent's body."""
    end = len(data) if end is None else end
    assert start <= part.header_start <= part.header_end == part.body_start <= part.body_end
    assert part.body_end <= end
    assert part.size == part.body_end - part.body_start
    if part.type == "text" or part.message is not None:
        assert part.lines == data.count(b"\n", part.body_start, part.body_end)
    previous = part.body_start
    for child in part.children:
        assert child.header_start >= previous
        check_tree(data, child, part.body_start, part.body_end)
        previous = child.body_end
    if part.message is not None:
        assert part.message.header_start == part.body_start
        assert part.message.body_end == part.body_end
        assert part.envelope is not None
        check_tree(data, part.message, part.body_start, part.body_end)
    assert part.type == part.type.lower() and part.subtype == part.subtype.lower()
    assert all(k == k.lower() for k in part.params)


def check_everything(data: bytes) -> Part:
    """Parse (without the safety net) and run every consumer on the result."""
    part = structure._parse_tree(data)
    check_tree(data, part)
    assert from_json(to_json(part)) == part
    to_json(part).encode("ascii")
    for extended in (True, False):
        check_body(read_imap(imap_bodystructure(part, data, extended)), extended)
    _check_envelope(read_imap(imap_envelope(envelope(data, part))))
    headers, text = search_text(data, part)
    assert isinstance(headers, str) and isinstance(text, str)
    assert len(preview(data, part)) <= PREVIEW_CHARS
    for p in walk(part):
        header_fields(data, p.header_start, p.header_end, {"subject", "content-type"}, False)
    return part


# --------------------------------------------------------------------------------------------
# normalize_crlf
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b"", b""),
        (b"a", b"a\r\n"),
        (b"a\r\n", b"a\r\n"),
        (b"a\nb", b"a\r\nb\r\n"),
        (b"a\rb\r", b"a\r\nb\r\n"),
        (b"a\r\r\nb\n\n", b"a\r\n\r\nb\r\n\r\n"),
        (b"\n\r", b"\r\n\r\n"),
        (b"x\x00y\n", b"x\x00y\r\n"),
        (b"\r\n\r\n", b"\r\n\r\n"),
    ],
)
def test_normalize_crlf(raw: bytes, expected: bytes) -> None:
    assert normalize_crlf(raw) == expected


@given(st.binary(max_size=300))
def test_normalize_crlf_properties(raw: bytes) -> None:
    out = normalize_crlf(raw)
    assert normalize_crlf(out) == out
    assert out.count(b"\r") == out.count(b"\n") == out.count(b"\r\n")
    assert out.replace(b"\r\n", b"") == raw.replace(b"\r\n", b"").replace(b"\r", b"").replace(
        b"\n", b""
    )
    assert not raw or out.endswith(b"\r\n")


# --------------------------------------------------------------------------------------------
# Offsets and BODYSTRUCTURE of hand-written messages
# --------------------------------------------------------------------------------------------

SIMPLE = msg(
    """
    From: Alice <alice@example.com>
    To: bob@example.org
    Subject: hello
    Date: Mon, 01 Jan 2024 10:00:00 +0000
    Message-ID: <1@example.com>

    Hello
    World
    """
)


def test_simple_text_message() -> None:
    p = parse(SIMPLE)
    assert (p.type, p.subtype, p.encoding, p.params) == ("text", "plain", "7bit", {})
    assert header(SIMPLE, p).endswith(b"Message-ID: <1@example.com>\r\n\r\n")
    assert p.header_start == 0 and p.body_end == len(SIMPLE)
    assert body(SIMPLE, p) == b"Hello\r\nWorld\r\n"
    assert (p.size, p.lines) == (14, 2)
    assert imap_bodystructure(p, SIMPLE, True) == (
        b'("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 14 2 NIL NIL NIL NIL)'
    )
    assert imap_bodystructure(p, SIMPLE, False) == imap_body(p)
    assert imap_body(p) == b'("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 14 2)'
    assert imap_envelope(envelope(SIMPLE, p)) == (
        b'("Mon, 01 Jan 2024 10:00:00 +0000" "hello" (("Alice" NIL "alice" "example.com")) '
        b'(("Alice" NIL "alice" "example.com")) (("Alice" NIL "alice" "example.com")) '
        b'((NIL NIL "bob" "example.org")) NIL NIL NIL "<1@example.com>")'
    )


MIXED = msg(
    """
    From: a@example.com
    Content-Type: multipart/mixed; boundary="XX"

    This is the preamble.
    --XX
    Content-Type: text/plain; charset=utf-8

    Hi there
    --XX
    Content-Type: application/pdf; name="doc.pdf"
    Content-Disposition: attachment; filename="doc.pdf"
    Content-Transfer-Encoding: base64
    Content-ID: <pdf@example.com>

    JVBERi0=
    --XX--
    This is the epilogue.
    """
)


def test_multipart_mixed_with_attachment() -> None:
    p = parse(MIXED)
    assert p.mime_type == "multipart/mixed" and p.params == {"boundary": "XX"}
    text, pdf = p.children
    assert body(MIXED, text) == b"Hi there"
    assert header(MIXED, text) == b"Content-Type: text/plain; charset=utf-8\r\n\r\n"
    assert body(MIXED, pdf) == b"JVBERi0="
    assert (pdf.disposition, pdf.disposition_params) == ("attachment", {"filename": "doc.pdf"})
    assert (pdf.encoding, pdf.id, pdf.lines) == ("base64", "<pdf@example.com>", None)
    assert imap_bodystructure(p, MIXED, True) == (
        b'(("text" "plain" ("charset" "utf-8") NIL NIL "7bit" 8 0 NIL NIL NIL NIL)'
        b'("application" "pdf" ("name" "doc.pdf") "<pdf@example.com>" NIL "base64" 8 NIL '
        b'("attachment" ("filename" "doc.pdf")) NIL NIL) "mixed" ("boundary" "XX") NIL NIL NIL)'
    )
    assert imap_body(p) == (
        b'(("text" "plain" ("charset" "utf-8") NIL NIL "7bit" 8 0)'
        b'("application" "pdf" ("name" "doc.pdf") "<pdf@example.com>" NIL "base64" 8) "mixed")'
    )


def test_sections_and_ranges_of_multipart() -> None:
    p = parse(MIXED)
    assert find_section(p, []) is p
    assert find_section(p, [1]) is p.children[0]
    assert find_section(p, [2]) is p.children[1]
    assert find_section(p, [3]) is None
    assert find_section(p, [0]) is None
    assert find_section(p, [1, 1]) is None  # a text part has no subparts
    r = body_range(p, [])
    assert r == (0, len(MIXED))
    r = section_range(p, [], "HEADER")
    assert r is not None and MIXED[r[0] : r[1]].endswith(b'boundary="XX"\r\n\r\n')
    r = section_range(p, [], "text")
    assert r is not None and MIXED[r[0] : r[1]].startswith(b"This is the preamble.")
    r = section_range(p, [2], "MIME")
    assert r is not None and MIXED[r[0] : r[1]].startswith(b"Content-Type: application/pdf")
    r = section_range(p, [2])
    assert r is not None and MIXED[r[0] : r[1]] == b"JVBERi0="
    assert header_range(p, [1]) is None and text_range(p, [1]) is None  # not a message
    assert mime_range(p, []) is None
    assert section_range(p, [1], "BOGUS") is None


NESTED = msg(
    """
    From: a@example.com
    Content-Type: multipart/mixed; boundary="outer"

    --outer
    Content-Type: multipart/alternative; boundary="outer-alt"

    --outer-alt
    Content-Type: text/plain

    plain
    --outer-alt
    Content-Type: text/html

    <p>html</p>
    --outer-alt--
    --outer
    Content-Type: image/png
    Content-Transfer-Encoding: base64

    iVBORw0K
    --outer--
    """
)


def test_alternative_nested_in_mixed() -> None:
    p = parse(NESTED)
    alt, png = p.children
    assert alt.mime_type == "multipart/alternative" and png.mime_type == "image/png"
    plain, htm = alt.children
    assert body(NESTED, plain) == b"plain"
    assert body(NESTED, htm) == b"<p>html</p>"
    # The inner close delimiter is followed only by the CRLF that belongs to "--outer".
    assert body(NESTED, alt).endswith(b"--outer-alt--")
    assert find_section(p, [1, 2]) is htm
    assert find_section(p, [2]) is png
    assert imap_body(p) == (
        b'((("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 5 0)'
        b'("text" "html" ("charset" "us-ascii") NIL NIL "7bit" 11 0) "alternative")'
        b'("image" "png" NIL NIL NIL "base64" 8) "mixed")'
    )
    assert preview(NESTED, p) == "plain"


RFC822 = msg(
    """
    From: outer@example.com
    Subject: fwd
    Content-Type: multipart/mixed; boundary="b1"

    --b1
    Content-Type: text/plain

    see attached
    --b1
    Content-Type: message/rfc822
    Content-Disposition: attachment

    From: Inner <inner@example.com>
    Subject: inner subject
    Date: Tue, 02 Jan 2024 10:00:00 +0000

    inner body
    --b1--
    """
)


def test_message_rfc822_attachment() -> None:
    p = parse(RFC822)
    _, att = p.children
    assert att.mime_type == "message/rfc822"
    inner = att.message
    assert inner is not None and inner.mime_type == "text/plain"
    assert body(RFC822, att).startswith(b"From: Inner") and body(RFC822, att).endswith(b"body")
    assert body(RFC822, inner) == b"inner body"
    assert att.envelope == Envelope(
        date="Tue, 02 Jan 2024 10:00:00 +0000",
        subject="inner subject",
        from_=(Address("Inner", None, "inner", "example.com"),),
        sender=(Address("Inner", None, "inner", "example.com"),),
        reply_to=(Address("Inner", None, "inner", "example.com"),),
    )
    assert att.envelope == envelope(RFC822, inner)
    assert att.lines == 4
    assert imap_body(p) == (
        b'(("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 12 0)'
        b'("message" "rfc822" NIL NIL NIL "7bit" 108 ("Tue, 02 Jan 2024 10:00:00 +0000" '
        b'"inner subject" (("Inner" NIL "inner" "example.com")) '
        b'(("Inner" NIL "inner" "example.com")) (("Inner" NIL "inner" "example.com")) '
        b'NIL NIL NIL NIL NIL) ("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 10 0) 4)'
        b' "mixed")'
    )
    # Part numbers reach into the encapsulated message (RFC 3501 §6.4.5).
    assert find_section(p, [2, 1]) is inner
    assert find_section(p, [2, 2]) is None
    r = header_range(p, [2])
    assert r is not None and RFC822[r[0] : r[1]].endswith(b"+0000\r\n\r\n")
    r = text_range(p, [2])
    assert r is not None and RFC822[r[0] : r[1]] == b"inner body"
    r = mime_range(p, [2])
    assert r is not None and RFC822[r[0] : r[1]].startswith(b"Content-Type: message/rfc822")
    r = body_range(p, [2, 1])
    assert r is not None and RFC822[r[0] : r[1]] == b"inner body"
    headers, decoded = search_text(RFC822, p)
    assert "Subject: fwd" in headers and "inner subject" in decoded and "inner body" in decoded


def test_whole_body_is_a_message() -> None:
    data = msg(
        """
        Subject: wrapper
        Content-Type: message/rfc822

        Subject: wrapped
        Content-Type: multipart/alternative; boundary="w"

        --w
        Content-Type: text/plain

        wrapped plain
        --w--
        """
    )
    p = parse(data)
    assert p.message is not None and p.message.is_multipart
    assert find_section(p, [1]) is p  # part 1 of a non-multipart message is its body
    assert find_section(p, [1, 1]) is p.message.children[0]
    r = header_range(p, [1])
    assert r is not None and data[r[0] : r[1]].startswith(b"Subject: wrapped")
    assert preview(data, p) == "wrapped plain"


def test_digest_parts_default_to_message_rfc822() -> None:
    data = msg(
        """
        Content-Type: multipart/digest; boundary="dig"

        --dig

        From: first@example.com
        Subject: one

        first body
        --dig
        Content-Type: text/plain

        explicit text
        --dig--
        """
    )
    p = parse(data)
    first, second = p.children
    assert first.mime_type == "message/rfc822" and second.mime_type == "text/plain"
    assert first.header_end - first.header_start == 2  # an empty header: just the blank line
    assert first.envelope is not None and first.envelope.subject == "one"
    assert first.message is not None and body(data, first.message) == b"first body"
    # In an ordinary multipart, a part without Content-Type is text/plain.
    mixed = parse(data.replace(b"multipart/digest", b"multipart/mixed"))
    assert mixed.children[0].mime_type == "text/plain"


def test_rfc2231_parameters() -> None:
    data = msg(
        """
        Content-Type: application/pdf;
         name*0*=utf-8''%E2%82%AC%20rates%20;
         name*1*=%C3%BCber;
         name*2=".pdf"
        Content-Disposition: attachment; filename*1="-half.bin"; filename*0="first";
         title*=us-ascii'en'This%20is%20%2A%2A%2Afun%2A%2A%2A; name="plain"
        Content-Transfer-Encoding: base64

        JVBERi0xLjQKJSVFT0YK
        """
    )
    p = parse(data)
    assert p.params == {"name": "\u20ac rates \u00fcber.pdf"}
    assert p.disposition_params == {
        "filename": "first-half.bin",
        "title": "This is ***fun***",
        "name": "plain",
    }
    assert imap_bodystructure(p, data, True) == (
        b'("application" "pdf" ("name*" "utf-8\'\'%E2%82%AC%20rates%20%C3%BCber.pdf") NIL NIL '
        b'"base64" 22 NIL ("attachment" ("filename" "first-half.bin" "title" "This is ***fun***"'
        b' "name" "plain")) NIL NIL)'
    )


def test_rfc2231_charset_is_decoded() -> None:
    p = parse(msg("Content-Type: text/plain; name*=iso-8859-1''R%E9sum%E9.txt\n\nx\n"))
    assert p.params == {"name": "R\u00e9sum\u00e9.txt"}
    p = parse(msg("Content-Type: text/plain; name*=x-bogus''a%41%zz\n\nx\n"))
    assert p.params == {"name": "aA%zz"}


@pytest.mark.parametrize(
    ("content_type", "mime_type", "params"),
    [
        ("text", "text/plain", {}),
        ("application", "text/plain", {}),
        ("/plain", "text/plain", {}),
        (";;;", "text/plain", {}),
        ("Text/PLAIN; Charset=US-ASCII", "text/plain", {"charset": "US-ASCII"}),
        ('text/plain (comment); charset="a\\"b"', "text/plain", {"charset": 'a"b'}),
        (
            'text/plain; ; charset=; foo; =bar; name="unterminated; x="y"; CHARSET="ISO-8859-1"',
            "text/plain",
            {"name": "unterminated; x=", "charset": "ISO-8859-1"},
        ),
        ("image/png; name=a.png; name=b.png", "image/png", {"name": "a.png"}),
        ('text/plain; name="unclosed', "text/plain", {"name": "unclosed"}),
    ],
)
def test_content_type_recovery(content_type: str, mime_type: str, params: dict[str, str]) -> None:
    data = msg(f"Content-Type: {content_type}\n\nbody\n")
    p = parse(data)
    assert (p.mime_type, p.params) == (mime_type, params)
    check_everything(data)


def test_multipart_without_boundary_parameter() -> None:
    data = msg(
        """
        Content-Type: multipart/mixed

        just text
        """
    )
    p = parse(data)
    (only,) = p.children
    assert only.mime_type == "text/plain"
    assert only.header_start == only.header_end == only.body_start == p.body_start
    assert body(data, only) == b"just text\r\n"
    check_everything(data)


def test_boundary_never_appears() -> None:
    data = msg(
        """
        Content-Type: multipart/mixed; boundary="nowhere"

        --elsewhere
        text
        """
    )
    (only,) = parse(data).children
    assert body(data, only) == b"--elsewhere\r\ntext\r\n"


def test_only_a_close_delimiter() -> None:
    data = msg('Content-Type: multipart/alternative; boundary="e"\n\npreamble\n--e--\n')
    (only,) = parse(data).children
    assert body(data, only) == b"preamble"


def test_boundary_never_closed() -> None:
    data = msg(
        """
        Content-Type: multipart/mixed; boundary="nofinal"

        --nofinal
        Content-Type: text/plain

        first part
        --nofinal
        Content-Type: text/plain

        second part
        and no closing delimiter
        """
    )
    first, second = parse(data).children
    assert body(data, first) == b"first part"
    assert body(data, second) == b"second part\r\nand no closing delimiter\r\n"
    assert second.lines == 2


def test_delimiter_rules() -> None:
    lines = [
        'Content-Type: multipart/mixed; boundary="frontier"',
        "",
        "--frontier\t ",  # transport padding after a delimiter is allowed
        "Content-Type: text/plain",
        "",
        "before",
        "--frontier-but-not-quite is text",
        " --frontier is indented, so text too",
        "after",
        "--frontier",
        "--frontier--  ",
        "--frontier",
        "epilogue",
    ]
    data = normalize_crlf("\n".join(lines).encode())
    first, empty = parse(data).children
    assert body(data, first) == (
        b"before\r\n--frontier-but-not-quite is text\r\n"
        b" --frontier is indented, so text too\r\nafter"
    )
    assert empty.body_start == empty.body_end  # two delimiter lines in a row: an empty part


def test_boundary_inside_base64_data() -> None:
    data = msg(
        """
        Content-Type: multipart/mixed; boundary="QUJDREVGR0hJ"

        --QUJDREVGR0hJ
        Content-Transfer-Encoding: base64

        QUJDREVGR0hJQUJDREVGR0hJ
        eJs0yvVPLiIKzZQecbiNWDaGbQ--QUJDREVGR0hJ
        --QUJDREVGR0hJ--
        """
    )
    (only,) = parse(data).children
    assert body(data, only).endswith(b"DaGbQ--QUJDREVGR0hJ")


def test_bare_lf_message_is_tolerated() -> None:
    data = b'Content-Type: multipart/mixed; boundary="b"\n\n--b\n\none\n--b\n\ntwo\n--b--\n'
    p = parse(data)
    assert [body(data, c) for c in p.children] == [b"one", b"two"]


def test_header_without_blank_line() -> None:
    data = msg(
        """
        From: Headers Only <hdr@example.com>
        Subject: header-only message
        """
    )
    p = parse(data)
    assert p.header_end == p.body_start == p.body_end == len(data)
    assert imap_body(p) == b'("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 0 0)'
    assert envelope(data, p).subject == "header-only message"


@pytest.mark.parametrize("data", [b"", b"\r\n", b"\r\n\r\n", b"x", b"\x00\xff", b"\r\nbody\r\n"])
def test_degenerate_messages(data: bytes) -> None:
    check_everything(data)


def test_odd_header_lines() -> None:
    data = msg(
        """
        sUbJeCt: mixed-case header names
        Subject : space before the colon
        X-Empty:
        this line is not a header at all
        Content-Type : text/html
         ; charset=utf-8
        Date:Fri, 15 Mar 2024 10:00:00 +0000

        Body after odd headers.
        """
    )
    p = parse(data)
    assert body(data, p) == b"Body after odd headers.\r\n"
    assert (p.mime_type, p.params) == ("text/html", {"charset": "utf-8"})
    env = envelope(data, p)
    assert env.subject == "mixed-case header names"  # the first one wins
    assert env.date == "Fri, 15 Mar 2024 10:00:00 +0000"
    fields = header_fields(data, p.header_start, p.header_end, {"SUBJECT", "content-type"}, False)
    assert fields == (
        b"sUbJeCt: mixed-case header names\r\nSubject : space before the colon\r\n"
        b"Content-Type : text/html\r\n ; charset=utf-8\r\n\r\n"
    )


def test_header_fields() -> None:
    p = parse(SIMPLE)
    r = header_range(p, [])
    assert r is not None
    assert header_fields(SIMPLE, *r, ["subject", "From"], False) == (
        b"From: Alice <alice@example.com>\r\nSubject: hello\r\n\r\n"
    )
    assert header_fields(SIMPLE, *r, {"from", "to", "subject", "date"}, True) == (
        b"Message-ID: <1@example.com>\r\n\r\n"
    )
    assert header_fields(SIMPLE, *r, {"x-nothing"}, False) == b"\r\n"
    folded = msg("Subject: one\n two\nTo: x@y\n\nbody\n")
    assert header_fields(folded, 0, len(folded), {"subject"}, False) == (
        b"Subject: one\r\n two\r\n\r\n"
    )


def test_nul_bytes_and_8bit_are_kept() -> None:
    data = msg("Subject: Gr\u00fc\u00dfe\nContent-Type: text/plain\n\nnul\x00byte \xff\n")
    data = data.replace("\u00c3\u00bf".encode(), b"\xff")
    p = parse(data)
    assert b"\x00" in body(data, p)
    env = envelope(data, p)
    assert env.subject == "Gr\u00fc\u00dfe"
    assert b"{7}\r\nGr\xc3\xbc\xc3\x9fe" in imap_envelope(env)


def test_deep_nesting_is_capped() -> None:
    n = 10_000
    data = (
        b"".join(
            b"Content-Type: multipart/mixed; boundary=b%d\r\n\r\n--b%d\r\n" % (i, i)
            for i in range(n)
        )
        + b"\r\nleaf\r\n"
        + b"".join(b"\r\n--b%d--" % i for i in reversed(range(n)))
        + b"\r\n"
    )
    p = check_everything(data)
    depth, node = 0, p
    while node.children:
        node, depth = node.children[0], depth + 1
    assert depth == MAX_DEPTH
    assert node.mime_type == "application/octet-stream"


def test_deep_message_nesting_is_capped() -> None:
    data = b"Content-Type: message/rfc822\r\n\r\n" * 5000 + b"\r\nbottom\r\n"
    p = check_everything(data)
    depth, node = 0, p
    while node.message is not None:
        node, depth = node.message, depth + 1
    assert depth == MAX_DEPTH and node.mime_type == "application/octet-stream"


def test_large_attachment_is_found_without_copying() -> None:
    payload = (b"QUJD" * 19 + b"\r\n") * 130_000  # about 10 MB of base64 lines
    data = (
        b'Content-Type: multipart/mixed; boundary="big"\r\n\r\n--big\r\n\r\nhello\r\n'
        b"--big\r\nContent-Type: application/octet-stream\r\n"
        b"Content-Transfer-Encoding: base64\r\n\r\n" + payload + b"--big--\r\n"
    )
    started = time.perf_counter()
    p = parse(data)
    elapsed = time.perf_counter() - started
    assert p.children[1].size == len(payload) - 2
    assert elapsed < 1.0  # in practice a few milliseconds: only bytes.find runs over the payload


def test_many_lines_that_look_like_delimiters() -> None:
    data = b'Content-Type: multipart/mixed; boundary="a"\r\n\r\n--a\r\n\r\n' + b"--a-x\r\n" * 20_000
    (only,) = parse(data).children
    assert only.body_end == len(data)


def test_huge_header_lines() -> None:
    data = (
        b"Subject: " + b"s" * 1_000_000 + b"\r\nTo: " + b"a@b.example, " * 100_000 + b"\r\n"
        b"Content-Type: text/plain; name=" + b"n" * 1_000_000 + b"\r\n\r\nbody\r\n"
    )
    p = parse(data)
    assert body(data, p) == b"body\r\n"
    env = envelope(data, p)
    assert env.subject is not None and len(env.subject) == 1_000_000
    assert 1000 < len(env.to) < 100_000  # parsed up to a cap
    assert env.to[-1] == Address(None, None, "a", "b.example")


# --------------------------------------------------------------------------------------------
# ENVELOPE
# --------------------------------------------------------------------------------------------


def test_envelope_groups() -> None:
    data = msg(
        """
        From: Grouper <grouper@example.com>
        To: undisclosed-recipients:;
        Cc: Team: a@team.example, "B Person" <b@team.example>;, empty-group:;, solo@example.com
        Bcc: Hidden Group: hidden@example.com;
        Subject: address groups

        body
        """
    )
    env = envelope(data, parse(data))
    group_end = Address(None, None, None, None)
    assert env.to == (Address(None, None, "undisclosed-recipients", None), group_end)
    assert env.cc == (
        Address(None, None, "Team", None),
        Address(None, None, "a", "team.example"),
        Address("B Person", None, "b", "team.example"),
        group_end,
        Address(None, None, "empty-group", None),
        group_end,
        Address(None, None, "solo", "example.com"),
    )
    assert imap_envelope(env) == (
        b'(NIL "address groups" (("Grouper" NIL "grouper" "example.com")) '
        b'(("Grouper" NIL "grouper" "example.com")) (("Grouper" NIL "grouper" "example.com")) '
        b'((NIL NIL "undisclosed-recipients" NIL)(NIL NIL NIL NIL)) '
        b'((NIL NIL "Team" NIL)(NIL NIL "a" "team.example")("B Person" NIL "b" "team.example")'
        b'(NIL NIL NIL NIL)(NIL NIL "empty-group" NIL)(NIL NIL NIL NIL)'
        b'(NIL NIL "solo" "example.com")) '
        b'((NIL NIL "Hidden Group" NIL)(NIL NIL "hidden" "example.com")(NIL NIL NIL NIL)) '
        b"NIL NIL)"
    )


def test_envelope_hard_addresses() -> None:
    data = msg(
        r"""
        From: alice@example.com (Alice Smith)
        Sender: sender-only@example.com
        Reply-To: "Smith, Alice" <alice@example.com>
        To: "john..doe"@example.org, "quoted \"local\" part"@example.org,
         (lead comment) bob (mid) @ (x) example.org (trailing),
         <@route1.example,@route2.example:routed@example.org>,
         Unquoted Display Name <udn@example.org>, John Q. Public <jqp@[192.0.2.1]>,
         no-domain-at-all, <>
        In-Reply-To: <x@example.com> (comment)
        Message-ID: <addresses@example.com>

        body
        """
    )
    env = envelope(data, parse(data))
    assert env.from_ == (Address("Alice Smith", None, "alice", "example.com"),)
    assert env.sender == (Address(None, None, "sender-only", "example.com"),)
    assert env.reply_to == (Address("Smith, Alice", None, "alice", "example.com"),)
    assert env.to == (
        Address(None, None, "john..doe", "example.org"),
        Address(None, None, 'quoted "local" part', "example.org"),
        Address("trailing", None, "bob", "example.org"),
        Address(None, "@route1.example,@route2.example", "routed", "example.org"),
        Address("Unquoted Display Name", None, "udn", "example.org"),
        Address("John Q. Public", None, "jqp", "[192.0.2.1]"),
        Address(None, None, "no-domain-at-all", "MISSING_DOMAIN"),
        Address(None, None, "MISSING_MAILBOX", "MISSING_DOMAIN"),
    )
    assert env.in_reply_to == "<x@example.com> (comment)"
    assert b'"quoted \\"local\\" part"' in imap_envelope(env)


def test_envelope_raw_values() -> None:
    data = msg(
        """
        From: =?iso-8859-1?Q?=C6r=F8sk=F8bing?= <aero@example.com>
        Subject: =?utf-8?q?caf=C3=A9?= and
         a folded line
        Date: not a date at all

        body
        """
    )
    env = envelope(data, parse(data))
    assert env.subject == "=?utf-8?q?caf=C3=A9?= and a folded line"
    assert env.from_[0].name == "=?iso-8859-1?Q?=C6r=F8sk=F8bing?="
    assert env.date == "not a date at all"
    assert env.to == () and env.message_id is None
    headers, _ = search_text(data, parse(data))
    assert "Subject: caf\u00e9 and a folded line" in headers
    assert "From: \u00c6r\u00f8sk\u00f8bing <aero@example.com>" in headers


def test_envelope_json_round_trip() -> None:
    data = msg(
        """
        From: a@example.com
        Reply-To: b@example.com
        To: Team: c@example.com;
        Subject: \udcff raw

        x
        """.replace("\udcff", "\u00e9")
    )
    env = envelope(data, parse(data))
    assert envelope_from_json(envelope_to_json(env)) == env


# --------------------------------------------------------------------------------------------
# JSON, decoded text, preview
# --------------------------------------------------------------------------------------------


def test_json_round_trip_keeps_non_utf8() -> None:
    data = b'Content-Type: text/plain; name="\xff\xfe.txt"\r\nContent-Language: en, de\r\n\r\nx\r\n'
    p = parse(data)
    assert p.params["name"].encode("utf-8", "surrogateescape") == b"\xff\xfe.txt"
    text = to_json(p)
    assert text.isascii()
    assert from_json(text) == p
    assert p.language == ("en", "de")
    bs = imap_bodystructure(p, data, True)
    assert b'"name*" "utf-8\'\'%FF%FE.txt"' in bs and b'("en" "de")' in bs


def test_to_json_is_compact() -> None:
    p = parse(SIMPLE)
    assert to_json(p) == f'{{"o":[0,{p.header_end},{p.body_start},{len(SIMPLE)}],"n":2}}'


def test_search_text_decodes_parts() -> None:
    data = msg(
        """
        Subject: =?utf-8?b?SGVsbG8=?= =?utf-8?b?IFdvcmxk?=
        Content-Type: multipart/mixed; boundary="enc"

        --enc
        Content-Type: text/plain; charset=utf-8
        Content-Transfer-Encoding: base64

        SGlkZGVuIHdvcmQ6IHphbnppYmFy
        --enc
        Content-Type: text/plain; charset=utf-8
        Content-Transfer-Encoding: quoted-printable

        quetzal=
        coatl cr=C3=A8me
        --enc
        Content-Type: text/html; charset=iso-8859-1

        <html><style>p {color: red}</style><p>K\u00fchl&amp;schrank</p><script>x()</script></html>
        --enc
        Content-Type: image/png

        notext
        --enc--
        """
    ).replace("K\u00fchl".encode(), b"K\xfchl")
    headers, text = search_text(data, parse(data))
    assert "Subject: Hello World" in headers
    assert "Hidden word: zanzibar" in text
    assert "quetzalcoatl cr\u00e8me" in text
    assert "K\u00fchl&schrank" in text
    assert "color" not in text and "x()" not in text and "notext" not in text


def test_search_text_is_capped() -> None:
    data = b"Content-Type: text/plain\r\n\r\n" + b"word " * 400_000
    _, text = search_text(data, parse(data))
    assert len(text) == structure.TEXT_CAP


def test_preview() -> None:
    data = msg(
        """
        Content-Type: multipart/mixed; boundary="p"

        --p
        Content-Type: multipart/alternative; boundary="q"

        --q
        Content-Type: text/html

        <p>html   version</p>
        --q
        Content-Type: text/plain

        plain\tversion
           with   lots of
        white space
        --q--
        --p--
        """
    )
    assert preview(data, parse(data)) == "plain version with lots of white space"
    long = msg("Content-Type: text/plain\n\n" + "x " * 500)
    assert preview(long, parse(long)) == ("x " * 100)[:PREVIEW_CHARS]
    attachment_only = msg("Content-Type: text/plain\nContent-Disposition: attachment\n\nsecret\n")
    assert preview(attachment_only, parse(attachment_only)) == ""


def test_decode_words() -> None:
    assert decode_words("plain") == "plain"
    assert decode_words("=?utf-8?q?a_b?= =?utf-8?q?c?=") == "a bc"
    assert decode_words("=?x-unknown?q?mystery?= x") == "mystery x"
    assert decode_words("=?utf-8*en?B?w6k=?=") == "\u00e9"
    assert decode_words("=?utf-8?q?unterminated") == "=?utf-8?q?unterminated"
    # A multi-byte character split across two encoded words.
    assert decode_words("=?utf-8?b?4oI=?= =?utf-8?b?rA==?=") == "\u20ac"


# --------------------------------------------------------------------------------------------
# The shared corpora
# --------------------------------------------------------------------------------------------


@cache
def corpus(name: str) -> list[bytes]:
    path = DATA / name
    assert path.exists(), f"test material {path} is missing (shared/ sits beside the repo)"
    box = mailbox.mbox(str(path), create=False)
    try:
        return [normalize_crlf(box.get_bytes(key)) for key in box.iterkeys()]
    finally:
        box.close()


@pytest.mark.parametrize("name", ["test.mbox", "torture.mbox"])
def test_corpus(name: str) -> None:
    messages = corpus(name)
    assert len(messages) >= 40
    for index, data in enumerate(messages, 1):
        try:
            check_everything(data)
        except AssertionError as e:
            raise AssertionError(f"{name} message {index}: {e}") from e


def torture(subject: str) -> tuple[bytes, Part]:
    for data in corpus("torture.mbox"):
        if re.search(rb"(?m)^Subject: " + re.escape(subject.encode()), data):
            return data, parse(data)
    raise AssertionError(f"torture.mbox has no message {subject!r}")


def test_torture_nested_message_in_alternative() -> None:
    data, p = torture("nested message/rfc822 inside multipart/mixed")
    inner = find_section(p, [2, 2])
    assert inner is not None and inner.mime_type == "message/rfc822"
    leaf = find_section(p, [2, 2, 1])
    assert leaf is not None and body(data, leaf) == b"innermost-marker text in the inner message."
    third = find_section(p, [2, 2, 2, 1])
    assert third is not None and body(data, third).startswith(b"Third level body")


def test_torture_digest() -> None:
    _, p = torture("Weekly digest, multipart/digest")
    assert [c.mime_type for c in p.children] == [
        "message/rfc822",
        "message/rfc822",
        "text/plain",
        "message/rfc822",
    ]


def test_torture_one_megabyte_attachment() -> None:
    data, p = torture("one megabyte attachment")
    attachment = p.children[1]
    assert attachment.size > 1_000_000 and body(data, attachment).endswith(b"==")


def test_torture_twelve_levels() -> None:
    data, p = torture("twelve levels of multipart nesting")
    leaf = find_section(p, [2] * 12 + [1])
    assert leaf is not None and body(data, leaf) == b"bottom of the nesting"


def test_torture_empty_message_parts() -> None:
    _, p = torture("empty and header-only message/rfc822 parts")
    empty, header_only, encoded = p.children
    assert empty.size == 0 and empty.envelope == Envelope()
    assert header_only.envelope is not None
    assert header_only.envelope.subject == "header-only inner message"
    assert encoded.encoding == "base64" and encoded.message is not None


# --------------------------------------------------------------------------------------------
# Fuzzing
# --------------------------------------------------------------------------------------------

FUZZ_BASE = msg(
    """
    From: "A" <a@example.com>, Group: b@example.com;
    Subject: =?utf-8?q?fuzz?=
    Content-Type: multipart/mixed; boundary="m"

    --m
    Content-Type: multipart/alternative; boundary="a"

    --a
    Content-Type: text/plain; charset*0*=utf-8''x; format=flowed

    plain
    --a
    Content-Type: text/html; charset="utf-8"
    Content-Transfer-Encoding: quoted-printable

    <p>caf=C3=A9</p>
    --a--
    --m
    Content-Type: message/rfc822

    From: inner@example.com
    Content-Type: multipart/digest; boundary="d"

    --d

    Subject: digest

    x
    --d--
    --m
    Content-Type: application/octet-stream; name*1="b"; name*0="a"
    Content-Transfer-Encoding: base64

    AAECAw==
    --m--
    """
)

_FUZZ = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


@_FUZZ
@given(st.binary(max_size=600))
def test_fuzz_random_bytes(data: bytes) -> None:
    check_everything(data)
    check_everything(normalize_crlf(data))


_EDIT = st.tuples(
    st.sampled_from(["delete", "insert", "duplicate", "replace"]),
    st.integers(min_value=0, max_value=len(FUZZ_BASE)),
    st.integers(min_value=0, max_value=80),
    st.sampled_from(
        [b"\r\n", b"--", b"--m", b"--a--", b"\r\n\r\n", b":", b";", b'"', b"(", b"\x00", b"\xff"]
    )
    | st.binary(max_size=8),
)


@_FUZZ
@given(st.lists(_EDIT, min_size=1, max_size=6))
def test_fuzz_mutated_multipart(edits: list[tuple[str, int, int, bytes]]) -> None:
    data = FUZZ_BASE
    for op, at, length, junk in edits:
        at = min(at, len(data))
        if op == "delete":
            data = data[:at] + data[at + length :]
        elif op == "insert":
            data = data[:at] + junk + data[at:]
        elif op == "duplicate":
            data = data[:at] + data[at : at + length] + data[at:]
        else:
            data = data[:at] + junk + data[at + len(junk) :]
    check_everything(data)
    check_everything(normalize_crlf(data))


def test_stored_form_round_trips() -> None:
    from postfach.mime.stored import load_parsed, parse_for_storage
    from postfach.mime.structure import imap_envelope

    raw = normalize_crlf(
        b"From: A <a@example.org>\nTo: b@example.org\nSubject: hi\n"
        b"Content-Type: multipart/mixed; boundary=x\n\n--x\n\none\n--x--\n"
    )
    stored = load_parsed(parse_for_storage(raw))
    assert stored.part == parse(raw)
    assert b'"hi"' in imap_envelope(stored.envelope)

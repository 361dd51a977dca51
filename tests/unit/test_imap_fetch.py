"""FETCH responses: items, sections, partials, BINARY, \\Seen, laziness (pure, no event loop).

The corpus (``shared/data/test.mbox`` beside the repository; a missing file fails) is checked
against Python's own ``email`` parser as an independent oracle: every leaf part's BODY[n] equals
the raw payload it finds and BINARY[n] its decoded payload.
"""

from __future__ import annotations

import email
import email.message
import email.policy
import hashlib
import mailbox
import re
import textwrap
from functools import cache
from pathlib import Path
from typing import Any

import pytest

from postfach.imap.commands import FetchAttr, FetchBinarySize, FetchItem, FetchSection
from postfach.imap.fetch import (
    FetchResponse,
    UnknownCte,
    base64_nul_parts,
    decode_qp,
    email_id,
    fetch_response,
    implies_seen,
    needs_data,
    thread_id,
)
from postfach.mime.stored import Parsed, load_parsed, parse_for_storage
from postfach.mime.structure import find_section, normalize_crlf
from postfach.store.api import Flag, MessageMeta

DATA = Path(__file__).resolve().parents[3] / "shared" / "data"

# --------------------------------------------------------------------------------------------
# Helpers: messages, metas, and a strict reader for one FETCH response
# --------------------------------------------------------------------------------------------


def msg(text: str) -> bytes:
    return normalize_crlf(textwrap.dedent(text).lstrip("\n").encode())


def meta_for(
    data: bytes, uid: int = 7, flags: Flag = Flag.NONE, keywords: tuple[str, ...] = ()
) -> MessageMeta:
    return MessageMeta(
        id=uid,
        mailbox_id=1,
        uid=uid,
        modseq=42,
        flags=flags,
        keywords=keywords,
        internal_date=1_700_000_000,  # 14-Nov-2023 22:13:20 +0000
        save_date=1_700_000_100,
        size=len(data),
        blob=hashlib.sha256(data).hexdigest(),
    )


class Counting:
    """Accessors that count their calls (laziness checks)."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.parsed_obj = load_parsed(parse_for_storage(data))
        self.parsed_calls = 0
        self.data_calls = 0

    def parsed(self) -> Parsed:
        self.parsed_calls += 1
        return self.parsed_obj

    def octets(self) -> bytes:
        self.data_calls += 1
        return self.data


def run(
    data: bytes, items: list[FetchItem], seq: int = 3, **kw: Any
) -> tuple[FetchResponse, Counting]:
    acc = Counting(data)
    meta = kw.pop("meta", None) or meta_for(data)
    resp = fetch_response(seq, meta, items, parsed=acc.parsed, data=acc.octets, **kw)
    return resp, acc


_NAME = re.compile(rb"[A-Z0-9.]+")
_ATOM = re.compile(rb"[^\x00-\x20()\"{\[\]\x7f]+")


def read_fetch(raw: bytes) -> tuple[int, list[tuple[str, Any]]]:
    """``* n FETCH (...)`` CRLF into (n, [(item name, value)]); strict about the syntax."""
    m = re.match(rb"\* (\d+) FETCH \(", raw)
    assert m, raw[:40]
    pos = m.end()
    items: list[tuple[str, Any]] = []
    while raw[pos : pos + 1] != b")":
        if items:
            assert raw[pos : pos + 1] == b" ", raw[pos : pos + 20]
            pos += 1
        nm = _NAME.match(raw, pos)
        assert nm, raw[pos : pos + 20]
        pos = nm.end()
        name = nm.group()
        if raw[pos : pos + 1] == b"[":
            end = raw.index(b"]", pos)
            name += raw[pos : end + 1]
            pos = end + 1
            pm = re.compile(rb"<\d+>").match(raw, pos)
            if pm:
                name += pm.group()
                pos = pm.end()
        assert raw[pos : pos + 1] == b" ", raw[pos : pos + 20]
        value, pos = _value(raw, pos + 1)
        items.append((name.decode(), value))
    assert raw[pos:] == b")\r\n", raw[pos:]
    return int(m.group(1)), items


def _value(raw: bytes, pos: int) -> tuple[Any, int]:
    c = raw[pos : pos + 1]
    if c == b"(":
        out: list[Any] = []
        pos += 1
        while raw[pos : pos + 1] != b")":
            if out and raw[pos : pos + 1] == b" ":
                pos += 1
            v, pos = _value(raw, pos)
            out.append(v)
        return out, pos + 1
    if c == b'"':
        buf = bytearray()
        pos += 1
        while raw[pos : pos + 1] != b'"':
            ch = raw[pos : pos + 1]
            assert ch not in (b"\r", b"\n", b"\x00", b""), "bad quoted char"
            if ch == b"\\":
                pos += 1
                ch = raw[pos : pos + 1]
                assert ch in (b"\\", b'"')
            buf += ch
            pos += 1
        return bytes(buf), pos + 1
    m = re.compile(rb"(~?)\{(\d+)\}\r\n").match(raw, pos)
    if m:
        n = int(m.group(2))
        value = raw[m.end() : m.end() + n]
        assert len(value) == n
        if not m.group(1):
            assert b"\x00" not in value, "NUL in a literal (needs literal8)"
        return value, m.end() + n
    m = _ATOM.match(raw, pos)
    assert m, raw[pos : pos + 20]
    atom = m.group().decode()
    if atom == "NIL":
        return None, m.end()
    if atom.isdigit():
        return int(atom), m.end()
    return atom, m.end()


def items_of(resp: FetchResponse) -> dict[str, Any]:
    _, items = read_fetch(resp.to_bytes())
    return dict(items)


# --------------------------------------------------------------------------------------------
# A hand-written message
# --------------------------------------------------------------------------------------------

SAMPLE = msg(
    """
    Date: Tue, 03 Jan 2023 20:03:00 +1000
    From: Alice <alice@example.org>
    To: Bob <bob@example.org>,
     Carol <carol@example.org>
    Subject: Hello
    Message-ID: <root@example.org>
    X-Custom: one
    MIME-Version: 1.0
    Content-Type: multipart/mixed; boundary="b1"

    preamble
    --b1
    Content-Type: text/plain; charset=utf-8
    Content-Transfer-Encoding: quoted-printable

    Gr=C3=BC=C3=9Fe, soft=
     break
    --b1
    Content-Type: application/octet-stream
    Content-Transfer-Encoding: base64

    AAECAwQFBgc=
    --b1
    Content-Type: message/rfc822

    Subject: inner
    From: x@y.example

    inner body
    --b1
    Content-Type: text/plain
    Content-Transfer-Encoding: x-uuencode

    begin 644 f
    --b1--
    """
)


def test_body_whole_message_is_the_stored_bytes_without_copy() -> None:
    resp, acc = run(SAMPLE, [FetchSection(peek=True)])
    assert resp.chunks[1] is SAMPLE  # the stored bytes themselves, as their own chunk
    assert resp.chunks[0] == b"* 3 FETCH (BODY[] {%d}\r\n" % len(SAMPLE)
    assert resp.chunks[2] == b")\r\n"
    assert resp.size == len(resp.to_bytes())
    assert acc.data_calls == 1 and not resp.set_seen


@pytest.mark.parametrize(
    ("item", "expected"),
    [
        (FetchSection(peek=True, part=(1,)), b"Gr=C3=BC=C3=9Fe, soft=\r\n break"),
        (FetchSection(peek=True, part=(2,)), b"AAECAwQFBgc="),
        (FetchSection(peek=True, part=(3,), spec="TEXT"), b"inner body"),
        (
            FetchSection(peek=True, part=(3,), spec="HEADER"),
            b"Subject: inner\r\nFrom: x@y.example\r\n\r\n",
        ),
        (FetchSection(peek=True, part=(3, 1)), b"inner body"),
        (FetchSection(peek=True, part=(2,), spec="MIME"), None),  # checked below
        (FetchSection(peek=True, part=(9,)), None),
        (FetchSection(peek=True, part=(1,), spec="HEADER"), None),  # not a message
        (FetchSection(peek=True, part=(1, 1)), None),
    ],
)
def test_sections(item: FetchSection, expected: bytes | None) -> None:
    resp, _ = run(SAMPLE, [item])
    (name, value), *_ = read_fetch(resp.to_bytes())[1]
    assert name.startswith("BODY[")
    if item.spec == "MIME":
        assert value == (
            b"Content-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n\r\n"
        )
    else:
        assert value == expected


def test_section_names_are_echoed() -> None:
    items: list[FetchItem] = [
        FetchSection(peek=True, part=(3,), spec="HEADER.FIELDS", fields=("SUBJECT", "X-A B")),
        FetchSection(peek=False, part=(1,), spec="MIME"),
        FetchSection(peek=True, spec="TEXT", partial=(5, 3)),
    ]
    resp, _ = run(SAMPLE, items)
    names = [n for n, _ in read_fetch(resp.to_bytes())[1]]
    assert names[:3] == ['BODY[3.HEADER.FIELDS (SUBJECT "X-A B")]', "BODY[1.MIME]", "BODY[TEXT]<5>"]


def test_header_fields_and_not() -> None:
    fields = FetchSection(peek=True, spec="HEADER.FIELDS", fields=("TO", "SUBJECT", "NOPE"))
    resp, _ = run(SAMPLE, [fields])
    assert items_of(resp)["BODY[HEADER.FIELDS (TO SUBJECT NOPE)]"] == (
        b"To: Bob <bob@example.org>,\r\n Carol <carol@example.org>\r\nSubject: Hello\r\n\r\n"
    )
    negated = FetchSection(
        peek=True,
        spec="HEADER.FIELDS.NOT",
        fields=("DATE", "FROM", "TO", "MESSAGE-ID", "MIME-VERSION", "CONTENT-TYPE"),
    )
    resp, _ = run(SAMPLE, [negated])
    (_, value), *_ = read_fetch(resp.to_bytes())[1]
    assert value == b"Subject: Hello\r\nX-Custom: one\r\n\r\n"
    nothing = FetchSection(peek=True, spec="HEADER.FIELDS", fields=("NOPE",))
    resp, _ = run(SAMPLE, [nothing])
    assert read_fetch(resp.to_bytes())[1][0][1] == b"\r\n"


@pytest.mark.parametrize(
    ("partial", "expected"),
    [((0, 10), SAMPLE[:10]), ((10, 5), SAMPLE[10:15]), ((len(SAMPLE) - 2, 100), b"\r\n")],
)
def test_partial(partial: tuple[int, int], expected: bytes) -> None:
    resp, _ = run(SAMPLE, [FetchSection(peek=True, partial=partial)])
    assert resp.to_bytes() == (
        b"* 3 FETCH (BODY[]<%d> {%d}\r\n" % (partial[0], len(expected)) + expected + b")\r\n"
    )


def test_partial_past_the_end_is_empty() -> None:
    resp, _ = run(SAMPLE, [FetchSection(peek=True, partial=(len(SAMPLE) + 5, 10))])
    assert resp.to_bytes() == b'* 3 FETCH (BODY[]<%d> "")\r\n' % (len(SAMPLE) + 5)


def test_body_0_100_is_answered_as_origin_only() -> None:
    resp, _ = run(SAMPLE, [FetchSection(peek=True, partial=(0, 100))])
    assert resp.to_bytes().startswith(b"* 3 FETCH (BODY[]<0> {100}\r\n")


def test_binary_decodes_and_uses_literal8_for_nul() -> None:
    resp, _ = run(SAMPLE, [FetchSection(peek=True, part=(2,), binary=True)])
    assert resp.to_bytes() == b"* 3 FETCH (BINARY[2] ~{8}\r\n\x00\x01\x02\x03\x04\x05\x06\x07)\r\n"
    resp, _ = run(SAMPLE, [FetchSection(peek=True, part=(1,), binary=True)])
    assert items_of(resp)["BINARY[1]"] == "Grüße, soft break".encode()
    resp, _ = run(SAMPLE, [FetchSection(peek=True, part=(2,), binary=True, partial=(6, 5))])
    assert resp.to_bytes() == b"* 3 FETCH (BINARY[2]<6> {2}\r\n\x06\x07)\r\n"
    resp, _ = run(SAMPLE, [FetchSection(peek=True, part=(3,), binary=True)])
    assert items_of(resp)["BINARY[3]"] == b"Subject: inner\r\nFrom: x@y.example\r\n\r\ninner body"
    resp, _ = run(SAMPLE, [FetchSection(peek=True, part=(8,), binary=True)])
    assert items_of(resp)["BINARY[8]"] is None


def test_quoted_printable_is_decoded_as_rfc2045_says() -> None:
    """RFC 2045 §6.7 rules 3 and 5 (imaptest fetch-binary-mime-qp): trailing blanks are
    padding, ``=`` then blanks before the line end is a soft break."""
    raw = b"hello  \r\nbar=\r\n\r\nfoo\t=\r\nbar\r\nfoo\t \t= \r\n=62\r\nfoo =\t\r\nbar\r\n"
    assert decode_qp(raw) == b"hello\r\nbar\r\nfoo\tbar\r\nfoo\t \tb\r\nfoo bar\r\n"
    assert decode_qp(b"a=3D=3db=\nc=XY  \nlast  ") == b"a==bc=XY\nlast"
    assert decode_qp(b"") == b""
    assert decode_qp(b"no end=") == b"no end"
    data = msg("Content-Transfer-Encoding: quoted-printable\n\nsoft =\t\nbreak  \n")
    resp, _ = run(data, [FetchSection(peek=True, part=(1,), binary=True), FetchBinarySize((1,))])
    got = items_of(resp)
    assert got["BINARY[1]"] == b"soft break\r\n" and got["BINARY.SIZE[1]"] == 12


def test_nul_parts_become_base64() -> None:
    """RFC 3516 §4.4 / RFC 9051 §4.3 (imaptest append-binary): no literal carries NUL, so a
    literal8 APPEND's parts with NUL are stored base64; BINARY gives back the same octets."""
    single = (
        b"From: a@b.example\r\nContent-Type: application/octet-stream\r\n"
        b"Content-Transfer-Encoding: binary\r\n\r\n\x00-\xe4\r\n\r\n"
    )
    out = base64_nul_parts(single)
    assert out == (
        b"From: a@b.example\r\nContent-Type: application/octet-stream\r\n"
        b"Content-Transfer-Encoding: base64\r\n\r\nAC3kDQoNCg=="
    )
    resp, _ = run(out, [FetchSection(peek=True, part=(1,), binary=True), FetchBinarySize((1,))])
    assert items_of(resp) == {"BINARY[1]": b"\x00-\xe4\r\n\r\n", "BINARY.SIZE[1]": 7}
    multi = (
        b'Content-Type: multipart/mixed; boundary="b"\r\n\r\n--b\r\nContent-Type: text/plain\r\n'
        b"\r\nhi\r\n--b\r\nContent-Type: application/x\r\nContent-Transfer-Encoding:\r\n binary"
        b"\r\n\r\n\x00\x01\x02\r\n--b\r\n\r\n" + b"\x00" * 100 + b"\r\n--b--\r\n"
    )
    out = base64_nul_parts(multi)
    assert b"\x00" not in out and b"binary" not in out
    assert b"Content-Type: text/plain\r\n\r\nhi\r\n" in out  # parts without NUL stay as they are
    assert b"Content-Transfer-Encoding: base64\r\n\r\nAAEC\r\n--b\r\n" in out
    assert b"\r\n--b\r\nContent-Transfer-Encoding: base64\r\n\r\nAAAA" in out
    lines = out.split(b"\r\n")
    assert max(len(line) for line in lines) <= 76
    resp, _ = run(out, [FetchSection(peek=True, part=(3,), binary=True)])
    assert items_of(resp)["BINARY[3]"] == b"\x00" * 100
    plain = msg("Subject: no nul\n\nbody\n")
    assert base64_nul_parts(plain) is plain


def test_nul_without_a_header_or_after_a_cr_nul_lf_line_becomes_base64() -> None:
    # A part with no empty line (parsed as all header) whose text holds NUL is a body.
    headerless = (
        b'Content-Type: multipart/mixed; boundary="b"\r\n\r\n--b\r\nno header\x00 here\r\n--b--\r\n'
    )
    out = base64_nul_parts(headerless)
    assert b"\x00" not in out
    resp, _ = run(out, [FetchSection(peek=True, part=(1,), binary=True)])
    assert items_of(resp)["BINARY[1]"] == b"no header\x00 here"
    assert base64_nul_parts(b"hi\x00there\r\n") == (
        b"Content-Transfer-Encoding: base64\r\n\r\naGkAdGhlcmUNCg=="
    )
    # NUL between CR and LF of the line before Content-Transfer-Encoding: removing that field
    # once left the header looking unterminated and the body unencoded.
    cr_nul_lf = b"Subject: a\r\x00\nContent-Transfer-Encoding: 7bit\r\n\r\nbody\x00x\r\n"
    out = base64_nul_parts(cr_nul_lf)
    assert out == b"Subject: a\r\x00\nContent-Transfer-Encoding: base64\r\n\r\nYm9keQB4DQo="
    resp, _ = run(out, [FetchSection(peek=True, part=(1,), binary=True)])
    assert items_of(resp)["BINARY[1]"] == b"body\x00x\r\n"
    # Bare-LF headers keep their line ends.
    assert base64_nul_parts(b"Subject: a\n\nbody\x00\n") == (
        b"Subject: a\nContent-Transfer-Encoding: base64\n\nYm9keQAK"
    )


def test_no_nul_in_any_non_binary_literal() -> None:
    # RFC 9051 §4.3: NUL only in literal8. What still holds NUL (delivered by SMTP, a NUL in a
    # header) goes out with 0x80 in its place, as Dovecot does; the sizes stay the same.
    data = b"Subject: a\x00b\r\n\r\nbody\x00x\r\n"
    items: list[FetchItem] = [
        FetchSection(peek=True),
        FetchSection(peek=True, spec="HEADER"),
        FetchSection(peek=True, spec="TEXT"),
        FetchSection(peek=True, part=(1,)),
        FetchAttr("RFC822"),
        FetchAttr("RFC822.SIZE"),
    ]
    resp, _ = run(data, items)
    wire = resp.to_bytes()
    assert b"\x00" not in wire and b"~{" not in wire
    got = items_of(resp)
    assert got["BODY[]"] == data.replace(b"\x00", b"\x80")
    assert got["RFC822.SIZE"] == len(got["RFC822"]) == len(data)
    resp, _ = run(data, [FetchSection(peek=True, binary=True)])
    assert resp.to_bytes().count(b"~{") == 1 and items_of(resp)["BINARY[]"] == data


def test_flags_show_recent_when_asked() -> None:
    resp, _ = run(SAMPLE, [FetchAttr("FLAGS")])
    assert b"\\Recent" not in resp.to_bytes()
    resp, _ = run(SAMPLE, [FetchAttr("FLAGS")], recent=True)  # an IMAP4rev1 session's \\Recent
    assert resp.to_bytes() == b"* 3 FETCH (FLAGS (\\Recent))\r\n"


def test_binary_size() -> None:
    items: list[FetchItem] = [FetchBinarySize((1,)), FetchBinarySize((2,)), FetchBinarySize((3,))]
    resp, _ = run(SAMPLE, [*items, FetchBinarySize((9,)), FetchBinarySize(())])
    got = items_of(resp)
    assert got["BINARY.SIZE[1]"] == len("Grüße, soft break".encode())
    assert got["BINARY.SIZE[2]"] == 8
    assert got["BINARY.SIZE[3]"] == len(b"Subject: inner\r\nFrom: x@y.example\r\n\r\ninner body")
    assert got["BINARY.SIZE[9]"] is None
    assert got["BINARY.SIZE[]"] == len(SAMPLE)


def test_binary_of_unknown_encoding_raises() -> None:
    with pytest.raises(UnknownCte) as e:
        run(SAMPLE, [FetchSection(peek=True, part=(4,), binary=True)])
    assert e.value.encoding == "x-uuencode"
    with pytest.raises(UnknownCte):
        run(SAMPLE, [FetchBinarySize((4,))])
    resp, _ = run(SAMPLE, [FetchSection(peek=True, part=(4,))])  # BODY is fine
    assert items_of(resp)["BODY[4]"] == b"begin 644 f"


# --------------------------------------------------------------------------------------------
# Simple items, UID, MODSEQ, \Seen
# --------------------------------------------------------------------------------------------


def test_simple_items() -> None:
    meta = meta_for(SAMPLE, flags=Flag.ANSWERED | Flag.FLAGGED, keywords=("$Forwarded",))
    items: list[FetchItem] = [
        FetchAttr("FLAGS"),
        FetchAttr("INTERNALDATE"),
        FetchAttr("RFC822.SIZE"),
        FetchAttr("MODSEQ"),
        FetchAttr("SAVEDATE"),
        FetchAttr("EMAILID"),
    ]
    resp, acc = run(SAMPLE, items, meta=meta)
    assert resp.to_bytes() == (
        b'* 3 FETCH (FLAGS (\\Answered \\Flagged $Forwarded) INTERNALDATE "14-Nov-2023 22:13:20'
        b' +0000" RFC822.SIZE %d MODSEQ (42) SAVEDATE "14-Nov-2023 22:15:00 +0000" EMAILID (M%s))'
        b"\r\n" % (len(SAMPLE), meta.blob[:24].encode())
    )
    assert acc.parsed_calls == 0 and acc.data_calls == 0  # nothing loaded


def test_structure_items_need_no_octets() -> None:
    items: list[FetchItem] = [FetchAttr("ENVELOPE"), FetchAttr("BODYSTRUCTURE"), FetchAttr("BODY")]
    resp, acc = run(SAMPLE, items)
    got = items_of(resp)
    assert acc.parsed_calls == 1 and acc.data_calls == 0
    env = got["ENVELOPE"]
    assert env[0] == b"Tue, 03 Jan 2023 20:03:00 +1000" and env[1] == b"Hello"
    assert env[2] == [[b"Alice", None, b"alice", b"example.org"]]
    assert len(env[5]) == 2 and env[9] == b"<root@example.org>"
    assert got["BODYSTRUCTURE"][4:] == [b"mixed", [b"boundary", b"b1"], None, None, None]
    assert got["BODY"][4:] == [b"mixed"]


def test_uid_fetch_puts_uid_first_once() -> None:
    resp, _ = run(SAMPLE, [FetchAttr("FLAGS")], uid=True)
    assert resp.to_bytes() == b"* 3 FETCH (UID 7 FLAGS ())\r\n"
    resp, _ = run(SAMPLE, [FetchAttr("FLAGS"), FetchAttr("UID")], uid=True)
    assert resp.to_bytes() == b"* 3 FETCH (FLAGS () UID 7)\r\n"


def test_duplicate_items_are_sent_once() -> None:
    resp, _ = run(SAMPLE, [FetchAttr("RFC822.SIZE"), FetchAttr("RFC822.SIZE")])
    assert resp.to_bytes() == b"* 3 FETCH (RFC822.SIZE %d)\r\n" % len(SAMPLE)


@pytest.mark.parametrize(
    ("item", "seen"),
    [
        (FetchSection(peek=False), True),
        (FetchSection(peek=True), False),
        (FetchSection(peek=False, binary=True, part=(1,)), True),
        (FetchSection(peek=True, binary=True, part=(1,)), False),
        (FetchAttr("RFC822"), True),
        (FetchAttr("RFC822.TEXT"), True),
        (FetchAttr("RFC822.HEADER"), False),
        (FetchAttr("ENVELOPE"), False),
        (FetchBinarySize((1,)), False),
    ],
)
def test_implied_seen(item: FetchItem, seen: bool) -> None:
    assert implies_seen([item]) is seen
    resp, _ = run(SAMPLE, [item])
    assert resp.set_seen is seen
    flags = items_of(resp).get("FLAGS")
    assert flags == (["\\Seen"] if seen else None)  # FLAGS included when they change
    resp, _ = run(SAMPLE, [item], readonly=True)  # EXAMINE never sets \Seen
    assert not resp.set_seen and "FLAGS" not in items_of(resp)
    resp, _ = run(SAMPLE, [item], meta=meta_for(SAMPLE, flags=Flag.SEEN))
    assert not resp.set_seen and "FLAGS" not in items_of(resp)


def test_condstore_flags_changed_adds_uid_and_modseq() -> None:
    # Two-phase use: the session stored \Seen first, then builds the response.
    meta = meta_for(SAMPLE, flags=Flag.SEEN)
    resp, _ = run(SAMPLE, [FetchSection(peek=False, part=(3,), spec="TEXT")], meta=meta,
                  condstore=True, flags_changed=True)  # fmt: skip
    assert resp.to_bytes() == (
        b"* 3 FETCH (UID 7 BODY[3.TEXT] {10}\r\ninner body FLAGS (\\Seen) MODSEQ (42))\r\n"
    )
    # Without a flag change, CONDSTORE adds nothing (RFC 7162 §3.1).
    resp, _ = run(SAMPLE, [FetchAttr("RFC822.SIZE")], condstore=True)
    assert resp.to_bytes() == b"* 3 FETCH (RFC822.SIZE %d)\r\n" % len(SAMPLE)


def test_rfc822_items() -> None:
    header_end = SAMPLE.index(b"\r\n\r\n") + 4
    items: list[FetchItem] = [FetchAttr("RFC822.HEADER"), FetchAttr("RFC822.TEXT")]
    resp, _ = run(SAMPLE, [*items, FetchAttr("RFC822")], meta=meta_for(SAMPLE, flags=Flag.SEEN))
    got = items_of(resp)
    assert got["RFC822.HEADER"] == SAMPLE[:header_end]
    assert got["RFC822.TEXT"] == SAMPLE[header_end:]
    assert got["RFC822"] == SAMPLE


def test_preview() -> None:
    resp, _ = run(SAMPLE, [FetchAttr("PREVIEW")])
    assert items_of(resp)["PREVIEW"] == "Grüße, soft break".encode()  # a literal: 8-bit
    assert b"{" in resp.to_bytes()
    resp, _ = run(SAMPLE, [FetchAttr("PREVIEW", "LAZY")], utf8=True)
    assert resp.to_bytes() == '* 3 FETCH (PREVIEW "Grüße, soft break")\r\n'.encode()


def test_email_and_thread_ids() -> None:
    root = SAMPLE
    reply = msg(
        """
        Subject: Re: Hello
        Message-ID: <reply@example.org>
        In-Reply-To: <root@example.org>

        hi
        """
    )
    deeper = msg(
        """
        Subject: Re: Re: Hello
        Message-ID: <deeper@example.org>
        References: <root@example.org>
         <reply@example.org>
        In-Reply-To: <reply@example.org>

        hi
        """
    )
    lonely = b"Subject: none\r\n\r\nbody\r\n"
    ids = []
    for data in (root, reply, deeper, lonely):
        m = meta_for(data)
        p = load_parsed(parse_for_storage(data))
        ids.append(thread_id(m, p, data))
        resp, _ = run(data, [FetchAttr("THREADID"), FetchAttr("EMAILID")], meta=m)
        assert items_of(resp) == {"THREADID": [ids[-1]], "EMAILID": [email_id(m)]}
        assert re.fullmatch(r"[A-Za-z0-9_-]{1,255}", ids[-1])
    assert ids[0] == ids[1] == ids[2] != ids[3]
    assert ids[3] == "T" + hashlib.sha256(lonely).hexdigest()[:24]
    assert email_id(meta_for(root)) == email_id(meta_for(bytes(root)))
    assert email_id(meta_for(root)) != email_id(meta_for(reply))


def test_needs_data() -> None:
    assert not needs_data([FetchAttr("FLAGS"), FetchAttr("ENVELOPE"), FetchAttr("UID")])
    assert needs_data([FetchAttr("RFC822.HEADER")])
    assert needs_data([FetchSection(peek=True)])
    assert needs_data([FetchAttr("PREVIEW")])


def test_unknown_item() -> None:
    with pytest.raises(ValueError):
        run(SAMPLE, [FetchAttr("X-NOPE")])


# --------------------------------------------------------------------------------------------
# The corpus, against the email package
# --------------------------------------------------------------------------------------------


@cache
def corpus() -> list[bytes]:
    path = DATA / "test.mbox"
    assert path.exists(), f"test material {path} is missing (shared/ sits beside the repo)"
    box = mailbox.mbox(str(path), create=False)
    try:
        return [normalize_crlf(box.get_bytes(key)) for key in box.iterkeys()]
    finally:
        box.close()


def _leaves(em: Any, path: tuple[int, ...], out: list[tuple[tuple[int, ...], Any]]) -> None:
    """IMAP part numbers of the leaves, walking the email package's tree (RFC 3501 §6.4.5)."""
    if em.get_content_type() in ("message/rfc822", "message/global") and em.is_multipart():
        inner = em.get_payload()[0]
        if inner.is_multipart():
            for i, sub in enumerate(inner.get_payload(), 1):
                _leaves(sub, (*path, i), out)
        else:
            out.append(((*path, 1), inner))
        return
    if em.is_multipart() and em.get_content_maintype() == "multipart":
        for i, sub in enumerate(em.get_payload(), 1):
            _leaves(sub, (*path, i), out)
        return
    out.append((path or (1,), em))


def test_corpus_sections_match_the_email_package() -> None:
    messages = corpus()
    assert len(messages) >= 100
    raw_checked = binary_checked = 0
    for index, data in enumerate(messages, 1):
        acc = Counting(data)
        root = acc.parsed_obj.part

        def fetch1(item: FetchItem, acc: Counting = acc, n: int = index) -> Any:
            resp = fetch_response(n, meta_for(acc.data), [item], parsed=acc.parsed, data=acc.octets)
            seq, items = read_fetch(resp.to_bytes())
            assert seq == n and len(items) == 1
            return items[0][1]

        assert fetch1(FetchSection(peek=True)) == data
        assert fetch1(FetchAttr("RFC822.SIZE")) == len(data)
        header = fetch1(FetchSection(peek=True, spec="HEADER"))
        assert data.startswith(header) and header.endswith(b"\r\n\r\n")
        assert header + fetch1(FetchSection(peek=True, spec="TEXT")) == data
        # HEADER.FIELDS against an independent line scan of the header
        want = ("SUBJECT", "FROM", "MESSAGE-ID")
        got = fetch1(FetchSection(peek=True, spec="HEADER.FIELDS", fields=want))
        expected = b"".join(
            m.group()
            for m in re.finditer(rb"(?m)^([A-Za-z-]+):.*\r\n(?:[ \t].*\r\n)*", header.decode(
                "latin-1").encode("latin-1"))
            if m.group(1).upper().decode() in want
        )  # fmt: skip
        assert got == expected + b"\r\n", index

        em = email.message_from_bytes(data, policy=email.policy.compat32)
        leaves: list[tuple[tuple[int, ...], Any]] = []
        _leaves(em, (), leaves)
        for path, sub in leaves:
            node = find_section(root, path)
            assert node is not None, (index, path)
            enc = (sub.get("content-transfer-encoding") or "7bit").strip().lower()
            body = fetch1(FetchSection(peek=True, part=path))
            raw = sub.get_payload(decode=False)
            if enc != "8bit" and isinstance(raw, str) and raw.isascii():
                assert body == raw.encode("ascii"), (index, path)
                raw_checked += 1
            if sub.is_multipart():  # message/delivery-status: a list of header blocks there
                continue
            if enc in ("7bit", "8bit", "binary", "base64", "quoted-printable"):
                decoded = sub.get_payload(decode=True)
                assert fetch1(FetchSection(peek=True, part=path, binary=True)) == decoded
                assert fetch1(FetchBinarySize(path)) == len(decoded)
                binary_checked += 1
            # MIME header of the part: ends where its body starts
            if path != (1,) or root.children:
                mime = fetch1(FetchSection(peek=True, part=path, spec="MIME"))
                assert data[node.header_start : node.body_start] == mime
    assert raw_checked > 300 and binary_checked > 400


def test_fetch_of_a_big_body_is_chunked() -> None:
    data = SAMPLE + b"x" * 5_000_000 + b"\r\n"
    resp, _ = run(data, [FetchSection(peek=True), FetchAttr("UID")])
    assert resp.chunks[1] is data
    assert len(resp.chunks) == 3 and len(resp.chunks[0]) < 100 and len(resp.chunks[2]) < 100

"""The client-side IMAP response parser (postfach.client.parse)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from postfach.client.parse import (
    Continue,
    Data,
    ProtocolError,
    Tagged,
    Token,
    Untagged,
    fetch_items,
    literal_size,
    number,
    parse_response,
    text,
    tokenize,
)


def parse(line: bytes, *literals: bytes) -> object:
    """Split a response written with ``{n}`` markers followed by CRLF into segments."""
    segments = line.split(b"\r\n")
    return parse_response(segments, list(literals))


def test_tagged_with_code() -> None:
    r = parse(b"s3 OK [APPENDUID 38505 3955:3957] APPEND completed")
    assert r == Tagged("s3", "OK", "APPENDUID", ["38505", "3955:3957"], "APPEND completed")
    assert parse(b"s4 NO [TRYCREATE] no such mailbox") == Tagged(
        "s4", "NO", "TRYCREATE", [], "no such mailbox"
    )
    assert parse(b"a BAD") == Tagged("a", "BAD", None, [], "")


def test_untagged_status_codes() -> None:
    assert parse(b"* OK [UIDVALIDITY 3857529045] UIDs valid") == Untagged(
        "OK", "UIDVALIDITY", ["3857529045"], "UIDs valid"
    )
    assert parse(b"* OK [HIGHESTMODSEQ 715194045007]") == Untagged(
        "OK", "HIGHESTMODSEQ", ["715194045007"], ""
    )
    r = parse(b"* OK [CAPABILITY IMAP4rev1 IDLE AUTH=PLAIN] ready")
    assert isinstance(r, Untagged) and r.code_args == ["IMAP4rev1", "IDLE", "AUTH=PLAIN"]
    r = parse(b"* OK [MAILBOXID (F12x3)] id")
    assert isinstance(r, Untagged) and r.code_args == [["F12x3"]]
    assert parse(b"* BYE logging out").status == "BYE"  # type: ignore[attr-defined]
    assert parse(b'* NO [BADCHARSET ("UTF-8" "a]b")] x') == Untagged(
        "NO", "BADCHARSET", [[b"UTF-8", b"a]b"]], "x"
    )


def test_continuation() -> None:
    assert parse(b"+ idling") == Continue(b"idling")
    assert parse(b"+") == Continue(b"")


def test_fetch_with_flags_modseq_and_literal() -> None:
    r = parse(b"* 12 FETCH (UID 7 FLAGS (\\Seen $Forwarded) MODSEQ (90) BODY[] {5}\r\n)", b"hello")
    assert isinstance(r, Data) and r.name == "FETCH" and r.number == 12
    items = fetch_items(r)
    assert items == {"UID": "7", "FLAGS": ["\\Seen", "$Forwarded"], "MODSEQ": ["90"],
                     "BODY[]": b"hello"}  # fmt: skip


def test_fetch_section_with_spaces_is_one_atom_and_literal8() -> None:
    r = parse(
        b"* 1 FETCH (UID 3 RFC822.SIZE 120 BODY[HEADER.FIELDS (MESSAGE-ID)] {20}\r\n"
        b" BINARY[1] ~{3}\r\n)",
        b"Message-ID: <a@b>\r\n\r\n",
        b"a\0b",
    )
    items = fetch_items(r)  # type: ignore[arg-type]
    assert items["BODY[HEADER.FIELDS (MESSAGE-ID)]"] == b"Message-ID: <a@b>\r\n\r\n"
    assert items["BINARY[1]"] == b"a\0b" and items["RFC822.SIZE"] == "120"


def test_list_status_vanished_enabled_esearch() -> None:
    assert parse(b'* LIST (\\HasNoChildren \\Sent) "/" Sent') == Data(
        "LIST", None, [["\\HasNoChildren", "\\Sent"], b"/", "Sent"]
    )
    assert parse(b'* LIST (\\Noselect) NIL ""') == Data("LIST", None, [["\\Noselect"], None, b""])
    assert parse(b'* STATUS "a \\"b\\"" (MESSAGES 2 HIGHESTMODSEQ 9)') == Data(
        "STATUS", None, [b'a "b"', ["MESSAGES", "2", "HIGHESTMODSEQ", "9"]]
    )
    assert parse(b"* VANISHED (EARLIER) 41,43:116,118") == Data(
        "VANISHED", None, [["EARLIER"], "41,43:116,118"]
    )
    assert parse(b"* 3 EXISTS") == Data("EXISTS", 3, [])
    assert parse(b"* ENABLED QRESYNC CONDSTORE") == Data("ENABLED", None, ["QRESYNC", "CONDSTORE"])
    assert parse(b'* ESEARCH (TAG "a") UID ALL 1:3') == Data(
        "ESEARCH", None, [["TAG", b"a"], "UID", "ALL", "1:3"]
    )
    assert parse(b"* SEARCH") == Data("SEARCH", None, [])


def test_mailbox_name_as_literal() -> None:
    r = parse(b'* LIST () "/" {4}\r\n', b"a\r\nb")
    assert r == Data("LIST", None, [[], b"/", b"a\r\nb"])


@pytest.mark.parametrize(
    "line",
    [b"", b"*", b"* 1", b"a1 MAYBE x", b"* 1 FETCH (UID 1", b"* 1 FETCH UID 1)", b"* LIST (a))"],
)
def test_malformed(line: bytes) -> None:
    with pytest.raises(ProtocolError):
        parse_response([line] if line else [], [])


def test_literal_markers_and_helpers() -> None:
    assert literal_size(b"* 1 FETCH (BODY[] {12}") == 12
    assert literal_size(b"* 1 FETCH (BINARY[] ~{12}") == 12
    assert literal_size(b"* OK {12} not at the end") is None
    assert number("42") == 42 and text(b"x") == "x" and text(None) == ""
    with pytest.raises(ProtocolError):
        number(["1"])
    with pytest.raises(ProtocolError):
        tokenize([b"x {3}"], [])


# ---- round trip: any token tree, written as a server would, parses back -----------------------

atoms = st.from_regex(r"\A[A-Za-z0-9\\$.:+-]{1,8}\Z").filter(lambda a: a.upper() != "NIL")
strings = st.binary(max_size=20)
leaves = st.one_of(atoms, strings, st.none())
trees = st.recursive(leaves, lambda kids: st.lists(kids, max_size=4), max_leaves=12)


def _write(tok: Token, literals: list[bytes]) -> bytes:
    if tok is None:
        return b"NIL"
    if isinstance(tok, str):
        return tok.encode()
    if isinstance(tok, bytes):
        if all(32 <= c < 127 for c in tok):
            return b'"' + tok.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'
        literals.append(tok)
        return b"{%d}\r\n" % len(tok)
    return b"(" + b" ".join(_write(t, literals) for t in tok) + b")"


@given(st.lists(trees, min_size=1, max_size=4))
def test_any_tree_round_trips(tokens: list[Token]) -> None:
    literals: list[bytes] = []
    line = b"* 5 FETCH " + b" ".join(_write(t, literals) for t in tokens)
    r = parse_response(line.split(b"\r\n"), literals)
    assert r == Data("FETCH", 5, tokens)

"""The fast path for plain mailboxes in ENVELOPE gives exactly what the full tokenizer gives.

`postfach.mime.envelope._addresses` answers ``Name <a@b>``, ``<a@b>`` and ``a@b`` with one
regular expression and sends everything else to the tokenizer (`_parse_addresses`); for any
header value the two must agree, or IMAP ENVELOPE would depend on which path a message took.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from postfach.mime.envelope import Address, _addresses, _parse_addresses

ATOM = st.text(alphabet="abcXYZ019!#$%&'*+/=?^_`{|}~-", min_size=1, max_size=6)
DOT_ATOM = st.lists(ATOM, min_size=1, max_size=3).map(".".join)
SPACE = st.sampled_from(["", " ", "\t", "  ", " \t "])
# Pieces that make near-misses: quotes, comments, dots and specials, non-ASCII, groups, lists.
NOISE = st.sampled_from(['"', "(c)", ".", ",", ";", ":", "@", "<", ">", "é", "[1.2.3.4]", "\\"])


@st.composite
def header_values(draw: st.DrawFn) -> bytes:
    local, domain = draw(DOT_ATOM), draw(DOT_ATOM)
    form = draw(st.integers(0, 2))
    if form == 0:
        words = draw(st.lists(ATOM, min_size=1, max_size=3))
        name = draw(SPACE).join(words) if draw(st.booleans()) else " ".join(words)
        text = f"{name}{draw(SPACE)}<{local}@{domain}>"
    elif form == 1:
        text = f"<{local}@{domain}>"
    else:
        text = f"{local}@{domain}"
    text = draw(SPACE) + text + draw(SPACE)
    if draw(st.booleans()):  # break it somewhere
        at = draw(st.integers(0, len(text)))
        text = text[:at] + draw(NOISE) + text[at:]
    return text.encode("utf-8")


@given(header_values())
@settings(max_examples=600, deadline=None)
def test_fast_path_agrees_with_tokenizer(raw: bytes) -> None:
    assert _addresses(raw) == _parse_addresses(raw)


def test_common_forms() -> None:
    assert _addresses(b"Load  Generator <load@sender.example>") == (
        Address("Load Generator", None, "load", "sender.example"),
    )
    assert _addresses(b"<d01@bench.example>") == (Address(None, None, "d01", "bench.example"),)
    assert _addresses(b"a.b@c.d") == (Address(None, None, "a.b", "c.d"),)
    # not plain: still parsed, by the tokenizer
    assert _addresses(b'"Q, R" <q@r.s>') == (Address("Q, R", None, "q", "r.s"),)
    assert _addresses(b"a@b, c@d") == (
        Address(None, None, "a", "b"),
        Address(None, None, "c", "d"),
    )

"""Modified UTF-7 mailbox names (RFC 3501 §5.1.3)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from postfach.imap.utf7 import decode_mutf7, encode_mutf7

EXAMPLES = [
    ("INBOX", "INBOX"),
    ("", ""),
    ("&", "&-"),
    ("a&b", "a&-b"),
    ("Entwürfe", "Entw&APw-rfe"),
    ("~peter/mail/台北/日本語", "~peter/mail/&U,BTFw-/&ZeVnLIqe-"),  # RFC 3501 §5.1.3
    ("Ä&Ö", "&AMQ-&-&ANY-"),
    ("tab\there", "tab&AAk-here"),
    ("😀", "&2D3eAA-"),
]


@pytest.mark.parametrize(("text", "wire"), EXAMPLES)
def test_examples(text: str, wire: str) -> None:
    assert encode_mutf7(text) == wire
    assert decode_mutf7(wire) == text


@pytest.mark.parametrize(
    "wire",
    [
        "&",  # unterminated
        "a&Jjo",  # unterminated
        "&Jjo!-",  # not modified base64
        "&U/BTFw-",  # "/" instead of ","
        "&AGE-",  # encodes printable ASCII "a"
        "&AOQ-&AOQ-",  # two runs back to back
        "&AO-",  # half a UTF-16 unit
        "&AOR-",  # non-zero padding bits
        "&2D0-",  # lone high surrogate
        "é",  # raw 8-bit
        "a\x01b",  # control character
        "&ImI=-",  # padding
    ],
)
def test_rejects_malformed(wire: str) -> None:
    with pytest.raises(ValueError):
        decode_mutf7(wire)


def test_encode_rejects_lone_surrogate() -> None:
    with pytest.raises(ValueError):
        encode_mutf7("\ud800")


@given(st.text())
def test_round_trip(text: str) -> None:
    wire = encode_mutf7(text)
    assert wire.isascii()
    assert all(" " <= c <= "~" for c in wire)
    assert decode_mutf7(wire) == text


@given(st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E)))
def test_decode_is_strict(wire: str) -> None:
    # Whatever the decoder accepts re-encodes to the same text.
    try:
        text = decode_mutf7(wire)
    except ValueError:
        return
    assert encode_mutf7(text) == wire

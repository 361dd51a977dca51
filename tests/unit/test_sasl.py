"""SASL PLAIN (RFC 4616) and LOGIN decoding."""

from __future__ import annotations

import base64
import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from postfach.auth.sasl import (
    MECHANISMS,
    LoginExchange,
    PlainExchange,
    SaslCredentials,
    SaslError,
    SaslExchange,
    UnknownMechanism,
    decode_base64,
    decode_plain,
    encode_base64,
    is_cancel,
    parse_plain,
    start_exchange,
)

pytestmark = pytest.mark.timeout(30)


def challenge_of(ex: SaslExchange) -> str | None:
    return ex.challenge  # a call, so mypy does not carry narrowing across respond()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


# ---- base64 ---------------------------------------------------------------------------------


def test_decode_base64_empty_forms() -> None:
    assert decode_base64("=") == b""
    assert decode_base64("") == b""


@pytest.mark.parametrize(
    "bad",
    ["abc", "ab=c", "a b=", "YWJj\n", "!!!!", "YWJj====", "äöü=", "YW Jj"],
)
def test_decode_base64_is_strict(bad: str) -> None:
    with pytest.raises(SaslError):
        decode_base64(bad)


def test_base64_round_trip() -> None:
    assert decode_base64(encode_base64(b"\x00\xffhello")) == b"\x00\xffhello"


def test_sasl_error_is_value_error() -> None:
    assert issubclass(SaslError, ValueError)
    assert issubclass(UnknownMechanism, SaslError)


# ---- PLAIN ----------------------------------------------------------------------------------


def test_decode_plain_rfc4616_examples() -> None:
    # RFC 4616 section 4: "\0tim\0tanstaaftanstaaf" and "Ursel\0Kurt\0xipj3plmq"
    assert decode_plain(b64(b"\x00tim\x00tanstaaftanstaaf")) == ("", "tim", "tanstaaftanstaaf")
    assert decode_plain(b64(b"Ursel\x00Kurt\x00xipj3plmq")) == ("Ursel", "Kurt", "xipj3plmq")


def test_decode_plain_utf8() -> None:
    raw = "\x00jürgen\x00pässwörd €".encode()
    assert decode_plain(b64(raw)) == ("", "jürgen", "pässwörd €")


def test_password_may_contain_spaces_and_equals() -> None:
    assert decode_plain(b64(b"\x00u\x00 a b = ")) == ("", "u", " a b = ")


@pytest.mark.parametrize(
    "raw",
    [
        b"",  # "=" initial response: empty is malformed for PLAIN
        b"user\x00pass",  # one NUL
        b"\x00\x00pass",  # empty authcid
        b"\x00user\x00",  # empty password
        b"a\x00b\x00c\x00d",  # three NULs
        b"\x00us\xffer\x00pass",  # not UTF-8
        b"\x00user\x00pa\xc3",  # truncated UTF-8
    ],
)
def test_decode_plain_malformed(raw: bytes) -> None:
    with pytest.raises(SaslError):
        decode_plain(b64(raw) if raw else "=")


def test_decode_plain_rejects_huge_fields() -> None:
    with pytest.raises(SaslError):
        parse_plain(b"\x00user\x00" + b"x" * 5000)


def test_plain_exchange_with_initial_response() -> None:
    ex = PlainExchange(b64(b"\x00bob\x00secret"))
    assert ex.challenge is None
    assert ex.credentials() == SaslCredentials("", "bob", "secret")


def test_plain_exchange_without_initial_response() -> None:
    ex = start_exchange("plain")
    assert ex.mechanism == "PLAIN"
    assert challenge_of(ex) == ""  # an empty challenge: the server sends "+ "
    with pytest.raises(SaslError):
        ex.credentials()
    ex.respond(b64(b"admin\x00bob\x00secret"))
    assert challenge_of(ex) is None
    assert ex.credentials() == SaslCredentials("admin", "bob", "secret")
    with pytest.raises(SaslError):
        ex.respond(b64(b"\x00x\x00y"))


def test_plain_exchange_malformed_initial_response() -> None:
    with pytest.raises(SaslError):
        start_exchange("PLAIN", "=")
    with pytest.raises(SaslError):
        start_exchange("PLAIN", "not base64!")


def test_credentials_repr_hides_password() -> None:
    assert "secret" not in repr(SaslCredentials("", "bob", "secret"))


# ---- LOGIN ----------------------------------------------------------------------------------


def test_login_exchange() -> None:
    ex = start_exchange("LOGIN")
    assert ex.mechanism == "LOGIN"
    assert base64.b64decode(ex.challenge or "") == b"Username:"
    ex.respond(b64(b"bob"))
    assert base64.b64decode(ex.challenge or "") == b"Password:"
    with pytest.raises(SaslError):
        ex.credentials()
    ex.respond(b64("pässword".encode()))
    assert ex.challenge is None
    assert ex.credentials() == SaslCredentials("", "bob", "pässword")
    with pytest.raises(SaslError):
        ex.respond(b64(b"more"))


def test_login_exchange_with_initial_username() -> None:
    ex = LoginExchange(b64(b"bob"))
    assert ex.username == "bob"
    assert base64.b64decode(ex.challenge or "") == b"Password:"
    ex.respond(b64(b"pw"))
    assert ex.credentials().password == "pw"


@pytest.mark.parametrize("first", ["=", "", "***", b64(b"\xff\xfe")])
def test_login_exchange_bad_username(first: str) -> None:
    ex = LoginExchange()
    with pytest.raises(SaslError):
        ex.respond(first)
    assert ex.challenge is not None  # still waiting for a username


def test_login_exchange_empty_password() -> None:
    ex = LoginExchange(b64(b"bob"))
    with pytest.raises(SaslError):
        ex.respond("")


# ---- misc -----------------------------------------------------------------------------------


def test_unknown_mechanism() -> None:
    with pytest.raises(UnknownMechanism):
        start_exchange("CRAM-MD5")


def test_mechanisms_and_cancel() -> None:
    assert MECHANISMS == ("PLAIN", "LOGIN")
    assert is_cancel("*")
    assert is_cancel(" * ")
    assert not is_cancel("*=")


@given(st.text(max_size=200))
def test_decoders_raise_only_sasl_error(text: str) -> None:
    for fn in (decode_plain, lambda t: LoginExchange().respond(t)):
        with contextlib.suppress(SaslError):
            fn(text)


@given(st.binary(max_size=300))
def test_plain_decoder_on_arbitrary_bytes(raw: bytes) -> None:
    try:
        authzid, authcid, password = decode_plain(b64(raw) if raw else "=")
    except SaslError:
        return
    assert f"{authzid}\x00{authcid}\x00{password}".encode() == raw

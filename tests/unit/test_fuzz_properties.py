"""Hypothesis properties for the hostile-input surfaces: the fuzz targets of
``tests/fuzz/targets.py`` fed with structured inputs (deterministic, a few seconds in all).

The atheris runs (``tests/reliability/test_fuzz.py``) explore raw bytes guided by coverage; the
strategies here build inputs that are *almost* valid (real commands with one thing wrong, MIME
trees with broken boundaries), which random bytes rarely reach. Every input that ever broke a
target is kept in ``tests/fuzz/regressions/<target>/`` and replayed here.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "fuzz"))

import seeds
import targets

FUZZ = Path(__file__).resolve().parents[1] / "fuzz"
PROFILE = settings(
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


# ---- strategies -------------------------------------------------------------------------------

_IMAP_WORDS = [
    b"a1",
    b"*",
    b"+",
    b"LOGIN",
    b"SELECT",
    b"INBOX",
    b"FETCH",
    b"UID",
    b"1:*",
    b"$",
    b"(",
    b")",
    b"[",
    b"]",
    b"BODY[]",
    b"BODY.PEEK[HEADER.FIELDS (SUBJECT)]",
    b"BINARY[1]<0.10>",
    b"SEARCH",
    b"OR",
    b"NOT",
    b"TEXT",
    b"CHARSET",
    b"APPEND",
    b"STORE",
    b"+FLAGS",
    b"\\Seen",
    b"AUTHENTICATE",
    b"PLAIN",
    b"IDLE",
    b"DONE",
    b"NIL",
    b'"quoted"',
    b'"esc\\"aped"',
    b'"bad\\q"',
    b"{0}\r\n",
    b"{3}\r\nabc",
    b"{5+}\r\nhello",
    b"~{2}\r\n\x00\xff",
    b"{99999999999}\r\n",
    b"{4294967296}",
    b"&AOk-",
    b"&-",
    b"&Jjo",
    b"\xc3\xa9",
    b"\xff",
    b"\x00",
    b"1-Feb-1994",
    b'"01-Jan-2020 10:00:00 +0000"',
    b"MODSEQ",
    b"(CHANGEDSINCE 5)",
    b"RETURN (ALL)",
    b"ENABLE",
    b"IMAP4rev2",
    b"\r\n",
    b"\n",
    b" ",
]

imap_command = st.lists(st.sampled_from(_IMAP_WORDS), max_size=12).map(b" ".join)
imap_stream = st.tuples(st.binary(min_size=4, max_size=4), st.lists(imap_command, max_size=6)).map(
    lambda t: t[0] + b"\r\n".join(t[1]) + b"\r\n"
)

_POP3_LINES = [
    b"USER bob",
    b"PASS secret",
    b"STAT",
    b"LIST",
    b"LIST 1",
    b"LIST 99999999999",
    b"RETR 1",
    b"RETR 2",
    b"RETR 3",
    b"RETR 4",
    b"RETR 0",
    b"RETR -1",
    b"TOP 1 0",
    b"TOP 2 1",
    b"TOP 1 99999999999",
    b"UIDL",
    b"DELE 1",
    b"RSET",
    b"NOOP",
    b"CAPA",
    b"STLS",
    b"AUTH",
    b"AUTH PLAIN",
    b"AUTH PLAIN AGJvYgBzZWNyZXQ=",
    b"AUTH LOGIN",
    b"Ym9i",
    b"*",
    b"=",
    b"QUIT",
    b"x" * 300,
    b"\x00\xff",
    b"retr\t1",
    b"",
]
pop3_stream = st.tuples(
    st.binary(min_size=4, max_size=4),
    st.lists(st.sampled_from(_POP3_LINES), max_size=12),
    st.sampled_from([b"\r\n", b"\n"]),
).map(lambda t: t[0] + t[2].join(t[1]) + t[2])

_HEADER_VALUES = st.sampled_from(
    [
        b"text/plain; charset=utf-8",
        b"text/plain; charset=x-unknown-charset",
        b'multipart/mixed; boundary="b"',
        b"multipart/alternative; boundary=b",
        b"multipart/digest; boundary=b",
        b"multipart/mixed",
        b"message/rfc822",
        b"message/global",
        b"application/octet-stream; name*0*=utf-8''%E2%82; name*1*=%AC",
        b"text/html; ; ; =",
        b'"unterminated',
        b"=?utf-8?b?w6k=?= =?iso-8859-1?q?=E9?=",
        b"=?x-bogus?q?abc?=",
        b"=?utf-8?b?!!!?=",
        b"\xff\xfe junk",
        b"a@b, (comment (nested) c@d, <e@f>",
        b"group: a@b, c@d;",
        b"base64",
        b"quoted-printable",
        b"",
    ]
)
_HEADER_NAMES = st.sampled_from(
    [
        b"Content-Type",
        b"Content-Transfer-Encoding",
        b"Content-Disposition",
        b"Content-Language",
        b"Subject",
        b"From",
        b"To",
        b"Message-ID",
        b"In-Reply-To",
        b"Date",
        b"X-Junk",
    ]
)
_header = st.lists(
    st.tuples(_HEADER_NAMES, _HEADER_VALUES).map(lambda t: t[0] + b": " + t[1] + b"\r\n"),
    max_size=5,
).map(b"".join)
_BODY_LINES = st.sampled_from(
    [
        b"plain text\r\n",
        b"--b\r\n",
        b"--b--\r\n",
        b"--b \r\n",
        b"--bx\r\n",
        b"\r\n",
        b"SGVsbG8=\r\n",
        b"=E9=\r\n",
        b"\x00\r\n",
        b"\xff\xfe\r\n",
        b"bare\rCR\r\n",
        b"bare\nLF\r\n",
        b"From: inner@example.org\r\n",
    ]
)


def _entity(children: st.SearchStrategy[bytes]) -> st.SearchStrategy[bytes]:
    return st.tuples(
        _header,
        st.booleans(),
        st.lists(st.one_of(_BODY_LINES, children), max_size=6).map(b"".join),
    ).map(lambda t: t[0] + (b"\r\n" if t[1] else b"") + t[2])


mime_message = st.recursive(_entity(st.nothing()), _entity, max_leaves=12)


# ---- properties -------------------------------------------------------------------------------


@settings(PROFILE, max_examples=60)
@given(imap_stream)
def test_imap_framer_structured(data: bytes) -> None:
    targets.fuzz_imap_framer(data)


@settings(PROFILE, max_examples=100)
@given(st.binary(max_size=300))
def test_imap_framer_bytes(data: bytes) -> None:
    targets.fuzz_imap_framer(data)


@settings(PROFILE, max_examples=200)
@given(imap_command)
def test_imap_parser_structured(data: bytes) -> None:
    targets.fuzz_imap_parser(data)


@settings(PROFILE, max_examples=300)
@given(st.binary(max_size=200))
def test_imap_parser_bytes(data: bytes) -> None:
    targets.fuzz_imap_parser(data)


@settings(PROFILE, max_examples=100)
@given(pop3_stream)
def test_pop3_structured(data: bytes) -> None:
    targets.fuzz_pop3(data)


@settings(PROFILE, max_examples=200)
@given(st.binary(max_size=400))
def test_pop3_bytes(data: bytes) -> None:
    targets.fuzz_pop3(data)


@settings(PROFILE, max_examples=60)
@given(mime_message)
def test_mime_structured(data: bytes) -> None:
    targets.fuzz_mime(data)


@settings(PROFILE, max_examples=100)
@given(st.binary(max_size=600))
def test_mime_bytes(data: bytes) -> None:
    targets.fuzz_mime(data)


_SASL_FIELD = st.sampled_from([b"", b"bob", b"\xc3\xa9", b"\xff", b"x" * 1100, b"a\x00b"])


@settings(PROFILE, max_examples=150)
@given(st.lists(_SASL_FIELD, min_size=1, max_size=4), st.integers(0, 4), st.booleans())
def test_sasl_structured(fields: list[bytes], mechanism: int, encode: bool) -> None:
    import base64

    message = b"\x00".join(fields)
    payload = base64.b64encode(message) if encode else message
    targets.fuzz_sasl(bytes([mechanism]) + payload)
    targets.fuzz_sasl(bytes([mechanism]) + b"\n".join(base64.b64encode(f) for f in fields))


@settings(PROFILE, max_examples=300)
@given(st.binary(max_size=200))
def test_sasl_bytes(data: bytes) -> None:
    targets.fuzz_sasl(data)


# ---- the seeds and every input that ever broke a target ---------------------------------------


@pytest.mark.parametrize("target", sorted(targets.TARGETS))
def test_seed_corpus_and_regressions(target: str) -> None:
    inputs = seeds.seeds(target) if target != "mime" else seeds.seeds(target)[:80]
    regressions = FUZZ / "regressions" / target
    if regressions.is_dir():
        inputs += [p.read_bytes() for p in sorted(regressions.iterdir())]
    assert inputs
    for data in inputs:
        targets.TARGETS[target](data)

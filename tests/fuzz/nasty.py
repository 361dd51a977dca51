"""The nasty-message corpus, generated in code (nothing large is kept in the repository).

``nasty_messages()`` yields ``Nasty(name, data, via, why)``: ``via`` is ``"smtp"`` when SMTP
can carry the message, ``"append"`` when SMTP rightly refuses it (RFC 5321 §4.5.3.1.6: a text
line is at most 1000 octets with its CRLF) or when the point is that the octets are stored
exactly as sent (bare CR/LF survive only APPEND; SMTP delivery normalises line ends). NUL octets
travel by SMTP: IMAP refuses NUL in a plain literal (RFC 9051 §4.3), and a literal8 would store
the part base64-encoded, which is the documented BINARY behaviour but not byte-exact.

``torture.mbox`` (all 40 messages) is added by the test, through the same rule: SMTP unless a
line is longer than SMTP allows.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from dataclasses import dataclass

SMTP_MAX_LINE = 1000  # octets with the CRLF (RFC 5321 §4.5.3.1.6)
NESTING = 10_000


@dataclass(frozen=True)
class Nasty:
    name: str
    data: bytes
    via: str  # "smtp" or "append"
    why: str


def _head(subject: str, extra: bytes = b"") -> bytes:
    return (
        b"From: Nasty <nasty@remote.example>\r\nTo: alice@example.org\r\n"
        b"Subject: " + subject.encode() + b"\r\nMessage-ID: <" + subject.replace(" ", ".").encode()
        + b"@remote.example>\r\nMIME-Version: 1.0\r\n" + extra
    )  # fmt: skip


def nested_multipart(depth: int = NESTING) -> bytes:
    """``depth`` multipart/mixed entities, each the only part of the one above."""
    opening = b"".join(
        b'Content-Type: multipart/mixed; boundary="b%d"\r\n\r\n--b%d\r\n' % (i, i)
        for i in range(depth)
    )
    closing = b"".join(b"\r\n--b%d--\r\n" % i for i in reversed(range(depth)))
    leaf = b"Content-Type: text/plain\r\n\r\nthe innermost leaf of ten thousand multiparts"
    return _head("nested multipart") + opening + leaf + closing


def nested_rfc822(depth: int = NESTING) -> bytes:
    """``depth`` message/rfc822 entities, each the body of the one above."""
    level = b"Content-Type: message/rfc822\r\n\r\nFrom: inner@example.org\r\nSubject: level\r\n"
    return _head("nested rfc822") + level * depth + b"\r\nthe innermost body\r\n"


def sibling_parts(count: int = NESTING) -> bytes:
    parts = b"".join(
        b"--s\r\nContent-Type: text/plain\r\n\r\npart %d\r\n" % i for i in range(count)
    )
    return (
        _head("ten thousand parts", b'Content-Type: multipart/mixed; boundary="s"\r\n')
        + b"\r\n"
        + parts
        + b"--s--\r\n"
    )


def nasty_messages() -> Iterator[Nasty]:
    smtp_why = "SMTP carries it (lines under 1000 octets)"
    long_why = "SMTP refuses lines over 1000 octets (RFC 5321 §4.5.3.1.6): APPEND"
    exact_why = "APPEND stores the octets exactly; SMTP delivery would normalise line ends"
    yield Nasty(
        "malformed MIME",
        _head("malformed mime", b"Content-Type: multipart/mixed; boundary=\r\n")
        + b'\r\n--\r\nContent-Type: text/plain; charset=\r\nContent-Type: ;;;=="\r\n\r\n'
        + b"text\r\n----\r\n--x--\r\nContent-Transfer-Encoding: \r\n\r\n",
        "smtp",
        smtp_why,
    )
    yield Nasty(
        "content-type garbage",
        _head("ct garbage", b"Content-Type: /; boundary*0*=''; boundary*1=x; =; charset*=''\r\n")
        + b"Content-Disposition: ; filename*=utf-8'en'%ZZ%\r\n\r\nbody\r\n",
        "smtp",
        smtp_why,
    )
    yield Nasty(
        "unterminated boundaries",
        _head("unterminated", b'Content-Type: multipart/mixed; boundary="outer"\r\n')
        + b'\r\n--outer\r\nContent-Type: multipart/alternative; boundary="inner"\r\n\r\n'
        + b"--inner\r\nContent-Type: text/plain\r\n\r\nnever closed\r\n--inner\r\n"
        + b"Content-Type: message/rfc822\r\n\r\nSubject: cut\r\n",
        "smtp",
        smtp_why,
    )
    yield Nasty("nested multipart 10000", nested_multipart(), "smtp", smtp_why)
    yield Nasty("nested rfc822 10000", nested_rfc822(), "smtp", smtp_why)
    yield Nasty("sibling parts 10000", sibling_parts(), "smtp", smtp_why)
    yield Nasty(
        "one megabyte header line",
        _head("megabyte header", b"X-Long: " + b"x" * (1 << 20) + b"\r\n") + b"\r\nbody\r\n",
        "append",
        long_why,
    )
    yield Nasty(
        "one megabyte subject",
        b"From: a@remote.example\r\nSubject: " + b"Subject text " * 80_000 + b"\r\n\r\nb\r\n",
        "append",
        long_why,
    )
    yield Nasty(
        "NUL bytes",
        _head("nul bytes", b"X-Nul: a\x00b\r\nContent-Type: text/plain\r\n")
        + b"\r\nbody with \x00 NUL\r\n\x00\x00\x00\r\n",
        "smtp",
        "IMAP refuses NUL in a plain literal (RFC 9051 §4.3): SMTP",
    )
    yield Nasty(
        "8-bit junk in headers",
        b"From: \xff\xfe\xfd <j\xe9@remote.example>\r\nTo: \x80\x81 <alice@example.org>\r\n"
        b"Subject: \xc3\x28 \xa0\xa1 \xf0\x28\x8c\x28\r\nX-\xff: \xff\r\n\r\nbody\r\n",
        "smtp",
        smtp_why,
    )
    yield Nasty(
        "invalid base64 and quoted-printable",
        _head("bad encodings", b'Content-Type: multipart/mixed; boundary="e"\r\n')
        + b"\r\n--e\r\nContent-Transfer-Encoding: base64\r\n\r\n!!!not*base64===\r\nQQ\r\n"
        + b"--e\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n=ZZ=4=\r\n=\r\n=E9=\r\n"
        + b"--e\r\nContent-Transfer-Encoding: x-uuencode-bogus\r\n\r\nbegin 644\r\n--e--\r\n",
        "smtp",
        smtp_why,
    )
    yield Nasty(
        "invalid charsets",
        _head("bad charsets", b"Content-Type: text/plain; charset=x-no-such-charset\r\n")
        + b"Subject: =?x-bogus?B?AAAA?= =?utf-8?B?/w==?= =?iso-2022-jp?Q?=1B$B?=\r\n"
        + b"\r\n\xe9\xff\xfe text\r\n",
        "smtp",
        smtp_why,
    )
    huge_word = b"=?utf-8?B?" + base64.b64encode("\u00e9".encode() * 400_000) + b"?="
    yield Nasty(
        "huge encoded-word",
        b"From: a@remote.example\r\nSubject: " + huge_word + b"\r\n\r\nbody\r\n",
        "append",
        long_why,
    )
    many_words = b"".join(b" =?utf-8?Q?w=C3=A9rd_%d?=\r\n" % i for i in range(20_000))
    yield Nasty(
        "many folded encoded-words",
        b"From: a@remote.example\r\nSubject:" + many_words + b"\r\nbody\r\n",
        "smtp",
        smtp_why,
    )
    yield Nasty(
        "no header/body separator",
        b"From: a@remote.example\r\nSubject: no separator\r\nX-Trailing: value",
        "smtp",
        smtp_why,
    )
    yield Nasty(
        "only a body",
        b"\r\njust a body, the header is empty\r\n",
        "smtp",
        smtp_why,
    )
    mixed = (
        b"From: a@remote.example\rSubject: bare CR\nX-Mix: one\r\n\n\rbody\rline\nline\r\nlast\n"
    )
    yield Nasty("bare CR and LF mix (SMTP)", mixed, "smtp", "SMTP: stored CRLF-normalised")
    yield Nasty("bare CR and LF mix (APPEND)", mixed, "append", exact_why)
    yield Nasty(
        "no final line end",
        b"From: a@remote.example\r\nSubject: no final CRLF\r\n\r\nbody without end",
        "append",
        exact_why,
    )


def longest_line(data: bytes) -> int:
    return max((len(line) + 1 for line in data.split(b"\n")), default=0)

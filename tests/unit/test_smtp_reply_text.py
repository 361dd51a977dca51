"""SMTP reply text never carries control octets (RFC 5321 §4.2 textstring).

Regression (tests/reliability/test_garbage.py): aiosmtpd echoes an unknown command verb, so a
TLS ClientHello sent to the SMTP port came back with NULs, escapes and a bare CR in the reply.
"""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

from postfach.smtp.handler import _EnhancedCodes


class _Sink:
    def __init__(self) -> None:
        self.sent: list[str | bytes] = []

    async def push(self, status: str | bytes) -> None:
        self.sent.append(status)


class _Server(_EnhancedCodes, _Sink):
    def __init__(self, extended: bool) -> None:
        super().__init__()
        self.session = SimpleNamespace(extended_smtp=extended)


def _push(status: str, extended: bool = True) -> str | bytes:
    server = _Server(extended)
    asyncio.run(server.push(status))
    return server.sent[0]


def test_control_octets_in_an_echoed_verb_become_question_marks() -> None:
    reply = _push('500 Error: command "\x00\x16\x03\r\x1b[2J\x7f" not recognized')
    assert reply == '500 5.5.2 Error: command "?????[2J?" not recognized'


def test_bare_line_ends_are_replaced_but_multiline_crlf_stays() -> None:
    assert _push("250-first\r\n250 second\nthird", extended=False) == (
        "250-first\r\n250 second?third"
    )


def test_ordinary_replies_are_unchanged() -> None:
    assert _push("250 2.0.0 OK") == "250 2.0.0 OK"
    assert _push("503 Error: send HELO first", extended=False) == "503 Error: send HELO first"

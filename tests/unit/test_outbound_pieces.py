"""Pure pieces of submission and outbound mail: DSN parameters, DSN structure, header checks."""

from __future__ import annotations

import email

import pytest

from postfach.dsn import (
    FailedRecipient,
    build_dsn,
    parse_notify,
    parse_orcpt,
    xtext_decode,
    xtext_encode,
)
from postfach.outbound import has_header, header_addresses, message_id_of
from postfach.smtp.submission import split_params

ORIGINAL = b"From: a@example.org\r\nSubject: hi\r\nMessage-ID: <1@x>\r\n\r\nbody line\r\n"


def test_xtext_round_trip() -> None:
    for text in ["plain", "a+b=c", "spa ce", "ümlaut", "<id@host>"]:
        assert xtext_decode(xtext_encode(text)) == text
    assert xtext_encode("a+b=c d") == "a+2Bb+3Dc+20d"
    for bad in ["a=b", "a+2", "a+zz", "a b"]:
        with pytest.raises(ValueError):
            xtext_decode(bad)


def test_notify_and_orcpt() -> None:
    assert parse_notify("success,failure") == "SUCCESS,FAILURE"
    assert parse_notify("NEVER") == "NEVER"
    for bad in ["NEVER,SUCCESS", "SOMETIMES", "FAILURE,FAILURE", ""]:
        with pytest.raises(ValueError):
            parse_notify(bad)
    assert parse_orcpt("rfc822;Bob+40example.org") == "rfc822;Bob@example.org"
    with pytest.raises(ValueError):
        parse_orcpt("bob@example.org")


def test_split_params_keeps_case_and_removes_known() -> None:
    arg = "FROM:<a@example.org> SIZE=10 RET=hdrs ENVID=Case+2BId BODY=8BITMIME"
    assert split_params(arg, {"RET", "ENVID"}) == (
        "FROM:<a@example.org> SIZE=10 BODY=8BITMIME", {"RET": "hdrs", "ENVID": "Case+2BId"},
    )  # fmt: skip
    assert split_params('TO:<"x> y"@example.org> NOTIFY=NEVER', {"NOTIFY"}) == (
        'TO:<"x> y"@example.org>', {"NOTIFY": "NEVER"},
    )  # fmt: skip
    assert split_params("FROM:<> RET=FULL RET=HDRS", {"RET"}) is None
    assert split_params("FROM:<a@b> ENVID=", {"ENVID"}) is None


def _parts(dsn: bytes) -> list[email.message.Message]:
    msg = email.message_from_bytes(dsn)
    assert msg.get_content_type() == "multipart/report"
    assert msg.get_param("report-type") == "delivery-status"
    payload = msg.get_payload()
    assert isinstance(payload, list)
    return payload


def test_failure_dsn_structure() -> None:
    dsn = build_dsn(
        reporting_mta="mx.example.org", sender="a@example.org",
        recipients=[FailedRecipient("c@remote.test", "5.1.1", "550 5.1.1 no such user", "failed",
                                    "rfc822;C@remote.test", "mx.remote.test")],
        original=ORIGINAL, now=0, boundary="BOUND", message_id="m@x", envelope_id="env",
    )  # fmt: skip
    text, status, original = _parts(dsn)
    assert text.get_content_type() == "text/plain"
    assert status.get_content_type() == "message/delivery-status"
    assert original.get_content_type() == "text/rfc822-headers"
    assert b"Original-Envelope-Id: env\r\n" in dsn
    assert (
        b"Original-Recipient: rfc822;C@remote.test\r\nFinal-Recipient: rfc822; c@remote.test\r\n"
        b"Action: failed\r\nStatus: 5.1.1\r\nRemote-MTA: dns; mx.remote.test\r\n"
        b"Diagnostic-Code: smtp; 550 5.1.1 no such user\r\n"
    ) in dsn
    assert b"body line" not in dsn and b"Subject: hi" in dsn
    assert b"Subject: Undelivered Mail Returned to Sender" in dsn


def test_full_and_success_dsn() -> None:
    dsn = build_dsn(
        reporting_mta="mx", sender="a@example.org",
        recipients=[FailedRecipient("c@r.test", "2.0.0", "250 ok", "relayed")],
        original=ORIGINAL, now=0, boundary="B", message_id="m@x", full=True,
    )  # fmt: skip
    assert _parts(dsn)[2].get_content_type() == "message/rfc822"
    assert b"body line" in dsn and b"Subject: Successful Mail Delivery Report" in dsn


def test_header_helpers() -> None:
    msg = b"From: A <A@Example.org>, b@example.org\r\nSubject: x\r\n\r\nFrom: not@header\r\n"
    assert header_addresses(msg, "From") == ["a@example.org", "b@example.org"]
    assert header_addresses(msg, "Sender") is None
    assert has_header(msg, "subject") and not has_header(msg, "Message-ID")
    assert message_id_of(b"Message-Id:\r\n <x@y>\r\n\r\n") == "<x@y>"
    assert message_id_of(msg) is None

"""`postfach.smtp.address`: the fast path gives aiosmtpd's answer for every path it takes, and
leaves the rest to aiosmtpd's parser."""

from __future__ import annotations

import itertools

import pytest
from aiosmtpd.smtp import SMTP

from postfach.smtp.address import FastAddressSMTP, simple_path

PATHS = [
    "<a@b.c> SIZE=1",
    "<a@b.c>",
    "<a@b.c>  SIZE=1 BODY=8BITMIME",
    "<>",
    "<> SIZE=5",
    "<A.B@Example.ORG>",
    "<a+tag-x_y@sub-1.example.org> RET=HDRS ENVID=x+2B",
    "<o'neil{1}|~#@x.y> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;a@b.c",
    "<a@b>",
    # not for the fast path: aiosmtpd decides (and may accept or refuse)
    "< a@b.c >",
    "<a.b@c.d>x",
    "<a..b@c.d>",
    "<.a@c.d>",
    "<a@[1.2.3.4]>",
    "<a@b.c.>",
    '<"x y"@b.c>',
    "<a@b.c> (comment) X=1",
    "<a@b.c>SIZE=1",
    "<a@b.c",
    "a@b.c",
    "<@relay.example:a@b.c>",
    "<jörg@例え.jp>",
    "<a@b.c>\tSIZE=1",
    "",
]


class _Probe(FastAddressSMTP):
    def __init__(self, local_part_limit: int = 0) -> None:  # no event loop needed
        self.local_part_limit = local_part_limit


def aiosmtpd(arg: str, local_part_limit: int = 0) -> tuple[str | None, str | None]:
    probe = _Probe(local_part_limit)
    return SMTP._getaddr(probe, arg)


@pytest.mark.parametrize("arg", PATHS)
def test_same_answer_as_aiosmtpd(arg: str) -> None:
    assert _Probe()._getaddr(arg) == aiosmtpd(arg)


def test_fast_path_taken_for_plain_paths_only() -> None:
    assert simple_path("<a@b.c> SIZE=1") == ("a@b.c", "SIZE=1")
    assert simple_path("<>") == ("<>", "")
    for arg in ("<a..b@c.d>", '<"x y"@b.c>', "<a@[1.2.3.4]>", "<a@b.c> (c)", "<jörg@x.de>"):
        assert simple_path(arg) is None, arg


def test_combinations_agree() -> None:
    locals_ = ["a", "a.b", "a..b", ".a", "a.", "x+y", '"q"', "ü", "a b"]
    domains = ["b.c", "b", "b.c.", "[1.2.3.4]", "-b.c", "b_c.d", "b..c"]
    tails = ["", " SIZE=10", "  SIZE=10 BODY=7BIT", "x", " (c)", "\tA=1"]
    for local, domain, tail in itertools.product(locals_, domains, tails):
        arg = f"<{local}@{domain}>{tail}"
        assert _Probe()._getaddr(arg) == aiosmtpd(arg), arg


def test_local_part_limit_still_applies() -> None:
    assert _Probe(3)._getaddr("<abcd@b.c>") == (None, None) == aiosmtpd("<abcd@b.c>", 3)
    assert _Probe(4)._getaddr("<abcd@b.c>") == ("abcd@b.c", "")

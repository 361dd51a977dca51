"""A fast path for the address in ``MAIL FROM:`` and ``RCPT TO:`` (adapter over aiosmtpd).

aiosmtpd's ``_getaddr`` runs every path through ``email._header_value_parser`` and defines a
``typing.Protocol`` class on each call: about a tenth of the CPU of an inbound delivery. Nearly
every path is a plain ``<dot-atom@domain>`` followed by ESMTP parameters; for those
`simple_path` gives the same answer with one regular expression, and everything else (quoted
local parts, address literals, comments, non-ASCII, malformed input) still goes to aiosmtpd's
parser, so what is accepted or refused does not change.
"""

from __future__ import annotations

import re

from aiosmtpd.smtp import SMTP

_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
# <local@domain> or <>, then parameters separated by spaces, none starting with a comment.
_PATH = re.compile(
    rf"<((?:{_ATEXT}(?:\.{_ATEXT})*@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*)?)>((?: +[^\s(]\S*)*)"
)


def simple_path(arg: str) -> tuple[str, str] | None:
    """``(address, parameters)`` for a plain path, None when the full parser must decide."""
    m = _PATH.fullmatch(arg)
    if m is None:
        return None
    if not m.group(1):  # the null path: aiosmtpd's parser leaves the space before parameters
        return "<>", m.group(2)
    return m.group(1), m.group(2).lstrip(" ")


class FastAddressSMTP(SMTP):
    """aiosmtpd ``SMTP`` whose ``_getaddr`` takes `simple_path` first."""

    def _getaddr(self, arg: str) -> tuple[str | None, str | None]:
        simple = simple_path(arg)
        if simple is None:
            return super()._getaddr(arg)
        addr = simple[0]
        if self.local_part_limit and len(addr.rpartition("@")[0]) > self.local_part_limit:
            return None, None
        return simple

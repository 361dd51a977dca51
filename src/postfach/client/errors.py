"""Errors of the client side (pure core). ``str()`` of each is one line meant for the user."""

from __future__ import annotations


class FetchError(Exception):
    """A fetch failed for a reason the user can act on."""


class FetchConfigError(FetchError):
    """``fetch.toml`` (or an option) is wrong; the text names the account and the key."""


class Pop3ProtocolError(FetchError):
    """The server broke the POP3 protocol (a remote error, in h11's terms)."""


class Pop3ServerError(FetchError):
    """The server answered ``-ERR`` where we needed ``+OK``."""

    def __init__(self, text: str, code: str | None = None) -> None:
        super().__init__(text)
        self.code = code


class TargetError(FetchError):
    """The local mail store (Maildir, mbox, postfach account) could not take the message."""

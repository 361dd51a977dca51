"""Errors that are wire replies (pure core).

Each protocol turns these into bytes in exactly one place: the SMTP handler, the POP3 session.
"""

from __future__ import annotations


class SmtpError(Exception):
    """An SMTP reply: code, enhanced status code (RFC 3463) and text."""

    def __init__(self, code: int, enhanced: str, text: str) -> None:
        super().__init__(f"{code} {enhanced} {text}")
        self.code = code
        self.enhanced = enhanced
        self.text = text

    @property
    def temporary(self) -> bool:
        return 400 <= self.code < 500

    def reply(self) -> str:
        return f"{self.code} {self.enhanced} {self.text}"


class Pop3Err(Exception):
    """A POP3 ``-ERR`` reply with an optional RFC 2449 response code such as ``IN-USE``."""

    def __init__(self, text: str, code: str | None = None) -> None:
        super().__init__(text)
        self.text = text
        self.code = code

    def reply(self) -> bytes:
        code = f"[{self.code}] " if self.code else ""
        return f"-ERR {code}{self.text}\r\n".encode()


class LoginLockedOut(Exception):
    """Too many failed logins from this address or on this account: refused for a while.

    The password was not checked. Protocols answer with a temporary error (IMAP
    ``NO [UNAVAILABLE]``, POP3 ``-ERR [SYS/TEMP]``, SMTP ``454 4.7.0``) so that mail programs
    retry later instead of asking the user for a new password; the answer is the same whether
    or not the account exists.
    """

    def __init__(self, retry_after: float) -> None:
        super().__init__(f"login refused for {retry_after:.0f} more seconds")
        self.retry_after = retry_after


class StoreError(Exception):
    """Base of errors raised by a Mailstore."""


class NotFound(StoreError):
    pass


class AlreadyExists(StoreError):
    pass


class OverQuota(StoreError):
    """Storing would exceed the account's quota (bytes or messages)."""

    def __init__(self, account: str, resource: str) -> None:
        super().__init__(f"{account}: over quota ({resource})")
        self.account = account
        self.resource = resource


class MailboxInUse(StoreError):
    """A POP3 maildrop lock is held by another session."""


class TooManySessions(MailboxInUse):
    """The account already has ``max_sessions_per_user`` IMAP and POP3 sessions."""


class DiskFull(StoreError):
    """The data directory has no room left; callers answer with a temporary error."""
